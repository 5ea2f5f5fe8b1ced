//! Lookups answered in 16-bit floats (`LookupRequest.precision`): over
//! unary `Lookup` and the Train stream each value is the f32 answer
//! rounded to f16 or bf16 (ties to even) and widened back by the client;
//! pushes still train the f32 table; the message limit counts 2 bytes a
//! float; an unknown precision, and one asked of a region lookup, are
//! refused by name. Pushes with 16-bit gradients (`PushRequest.precision`)
//! apply each gradient rounded, in f32; a region push refuses them.

use featmux_client::{pb, BatchBuilder, Client, ClientOptions, Code};
use featmux_tests::refusals::expect_status;
use featmux_tests::requests::{feature, sgd_table};
use featmux_tests::server::{ServerSettings, TestServer};
use half::{bf16, f16};
use tokio_stream::StreamExt;

const EXAMPLES: usize = 1500;
const DIM: usize = 16;

/// `EXAMPLES` examples of one value each: 96,000 bytes as f32, 48,000 as
/// 16-bit floats, either side of the 65,536-byte message limit.
fn batch() -> pb::Batch {
    examples(0..EXAMPLES)
}

fn examples(range: std::ops::Range<usize>) -> pb::Batch {
    let mut b = BatchBuilder::new();
    for i in range {
        b.example().add_str("u", format!("v{i}"));
    }
    b.build().unwrap()
}

async fn client(server: &TestServer, precision: pb::Precision) -> Client {
    let mut options = ClientOptions::new(server.grpc_url());
    options.lookup_precision = precision;
    Client::connect(options).await.unwrap()
}

async fn pushing_client(server: &TestServer, precision: pb::Precision) -> Client {
    let mut options = ClientOptions::new(server.grpc_url());
    options.push_precision = precision;
    Client::connect(options).await.unwrap()
}

/// Table `t`: SGD at lr 0.5, 10^5 rows of `DIM`, one string feature `u`.
async fn create_table(client: &Client) {
    client
        .create_table(
            sgd_table("t", 100_000, DIM as u32, 0.5),
            vec![feature("u", pb::ValueType::String, pb::Pooling::Sum, 1)],
        )
        .await
        .unwrap();
}

/// tonic's generated client: it sends fields featmux's own client never
/// sets (unknown precisions, 16 bits in a region request).
async fn generated_client(
    server: &TestServer,
) -> pb::embedding_service_client::EmbeddingServiceClient<tonic::transport::Channel> {
    pb::embedding_service_client::EmbeddingServiceClient::connect(server.grpc_url())
        .await
        .unwrap()
}

/// Asserts that a Train-stream answer is an INVALID_ARGUMENT refusal
/// saying `needle`.
fn expect_invalid(answer: pb::TrainResponse, needle: &str) {
    let Some(pb::train_response::Result::Error(error)) = answer.result else {
        panic!("refused: {answer:?}");
    };
    assert_eq!(error.code, Code::InvalidArgument as i32, "{error:?}");
    assert!(error.message.contains(needle), "{error:?}");
}

fn rounded(values: &[f32], precision: pb::Precision) -> Vec<f32> {
    values
        .iter()
        .map(|&v| match precision {
            pb::Precision::F16 => f16::from_f32(v).to_f32(),
            pb::Precision::Bf16 => bf16::from_f32(v).to_f32(),
            pb::Precision::F32 => v,
        })
        .collect()
}

/// The exact f32 answer for `batch()`, looked up in two halves (each
/// within the message limit in f32).
async fn exact(f32_client: &Client) -> Vec<f32> {
    let mut values = Vec::new();
    for half in [0..EXAMPLES / 2, EXAMPLES / 2..EXAMPLES] {
        let answer = f32_client.lookup("t", &examples(half), false).await;
        values.extend_from_slice(&answer.unwrap().embeddings[0].data);
    }
    values
}

#[test]
fn sixteen_bit_answers_are_the_f32_ones_rounded() {
    let dir = tempfile::tempdir().unwrap();
    let settings = ServerSettings {
        extra_toml: "[limits]\nmax_message_bytes = 65536\n".into(),
    };
    let server = TestServer::start(&dir.path().join("data"), &settings);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let f32_client = client(&server, pb::Precision::F32).await;
        create_table(&f32_client).await;
        let exact = exact(&f32_client).await;
        assert_eq!(exact.len(), EXAMPLES * DIM);

        // 96,000 bytes of f32 would break the limit; 48,000 of 16 bits fit.
        expect_status(
            f32_client.lookup("t", &batch(), false).await,
            Code::ResourceExhausted,
            "96000 bytes as f32",
        );
        for precision in [pb::Precision::F16, pb::Precision::Bf16] {
            let sixteen = client(&server, precision).await;
            let answer = sixteen.lookup("t", &batch(), false).await.unwrap();
            assert_eq!(answer.embeddings.len(), 1);
            let block = &answer.embeddings[0];
            assert_eq!((block.rows, block.width), (EXAMPLES, DIM));
            assert_eq!(block.data, rounded(&exact, precision), "{precision:?}");
            assert_ne!(block.data, exact, "rounded, not exact");

            let mut stream = sixteen.train().await.unwrap();
            let looked_up = stream.lookup("t", batch(), true).await.unwrap();
            assert_eq!(looked_up.embeddings[0].data, rounded(&exact, precision));
        }

        // A push of a 16-bit lookup's ticket trains the f32 table: SGD at
        // lr 0.5 with gradient 1 moves each float by exactly -0.5 (four
        // values of their own rows).
        let mut b = BatchBuilder::new();
        for key in ["p0", "p1", "p2", "p3"] {
            b.example().add_str("u", key);
        }
        let pushed = b.build().unwrap();
        let before = f32_client.lookup("t", &pushed, false).await.unwrap();
        let mut stream = client(&server, pb::Precision::Bf16)
            .await
            .train()
            .await
            .unwrap();
        let ticket = stream
            .lookup("t", pushed.clone(), true)
            .await
            .unwrap()
            .ticket;
        stream
            .push_ticket("t", ticket.unwrap(), &[vec![1.0; 4 * DIM]])
            .await
            .unwrap();
        let after = f32_client.lookup("t", &pushed, false).await.unwrap();
        let moved: Vec<f32> = before.embeddings[0].data.iter().map(|v| v - 0.5).collect();
        assert_eq!(after.embeddings[0].data, moved);
    });
}

#[test]
fn unknown_precisions_and_region_precisions_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &ServerSettings::default());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        create_table(&server.client(None).await).await;
        let mut generated = generated_client(&server).await;
        let lookup = |precision: i32| pb::LookupRequest {
            table: "t".into(),
            batch: Some(batch()),
            want_ticket: false,
            precision,
        };
        let status = generated.lookup(lookup(9)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status
                .message()
                .contains("unknown precision 9: 0 (f32), 1 (f16) or 2 (bf16)"),
            "{status:?}"
        );

        // A region lookup's blocks are f32 in shared memory: asking it for
        // bf16 is refused on the stream, which goes on.
        let requests = tokio_stream::iter([
            pb::TrainRequest {
                id: 1,
                op: Some(pb::train_request::Op::RegionLookup(pb::RegionLookup {
                    lookup: Some(lookup(pb::Precision::Bf16.into())),
                    ..Default::default()
                })),
            },
            pb::TrainRequest {
                id: 2,
                op: Some(pb::train_request::Op::Lookup(lookup(
                    pb::Precision::Bf16.into(),
                ))),
            },
        ]);
        let mut answers = generated.train(requests).await.unwrap().into_inner();
        let first = answers.next().await.unwrap().unwrap();
        expect_invalid(first, "a region lookup's blocks are f32");
        let second = answers.next().await.unwrap().unwrap();
        let Some(pb::train_response::Result::Lookup(answer)) = second.result else {
            panic!("answered: {second:?}");
        };
        assert_eq!(answer.embeddings[0].precision, pb::Precision::Bf16 as i32);
        assert_eq!(answer.embeddings[0].data.len(), EXAMPLES * DIM * 2);
    });
}

#[test]
fn sixteen_bit_gradients_are_rounded_then_applied_in_f32() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &ServerSettings::default());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let exact = client(&server, pb::Precision::F32).await;
        create_table(&exact).await;
        // 1/3 is no f16 or bf16: each push moves the rows by lr times the
        // gradient as rounded (SGD at lr 0.5; one value per example, each
        // of its own row).
        let batch = examples(0..4);
        let grads = vec![vec![1.0f32 / 3.0; 4 * DIM]];
        for precision in [pb::Precision::F16, pb::Precision::Bf16] {
            let rounded_grad = rounded(&grads[0], precision);
            assert_ne!(rounded_grad, grads[0]);
            let step = |before: &[f32]| -> Vec<f32> {
                before
                    .iter()
                    .zip(&rounded_grad)
                    .map(|(w, g)| w - 0.5 * g)
                    .collect()
            };
            let pusher = pushing_client(&server, precision).await;
            let before = exact.lookup("t", &batch, false).await.unwrap();
            pusher.push("t", &batch, &grads).await.unwrap();
            let after = exact.lookup("t", &batch, false).await.unwrap();
            assert_eq!(after.embeddings[0].data, step(&before.embeddings[0].data));

            let mut stream = pusher.train().await.unwrap();
            let ticket = stream
                .lookup("t", batch.clone(), true)
                .await
                .unwrap()
                .ticket;
            stream
                .push_ticket("t", ticket.unwrap(), &grads)
                .await
                .unwrap();
            let again = exact.lookup("t", &batch, false).await.unwrap();
            assert_eq!(again.embeddings[0].data, step(&after.embeddings[0].data));
        }

        // A region push's gradients are f32 in shared memory.
        let mut generated = generated_client(&server).await;
        let push = pb::PushRequest {
            table: "t".into(),
            target: Some(pb::push_request::Target::Batch(batch.clone())),
            precision: pb::Precision::Bf16.into(),
            ..Default::default()
        };
        let requests = tokio_stream::iter([pb::TrainRequest {
            id: 1,
            op: Some(pb::train_request::Op::RegionPush(pb::RegionPush {
                push: Some(push),
                ..Default::default()
            })),
        }]);
        let mut answers = generated.train(requests).await.unwrap().into_inner();
        let first = answers.next().await.unwrap().unwrap();
        expect_invalid(first, "a region push's gradients are f32");
    });
}
