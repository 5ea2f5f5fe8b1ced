//! Token checks for gRPC calls, as a tower layer in front of tonic's
//! services: it sees the HTTP/2 request headers before tonic reads the
//! body, so a call without the right token is refused before its message is
//! decoded (tonic would otherwise decode up to `limits.max_message_bytes`,
//! where a few MiB of empty repeated entries expand to GBs, for anyone who
//! can connect). Unary and streaming calls alike.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tower::{Layer, Service};

use crate::auth::Role;
use crate::shared::Shared;

/// The methods of `featmux.v1` (the metric label of a refused call; any
/// other name is counted as `unknown`, so clients cannot grow the label set).
const METHODS: [&str; 19] = [
    "Lookup",
    "Push",
    "Train",
    "LookupRows",
    "PushRows",
    "CreateTable",
    "GetTable",
    "ListTables",
    "DropTable",
    "AddFeatures",
    "CreateCheckpoint",
    "ListCheckpoints",
    "DeleteCheckpoint",
    "RestoreCheckpoint",
    "Stats",
    "Explain",
    "Occupancy",
    "Bootstrap",
    "Follow",
];

/// The role a call needs and its method, from the request path
/// `/featmux.v1.<Service>/<Method>`; `None` for paths that are not ours
/// (tonic answers those UNIMPLEMENTED).
fn role_of(path: &str) -> Option<(Role, &'static str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    let role = match service {
        "featmux.v1.EmbeddingService" => Role::Data,
        // Replication copies every table: the admin token.
        "featmux.v1.AdminService" | "featmux.v1.ReplicationService" => Role::Admin,
        _ => return None,
    };
    let label = METHODS
        .iter()
        .find(|m| **m == method)
        .copied()
        .unwrap_or("unknown");
    Some((role, label))
}

/// Wraps the gRPC services with [`GrpcAuth`].
#[derive(Clone)]
pub struct GrpcAuthLayer {
    pub(crate) shared: Arc<Shared>,
}

impl<S> Layer<S> for GrpcAuthLayer {
    type Service = GrpcAuth<S>;

    fn layer(&self, inner: S) -> GrpcAuth<S> {
        GrpcAuth {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// Refuses a call whose `authorization` header does not carry the token
/// its service needs, without touching the request body.
#[derive(Clone)]
pub struct GrpcAuth<S> {
    inner: S,
    shared: Arc<Shared>,
}

type BoxedResponse<E> =
    Pin<Box<dyn Future<Output = Result<http::Response<tonic::body::Body>, E>> + Send>>;

impl<S, B> Service<http::Request<B>> for GrpcAuth<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxedResponse<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if let Some((role, method)) = role_of(request.uri().path()) {
            let header = request
                .headers()
                .get(http::header::AUTHORIZATION)
                .map(|v| v.as_bytes());
            if let Err(e) = self.shared.tokens.authorize(role, header) {
                let code = super::code_label(e.grpc_code());
                self.shared
                    .metrics
                    .observe("grpc", method, code, Duration::ZERO);
                let refusal = tonic::Status::from(e).into_http();
                return Box::pin(std::future::ready(Ok(refusal)));
            }
        }
        Box::pin(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The label list cannot drift from the contract.
    #[test]
    fn every_rpc_of_the_proto_is_a_known_method() {
        let proto = include_str!("../../../proto/featmux.proto");
        let rpcs: Vec<&str> = proto
            .lines()
            .filter_map(|line| line.trim().strip_prefix("rpc "))
            .filter_map(|rest| rest.split('(').next())
            .collect();
        assert_eq!(rpcs, METHODS);
    }

    #[test]
    fn paths_map_to_roles() {
        assert!(matches!(
            role_of("/featmux.v1.EmbeddingService/Push"),
            Some((Role::Data, "Push"))
        ));
        assert!(matches!(
            role_of("/featmux.v1.AdminService/Nope"),
            Some((Role::Admin, "unknown"))
        ));
        assert!(role_of("/grpc.health.v1.Health/Check").is_none());
    }
}
