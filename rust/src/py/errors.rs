//! The one place native errors become Python exceptions: the classes of
//! `arrowsmith.errors`, so Python and Rust share one hierarchy.

use pyo3::prelude::*;
use pyo3::PyErr;

use crate::error::Error;
use crate::front::grpc_code;

pyo3::import_exception!(arrowsmith.errors, ArrowsmithError);
pyo3::import_exception!(arrowsmith.errors, InvalidInputError);
pyo3::import_exception!(arrowsmith.errors, UnsupportedError);
pyo3::import_exception!(arrowsmith.errors, InternalError);
pyo3::import_exception!(arrowsmith.errors, ModelError);
pyo3::import_exception!(arrowsmith.errors, QueueFullError);
pyo3::import_exception!(arrowsmith.errors, DeadlineExceededError);
pyo3::import_exception!(arrowsmith.errors, CancelledError);
pyo3::import_exception!(arrowsmith.errors, ModelNotReadyError);
pyo3::import_exception!(arrowsmith.errors, ModelNotFoundError);

impl From<Error> for PyErr {
    fn from(error: Error) -> Self {
        match error {
            Error::InvalidInput { input, message } => InvalidInputError::new_err((message, input)),
            Error::Unsupported(message) => UnsupportedError::new_err(message),
            Error::Internal(message) => InternalError::new_err(message),
            Error::Model(message) => ModelError::new_err(message),
            Error::QueueFull(message) => QueueFullError::new_err(message),
            Error::DeadlineExceeded(message) => DeadlineExceededError::new_err(message),
            Error::Cancelled(message) => CancelledError::new_err(message),
            Error::Unavailable(message) => ModelNotReadyError::new_err(message),
            Error::NotFound(message) => ModelNotFoundError::new_err(message),
        }
    }
}

/// The native error for an `arrowsmith.errors.ErrorCode` name, so an error raised in Python
/// (by the model, say) can answer requests that wait in Rust.
pub fn error_from_code(code: &str, message: String) -> Error {
    match code {
        "INVALID_INPUT" => Error::InvalidInput {
            input: None,
            message,
        },
        "UNSUPPORTED_INPUT" => Error::Unsupported(message),
        "MODEL_ERROR" => Error::Model(message),
        "QUEUE_FULL" => Error::QueueFull(message),
        "DEADLINE_EXCEEDED" => Error::DeadlineExceeded(message),
        "CANCELLED" => Error::Cancelled(message),
        "MODEL_NOT_READY" => Error::Unavailable(message),
        "MODEL_NOT_FOUND" => Error::NotFound(message),
        _ => Error::Internal(message),
    }
}

/// The native error for an exception Python raised where Rust answers (the repository
/// handler): an `ArrowsmithError` by its code and message, through `error_from_code`; any
/// other exception is INTERNAL, `{TypeName}: {message}`.
pub fn error_from_exception(py: Python<'_>, exception: &PyErr) -> Error {
    let value = exception.value(py);
    if exception.is_instance_of::<ArrowsmithError>(py) {
        let coded = value
            .getattr("code")
            .and_then(|code| code.getattr("value"))
            .and_then(|code| code.extract::<String>())
            .and_then(|code| Ok((code, value.getattr("message")?.extract::<String>()?)));
        if let Ok((code, message)) = coded {
            return error_from_code(&code, message);
        }
    }
    let type_name = exception
        .get_type(py)
        .name()
        .map_or_else(|_| "Exception".to_owned(), |name| name.to_string());
    let message = value
        .str()
        .map_or_else(|_| String::new(), |message| message.to_string());
    Error::Internal(format!("{type_name}: {message}"))
}

/// For each kind of native error: its `ErrorCode` name and the gRPC status number the native
/// front answers it with; and for each `ErrorCode` name Python may hand the native side, the
/// kind it becomes. Tests hold both against `arrowsmith.errors.STATUSES`.
#[pyfunction]
pub fn error_statuses() -> Vec<(&'static str, u32)> {
    Error::every_kind()
        .iter()
        .map(|error| (error.code_name(), grpc_code(error) as u32))
        .collect()
}

/// The `ErrorCode` name of the native error that `code` becomes (see `error_from_code`).
#[pyfunction]
pub fn native_error_code(code: &str) -> &'static str {
    error_from_code(code, String::new()).code_name()
}
