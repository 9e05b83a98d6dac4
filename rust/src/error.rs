//! The crate's one error type. Each variant is a kind the front ends map to a status code;
//! the Python binding converts it in exactly one place (`py/errors.rs`).

/// Why a request could not be decoded, coerced or answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The client sent something the protocol or the model's signature does not allow.
    /// `input` names the tensor or column at fault when there is one.
    #[error("{message}")]
    InvalidInput {
        input: Option<String>,
        message: String,
    },
    /// Well-formed, but a feature Arrowsmith does not offer (e.g. an MLflow column type
    /// without a V2 mapping).
    #[error("{0}")]
    Unsupported(String),
    /// A fault on the server's side, e.g. a prediction that cannot be expressed in V2.
    #[error("{0}")]
    Internal(String),
    /// The model itself raised; the message is the model's.
    #[error("{0}")]
    Model(String),
    /// The model's queue is full: back-pressure, the client may retry later.
    #[error("{0}")]
    QueueFull(String),
    /// The request's deadline passed before it ran.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The client went away.
    #[error("{0}")]
    Cancelled(String),
    /// The model cannot take requests now (e.g. the server is stopping).
    #[error("{0}")]
    Unavailable(String),
    /// The request names a model, or a version of it, the server does not serve.
    #[error("{0}")]
    NotFound(String),
}

impl Error {
    /// An invalid-input error about the named input.
    pub fn input(name: &str, message: impl Into<String>) -> Self {
        Error::InvalidInput {
            input: Some(name.to_owned()),
            message: message.into(),
        }
    }

    /// An invalid-input error about the request as a whole.
    pub fn request(message: impl Into<String>) -> Self {
        Error::InvalidInput {
            input: None,
            message: message.into(),
        }
    }

    /// One error of each kind, for the tables that map kinds to statuses and their tests.
    pub fn every_kind() -> [Error; 9] {
        [
            Error::request(""),
            Error::Unsupported(String::new()),
            Error::Internal(String::new()),
            Error::Model(String::new()),
            Error::QueueFull(String::new()),
            Error::DeadlineExceeded(String::new()),
            Error::Cancelled(String::new()),
            Error::Unavailable(String::new()),
            Error::NotFound(String::new()),
        ]
    }

    /// The error's name in `arrowsmith.errors.ErrorCode`, the label metrics carry.
    pub fn code_name(&self) -> &'static str {
        match self {
            Error::InvalidInput { .. } => "INVALID_INPUT",
            Error::Unsupported(_) => "UNSUPPORTED_INPUT",
            Error::Internal(_) => "INTERNAL",
            Error::Model(_) => "MODEL_ERROR",
            Error::QueueFull(_) => "QUEUE_FULL",
            Error::DeadlineExceeded(_) => "DEADLINE_EXCEEDED",
            Error::Cancelled(_) => "CANCELLED",
            Error::Unavailable(_) => "MODEL_NOT_READY",
            Error::NotFound(_) => "MODEL_NOT_FOUND",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
