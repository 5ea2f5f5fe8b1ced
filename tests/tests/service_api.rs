//! Every endpoint of a real `featmux serve` process, through the Rust client
//! (gRPC) and through raw HTTP, with the two transports checked against each
//! other.

use featmux_client::{pb, BatchBuilder, Client, Code};
use featmux_tests::requests::{assert_close, feature, floats, sgd_table, Http};
use featmux_tests::server::{ServerSettings, TestServer};
use serde_json::json;

const ADMIN: &str = "admin-secret";
const DATA: &str = "data-secret";

fn settings() -> ServerSettings {
    ServerSettings {
        extra_toml: format!("[auth]\nadmin_token = \"{ADMIN}\"\ndata_token = \"{DATA}\"\n"),
    }
}

fn example_batch() -> pb::Batch {
    let mut b = BatchBuilder::new();
    b.example()
        .add_str("user_id", "u1")
        .add_strs("genres", ["comedy", "drama"])
        .add_i64("age", 25);
    b.example().add_str("user_id", "u2").add_i64("age", 40);
    b.build().unwrap()
}

async fn lookup_rows(client: &Client, table: &str) -> Vec<Vec<f32>> {
    client
        .lookup(table, &example_batch(), false)
        .await
        .unwrap()
        .embeddings
        .into_iter()
        .map(|e| e.data)
        .collect()
}

#[test]
fn every_endpoint_works_through_the_client_and_raw_http() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &settings());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let admin = server.client(Some(ADMIN)).await;
        let data = server.client(Some(DATA)).await;
        let http = Http::new(reqwest::Client::new(), server.http_url(), ADMIN);

        // Operations endpoints.
        assert_eq!(http.get("/healthz").await.0, 200);
        assert_eq!(http.get("/readyz").await.0, 200);
        let (status, openapi) = http.get("/openapi.json").await;
        assert_eq!(status, 200);
        for path in ["/v1/tables/{table}/lookup", "/v1/tables", "/v1/tables/{table}/explain", "/v1/checkpoints/{id}/restore", "/metrics"] {
            assert!(openapi["paths"].get(path).is_some(), "openapi lacks {path}");
        }
        assert!(openapi["components"]["schemas"].get("TableSpec").is_some());

        // Create: one table over gRPC, one over HTTP.
        let info = admin
            .create_table(
                sgd_table("ads", 10_000, 8, 0.5),
                vec![
                    feature("user_id", pb::ValueType::String, pb::Pooling::Sum, 1),
                    feature("genres", pb::ValueType::String, pb::Pooling::Mean, 1),
                    feature("age", pb::ValueType::Int64, pb::Pooling::Sum, 2),
                ],
            )
            .await
            .unwrap();
        assert_eq!(info.features.len(), 3);
        assert_eq!(info.features[2].width, 16);
        let (status, web) = http
            .post("/v1/tables", ADMIN, json!({"table": {"name": "web", "rows": 1000, "chunk_dim": 4, "max_abs_gradient": 2.5}, "features": [{"name": "query"}]}))
            .await;
        assert_eq!(status, 201, "{web}");
        assert_eq!(web["config"]["optimizer"]["kind"], "row_wise_adagrad");
        // Gradient clipping set over HTTP reads back over gRPC.
        assert_eq!(web["config"]["max_abs_gradient"], 2.5);
        let web_pb = admin.get_table("web").await.unwrap();
        assert_eq!(web_pb.config.unwrap().max_abs_gradient, Some(2.5));

        // List and get agree across transports.
        let listed: Vec<String> = admin.list_tables().await.unwrap().into_iter().map(|t| t.config.unwrap().name).collect();
        let (_, http_list) = http.get("/v1/tables").await;
        let http_names: Vec<&str> = http_list["tables"].as_array().unwrap().iter().map(|t| t["config"]["name"].as_str().unwrap()).collect();
        assert_eq!(listed.len(), 2);
        for name in &listed {
            assert!(http_names.contains(&name.as_str()));
        }
        let (_, ads) = http.get("/v1/tables/ads").await;
        assert_eq!(ads["features"][1]["pooling"], "mean");
        assert_eq!(ads["features"][2]["width"], 16);
        assert_eq!(ads["config"]["rows"], 10_000);

        // Add features over both.
        let info = admin.add_features("ads", vec![feature("country", pb::ValueType::String, pb::Pooling::Sum, 1)]).await.unwrap();
        assert_eq!(info.features.len(), 4);
        let (status, body) = http.post("/v1/tables/ads/features", ADMIN, json!({"features": [{"name": "device", "pooling": "sqrtn"}]})).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["features"].as_array().unwrap().len(), 5);

        // Lookup: gRPC and HTTP give the same vectors.
        let grpc = data.lookup("ads", &example_batch(), false).await.unwrap();
        assert!(grpc.ticket.is_none());
        let names: Vec<&str> = grpc.embeddings.iter().map(|e| e.feature.as_str()).collect();
        assert_eq!(names, ["user_id", "genres", "age"]);
        let examples = json!([
            {"user_id": "u1", "genres": ["comedy", "drama"], "age": 25},
            {"user_id": "u2", "age": [40]}
        ]);
        let (status, body) = http.post("/v1/tables/ads/lookup", DATA, json!({"examples": examples})).await;
        assert_eq!(status, 200, "{body}");
        for e in &grpc.embeddings {
            for i in 0..2 {
                let row = &e.data[i * e.width..(i + 1) * e.width];
                assert_close(&floats(&body["examples"][i][&e.feature]), row);
            }
        }
        // The client sends int64s packed; the same batch with them as
        // varints (`Int64Values`, what other gRPC clients send) gets the
        // same answer.
        let mut varints = example_batch();
        let age = &mut varints.features[2];
        let Some(pb::feature_values::Values::PackedInt64s(packed)) = age.values.take() else {
            panic!("the client sends int64s packed: {age:?}");
        };
        let values = packed
            .data
            .chunks(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect();
        age.values = Some(pb::feature_values::Values::Int64s(pb::Int64Values { values }));
        let from_varints = data.lookup("ads", &varints, false).await.unwrap();
        assert_eq!(from_varints.embeddings, grpc.embeddings);
        // Concatenated, in table order, every feature (missing = zeros).
        let (status, body) = http.post("/v1/tables/ads/lookup", DATA, json!({"examples": examples, "concat": true})).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["features"], json!(["user_id", "genres", "age", "country", "device"]));
        assert_eq!(body["width"], 8 + 8 + 16 + 8 + 8);
        let v0 = floats(&body["vectors"][0]);
        assert_eq!(v0.len(), 48);
        assert_close(&v0[..8], &grpc.embeddings[0].data[..8]);
        assert_close(&v0[16..32], &grpc.embeddings[2].data[..16]);
        assert!(v0[32..].iter().all(|&x| x == 0.0), "absent features pool to zeros");

        // Push with the batch: SGD moves each row by -lr * g.
        let before = lookup_rows(&data, "ads").await;
        let grads: Vec<Vec<f32>> = before.iter().map(|b| vec![0.1; b.len()]).collect();
        let pushed = data.push("ads", &example_batch(), &grads).await.unwrap();
        assert_eq!(pushed.version, 1);
        let after = lookup_rows(&data, "ads").await;
        // user_id rows are distinct: each moves by exactly 0.5 * 0.1.
        let moved: Vec<f32> = before[0].iter().map(|x| x - 0.05).collect();
        assert_close(&after[0], &moved);

        // Push with a ticket: same effect as pushing the batch.
        let looked_up = data.lookup("ads", &example_batch(), true).await.unwrap();
        let ticket = looked_up.ticket.expect("a ticket");
        let pushed = data.push_ticket("ads", ticket, &grads).await.unwrap();
        assert_eq!(pushed.version, 2);
        let after_ticket = lookup_rows(&data, "ads").await;
        let moved: Vec<f32> = after[0].iter().map(|x| x - 0.05).collect();
        assert_close(&after_ticket[0], &moved);
        let reused = data.push_ticket("ads", ticket, &grads).await.unwrap_err();
        assert_eq!(reused.code(), Some(Code::NotFound), "a ticket is used once");

        // Train stream: lookup with ticket, push, and the answers come in order.
        let mut stream = data.train().await.unwrap();
        let l = stream.lookup("ads", example_batch(), true).await.unwrap();
        assert_close(&l.embeddings[0].data, &after_ticket[0]);
        let p = stream.push_ticket("ads", l.ticket.unwrap(), &grads).await.unwrap();
        assert_eq!(p.version, 3);
        // Pipelined: two requests in flight, answers by id; a bad one does not end the stream.
        let id_bad = stream.send_lookup("missing", example_batch(), false).await.unwrap();
        let id_good = stream.send_lookup("ads", example_batch(), false).await.unwrap();
        let (first, bad) = stream.recv().await.unwrap();
        assert_eq!(first, id_bad);
        assert_eq!(bad.unwrap_err().code(), Some(Code::NotFound));
        let (second, good) = stream.recv().await.unwrap();
        assert_eq!(second, id_good);
        assert!(good.is_ok());
        drop(stream);

        // Explain: gRPC and HTTP agree, one row per chunk.
        let explained = admin
            .explain("ads", vec![BatchBuilder::strings_column("user_id", ["u1"], vec![1]), BatchBuilder::int64_column("age", vec![25], vec![1])])
            .await
            .unwrap();
        assert_eq!(explained.features[1].values[0].rows.len(), 2);
        let (status, body) = http.post("/v1/tables/ads/explain", ADMIN, json!({"features": {"user_id": "u1", "age": [25]}})).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["features"]["user_id"][0]["rows"], json!(explained.features[0].values[0].rows));
        assert_eq!(body["features"]["age"][0]["rows"], json!(explained.features[1].values[0].rows));

        // Stats over both.
        let stats = admin.stats().await.unwrap();
        assert_eq!(stats.version, 3);
        assert_eq!(stats.tables.len(), 2);
        let (_, http_stats) = http.get("/v1/stats").await;
        assert_eq!(http_stats["version"], 3);
        let (status, table_stats) = http.get("/v1/tables/ads/stats").await;
        assert_eq!(status, 200);
        assert!(table_stats["table"]["bytes_in_memory"].as_u64().unwrap() >= 10_000 * 8 * 4);
        assert!(table_stats["table"]["dirty_rows"].as_u64().is_some());
        assert_eq!(table_stats["version"], 3);

        // Checkpoints: create (both), list, restore into a copy, delete.
        let at_checkpoint = lookup_rows(&data, "ads").await;
        let checkpoint = admin.create_checkpoint().await.unwrap();
        assert_eq!(checkpoint.version, 3);
        data.push("ads", &example_batch(), &grads).await.unwrap();
        let (status, second) = http.send(reqwest::Method::POST, "/v1/checkpoints", Some(ADMIN), None).await;
        assert_eq!(status, 201, "{second}");
        assert_eq!(second["version"], 4);
        let listed = admin.list_checkpoints().await.unwrap();
        assert_eq!(listed.len(), 2);
        let (_, http_listed) = http.get("/v1/checkpoints").await;
        assert_eq!(http_listed["checkpoints"].as_array().unwrap().len(), 2);
        admin.restore_checkpoint(checkpoint.id, "ads", Some("ads_v3")).await.unwrap();
        assert_eq!(lookup_rows(&data, "ads_v3").await, at_checkpoint);
        let (status, body) = http
            .post(&format!("/v1/checkpoints/{}/restore", checkpoint.id), ADMIN, json!({"table": "ads"}))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(lookup_rows(&data, "ads").await, at_checkpoint, "restored in place");
        admin.delete_checkpoint(checkpoint.id).await.unwrap();
        let second_id = second["id"].as_u64().unwrap();
        let (status, _) = http.send(reqwest::Method::DELETE, &format!("/v1/checkpoints/{second_id}"), Some(ADMIN), None).await;
        assert_eq!(status, 204);
        assert!(admin.list_checkpoints().await.unwrap().is_empty());

        // Drop over both.
        admin.drop_table("ads_v3").await.unwrap();
        let (status, _) = http.send(reqwest::Method::DELETE, "/v1/tables/web", Some(ADMIN), None).await;
        assert_eq!(status, 204);
        let remaining: Vec<String> = admin.list_tables().await.unwrap().into_iter().map(|t| t.config.unwrap().name).collect();
        assert_eq!(remaining, ["ads"]);

        // Metrics reflect what happened.
        let (status, metrics) = http.get("/metrics").await;
        assert_eq!(status, 200);
        let metrics = metrics.as_str().unwrap().to_owned();
        for needle in [
            "featmux_requests_total{code=\"OK\",endpoint=\"Lookup\",transport=\"grpc\"}",
            "featmux_requests_total{code=\"NOT_FOUND\",endpoint=\"Train/Lookup\",transport=\"grpc\"} 1",
            "featmux_request_duration_seconds_bucket{code=\"200\",endpoint=\"POST /v1/tables/{table}/lookup\",transport=\"http\"",
            "featmux_rows_updated_total",
            "featmux_rows_looked_up_total",
            "featmux_training_version 4",
            "featmux_dirty_rows{table=\"ads\"}",
            "featmux_table_bytes{table=\"ads\"}",
            "featmux_flush_lag_versions",
            "featmux_flush_pushes_held_microseconds",
            "featmux_database_bytes",
        ] {
            assert!(metrics.contains(needle), "metrics lack {needle}:\n{metrics}");
        }
    });
    assert!(server.stop().success());
}
