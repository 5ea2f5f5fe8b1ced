//! Request helpers shared by the service tests: table and feature configs,
//! a small JSON-over-HTTP client, float comparisons.

use featmux_client::pb;
use serde_json::Value;

/// A feature config.
pub fn feature(
    name: &str,
    value_type: pb::ValueType,
    pooling: pb::Pooling,
    chunks: u32,
) -> pb::FeatureConfig {
    pb::FeatureConfig {
        name: name.into(),
        chunks,
        value_type: value_type as i32,
        pooling: pooling as i32,
        partitioned: None,
    }
}

/// A table trained with plain SGD (easy to predict).
pub fn sgd_table(name: &str, rows: u64, chunk_dim: u32, lr: f32) -> pb::TableConfig {
    pb::TableConfig {
        name: name.into(),
        rows,
        chunk_dim,
        seed: 11,
        initializer: None,
        optimizer: Some(pb::Optimizer {
            kind: Some(pb::optimizer::Kind::Sgd(pb::Sgd { lr })),
        }),
        max_abs_gradient: None,
    }
}

/// A table trained with Adagrad (state per element: what a sharded push
/// must reproduce exactly).
pub fn adagrad_table(name: &str, rows: u64, chunk_dim: u32, lr: f32) -> pb::TableConfig {
    pb::TableConfig {
        optimizer: Some(featmux_client::spec::optimizer("adagrad", lr).expect("a known optimizer")),
        ..sgd_table(name, rows, chunk_dim, lr)
    }
}

/// JSON in, (status, JSON or text) out.
pub struct Http {
    client: reqwest::Client,
    base: String,
    admin_token: String,
}

impl Http {
    /// Requests to `base` (`http(s)://host:port`); `get` uses `admin_token`.
    pub fn new(client: reqwest::Client, base: String, admin_token: &str) -> Self {
        Http {
            client,
            base,
            admin_token: admin_token.to_owned(),
        }
    }

    /// Any request; the body is sent as JSON.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("HTTP request");
        let status = response.status().as_u16();
        let text = response.text().await.expect("HTTP body");
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    /// A raw body with a content type.
    pub async fn send_raw(
        &self,
        path: &str,
        token: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("HTTP request");
        let status = response.status().as_u16();
        let text = response.text().await.expect("HTTP body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// GET with the admin token.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, Some(&self.admin_token), None)
            .await
    }

    /// One unlabelled metric's value from `/metrics` (read with the admin
    /// token).
    pub async fn metric(&self, name: &str) -> f64 {
        let (_, body) = self.get("/metrics").await;
        let text = body
            .as_str()
            .map_or_else(|| body.to_string(), str::to_owned);
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in {text}"))
    }

    /// POST JSON with `token`.
    pub async fn post(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, Some(token), Some(body))
            .await
    }
}

/// A JSON array of numbers as floats.
pub fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// Element-wise equality within 1e-6.
pub fn assert_close(a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() < 1e-6, "{a:?} != {b:?}");
    }
}
