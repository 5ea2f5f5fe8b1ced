//! `featmux train` end to end against a real `featmux serve`: a small CSV
//! whose label depends on two features trains through the service (loss
//! falls epoch after epoch, test AUC well above chance), the table it
//! created is left in the server, and `--in-process` gives the same model
//! (same seed, same arithmetic) without the network.

use std::process::Command;

use featmux_tests::server::{featmux_binary, ServerSettings, TestServer};
use serde_json::Value;

fn csv(path: &std::path::Path) {
    // Positive when the user is "fan" and the item is even, or with 10%
    // label noise: a pattern only the embeddings can carry.
    let mut text = String::from("user,item,tags,clicked\n");
    for i in 0..3000u64 {
        let user = if i % 3 == 0 { "fan" } else { "other" };
        let user = format!("{user}{}", i % 7);
        let item = i * 7919 % 50;
        let positive = user.starts_with("fan") == (item % 2 == 0);
        let noisy = i % 10 == 0;
        let label = u8::from(positive != noisy);
        text += &format!("{user},i{item},t{}|t{},{label}\n", item % 4, i % 3);
    }
    std::fs::write(path, text).unwrap();
}

fn train(args: &[&str]) -> (Option<i32>, Value, String) {
    let out = Command::new(featmux_binary())
        .args(args)
        .output()
        .expect("run featmux train");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (
        out.status.code(),
        report,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_small_model_trains_through_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("clicks.csv");
    csv(&data);
    let server = TestServer::start(&dir.path().join("featmux"), &ServerSettings::default());
    let addr = server.grpc_url();
    let flags = |table: &'static str| {
        vec![
            "--data".to_owned(),
            data.to_str().unwrap().to_owned(),
            "--label".into(),
            "clicked".into(),
            "--categorical".into(),
            "user,item".into(),
            "--multi".into(),
            "tags:|".into(),
            "--layout".into(),
            "unified".into(),
            "--rows".into(),
            "500".into(),
            "--epochs".into(),
            "4".into(),
            "--batch".into(),
            "64".into(),
            "--table".into(),
            table.into(),
        ]
    };
    let args = |extra: &[&str], table: &'static str| {
        let mut v = vec!["--addr".to_owned(), addr.clone(), "train".into()];
        v.extend(flags(table));
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let service = args(&[], "clicks");
    let service: Vec<&str> = service.iter().map(String::as_str).collect();
    let (code, report, stderr) = train(&service);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(report["mode"], "service");
    let losses: Vec<f64> = report["epochs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["train_loss"].as_f64().unwrap())
        .collect();
    assert_eq!(losses.len(), 4);
    assert!(
        losses.windows(2).all(|w| w[1] < w[0]),
        "loss must fall: {losses:?}"
    );
    let auc = report["test"]["auc"].as_f64().unwrap();
    assert!(auc > 0.8, "test AUC {auc}: {report}");
    assert_eq!(report["rows"], 500);
    assert_eq!(report["embedding_bytes"], 500 * 16 * 4);

    // The table is the server's: training it again by name is refused.
    let (code, _, stderr) = train(&service);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("clicks"), "{stderr}");

    // In-process: the same seed gives the same model.
    let local = args(&["--in-process"], "clicks-local");
    let local: Vec<&str> = local.iter().map(String::as_str).collect();
    let (code, in_process, stderr) = train(&local);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(in_process["mode"], "in-process");
    let local_auc = in_process["test"]["auc"].as_f64().unwrap();
    assert!((local_auc - auc).abs() < 1e-9, "{local_auc} vs {auc}");

    // Every sparse hyper-parameter is a flag, and reaches the table.
    let ftrl = args(
        &[
            "--sparse-optimizer",
            "ftrl",
            "--sparse-ftrl-beta",
            "0.5",
            "--sparse-l2",
            "0.25",
            "--sparse-initial-accumulator",
            "0.125",
            "--dense-beta1",
            "0.8",
        ],
        "clicks-ftrl",
    );
    let ftrl: Vec<&str> = ftrl.iter().map(String::as_str).collect();
    let (code, _, stderr) = train(&ftrl);
    assert_eq!(code, Some(0), "{stderr}");
    let shown = Command::new(featmux_binary())
        .args(["--addr", &addr, "--json", "table", "show", "clicks-ftrl"])
        .output()
        .unwrap();
    let shown: Value = serde_json::from_slice(&shown.stdout).unwrap();
    let optimizer = &shown["config"]["optimizer"];
    assert_eq!(optimizer["kind"], "ftrl", "{shown}");
    assert_eq!(
        (
            &optimizer["beta"],
            &optimizer["l2"],
            &optimizer["initial_accumulator"]
        ),
        (&Value::from(0.5), &Value::from(0.25), &Value::from(0.125)),
        "{shown}"
    );
    // One the optimizer does not have is refused, naming it.
    let foreign = args(&["--sparse-beta1", "0.8"], "clicks-foreign");
    let foreign: Vec<&str> = foreign.iter().map(String::as_str).collect();
    let (code, _, stderr) = train(&foreign);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("adagrad has no beta1"), "{stderr}");

    // This server samples occupancy (the default): comparing with exact
    // counts is refused, naming the setting.
    let check = args(&["--check-occupancy"], "clicks-check");
    let check: Vec<&str> = check.iter().map(String::as_str).collect();
    let (code, _, stderr) = train(&check);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("observes one batch in 16 (occupancy.sample_every)"),
        "{stderr}"
    );

    // Bad flags are named and nothing is created.
    let mut bad = args(&[], "bad");
    let label = bad.iter().position(|a| a == "clicked").unwrap();
    bad[label] = "tags".into();
    let bad: Vec<&str> = bad.iter().map(String::as_str).collect();
    let (code, _, stderr) = train(&bad);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("label column `tags`"), "{stderr}");
    assert!(server.stop().success());
}

#[test]
fn a_model_is_evaluated_through_read_replicas() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("clicks.csv");
    csv(&data);
    let fast_flushes = ServerSettings {
        extra_toml: "[storage]\nflush_interval_ms = 50\n[occupancy]\nsample_every = 1\n".into(),
    };
    let primary = TestServer::start(&dir.path().join("primary"), &fast_flushes);
    let replica = |name: &str, format: &str| {
        let settings = ServerSettings {
            extra_toml: format!(
                "[replica]\nprimary = \"{}\"\nrow_format = \"{format}\"\n",
                primary.grpc_url()
            ),
        };
        TestServer::start(&dir.path().join(name), &settings)
    };
    let (exact, int8) = (replica("exact", "f32"), replica("int8", "int8"));
    let replicas = format!("{},{}", exact.grpc_url(), int8.grpc_url());
    let data = data.to_str().unwrap();
    let (code, report, stderr) = train(&[
        "--addr",
        &primary.grpc_url(),
        "train",
        "--data",
        data,
        "--label",
        "clicked",
        "--categorical",
        "user,item",
        "--rows",
        "500",
        "--epochs",
        "2",
        "--batch",
        "64",
        "--table",
        "clicks",
        "--eval-replicas",
        &replicas,
        "--check-occupancy",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    let served = report["replicas"].as_array().unwrap();
    assert_eq!(served.len(), 2, "{report}");
    // The f32 copy serves the primary's exact rows: the same AUC.
    assert_eq!(served[0]["row_format"], "f32");
    assert_eq!(served[0]["auc_change"], 0.0, "{report}");
    assert_eq!(served[0]["test"]["log_loss"], report["test"]["log_loss"]);
    // int8 rows are close: the AUC moves by little, the rows take 24 bytes.
    assert_eq!(served[1]["row_format"], "int8");
    assert_eq!(served[1]["bytes_per_row"], 16 + 8);
    let change = served[1]["auc_change"].as_f64().unwrap();
    assert!(change.abs() < 0.01, "{report}");
    assert_ne!(
        served[1]["test"]["log_loss"], report["test"]["log_loss"],
        "int8 rows are not the exact rows"
    );
    // Every value was looked up: the occupied rows are exactly those the
    // dataset's values explain to, and each feature's counts are within
    // the sketches' error.
    let occupancy = &report["occupancy"];
    assert_eq!(
        occupancy["occupied_rows"]["exact"], occupancy["occupied_rows"]["reported"],
        "{occupancy}"
    );
    for feature in occupancy["features"].as_array().unwrap() {
        assert_eq!(feature["within_4_sigma"], true, "{feature}");
    }
}
