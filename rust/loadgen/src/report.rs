//! Results as a readable table and as JSON (written by hand: a few numbers need no serde).

use std::fmt::Write as _;

use crate::args::Options;
use crate::run::Stats;

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
            let _ = writeln!(
                out,
                "       errors: statuses {:?}{in_band}, bad answers {}, transport {}; first: {}",
                s.statuses,
                s.bad_answers,
                s.transport_errors,
                s.first_error.as_deref().unwrap_or("-")
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
            format!(
                "{{\"mode\": \"{}\", \"level\": {}, \"ok\": {}, \"errors\": {}, \"statuses\": {{{}}}, {stream_errors}\
                 \"bad_answers\": {}, \"transport_errors\": {}, \"waited_for_connection\": {}, \
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
