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
use crate::outcome::Outcome;
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
    pub transport_errors: u64,
    pub first_error: Option<String>,
    /// Requests that found every HTTP connection busy and waited for one (open loop).
    pub waited: u64,
    pub elapsed: Duration,
    /// The generator's CPU time over the measured window, as a share of one core.
    pub cpu_share: f64,
}

impl Stats {
    fn new(mode: &'static str, level: f64) -> Self {
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
            transport_errors: 0,
            first_error: None,
            waited: 0,
            elapsed: Duration::ZERO,
            cpu_share: 0.0,
        }
    }

    fn record(&mut self, (outcome, waited): (Outcome, bool), latency: Duration) {
        self.waited += u64::from(waited);
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
        self.ok + self.status_errors + self.stream_errors + self.bad_answers + self.transport_errors
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
    async fn call(&self, slot: usize) -> (Outcome, bool) {
        match self {
            Protocol::Unary(unary) => (unary.call(slot).await, false),
            Protocol::Stream(streams) => (streams.call(slot).await, false),
            Protocol::Http(pool) => pool.call().await,
        }
    }
}

/// What every level shares.
pub struct Plan {
    pub protocol: Protocol,
    pub warmup: Duration,
    pub duration: Duration,
    pub requests: Option<u64>,
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

    fn finish(stats: &Rc<RefCell<Stats>>, started: Instant, cpu_before: Duration) -> Stats {
        let stats = Rc::try_unwrap(Rc::clone(stats)).map_or_else(
            |shared| {
                let mut copy = Stats::new(shared.borrow().mode, shared.borrow().level);
                std::mem::swap(&mut copy, &mut shared.borrow_mut());
                copy
            },
            RefCell::into_inner,
        );
        let elapsed = started.elapsed();
        let cpu = cpu_time().saturating_sub(cpu_before);
        Stats {
            elapsed,
            cpu_share: cpu.as_secs_f64() / elapsed.as_secs_f64().max(1e-9),
            ..stats
        }
    }

    /// `concurrency` callers, each sending its next request as soon as the last is answered.
    pub async fn closed_loop(self: &Rc<Self>, concurrency: usize) -> Stats {
        let stats = Rc::new(RefCell::new(Stats::new("closed", concurrency as f64)));
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
                        stats.borrow_mut().record(outcome, sent.elapsed());
                    }
                }
            });
        }
        tasks.await;
        let (started, cpu) = measured_start
            .borrow()
            .unwrap_or((window.measure_from, cpu_time()));
        Self::finish(&stats, started, cpu)
    }

    /// Requests sent at `rate` per second whatever the answers; each latency runs from the
    /// moment its request was due.
    pub async fn open_loop(self: &Rc<Self>, rate: f64) -> Stats {
        let stats = Rc::new(RefCell::new(Stats::new("open", rate)));
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
                            stats.borrow_mut().record(outcome, due.elapsed());
                        }
                    });
                }
                measured.unwrap_or((window.measure_from, cpu_time()))
            })
            .await;
        tasks.await;
        Self::finish(&stats, started, cpu)
    }
}
