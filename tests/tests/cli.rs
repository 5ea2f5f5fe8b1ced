//! Every CLI command against a real server, with `--json` output parsed
//! and checked, and a refused command exiting 1 with the server's message.

use std::process::Command;

use featmux_tests::server::{featmux_binary, ServerSettings, TestServer};
use serde_json::Value;

struct Cli {
    addr: String,
}

impl Cli {
    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new(featmux_binary())
            .args(["--addr", &self.addr, "--token", "adm"])
            .args(args)
            .env_remove("FEATMUX_TOKEN")
            .env_remove("FEATMUX_ADDR")
            .output()
            .expect("run featmux")
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.run(&all);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "featmux {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("featmux {args:?}: not JSON ({e}): {stdout}"))
    }
}

#[test]
fn every_cli_command_works_with_json_output() {
    let dir = tempfile::tempdir().unwrap();
    let settings = ServerSettings {
        extra_toml: "[auth]\nadmin_token = \"adm\"\n".into(),
    };
    let server = TestServer::start(&dir.path().join("data"), &settings);
    let cli = Cli {
        addr: server.grpc_url(),
    };

    let created = cli.json(&[
        "table",
        "create",
        "ads",
        "--rows",
        "5000",
        "--chunk-dim",
        "4",
        "--optimizer",
        "adam",
        "--lr",
        "0.01",
        "--feature",
        "user",
        "--feature",
        "tags:pooling=mean,chunks=2",
        "--feature",
        "age:type=int64,rows=100",
    ]);
    assert_eq!(created["config"]["optimizer"]["kind"], "adam");
    assert_eq!(created["features"][1]["width"], 8);
    assert_eq!(created["features"][2]["placement"]["kind"], "partitioned");

    let listed = cli.json(&["table", "list"]);
    assert_eq!(listed["tables"][0]["config"]["name"], "ads");
    let shown = cli.json(&["table", "show", "ads"]);
    assert_eq!(shown["config"]["rows"], 5000);
    let added = cli.json(&["feature", "add", "ads", "country", "device:pooling=sqrtn"]);
    assert_eq!(added["features"].as_array().unwrap().len(), 5);

    let looked_up = cli.json(&[
        "lookup",
        "ads",
        r#"{"user": "u1", "tags": ["a", "b"], "age": 30}"#,
        r#"{"user": "u2"}"#,
    ]);
    assert_eq!(looked_up["embeddings"]["user"].as_array().unwrap().len(), 2);
    assert_eq!(
        looked_up["embeddings"]["tags"][0].as_array().unwrap().len(),
        8
    );

    let explained = cli.json(&["explain", "ads", "user=u1", "age=30", "tags=a"]);
    let rows = explained["explained"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert!(
        rows[1]["rows"][0].as_u64().unwrap() < 100,
        "age hashes into its 100-row slice"
    );
    assert_eq!(rows[2]["rows"].as_array().unwrap().len(), 2);

    let checkpoint = cli.json(&["checkpoint", "create"]);
    let id = checkpoint["id"].as_u64().unwrap().to_string();
    assert_eq!(
        cli.json(&["checkpoint", "list"])["checkpoints"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let restored = cli.json(&[
        "checkpoint",
        "restore",
        &id,
        "--table",
        "ads",
        "--into",
        "ads_copy",
    ]);
    assert_eq!(restored["config"]["name"], "ads_copy");
    let stats = cli.json(&["stats"]);
    assert_eq!(stats["tables"].as_array().unwrap().len(), 2);
    assert_eq!(
        cli.json(&["checkpoint", "delete", &id])["deleted"],
        checkpoint["id"]
    );
    assert_eq!(
        cli.json(&["table", "drop", "ads_copy"])["dropped"],
        "ads_copy"
    );

    // Refusals exit 1 with the server's message; text output works too.
    let missing = cli.run(&["table", "show", "nope"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("unknown table `nope`"));
    let bad = cli.run(&[
        "table",
        "create",
        "x",
        "--rows",
        "10",
        "--chunk-dim",
        "4",
        "--feature",
        "f:pooling=max",
    ]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("bad value `max` for `pooling`"));
    let text = cli.run(&["table", "show", "ads"]);
    assert!(String::from_utf8_lossy(&text.stdout)
        .starts_with("ads: 5000 rows × 4 dims, optimizer adam"));
    assert!(server.stop().success());
}
