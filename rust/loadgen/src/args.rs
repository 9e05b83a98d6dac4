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
  --expect-version VERSION=FILE
                            repeatable; gRPC only (unary or --stream). FILE holds the
                            values of the first output that model version VERSION
                            answers the --body request with: decimal numbers, one per
                            line (or separated by spaces or commas), in the order of the
                            output's raw contents. Every answer must then name one of
                            the VERSIONs given in its model_version, and its first
                            output (FP64; FP32, widened; or an integer type: from
                            raw_output_contents, or its typed contents when there are
                            none) must hold as many values, each FILE's within
                            --expect-rtol. Any other answer is a wrong answer, an error
                            (`wrong_answers` in the JSON, WRONG in the timeline). An
                            empty VERSION stands for answers that name no version
  --expect-rtol X           --expect-version's tolerance, relative to the larger of the
                            two values' magnitudes (default 1e-9; NaN matches only NaN).
                            An FP32 answer holds each value rounded to a float32: expect
                            those roundings, or allow 1e-7
  --json FILE               also write the results as JSON; with --expect-version, or
                            --timeline over gRPC, each level's OK answers are also
                            counted by the model_version they name (`ok_by_version`)
  --timeline FILE           also write every measured request as a line of CSV, after the
                            header line
                              t_seconds_since_start,latency_seconds,status,model_version
                            when it was sent (in the open loop, when it was due), in
                            seconds since the first level's measured window began; its
                            latency in seconds; its status: OK, a gRPC status's name
                            (e.g. UNAVAILABLE), WRONG (a wrong answer), BAD_ANSWER,
                            STREAM_ERROR, TRANSPORT, or HTTP_<code> (--http, not 2xx);
                            and the model_version its answer named (empty if none). A
                            level's lines are in the order its requests were sent

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
    /// Each model version's expected first output, as (version, file).
    pub expect_versions: Vec<(String, String)>,
    pub expect_rtol: Option<f64>,
    pub json: Option<String>,
    /// Where every measured request goes, as a line of CSV.
    pub timeline: Option<String>,
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

/// `--expect-version VERSION=FILE`, split at its first `=`: a version not given before.
fn version_file(options: &Options, value: &str) -> Result<(String, String), String> {
    let Some((version, file)) = value.split_once('=') else {
        return Err(format!("--expect-version: '{value}' is not VERSION=FILE"));
    };
    if file.is_empty() {
        return Err(format!("--expect-version: '{value}' names no FILE"));
    }
    if options.expect_versions.iter().any(|(v, _)| v == version) {
        return Err(format!("--expect-version: version '{version}' given twice"));
    }
    Ok((version.into(), file.into()))
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
        expect_versions: Vec::new(),
        expect_rtol: None,
        json: None,
        timeline: None,
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
            "--expect-version" => options
                .expect_versions
                .push(version_file(&options, &value)?),
            "--expect-rtol" => match value.parse::<f64>() {
                Ok(rtol) if rtol >= 0.0 && rtol.is_finite() => options.expect_rtol = Some(rtol),
                _ => return Err(format!("--expect-rtol: '{value}' is not a tolerance >= 0")),
            },
            "--json" => options.json = Some(value),
            "--timeline" => options.timeline = Some(value),
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
        Some(_) if !options.expect_versions.is_empty() => {
            return Err("--expect-version is gRPC's: HTTP answers' bodies are not checked".into());
        }
        Some(_) if options.stream => {
            return Err("--stream is gRPC's: not supported with --http".into());
        }
        None if options.content_type.is_some() => {
            return Err("--content-type needs --http".into());
        }
        _ => {}
    }
    if options.expect_rtol.is_some() && options.expect_versions.is_empty() {
        return Err("--expect-rtol needs --expect-version".into());
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

    #[test]
    fn expected_versions_are_repeatable() {
        let options = parsed(&[
            "--body",
            "b.pb",
            "--expect-version",
            "1=one.txt",
            "--expect-version",
            "2=dir/a=b.txt",
            "--expect-rtol",
            "1e-6",
            "--timeline",
            "t.csv",
        ])
        .unwrap();
        assert_eq!(
            options.expect_versions,
            [
                ("1".to_string(), "one.txt".to_string()),
                ("2".to_string(), "dir/a=b.txt".to_string())
            ]
        );
        assert_eq!(options.expect_rtol, Some(1e-6));
        assert_eq!(options.timeline.as_deref(), Some("t.csv"));
        let unnamed = parsed(&["--body", "b.pb", "--expect-version", "=none.txt"]).unwrap();
        assert_eq!(
            unnamed.expect_versions,
            [(String::new(), "none.txt".into())]
        );
        let streamed = parsed(&["--body", "b.pb", "--stream", "--expect-version", "1=a"]);
        assert!(streamed.is_ok());
    }

    #[test]
    fn expected_versions_are_refused_when_malformed_or_over_http() {
        let refused = |args: &[&str]| parsed(args).unwrap_err();
        assert!(refused(&["--body", "b", "--expect-version", "1"]).contains("VERSION=FILE"));
        assert!(refused(&["--body", "b", "--expect-version", "1="]).contains("no FILE"));
        let twice = [
            "--body",
            "b",
            "--expect-version",
            "1=a",
            "--expect-version",
            "1=b",
        ];
        assert!(refused(&twice).contains("given twice"));
        let over_http = [
            "--body",
            "b",
            "--http",
            "/invocations",
            "--expect-version",
            "1=a",
        ];
        assert!(refused(&over_http).contains("gRPC's"));
        assert_eq!(
            refused(&["--body", "b", "--expect-rtol", "1e-6"]),
            "--expect-rtol needs --expect-version"
        );
        let negative = [
            "--body",
            "b",
            "--expect-version",
            "1=a",
            "--expect-rtol",
            "-1",
        ];
        assert!(refused(&negative).contains("not a tolerance"));
        // A timeline is kept over HTTP too.
        assert!(parsed(&["--body", "b", "--http", "/x", "--timeline", "t.csv"]).is_ok());
    }
}
