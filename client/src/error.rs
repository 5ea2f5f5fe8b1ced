//! The client's error: what failed, with the server's status and message
//! kept whole.

use tonic::{Code, Status};

use crate::batch::BatchError;

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
    /// A cluster client's own refusal (a batch that does not fit the
    /// table, a partition map that names no shard).
    #[error("cluster: {0}")]
    Cluster(String),
    /// A shard of a cluster table could not be reached (dead, restarting,
    /// or not a member any more): only requests that need its partitions
    /// fail, with this error naming the shard and the partitions.
    #[error("cluster: {0}")]
    ShardUnavailable(String),
}

fn code_name(code: Code) -> String {
    format!("{code:?}")
}

impl ClientError {
    /// The gRPC code, when the server (or the transport) answered with one.
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Status(s) => Some(s.code()),
            ClientError::ShardUnavailable(_) => Some(Code::Unavailable),
            _ => None,
        }
    }
}

impl From<Status> for ClientError {
    fn from(status: Status) -> Self {
        ClientError::Status(status)
    }
}

pub(crate) fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = Vec::new();
    let mut source = e.source();
    while let Some(s) = source {
        out.push(s.to_string());
        source = s.source();
    }
    out.join(": ")
}
