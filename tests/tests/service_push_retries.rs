//! A push whose answer is lost on the way back is retried by the client
//! (the connection dropped: UNAVAILABLE) and must not be applied twice: the
//! client sends one request id for all attempts and the server answers a
//! repeated id with the first answer. A TCP proxy between client and server
//! lets the first push through and drops its response.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use featmux_client::{pb, BatchBuilder, Client, ClientOptions, IntoGradients};
use featmux_tests::requests::{feature, sgd_table};
use featmux_tests::server::{ServerSettings, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Forwards connections to `target`. On the first connection that carries
/// more than `request_bytes` from the client, nothing the server sends from
/// then on is delivered, and the connection is closed once the server has
/// had time to apply the request.
/// Returns the proxy's URL and the number of connections it accepted.
async fn response_dropping_proxy(
    target: std::net::SocketAddr,
    request_bytes: usize,
) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let armed = Arc::new(AtomicBool::new(true));
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        loop {
            let (client, _) = listener.accept().await.unwrap();
            counted.fetch_add(1, Ordering::SeqCst);
            let server = TcpStream::connect(target).await.unwrap();
            tokio::spawn(relay(client, server, armed.clone(), request_bytes));
        }
    });
    (url, connections)
}

async fn relay(client: TcpStream, server: TcpStream, armed: Arc<AtomicBool>, request_bytes: usize) {
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut server_rx, mut server_tx) = server.into_split();
    let sent = Arc::new(AtomicUsize::new(0));
    let cut = Arc::new(AtomicBool::new(false));
    let upstream = {
        let (sent, cut, armed) = (sent.clone(), cut.clone(), armed.clone());
        async move {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let n = match client_rx.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if server_tx.write_all(&buf[..n]).await.is_err() {
                    return;
                }
                let total = sent.fetch_add(n, Ordering::SeqCst) + n;
                if total > request_bytes && armed.swap(false, Ordering::SeqCst) {
                    // The push is on its way: from now on the server's
                    // answers are swallowed.
                    cut.store(true, Ordering::SeqCst);
                }
            }
        }
    };
    // Once cut, the rest of the request still reaches the server, which
    // applies it; then the connection is closed without an answer.
    let close_after_cut = {
        let cut = cut.clone();
        async move {
            while !cut.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    let downstream = {
        let cut = cut.clone();
        async move {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let n = match server_rx.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if cut.load(Ordering::SeqCst) {
                    continue; // swallowed: the answer is lost
                }
                if client_tx.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    };
    // Whichever side ends first ends the connection (dropping both halves).
    tokio::select! {
        _ = upstream => {}
        _ = downstream => {}
        _ = close_after_cut => {}
    }
}

fn batch() -> pb::Batch {
    let mut b = BatchBuilder::new();
    for i in 0..2000 {
        b.example().add_str("u", format!("user{i}"));
    }
    b.build().unwrap()
}

#[test]
fn a_retried_push_whose_answer_was_lost_is_applied_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &ServerSettings::default());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let admin = server.client(None).await;
        admin
            .create_table(
                sgd_table("t", 100_000, 8, 1.0),
                vec![feature("u", pb::ValueType::String, pb::Pooling::Sum, 1)],
            )
            .await
            .unwrap();
        let before = admin.lookup("t", &batch(), false).await.unwrap();
        // 2,000 examples × 8 floats of gradients: ~90 KB of request.
        let grads = vec![vec![0.25f32; 2000 * 8]];
        let (url, connections) = response_dropping_proxy(server.grpc, 40_000).await;
        let mut options = ClientOptions::new(url);
        options.retries = 3;
        options.backoff = Duration::from_millis(50);
        let trainer = Client::connect(options).await.unwrap();
        let pushed = trainer.push("t", &batch(), &grads).await.unwrap();
        assert!(
            connections.load(Ordering::SeqCst) >= 2,
            "the first answer was not dropped: nothing was retried"
        );

        let stats = admin.stats().await.unwrap();
        assert_eq!(stats.version, 1, "the retried push was applied twice");
        assert_eq!(pushed.version, 1, "the retry got another answer");
        let after = admin.lookup("t", &batch(), false).await.unwrap();
        for (b, a) in before.embeddings[0]
            .data
            .iter()
            .zip(&after.embeddings[0].data)
        {
            // SGD, lr 1: one application moves every float by exactly -0.25
            // (rows are distinct per user unless two collide: then -0.5).
            let moved = b - a;
            assert!(
                (moved - 0.25).abs() < 1e-5 || (moved - 0.5).abs() < 1e-5,
                "a float moved by {moved}: the gradient was applied more than once"
            );
        }
    });
    assert!(server.stop().success());
}

/// The same request id over a ticket push: the retry gets the first answer,
/// not NOT_FOUND for the ticket the first attempt consumed.
#[test]
fn a_repeated_request_id_returns_the_first_answer() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &ServerSettings::default());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let admin = server.client(None).await;
        admin
            .create_table(
                sgd_table("t", 1000, 4, 0.1),
                vec![feature("u", pb::ValueType::String, pb::Pooling::Sum, 1)],
            )
            .await
            .unwrap();
        let mut b = BatchBuilder::new();
        b.example().add_str("u", "a");
        let looked_up = admin.lookup("t", &b.build().unwrap(), true).await.unwrap();
        let request = pb::PushRequest {
            table: "t".into(),
            target: Some(pb::push_request::Target::Ticket(looked_up.ticket.unwrap())),
            gradients: [vec![0.5; 4]].as_slice().into_gradients(pb::Precision::F32),
            request_id: 0xfeed,
            precision: pb::Precision::F32.into(),
        };
        let mut raw =
            pb::embedding_service_client::EmbeddingServiceClient::connect(server.grpc_url())
                .await
                .unwrap();
        let first = raw.push(request.clone()).await.unwrap().into_inner();
        let again = raw.push(request.clone()).await.unwrap().into_inner();
        assert_eq!(first, again);
        assert_eq!(admin.stats().await.unwrap().version, 1);
        // Without an id the ticket is gone, as before.
        let status = raw
            .push(pb::PushRequest {
                request_id: 0,
                ..request
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    });
    assert!(server.stop().success());
}
