//! Command-line options, parsed by hand to keep the build lean.

use std::time::Duration;

pub const USAGE: &str = "\
arrowsmith-bench: drive a V2 gRPC server's ModelInfer (or ModelStreamInfer, --stream), or an
HTTP endpoint (--http), and report throughput and latency.

usage: arrowsmith-bench --body FILE [options]

  --target HOST:PORT        server address (default 127.0.0.1:8081); gRPC also takes
                            unix:PATH, a Unix socket
  --body FILE               a serialized ModelInferRequest, sent as every request; with
                            --http, the HTTP request body, sent as is
  --concurrency LIST        closed loop: requests in flight, e.g. 1,8,32 (default 8)
  --rate LIST               open loop instead: requests per second, e.g. 1000,2000
  --connections N           gRPC: HTTP/2 connections shared by the requests (default: one
                            per request in flight, at most 8), with --stream one stream
                            each. --http: the open loop's connections at most, opened as
                            needed (default 64; a request due when all are busy waits for
                            one, its latency still counted from when it was due); the
                            closed loop ignores it and uses one connection per request in
                            flight
  --duration SECONDS        measured time per level (default 10)
  --warmup SECONDS          unmeasured time before each level (default 2)
  --requests N              stop a level after N measured requests (default: no limit)
  --expect-rows N           check every answer's outputs have N rows (default: any;
                            gRPC only)
  --json FILE               also write the results as JSON

  --stream                  send every request as a message of gRPC's bidirectional
                            ModelStreamInfer instead of a unary call: one long-lived stream
                            per connection, the requests in flight spread over them, e.g.
                            --concurrency 32 --connections 1 keeps 32 messages in flight
                            on one stream. A stream answers in order, so each answer is
                            the oldest waiting message's, and its latency runs from that
                            message's send. An answer with an error_message counts as an
                            in-band error (`stream_errors` in the JSON); a stream the
                            server ends fails its waiting messages and every later one
                            with its status (streams are not reopened)

  --http PATH               send every request as `POST PATH` over HTTP/1.1 keep-alive
                            connections instead of gRPC, e.g. /invocations or
                            /v2/models/wine/infer; one request at a time per connection.
                            A 2xx answer is OK, any other status an error; answers are
                            counted by HTTP status, their bodies are not checked
  --content-type TYPE       the --http requests' Content-Type (default application/json)
";

#[derive(Debug, Clone)]
pub struct Options {
    pub target: String,
    pub body: String,
    pub concurrency: Vec<usize>,
    pub rates: Vec<f64>,
    pub connections: Option<usize>,
    pub duration: Duration,
    pub warmup: Duration,
    pub requests: Option<u64>,
    pub expect_rows: Option<i64>,
    pub json: Option<String>,
    /// gRPC ModelStreamInfer instead of unary ModelInfer: one stream per connection.
    pub stream: bool,
    /// HTTP/1.1 instead of gRPC: the path every request is POSTed to.
    pub http: Option<String>,
    pub content_type: Option<String>,
}

fn list<T: std::str::FromStr>(flag: &str, value: &str) -> Result<Vec<T>, String> {
    value
        .split(',')
        .map(|v| {
            v.trim()
                .parse()
                .map_err(|_| format!("{flag}: '{v}' is not a number"))
        })
        .collect()
}

fn seconds(flag: &str, value: &str) -> Result<Duration, String> {
    value
        .parse::<f64>()
        .ok()
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .ok_or_else(|| format!("{flag}: '{value}' is not a number of seconds"))
}

pub fn parse(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut options = Options {
        target: "127.0.0.1:8081".into(),
        body: String::new(),
        concurrency: vec![8],
        rates: Vec::new(),
        connections: None,
        duration: Duration::from_secs(10),
        warmup: Duration::from_secs(2),
        requests: None,
        expect_rows: None,
        json: None,
        stream: false,
        http: None,
        content_type: None,
    };
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--help" | "-h" => return Err(String::new()),
            "--stream" => {
                options.stream = true;
                continue;
            }
            _ => {}
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--target" => options.target = value,
            "--body" => options.body = value,
            "--concurrency" => options.concurrency = list(&flag, &value)?,
            "--rate" => options.rates = list(&flag, &value)?,
            "--connections" => options.connections = Some(list(&flag, &value)?[0]),
            "--duration" => options.duration = seconds(&flag, &value)?,
            "--warmup" => options.warmup = seconds(&flag, &value)?,
            "--requests" => options.requests = Some(list(&flag, &value)?[0]),
            "--expect-rows" => options.expect_rows = Some(list(&flag, &value)?[0]),
            "--json" => options.json = Some(value),
            "--http" => options.http = Some(value),
            "--content-type" => options.content_type = Some(value),
            other => return Err(format!("unknown option {other}")),
        }
    }
    if options.body.is_empty() {
        return Err("--body is required".into());
    }
    if options.concurrency.contains(&0) || options.rates.iter().any(|r| *r <= 0.0) {
        return Err("concurrency and rates must be positive".into());
    }
    if options.connections == Some(0) {
        return Err("--connections must be positive".into());
    }
    match &options.http {
        Some(path) if !path.starts_with('/') || path.chars().any(char::is_whitespace) => {
            return Err(format!(
                "--http: '{path}' is not a path such as /invocations"
            ));
        }
        Some(_) if options.expect_rows.is_some() => {
            return Err("--expect-rows is not supported over HTTP".into());
        }
        Some(_) if options.stream => {
            return Err("--stream is gRPC's: not supported with --http".into());
        }
        None if options.content_type.is_some() => {
            return Err("--content-type needs --http".into());
        }
        _ => {}
    }
    if options
        .content_type
        .as_deref()
        .is_some_and(|t| t.is_empty() || t.chars().any(char::is_control))
    {
        return Err("--content-type: not a valid header value".into());
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(args: &[&str]) -> Result<Options, String> {
        parse(args.iter().map(ToString::to_string))
    }

    #[test]
    fn stream_is_a_flag_without_a_value() {
        let options = parsed(&["--stream", "--body", "b.pb", "--connections", "1"]).unwrap();
        assert!(options.stream);
        assert_eq!(options.connections, Some(1));
        assert!(!parsed(&["--body", "b.pb"]).unwrap().stream);
    }

    #[test]
    fn stream_is_refused_over_http() {
        let refused = parsed(&["--body", "b.json", "--http", "/invocations", "--stream"]);
        assert_eq!(
            refused.unwrap_err(),
            "--stream is gRPC's: not supported with --http"
        );
    }
}
