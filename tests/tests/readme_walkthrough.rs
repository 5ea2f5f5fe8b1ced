//! Runs the README's five-minute walkthrough exactly as written: every `sh`
//! block of that section, in order, in one bash script (`set -e`), in an
//! empty directory, with the freshly built `featmux` first on PATH. The one
//! substitution: `cargo run … --example train_step --` becomes the example
//! binary cargo already built (no cargo inside a test).
//!
//! It uses the default ports (50051, 8080), as the README does.

use std::process::Command;

use featmux_tests::server::featmux_binary;

fn walkthrough_script() -> String {
    let readme = include_str!("../../README.md");
    let section = readme
        .split("\n## Five-minute walkthrough\n")
        .nth(1)
        .expect("README has a walkthrough section");
    let section = section.split("\n## ").next().unwrap();
    let mut script = String::from("set -euo pipefail\n");
    let mut blocks = section.split("```sh\n").skip(1);
    for block in blocks.by_ref() {
        script.push_str(block.split("\n```").next().unwrap());
        script.push('\n');
    }
    script
}

#[test]
fn the_readme_walkthrough_runs_as_written() {
    let binary = featmux_binary();
    let bin_dir = binary.parent().unwrap();
    let example = bin_dir.join("examples").join("train_step");
    assert!(example.exists(), "{} was not built", example.display());
    let script = walkthrough_script().replace(
        "cargo run --release -p featmux-client --example train_step --",
        example.to_str().unwrap(),
    );
    assert!(script.contains("featmux serve"), "{script}");
    assert!(
        !script.contains("cargo "),
        "a command would need cargo: {script}"
    );

    let dir = tempfile::tempdir().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let output = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(dir.path())
        .env("PATH", path)
        .env_remove("FEATMUX_TOKEN")
        .output()
        .expect("run bash");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "walkthrough failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );

    // What each step should have printed.
    for needle in [
        "ready",                       // readyz
        "ads: 1000000 rows × 16 dims", // table create (CLI)
        "\"name\":\"web\"",            // table create (curl)
        "\"width\":64",                // lookup: 16 + 16 + 32
        "pushed version 1",            // client push
        "user_id=u1 -> rows [",        // explain
        "\"version\": 1",              // stats --json
        "checkpoint 1 at version 1",   // checkpoint
    ] {
        assert!(
            stdout.contains(needle),
            "missing `{needle}` in\n{stdout}\n--- stderr\n{stderr}"
        );
    }
    assert!(
        stderr.contains("listening"),
        "the server logs where it listens:\n{stderr}"
    );
    assert!(
        dir.path().join("featmux-data/db").is_dir(),
        "data lands in ./featmux-data"
    );
}
