//! Python exceptions for the client's errors: one class per gRPC status the
//! server answers with (`featmux.NotFound`, `featmux.InvalidArgument`, …),
//! all subclasses of `featmux.FeatmuxError`, each carrying the server's
//! message whole.

use featmux_client::{ClientError, Code};
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

create_exception!(featmux, FeatmuxError, PyException, "Any featmux failure.");
create_exception!(
    featmux,
    InvalidArgument,
    FeatmuxError,
    "The request is malformed or refused as invalid (INVALID_ARGUMENT)."
);
create_exception!(
    featmux,
    NotFound,
    FeatmuxError,
    "No such table, feature, checkpoint or ticket (NOT_FOUND)."
);
create_exception!(
    featmux,
    AlreadyExists,
    FeatmuxError,
    "The table or feature exists already (ALREADY_EXISTS)."
);
create_exception!(
    featmux,
    Unauthenticated,
    FeatmuxError,
    "A missing or wrong token (UNAUTHENTICATED)."
);
create_exception!(
    featmux,
    PermissionDenied,
    FeatmuxError,
    "The token may not make this call (PERMISSION_DENIED)."
);
create_exception!(
    featmux,
    ResourceExhausted,
    FeatmuxError,
    "Over a limit or the memory budget (RESOURCE_EXHAUSTED)."
);
create_exception!(
    featmux,
    FailedPrecondition,
    FeatmuxError,
    "Not possible in the server's state, e.g. read-only (FAILED_PRECONDITION)."
);
create_exception!(
    featmux,
    Unavailable,
    FeatmuxError,
    "The server cannot be reached or is not ready (UNAVAILABLE), after retries."
);
create_exception!(
    featmux,
    DeadlineExceeded,
    FeatmuxError,
    "The call's deadline passed (DEADLINE_EXCEEDED)."
);

/// The exception a client error raises.
pub fn to_py(error: ClientError) -> PyErr {
    let message = error.to_string();
    match error.code() {
        Some(Code::InvalidArgument) => InvalidArgument::new_err(message),
        Some(Code::NotFound) => NotFound::new_err(message),
        Some(Code::AlreadyExists) => AlreadyExists::new_err(message),
        Some(Code::Unauthenticated) => Unauthenticated::new_err(message),
        Some(Code::PermissionDenied) => PermissionDenied::new_err(message),
        Some(Code::ResourceExhausted) => ResourceExhausted::new_err(message),
        Some(Code::FailedPrecondition) => FailedPrecondition::new_err(message),
        Some(Code::Unavailable) => Unavailable::new_err(message),
        Some(Code::DeadlineExceeded) => DeadlineExceeded::new_err(message),
        _ => match error {
            ClientError::Connect { .. } => Unavailable::new_err(message),
            ClientError::Endpoint { .. } | ClientError::Batch(_) => {
                InvalidArgument::new_err(message)
            }
            _ => FeatmuxError::new_err(message),
        },
    }
}

/// Adds the exception classes to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("FeatmuxError", py.get_type::<FeatmuxError>())?;
    m.add("InvalidArgument", py.get_type::<InvalidArgument>())?;
    m.add("NotFound", py.get_type::<NotFound>())?;
    m.add("AlreadyExists", py.get_type::<AlreadyExists>())?;
    m.add("Unauthenticated", py.get_type::<Unauthenticated>())?;
    m.add("PermissionDenied", py.get_type::<PermissionDenied>())?;
    m.add("ResourceExhausted", py.get_type::<ResourceExhausted>())?;
    m.add("FailedPrecondition", py.get_type::<FailedPrecondition>())?;
    m.add("Unavailable", py.get_type::<Unavailable>())?;
    m.add("DeadlineExceeded", py.get_type::<DeadlineExceeded>())?;
    Ok(())
}
