//! The Rust hashing must match an independent implementation bit for bit:
//! `fixtures/hashing_golden.json` was produced by `scripts/hashing_golden.py`
//! with PyPI's `xxhash` (C xxHash), not by this crate.

use featmux_engine::hashing::{chunk_seed, hash_key, Key, RowSpan};
use serde_json::Value;

#[test]
fn hashing_matches_the_independent_golden_vectors() {
    let fixture: Value =
        serde_json::from_str(include_str!("fixtures/hashing_golden.json")).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert!(
        cases.len() >= 30,
        "need at least 30 golden cases, have {}",
        cases.len()
    );
    for case in cases {
        let u = |k: &str| {
            case[k]
                .as_u64()
                .unwrap_or_else(|| panic!("{k} missing in {case}"))
        };
        let seed = chunk_seed(u("table_seed"), u("salt") as u32, u("chunk") as u32);
        assert_eq!(seed, u("chunk_seed"), "chunk seed of {case}");
        let key = match case["value_type"].as_str().unwrap() {
            "string" => Key::Str(case["value"].as_str().unwrap().as_bytes()),
            _ => Key::Int(case["value"].as_i64().unwrap()),
        };
        let hash = hash_key(key, seed);
        assert_eq!(hash, u("hash"), "hash of {case}");
        let span = RowSpan {
            offset: case["offset"].as_u64().unwrap_or(0),
            rows: u("rows"),
        };
        assert_eq!(span.row(hash), u("row"), "row of {case}");
    }
}

#[test]
fn golden_vectors_cover_the_required_cases() {
    let fixture: Value =
        serde_json::from_str(include_str!("fixtures/hashing_golden.json")).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    let has = |pred: &dyn Fn(&Value) -> bool| cases.iter().any(pred);
    assert!(has(&|c| c["value"] == ""), "empty string");
    assert!(
        has(&|c| c["value"].as_str().is_some_and(|s| !s.is_ascii())),
        "non-ASCII"
    );
    assert!(
        has(&|c| c["value"].as_i64().is_some_and(|v| v < 0)),
        "negative int64"
    );
    assert!(has(&|c| c["value"].as_i64() == Some(i64::MIN)), "i64::MIN");
    assert!(has(&|c| c["value"].as_i64() == Some(i64::MAX)), "i64::MAX");
    for chunk in 0..4 {
        assert!(has(&|c| c["chunk"] == chunk), "chunk {chunk}");
    }
    for rows in [1u64, 2, 1_000_003, 1 << 40] {
        assert!(has(&|c| c["rows"] == rows), "rows {rows}");
    }
    assert!(has(&|c| c.get("offset").is_some()), "partitioned placement");
}
