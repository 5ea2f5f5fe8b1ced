//! Every kind of bad request, over gRPC and HTTP, gets the right status and
//! a message naming the problem — and leaves every table unchanged (a
//! lookup and the training version are compared before and after each).

use std::time::Duration;

use featmux_client::{pb, BatchBuilder, Client, ClientError, Code};
use featmux_tests::requests::{feature, sgd_table, Http};
use featmux_tests::server::{ServerSettings, TestServer};
use serde_json::{json, Value};

const ADMIN: &str = "adm";
const DATA: &str = "dat";

fn settings() -> ServerSettings {
    ServerSettings {
        extra_toml: format!(
            "[auth]\nadmin_token = \"{ADMIN}\"\ndata_token = \"{DATA}\"\n\
             [limits]\nmax_batch_values = 1000\nmax_request_bytes = 16384\nmax_message_bytes = 65536\n\
             [tickets]\nttl_secs = 1\n"
        ),
    }
}

fn probe() -> pb::Batch {
    let mut b = BatchBuilder::new();
    b.example().add_str("u", "alice").add_i64("n", 7);
    b.example().add_strs("u", ["bob", "carol"]).add_i64("n", -1);
    b.build().unwrap()
}

/// Everything a refused request must not change.
#[derive(Debug, PartialEq)]
struct Snapshot {
    rows: Vec<Vec<f32>>,
    version: u64,
    tables: Vec<(String, usize)>,
}

async fn snapshot(admin: &Client) -> Snapshot {
    let rows = admin
        .lookup("t", &probe(), false)
        .await
        .unwrap()
        .embeddings
        .into_iter()
        .map(|e| e.data)
        .collect();
    let stats = admin.stats().await.unwrap();
    let mut tables: Vec<(String, usize)> = stats
        .tables
        .iter()
        .map(|t| (t.config.as_ref().unwrap().name.clone(), t.features.len()))
        .collect();
    tables.sort();
    Snapshot {
        rows,
        version: stats.version,
        tables,
    }
}

fn expect_status(result: Result<impl std::fmt::Debug, ClientError>, code: Code, needle: &str) {
    let err = result.expect_err("the request must be refused");
    assert_eq!(err.code(), Some(code), "{err}");
    assert!(
        err.to_string().contains(needle),
        "`{err}` does not mention `{needle}`"
    );
}

fn expect_http(response: (u16, Value), status: u16, needle: &str) {
    assert_eq!(response.0, status, "{}", response.1);
    let message = response.1["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message in {}", response.1));
    assert!(
        message.contains(needle),
        "`{message}` does not mention `{needle}`"
    );
}

fn column(name: &str, values: &[&str], lengths: Vec<u32>) -> pb::FeatureValues {
    BatchBuilder::strings_column(name, values, lengths)
}

/// Feature `u` of the probe as hand-made packed strings.
fn packed(data: &[u8], lengths: &[u32]) -> pb::Batch {
    let mut batch = probe();
    batch.features[0].values = Some(pb::feature_values::Values::PackedStrings(
        pb::PackedStrings {
            data: data.to_vec().into(),
            lengths: lengths
                .iter()
                .flat_map(|l| l.to_le_bytes())
                .collect::<Vec<u8>>()
                .into(),
        },
    ));
    batch
}

#[test]
fn bad_requests_get_the_right_status_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &settings());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let admin = server.client(Some(ADMIN)).await;
        let data = server.client(Some(DATA)).await;
        let anonymous = server.client(None).await;
        let wrong = server.client(Some("nope")).await;
        let http = Http::new(reqwest::Client::new(), server.http_url(), ADMIN);
        admin
            .create_table(
                sgd_table("t", 5000, 4, 0.1),
                vec![
                    feature("u", pb::ValueType::String, pb::Pooling::Sum, 1),
                    feature("n", pb::ValueType::Int64, pb::Pooling::Sum, 2),
                ],
            )
            .await
            .unwrap();
        admin
            .create_table(
                sgd_table("other", 100, 4, 0.1),
                vec![feature("u", pb::ValueType::String, pb::Pooling::Sum, 1)],
            )
            .await
            .unwrap();
        // 4 chunks × 64 floats = 1 KiB of output per example.
        admin
            .create_table(
                sgd_table("wide", 100, 64, 0.1),
                vec![feature("w", pb::ValueType::String, pb::Pooling::Sum, 4)],
            )
            .await
            .unwrap();
        let good_grads = vec![vec![0.5f32; 2 * 4], vec![0.5f32; 2 * 8]];
        data.push("t", &probe(), &good_grads).await.unwrap();
        let mut before = snapshot(&admin).await;
        assert_eq!(before.version, 1);

        macro_rules! unchanged {
            ($what:expr) => {
                assert_eq!(snapshot(&admin).await, before, "{} changed state", $what);
            };
        }

        // --- gRPC: NOT_FOUND
        expect_status(
            data.lookup("nope", &probe(), false).await,
            Code::NotFound,
            "unknown table `nope`",
        );
        expect_status(
            data.push("nope", &probe(), &good_grads).await,
            Code::NotFound,
            "unknown table `nope`",
        );
        let mut unknown_feature = probe();
        unknown_feature
            .features
            .push(column("zzz", &["a", "b"], vec![1, 1]));
        expect_status(
            data.lookup("t", &unknown_feature, false).await,
            Code::NotFound,
            "zzz",
        );
        let mut grads3 = good_grads.clone();
        grads3.push(vec![0.0; 8]);
        expect_status(
            data.push("t", &unknown_feature, &grads3).await,
            Code::NotFound,
            "zzz",
        );
        expect_status(admin.get_table("nope").await, Code::NotFound, "nope");
        expect_status(
            admin.restore_checkpoint(99, "t", None).await,
            Code::NotFound,
            "checkpoint 99",
        );
        unchanged!("gRPC not-found");

        // --- gRPC: INVALID_ARGUMENT (batch)
        let mut ragged = probe();
        ragged.features[0].lengths = vec![1, 1]; // 3 values, lengths sum to 2
        expect_status(
            data.lookup("t", &ragged, false).await,
            Code::InvalidArgument,
            "u",
        );
        expect_status(
            data.push("t", &ragged, &good_grads).await,
            Code::InvalidArgument,
            "u",
        );
        let mut mismatched = probe();
        mismatched.features[1].lengths.push(0); // 3 examples vs 2
        expect_status(
            data.lookup("t", &mismatched, false).await,
            Code::InvalidArgument,
            "n",
        );
        for (bad, needle) in [
            (
                packed(b"abc", &[1, 1]),
                "lengths add up to 2 bytes but `data` has 3",
            ),
            (packed(b"abc", &[1, 1, 5]), "more than the 3 bytes"),
            (packed(b"a\xffc", &[1, 1, 1]), "not UTF-8"),
            (
                packed("aéc".as_bytes(), &[2, 1, 1]),
                "value 0 ends inside a UTF-8 character",
            ),
        ] {
            expect_status(
                data.lookup("t", &bad, false).await,
                Code::InvalidArgument,
                needle,
            );
            expect_status(
                data.push("t", &bad, &good_grads).await,
                Code::InvalidArgument,
                needle,
            );
        }
        let mut ragged_lengths = packed(b"abc", &[1, 1, 1]);
        if let Some(pb::feature_values::Values::PackedStrings(p)) =
            &mut ragged_lengths.features[0].values
        {
            p.lengths.truncate(11);
        }
        expect_status(
            data.lookup("t", &ragged_lengths, false).await,
            Code::InvalidArgument,
            "`lengths` has 11 bytes",
        );
        let mut wrong_type = probe();
        wrong_type.features[1] = column("n", &["7", "-1"], vec![1, 1]);
        expect_status(
            data.lookup("t", &wrong_type, false).await,
            Code::InvalidArgument,
            "n",
        );
        let mut no_values = probe();
        no_values.features[0].values = None;
        expect_status(
            data.lookup("t", &no_values, false).await,
            Code::InvalidArgument,
            "`strings` or `int64s`",
        );
        let mut bad_weights = probe();
        bad_weights.features[0].weights = vec![1.0];
        expect_status(
            data.lookup("t", &bad_weights, false).await,
            Code::InvalidArgument,
            "weight",
        );
        unchanged!("gRPC malformed batch");

        // --- gRPC: INVALID_ARGUMENT (gradients)
        let short = vec![vec![0.5f32; 7], vec![0.5f32; 16]];
        expect_status(
            data.push("t", &probe(), &short).await,
            Code::InvalidArgument,
            "u",
        );
        let mut nan = good_grads.clone();
        nan[1][3] = f32::NAN;
        expect_status(
            data.push("t", &probe(), &nan).await,
            Code::InvalidArgument,
            "n",
        );
        let mut inf = good_grads.clone();
        inf[0][0] = f32::INFINITY;
        expect_status(
            data.push("t", &probe(), &inf).await,
            Code::InvalidArgument,
            "u",
        );
        expect_status(
            data.push("t", &probe(), &good_grads[..1]).await,
            Code::InvalidArgument,
            "1 gradient blocks",
        );
        unchanged!("gRPC bad gradients");

        // --- gRPC: admin INVALID_ARGUMENT / ALREADY_EXISTS, all or nothing
        expect_status(
            admin
                .create_table(sgd_table("zero", 0, 4, 0.1), vec![])
                .await,
            Code::InvalidArgument,
            "rows",
        );
        expect_status(
            admin.create_table(sgd_table("t", 10, 4, 0.1), vec![]).await,
            Code::AlreadyExists,
            "`t`",
        );
        expect_status(
            admin
                .create_table(
                    sgd_table("half", 10, 4, 0.1),
                    vec![
                        feature("a", pb::ValueType::String, pb::Pooling::Sum, 1),
                        feature("a", pb::ValueType::String, pb::Pooling::Sum, 1),
                    ],
                )
                .await,
            Code::AlreadyExists,
            "a",
        );
        expect_status(
            admin
                .add_features(
                    "t",
                    vec![
                        feature("new", pb::ValueType::String, pb::Pooling::Sum, 1),
                        feature("u", pb::ValueType::String, pb::Pooling::Sum, 1),
                    ],
                )
                .await,
            Code::AlreadyExists,
            "u",
        );
        let mut bad_pooling = feature("p", pb::ValueType::String, pb::Pooling::Sum, 1);
        bad_pooling.pooling = 17;
        expect_status(
            admin.add_features("t", vec![bad_pooling]).await,
            Code::InvalidArgument,
            "pooling 17",
        );
        unchanged!("gRPC admin errors");

        // --- gRPC: UNAUTHENTICATED
        expect_status(
            anonymous.lookup("t", &probe(), false).await,
            Code::Unauthenticated,
            "missing",
        );
        expect_status(
            anonymous.push("t", &probe(), &good_grads).await,
            Code::Unauthenticated,
            "missing",
        );
        expect_status(
            wrong.lookup("t", &probe(), false).await,
            Code::Unauthenticated,
            "wrong token",
        );
        expect_status(
            data.list_tables().await,
            Code::Unauthenticated,
            "admin token",
        );
        expect_status(
            data.drop_table("t").await,
            Code::Unauthenticated,
            "admin token",
        );
        expect_status(
            anonymous.create_checkpoint().await,
            Code::Unauthenticated,
            "admin token",
        );
        assert!(anonymous
            .train()
            .await
            .is_err_and(|e| e.code() == Some(Code::Unauthenticated)));
        unchanged!("gRPC unauthenticated");

        // --- gRPC: RESOURCE_EXHAUSTED
        let big: Vec<String> = (0..1001).map(|i| i.to_string()).collect();
        let too_many = pb::Batch {
            features: vec![BatchBuilder::strings_column("u", big.clone(), vec![1001])],
        };
        expect_status(
            data.lookup("t", &too_many, false).await,
            Code::ResourceExhausted,
            "max_batch_values",
        );
        expect_status(
            data.push("t", &too_many, &[vec![0.0; 4]]).await,
            Code::ResourceExhausted,
            "max_batch_values",
        );
        let huge = pb::Batch {
            features: vec![BatchBuilder::strings_column(
                "u",
                vec!["x".repeat(70_000)],
                vec![1],
            )],
        };
        expect_status(
            data.lookup("t", &huge, false).await,
            Code::ResourceExhausted,
            "max_message_bytes",
        );
        expect_status(
            data.push("t", &probe(), &[vec![0.0; 2 * 4], vec![0.0; 20_000]])
                .await,
            Code::ResourceExhausted,
            "max_message_bytes",
        );
        // 100 examples × 1 KiB of embeddings > the 64 KiB message limit.
        let wide = pb::Batch {
            features: vec![column("w", &["a"; 100], vec![1; 100])],
        };
        expect_status(
            data.lookup("wide", &wide, false).await,
            Code::ResourceExhausted,
            "split the batch",
        );
        unchanged!("gRPC too large");

        // --- gRPC: bytes that are not a protobuf message
        let status = raw::call(
            server.grpc_url(),
            "/featmux.v1.EmbeddingService/Push",
            vec![0xff, 0xff, 0xff],
        )
        .await;
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().contains("malformed request message"),
            "{status:?}"
        );
        unchanged!("gRPC malformed protobuf");

        // --- gRPC: tickets
        expect_status(
            data.push_ticket("t", 12345, &good_grads).await,
            Code::NotFound,
            "ticket 12345",
        );
        let ticket = data
            .lookup("t", &probe(), true)
            .await
            .unwrap()
            .ticket
            .unwrap();
        expect_status(
            data.push_ticket("other", ticket, &good_grads).await,
            Code::InvalidArgument,
            "belongs to table `t`",
        );
        expect_status(
            data.push_ticket("t", ticket, &short).await,
            Code::InvalidArgument,
            "u",
        );
        tokio::time::sleep(Duration::from_millis(1300)).await;
        expect_status(
            data.push_ticket("t", ticket, &good_grads).await,
            Code::NotFound,
            "expired",
        );
        unchanged!("gRPC tickets");
        // A refused ticket push leaves the ticket usable.
        let kept = data
            .lookup("t", &probe(), true)
            .await
            .unwrap()
            .ticket
            .unwrap();
        expect_status(
            data.push_ticket("t", kept, &nan).await,
            Code::InvalidArgument,
            "n",
        );
        unchanged!("refused ticket push");
        let pushed = data.push_ticket("t", kept, &good_grads).await.unwrap();
        assert_eq!(pushed.version, before.version + 1);
        before = snapshot(&admin).await;

        // --- HTTP serving errors
        let lookup = |body: Value| http.post("/v1/tables/t/lookup", DATA, body);
        expect_http(
            http.post(
                "/v1/tables/nope/lookup",
                DATA,
                json!({"examples": [{"u": "a"}]}),
            )
            .await,
            404,
            "unknown table `nope`",
        );
        expect_http(
            lookup(json!({"examples": [{"u": "a"}, {"zzz": 1}]})).await,
            404,
            "example 1: unknown feature `zzz`",
        );
        expect_http(
            lookup(json!({"examples": [{"n": "seven"}]})).await,
            400,
            "example 0, feature `n`: expected a 64-bit integer",
        );
        expect_http(
            lookup(json!({"examples": [{"u": 3}]})).await,
            400,
            "expected a string",
        );
        expect_http(lookup(json!({"examples": "nope"})).await, 400, "examples");
        expect_http(
            lookup(json!({"examples": [], "extra": 1})).await,
            400,
            "extra",
        );
        expect_http(
            http.send_raw(
                "/v1/tables/t/lookup",
                DATA,
                "application/json",
                b"{\"examples\": [".to_vec(),
            )
            .await,
            400,
            "EOF",
        );
        expect_http(
            http.send_raw("/v1/tables/t/lookup", DATA, "text/plain", b"{}".to_vec())
                .await,
            400,
            "Content-Type",
        );
        let ints: Vec<i64> = (0..1001).collect();
        expect_http(
            lookup(json!({"examples": [{"n": ints}]})).await,
            413,
            "max_batch_values",
        );
        let wide_examples: Vec<Value> = (0..100).map(|_| json!({"w": "a"})).collect();
        expect_http(
            http.post(
                "/v1/tables/wide/lookup",
                DATA,
                json!({"examples": wide_examples}),
            )
            .await,
            413,
            "split the batch",
        );
        let long = "y".repeat(20_000);
        expect_http(
            lookup(json!({"examples": [{"u": long}]})).await,
            413,
            "max_request_bytes",
        );
        expect_http(
            http.send(
                reqwest::Method::POST,
                "/v1/tables/t/lookup",
                None,
                Some(json!({"examples": []})),
            )
            .await,
            401,
            "missing",
        );
        expect_http(lookup_with(&http, "nope").await, 401, "wrong token");
        unchanged!("HTTP serving errors");

        // --- HTTP admin errors
        expect_http(
            http.post(
                "/v1/tables",
                ADMIN,
                json!({"table": {"name": "z", "rows": 0, "chunk_dim": 4}}),
            )
            .await,
            400,
            "rows",
        );
        expect_http(
            http.post(
                "/v1/tables",
                ADMIN,
                json!({"table": {"name": "t", "rows": 10, "chunk_dim": 4}}),
            )
            .await,
            409,
            "already exists",
        );
        expect_http(
            http.post(
                "/v1/tables",
                DATA,
                json!({"table": {"name": "z", "rows": 10, "chunk_dim": 4}}),
            )
            .await,
            401,
            "admin token",
        );
        expect_http(
            http.send(reqwest::Method::GET, "/v1/tables", None, None)
                .await,
            401,
            "missing",
        );
        expect_http(
            http.get("/v1/tables/nope").await,
            404,
            "unknown table `nope`",
        );
        expect_http(
            http.send(
                reqwest::Method::DELETE,
                "/v1/tables/nope",
                Some(ADMIN),
                None,
            )
            .await,
            404,
            "nope",
        );
        expect_http(
            http.send(
                reqwest::Method::DELETE,
                "/v1/checkpoints/42",
                Some(ADMIN),
                None,
            )
            .await,
            404,
            "checkpoint 42",
        );
        expect_http(
            http.post(
                "/v1/tables/t/features",
                ADMIN,
                json!({"features": [{"name": "ok"}, {"name": "n"}]}),
            )
            .await,
            409,
            "n",
        );
        expect_http(
            http.post(
                "/v1/tables/t/features",
                ADMIN,
                json!({"features": [{"name": "q", "pooling": "max"}]}),
            )
            .await,
            400,
            "max",
        );
        expect_http(
            http.post(
                "/v1/tables/t/explain",
                ADMIN,
                json!({"features": {"zzz": "a"}}),
            )
            .await,
            404,
            "zzz",
        );
        unchanged!("HTTP admin errors");
    });
    assert!(server.stop().success());
}

/// Sends raw bytes as a gRPC request body (what a broken client would).
mod raw {
    use bytes::{Buf, BufMut};
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
    use tonic::Status;

    #[derive(Default)]
    pub struct RawCodec;
    pub struct Raw;

    impl Encoder for Raw {
        type Item = Vec<u8>;
        type Error = Status;
        fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
            dst.put_slice(&item);
            Ok(())
        }
    }

    impl Decoder for Raw {
        type Item = Vec<u8>;
        type Error = Status;
        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
            let bytes = src.chunk().to_vec();
            src.advance(bytes.len());
            Ok(Some(bytes))
        }
    }

    impl Codec for RawCodec {
        type Encode = Vec<u8>;
        type Decode = Vec<u8>;
        type Encoder = Raw;
        type Decoder = Raw;
        fn encoder(&mut self) -> Raw {
            Raw
        }
        fn decoder(&mut self) -> Raw {
            Raw
        }
    }

    /// Calls `path` with `body`; the status the server answered.
    pub async fn call(url: String, path: &'static str, body: Vec<u8>) -> Status {
        let channel = tonic::transport::Endpoint::from_shared(url)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.unwrap();
        let mut request = tonic::Request::new(body);
        request
            .metadata_mut()
            .insert("authorization", "Bearer dat".parse().unwrap());
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
        grpc.unary(request, path, RawCodec)
            .await
            .expect_err("refused")
    }
}

async fn lookup_with(http: &Http, token: &str) -> (u16, Value) {
    http.post("/v1/tables/t/lookup", token, json!({"examples": []}))
        .await
}
