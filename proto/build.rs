//! Compiles `featmux.proto` with protox (pure Rust: no system `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=featmux.proto");
    let descriptors = protox::compile(["featmux.proto"], ["."])?;
    tonic_prost_build::configure()
        // Embedding payloads become `bytes::Bytes`: sliced from the received
        // buffer instead of copied into a fresh `Vec`.
        .bytes(".featmux.v1")
        .compile_fds(descriptors)?;
    Ok(())
}
