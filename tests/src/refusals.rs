//! The fixture of the refusal tests (`tests/service_errors_*.rs`): a
//! server with tokens and small limits, three tables, one applied push, and
//! a snapshot of everything a refused request must not change (a lookup,
//! the training version, the tables and their features).

use featmux_client::{pb, BatchBuilder, Client, ClientError, Code};
use serde_json::Value;

use crate::requests::{feature, sgd_table, Http};
use crate::server::{ServerSettings, TestServer};

pub const ADMIN: &str = "adm";
pub const DATA: &str = "dat";

pub fn settings() -> ServerSettings {
    ServerSettings {
        extra_toml: format!(
            "[auth]\nadmin_token = \"{ADMIN}\"\ndata_token = \"{DATA}\"\n\
             [limits]\nmax_batch_values = 1000\nmax_request_bytes = 16384\nmax_message_bytes = 65536\n\
             [tickets]\nttl_secs = 1\n"
        ),
    }
}

pub fn probe() -> pb::Batch {
    let mut b = BatchBuilder::new();
    b.example().add_str("u", "alice").add_i64("n", 7);
    b.example().add_strs("u", ["bob", "carol"]).add_i64("n", -1);
    b.build().unwrap()
}

/// Everything a refused request must not change.
#[derive(Debug, PartialEq)]
pub struct Snapshot {
    pub rows: Vec<Vec<f32>>,
    pub version: u64,
    pub tables: Vec<(String, usize)>,
}

pub async fn snapshot(admin: &Client) -> Snapshot {
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

pub fn expect_status(result: Result<impl std::fmt::Debug, ClientError>, code: Code, needle: &str) {
    let err = result.expect_err("the request must be refused");
    assert_eq!(err.code(), Some(code), "{err}");
    assert!(
        err.to_string().contains(needle),
        "`{err}` does not mention `{needle}`"
    );
}

pub fn expect_http(response: (u16, Value), status: u16, needle: &str) {
    assert_eq!(response.0, status, "{}", response.1);
    let message = response.1["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message in {}", response.1));
    assert!(
        message.contains(needle),
        "`{message}` does not mention `{needle}`"
    );
}

pub fn column(name: &str, values: &[&str], lengths: Vec<u32>) -> pb::FeatureValues {
    BatchBuilder::strings_column(name, values, lengths)
}

/// Feature `u` of the probe as hand-made packed strings.
pub fn packed(data: &[u8], lengths: &[u32]) -> pb::Batch {
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

/// What every refusal test starts from.
pub struct Fixture<'a> {
    pub server: &'a TestServer,
    pub admin: Client,
    pub data: Client,
    pub anonymous: Client,
    pub wrong: Client,
    pub http: Http,
    /// Gradients that fit the probe's outputs (one push applied them).
    pub good_grads: Vec<Vec<f32>>,
}

impl<'a> Fixture<'a> {
    async fn new(server: &'a TestServer) -> Self {
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
        assert_eq!(snapshot(&admin).await.version, 1);
        Fixture {
            server,
            admin,
            data,
            anonymous,
            wrong,
            http,
            good_grads,
        }
    }
}

/// Starts a server, builds the fixture, runs `test`, stops the server.
pub fn run(test: impl AsyncFnOnce(&Fixture<'_>)) {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &settings());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let fixture = Fixture::new(&server).await;
        test(&fixture).await;
    });
    assert!(server.stop().success());
}

/// Asserts that nothing a refused request must not change has changed.
#[macro_export]
macro_rules! unchanged {
    ($admin:expr, $before:expr, $what:expr) => {
        assert_eq!(
            $crate::refusals::snapshot($admin).await,
            $before,
            "{} changed state",
            $what
        );
    };
}
