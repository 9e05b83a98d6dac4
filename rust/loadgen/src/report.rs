//! Results as a readable table, as JSON (written by hand: a few numbers need no serde), and
//! every request as a line of a CSV timeline.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::{self, BufWriter};

use crate::args::Options;
use crate::run::{Ended, Stats, Versions};

const PERCENTILES: [(&str, f64); 5] = [
    ("p50", 50.0),
    ("p90", 90.0),
    ("p95", 95.0),
    ("p99", 99.0),
    ("p99.9", 99.9),
];

fn ms(stats: &Stats, percentile: f64) -> f64 {
    stats.latency.value_at_percentile(percentile) as f64 / 1000.0
}

fn errors(stats: &Stats) -> u64 {
    stats.completed() - stats.ok
}

pub fn table(all: &[Stats]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<6} {:>8} {:>9} {:>7} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6}",
        "mode",
        "level",
        "ok",
        "errors",
        "req/s",
        "p50 ms",
        "p90 ms",
        "p95 ms",
        "p99 ms",
        "p99.9",
        "max ms",
        "cpu"
    );
    for s in all {
        let _ = write!(
            out,
            "{:<6} {:>8} {:>9} {:>7} {:>10.1}",
            s.mode,
            s.level,
            s.ok,
            errors(s),
            s.throughput()
        );
        for (_, p) in PERCENTILES {
            let _ = write!(out, " {:>8.3}", ms(s, p));
        }
        let _ = writeln!(
            out,
            " {:>8.3} {:>5.0}%",
            s.latency.max() as f64 / 1000.0,
            s.cpu_share * 100.0
        );
        if errors(s) > 0 {
            let in_band = if s.stream_errors > 0 {
                format!(", in-band {}", s.stream_errors)
            } else {
                String::new()
            };
            let wrong = if s.wrong_answers > 0 {
                format!(", wrong answers {}", s.wrong_answers)
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "       errors: statuses {:?}{in_band}, bad answers {}{wrong}, transport {}; first: {}",
                s.statuses,
                s.bad_answers,
                s.transport_errors,
                s.first_error.as_deref().unwrap_or("-")
            );
        }
        if let Some(versions) = s.versions.as_ref().filter(|v| !v.names.is_empty()) {
            let counts = version_counts(versions);
            let _ = writeln!(
                out,
                "       OK answers by model_version: {}",
                counts.join(", ")
            );
        }
        if s.waited > 0 {
            let _ = writeln!(
                out,
                "       {} requests waited for a free connection (--connections)",
                s.waited
            );
        }
    }
    out
}

/// `"version": count` for each version named by OK answers.
fn version_counts(versions: &Versions) -> Vec<String> {
    versions
        .names
        .iter()
        .zip(&versions.ok)
        .map(|(name, ok)| format!("{}: {ok}", quoted(name)))
        .collect()
}

fn quoted(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

pub fn json(options: &Options, all: &[Stats]) -> String {
    let levels: Vec<String> = all
        .iter()
        .map(|s| {
            let percentiles: Vec<String> =
                PERCENTILES.iter().map(|(name, p)| format!("\"{name}_ms\": {:.4}", ms(s, *p))).collect();
            let statuses: Vec<String> = s.statuses.iter().map(|(code, n)| format!("\"{code}\": {n}")).collect();
            // Only streams have in-band errors: the other modes' reports stay as they were.
            let stream_errors =
                if options.stream { format!("\"stream_errors\": {}, ", s.stream_errors) } else { String::new() };
            // Likewise wrong answers, only with expectations, and versions where tracked.
            let wrong_answers = if options.expect_versions.is_empty() {
                String::new()
            } else {
                format!("\"wrong_answers\": {}, ", s.wrong_answers)
            };
            let ok_by_version = s.versions.as_ref().map_or_else(String::new, |versions| {
                let counts = version_counts(versions);
                format!("\"ok_by_version\": {{{}}}, ", counts.join(", "))
            });
            format!(
                "{{\"mode\": \"{}\", \"level\": {}, \"ok\": {}, \"errors\": {}, \"statuses\": {{{}}}, {stream_errors}\
                 \"bad_answers\": {}, {wrong_answers}\"transport_errors\": {}, {ok_by_version}\"waited_for_connection\": {}, \
                 \"throughput_rps\": {:.2}, {}, \"mean_ms\": {:.4}, \"max_ms\": {:.4}, \"elapsed_s\": {:.3}, \
                 \"generator_cpu_share\": {:.4}}}",
                s.mode,
                s.level,
                s.ok,
                errors(s),
                statuses.join(", "),
                s.bad_answers,
                s.transport_errors,
                s.waited,
                s.throughput(),
                percentiles.join(", "),
                s.latency.mean() / 1000.0,
                s.latency.max() as f64 / 1000.0,
                s.elapsed.as_secs_f64(),
                s.cpu_share
            )
        })
        .collect();
    let (protocol, path) = match &options.http {
        Some(path) => ("http", path.as_str()),
        None if options.stream => ("grpc", crate::stream::PATH),
        None => ("grpc", crate::unary::PATH),
    };
    format!(
        "{{\"target\": {}, \"protocol\": \"{protocol}\", \"path\": {}, \"body\": {}, \"levels\": [\n  {}\n]}}\n",
        quoted(&options.target),
        quoted(path),
        quoted(&options.body),
        levels.join(",\n  ")
    )
}

/// The timeline's header line.
pub const TIMELINE_HEADER: &str = "t_seconds_since_start,latency_seconds,status,model_version";

/// The gRPC status codes' names.
const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// A timeline line's status: OK, a gRPC status's name, WRONG, ...
fn status(ended: Ended) -> Cow<'static, str> {
    match ended {
        Ended::Ok => "OK".into(),
        Ended::Status(code) => CODES
            .get(code as usize)
            .map_or_else(|| format!("CODE_{code}").into(), |&name| name.into()),
        Ended::Http(code) if (200..300).contains(&code) => "OK".into(),
        Ended::Http(code) => format!("HTTP_{code}").into(),
        Ended::StreamError => "STREAM_ERROR".into(),
        Ended::BadAnswer => "BAD_ANSWER".into(),
        Ended::WrongAnswer => "WRONG".into(),
        Ended::Transport => "TRANSPORT".into(),
    }
}

/// A CSV field: quoted (its quotes doubled) when it holds a comma, quote or line break.
fn csv_field(text: &str) -> Cow<'_, str> {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\"")).into()
    } else {
        text.into()
    }
}

/// Every measured request of every level as a line of CSV, after a header line: when it was
/// sent, in seconds since the first level's measured window began, its latency in seconds,
/// how it ended, and the model version its answer named. Each level's lines are in the
/// order its requests were sent.
pub fn timeline(out: &mut impl io::Write, all: &[Stats]) -> io::Result<()> {
    writeln!(out, "{TIMELINE_HEADER}")?;
    let Some(origin) = all.first().map(|s| s.started) else {
        return Ok(());
    };
    for s in all {
        let Some(rows) = &s.timeline else { continue };
        let names: Vec<Cow<'_, str>> = s
            .versions
            .iter()
            .flat_map(|v| &v.names)
            .map(|name| csv_field(name))
            .collect();
        let mut rows = rows.clone();
        rows.sort_by_key(|row| row.sent);
        for row in rows {
            let version = row
                .version
                .and_then(|i| names.get(i as usize))
                .map_or("", |name| name);
            writeln!(
                out,
                "{:.6},{:.6},{},{version}",
                row.sent.saturating_duration_since(origin).as_secs_f64(),
                row.latency.as_secs_f64(),
                status(row.ended)
            )?;
        }
    }
    Ok(())
}

/// Writes the timeline to `path`.
pub fn write_timeline(path: &str, all: &[Stats]) -> io::Result<()> {
    let mut out = BufWriter::with_capacity(1 << 16, std::fs::File::create(path)?);
    timeline(&mut out, all)?;
    out.into_inner()
        .map_err(io::IntoInnerError::into_error)?
        .sync_all()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::outcome::{Answer, Outcome};
    use crate::run::Track;

    fn answer(outcome: Outcome, version: Option<&str>) -> (Answer, bool) {
        let version = version.map(Into::into);
        (Answer { outcome, version }, false)
    }

    #[test]
    fn every_request_is_a_line_of_the_timeline_in_order_of_sending() {
        let track = Track {
            versions: true,
            timeline: true,
        };
        let mut stats = Stats::new("open", 100.0, track);
        let origin = Instant::now().checked_sub(Duration::from_secs(1)).unwrap();
        stats.started = origin;
        let at = |ms| origin + Duration::from_millis(ms);
        // Completed out of order; sent at 0.5 s, 0.25 s, 0.75 s, 0.8 s, 0.9 s, 0.95 s.
        stats.record(answer(Outcome::Ok, Some("2")), at(500));
        stats.record(answer(Outcome::Ok, Some("1")), at(250));
        let wrong = Outcome::WrongAnswer("x".into());
        stats.record(answer(wrong, Some("a,\"b\"")), at(750));
        stats.record(answer(Outcome::Status(14), None), at(800));
        stats.record(answer(Outcome::Status(99), None), at(900));
        stats.record(answer(Outcome::Ok, Some("")), at(950));
        let counts = (stats.ok, stats.wrong_answers, stats.status_errors);
        assert_eq!(counts, (3, 1, 2));
        assert_eq!(stats.completed(), 6);
        // Answers that name no version count as ""; requests without an answer, nowhere.
        let versions = stats.versions.as_ref().unwrap();
        assert_eq!(versions.names, ["2", "1", "a,\"b\"", ""]);
        assert_eq!(versions.ok, [1, 1, 0, 1]);
        let mut out = Vec::new();
        timeline(&mut out, &[stats]).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<Vec<&str>> = text
            .lines()
            .map(|line| line.splitn(4, ',').collect())
            .collect();
        assert_eq!(lines[0], TIMELINE_HEADER.split(',').collect::<Vec<_>>());
        let fields = |i: usize| (lines[i][0], lines[i][2], lines[i][3]);
        assert_eq!(fields(1), ("0.250000", "OK", "1"));
        assert_eq!(fields(2), ("0.500000", "OK", "2"));
        assert_eq!(fields(3), ("0.750000", "WRONG", "\"a,\"\"b\"\"\""));
        assert_eq!(fields(4), ("0.800000", "UNAVAILABLE", ""));
        assert_eq!(fields(5), ("0.900000", "CODE_99", ""));
        assert_eq!(fields(6), ("0.950000", "OK", ""));
        assert_eq!(lines.len(), 7);
        // Latencies run from the send to now: at least the time since then.
        let latency: f64 = lines[1][1].parse().unwrap();
        assert!(latency >= 0.75);
    }

    #[test]
    fn without_a_timeline_only_the_header_is_written() {
        let mut stats = Stats::new("closed", 1.0, Track::default());
        stats.record(answer(Outcome::Http(503), None), Instant::now());
        assert!(stats.versions.is_none() && stats.timeline.is_none());
        let mut out = Vec::new();
        timeline(&mut out, &[stats]).unwrap();
        assert_eq!(out, format!("{TIMELINE_HEADER}\n").into_bytes());
        assert_eq!(status(Ended::Http(503)), "HTTP_503");
        assert_eq!(status(Ended::Http(204)), "OK");
    }
}
