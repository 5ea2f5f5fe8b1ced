//! Which lane a request's work takes (docs/DESIGN.md, "Serving beside
//! training"), seen from outside a real server: training work (pushes,
//! lookups that keep a ticket, Train streams, lookups larger than
//! `execution.serving_max_values`) waits for the low-priority bulk threads
//! and is counted in `featmux_bulk_wait_seconds`; small serving lookups
//! (gRPC and HTTP) and admin calls are not.

use featmux_client::{pb, BatchBuilder, Client};
use featmux_tests::requests::{feature, sgd_table, Http};
use featmux_tests::server::{ServerSettings, TestServer};
use serde_json::json;

/// `n` examples of one value each.
fn batch(n: i64) -> pb::Batch {
    let mut b = BatchBuilder::new();
    for id in 0..n {
        b.example().add_i64("id", id);
    }
    b.build().unwrap()
}

/// Training requests that waited for a bulk thread so far.
async fn bulk_jobs(http: &Http) -> f64 {
    let (status, body) = http.get("/metrics").await;
    assert_eq!(status, 200);
    let text = body.as_str().unwrap().to_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("featmux_bulk_wait_seconds_count "))
        .expect("featmux_bulk_wait_seconds_count is exported")
        .parse()
        .unwrap()
}

#[test]
fn training_work_takes_the_bulk_lane_and_serving_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(
        dir.path(),
        &ServerSettings {
            extra_toml: "[execution]\nbulk_threads = 1\nserving_max_values = 8\n".into(),
        },
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client: Client = server.client(None).await;
        let http = Http::new(reqwest::Client::new(), server.http_url(), "");
        client
            .create_table(
                sgd_table("t", 1000, 4, 0.1),
                vec![feature("id", pb::ValueType::Int64, pb::Pooling::Sum, 1)],
            )
            .await
            .unwrap();
        let mut expected = bulk_jobs(&http).await;
        assert_eq!(expected, 0.0, "admin calls are not bulk work");

        // Serving: small lookups without a ticket, over gRPC and HTTP.
        client.lookup("t", &batch(8), false).await.unwrap();
        let (status, _) = http
            .post("/v1/tables/t/lookup", "", json!({"examples": [{"id": 3}]}))
            .await;
        assert_eq!(status, 200);
        client.get_table("t").await.unwrap();
        assert_eq!(bulk_jobs(&http).await, expected);

        // Training: a lookup over the serving size, one keeping a ticket,
        // its push, a push by batch, and a Train stream's two messages.
        client.lookup("t", &batch(9), false).await.unwrap();
        let looked_up = client.lookup("t", &batch(4), true).await.unwrap();
        let grads = vec![vec![0.1; 16]];
        client
            .push_ticket("t", looked_up.ticket.unwrap(), &grads)
            .await
            .unwrap();
        client.push("t", &batch(4), &grads).await.unwrap();
        expected += 4.0;
        assert_eq!(bulk_jobs(&http).await, expected);
        let mut stream = client.train().await.unwrap();
        let ticket = stream
            .lookup("t", batch(4), true)
            .await
            .unwrap()
            .ticket
            .unwrap();
        stream.push_ticket("t", ticket, &grads).await.unwrap();
        drop(stream);
        expected += 2.0;
        assert_eq!(bulk_jobs(&http).await, expected);
    });
}
