//! `featmux device-bench` as a user runs it: the JSON report on candle's CPU
//! device (CI has no GPU; `scripts/gpu-check.sh` runs it on `cuda:0`), and
//! clear refusals for a GPU this binary cannot use and for bad sizes.

use std::process::{Command, Output};

use featmux_tests::server::featmux_binary;
use serde_json::Value;

fn device_bench(args: &[&str]) -> Output {
    Command::new(featmux_binary())
        .arg("device-bench")
        .args(args)
        .output()
        .expect("run featmux device-bench")
}

#[test]
fn reports_every_width_and_refuses_what_it_cannot_measure() {
    let out = device_bench(&[
        "--backend",
        "candle-cpu",
        "--rows",
        "5000",
        "--dims",
        "4,7",
        "--batch",
        "256",
        "--repeats",
        "2",
        "--optimizer",
        "adam",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["backend"], "candle-cpu");
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    for (result, (dim, state_width)) in results.iter().zip([(4, 9), (7, 15)]) {
        assert_eq!(result["dim"], dim);
        assert_eq!(result["state_width"], state_width, "adam keeps m, v and t");
        for part in [
            "gather_kernel",
            "update_kernel",
            "gather_call",
            "update_call",
            "ids_upload",
            "rows_download",
        ] {
            let rate = result[part]["rows_per_s"].as_f64().unwrap();
            assert!(rate.is_finite() && rate > 0.0, "{part}: {rate}");
        }
        assert!(result["copy_gb_per_s"].as_f64().unwrap() > 0.0);
    }

    for (args, needle) in [
        (&["--backend", "cpu"][..], "measures the candle backend"),
        (
            &["--backend", "candle-cpu", "--rows", "10", "--batch", "64"][..],
            "--rows at least --batch",
        ),
        (&["--backend", "candle-cpu", "--dims", "0"][..], "--dims"),
        (&["--backend", "tpu"][..], "--backend"),
    ] {
        let out = device_bench(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

/// The workspace's tests run the binary built without the `cuda` feature.
#[test]
fn a_gpu_backend_in_a_binary_without_cuda_is_refused_by_name() {
    let out = device_bench(&["--backend", "cuda:0"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("scripts/build-cuda.sh"), "{stderr}");
}
