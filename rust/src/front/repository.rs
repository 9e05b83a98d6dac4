//! Triton's model repository extension: RepositoryIndex, RepositoryModelLoad and
//! RepositoryModelUnload. The front does not decide what they do; it hands each request's
//! message to a `RepositoryHandler` (Python's, in the server) on tokio's blocking pool,
//! since a load can take seconds and must not hold up the calls this thread serves, and
//! answers with the handler's message. Without a handler they are UNIMPLEMENTED. At most
//! CALLS_AT_ONCE calls run in the handler at once (each holds a blocking thread and takes
//! the interpreter lock the model runners need); the others wait for their turn, within
//! their deadline, holding no thread.

#![deny(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use prost::Message;
use tokio::sync::Semaphore;
use tonic::body::Body;
use tonic::Status;
use tower_service::Service;

use super::codec::RawCodec;
use super::infer::deadline_of;
use super::metered::MeteredBody;
use super::service::{grpc, status_of, SERVICE_NAME};
use super::Shared;
use crate::error::Error;
use crate::proto;

/// Repository calls the handler runs at once: a load and an index beside it.
pub(super) const CALLS_AT_ONCE: usize = 2;

/// One of the repository extension's methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepositoryMethod {
    Index,
    ModelLoad,
    ModelUnload,
}

impl RepositoryMethod {
    /// The method named `name` in the inference service, if it is one of these.
    pub fn of(name: &str) -> Option<RepositoryMethod> {
        match name {
            "RepositoryIndex" => Some(RepositoryMethod::Index),
            "RepositoryModelLoad" => Some(RepositoryMethod::ModelLoad),
            "RepositoryModelUnload" => Some(RepositoryMethod::ModelUnload),
            _ => None,
        }
    }

    /// The method's name in the inference service.
    pub fn name(self) -> &'static str {
        match self {
            RepositoryMethod::Index => "RepositoryIndex",
            RepositoryMethod::ModelLoad => "RepositoryModelLoad",
            RepositoryMethod::ModelUnload => "RepositoryModelUnload",
        }
    }

    /// Whether `message` is a well-formed request of this method (the error tonic gives any
    /// other small RPC's malformed message, if not).
    fn check(self, message: &Bytes) -> Result<(), Status> {
        let decoded = match self {
            RepositoryMethod::Index => {
                proto::RepositoryIndexRequest::decode(message.clone()).map(drop)
            }
            RepositoryMethod::ModelLoad => {
                proto::RepositoryModelLoadRequest::decode(message.clone()).map(drop)
            }
            RepositoryMethod::ModelUnload => {
                proto::RepositoryModelUnloadRequest::decode(message.clone()).map(drop)
            }
        };
        decoded.map_err(|error| Status::internal(error.to_string()))
    }
}

/// What answers the repository methods: given a method and its serialized request message,
/// the serialized response message, or the error to answer with. Called on tokio's
/// blocking pool, never on the front's thread; it may take as long as it needs.
pub trait RepositoryHandler: Send + Sync + 'static {
    fn call(&self, method: RepositoryMethod, request: Bytes) -> Result<Vec<u8>, Error>;
}

/// One repository call as tonic's unary service.
#[derive(Clone)]
struct Forward {
    handler: Arc<dyn RepositoryHandler>,
    method: RepositoryMethod,
    turns: Arc<Semaphore>,
}

type Answer = Result<tonic::Response<Bytes>, Status>;

impl Service<tonic::Request<Bytes>> for Forward {
    type Response = tonic::Response<Bytes>;
    type Error = Status;
    type Future = Pin<Box<dyn Future<Output = Answer> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let Forward {
            handler,
            method,
            turns,
        } = self.clone();
        Box::pin(async move {
            let deadline = deadline_of(&request);
            let message = request.into_inner();
            method.check(&message)?;
            let answering = async move {
                let turn = turns
                    .acquire_owned()
                    .await
                    .map_err(|_| Error::Unavailable("the server is stopping".to_owned()))?;
                // The turn goes with the work: a call past its deadline goes on, holding it.
                let work = move || {
                    let _turn = turn;
                    handler.call(method, message)
                };
                tokio::task::spawn_blocking(work).await.unwrap_or_else(|_| {
                    Err(Error::Internal(format!(
                        "the {} handler failed",
                        method.name()
                    )))
                })
            };
            let answer = match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline.into(), answering)
                    .await
                    .unwrap_or_else(|_| {
                        Err(Error::DeadlineExceeded(format!(
                            "the deadline passed before {} was done (a call already begun goes on)",
                            method.name()
                        )))
                    }),
                None => answering.await,
            };
            match answer {
                Ok(response) => Ok(tonic::Response::new(Bytes::from(response))),
                Err(error) => Err(status_of(&error)),
            }
        })
    }
}

/// Answers one call of a repository method: through the handler, UNIMPLEMENTED without one.
pub(super) async fn call(
    shared: &Shared,
    method: RepositoryMethod,
    request: Request<MeteredBody>,
) -> Response<Body> {
    let Some(handler) = shared.repository_handler() else {
        return Status::unimplemented(format!(
            "Method not found: {SERVICE_NAME}/{}",
            method.name()
        ))
        .into_http();
    };
    grpc(RawCodec::<Bytes>::default(), shared, request.headers())
        .unary(
            Forward {
                handler,
                method,
                turns: Arc::clone(&shared.repository_calls),
            },
            request,
        )
        .await
}
