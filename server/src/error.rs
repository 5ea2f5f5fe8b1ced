//! The service's error: one kind per client-visible status, mapped once to
//! gRPC codes and once to HTTP statuses, so both transports answer the same
//! problem the same way.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use featmux_engine::error::EngineError;
use featmux_storage::catalog::CatalogError;
use featmux_storage::store::StoreError;

/// What went wrong, as the client should see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    NotFound,
    AlreadyExists,
    InvalidArgument,
    Unauthenticated,
    TooLarge,
    FailedPrecondition,
    /// The request was routed with a partition map this shard no longer
    /// (or does not yet) follow: the client refreshes its map and retries.
    StaleRoute,
    /// An HTTP method the path does not serve (no gRPC equivalent but
    /// UNIMPLEMENTED).
    MethodNotAllowed,
    Unavailable,
    /// Too much work queued ahead of this request (training saturates the
    /// server): retry with backoff.
    Overloaded,
    Internal,
}

/// A refused or failed request; `message` names the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ApiError {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            message: message.into(),
        }
    }

    /// A malformed or inconsistent request.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }

    /// A request over one of the configured limits.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::TooLarge, message)
    }

    /// The gRPC status code for this error.
    pub fn grpc_code(&self) -> tonic::Code {
        match self.kind {
            ErrorKind::NotFound => tonic::Code::NotFound,
            ErrorKind::AlreadyExists => tonic::Code::AlreadyExists,
            ErrorKind::InvalidArgument => tonic::Code::InvalidArgument,
            ErrorKind::Unauthenticated => tonic::Code::Unauthenticated,
            ErrorKind::TooLarge => tonic::Code::ResourceExhausted,
            ErrorKind::FailedPrecondition => tonic::Code::FailedPrecondition,
            ErrorKind::StaleRoute => tonic::Code::Aborted,
            ErrorKind::MethodNotAllowed => tonic::Code::Unimplemented,
            ErrorKind::Unavailable => tonic::Code::Unavailable,
            ErrorKind::Overloaded => tonic::Code::ResourceExhausted,
            ErrorKind::Internal => tonic::Code::Internal,
        }
    }

    /// The HTTP status for this error.
    pub fn http_status(&self) -> StatusCode {
        match self.kind {
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::AlreadyExists => StatusCode::CONFLICT,
            ErrorKind::InvalidArgument => StatusCode::BAD_REQUEST,
            ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::FailedPrecondition | ErrorKind::StaleRoute => StatusCode::CONFLICT,
            ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::Unavailable | ErrorKind::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let kind = match e {
            EngineError::UnknownFeature(_) => ErrorKind::NotFound,
            EngineError::FeatureExists(_) => ErrorKind::AlreadyExists,
            EngineError::PlacementConflict { .. } | EngineError::PartialTable { .. } => {
                ErrorKind::FailedPrecondition
            }
            EngineError::RowNotHeld { .. } => ErrorKind::StaleRoute,
            EngineError::InvalidConfig { .. }
            | EngineError::InvalidBatch { .. }
            | EngineError::InvalidGradients { .. }
            | EngineError::NonFiniteUpdate { .. } => ErrorKind::InvalidArgument,
            EngineError::BatchTooLarge { .. } => ErrorKind::TooLarge,
            EngineError::Backend { .. } => ErrorKind::Internal,
        };
        ApiError::new(kind, e.to_string())
    }
}

/// A request message that does not decode to engine values.
impl From<featmux_proto::engine::WireError> for ApiError {
    fn from(e: featmux_proto::engine::WireError) -> Self {
        ApiError::invalid(e.0)
    }
}

impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> Self {
        let kind = match e {
            CatalogError::Engine(engine) => return engine.into(),
            CatalogError::UnknownTable(_)
            | CatalogError::UnknownCheckpoint(_)
            | CatalogError::NotInCheckpoint { .. } => ErrorKind::NotFound,
            CatalogError::TableExists(_) => ErrorKind::AlreadyExists,
            CatalogError::TableReplaced(_) | CatalogError::ReadOnly => {
                ErrorKind::FailedPrecondition
            }
            CatalogError::OverBudget(_) => ErrorKind::TooLarge,
            CatalogError::Store(StoreError::DiskFull { .. }) => ErrorKind::Unavailable,
            CatalogError::ReplicaData(_) | CatalogError::PrimaryData(_) => {
                ErrorKind::FailedPrecondition
            }
            CatalogError::Store(_)
            | CatalogError::Unflushed { .. }
            | CatalogError::Replication(_) => ErrorKind::Internal,
        };
        ApiError::new(kind, e.to_string())
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        tonic::Status::new(e.grpc_code(), e.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": { "code": format!("{:?}", self.grpc_code()), "message": self.message }
        });
        (self.http_status(), Json(body)).into_response()
    }
}
