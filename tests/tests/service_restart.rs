//! A table trained over gRPC survives a graceful restart: SIGTERM makes the
//! server drain, flush and exit 0; a new process on the same data dir
//! serves identical embeddings at the same training version.

use featmux_client::{pb, BatchBuilder, Client, ClientOptions};
use featmux_tests::requests::feature;
use featmux_tests::server::{ServerSettings, TestServer};

fn batch(step: usize) -> pb::Batch {
    let mut b = BatchBuilder::new();
    for e in 0..16 {
        b.example()
            .add_str("user", format!("u{}", (step * 16 + e) % 97))
            .add_i64("item", ((step * 31 + e) % 53) as i64);
    }
    b.build().unwrap()
}

async fn everything(client: &Client) -> Vec<Vec<f32>> {
    let mut out = Vec::new();
    for step in 0..10 {
        for e in client
            .lookup("t", &batch(step), false)
            .await
            .unwrap()
            .embeddings
        {
            out.push(e.data);
        }
    }
    out
}

#[test]
fn a_table_trained_over_grpc_survives_a_graceful_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    // A long flush interval: only the shutdown flush can persist the pushes.
    let settings = ServerSettings {
        extra_toml: "[storage]\nflush_interval_ms = 3600000\n".into(),
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = TestServer::start_restartable(&data_dir, &settings);
    let (trained, version) = runtime.block_on(async {
        let client = server.client(None).await;
        client
            .create_table(
                pb::TableConfig {
                    name: "t".into(),
                    rows: 2000,
                    chunk_dim: 8,
                    seed: 5,
                    ..Default::default()
                },
                vec![
                    feature("user", pb::ValueType::String, pb::Pooling::Sum, 1),
                    feature("item", pb::ValueType::Int64, pb::Pooling::Sum, 2),
                ],
            )
            .await
            .unwrap();
        let untrained = everything(&client).await;
        let mut stream = client.train().await.unwrap();
        for step in 0..50 {
            let looked_up = stream.lookup("t", batch(step % 10), true).await.unwrap();
            let grads: Vec<Vec<f32>> = looked_up
                .embeddings
                .iter()
                .map(|e| e.data.iter().map(|x| x - 0.3).collect())
                .collect();
            stream
                .push_ticket("t", looked_up.ticket.unwrap(), &grads)
                .await
                .unwrap();
        }
        drop(stream);
        let trained = everything(&client).await;
        assert_ne!(trained, untrained, "training moved the embeddings");
        (trained, client.stats().await.unwrap().version)
    });
    assert_eq!(version, 50);
    // A client connected before the restart keeps working: its calls get
    // UNAVAILABLE while the server is down and are retried with backoff.
    let mut options = ClientOptions::new(server.grpc_url());
    options.retries = 8;
    let old_client = runtime.block_on(Client::connect(options)).unwrap();
    let (grpc, http) = (server.grpc, server.http);
    let status = server.stop();
    assert!(status.success(), "graceful stop exits 0, got {status}");
    let during_restart = runtime.spawn(async move { everything(&old_client).await });

    let server = TestServer::start_at(&data_dir, &settings, grpc, http);
    runtime.block_on(async {
        assert_eq!(
            during_restart.await.unwrap(),
            trained,
            "retried across the restart"
        );
        let client = server.client(None).await;
        assert_eq!(everything(&client).await, trained);
        let stats = client.stats().await.unwrap();
        assert_eq!(stats.version, 50);
        assert_eq!(stats.flushed_version, 50);
    });
    assert!(server.stop().success());
}

#[test]
fn until_recovery_finishes_readyz_is_503_and_calls_are_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = TestServer::start(&data_dir, &ServerSettings::default());
    runtime.block_on(async {
        // Big enough that loading it at start-up takes a noticeable time
        // (2·10^7 rows × 8 floats, 640 MB, initialised on every start).
        let table = pb::TableConfig {
            name: "big".into(),
            rows: 20_000_000,
            chunk_dim: 8,
            optimizer: Some(pb::Optimizer {
                kind: Some(pb::optimizer::Kind::Sgd(pb::Sgd { lr: 0.1 })),
            }),
            ..Default::default()
        };
        let client = server.client(None).await;
        client
            .create_table(
                table,
                vec![feature("user", pb::ValueType::String, pb::Pooling::Sum, 1)],
            )
            .await
            .unwrap();
    });
    assert!(server.stop().success());

    let any = "127.0.0.1:0".parse().unwrap();
    let mut server = TestServer::spawn(&data_dir, &ServerSettings::default(), any, any);
    runtime.block_on(async {
        let readyz = reqwest::get(format!("{}/readyz", server.http_url()))
            .await
            .unwrap();
        assert_eq!(readyz.status().as_u16(), 503);
        assert!(readyz
            .text()
            .await
            .unwrap()
            .contains("recovery in progress"));
        assert_eq!(
            reqwest::get(format!("{}/healthz", server.http_url()))
                .await
                .unwrap()
                .status()
                .as_u16(),
            200
        );
        let mut options = ClientOptions::new(server.grpc_url());
        options.retries = 0;
        let impatient = Client::connect(options).await.unwrap();
        let err = impatient.list_tables().await.unwrap_err();
        assert_eq!(err.code(), Some(featmux_client::Code::Unavailable), "{err}");
    });
    let ready = server.wait_for_log("ready");
    eprintln!("recovery took {} ms", ready["load_ms"]);
    runtime.block_on(async {
        let readyz = reqwest::get(format!("{}/readyz", server.http_url()))
            .await
            .unwrap();
        assert_eq!(readyz.status().as_u16(), 200);
        assert_eq!(
            server.client(None).await.list_tables().await.unwrap().len(),
            1
        );
    });
    assert!(server.stop().success());
}
