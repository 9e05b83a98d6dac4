//! The access log: one line per request on standard output, as JSON or as `key=value`
//! text. Both fronts write through here. A line is formatted on the request's thread and
//! handed to a writer thread, which writes whatever has queued meanwhile at once, in chunks
//! of whole lines no larger than a pipe writes atomically, so that the lines of several
//! worker processes sharing one stdout never interleave. A request never waits for the
//! log: when the queue is full its line is dropped, and the count of dropped lines is
//! written as soon as there is room.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How lines look (`--access-log`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Text,
}

impl Format {
    pub fn parse(name: &str) -> Option<Format> {
        match name {
            "json" => Some(Format::Json),
            "text" => Some(Format::Text),
            _ => None,
        }
    }
}

/// One request, as logged.
#[derive(Debug, Clone, Default)]
pub struct Entry<'a> {
    /// When the request arrived.
    pub time: Option<SystemTime>,
    pub request_id: &'a str,
    /// 32 hex digits, when tracing is on.
    pub trace_id: Option<&'a str>,
    pub model: &'a str,
    pub version: &'a str,
    /// `grpc`, `rest` or `mlflow`.
    pub protocol: &'a str,
    /// The method (gRPC) or the HTTP method and path.
    pub call: &'a str,
    /// The gRPC status name, or the HTTP status code.
    pub status: &'a str,
    pub rows: Option<usize>,
    pub queue_wait: Option<Duration>,
    pub predict: Option<Duration>,
    pub total: Duration,
}

/// Lines waiting for the writer at most.
const QUEUE_LINES: usize = 65_536;
/// What one write(2) to a pipe may carry and still never interleave with other writers'.
const ATOMIC_WRITE: usize = 4096;
/// A client's request id is logged up to this many bytes.
const MAX_ID_BYTES: usize = 256;

struct AccessLog {
    format: Format,
    lines: SyncSender<String>,
    dropped: AtomicU64,
}

static LOG: OnceLock<AccessLog> = OnceLock::new();

/// Turns the access log on for the rest of the process.
pub fn init(format: Format) -> Result<(), String> {
    if LOG.get().is_some() {
        return Err("the access log is already set up in this process".to_owned());
    }
    let (lines, queued) = sync_channel(QUEUE_LINES);
    std::thread::Builder::new()
        .name("arrowsmith-access-log".to_owned())
        .spawn(move || write_lines(&queued))
        .map_err(|error| format!("cannot start the access log's writer: {error}"))?;
    LOG.set(AccessLog {
        format,
        lines,
        dropped: AtomicU64::new(0),
    })
    .map_err(|_| "the access log is already set up in this process".to_owned())
}

/// Whether lines are being written.
pub fn enabled() -> bool {
    LOG.get().is_some()
}

/// Logs `entry` (nothing when the log is off).
pub fn write(entry: &Entry<'_>) {
    let Some(log) = LOG.get() else {
        return;
    };
    let mut line = match log.format {
        Format::Json => json_line(entry),
        Format::Text => text_line(entry),
    };
    let dropped = log.dropped.swap(0, Ordering::Relaxed);
    if dropped > 0 {
        line.insert_str(0, &dropped_line(log.format, dropped));
    }
    match log.lines.try_send(line) {
        Ok(()) => {}
        Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
            log.dropped
                .fetch_add(dropped.saturating_add(1), Ordering::Relaxed);
        }
    }
}

fn dropped_line(format: Format, dropped: u64) -> String {
    match format {
        Format::Json => format!("{{\"access_log_dropped\":{dropped}}}\n"),
        Format::Text => format!("access_log_dropped={dropped}\n"),
    }
}

/// The writer: blocks for a line, then writes it with every line queued behind it.
fn write_lines(queued: &Receiver<String>) {
    let mut chunk = String::with_capacity(ATOMIC_WRITE);
    while let Ok(first) = queued.recv() {
        let mut next = Some(first);
        while let Some(line) = next.take() {
            if !chunk.is_empty() && chunk.len().saturating_add(line.len()) > ATOMIC_WRITE {
                flush(&mut chunk);
            }
            chunk.push_str(&line);
            next = queued.try_recv().ok();
        }
        flush(&mut chunk);
    }
}

fn flush(chunk: &mut String) {
    let mut out = std::io::stdout().lock();
    // Nowhere to report a closed stdout: the lines are lost, serving goes on.
    let _ = out.write_all(chunk.as_bytes()).and_then(|()| out.flush());
    chunk.clear();
}

fn millis(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1e6).round() / 1e3
}

/// `id` cut to MAX_ID_BYTES at a character boundary.
fn clipped(id: &str) -> &str {
    if id.len() <= MAX_ID_BYTES {
        return id;
    }
    let mut end = MAX_ID_BYTES;
    while !id.is_char_boundary(end) {
        end = end.saturating_sub(1);
    }
    id.get(..end).unwrap_or("")
}

fn json_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

pub(crate) fn json_line(entry: &Entry<'_>) -> String {
    let mut out = String::with_capacity(256);
    out.push_str("{\"time\":");
    json_string(
        &mut out,
        &rfc3339(entry.time.unwrap_or_else(SystemTime::now)),
    );
    for (key, value) in [
        ("request_id", Some(clipped(entry.request_id))),
        ("trace_id", entry.trace_id),
        ("model", Some(entry.model)),
        ("version", Some(entry.version)),
        ("protocol", Some(entry.protocol)),
        ("call", Some(entry.call)),
        ("status", Some(entry.status)),
    ] {
        let _ = write!(out, ",\"{key}\":");
        match value {
            Some(value) => json_string(&mut out, value),
            None => out.push_str("null"),
        }
    }
    out.push_str(",\"rows\":");
    match entry.rows {
        Some(rows) => {
            let _ = write!(out, "{rows}");
        }
        None => out.push_str("null"),
    }
    for (key, value) in [
        ("queue_ms", entry.queue_wait),
        ("predict_ms", entry.predict),
        ("total_ms", Some(entry.total)),
    ] {
        let _ = match value {
            Some(duration) => write!(out, ",\"{key}\":{}", millis(duration)),
            None => write!(out, ",\"{key}\":null"),
        };
    }
    out.push_str("}\n");
    out
}

/// A text value: bare when it is a plain word, else quoted with escapes ("" when empty).
fn text_value(out: &mut String, text: &str) {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\' && c != '=');
    if plain {
        out.push_str(text);
    } else {
        json_string(out, text);
    }
}

pub(crate) fn text_line(entry: &Entry<'_>) -> String {
    let mut out = String::with_capacity(200);
    out.push_str(&rfc3339(entry.time.unwrap_or_else(SystemTime::now)));
    for (key, value) in [
        ("protocol", entry.protocol),
        ("call", entry.call),
        ("status", entry.status),
        ("model", entry.model),
        ("version", entry.version),
        ("request_id", clipped(entry.request_id)),
        ("trace_id", entry.trace_id.unwrap_or("-")),
    ] {
        let _ = write!(out, " {key}=");
        text_value(&mut out, value);
    }
    match entry.rows {
        Some(rows) => {
            let _ = write!(out, " rows={rows}");
        }
        None => out.push_str(" rows=-"),
    }
    for (key, value) in [
        ("queue_ms", entry.queue_wait),
        ("predict_ms", entry.predict),
        ("total_ms", Some(entry.total)),
    ] {
        let _ = match value {
            Some(duration) => write!(out, " {key}={}", millis(duration)),
            None => write!(out, " {key}=-"),
        };
    }
    out.push('\n');
    out
}

/// `time` as RFC 3339 in UTC with milliseconds, e.g. 2026-12-01T04:13:30.123Z.
pub(crate) fn rfc3339(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since.as_secs();
    let days = i64::try_from(seconds / 86_400).unwrap_or(0);
    let of_day = seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60,
        since.subsec_millis()
    )
}

/// The proleptic Gregorian date of a count of days since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month as u32, day as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_rfc3339() {
        let time = UNIX_EPOCH + Duration::from_millis(1_795_925_610_123);
        assert_eq!(rfc3339(time), "2026-11-29T04:13:30.123Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }

    fn entry<'a>(id: &'a str, model: &'a str) -> Entry<'a> {
        Entry {
            time: Some(UNIX_EPOCH),
            request_id: id,
            trace_id: Some("0af7651916cd43dd8448eb211c80319c"),
            model,
            version: "1",
            protocol: "grpc",
            call: "ModelInfer",
            status: "OK",
            rows: Some(3),
            queue_wait: Some(Duration::from_micros(1500)),
            predict: None,
            total: Duration::from_millis(4),
        }
    }

    #[test]
    fn json_lines_escape_what_clients_send() {
        let line = json_line(&entry("a\"b\\c\n\u{1}", "wine"));
        assert_eq!(
            line,
            "{\"time\":\"1970-01-01T00:00:00.000Z\",\"request_id\":\"a\\\"b\\\\c\\n\\u0001\",\
             \"trace_id\":\"0af7651916cd43dd8448eb211c80319c\",\"model\":\"wine\",\
             \"version\":\"1\",\"protocol\":\"grpc\",\"call\":\"ModelInfer\",\"status\":\"OK\",\
             \"rows\":3,\"queue_ms\":1.5,\"predict_ms\":null,\"total_ms\":4}\n"
        );
    }

    #[test]
    fn text_lines_quote_values_that_are_not_plain_words() {
        let line = text_line(&entry("x y=z", ""));
        assert_eq!(
            line,
            "1970-01-01T00:00:00.000Z protocol=grpc call=ModelInfer status=OK model=\"\" \
             version=1 request_id=\"x y=z\" trace_id=0af7651916cd43dd8448eb211c80319c rows=3 \
             queue_ms=1.5 predict_ms=- total_ms=4\n"
        );
    }

    #[test]
    fn long_ids_are_clipped_at_a_character_boundary() {
        let id = "é".repeat(200);
        let clipped = clipped(&id);
        assert!(clipped.len() <= MAX_ID_BYTES);
        assert!(id.starts_with(clipped));
    }
}
