//! arrowsmith-bench: a V2 gRPC (unary or streaming) or HTTP/1.1 load generator that is never
//! the bottleneck: one thread, one request serialized and framed once and shared by every
//! call, h2's HTTP/2 client (no layer above it) and hyper's HTTP/1.1 client, latency in an
//! HDR histogram.

mod args;
mod coalesce;
mod connect;
mod grpc;
mod http1;
mod outcome;
mod report;
mod run;
mod stream;
mod unary;

use std::rc::Rc;

fn main() {
    let options = match args::parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) => {
            if !message.is_empty() {
                eprintln!("arrowsmith-bench: {message}\n");
            }
            eprint!("{}", args::USAGE);
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let local = tokio::task::LocalSet::new();
    match local.block_on(&runtime, bench(&options)) {
        Ok(all) => {
            print!("{}", report::table(&all));
            if let Some(path) = &options.json {
                if let Err(e) = std::fs::write(path, report::json(&options, &all)) {
                    eprintln!("arrowsmith-bench: writing {path}: {e}");
                    std::process::exit(1);
                }
            }
            if let Some(path) = &options.timeline {
                if let Err(e) = report::write_timeline(path, &all) {
                    eprintln!("arrowsmith-bench: writing {path}: {e}");
                    std::process::exit(1);
                }
            }
            let failed = all.iter().any(|s| s.ok == 0);
            std::process::exit(i32::from(failed));
        }
        Err(message) => {
            eprintln!("arrowsmith-bench: {message}");
            std::process::exit(1);
        }
    }
}

/// What every answer is checked against: its rows, and each model version's values.
fn checks(options: &args::Options) -> Result<outcome::Checks, String> {
    let mut versions = Vec::new();
    for (version, path) in &options.expect_versions {
        let text = std::fs::read_to_string(path).map_err(|e| format!("reading {path}: {e}"))?;
        let values = outcome::parse_values(&text).map_err(|e| format!("{path}: {e}"))?;
        versions.push(outcome::Expected {
            version: version.clone(),
            values,
        });
    }
    Ok(outcome::Checks {
        rows: options.expect_rows,
        versions,
        rtol: options.expect_rtol.unwrap_or(1e-9),
    })
}

async fn bench(options: &args::Options) -> Result<Vec<run::Stats>, String> {
    let message =
        std::fs::read(&options.body).map_err(|e| format!("reading {}: {e}", options.body))?;
    let checks = Rc::new(checks(options)?);
    let most_in_flight = options.concurrency.iter().copied().max().unwrap_or(1);
    let protocol = if let Some(path) = &options.http {
        // One request at a time per connection: the closed loop opens one per request in
        // flight up front; the open loop opens them as it needs them, up to --connections.
        let (connections, ready) = if options.rates.is_empty() {
            (most_in_flight, most_in_flight)
        } else {
            (options.connections.unwrap_or(64), 1)
        };
        let content_type = options
            .content_type
            .as_deref()
            .unwrap_or("application/json");
        let post = http1::Post::new(&options.target, path, content_type, message.into())?;
        let pool = http1::Pool::open(&options.target, post, connections, ready).await?;
        run::Protocol::Http(pool)
    } else {
        let connections = options.connections.unwrap_or(most_in_flight.min(8)).max(1);
        let body = grpc::frame(&message);
        if options.stream {
            let uri = grpc::uri(&options.target, stream::PATH)?;
            let clients = connect::http2_each(&options.target, connections).await?;
            let streams = stream::Streams::open(clients, &uri, body, &checks);
            run::Protocol::Stream(streams)
        } else {
            let uri = grpc::uri(&options.target, unary::PATH)?;
            let clients = connect::http2_each(&options.target, connections).await?;
            let unary = unary::Unary::new(clients, options.target.clone(), uri, body, checks);
            run::Protocol::Unary(unary)
        }
    };
    let plan = Rc::new(run::Plan {
        protocol,
        warmup: options.warmup,
        duration: options.duration,
        requests: options.requests,
        track: run::Track {
            versions: options.http.is_none()
                && (options.timeline.is_some() || !options.expect_versions.is_empty()),
            timeline: options.timeline.is_some(),
        },
    });
    let mut all = Vec::new();
    if options.rates.is_empty() {
        for &concurrency in &options.concurrency {
            all.push(plan.closed_loop(concurrency).await);
        }
    } else {
        for &rate in &options.rates {
            all.push(plan.open_loop(rate).await);
        }
    }
    Ok(all)
}
