//! gRPC on a Unix domain socket (`grpc_unix_socket`): a client dialling
//! `unix://PATH` gets the same services, answers and token checks as over
//! TCP; the socket file goes away when the server stops; and a path that
//! is not a stale socket is refused at start-up without being touched.

use std::process::Command;

use featmux_client::{pb, BatchBuilder, Code};
use featmux_tests::refusals::expect_status;
use featmux_tests::requests::{assert_close, feature, sgd_table};
use featmux_tests::server::{featmux_binary, unix_client, ServerSettings, TestServer};

const ADMIN: &str = "admin-secret";
const DATA: &str = "data-secret";

fn batch() -> pb::Batch {
    let mut b = BatchBuilder::new();
    b.example().add_str("u", "alice").add_str("u", "bob");
    b.example().add_str("u", "carol");
    b.build().unwrap()
}

fn rows(lookup: featmux_client::Lookup) -> Vec<Vec<f32>> {
    lookup.embeddings.into_iter().map(|e| e.data).collect()
}

#[test]
fn grpc_over_a_unix_socket_matches_tcp_and_checks_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("grpc.sock");
    let settings = ServerSettings {
        extra_toml: format!(
            "grpc_unix_socket = {socket:?}\n\
             [auth]\nadmin_token = \"{ADMIN}\"\ndata_token = \"{DATA}\"\n"
        ),
    };
    let server = TestServer::start(&dir.path().join("data"), &settings);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let admin = unix_client(&socket, Some(ADMIN)).await;
        admin
            .create_table(
                sgd_table("t", 1000, 4, 0.5),
                vec![feature("u", pb::ValueType::String, pb::Pooling::Sum, 1)],
            )
            .await
            .unwrap();

        let local = unix_client(&socket, Some(DATA)).await;
        let tcp = server.client(Some(DATA)).await;
        let before = rows(local.lookup("t", &batch(), false).await.unwrap());
        assert_eq!(
            before,
            rows(tcp.lookup("t", &batch(), false).await.unwrap())
        );

        // A push over the socket is seen over TCP, and a Train stream works.
        // SGD at lr 0.5, gradient 1 on every pooled float: each row moves by
        // -0.5, so example 0 (alice + bob) by -1 and example 1 (carol) by
        // -0.5. One block, feature `u`: 2 examples × 4 floats.
        let grads = vec![vec![1.0; 2 * 4]];
        local.push("t", &batch(), &grads).await.unwrap();
        let after = rows(tcp.lookup("t", &batch(), false).await.unwrap());
        let expected: Vec<f32> = before[0]
            .iter()
            .enumerate()
            .map(|(i, x)| x - if i < 4 { 1.0 } else { 0.5 })
            .collect();
        assert_close(&after[0], &expected);
        let mut stream = local.train().await.unwrap();
        assert_eq!(
            rows(stream.lookup("t", batch(), true).await.unwrap()),
            after
        );

        // Tokens apply on the socket as over TCP.
        let anonymous = unix_client(&socket, None).await;
        expect_status(
            anonymous.lookup("t", &batch(), false).await,
            Code::Unauthenticated,
            "missing",
        );
        expect_status(
            local.drop_table("t").await,
            Code::Unauthenticated,
            "admin token",
        );
    });
    assert!(server.stop().success());
    assert!(!socket.exists(), "the socket file is removed at shutdown");
}

#[test]
fn a_path_that_is_not_a_stale_socket_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-socket");
    std::fs::write(&file, b"keep me").unwrap();
    let output = Command::new(featmux_binary())
        .args([
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--grpc-unix-socket")
        .arg(&file)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("not-a-socket") && stderr.contains("is not a socket; not removing it"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
}
