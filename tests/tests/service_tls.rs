//! Both listeners speak TLS when `[tls]` is configured: a private CA signs
//! the server certificate; the Rust client (gRPC) and an HTTPS client trust
//! that CA, and a plaintext client is refused. The gRPC Unix socket beside
//! them stays plaintext.

use featmux_client::{pb, BatchBuilder, Client, ClientOptions};
use featmux_tests::requests::feature;
use featmux_tests::server::{unix_client, ServerSettings, TestServer};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

#[test]
fn grpc_and_http_serve_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&server_key, &ca, &ca_key)
        .unwrap();
    let cert_path = dir.path().join("server.pem");
    let key_path = dir.path().join("server.key");
    std::fs::write(&cert_path, server_cert.pem()).unwrap();
    std::fs::write(&key_path, server_key.serialize_pem()).unwrap();

    let socket = dir.path().join("grpc.sock");
    let settings = ServerSettings {
        extra_toml: format!(
            "grpc_unix_socket = {socket:?}\n[tls]\ncert = {cert_path:?}\nkey = {key_path:?}\n"
        ),
    };
    let server = TestServer::start(&dir.path().join("data"), &settings);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut options = ClientOptions::new(server.grpc_url());
        options.ca_cert = Some(ca.pem().into_bytes());
        options.tls_domain = Some("localhost".into());
        let client = Client::connect(options).await.unwrap();
        client
            .create_table(
                pb::TableConfig {
                    name: "t".into(),
                    rows: 100,
                    chunk_dim: 4,
                    ..Default::default()
                },
                vec![feature("u", pb::ValueType::String, pb::Pooling::Sum, 1)],
            )
            .await
            .unwrap();
        let mut batch = BatchBuilder::new();
        batch.example().add_str("u", "x");
        let batch = batch.build().unwrap();
        let grpc = client.lookup("t", &batch, false).await.unwrap();

        let https = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
            .resolve("localhost", server.http)
            .build()
            .unwrap();
        let url = format!("https://localhost:{}", server.http.port());
        let body: serde_json::Value = https
            .post(format!("{url}/v1/tables/t/lookup"))
            .json(&serde_json::json!({"examples": [{"u": "x"}]}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let http_row: Vec<f32> = body["examples"][0]["u"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(http_row, grpc.embeddings[0].data);

        // Plaintext is refused on both ports.
        let plain = reqwest::get(format!("http://{}/healthz", server.http)).await;
        assert!(plain.is_err() || !plain.unwrap().status().is_success());
        let mut options = ClientOptions::new(format!("http://{}", server.grpc));
        options.retries = 0;
        let refused = match Client::connect(options).await {
            Err(_) => true,
            Ok(c) => c.list_tables().await.is_err(),
        };
        assert!(refused, "a plaintext gRPC client must not get through");

        // The local socket is plain gRPC (its file's permissions guard
        // it), beside the TLS listeners.
        let local = unix_client(&socket, None).await;
        let over_socket = local.lookup("t", &batch, false).await.unwrap();
        assert_eq!(over_socket.embeddings[0].data, grpc.embeddings[0].data);
    });
    assert!(server.stop().success());
}
