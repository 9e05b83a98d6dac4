//! `inference.GRPCInferenceService`: each method by its path. ModelInfer and
//! ModelStreamInfer take raw message bytes (`codec`); the small RPCs use the generated
//! messages and are answered from the model table, with no Python; the repository methods
//! go to the repository handler (`repository`).

#![deny(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::future::{ready, Future, Ready};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use tonic::body::Body;
use tonic::codec::CompressionEncoding;
use tonic::server::Grpc;
use tonic::{Code, Status};
use tonic_prost::ProstCodec;
use tower_service::Service;

use super::codec::RawCodec;
use super::metered::MeteredBody;
use super::observe::TraceHeaders;
use super::repository::{self, RepositoryMethod};
use super::{infer, stream, Shared};
use crate::error::Error;
use crate::proto;
use crate::proto::system_shared_memory_status_response::RegionStatus;
use crate::shm;

pub(super) const SERVICE_NAME: &str = "inference.GRPCInferenceService";
/// The paths of the small calls that name a model, as forwarded.
const MODEL_READY: &str = "/inference.GRPCInferenceService/ModelReady";
const MODEL_METADATA: &str = "/inference.GRPCInferenceService/ModelMetadata";
const MODEL_CONFIG: &str = "/inference.GRPCInferenceService/ModelConfig";

/// The gRPC status code an error answers with: the table `arrowsmith.errors.STATUSES`
/// keeps for the HTTP front.
pub fn grpc_code(error: &Error) -> Code {
    match error {
        Error::InvalidInput { .. } => Code::InvalidArgument,
        Error::Unsupported(_) => Code::Unimplemented,
        Error::Internal(_) | Error::Model(_) => Code::Internal,
        Error::QueueFull(_) => Code::ResourceExhausted,
        Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
        Error::Cancelled(_) => Code::Cancelled,
        Error::Unavailable(_) => Code::Unavailable,
        Error::NotFound(_) => Code::NotFound,
    }
}

pub(super) fn status_of(error: &Error) -> Status {
    Status::new(grpc_code(error), error.to_string())
}

/// The compressions a request may arrive in, by their `grpc-encoding` names.
const ACCEPTED: [(&str, CompressionEncoding); 3] = [
    ("gzip", CompressionEncoding::Gzip),
    ("zstd", CompressionEncoding::Zstd),
    ("deflate", CompressionEncoding::Deflate),
];

/// A `Grpc` for one call: gzip, zstd and deflate requests accepted. The response is
/// compressed only as the request was, when the client's `grpc-accept-encoding` allows:
/// gRPC clients advertise every encoding they can read on every call, which asks for
/// nothing, and compressing each small answer would cost every caller CPU for no gain.
pub(super) fn grpc<C: tonic::codec::Codec>(
    codec: C,
    shared: &Shared,
    headers: &HeaderMap,
) -> Grpc<C> {
    let mut grpc = ACCEPTED
        .into_iter()
        .fold(Grpc::new(codec), |grpc, (_, encoding)| {
            grpc.accept_compressed(encoding)
        })
        // What a message may decompress to; the compressed bytes are metered on arrival.
        .max_decoding_message_size(shared.limits.max_message_size)
        .max_encoding_message_size(usize::MAX);
    let sent_as = headers
        .get("grpc-encoding")
        .and_then(|value| value.to_str().ok());
    if let Some((_, encoding)) = ACCEPTED
        .into_iter()
        .find(|(name, _)| Some(*name) == sent_as)
    {
        grpc = grpc.send_compressed(encoding);
    }
    grpc
}

/// A unary handler as tonic's `UnaryService`: a synchronous answer from a request message.
#[derive(Clone)]
struct Small<F>(F);

impl<F, Req, Resp> Service<tonic::Request<Req>> for Small<F>
where
    F: Fn(Req) -> Result<Resp, Status>,
{
    type Response = tonic::Response<Resp>;
    type Error = Status;
    type Future = Ready<Result<tonic::Response<Resp>, Status>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: tonic::Request<Req>) -> Self::Future {
        ready((self.0)(request.into_inner()).map(tonic::Response::new))
    }
}

async fn small<Req, Resp>(
    shared: &Shared,
    request: Request<MeteredBody>,
    answer: impl Fn(Req) -> Result<Resp, Status>,
) -> Response<Body>
where
    Req: prost::Message + Default + Send + 'static,
    Resp: prost::Message + Send + 'static,
{
    grpc(
        ProstCodec::<Resp, Req>::default(),
        shared,
        request.headers(),
    )
    .unary(Small(answer), request)
    .await
}

/// A small call that names a model: forwarded as it came when another process serves the
/// model, else answered here by `answer`.
struct Routed<F, Req, Resp> {
    shared: Arc<Shared>,
    path: &'static str,
    answer: F,
    messages: PhantomData<fn(Req) -> Resp>,
}

type RoutedAnswer = Pin<Box<dyn Future<Output = Result<tonic::Response<Bytes>, Status>> + Send>>;

impl<F, Req, Resp> Service<tonic::Request<Bytes>> for Routed<F, Req, Resp>
where
    F: Fn(Req) -> Result<Resp, Status>,
    Req: prost::Message + Default,
    Resp: prost::Message,
{
    type Response = tonic::Response<Bytes>;
    type Error = Status;
    type Future = RoutedAnswer;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let deadline = infer::deadline_of(&request);
        let trace = TraceHeaders::of(request.metadata().as_ref(), self.shared.routes.any());
        let message = request.into_inner();
        if let Some(remote) = self.shared.routes.remote_for(&message) {
            let forwarding = remote.unary(self.path, message, deadline, trace);
            return Box::pin(async move { forwarding.await.map(tonic::Response::new) });
        }
        let answered = Req::decode(message)
            .map_err(|error| Status::internal(format!("failed to decode the request: {error}")))
            .and_then(|asked| (self.answer)(asked))
            .map(|answer| tonic::Response::new(Bytes::from(answer.encode_to_vec())));
        Box::pin(ready(answered))
    }
}

async fn routed<Req, Resp>(
    shared: &Arc<Shared>,
    request: Request<MeteredBody>,
    method: &'static str,
    answer: impl Fn(Req) -> Result<Resp, Status>,
) -> Response<Body>
where
    Req: prost::Message + Default,
    Resp: prost::Message,
{
    let service = Routed {
        shared: Arc::clone(shared),
        path: method,
        answer,
        messages: PhantomData,
    };
    grpc(RawCodec::<Bytes>::default(), shared, request.headers())
        .unary(service, request)
        .await
}

/// A model's entry for a metadata call: NOT_FOUND, or UNAVAILABLE until it is ready.
fn ready_model(
    shared: &Shared,
    name: &str,
    version: &str,
) -> Result<Arc<super::models::Entry>, Status> {
    shared
        .models
        .find_ready(name, version)
        .map_err(|error| status_of(&error))
}

/// Answers one call of the inference service.
pub(super) async fn call(shared: Arc<Shared>, request: Request<MeteredBody>) -> Response<Body> {
    let path = request.uri().path();
    let method = path.rsplit_once('/').map_or("", |(_, method)| method);
    let models = &shared.models;
    match method {
        "ModelInfer" => {
            let handler = infer::Handler(Arc::clone(&shared));
            grpc(RawCodec::default(), &shared, request.headers())
                .unary(handler, request)
                .await
        }
        "ModelStreamInfer" => {
            let handler = stream::Handler(Arc::clone(&shared));
            grpc(
                RawCodec::<stream::StreamAnswer>::default(),
                &shared,
                request.headers(),
            )
            .streaming(handler, request)
            .await
        }
        "ServerLive" => {
            small(&shared, request, |_: proto::ServerLiveRequest| {
                Ok(proto::ServerLiveResponse { live: true })
            })
            .await
        }
        "ServerReady" => {
            small(&shared, request, |_: proto::ServerReadyRequest| {
                Ok(proto::ServerReadyResponse {
                    ready: models.server_ready() && shared.routes.all_ready(),
                })
            })
            .await
        }
        "ModelReady" => {
            routed(
                &shared,
                request,
                MODEL_READY,
                |asked: proto::ModelReadyRequest| {
                    let ready = models
                        .find(&asked.name, &asked.version)
                        .is_ok_and(|entry| entry.is_ready());
                    Ok(proto::ModelReadyResponse { ready })
                },
            )
            .await
        }
        "ServerMetadata" => {
            small(&shared, request, |_: proto::ServerMetadataRequest| {
                Ok(proto::ServerMetadataResponse {
                    name: shared.server.name.clone(),
                    version: shared.server.version.clone(),
                    extensions: shared.server.extensions.clone(),
                })
            })
            .await
        }
        "ModelMetadata" => {
            routed(
                &shared,
                request,
                MODEL_METADATA,
                |asked: proto::ModelMetadataRequest| {
                    let entry = ready_model(&shared, &asked.name, &asked.version)?;
                    Ok(entry.model.metadata.clone())
                },
            )
            .await
        }
        "ModelConfig" => {
            routed(
                &shared,
                request,
                MODEL_CONFIG,
                |asked: proto::ModelConfigRequest| {
                    let entry = ready_model(&shared, &asked.name, &asked.version)?;
                    Ok(entry.model.config.clone())
                },
            )
            .await
        }
        "SystemSharedMemoryStatus"
        | "SystemSharedMemoryRegister"
        | "SystemSharedMemoryUnregister" => shared_memory(&shared, request).await,
        _ => match RepositoryMethod::of(method) {
            Some(method) => repository::call(&shared, method, request).await,
            None => Status::unimplemented(format!("Method not found: {SERVICE_NAME}/{method}"))
                .into_http(),
        },
    }
}

/// Triton's system shared memory RPCs, on the process's one registry.
async fn shared_memory(shared: &Shared, request: Request<MeteredBody>) -> Response<Body> {
    let path = request.uri().path();
    let method = path
        .rsplit_once('/')
        .map_or("", |(_, method)| method)
        .to_owned();
    match method.as_str() {
        "SystemSharedMemoryStatus" => {
            small(
                shared,
                request,
                |asked: proto::SystemSharedMemoryStatusRequest| {
                    let regions = shm::regions()
                        .status(&asked.name)
                        .map_err(|error| status_of(&error))?;
                    Ok(proto::SystemSharedMemoryStatusResponse {
                        regions: regions
                            .into_iter()
                            .map(|region| {
                                let status = RegionStatus {
                                    name: region.name.clone(),
                                    key: region.key,
                                    offset: region.offset,
                                    byte_size: region.byte_size,
                                };
                                (region.name, status)
                            })
                            .collect(),
                    })
                },
            )
            .await
        }
        "SystemSharedMemoryRegister" => {
            small(
                shared,
                request,
                |asked: proto::SystemSharedMemoryRegisterRequest| {
                    shm::regions()
                        .register(&asked.name, &asked.key, asked.offset, asked.byte_size)
                        .map_err(|error| status_of(&error))?;
                    Ok(proto::SystemSharedMemoryRegisterResponse {})
                },
            )
            .await
        }
        "SystemSharedMemoryUnregister" => {
            small(
                shared,
                request,
                |asked: proto::SystemSharedMemoryUnregisterRequest| {
                    shm::regions().unregister(&asked.name);
                    Ok(proto::SystemSharedMemoryUnregisterResponse {})
                },
            )
            .await
        }
        _ => {
            Status::unimplemented(format!("Method not found: {SERVICE_NAME}/{method}")).into_http()
        }
    }
}
