//! Adaptive batching: a per-model queue whose runner takes, whenever it is free, every
//! compatible request waiting (up to a row limit) as one batch. Concatenation and the split
//! of the model's answer back into per-request responses work on Arrow data by row offsets,
//! and a batch whose answer has the wrong number of rows fails every request in it rather
//! than hand anyone another request's rows.
//!
//! Threads: request threads `submit` and then `wait` (holding no interpreter lock in the
//! Python binding), or an async front submits and polls `poll_answer`; one runner thread
//! per model calls `next_batch`, predicts, and calls `complete` or `fail`. Lock order: the
//! queue's lock before any job's.
//!
//! Rows, shapes and names here come from clients: nothing indexes by them or does unchecked
//! arithmetic with them, and the compiler holds the module to that. Requests batch together
//! only when their typed `BatchKey`s are equal, and assembly checks every job against the
//! batch again, refusing (INTERNAL for the batch) rather than indexing past a request.
#![deny(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use arrow_array::{Array, ArrayRef};
use opentelemetry::trace::SpanContext;

use crate::batch_key::BatchKey;
use crate::encode::{prepare_response, EncodedResponse, InferResponse, OutputTensor};
use crate::error::{Error, Result};
use crate::shm::OutputRegion;
use crate::telemetry::BatchTrace;
use crate::tensor::{shape_text, Parameters, Tensor};

/// Limits of one model's batcher.
#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    /// Rows per batch; a single request larger than this still runs, alone.
    pub max_batch_rows: usize,
    /// How long a batch may stay open for more requests once its first one waits.
    pub max_delay: Duration,
    /// Requests waiting at most; past it, submissions are refused (back-pressure).
    pub max_queue: usize,
}

/// One request, ready to join a batch.
#[derive(Debug)]
pub struct Job {
    pub id: String,
    /// How the runner turns the batch's tensors into the model's input (e.g. "columns").
    pub form: String,
    pub parameters: Parameters,
    pub requested_outputs: Vec<String>,
    /// Each tensor's first dimension is the request's rows.
    pub tensors: Vec<Tensor>,
    /// None: the tensors share no row dimension, so the request runs alone.
    pub rows: Option<usize>,
    /// Requests share a batch only when their keys are equal.
    key: BatchKey,
    deadline: Option<Instant>,
    enqueued: Mutex<Option<Instant>>,
    state: Mutex<JobState>,
    done: Condvar,
    /// An async waiter to wake when the job settles.
    waker: Mutex<Option<Waker>>,
    /// Called once when the job settles (answered, failed or abandoned).
    on_settled: Mutex<Option<Notify>>,
    /// The request's server span, when it is traced: its batch links to it.
    trace: OnceLock<SpanContext>,
    /// When the batch that answered the job started and ended (set once, as it settles).
    ran: OnceLock<(Instant, Instant)>,
    /// Outputs the client asked to have written into shared memory.
    output_regions: Vec<OutputRegion>,
    /// The tensors' values end to end in one array (columns x rows), when admission's cast
    /// built one: a batch of this job alone is that block.
    pub(crate) block: Option<ArrayRef>,
}

/// Where a settled job's time went.
#[derive(Debug, Clone, Copy)]
pub struct JobTiming {
    /// From joining the queue to its batch's start.
    pub queue_wait: Duration,
    /// Its batch's run: building the model's input and the model's call.
    pub predict: Duration,
    /// When its batch started and ended.
    pub batch_started: Instant,
    pub batch_ended: Instant,
}

/// A callback for when a job settles.
pub struct Notify(pub Box<dyn FnOnce() + Send>);

impl std::fmt::Debug for Notify {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Notify")
    }
}

#[derive(Debug)]
enum JobState {
    Queued,
    Running,
    Done(Result<EncodedResponse>),
    /// The waiter left (deadline, cancellation); any result is dropped.
    Abandoned,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not wedge every request: the state stays usable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Job {
    /// A job of `tensors` (rows along the first dimension), answerable by the batcher.
    pub fn new(
        id: String,
        form: String,
        parameters: Parameters,
        requested_outputs: Vec<String>,
        tensors: Vec<Tensor>,
        deadline: Option<Instant>,
    ) -> Self {
        let rows = shared_rows(&tensors);
        let key = BatchKey::new(
            &form,
            &parameters,
            &requested_outputs,
            &tensors,
            rows.is_some(),
        );
        Job {
            id,
            form,
            parameters,
            requested_outputs,
            tensors,
            rows,
            key,
            deadline,
            enqueued: Mutex::new(None),
            state: Mutex::new(JobState::Queued),
            done: Condvar::new(),
            waker: Mutex::new(None),
            on_settled: Mutex::new(None),
            trace: OnceLock::new(),
            ran: OnceLock::new(),
            output_regions: Vec::new(),
            block: None,
        }
    }

    /// The job with these outputs written into shared memory rather than its response.
    #[must_use]
    pub fn with_output_regions(mut self, regions: Vec<OutputRegion>) -> Self {
        self.output_regions = regions;
        self
    }

    /// The tensors' block (`coerce::ModelInput::block`), laid out as `Batch::column_block`
    /// lays out a batch of this job alone.
    #[must_use]
    pub fn with_block(mut self, block: Option<ArrayRef>) -> Self {
        self.block = block;
        self
    }

    /// Names the request's server span, for its batch to link to (before it is queued).
    pub fn set_trace(&self, context: SpanContext) {
        // Set once, before submission; a second call keeps the first.
        let _ = self.trace.set(context);
    }

    /// When the job joined its model's queue.
    pub fn enqueued_at(&self) -> Option<Instant> {
        *lock(&self.enqueued)
    }

    /// Its queue wait and its batch's run, once a batch answered it.
    pub fn timing(&self) -> Option<JobTiming> {
        let &(batch_started, batch_ended) = self.ran.get()?;
        let queued = self.enqueued_at().unwrap_or(batch_started);
        Some(JobTiming {
            queue_wait: batch_started.saturating_duration_since(queued),
            predict: batch_ended.saturating_duration_since(batch_started),
            batch_started,
            batch_ended,
        })
    }

    fn expired(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| d <= now)
    }

    fn is_abandoned(&self) -> bool {
        matches!(*lock(&self.state), JobState::Abandoned | JobState::Done(_))
    }

    /// Settles the job unless its waiter already left.
    fn finish(&self, result: Result<EncodedResponse>) {
        let mut state = lock(&self.state);
        if matches!(*state, JobState::Queued | JobState::Running) {
            *state = JobState::Done(result);
            self.wake_waiters();
        }
    }

    fn wake_waiters(&self) {
        self.done.notify_all();
        if let Some(waker) = lock(&self.waker).take() {
            waker.wake();
        }
        if let Some(Notify(notify)) = lock(&self.on_settled).take() {
            notify();
        }
    }

    /// Calls `notify` once the job settles (at once if it already has); for waiters that
    /// neither block nor poll, such as an event loop watching a file descriptor.
    pub fn notify_when_settled(&self, notify: Notify) {
        let state = lock(&self.state);
        if matches!(*state, JobState::Queued | JobState::Running) {
            *lock(&self.on_settled) = Some(notify);
        } else {
            drop(state);
            (notify.0)();
        }
    }

    /// Marks the job abandoned (client cancelled or deadline passed) and wakes its waiter.
    pub fn abandon(&self) {
        let mut state = lock(&self.state);
        if matches!(*state, JobState::Queued | JobState::Running) {
            *state = JobState::Abandoned;
            self.wake_waiters();
        }
    }

    /// Takes the job's answer if it has one: its result, or Cancelled once abandoned.
    fn take_answer(&self, state: &mut JobState) -> Option<Result<EncodedResponse>> {
        match std::mem::replace(state, JobState::Abandoned) {
            JobState::Done(result) => Some(result),
            JobState::Abandoned => Some(Err(Error::Cancelled(format!(
                "request '{}' was cancelled",
                self.id
            )))),
            waiting => {
                *state = waiting;
                None
            }
        }
    }

    /// The job's answer if it has settled, without waiting.
    pub fn try_answer(&self) -> Option<Result<EncodedResponse>> {
        self.take_answer(&mut lock(&self.state))
    }

    /// When the client wants its answer by, if it said.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Seconds the job waited in the queue before its batch started.
    fn queue_wait(&self, started: Instant) -> f64 {
        lock(&self.enqueued).map_or(0.0, |t| started.saturating_duration_since(t).as_secs_f64())
    }
}

fn shared_rows(tensors: &[Tensor]) -> Option<usize> {
    let first = tensors.first()?.shape.first().copied()?;
    tensors
        .iter()
        .all(|t| t.shape.first() == Some(&first))
        .then_some(first)
}

struct Queue {
    jobs: VecDeque<Arc<Job>>,
    closed: bool,
    /// Why the model takes no requests for now (e.g. a predict call overran its time).
    unavailable: Option<String>,
}

/// One model's queue.
pub struct Batcher {
    config: BatchConfig,
    model_name: String,
    model_version: String,
    queue: Mutex<Queue>,
    /// Wakes the runner when jobs arrive or the batcher closes.
    arrivals: Condvar,
}

impl Batcher {
    pub fn new(config: BatchConfig, model_name: String, model_version: String) -> Self {
        Batcher {
            config,
            model_name,
            model_version,
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                closed: false,
                unavailable: None,
            }),
            arrivals: Condvar::new(),
        }
    }

    /// Queues a job; refused when the queue is full or the batcher is closed.
    pub fn submit(&self, job: &Arc<Job>) -> Result<()> {
        let mut queue = lock(&self.queue);
        if queue.closed {
            return Err(Error::Unavailable(format!(
                "model '{}' is shutting down and takes no more requests",
                self.model_name
            )));
        }
        if let Some(reason) = &queue.unavailable {
            return Err(Error::Unavailable(reason.clone()));
        }
        if queue.jobs.len() >= self.config.max_queue {
            return Err(Error::QueueFull(format!(
                "model '{}' has {} requests waiting, its max_queue_size; retry later",
                self.model_name, self.config.max_queue
            )));
        }
        *lock(&job.enqueued) = Some(Instant::now());
        queue.jobs.push_back(Arc::clone(job));
        self.arrivals.notify_one();
        Ok(())
    }

    /// The error for a job whose deadline passed while it waited; the job is abandoned.
    pub fn expire(&self, job: &Job) -> Error {
        job.abandon();
        Error::DeadlineExceeded(format!(
            "request '{}' to model '{}' passed its deadline before an answer",
            job.id, self.model_name
        ))
    }

    /// Blocks until the job is answered, its deadline passes or it is abandoned.
    pub fn wait(&self, job: &Job) -> Result<EncodedResponse> {
        let mut state = lock(&job.state);
        loop {
            if let Some(answer) = job.take_answer(&mut state) {
                return answer;
            }
            match job.deadline {
                None => state = job.done.wait(state).unwrap_or_else(PoisonError::into_inner),
                Some(deadline) => {
                    let now = Instant::now();
                    if deadline <= now {
                        drop(state);
                        return Err(self.expire(job));
                    }
                    state = job
                        .done
                        .wait_timeout(state, deadline.saturating_duration_since(now))
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            }
        }
    }

    /// The job's answer if it has settled; otherwise registers `cx`'s waker to be woken
    /// when it does. The caller watches the deadline (see `expire`).
    pub fn poll_answer(&self, job: &Job, cx: &Context<'_>) -> Poll<Result<EncodedResponse>> {
        let mut state = lock(&job.state);
        if let Some(answer) = job.take_answer(&mut state) {
            return Poll::Ready(answer);
        }
        *lock(&job.waker) = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Lets the runner drain what is queued, then end; new submissions are refused.
    pub fn close(&self) {
        lock(&self.queue).closed = true;
        self.arrivals.notify_all();
    }

    /// Closes the batcher and answers every request still queued with `error` (the runner
    /// is gone, so nobody else would); returns how many there were.
    pub fn abort(&self, error: &Error) -> usize {
        let jobs = {
            let mut queue = lock(&self.queue);
            queue.closed = true;
            std::mem::take(&mut queue.jobs)
        };
        self.arrivals.notify_all();
        for job in &jobs {
            job.finish(Err(error.clone()));
        }
        jobs.len()
    }

    /// `Some(reason)`: new submissions are refused UNAVAILABLE with it until `None` again.
    /// Requests already queued stay queued.
    pub fn set_unavailable(&self, reason: Option<String>) {
        lock(&self.queue).unavailable = reason;
    }

    /// Requests waiting now.
    pub fn depth(&self) -> usize {
        lock(&self.queue).jobs.len()
    }

    /// Drops abandoned jobs and answers expired ones, from the whole queue.
    fn prune(queue: &mut Queue, now: Instant, model_name: &str) {
        queue.jobs.retain(|job| {
            if job.is_abandoned() {
                return false;
            }
            if job.expired(now) {
                job.finish(Err(Error::DeadlineExceeded(format!(
                    "request '{}' to model '{model_name}' passed its deadline while queued",
                    job.id
                ))));
                return false;
            }
            true
        });
    }

    fn rows_like(queue: &Queue, key: &BatchKey) -> usize {
        queue
            .jobs
            .iter()
            .filter(|j| j.key == *key)
            .fold(0usize, |sum, j| sum.saturating_add(j.rows.unwrap_or(0)))
    }

    /// The next batch: blocks while the queue is empty; None once closed and drained.
    pub fn next_batch(&self) -> Option<Batch> {
        let mut queue = lock(&self.queue);
        loop {
            Self::prune(&mut queue, Instant::now(), &self.model_name);
            let Some(first) = queue.jobs.front().cloned() else {
                if queue.closed {
                    return None;
                }
                queue = self
                    .arrivals
                    .wait(queue)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            };
            if !self.config.max_delay.is_zero() && !queue.closed {
                // Hold the batch open until its first request has waited max_delay, unless
                // it is full already; every arrival re-evaluates.
                let opened = lock(&first.enqueued).unwrap_or_else(Instant::now);
                let close_at = opened.checked_add(self.config.max_delay).unwrap_or(opened);
                let now = Instant::now();
                if now < close_at
                    && Self::rows_like(&queue, &first.key) < self.config.max_batch_rows
                {
                    queue = self
                        .arrivals
                        .wait_timeout(queue, close_at.saturating_duration_since(now))
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                    continue;
                }
            }
            return Some(self.take_batch(&mut queue, &first));
        }
    }

    /// Removes from the queue the first job and every later one with its key that fits.
    fn take_batch(&self, queue: &mut Queue, first: &Arc<Job>) -> Batch {
        let mut rows = 0usize;
        let mut jobs: Vec<Arc<Job>> = Vec::new();
        let mut rest = VecDeque::with_capacity(queue.jobs.len());
        for job in queue.jobs.drain(..) {
            let with = rows.checked_add(job.rows.unwrap_or(0));
            let joins = if jobs.is_empty() {
                Arc::ptr_eq(&job, first)
            } else {
                job.key == first.key
                    && job.rows.is_some()
                    && with.is_some_and(|n| n <= self.config.max_batch_rows)
            };
            if joins {
                rows = with.unwrap_or(rows);
                jobs.push(job);
            } else {
                rest.push_back(job);
            }
        }
        queue.jobs = rest;
        for job in &jobs {
            let mut state = lock(&job.state);
            if matches!(*state, JobState::Queued) {
                *state = JobState::Running;
            }
        }
        let started = Instant::now();
        let trace = BatchTrace::start(
            jobs.iter().filter_map(|job| job.trace.get()),
            &self.model_name,
            &self.model_version,
            rows,
            started,
        );
        Batch {
            lead: Arc::clone(first),
            jobs,
            started,
            model_name: self.model_name.clone(),
            model_version: self.model_version.clone(),
            trace: Mutex::new(trace),
        }
    }
}

/// Requests the runner predicts together.
#[derive(Debug)]
pub struct Batch {
    /// The first request, whose key every other one shares (`jobs`' first, held apart so
    /// that nothing indexes for it).
    lead: Arc<Job>,
    /// Every request, the lead first.
    jobs: Vec<Arc<Job>>,
    started: Instant,
    model_name: String,
    model_version: String,
    /// The batch's span, while it runs (when one of its requests is traced).
    trace: Mutex<Option<BatchTrace>>,
}

/// How many values a job's tensors hold in all.
fn job_values(job: &Job) -> usize {
    job.tensors.iter().map(|t| t.values.len()).sum()
}

/// `values` of `tensor`, checked to fill its shape and to have the key's type: the batch's
/// last check before it trusts a request's numbers.
fn checked_values<'a>(job: &'a Job, index: usize, lead: &Tensor) -> Result<&'a Tensor> {
    let refuse = |what: &str| {
        Error::Internal(format!(
            "request '{}' does not fit the batch it was put in ({what} of input {index}); \
             the batch is refused rather than mixed",
            job.id
        ))
    };
    let tensor = job.tensors.get(index).ok_or_else(|| refuse("missing"))?;
    if tensor.name != lead.name || tensor.values.data_type() != lead.values.data_type() {
        return Err(refuse("name or type"));
    }
    if tensor.shape.get(1..) != lead.shape.get(1..) {
        return Err(refuse("trailing dimensions"));
    }
    let elements = tensor
        .shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| refuse("element count"))?;
    if elements != tensor.values.len() {
        return Err(refuse("element count"));
    }
    Ok(tensor)
}

impl Batch {
    /// A batch of one job outside any batcher, for building a model input from a single
    /// request; it carries no model name, so it is not for answering.
    pub fn of(job: Arc<Job>) -> Batch {
        Batch {
            jobs: vec![Arc::clone(&job)],
            lead: job,
            started: Instant::now(),
            model_name: String::new(),
            model_version: String::new(),
            trace: Mutex::new(None),
        }
    }

    /// A batch of exactly this job (used to retry a failed batch request by request).
    fn single(&self, job: Arc<Job>) -> Batch {
        let started = Instant::now();
        let trace = BatchTrace::start(
            job.trace.get().into_iter(),
            &self.model_name,
            &self.model_version,
            job.rows.unwrap_or(0),
            started,
        );
        Batch {
            jobs: vec![Arc::clone(&job)],
            lead: job,
            started,
            model_name: self.model_name.clone(),
            model_version: self.model_version.clone(),
            trace: Mutex::new(trace),
        }
    }

    /// Ends the batch's span, if it has one and it is still open (the error's words are
    /// made only then).
    fn end_trace(&self, error: Option<&dyn std::fmt::Display>, at: Instant) {
        if let Some(trace) = lock(&self.trace).take() {
            trace.end(error.map(ToString::to_string).as_deref(), at);
        }
    }

    /// Settles `job` with `result`, noting the batch's run on it.
    fn settle(&self, job: &Job, result: Result<EncodedResponse>, ended: Instant) {
        // A job is settled once; a later batch of it (none is made) would keep the first.
        let _ = job.ran.set((self.started, ended));
        job.finish(result);
    }

    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// The first request: its form, parameters, names and requested outputs are the batch's.
    pub fn first(&self) -> &Job {
        &self.lead
    }

    /// Rows of each request, in batch order.
    pub fn rows(&self) -> Vec<usize> {
        self.jobs.iter().map(|j| j.rows.unwrap_or(0)).collect()
    }

    fn total_rows(&self) -> Result<usize> {
        self.jobs
            .iter()
            .try_fold(0usize, |sum, j| sum.checked_add(j.rows.unwrap_or(0)))
            .ok_or_else(|| Error::Internal("the batch's rows overflow".to_owned()))
    }

    /// Seconds each request waited in the queue.
    pub fn queue_waits(&self) -> Vec<f64> {
        self.jobs
            .iter()
            .map(|j| j.queue_wait(self.started))
            .collect()
    }

    /// Every request's `index`th tensor, each checked against the lead's.
    fn column(&self, index: usize, lead: &Tensor) -> Result<Vec<&Tensor>> {
        self.jobs
            .iter()
            .map(|job| checked_values(job, index, lead))
            .collect()
    }

    /// Checks that every request has exactly the lead's inputs (the key says so; this is the
    /// batch's own check before it combines them).
    fn check_members(&self) -> Result<()> {
        let count = self.lead.key.input_count();
        for job in &self.jobs {
            if job.key != self.lead.key || job.tensors.len() != count {
                return Err(Error::Internal(format!(
                    "request '{}' does not share the inputs of the batch it was put in; the \
                     batch is refused rather than mixed",
                    job.id
                )));
            }
        }
        Ok(())
    }

    /// The batch's tensors: each request's tensors concatenated along the first dimension.
    pub fn inputs(&self) -> Result<Vec<Tensor>> {
        self.check_members()?;
        if self.jobs.len() == 1 {
            for (index, lead) in self.lead.tensors.iter().enumerate() {
                checked_values(&self.lead, index, lead)?;
            }
            return Ok(self.lead.tensors.clone());
        }
        let total = self.total_rows()?;
        self.lead
            .tensors
            .iter()
            .enumerate()
            .map(|(index, lead)| {
                let parts: Vec<&dyn Array> = self
                    .column(index, lead)?
                    .into_iter()
                    .map(|t| t.values.as_ref())
                    .collect();
                let values = arrow_select::concat::concat(&parts).map_err(|e| {
                    Error::Internal(format!("batching input '{}' failed: {e}", lead.name))
                })?;
                let mut shape = lead.shape.clone();
                if let Some(rows) = shape.first_mut() {
                    *rows = total;
                }
                Ok(Tensor {
                    shape,
                    values,
                    ..lead.clone()
                })
            })
            .collect()
    }

    /// When every input is a column of one and the same integer or float type, all of them in one
    /// flat array, column after column (each column's rows in batch order): a
    /// (columns x rows) block built with one copy, which numpy and pandas take as is.
    pub fn column_block(&self) -> Result<Option<ArrayRef>> {
        let lead_tensors = &self.lead.tensors;
        let Some(data_type) = lead_tensors.first().map(|t| t.values.data_type()) else {
            return Ok(None);
        };
        let uniform = lead_tensors.iter().all(|t| {
            t.shape.len() == 1 && t.values.data_type() == data_type && t.values.null_count() == 0
        });
        if !uniform || !(data_type.is_integer() || data_type.is_floating()) {
            return Ok(None);
        }
        self.check_members()?;
        if let [job] = self.jobs.as_slice() {
            if let Some(block) = job.block.as_ref().filter(|b| b.len() == job_values(job)) {
                return Ok(Some(Arc::clone(block)));
            }
        }
        let mut parts: Vec<&dyn Array> = Vec::new();
        for (index, lead) in lead_tensors.iter().enumerate() {
            parts.extend(
                self.column(index, lead)?
                    .into_iter()
                    .map(|t| t.values.as_ref()),
            );
        }
        arrow_select::concat::concat(&parts)
            .map(Some)
            .map_err(|e| Error::Internal(format!("building the batch's column block failed: {e}")))
    }

    /// Splits the model's outputs by request and answers each one. With several requests,
    /// every output must have exactly the batch's rows; otherwise all of them get INTERNAL.
    /// `parameters` go into every response (e.g. the kind of object the model returned).
    pub fn complete(&self, outputs: Vec<OutputTensor>, parameters: &Parameters) {
        // The model's part ends here; splitting and encoding are each request's.
        let ended = Instant::now();
        if let [job] = self.jobs.as_slice() {
            self.end_trace(None, ended);
            self.settle(job, self.answer(job, outputs, parameters), ended);
            return;
        }
        match self.split(&outputs) {
            Ok(parts) => {
                self.end_trace(None, ended);
                for (job, part) in self.jobs.iter().zip(parts) {
                    self.settle(job, self.answer(job, part, parameters), ended);
                }
            }
            Err(error) => self.fail(&error),
        }
    }

    /// The outputs cut into each request's rows, or why they cannot be.
    fn split(&self, outputs: &[OutputTensor]) -> Result<Vec<Vec<OutputTensor>>> {
        let total = self.total_rows()?;
        // Per output: its values per row, once its rows are the batch's rows.
        let per_row = outputs
            .iter()
            .map(|o| {
                let rows = o.shape.first().and_then(|&d| usize::try_from(d).ok());
                let len = o.values.len();
                let inner = len.checked_div(total).unwrap_or(0);
                let whole = inner.checked_mul(total) == Some(len);
                if rows == Some(total) && whole {
                    Ok(inner)
                } else {
                    Err(Error::Internal(format!(
                        "model '{}' returned output '{}' of shape {} for a batch of {total} \
                         rows from {} requests ({len} values); its rows cannot be told apart, \
                         so no request gets them",
                        self.model_name,
                        o.name,
                        shape_text(&o.shape),
                        self.jobs.len()
                    )))
                }
            })
            .collect::<Result<Vec<usize>>>()?;
        let mut offset = 0usize;
        let mut parts = Vec::with_capacity(self.jobs.len());
        for job in &self.jobs {
            let rows = job.rows.unwrap_or(0);
            let part = outputs
                .iter()
                .zip(&per_row)
                .map(|(o, &inner)| {
                    let mut shape = o.shape.clone();
                    if let Some(first) = shape.first_mut() {
                        *first = i64::try_from(rows).unwrap_or(i64::MAX);
                    }
                    // offset + rows <= total, and inner * total is the output's length.
                    let start = offset.saturating_mul(inner);
                    let len = rows.saturating_mul(inner);
                    OutputTensor {
                        name: o.name.clone(),
                        shape,
                        values: o.values.slice(start, len),
                    }
                })
                .collect();
            parts.push(part);
            offset = offset.saturating_add(rows);
        }
        Ok(parts)
    }

    /// A job's response, its outputs in shared memory where it asked.
    fn answer(
        &self,
        job: &Job,
        outputs: Vec<OutputTensor>,
        parameters: &Parameters,
    ) -> Result<EncodedResponse> {
        let response = prepare_response(self.response(job, outputs, parameters))?;
        if job.output_regions.is_empty() {
            return Ok(response);
        }
        response.into_regions(&job.output_regions)
    }

    fn response(
        &self,
        job: &Job,
        outputs: Vec<OutputTensor>,
        parameters: &Parameters,
    ) -> InferResponse {
        InferResponse {
            model_name: self.model_name.clone(),
            model_version: self.model_version.clone(),
            id: job.id.clone(),
            parameters: parameters.clone(),
            outputs,
        }
    }

    /// Answers every request of the batch with the same error.
    pub fn fail(&self, error: &Error) {
        let ended = Instant::now();
        self.end_trace(Some(error), ended);
        for job in &self.jobs {
            self.settle(job, Err(error.clone()), ended);
        }
    }

    /// The batch as one batch per request (its own span ends here, failed).
    pub fn singles(&self) -> Vec<Batch> {
        self.end_trace(
            Some(&"the batch failed; its requests are retried one by one"),
            Instant::now(),
        );
        self.jobs
            .iter()
            .map(|j| self.single(Arc::clone(j)))
            .collect()
    }
}
