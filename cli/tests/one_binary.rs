//! `featmux` stays ONE executable with every subcommand (users like one
//! binary), whichever crate each command lives in. This test also makes
//! `cargo test --workspace` build the binary that the workspace tests in
//! `tests/` start.

use std::process::Command;

#[test]
fn one_featmux_binary_has_every_command() {
    let output = Command::new(env!("CARGO_BIN_EXE_featmux"))
        .arg("--help")
        .output()
        .expect("featmux runs");
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for command in [
        "serve",
        "demo",
        "device-bench",
        "migrate",
        "bench",
        "dataset",
        "train",
        "table",
        "feature",
        "lookup",
        "explain",
        "checkpoint",
        "stats",
    ] {
        assert!(
            help.lines()
                .any(|line| line.trim_start().starts_with(&format!("{command} "))),
            "`featmux --help` does not list `{command}`:\n{help}"
        );
    }
}
