//! Every call to its service, by the service name in its path: the inference service,
//! health, reflection (v1 and v1alpha) and Arrow Flight. Every request body is metered first, so the
//! budget of bytes in flight covers every call; a call's deadline is read when it arrives.

#![deny(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response};
use hyper::body::Incoming;
use tonic::body::Body;
use tonic::Status;
use tower_service::Service;

use super::deadline::Deadline;
use super::flight::{self, Flight};
use super::metered::{CallBudget, MeteredBody};
use super::observe::Arrived;
use super::service::{self, SERVICE_NAME};
use super::{Limits, Shared, CONNECTION_REFUSED};

/// The encoded descriptors of `protos/grpc_service.proto`, for reflection.
const INFERENCE_DESCRIPTORS: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/inference_descriptors.bin"));

use arrow_flight::flight_service_server::FlightServiceServer;
use tonic::codec::CompressionEncoding;
use tonic_health::pb::health_server::{self, HealthServer};
use tonic_reflection::pb::v1::server_reflection_server as reflection_v1;
use tonic_reflection::pb::v1alpha::server_reflection_server as reflection_v1alpha;

/// A service as the router holds it: whatever its type, a call in and a response out.
type Handler = Arc<
    dyn Fn(Request<MeteredBody>) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>>
        + Send
        + Sync,
>;

/// `service` as a `Handler`: cloned for each call, as tower services are.
fn handler<S>(service: S) -> Handler
where
    S: Service<Request<MeteredBody>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    Arc::new(move |request| {
        let mut service = service.clone();
        Box::pin(async move {
            match service.call(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            }
        })
    })
}

/// The front's services; cloned per call (each holds only shared handles).
#[derive(Clone)]
pub(super) struct Router {
    shared: Arc<Shared>,
    health: Handler,
    reflection_v1: Handler,
    reflection_v1alpha: Handler,
    flight: Handler,
}

#[allow(clippy::needless_pass_by_value)] // the shape `map_err` hands it
fn reflection_error(error: tonic_reflection::server::Error) -> std::io::Error {
    std::io::Error::other(format!("server reflection: {error}"))
}

impl Router {
    pub(super) fn new(shared: Arc<Shared>) -> std::io::Result<Router> {
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(INFERENCE_DESCRIPTORS)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let flight = FlightServiceServer::new(Flight(Arc::clone(&shared)))
            .max_decoding_message_size(shared.limits.max_message_size)
            .max_encoding_message_size(usize::MAX)
            .accept_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Zstd);
        Ok(Router {
            flight: handler(flight),
            health: handler(HealthServer::new(shared.models.health_service())),
            reflection_v1: handler(reflection().build_v1().map_err(reflection_error)?),
            reflection_v1alpha: handler(reflection().build_v1alpha().map_err(reflection_error)?),
            shared,
        })
    }

    pub(super) fn limits(&self) -> &Limits {
        &self.shared.limits
    }

    pub(super) fn count_refused_connection(&self) {
        self.shared.stats.count("", CONNECTION_REFUSED);
    }

    /// Answers one call.
    pub(super) async fn route(self, request: Request<Incoming>) -> Response<Body> {
        let arrived = Instant::now();
        let (mut parts, body) = request.into_parts();
        if let Some(deadline) = Deadline::of(&parts.headers, arrived) {
            parts.extensions.insert(deadline);
        }
        parts.extensions.insert(Arrived(arrived));
        let budget = CallBudget::new(Arc::clone(&self.shared.inflight));
        parts.extensions.insert(Arc::clone(&budget));
        let body = MeteredBody::new(body, budget, Arc::clone(&self.shared));
        let request = Request::from_parts(parts, body);
        let path = request.uri().path();
        let service = path
            .strip_prefix('/')
            .and_then(|path| path.split_once('/'))
            .map_or("", |(service, _)| service);
        match service {
            SERVICE_NAME => service::call(self.shared, request).await,
            health_server::SERVICE_NAME => (self.health)(request).await,
            reflection_v1::SERVICE_NAME => (self.reflection_v1)(request).await,
            reflection_v1alpha::SERVICE_NAME => (self.reflection_v1alpha)(request).await,
            flight::SERVICE_NAME => (self.flight)(request).await,
            _ => Status::unimplemented(format!("unknown service {service}")).into_http(),
        }
    }
}
