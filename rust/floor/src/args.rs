//! Command-line options, parsed by hand to keep the build lean.

pub const USAGE: &str = "\
arrowsmith-floor: a V2 gRPC server that answers every ModelInfer with canned bytes, and
every message of a ModelStreamInfer stream with canned bytes too, parsing nothing.

usage: arrowsmith-floor --response FILE [options]

  --port N                  the loopback port to listen on (default 8081; 0 picks a free
                            one). `listening on PORT` is printed once it listens
  --response FILE           a serialized ModelInferResponse: every ModelInfer's answer
  --stream-response FILE    a serialized ModelStreamInferResponse: the answer to every
                            message of a ModelStreamInfer stream (without it, streams are
                            answered UNIMPLEMENTED)
";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub port: u16,
    pub response: String,
    pub stream_response: Option<String>,
}

pub fn parse(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut options = Options {
        port: 8081,
        response: String::new(),
        stream_response: None,
    };
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            return Err(String::new());
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--port" => {
                options.port = value
                    .parse()
                    .map_err(|_| format!("--port: '{value}' is not a port"))?;
            }
            "--response" => options.response = value,
            "--stream-response" => options.stream_response = Some(value),
            other => return Err(format!("unknown option {other}")),
        }
    }
    if options.response.is_empty() {
        return Err("--response is required".into());
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
    fn options_are_read() {
        let options = parsed(&[
            "--port",
            "0",
            "--response",
            "a.pb",
            "--stream-response",
            "b.pb",
        ]);
        assert_eq!(
            options.unwrap(),
            Options {
                port: 0,
                response: "a.pb".into(),
                stream_response: Some("b.pb".into()),
            }
        );
        assert_eq!(parsed(&["--response", "a.pb"]).unwrap().port, 8081);
    }

    #[test]
    fn bad_options_are_refused() {
        assert_eq!(parsed(&[]).unwrap_err(), "--response is required");
        assert!(parsed(&["--response", "a", "--port", "70000"])
            .unwrap_err()
            .contains("not a port"));
        assert_eq!(parsed(&["--port"]).unwrap_err(), "--port needs a value");
        assert!(parsed(&["--bogus", "1"]).unwrap_err().contains("unknown"));
        assert_eq!(parsed(&["--help"]).unwrap_err(), "");
    }
}
