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

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use arrow_array::{Array, ArrayRef};

use crate::encode::{prepare_response, EncodedResponse, InferResponse, OutputTensor};
use crate::error::{Error, Result};
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
    key: String,
    deadline: Option<Instant>,
    enqueued: Mutex<Option<Instant>>,
    state: Mutex<JobState>,
    done: Condvar,
    /// An async waiter to wake when the job settles.
    waker: Mutex<Option<Waker>>,
    /// Called once when the job settles (answered, failed or abandoned).
    on_settled: Mutex<Option<Notify>>,
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
        let key = batch_key(
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
        }
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

fn batch_key(
    form: &str,
    parameters: &Parameters,
    requested_outputs: &[String],
    tensors: &[Tensor],
    batchable: bool,
) -> String {
    static UNIQUE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut key = String::from(form);
    if !batchable {
        let n = UNIQUE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let _ = write!(key, "|alone {n}");
    }
    for t in tensors {
        let _ = write!(
            key,
            "|{}:{}:{}:{:?}",
            t.name,
            t.values.data_type(),
            shape_text(t.shape.get(1..).unwrap_or_default()),
            t.parameters
        );
    }
    let _ = write!(key, "|{parameters:?}|{requested_outputs:?}");
    key
}

struct Queue {
    jobs: VecDeque<Arc<Job>>,
    closed: bool,
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
                        .wait_timeout(state, deadline - now)
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

    fn rows_like(queue: &Queue, key: &str) -> usize {
        queue
            .jobs
            .iter()
            .filter(|j| j.key == key)
            .map(|j| j.rows.unwrap_or(0))
            .sum()
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
                let close_at = opened + self.config.max_delay;
                let now = Instant::now();
                if now < close_at
                    && Self::rows_like(&queue, &first.key) < self.config.max_batch_rows
                {
                    queue = self
                        .arrivals
                        .wait_timeout(queue, close_at - now)
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
        let mut jobs = Vec::new();
        let mut rest = VecDeque::with_capacity(queue.jobs.len());
        for job in queue.jobs.drain(..) {
            let job_rows = job.rows.unwrap_or(0);
            let fits = jobs.is_empty() || rows + job_rows <= self.config.max_batch_rows;
            if job.key == first.key && fits && (jobs.is_empty() || job.rows.is_some()) {
                rows += job_rows;
                jobs.push(job);
            } else {
                rest.push_back(job);
            }
        }
        queue.jobs = rest;
        let started = Instant::now();
        for job in &jobs {
            let mut state = lock(&job.state);
            if matches!(*state, JobState::Queued) {
                *state = JobState::Running;
            }
        }
        Batch {
            jobs,
            started,
            model_name: self.model_name.clone(),
            model_version: self.model_version.clone(),
        }
    }
}

/// Requests the runner predicts together.
#[derive(Debug)]
pub struct Batch {
    jobs: Vec<Arc<Job>>,
    started: Instant,
    model_name: String,
    model_version: String,
}

impl Batch {
    /// A batch of one job outside any batcher, for building a model input from a single
    /// request; it carries no model name, so it is not for answering.
    pub fn of(job: Arc<Job>) -> Batch {
        Batch {
            jobs: vec![job],
            started: Instant::now(),
            model_name: String::new(),
            model_version: String::new(),
        }
    }

    /// A batch of exactly this job (used to retry a failed batch request by request).
    fn single(&self, job: Arc<Job>) -> Batch {
        Batch {
            jobs: vec![job],
            started: self.started,
            model_name: self.model_name.clone(),
            model_version: self.model_version.clone(),
        }
    }

    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    pub fn first(&self) -> &Job {
        &self.jobs[0]
    }

    /// Rows of each request, in batch order.
    pub fn rows(&self) -> Vec<usize> {
        self.jobs.iter().map(|j| j.rows.unwrap_or(0)).collect()
    }

    /// Seconds each request waited in the queue.
    pub fn queue_waits(&self) -> Vec<f64> {
        self.jobs
            .iter()
            .map(|j| j.queue_wait(self.started))
            .collect()
    }

    /// The batch's tensors: each request's tensors concatenated along the first dimension.
    pub fn inputs(&self) -> Result<Vec<Tensor>> {
        let first = self.first();
        if self.jobs.len() == 1 {
            return Ok(first.tensors.clone());
        }
        let total: usize = self.rows().iter().sum();
        (0..first.tensors.len())
            .map(|i| {
                let parts: Vec<&dyn Array> = self
                    .jobs
                    .iter()
                    .map(|j| j.tensors[i].values.as_ref())
                    .collect();
                let values = arrow_select::concat::concat(&parts).map_err(|e| {
                    Error::Internal(format!(
                        "batching input '{}' failed: {e}",
                        first.tensors[i].name
                    ))
                })?;
                let mut tensor = first.tensors[i].clone();
                tensor.shape[0] = total;
                tensor.values = values;
                Ok(tensor)
            })
            .collect()
    }

    /// When every input is a column of one and the same integer or float type, all of them in one
    /// flat array, column after column (each column's rows in batch order): a
    /// (columns x rows) block built with one copy, which numpy and pandas take as is.
    pub fn column_block(&self) -> Result<Option<ArrayRef>> {
        let first = self.first();
        let Some(data_type) = first.tensors.first().map(|t| t.values.data_type()) else {
            return Ok(None);
        };
        let uniform = first.tensors.iter().all(|t| {
            t.shape.len() == 1 && t.values.data_type() == data_type && t.values.null_count() == 0
        });
        if !uniform || !(data_type.is_integer() || data_type.is_floating()) {
            return Ok(None);
        }
        let parts: Vec<&dyn Array> = (0..first.tensors.len())
            .flat_map(|i| self.jobs.iter().map(move |j| j.tensors[i].values.as_ref()))
            .collect();
        arrow_select::concat::concat(&parts)
            .map(Some)
            .map_err(|e| Error::Internal(format!("building the batch's column block failed: {e}")))
    }

    /// Splits the model's outputs by request and answers each one. With several requests,
    /// every output must have exactly the batch's rows; otherwise all of them get INTERNAL.
    /// `parameters` go into every response (e.g. the kind of object the model returned).
    pub fn complete(&self, outputs: Vec<OutputTensor>, parameters: &Parameters) {
        if self.jobs.len() == 1 {
            let job = &self.jobs[0];
            job.finish(prepare_response(self.response(job, outputs, parameters)));
            return;
        }
        let rows = self.rows();
        let total: usize = rows.iter().sum();
        if let Some(bad) = outputs
            .iter()
            .find(|o| o.shape.first().and_then(|&d| usize::try_from(d).ok()) != Some(total))
        {
            self.fail(&Error::Internal(format!(
                "model '{}' returned output '{}' of shape {} for a batch of {total} rows from {} \
                 requests; its rows cannot be told apart, so no request gets them",
                self.model_name,
                bad.name,
                shape_text(&bad.shape),
                self.jobs.len()
            )));
            return;
        }
        let mut offset = 0;
        for (job, &n) in self.jobs.iter().zip(&rows) {
            let part = outputs
                .iter()
                .map(|o| {
                    let inner = o.values.len().checked_div(total).unwrap_or(0);
                    let mut shape = o.shape.clone();
                    shape[0] = n as i64;
                    OutputTensor {
                        name: o.name.clone(),
                        shape,
                        values: o.values.slice(offset * inner, n * inner),
                    }
                })
                .collect();
            job.finish(prepare_response(self.response(job, part, parameters)));
            offset += n;
        }
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
        for job in &self.jobs {
            job.finish(Err(error.clone()));
        }
    }

    /// The batch as one batch per request.
    pub fn singles(&self) -> Vec<Batch> {
        self.jobs
            .iter()
            .map(|j| self.single(Arc::clone(j)))
            .collect()
    }
}
