//! The one place native errors become Python exceptions: the classes of
//! `arrowsmith.errors`, so Python and Rust share one hierarchy.

use pyo3::PyErr;

use crate::error::Error;

pyo3::import_exception!(arrowsmith.errors, InvalidInputError);
pyo3::import_exception!(arrowsmith.errors, UnsupportedError);
pyo3::import_exception!(arrowsmith.errors, InternalError);

impl From<Error> for PyErr {
    fn from(error: Error) -> Self {
        match error {
            Error::InvalidInput { input, message } => InvalidInputError::new_err((message, input)),
            Error::Unsupported(message) => UnsupportedError::new_err(message),
            Error::Internal(message) => InternalError::new_err(message),
        }
    }
}
