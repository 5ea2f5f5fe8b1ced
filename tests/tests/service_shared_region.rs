//! Shared-memory regions on the Train stream (`OpenRegion`, `RegionLookup`,
//! `RegionPush`), for trainers on the server's machine: the embeddings a
//! region lookup leaves in the region are the ones a socket lookup
//! answers, a region push (for a ticket, or for a batch that is in the
//! region too) moves the rows by exactly the step its gradients ask for,
//! the client cannot resize the region under the server's
//! mapping, the region socket hands a descriptor out only for its token,
//! and every request the server cannot serve from the region is refused
//! with the stream left open and the server up.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use featmux_client::{pb, BatchBuilder, Client, Code, TrainStream};
use featmux_tests::refusals::expect_status;
use featmux_tests::requests::{assert_close, feature, sgd_table, Http};
use featmux_tests::server::{unix_client, ServerSettings, TestServer};

/// Two features: `u` one chunk of 4 floats, `v` two chunks of 4.
fn batch() -> pb::Batch {
    let mut b = BatchBuilder::new();
    b.example()
        .add_str("u", "alice")
        .add_str("u", "bob")
        .add_str("v", "x");
    b.example().add_str("u", "carol").add_str("v", "y");
    b.build().unwrap()
}

struct Setup {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    server: TestServer,
}

fn start(max_shared_memory_bytes: u64) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("grpc.sock");
    let settings = ServerSettings {
        extra_toml: format!(
            "grpc_unix_socket = {socket:?}\n\
             [limits]\nmax_shared_memory_bytes = {max_shared_memory_bytes}\n"
        ),
    };
    let server = TestServer::start(&dir.path().join("data"), &settings);
    Setup {
        _dir: dir,
        socket,
        server,
    }
}

async fn create_table(client: &Client) {
    client
        .create_table(
            sgd_table("t", 1000, 4, 0.5),
            vec![
                feature("u", pb::ValueType::String, pb::Pooling::Sum, 1),
                feature("v", pb::ValueType::String, pb::Pooling::Sum, 2),
            ],
        )
        .await
        .unwrap();
}

/// `featmux_shared_memory_bytes` from `/metrics`.
async fn shared_memory_bytes(server: &TestServer) -> f64 {
    Http::new(reqwest::Client::new(), server.http_url(), "")
        .metric("featmux_shared_memory_bytes")
        .await
}

#[test]
fn region_lookups_and_pushes_match_the_socket() {
    let setup = start(1 << 20);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = unix_client(&setup.socket, None).await;
        create_table(&client).await;
        let mut plain = client.train().await.unwrap();
        let expected = plain.lookup("t", batch(), false).await.unwrap();

        let mut stream = client.train().await.unwrap();
        stream.open_region(4096).await.unwrap();
        let answer = stream
            .lookup_into_region("t", batch(), true, 16)
            .await
            .unwrap();
        let region = stream.region().unwrap();
        assert_eq!(region.len(), 4096);
        let mut at = 16;
        assert_eq!(answer.blocks.len(), expected.embeddings.len());
        for (block, want) in answer.blocks.iter().zip(&expected.embeddings) {
            assert_eq!(
                (
                    block.feature.as_str(),
                    block.rows as usize,
                    block.width as usize
                ),
                (want.feature.as_str(), want.rows, want.width)
            );
            assert_eq!(block.offset, at);
            assert_eq!(region.block(block).unwrap(), want.data.as_slice());
            at += want.data.len() as u64 * 4;
        }

        // Gradient 1 on every pooled float of `u`, 2 on every float of
        // `v`; SGD at lr 0.5 moves each row by -0.5 per unit of gradient
        // per occurrence.
        let region = stream.region_mut().unwrap();
        let mut gradients = Vec::new();
        let mut at = 1024;
        for (want, g) in expected.embeddings.iter().zip([1.0, 2.0]) {
            let floats = want.data.len();
            region.floats_mut(at, floats).unwrap().fill(g);
            gradients.push(pb::RegionGradient {
                feature: want.feature.clone(),
                offset: at,
                bytes: floats as u64 * 4,
            });
            at += floats as u64 * 4;
        }
        let pushed = stream
            .push_ticket_from_region("t", answer.ticket, gradients.clone())
            .await
            .unwrap();
        assert_eq!(pushed.unique_rows, 3 + 2 * 2);
        // The same gradients again, for the batch itself (no ticket),
        // which goes through the region as well.
        let pushed = stream
            .push_batch_from_region("t", batch(), gradients, 2048)
            .await
            .unwrap();
        assert_eq!(pushed.unique_rows, 3 + 2 * 2);
        let encoded = stream.region().unwrap().floats(2048, 4).unwrap();
        assert!(
            encoded.iter().any(|&x| x != 0.0),
            "the batch is in the region"
        );

        let after = plain.lookup("t", batch(), false).await.unwrap();
        // u: example 0 pools alice + bob (2 rows), example 1 carol (1).
        let step_u = [1.0, 0.5];
        // v: one value per example, each row moved by 0.5 * 2; both
        // pushes alike.
        let step_v = [1.0, 1.0];
        for ((got, want), steps) in after
            .embeddings
            .iter()
            .zip(&expected.embeddings)
            .zip([step_u, step_v])
        {
            let moved: Vec<f32> = want
                .data
                .iter()
                .enumerate()
                .map(|(i, x)| x - 2.0 * steps[i / want.width])
                .collect();
            assert_close(&got.data, &moved);
        }
    });
    assert!(setup.server.stop().success());
}

#[test]
fn requests_the_region_cannot_serve_are_refused_and_the_stream_goes_on() {
    let setup = start(1 << 20);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = unix_client(&setup.socket, None).await;
        create_table(&client).await;

        // Over TCP there are no regions.
        let tcp = setup.server.client(None).await;
        let mut over_tcp = tcp.train().await.unwrap();
        expect_status(
            over_tcp.open_region(4096).await,
            Code::FailedPrecondition,
            "Unix socket",
        );
        over_tcp.lookup("t", batch(), false).await.unwrap();

        let mut stream = client.train().await.unwrap();
        expect_status(
            stream.lookup_into_region("t", batch(), false, 0).await,
            Code::FailedPrecondition,
            "send OpenRegion first",
        );
        for (bytes, code, needle) in [
            (2 << 20, Code::ResourceExhausted, "max_shared_memory_bytes"),
            (0, Code::InvalidArgument, "positive multiple of 4"),
            (4095, Code::InvalidArgument, "positive multiple of 4"),
        ] {
            expect_status(stream.open_region(bytes).await, code, needle);
            assert_eq!(shared_memory_bytes(&setup.server).await, 0.0, "{bytes}");
        }
        stream.open_region(256).await.unwrap();
        expect_status(
            stream.open_region(256).await,
            Code::FailedPrecondition,
            "one per stream",
        );

        // The answer is 2 × 4 + 2 × 8 floats = 96 bytes.
        let good = stream
            .lookup_into_region("t", batch(), true, 0)
            .await
            .unwrap();
        let written = stream.region().unwrap().floats(0, 24).unwrap().to_vec();
        for (offset, needle) in [(200, "of a region of 256 bytes"), (2, "multiples of 4")] {
            expect_status(
                stream.lookup_into_region("t", batch(), false, offset).await,
                Code::InvalidArgument,
                needle,
            );
        }
        // The server wrote nothing: the good answer is still there, and
        // from 200 on only the refused lookup's own batch is.
        let region = stream.region().unwrap();
        assert_eq!(region.floats(0, 24).unwrap(), written.as_slice());
        assert!(region.floats(96, 26).unwrap().iter().all(|&x| x == 0.0));

        let gradient = |feature: &str, offset, bytes| pb::RegionGradient {
            feature: feature.into(),
            offset,
            bytes,
        };
        for (gradients, needle) in [
            (
                vec![gradient("u", 0, 32), gradient("v", 240, 64)],
                "of a region of 256 bytes",
            ),
            (
                vec![gradient("u", 0, 30), gradient("v", 32, 64)],
                "whole number of f32",
            ),
            (
                vec![gradient("u", 0, 32)],
                "1 gradient blocks for a batch of 2",
            ),
        ] {
            expect_status(
                stream
                    .push_ticket_from_region("t", good.ticket, gradients)
                    .await,
                Code::InvalidArgument,
                needle,
            );
        }
        // Gradients read in place are checked as the HTTP and socket ones
        // are: a NaN in the region refuses the push, naming its value.
        let floats = stream.region_mut().unwrap().floats_mut(96, 24).unwrap();
        floats.fill(0.5);
        floats[8 + 3] = f32::NAN;
        expect_status(
            stream
                .push_ticket_from_region(
                    "t",
                    good.ticket,
                    vec![gradient("u", 96, 32), gradient("v", 128, 64)],
                )
                .await,
            Code::InvalidArgument,
            "invalid gradients for feature `v`: value 3 is NaN",
        );
        // Nothing moved: the refused pushes changed no row.
        let unchanged = stream.lookup("t", batch(), false).await.unwrap();
        let flat: Vec<f32> = unchanged
            .embeddings
            .iter()
            .flat_map(|e| e.data.clone())
            .collect();
        assert_eq!(flat, written);
    });
    assert!(setup.server.stop().success());
}

#[test]
fn a_client_can_neither_shrink_nor_grow_its_region() {
    let setup = start(1 << 20);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = unix_client(&setup.socket, None).await;
        create_table(&client).await;
        let mut stream = client.train().await.unwrap();
        let region = stream.open_region(4096).await.unwrap();
        // What a misbehaving process holding the region could try: a
        // shrunken file under the server's mapping would be a SIGBUS.
        let held = region.try_clone_file().unwrap();
        for size in [0, 16, 1 << 20] {
            let err = held.set_len(size).unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{size}");
        }
        let answer = stream
            .lookup_into_region("t", batch(), true, 0)
            .await
            .unwrap();
        let gradients = answer
            .blocks
            .iter()
            .map(|b| pb::RegionGradient {
                feature: b.feature.clone(),
                offset: 1024,
                bytes: u64::from(b.rows * b.width) * 4,
            })
            .collect();
        stream
            .push_ticket_from_region("t", answer.ticket, gradients)
            .await
            .unwrap();
    });
    assert!(setup.server.stop().success());
}

/// The region socket answers 0, with no descriptor, for a token it did not
/// hand out; it sits beside the gRPC socket with the same mode.
#[test]
fn the_region_socket_hands_out_nothing_without_a_token() {
    let setup = start(1 << 20);
    let path = format!("{}.regions", setup.socket.display());
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o660);
    let mut socket = std::os::unix::net::UnixStream::connect(&path).unwrap();
    std::io::Write::write_all(&mut socket, &[7; 16]).unwrap();
    let mut answer = Vec::new();
    std::io::Read::read_to_end(&mut socket, &mut answer).unwrap();
    assert_eq!(answer, [0]);
    assert!(setup.server.stop().success());
    assert!(!Path::new(&path).exists(), "removed at shutdown");
}

#[test]
fn a_streams_region_goes_when_the_stream_ends() {
    let setup = start(64 << 10);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = unix_client(&setup.socket, None).await;
        // The whole budget, then the stream ends: the budget comes back.
        let mut first: TrainStream = client.train().await.unwrap();
        first.open_region(64 << 10).await.unwrap();
        assert_eq!(shared_memory_bytes(&setup.server).await, (64 << 10) as f64);
        let mut second = client.train().await.unwrap();
        expect_status(
            second.open_region(4096).await,
            Code::ResourceExhausted,
            "max_shared_memory_bytes",
        );
        drop(first);
        // The server notices the stream's end asynchronously.
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Err(e) = second.open_region(64 << 10).await {
            assert!(Instant::now() < deadline, "the budget never came back: {e}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(second);
        let deadline = Instant::now() + Duration::from_secs(10);
        while shared_memory_bytes(&setup.server).await != 0.0 {
            assert!(Instant::now() < deadline, "the gauge never went back to 0");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    assert!(setup.server.stop().success());
}
