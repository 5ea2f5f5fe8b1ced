//! The row-level RPCs as a cluster client uses them, over real gRPC: the
//! client plans a batch with the engine's own code from the table's
//! configuration (`GetTable`), sends each "shard" (here: each half of the
//! row space, on one server) the gather entries of its rows, adds the
//! partial sums up, and pushes de-duplicated row gradients per half. The
//! answers and the updates equal the batch calls'; bad row-level input is
//! refused with a named error.

use featmux_client::{pb, BatchBuilder, Client, ClientError, Code};
use featmux_engine::backend::{GatherPlan, RowGradients};
use featmux_engine::plan::BatchPlan;
use featmux_proto::engine::{batch_from_pb, table_from_pb};
use featmux_proto::payload;
use featmux_tests::requests::{adagrad_table, feature};
use featmux_tests::server::{ServerSettings, TestServer};

const ROWS: u64 = 5000;
const DIM: usize = 8;

fn features() -> Vec<pb::FeatureConfig> {
    let mut city = feature("city", pb::ValueType::String, pb::Pooling::Sum, 1);
    city.partitioned = Some(pb::Partitioned {
        offset: None,
        rows: 300,
    });
    vec![
        feature("user", pb::ValueType::String, pb::Pooling::Sum, 2),
        feature("tags", pb::ValueType::String, pb::Pooling::Mean, 1),
        feature("clicks", pb::ValueType::Int64, pb::Pooling::Sqrtn, 1),
        city,
    ]
}

fn batch() -> pb::Batch {
    let mut b = BatchBuilder::new();
    for e in 0..40i64 {
        b.example()
            .add_str("user", format!("u{}", e % 17))
            .add_strs("tags", (0..e % 4).map(|t| format!("t{}", (e + t) % 9)))
            .add_i64s("clicks", [e, e * 7 % 11])
            .add_str("city", format!("c{}", e % 5));
    }
    b.build().unwrap()
}

/// What a cluster client does with `GetTable`: the engine's spec and
/// registry, so it hashes exactly as the servers do.
async fn plan(client: &Client, table: &str, batch: &pb::Batch) -> BatchPlan {
    let info = client.get_table(table).await.unwrap();
    let (spec, registry) = table_from_pb(info).unwrap();
    let engine_batch = batch_from_pb(Some(batch.clone())).unwrap();
    BatchPlan::build(&spec, &registry, &engine_batch, usize::MAX).unwrap()
}

async fn lookup_rows(
    client: &Client,
    table: &str,
    p: &GatherPlan,
) -> Result<Vec<f32>, ClientError> {
    client.lookup_rows(table, p.clone(), 0).await
}

fn flat(looked_up: featmux_client::Lookup) -> Vec<f32> {
    looked_up
        .embeddings
        .into_iter()
        .flat_map(|e| e.data)
        .collect()
}

#[test]
fn row_level_lookups_and_pushes_equal_the_batch_calls() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &ServerSettings::default());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = server.client(None).await;
        for name in ["whole", "rows"] {
            client
                .create_table(adagrad_table(name, ROWS, DIM as u32, 0.1), features())
                .await
                .unwrap();
        }
        let batch = batch();
        let plan = plan(&client, "rows", &batch).await;
        let expected = flat(client.lookup("whole", &batch, false).await.unwrap());

        // All entries at once: bit-identical; two halves: partial sums that
        // add up to it.
        assert_eq!(
            lookup_rows(&client, "rows", &plan.gather).await.unwrap(),
            expected
        );
        let low = lookup_rows(
            &client,
            "rows",
            &plan.gather.entries_where(|r| (0..ROWS / 2).contains(&r)),
        )
        .await;
        let high = lookup_rows(
            &client,
            "rows",
            &plan.gather.entries_where(|r| (ROWS / 2..ROWS).contains(&r)),
        )
        .await;
        let summed: Vec<f32> = low
            .unwrap()
            .iter()
            .zip(high.unwrap())
            .map(|(a, b)| a + b)
            .collect();
        for (a, b) in summed.iter().zip(&expected) {
            assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "{a} vs {b}");
        }

        // Pushes: the batch push on one table, the row-level halves on the
        // other; then every output of the batch is the same, bit for bit.
        let grads: Vec<Vec<f32>> = plan
            .outputs
            .iter()
            .map(|o| {
                (0..o.rows * o.width)
                    .map(|i| ((i % 13) as f32 - 6.0) * 0.01)
                    .collect()
            })
            .collect();
        client.push("whole", &batch, &grads).await.unwrap();
        let update = plan.row_gradients(&grads).unwrap();
        let mut stepped = 0;
        for (start, end) in [(0, ROWS / 2), (ROWS / 2, ROWS)] {
            let share = update.rows_where(DIM, |r| (start..end).contains(&r));
            let rows = share.rows.len() as u64;
            let pushed = client.push_rows("rows", share, 0).await.unwrap();
            assert_eq!(pushed.unique_rows, rows);
            stepped += pushed.unique_rows;
        }
        assert_eq!(stepped, update.rows.len() as u64);
        assert_eq!(
            flat(client.lookup("rows", &batch, false).await.unwrap()),
            flat(client.lookup("whole", &batch, false).await.unwrap())
        );

        // Bad row-level input: a clear error, nothing changed.
        let before = flat(client.lookup("rows", &batch, false).await.unwrap());
        fn refused<T: std::fmt::Debug>(r: Result<T, ClientError>, code: Code, needle: &str) {
            match r {
                Err(ClientError::Status(status)) => {
                    assert_eq!(status.code(), code, "{}", status.message());
                    assert!(
                        status.message().contains(needle),
                        "`{}` lacks `{needle}`",
                        status.message()
                    );
                }
                other => panic!("expected {code:?}, got {other:?}"),
            }
        }
        let mut bad = plan.gather.clone();
        bad.rows[0] = ROWS;
        refused(
            lookup_rows(&client, "rows", &bad).await,
            Code::InvalidArgument,
            "5000",
        );
        bad = plan.gather.clone();
        bad.weights[2] = f32::NAN;
        refused(
            lookup_rows(&client, "rows", &bad).await,
            Code::InvalidArgument,
            "weight 2 is NaN",
        );
        bad = plan.gather.clone();
        bad.num_slots = u32::MAX as usize;
        refused(
            lookup_rows(&client, "rows", &bad).await,
            Code::ResourceExhausted,
            "max_batch_values",
        );
        refused(
            lookup_rows(&client, "nope", &plan.gather).await,
            Code::NotFound,
            "nope",
        );
        refused(
            client
                .push_rows(
                    "rows",
                    RowGradients {
                        rows: [9, 3].to_vec(),
                        grads: [0.1; 2 * DIM].to_vec(),
                    },
                    0,
                )
                .await,
            Code::InvalidArgument,
            "sorted and unique",
        );
        refused(
            client
                .push_rows(
                    "rows",
                    RowGradients {
                        rows: [3].to_vec(),
                        grads: [0.1; DIM + 1].to_vec(),
                    },
                    0,
                )
                .await,
            Code::InvalidArgument,
            "need 8 gradients",
        );
        refused(
            client
                .push_rows(
                    "rows",
                    RowGradients {
                        rows: [3].to_vec(),
                        grads: [f32::NAN; DIM].to_vec(),
                    },
                    0,
                )
                .await,
            Code::InvalidArgument,
            "gradient 0 is NaN",
        );
        assert_eq!(
            flat(client.lookup("rows", &batch, false).await.unwrap()),
            before
        );
    });
    assert!(server.stop().success());
}

/// The row-level calls as tonic's generated client sends them (the
/// repeated fields an older cluster client sends, or both forms at once):
/// the server, which reads them below tonic's codec, answers the repeated
/// form as the packed one and refuses both at once, or a ragged packed
/// field, by name.
#[test]
fn row_level_calls_from_tonics_client_read_as_prost_does() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &ServerSettings::default());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = server.client(None).await;
        client
            .create_table(adagrad_table("rows", ROWS, DIM as u32, 0.1), features())
            .await
            .unwrap();
        let batch = batch();
        let gather = plan(&client, "rows", &batch).await.gather;
        let packed = lookup_rows(&client, "rows", &gather).await.unwrap();

        let mut generated =
            pb::embedding_service_client::EmbeddingServiceClient::connect(server.grpc_url())
                .await
                .unwrap();
        let repeated = pb::LookupRowsRequest {
            table: "rows".into(),
            rows: gather.rows.clone(),
            slots: gather.slots.clone(),
            weights: gather.weights.clone(),
            num_slots: gather.num_slots as u32,
            ..Default::default()
        };
        let answer = generated.lookup_rows(repeated.clone()).await.unwrap();
        assert_eq!(payload::decode(&answer.get_ref().data).unwrap(), packed);

        let both = pb::LookupRowsRequest {
            packed_rows: payload::encode_values(gather.rows.clone()),
            ..repeated.clone()
        };
        let status = generated.lookup_rows(both).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status
                .message()
                .contains("`rows` and `packed_rows` are both set"),
            "{status:?}"
        );
        let ragged = pb::PushRowsRequest {
            table: "rows".into(),
            packed_rows: payload::encode_values(vec![3u64]).slice(..7),
            gradients: payload::encode(&[0.1; DIM]),
            ..Default::default()
        };
        let status = generated.push_rows(ragged).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status
                .message()
                .contains("`packed_rows` has 7 bytes, not a whole number of 8-byte values"),
            "{status:?}"
        );
        let pushed = generated
            .push_rows(pb::PushRowsRequest {
                table: "rows".into(),
                rows: vec![3],
                gradients: payload::encode(&[0.1; DIM]),
                request_id: 1,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(pushed.get_ref().unique_rows, 1);
    });
    assert!(server.stop().success());
}
