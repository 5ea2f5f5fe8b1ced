//! `featmux dataset` as a user runs it: the summary of a CSV under a set of
//! flags, and clear errors (exit status 1, the problem named on stderr) for
//! a missing file, a missing column and an unparsable label.

use std::process::{Command, Output};

use featmux_tests::server::featmux_binary;
use serde_json::Value;

fn dataset(args: &[&str]) -> Output {
    Command::new(featmux_binary())
        .args(["--json", "dataset"])
        .args(args)
        .output()
        .expect("run featmux dataset")
}

#[test]
fn summarises_a_file_and_names_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ratings.csv");
    let mut csv = String::from("user_id,item_id,genres,rating,timestamp\n");
    for i in 0..100 {
        // The last ten rows (the test split) bring items never seen before.
        let item = if i >= 90 {
            format!("late{i}")
        } else {
            format!("i{}", i % 13)
        };
        csv += &format!(
            "u{},{item},g{}|g{},{},{i}\n",
            i % 7,
            i % 3,
            i % 5,
            1 + i % 5
        );
    }
    std::fs::write(&path, csv).unwrap();
    let file = path.to_str().unwrap();
    let flags = [
        "--data",
        file,
        "--label",
        "rating",
        "--positive",
        ">=4",
        "--categorical",
        "user_id,item_id",
        "--multi",
        "genres:|",
        "--split-by",
        "timestamp",
    ];
    let out = dataset(&flags);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["train"]["examples"], 80);
    assert_eq!(report["valid"]["examples"], 10);
    assert_eq!(report["test"]["examples"], 10);
    // Ratings 4 and 5 are positive: 2 of every 5 rows.
    assert_eq!(report["train"]["positives"], 32);
    let vocab: Vec<u64> = report["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["vocabulary"].as_u64().unwrap())
        .collect();
    // Vocabularies come from the training split: the test split's new items
    // do not size the table.
    assert_eq!(vocab, [7, 13, 5]);

    // --export writes exactly those splits, example by example.
    let export = dir.path().join("split");
    let out = dataset(&[&flags[..], &["--export", export.to_str().unwrap()]].concat());
    assert!(out.status.success());
    let lines = |split: &str| -> Vec<Value> {
        std::fs::read_to_string(export.join(format!("{split}.jsonl")))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let (train, test) = (lines("train"), lines("test"));
    assert_eq!(
        (train.len(), lines("valid").len(), test.len()),
        (80, 10, 10)
    );
    let positives = train.iter().filter(|e| e["label"] == 1.0).count();
    assert_eq!(positives, 32);
    // Split by timestamp: the first row trains, the last one tests.
    assert_eq!(
        train[0]["features"],
        serde_json::json!({"user_id": ["u0"], "item_id": ["i0"], "genres": ["g0", "g0"]})
    );
    assert_eq!(
        test[9]["features"],
        serde_json::json!({"user_id": ["u1"], "item_id": ["late99"], "genres": ["g0", "g4"]})
    );

    let refused = |args: &[&str], needle: &str| {
        let out = dataset(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(needle),
            "`{stderr}` does not mention `{needle}`"
        );
    };
    let mut missing_file = flags;
    missing_file[1] = "/nonexistent/ratings.csv";
    refused(&missing_file, "/nonexistent/ratings.csv");
    let mut missing_column = flags;
    missing_column[7] = "user_id,country";
    refused(&missing_column, "no column `country`");
    let mut bad_label = flags;
    bad_label[3] = "genres";
    refused(&bad_label, "label column `genres` is `g0|g0`, not a number");
    let mut bad_rule = flags;
    bad_rule[5] = "4";
    refused(&bad_rule, "positive rule `4`");
}
