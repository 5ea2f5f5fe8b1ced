//! How to reach a server: endpoint, token, deadlines, retries, TLS, and
//! the interceptor that adds the token to every call.

use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::{Request, Status};

use crate::pb;

/// How to reach a server.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// `http://host:port`, `https://host:port`, or `unix:///path` for a
    /// server's Unix socket on this machine (no TLS there).
    pub endpoint: String,
    /// Bearer token sent with every call.
    pub token: Option<String>,
    /// Deadline of each unary call attempt.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Extra attempts after UNAVAILABLE.
    pub retries: u32,
    /// First backoff; doubles each retry.
    pub backoff: Duration,
    /// PEM CA certificate for `https` endpoints with a private CA.
    pub ca_cert: Option<Vec<u8>>,
    /// TLS server name, when it differs from the endpoint's host.
    pub tls_domain: Option<String>,
    /// Largest message accepted or sent.
    pub max_message_bytes: usize,
    /// HTTP/2 connections the client opens and spreads its calls over. One
    /// connection frames every call on one task at each end: a client
    /// shared by many threads (the Python client) needs several to keep
    /// the server's cores busy.
    pub connections: usize,
    /// How lookups (`Lookup` and the Train stream's) ask for their answer:
    /// f32 (exact, the default), or f16 / bf16, half the bytes on the wire
    /// (each value rounded on the server, see `Precision` in the proto),
    /// widened back to f32 here. Region lookups and a cluster's row-level
    /// lookups always carry f32.
    pub lookup_precision: pb::Precision,
    /// How pushes (`Push` and the Train stream's) send their gradients:
    /// f32 (the default), or f16 / bf16, each rounded here (half the
    /// bytes); the server widens them and its optimizer runs in f32.
    /// Region and row-level pushes always carry f32.
    pub push_precision: pb::Precision,
}

impl ClientOptions {
    /// Defaults: 30 s deadline, 5 retries from 50 ms, 256 MiB messages,
    /// one connection, f32 answers and gradients.
    pub fn new(endpoint: impl Into<String>) -> Self {
        ClientOptions {
            endpoint: endpoint.into(),
            token: None,
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            retries: 5,
            backoff: Duration::from_millis(50),
            ca_cert: None,
            tls_domain: None,
            max_message_bytes: 256 << 20,
            connections: 1,
            lookup_precision: pb::Precision::F32,
            push_precision: pb::Precision::F32,
        }
    }

    /// Sets the bearer token.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }
}

/// Adds the bearer token to every request.
#[derive(Clone)]
pub struct Auth(pub(crate) Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(token) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        Ok(request)
    }
}
