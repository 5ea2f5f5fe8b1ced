//! Rust client for featmux.
//!
//! One [`Client`] holds one HTTP/2 connection (tonic `Channel`, cheap to
//! clone and share between tasks) to a server's gRPC port. Unary calls get
//! a deadline and are retried with exponential backoff while the server
//! answers UNAVAILABLE (not started yet, still recovering, restarting):
//! the server refuses those before touching any table, so a retried push is
//! never applied twice.
//!
//! ```no_run
//! # async fn demo() -> Result<(), featmux_client::ClientError> {
//! use featmux_client::{BatchBuilder, Client, ClientOptions};
//! let client = Client::connect(ClientOptions::new("http://127.0.0.1:50051")).await?;
//! let mut batch = BatchBuilder::new();
//! batch.example().add_str("user_id", "u1").add_strs("genres", ["comedy", "drama"]);
//! let batch = batch.build()?;
//! let looked_up = client.lookup("ads", &batch, true).await?;
//! let grads: Vec<Vec<f32>> = looked_up.embeddings.iter().map(|e| vec![0.1; e.data.len()]).collect();
//! client.push_ticket("ads", looked_up.ticket.unwrap(), &grads).await?;
//! # Ok(()) }
//! ```

mod batch;
pub mod spec;
mod train;

use std::future::Future;
use std::time::Duration;

use featmux_proto::payload;
pub use featmux_proto::v1 as pb;
use pb::admin_service_client::AdminServiceClient;
use pb::embedding_service_client::EmbeddingServiceClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Status};

pub use batch::{BatchBuilder, BatchError};
pub use tonic::Code;

pub use train::{TrainReply, TrainStream};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid endpoint {endpoint}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("cannot connect to {endpoint}: {reason}")]
    Connect { endpoint: String, reason: String },
    #[error("{}: {}", code_name(.0.code()), .0.message())]
    Status(Status),
    #[error(transparent)]
    Batch(#[from] BatchError),
    #[error("bad response: {0}")]
    Response(String),
}

fn code_name(code: Code) -> String {
    format!("{code:?}")
}

impl ClientError {
    /// The gRPC code, when the server (or the transport) answered with one.
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Status(s) => Some(s.code()),
            _ => None,
        }
    }
}

impl From<Status> for ClientError {
    fn from(status: Status) -> Self {
        ClientError::Status(status)
    }
}

/// How to reach a server.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// `http://host:port` or `https://host:port`.
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
}

impl ClientOptions {
    /// Defaults: 30 s deadline, 5 retries from 50 ms, 256 MiB messages.
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
pub struct Auth(Option<MetadataValue<Ascii>>);

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

type Transport = InterceptedService<Channel, Auth>;

/// One decoded output block: `rows × width` floats, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedding {
    pub feature: String,
    pub rows: usize,
    pub width: usize,
    pub data: Vec<f32>,
}

/// A lookup's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Lookup {
    /// One block per batch feature, in batch order.
    pub embeddings: Vec<Embedding>,
    /// Set when a ticket was asked for.
    pub ticket: Option<u64>,
}

/// A connection to one featmux server.
#[derive(Clone)]
pub struct Client {
    embedding: EmbeddingServiceClient<Transport>,
    admin: AdminServiceClient<Transport>,
    options: ClientOptions,
}

/// Decodes a lookup response.
pub fn decode_lookup(response: pb::LookupResponse) -> Result<Lookup, ClientError> {
    let embeddings = response
        .embeddings
        .into_iter()
        .map(|e| {
            let data = payload::decode(&e.data)
                .ok_or_else(|| ClientError::Response(format!("`{}`: ragged payload", e.feature)))?;
            if data.len() != e.rows as usize * e.width as usize {
                return Err(ClientError::Response(format!(
                    "`{}`: {} floats for {}×{}",
                    e.feature,
                    data.len(),
                    e.rows,
                    e.width
                )));
            }
            Ok(Embedding {
                feature: e.feature,
                rows: e.rows as usize,
                width: e.width as usize,
                data,
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(Lookup {
        embeddings,
        ticket: (response.ticket != 0).then_some(response.ticket),
    })
}

/// Gradient blocks in wire form (names left empty: order is what counts).
pub fn encode_gradients(grads: &[Vec<f32>]) -> Vec<pb::Gradient> {
    grads
        .iter()
        .map(|g| pb::Gradient {
            feature: String::new(),
            data: payload::encode(g),
        })
        .collect()
}

impl Client {
    /// Connects (with retries while the server is not up yet).
    pub async fn connect(options: ClientOptions) -> Result<Client, ClientError> {
        let endpoint_error = |reason: String| ClientError::Endpoint {
            endpoint: options.endpoint.clone(),
            reason,
        };
        let mut endpoint = Endpoint::from_shared(options.endpoint.clone())
            .map_err(|e| endpoint_error(e.to_string()))?
            .connect_timeout(options.connect_timeout)
            .tcp_nodelay(true)
            // Lookup responses are megabytes: fixed large windows let the
            // server send a whole response without waiting for
            // WINDOW_UPDATEs, from the first request on.
            .initial_stream_window_size(8 << 20)
            .initial_connection_window_size(32 << 20);
        if options.endpoint.starts_with("https://") {
            let mut tls = ClientTlsConfig::new().with_webpki_roots();
            if let Some(ca) = &options.ca_cert {
                tls = tls.ca_certificate(Certificate::from_pem(ca));
            }
            if let Some(domain) = &options.tls_domain {
                tls = tls.domain_name(domain.clone());
            }
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| endpoint_error(e.to_string()))?;
        }
        let token = match &options.token {
            Some(t) => Some(
                format!("Bearer {t}")
                    .parse()
                    .map_err(|_| endpoint_error("the token is not valid header text".into()))?,
            ),
            None => None,
        };
        let mut attempt = 0;
        let channel = loop {
            match endpoint.connect().await {
                Ok(channel) => break channel,
                Err(_) if attempt < options.retries => {
                    tokio::time::sleep(options.backoff * 2u32.pow(attempt)).await;
                    attempt += 1;
                }
                Err(e) => {
                    return Err(ClientError::Connect {
                        endpoint: options.endpoint.clone(),
                        reason: format!("{e}: {}", source_chain(&e)),
                    })
                }
            }
        };
        let auth = Auth(token);
        let max = options.max_message_bytes;
        Ok(Client {
            embedding: EmbeddingServiceClient::with_interceptor(channel.clone(), auth.clone())
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
            admin: AdminServiceClient::with_interceptor(channel, auth)
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
            options,
        })
    }

    /// Runs one unary call with a deadline, retrying on UNAVAILABLE.
    async fn call<C: Clone, M: Clone, T, Fut>(
        &self,
        rpc: &C,
        message: M,
        send: impl Fn(C, Request<M>) -> Fut,
    ) -> Result<T, ClientError>
    where
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let mut attempt = 0;
        loop {
            let mut request = Request::new(message.clone());
            request.set_timeout(self.options.timeout);
            let result = match tokio::time::timeout(
                self.options.timeout,
                send(rpc.clone(), request),
            )
            .await
            {
                Ok(result) => result,
                Err(_) => Err(Status::deadline_exceeded(format!(
                    "no answer within {:?}",
                    self.options.timeout
                ))),
            };
            match result {
                Ok(response) => return Ok(response.into_inner()),
                Err(status)
                    if status.code() == Code::Unavailable && attempt < self.options.retries =>
                {
                    tokio::time::sleep(self.options.backoff * 2u32.pow(attempt)).await;
                    attempt += 1;
                }
                Err(status) => return Err(status.into()),
            }
        }
    }

    /// Looks up a batch; with `want_ticket` the server keeps the hashed
    /// batch for [`Client::push_ticket`].
    pub async fn lookup(
        &self,
        table: &str,
        batch: &pb::Batch,
        want_ticket: bool,
    ) -> Result<Lookup, ClientError> {
        let request = pb::LookupRequest {
            table: table.to_owned(),
            batch: Some(batch.clone()),
            want_ticket,
        };
        let response = self
            .call(&self.embedding, request, |mut c, r| async move {
                c.lookup(r).await
            })
            .await?;
        decode_lookup(response)
    }

    /// Pushes gradients (one block per batch feature, in batch order).
    pub async fn push(
        &self,
        table: &str,
        batch: &pb::Batch,
        grads: &[Vec<f32>],
    ) -> Result<pb::PushResponse, ClientError> {
        self.push_to(table, pb::push_request::Target::Batch(batch.clone()), grads)
            .await
    }

    /// Pushes gradients for the batch of an earlier lookup's ticket.
    pub async fn push_ticket(
        &self,
        table: &str,
        ticket: u64,
        grads: &[Vec<f32>],
    ) -> Result<pb::PushResponse, ClientError> {
        self.push_to(table, pb::push_request::Target::Ticket(ticket), grads)
            .await
    }

    async fn push_to(
        &self,
        table: &str,
        target: pb::push_request::Target,
        grads: &[Vec<f32>],
    ) -> Result<pb::PushResponse, ClientError> {
        let request = pb::PushRequest {
            table: table.to_owned(),
            target: Some(target),
            gradients: encode_gradients(grads),
        };
        self.call(&self.embedding, request, |mut c, r| async move {
            c.push(r).await
        })
        .await
    }

    /// Opens a Train stream (lookups and pushes answered in order).
    pub async fn train(&self) -> Result<TrainStream, ClientError> {
        TrainStream::open(self.embedding.clone()).await
    }

    /// Creates a table with its first features.
    pub async fn create_table(
        &self,
        table: pb::TableConfig,
        features: Vec<pb::FeatureConfig>,
    ) -> Result<pb::TableInfo, ClientError> {
        let request = pb::CreateTableRequest {
            table: Some(table),
            features,
        };
        self.call(&self.admin, request, |mut c, r| async move {
            c.create_table(r).await
        })
        .await
    }

    /// A table's configuration, features and footprint.
    pub async fn get_table(&self, table: &str) -> Result<pb::TableInfo, ClientError> {
        let request = pb::TableName {
            table: table.to_owned(),
        };
        self.call(&self.admin, request, |mut c, r| async move {
            c.get_table(r).await
        })
        .await
    }

    /// Every table.
    pub async fn list_tables(&self) -> Result<Vec<pb::TableInfo>, ClientError> {
        let response = self
            .call(
                &self.admin,
                pb::ListTablesRequest {},
                |mut c, r| async move { c.list_tables(r).await },
            )
            .await?;
        Ok(response.tables)
    }

    /// Drops a table and its stored rows.
    pub async fn drop_table(&self, table: &str) -> Result<(), ClientError> {
        let request = pb::TableName {
            table: table.to_owned(),
        };
        self.call(&self.admin, request, |mut c, r| async move {
            c.drop_table(r).await
        })
        .await?;
        Ok(())
    }

    /// Adds features to a table (all or nothing).
    pub async fn add_features(
        &self,
        table: &str,
        features: Vec<pb::FeatureConfig>,
    ) -> Result<pb::TableInfo, ClientError> {
        let request = pb::AddFeaturesRequest {
            table: table.to_owned(),
            features,
        };
        self.call(&self.admin, request, |mut c, r| async move {
            c.add_features(r).await
        })
        .await
    }

    /// Flushes and checkpoints the database.
    pub async fn create_checkpoint(&self) -> Result<pb::Checkpoint, ClientError> {
        self.call(
            &self.admin,
            pb::CreateCheckpointRequest {},
            |mut c, r| async move { c.create_checkpoint(r).await },
        )
        .await
    }

    /// Every checkpoint, oldest first.
    pub async fn list_checkpoints(&self) -> Result<Vec<pb::Checkpoint>, ClientError> {
        let response = self
            .call(
                &self.admin,
                pb::ListCheckpointsRequest {},
                |mut c, r| async move { c.list_checkpoints(r).await },
            )
            .await?;
        Ok(response.checkpoints)
    }

    /// Deletes a checkpoint.
    pub async fn delete_checkpoint(&self, id: u64) -> Result<(), ClientError> {
        self.call(
            &self.admin,
            pb::CheckpointId { id },
            |mut c, r| async move { c.delete_checkpoint(r).await },
        )
        .await?;
        Ok(())
    }

    /// Restores `table` from checkpoint `id` (into another name if given).
    pub async fn restore_checkpoint(
        &self,
        id: u64,
        table: &str,
        into: Option<&str>,
    ) -> Result<pb::TableInfo, ClientError> {
        let request = pb::RestoreCheckpointRequest {
            id,
            table: table.to_owned(),
            into: into.unwrap_or_default().to_owned(),
        };
        self.call(&self.admin, request, |mut c, r| async move {
            c.restore_checkpoint(r).await
        })
        .await
    }

    /// Server-wide counters and every table.
    pub async fn stats(&self) -> Result<pb::StatsResponse, ClientError> {
        self.call(&self.admin, pb::StatsRequest {}, |mut c, r| async move {
            c.stats(r).await
        })
        .await
    }

    /// The rows each chunk of each value maps to.
    pub async fn explain(
        &self,
        table: &str,
        features: Vec<pb::FeatureValues>,
    ) -> Result<pb::ExplainResponse, ClientError> {
        let request = pb::ExplainRequest {
            table: table.to_owned(),
            features,
        };
        self.call(&self.admin, request, |mut c, r| async move {
            c.explain(r).await
        })
        .await
    }
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = Vec::new();
    let mut source = e.source();
    while let Some(s) = source {
        out.push(s.to_string());
        source = s.source();
    }
    out.join(": ")
}
