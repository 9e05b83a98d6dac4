//! Arrow Flight beside the inference service (`arrow.flight.protocol.FlightService`), for
//! clients that hold their features as Arrow already.
//!
//! - `DoExchange`: the client streams record batches of feature columns, its first message
//!   naming the model in a path descriptor (`[model]` or `[model, version]`); each batch is
//!   one request to the model's batcher, under the same signature rules, limits, deadline and
//!   counts as a ModelInfer call, and the predictions come back as record batches in the
//!   same order, row for row. A batch that is refused ends the exchange with the status and
//!   message ModelInfer would give.
//! - `GetSchema`: the columns the model takes. `GetFlightInfo`: the columns its predictions
//!   come back as (its schema), and the model's name and version (its app metadata, JSON).
//!
//! The other Flight methods are UNIMPLEMENTED: there is nothing to list, get or put.

#![deny(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::borrow::Cow;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use arrow_array::RecordBatch;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_descriptor::DescriptorType;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaAsIpc, SchemaResult, Ticket,
};
use arrow_ipc::writer::IpcWriteOptions;
use arrow_schema::{Schema, SchemaRef};
use futures::stream::{self, FuturesOrdered};
use futures::{FutureExt, Stream, StreamExt, TryStreamExt};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use super::deadline::Deadline;
use super::infer::{queue_request, Pending};
use super::models::Entry;
use super::observe::{code_name, TraceHeaders};
use super::service::{grpc_code, status_of};
use super::Shared;
use crate::access_log::json_string;
use crate::decode::InferRequest;
use crate::encode::EncodedResponse;
use crate::error::Error;
use crate::flight_data::{record_batches, Stopped};
use crate::observe::{Arrival, Observed, Outcome};
use crate::proto::infer_parameter::ParameterChoice;
use crate::table::{batch_of, input_schema, output_schema, tensors_of};
use crate::tensor::Parameters;

/// The service's name, as the router finds it in a call's path.
pub(super) const SERVICE_NAME: &str = "arrow.flight.protocol.FlightService";
const DO_EXCHANGE: &str = "arrow.flight.protocol.FlightService/DoExchange";

/// Record batches of one exchange that may wait in the model's queue at once: the batcher
/// gathers the next ones while the model runs one, and a client that sends faster than the
/// model answers is held back by HTTP/2 flow control, not by memory here.
const AHEAD: usize = 4;

/// The Flight service over the front's model table.
#[derive(Clone)]
pub(super) struct Flight(pub Arc<Shared>);

type Answers<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn unimplemented<T>(method: &str) -> Result<T, Status> {
    Err(Status::unimplemented(format!(
        "Flight {method} is not offered: Arrowsmith scores with DoExchange and describes a model \
         with GetSchema and GetFlightInfo"
    )))
}

/// The model a descriptor names: a path of its name, or its name and version.
fn model_named(descriptor: Option<&FlightDescriptor>) -> Result<(String, String), Status> {
    const EXPECTED: &str = "a path descriptor naming the model: [name] or [name, version]";
    let descriptor = descriptor.ok_or_else(|| {
        Status::invalid_argument(format!("the call has no descriptor; expected {EXPECTED}"))
    })?;
    if descriptor.r#type != DescriptorType::Path as i32 {
        return Err(Status::invalid_argument(format!(
            "the descriptor is a command; expected {EXPECTED}"
        )));
    }
    match descriptor.path.as_slice() {
        [name] => Ok((name.clone(), String::new())),
        [name, version] => Ok((name.clone(), version.clone())),
        path => Err(Status::invalid_argument(format!(
            "the descriptor's path has {} parts; expected {EXPECTED}",
            path.len()
        ))),
    }
}

impl Flight {
    /// The served model a descriptor names; a model served by another process is not
    /// reachable over Flight.
    fn model(&self, descriptor: Option<&FlightDescriptor>) -> Result<Arc<Entry>, Status> {
        let (name, version) = model_named(descriptor)?;
        if self.0.routes.routes(&name) {
            return Err(Status::unimplemented(format!(
                "model '{name}' runs in its own environment, which Flight does not reach; \
                 call it with ModelInfer"
            )));
        }
        self.0
            .models
            .find(&name, &version)
            .map_err(|error| status_of(&error))
    }
}

/// The outputs of a model that are text (`content_type: str` in its metadata).
fn text_outputs(entry: &Entry) -> Vec<String> {
    entry
        .model
        .metadata
        .outputs
        .iter()
        .filter(|output| {
            output
                .parameters
                .get("content_type")
                .and_then(|p| p.parameter_choice.as_ref())
                == Some(&ParameterChoice::StringParam("str".to_owned()))
        })
        .map(|output| output.name.clone())
        .collect()
}

/// The columns a model's predictions come back as; None when its metadata lists no outputs.
fn predictions_schema(entry: &Entry) -> Option<SchemaRef> {
    let outputs: Vec<(String, String, Vec<i64>)> = entry
        .model
        .metadata
        .outputs
        .iter()
        .map(|o| (o.name.clone(), o.datatype.clone(), o.shape.clone()))
        .collect();
    (!outputs.is_empty()).then(|| output_schema(&outputs, &text_outputs(entry)))
}

fn ipc_schema(schema: &Schema) -> Result<SchemaResult, Status> {
    SchemaResult::try_from(SchemaAsIpc::new(schema, &IpcWriteOptions::default()))
        .map_err(|e| Status::internal(format!("the schema cannot be encoded: {e}")))
}

#[tonic::async_trait]
impl FlightService for Flight {
    type HandshakeStream = Answers<HandshakeResponse>;
    type ListFlightsStream = Answers<FlightInfo>;
    type DoGetStream = Answers<FlightData>;
    type DoPutStream = Answers<PutResult>;
    type DoExchangeStream = Answers<FlightData>;
    type DoActionStream = Answers<arrow_flight::Result>;
    type ListActionsStream = Answers<ActionType>;

    async fn handshake(
        &self,
        _: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        unimplemented("Handshake")
    }

    async fn list_flights(
        &self,
        _: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        unimplemented("ListFlights")
    }

    async fn get_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let descriptor = request.into_inner();
        let entry = self.model(Some(&descriptor))?;
        let schema = predictions_schema(&entry).unwrap_or_else(|| Arc::new(Schema::empty()));
        let mut about = String::from("{\"name\":");
        json_string(&mut about, &entry.model.name);
        about.push_str(",\"version\":");
        json_string(&mut about, &entry.model.version);
        about.push('}');
        let info = FlightInfo::new()
            .try_with_schema(&schema)
            .map_err(|e| Status::internal(format!("the schema cannot be encoded: {e}")))?
            .with_descriptor(descriptor)
            .with_total_records(-1)
            .with_total_bytes(-1)
            .with_app_metadata(about.into_bytes());
        Ok(Response::new(info))
    }

    async fn poll_flight_info(
        &self,
        _: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        unimplemented("PollFlightInfo")
    }

    async fn get_schema(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        let entry = self.model(Some(request.get_ref()))?;
        let schema = input_schema(entry.model.signature.as_ref());
        ipc_schema(&schema).map(Response::new)
    }

    async fn do_get(&self, _: Request<Ticket>) -> Result<Response<Self::DoGetStream>, Status> {
        unimplemented("DoGet")
    }

    async fn do_put(
        &self,
        _: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        unimplemented("DoPut")
    }

    async fn do_exchange(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        let deadline = request.extensions().get::<Deadline>().map(|d| d.0);
        let trace = TraceHeaders::of(request.metadata().as_ref(), false);
        let mut input = request.into_inner();
        let first = input.message().await?.ok_or_else(|| {
            Status::invalid_argument(
                "the exchange sent nothing; its first message names the model in a path \
                 descriptor",
            )
        })?;
        let entry = self.model(first.flight_descriptor.as_ref())?;
        let declared = predictions_schema(&entry);
        let batches = record_batches(stream::once(async { Ok(first) }).chain(input));
        let (answers, received) = mpsc::channel(AHEAD);
        let exchange = Exchange {
            shared: Arc::clone(&self.0),
            name: entry.model.name.clone(),
            version: entry.model.version.clone(),
            text: text_outputs(&entry),
            deadline,
            trace,
            schema: declared.clone(),
        };
        // A panic must not end the stream as if every batch had been answered: the client
        // gets INTERNAL instead.
        let failed = answers.clone();
        tokio::spawn(async move {
            let run = AssertUnwindSafe(exchange.run(batches, answers)).catch_unwind();
            if run.await.is_err() {
                let status = Status::internal("the exchange failed on a batch and ended there");
                let _ = failed.send(Err(FlightError::Tonic(Box::new(status)))).await;
            }
        });
        let answered = stream::unfold(received, |mut received| async move {
            received.recv().await.map(|answer| (answer, received))
        });
        let mut builder = FlightDataEncoderBuilder::new();
        if let Some(schema) = declared {
            builder = builder.with_schema(schema);
        }
        let data = builder.build(answered).map_err(Status::from);
        Ok(Response::new(Box::pin(data)))
    }

    async fn do_action(
        &self,
        _: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        unimplemented("DoAction")
    }

    async fn list_actions(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        unimplemented("ListActions")
    }
}

/// One DoExchange: its record batches, queued in order, answered in order.
struct Exchange {
    shared: Arc<Shared>,
    name: String,
    version: String,
    text: Vec<String>,
    deadline: Option<Instant>,
    trace: TraceHeaders,
    /// The predictions' columns: as the model's metadata declares them, else as its first
    /// answer has them; every answer is held to them.
    schema: Option<SchemaRef>,
}

impl Exchange {
    /// Queues each record batch as it arrives (up to `AHEAD` at once) and sends the answers
    /// in order; the first refusal or failure is sent as the exchange's status, and ends it.
    /// A client that goes away drops `answers`' receiver: what is queued is then abandoned.
    async fn run(
        mut self,
        batches: impl Stream<Item = Result<RecordBatch, Stopped>>,
        answers: mpsc::Sender<Result<RecordBatch, FlightError>>,
    ) {
        let mut batches = std::pin::pin!(batches.fuse());
        let mut queued: FuturesOrdered<Rows> = FuturesOrdered::new();
        let mut ended = false;
        loop {
            let answer = tokio::select! {
                // Answers first: they free room for the next batch.
                biased;
                Some(answer) = queued.next(), if !queued.is_empty() => answer,
                next = batches.next(), if !ended && queued.len() < AHEAD => {
                    match next {
                        Some(Ok(batch)) => match self.queue(&batch) {
                            Ok(rows) => {
                                queued.push_back(rows);
                                continue;
                            }
                            Err(status) => Err(status),
                        },
                        Some(Err(Stopped::Refused(error))) => Err(status_of(&error)),
                        Some(Err(Stopped::Transport(status))) => Err(status),
                        None => {
                            ended = true;
                            continue;
                        }
                    }
                }
                else => return,
            };
            let answer = answer.and_then(|(response, rows)| self.record_batch(&response, rows));
            let failed = answer.is_err();
            let sent = answers
                .send(answer.map_err(|status| FlightError::Tonic(Box::new(status))))
                .await;
            if failed || sent.is_err() {
                return;
            }
        }
    }

    /// The batch as a request to the model, in its queue.
    fn queue(&self, batch: &RecordBatch) -> Result<Rows, Status> {
        let arrived = Instant::now();
        let rows = batch.num_rows();
        let observed = Observed::start(Arrival {
            traceparent: self
                .trace
                .traceparent
                .as_ref()
                .and_then(|v| v.to_str().ok()),
            tracestate: self.trace.tracestate.as_ref().and_then(|v| v.to_str().ok()),
            span: Some(Cow::Borrowed(DO_EXCHANGE)),
            protocol: "flight",
            call: Cow::Borrowed("DoExchange"),
            arrived,
        });
        let queued = tensors_of(batch)
            .map(|inputs| InferRequest {
                model_name: self.name.clone(),
                model_version: self.version.clone(),
                id: String::new(),
                parameters: Parameters::new(),
                inputs,
                requested_outputs: Vec::new(),
                output_regions: Vec::new(),
            })
            .map_err(|error| (self.name.clone(), error))
            .and_then(|request| {
                let trace = observed.as_ref().and_then(Observed::trace_context);
                queue_request(&self.shared, request, arrived, self.deadline, trace)
            });
        match queued {
            Ok(queued) => {
                let mut observed = observed;
                if let Some(observed) = &mut observed {
                    observed.decoded(queued.decoded);
                }
                let pending =
                    Pending::new(Arc::clone(&self.shared), queued.model, queued.job, observed);
                Ok(Rows { pending, rows })
            }
            Err((model, error)) => {
                self.shared.stats.count(&model, error.code_name());
                if let Some(observed) = observed {
                    observed.finish(&Outcome {
                        model: &model,
                        version: &self.version,
                        job: None,
                        status: code_name(grpc_code(&error)),
                        error: Some(&error.to_string()),
                    });
                }
                Err(status_of(&error))
            }
        }
    }

    /// A response as the exchange's next record batch, held to the exchange's columns.
    fn record_batch(
        &mut self,
        response: &EncodedResponse,
        rows: usize,
    ) -> Result<RecordBatch, Status> {
        let batch = response
            .outputs()
            .and_then(|outputs| batch_of(outputs, rows, &self.text))
            .map_err(|error| status_of(&error))?;
        let Some(schema) = &self.schema else {
            self.schema = Some(batch.schema());
            return Ok(batch);
        };
        if batch.schema_ref() == schema {
            return Ok(batch);
        }
        let columns = schema
            .fields()
            .iter()
            .zip(batch.columns())
            .map(|(field, column)| arrow_cast::cast(column, field.data_type()))
            .collect::<Result<Vec<_>, _>>();
        let names_match = batch.num_columns() == schema.fields().len()
            && batch
                .schema()
                .fields()
                .iter()
                .zip(schema.fields())
                .all(|(got, want)| got.name() == want.name());
        match columns {
            Ok(columns) if names_match => RecordBatch::try_new(Arc::clone(schema), columns)
                .map_err(|e| Status::internal(e.to_string())),
            _ => Err(status_of(&Error::Internal(format!(
                "model '{}' answered with columns {} where {} were declared",
                self.name,
                batch.schema(),
                schema
            )))),
        }
    }
}

/// A queued batch until answered, with its rows.
struct Rows {
    pending: Pending,
    rows: usize,
}

impl std::future::Future for Rows {
    type Output = Result<(EncodedResponse, usize), Status>;

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let rows = self.rows;
        Pin::new(&mut self.pending).poll(cx).map(|answer| {
            answer
                .map(|response| (response, rows))
                .map_err(|e| status_of(&e))
        })
    }
}
