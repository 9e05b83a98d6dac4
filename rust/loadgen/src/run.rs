//! Load levels: closed loop (N requests always in flight) and open loop (requests sent on a
//! fixed schedule, latency counted from the scheduled time so a slow server cannot hide its
//! queue: no coordinated omission). One thread runs everything, so the figures include the
//! generator's own CPU use, reported next to them.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::task::LocalSet;

use crate::http1::Pool;
use crate::outcome::{Answer, Outcome};
use crate::stream::Streams;
use crate::unary::Unary;

/// What one level measured.
pub struct Stats {
    pub mode: &'static str,
    pub level: f64,
    /// Latencies of successful calls, in microseconds.
    pub latency: Histogram<u64>,
    /// Measured requests sent, answered or not: what `--requests` limits.
    pub sent: u64,
    pub ok: u64,
    /// Answers by status: over gRPC the non-OK ones; over HTTP all, 2xx included.
    pub statuses: BTreeMap<u32, u64>,
    /// Answers whose status is an error.
    pub status_errors: u64,
    /// Streamed answers that carry an error message (--stream).
    pub stream_errors: u64,
    pub bad_answers: u64,
    /// Answers whose values are not their model version's (--expect-version).
    pub wrong_answers: u64,
    pub transport_errors: u64,
    pub first_error: Option<String>,
    /// Requests that found every HTTP connection busy and waited for one (open loop).
    pub waited: u64,
    /// When the measured window began: its first request was sent (or due).
    pub started: Instant,
    pub elapsed: Duration,
    /// The generator's CPU time over the measured window, as a share of one core.
    pub cpu_share: f64,
    /// The model versions the answers named, and how many OK answers each gave (when
    /// versions are tracked: --expect-version or --timeline over gRPC).
    pub versions: Option<Versions>,
    /// Every measured request, in the order they completed (--timeline).
    pub timeline: Option<Vec<Row>>,
}

/// The model versions answers named, in the order first seen, and their OK answers.
#[derive(Debug, Default)]
pub struct Versions {
    pub names: Vec<String>,
    pub ok: Vec<u64>,
}

impl Versions {
    /// The index of `name`, added if new (an answer names one of a few versions).
    fn index(&mut self, name: String) -> usize {
        if let Some(i) = self.names.iter().position(|n| *n == name) {
            return i;
        }
        self.names.push(name);
        self.ok.push(0);
        self.names.len() - 1
    }
}

/// How a request ended, as the timeline tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Ok,
    Status(u32),
    Http(u16),
    StreamError,
    BadAnswer,
    WrongAnswer,
    Transport,
}

impl Ended {
    fn of(outcome: &Outcome) -> Self {
        match outcome {
            Outcome::Ok => Ended::Ok,
            Outcome::Status(code) => Ended::Status(*code),
            Outcome::Http(code) => Ended::Http(*code),
            Outcome::StreamError(_) => Ended::StreamError,
            Outcome::BadAnswer(_) => Ended::BadAnswer,
            Outcome::WrongAnswer(_) => Ended::WrongAnswer,
            Outcome::Transport(_) => Ended::Transport,
        }
    }

    fn is_ok(self) -> bool {
        match self {
            Ended::Ok => true,
            Ended::Http(code) => (200..300).contains(&code),
            _ => false,
        }
    }
}

/// One measured request (--timeline).
#[derive(Debug, Clone, Copy)]
pub struct Row {
    /// When it was sent (in the open loop, when it was due).
    pub sent: Instant,
    pub latency: Duration,
    pub ended: Ended,
    /// The model version its answer named (if versions are tracked and it had an answer):
    /// an index into the level's `versions`.
    pub version: Option<u32>,
}

/// What a level records beyond the counts.
#[derive(Debug, Clone, Copy, Default)]
pub struct Track {
    pub versions: bool,
    pub timeline: bool,
}

impl Stats {
    pub fn new(mode: &'static str, level: f64, track: Track) -> Self {
        Stats {
            mode,
            level,
            latency: Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid bounds"),
            sent: 0,
            ok: 0,
            statuses: BTreeMap::new(),
            status_errors: 0,
            stream_errors: 0,
            bad_answers: 0,
            wrong_answers: 0,
            transport_errors: 0,
            first_error: None,
            waited: 0,
            started: Instant::now(),
            elapsed: Duration::ZERO,
            cpu_share: 0.0,
            versions: track.versions.then(Versions::default),
            timeline: track.timeline.then(Vec::new),
        }
    }

    /// A measured request sent (or due) at `sent`, just completed.
    pub fn record(&mut self, (answer, waited): (Answer, bool), sent: Instant) {
        let latency = sent.elapsed();
        self.waited += u64::from(waited);
        let Answer { outcome, version } = answer;
        let ended = Ended::of(&outcome);
        let version = self
            .versions
            .as_mut()
            .zip(version)
            .map(|(versions, version)| {
                let i = versions.index(version);
                versions.ok[i] += u64::from(ended.is_ok());
                i as u32
            });
        if let Some(timeline) = &mut self.timeline {
            timeline.push(Row {
                sent,
                latency,
                ended,
                version,
            });
        }
        match outcome {
            Outcome::Ok => self.record_ok(latency),
            Outcome::Status(code) => {
                *self.statuses.entry(code).or_default() += 1;
                self.status_errors += 1;
            }
            Outcome::Http(code) => {
                *self.statuses.entry(code.into()).or_default() += 1;
                if (200..300).contains(&code) {
                    self.record_ok(latency);
                } else {
                    self.status_errors += 1;
                }
            }
            Outcome::StreamError(e) => {
                self.stream_errors += 1;
                self.first_error.get_or_insert(e);
            }
            Outcome::BadAnswer(e) => {
                self.bad_answers += 1;
                self.first_error.get_or_insert(e);
            }
            Outcome::WrongAnswer(e) => {
                self.wrong_answers += 1;
                self.first_error.get_or_insert(e);
            }
            Outcome::Transport(e) => {
                self.transport_errors += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }

    fn record_ok(&mut self, latency: Duration) {
        self.ok += 1;
        let _ = self.latency.record(latency.as_micros().max(1) as u64);
    }

    pub fn completed(&self) -> u64 {
        self.ok
            + self.status_errors
            + self.stream_errors
            + self.bad_answers
            + self.wrong_answers
            + self.transport_errors
    }

    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// How requests go out.
pub enum Protocol {
    Unary(Unary),
    Stream(Streams),
    Http(Pool),
}

impl Protocol {
    /// One request (over gRPC, on connection or stream `slot`); also whether it waited for
    /// an HTTP connection to come free.
    async fn call(&self, slot: usize) -> (Answer, bool) {
        match self {
            Protocol::Unary(unary) => (unary.call(slot).await, false),
            Protocol::Stream(streams) => (streams.call(slot).await, false),
            Protocol::Http(pool) => {
                let (outcome, waited) = pool.call().await;
                (outcome.into(), waited)
            }
        }
    }
}

/// What every level shares.
pub struct Plan {
    pub protocol: Protocol,
    pub warmup: Duration,
    pub duration: Duration,
    pub requests: Option<u64>,
    pub track: Track,
}

/// CPU time of this (single-threaded) process so far.
fn cpu_time() -> Duration {
    std::fs::read_to_string("/proc/self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .map_or(Duration::ZERO, Duration::from_nanos)
}

struct Window {
    measure_from: Instant,
    end: Instant,
}

impl Plan {
    fn window(&self) -> Window {
        let measure_from = Instant::now() + self.warmup;
        Window {
            measure_from,
            end: measure_from + self.duration,
        }
    }

    fn done(&self, stats: &Stats, now: Instant, window: &Window) -> bool {
        now >= window.end || self.requests.is_some_and(|n| stats.sent >= n)
    }

    fn finish(&self, stats: &Rc<RefCell<Stats>>, started: Instant, cpu_before: Duration) -> Stats {
        let stats = Rc::try_unwrap(Rc::clone(stats)).map_or_else(
            |shared| {
                let mut copy = Stats::new(shared.borrow().mode, shared.borrow().level, self.track);
                std::mem::swap(&mut copy, &mut shared.borrow_mut());
                copy
            },
            RefCell::into_inner,
        );
        let elapsed = started.elapsed();
        let cpu = cpu_time().saturating_sub(cpu_before);
        Stats {
            started,
            elapsed,
            cpu_share: cpu.as_secs_f64() / elapsed.as_secs_f64().max(1e-9),
            ..stats
        }
    }

    /// `concurrency` callers, each sending its next request as soon as the last is answered.
    pub async fn closed_loop(self: &Rc<Self>, concurrency: usize) -> Stats {
        let stats = Rc::new(RefCell::new(Stats::new(
            "closed",
            concurrency as f64,
            self.track,
        )));
        let window = Rc::new(self.window());
        let measured_start: Rc<RefCell<Option<(Instant, Duration)>>> = Rc::new(RefCell::new(None));
        let tasks = LocalSet::new();
        for i in 0..concurrency {
            let (plan, stats, window, measured_start) = (
                Rc::clone(self),
                Rc::clone(&stats),
                Rc::clone(&window),
                Rc::clone(&measured_start),
            );
            tasks.spawn_local(async move {
                loop {
                    let sent = Instant::now();
                    if plan.done(&stats.borrow(), sent, &window) {
                        break;
                    }
                    let measured = sent >= window.measure_from;
                    stats.borrow_mut().sent += u64::from(measured);
                    let outcome = plan.protocol.call(i).await;
                    if measured {
                        measured_start
                            .borrow_mut()
                            .get_or_insert_with(|| (window.measure_from, cpu_time()));
                        stats.borrow_mut().record(outcome, sent);
                    }
                }
            });
        }
        tasks.await;
        let (started, cpu) = measured_start
            .borrow()
            .unwrap_or((window.measure_from, cpu_time()));
        self.finish(&stats, started, cpu)
    }

    /// Requests sent at `rate` per second whatever the answers; each latency runs from the
    /// moment its request was due.
    pub async fn open_loop(self: &Rc<Self>, rate: f64) -> Stats {
        let stats = Rc::new(RefCell::new(Stats::new("open", rate, self.track)));
        let window = self.window();
        let interval = Duration::from_secs_f64(1.0 / rate);
        let tasks = LocalSet::new();
        let plan = Rc::clone(self);
        let shared = Rc::clone(&stats);
        let (started, cpu) = tasks
            .run_until(async move {
                let first = Instant::now();
                let mut measured: Option<(Instant, Duration)> = None;
                for i in 0u32.. {
                    let due = first + interval * i;
                    if plan.done(&shared.borrow(), due, &window) {
                        break;
                    }
                    tokio::time::sleep_until(due.into()).await;
                    if due >= window.measure_from {
                        measured.get_or_insert_with(|| (due, cpu_time()));
                        shared.borrow_mut().sent += 1;
                    }
                    let (plan, stats) = (Rc::clone(&plan), Rc::clone(&shared));
                    tokio::task::spawn_local(async move {
                        let outcome = plan.protocol.call(i as usize).await;
                        if due >= window.measure_from {
                            stats.borrow_mut().record(outcome, due);
                        }
                    });
                }
                measured.unwrap_or((window.measure_from, cpu_time()))
            })
            .await;
        tasks.await;
        self.finish(&stats, started, cpu)
    }
}
