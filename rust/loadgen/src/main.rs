//! arrowsmith-bench: a V2 gRPC (or HTTP/1.1) load generator that is never the bottleneck:
//! one thread, pre-serialized requests, HTTP/2 straight from `h2` (HTTP/1.1 by hand), latency
//! in an HDR histogram.

mod args;
mod client;
mod http1;
mod report;
mod run;

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
            let failed = all.iter().any(|s| s.ok == 0);
            std::process::exit(i32::from(failed));
        }
        Err(message) => {
            eprintln!("arrowsmith-bench: {message}");
            std::process::exit(1);
        }
    }
}

async fn bench(options: &args::Options) -> Result<Vec<run::Stats>, String> {
    let message =
        std::fs::read(&options.body).map_err(|e| format!("reading {}: {e}", options.body))?;
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
        let request = http1::request(&options.target, path, content_type, &message);
        let pool = http1::Pool::open(&options.target, request, connections, ready).await?;
        run::Protocol::Http(pool)
    } else {
        let connections = options.connections.unwrap_or(most_in_flight.min(8)).max(1);
        let mut clients = Vec::with_capacity(connections);
        for _ in 0..connections {
            clients.push(client::connect(&options.target).await?);
        }
        run::Protocol::Grpc(client::Grpc {
            clients,
            authority: options.target.clone(),
            body: client::frame(&message),
            expect_rows: options.expect_rows,
        })
    };
    let plan = Rc::new(run::Plan {
        protocol,
        warmup: options.warmup,
        duration: options.duration,
        requests: options.requests,
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
