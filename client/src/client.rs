//! The connection and the data plane: connecting (with retries), the retry
//! loop every unary call goes through, lookups, pushes and the Train stream.

use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status};

use featmux_engine::backend::{GatherPlan, RowGradients};
use featmux_proto::payload;

use crate::embeddings::Lookup;
use crate::error::source_chain;
use crate::gradients::IntoGradients;
use crate::options::Auth;
use crate::pb::admin_service_client::AdminServiceClient;
use crate::raw_unary;
use crate::{pb, ClientError, ClientOptions, TrainStream};

/// Every call goes through the token interceptor.
pub(crate) type Transport = InterceptedService<Channel, Auth>;

/// A connection (or a few: [`ClientOptions::connections`]) to one featmux
/// server.
#[derive(Clone)]
pub struct Client {
    /// The data-plane connections, taken in turn by calls.
    connections: Arc<[Transport]>,
    next_connection: Arc<AtomicUsize>,
    pub(crate) admin: AdminServiceClient<Transport>,
    options: ClientOptions,
    request_ids: RequestIds,
}

/// Push request ids: a random start per client (so two clients do not meet
/// within the server's deduplication window), then counted; never 0.
#[derive(Clone)]
struct RequestIds {
    start: u64,
    issued: Arc<AtomicU64>,
}

impl RequestIds {
    fn new() -> Self {
        RequestIds {
            start: RandomState::new().hash_one(SystemTime::now()),
            issued: Arc::new(AtomicU64::new(0)),
        }
    }

    fn next(&self) -> u64 {
        loop {
            let n = self.issued.fetch_add(1, Ordering::Relaxed);
            let id = self.start.wrapping_add(n);
            if id != 0 {
                return id;
            }
        }
    }
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
            // WINDOW_UPDATEs, from the first request on, for up to eight
            // calls in flight on the connection (with 32 MiB, eight
            // 4,096 × 26 lookups sharing one connection stalled on it).
            .initial_stream_window_size(8 << 20)
            .initial_connection_window_size(64 << 20)
            // Frames of up to 1 MiB instead of HTTP/2's default 16 KiB: a
            // 6.8 MB response is 7 frames to write and read, not 415.
            .max_frame_size(1 << 20);
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
        if options.connections == 0 {
            return Err(endpoint_error("connections must be at least 1".into()));
        }
        let auth = Auth(token);
        let max = options.max_message_bytes;
        let mut connections = Vec::with_capacity(options.connections);
        let mut admin = None;
        for _ in 0..options.connections {
            let channel = connect_with_retries(&endpoint, &options).await?;
            connections.push(InterceptedService::new(channel.clone(), auth.clone()));
            admin.get_or_insert_with(|| {
                AdminServiceClient::with_interceptor(channel, auth.clone())
                    .max_decoding_message_size(max)
                    .max_encoding_message_size(max)
            });
        }
        Ok(Client {
            connections: connections.into(),
            next_connection: Arc::new(AtomicUsize::new(0)),
            admin: admin.expect("at least one connection"),
            options,
            request_ids: RequestIds::new(),
        })
    }

    /// The next data-plane connection in turn.
    fn connection(&self) -> Transport {
        let i = self.next_connection.fetch_add(1, Ordering::Relaxed);
        self.connections[i % self.connections.len()].clone()
    }

    /// Runs one unary call with a deadline, retrying on UNAVAILABLE (the
    /// server refused it before doing anything).
    pub(crate) async fn call<C: Clone, M: Clone, T, Fut>(
        &self,
        rpc: &C,
        message: M,
        send: impl Fn(C, Request<M>) -> Fut,
    ) -> Result<T, ClientError>
    where
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.call_with(
            |status| status.code() == Code::Unavailable,
            rpc,
            message,
            send,
        )
        .await
    }

    /// [`Self::call`] for calls that may safely run twice (lookups, pushes
    /// with a request id): also retries when the connection broke mid-call,
    /// after which the server may or may not have run it.
    async fn call_idempotent<C: Clone, M: Clone, T, Fut>(
        &self,
        rpc: &C,
        message: M,
        send: impl Fn(C, Request<M>) -> Fut,
    ) -> Result<T, ClientError>
    where
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let broken = |status: &Status| {
            status.code() == Code::Unavailable
                || (status.code() == Code::Unknown
                    && std::error::Error::source(status)
                        .is_some_and(|e| e.is::<tonic::transport::Error>()))
        };
        self.call_with(broken, rpc, message, send).await
    }

    async fn call_with<C: Clone, M: Clone, T, Fut>(
        &self,
        retryable: impl Fn(&Status) -> bool,
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
                Err(status) if retryable(&status) && attempt < self.options.retries => {
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
        let precision = self.options.lookup_precision;
        let request = pb::LookupRequest {
            table: table.to_owned(),
            batch: Some(batch.clone()),
            want_ticket,
            precision: precision.into(),
        };
        let max = self.options.max_message_bytes;
        self.call_idempotent(&self.connection(), request, |c, r| {
            raw_unary::lookup(c, r, max, precision)
        })
        .await
    }

    /// Pushes gradients (one block per batch feature, in batch order;
    /// owned or shared ones are sent without a copy, see [`IntoGradients`]).
    pub async fn push(
        &self,
        table: &str,
        batch: &pb::Batch,
        grads: impl IntoGradients,
    ) -> Result<pb::PushResponse, ClientError> {
        self.push_to(table, pb::push_request::Target::Batch(batch.clone()), grads)
            .await
    }

    /// Pushes gradients for the batch of an earlier lookup's ticket.
    pub async fn push_ticket(
        &self,
        table: &str,
        ticket: u64,
        grads: impl IntoGradients,
    ) -> Result<pb::PushResponse, ClientError> {
        self.push_to(table, pb::push_request::Target::Ticket(ticket), grads)
            .await
    }

    async fn push_to(
        &self,
        table: &str,
        target: pb::push_request::Target,
        grads: impl IntoGradients,
    ) -> Result<pb::PushResponse, ClientError> {
        // One id for every attempt: a retry of a push the server applied
        // (its answer lost with the connection) gets that answer again.
        let request = pb::PushRequest {
            table: table.to_owned(),
            target: Some(target),
            gradients: grads.into_gradients(self.options.push_precision),
            request_id: self.request_ids.next(),
            precision: self.options.push_precision.into(),
        };
        let max = self.options.max_message_bytes;
        self.call_idempotent(&self.connection(), request, |c, r| {
            raw_unary::push(c, r, max)
        })
        .await
    }

    /// Row-level lookup, for a client that planned the batch itself (a
    /// cluster client sends each shard the entries of its rows): entry `i`
    /// adds `weights[i]` × row `rows[i]` into slot `slots[i]`; returns the
    /// `[num_slots, chunk_dim]` pooled partial sums. `map_epoch`: the
    /// partition map routed with (0 outside a cluster).
    pub async fn lookup_rows(
        &self,
        table: &str,
        plan: GatherPlan,
        map_epoch: u64,
    ) -> Result<Vec<f32>, ClientError> {
        let request = pb::LookupRowsRequest {
            table: table.to_owned(),
            num_slots: plan.num_slots as u32,
            packed_rows: payload::encode_values(plan.rows),
            packed_slots: payload::encode_values(plan.slots),
            packed_weights: payload::encode_values(plan.weights),
            map_epoch,
            ..Default::default()
        };
        let max = self.options.max_message_bytes;
        self.call_idempotent(&self.connection(), request, |c, r| {
            raw_unary::lookup_rows(c, r, max)
        })
        .await
    }

    /// Row-level push: one summed gradient (`chunk_dim` floats, row-major)
    /// per row of `rows` (sorted, unique); the table's optimizer runs on
    /// them. Retried safely like [`Client::push`].
    pub async fn push_rows(
        &self,
        table: &str,
        update: RowGradients,
        map_epoch: u64,
    ) -> Result<pb::PushResponse, ClientError> {
        let request = pb::PushRowsRequest {
            table: table.to_owned(),
            gradients: payload::encode_owned(update.grads),
            packed_rows: payload::encode_values(update.rows),
            request_id: self.request_ids.next(),
            map_epoch,
            ..Default::default()
        };
        let max = self.options.max_message_bytes;
        self.call_idempotent(&self.connection(), request, |c, r| {
            raw_unary::push_rows(c, r, max)
        })
        .await
    }

    /// Opens a Train stream (lookups and pushes answered in order).
    pub async fn train(&self) -> Result<TrainStream, ClientError> {
        TrainStream::open(
            self.connection(),
            self.options.max_message_bytes,
            self.options.lookup_precision,
            self.options.push_precision,
        )
        .await
    }
}

/// Connects one channel, retrying while the server is not up yet.
async fn connect_with_retries(
    endpoint: &Endpoint,
    options: &ClientOptions,
) -> Result<Channel, ClientError> {
    let mut attempt = 0;
    loop {
        match endpoint.connect().await {
            Ok(channel) => return Ok(channel),
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
    }
}
