//! The access log: one line per request on standard output, as JSON or as `key=value`
//! text. Both fronts write through here. A line is formatted on the request's thread and
//! appended to a shared buffer; a writer thread takes the buffer within FLUSH_EVERY of its
//! first line (at once past FLUSH_AT bytes) and writes it in chunks of whole lines no
//! larger than a pipe writes atomically, so that the lines of several worker processes
//! sharing one stdout never interleave. A request never waits for a write and wakes the
//! writer at most once per flush; when the buffer is full (stdout blocked) lines are
//! dropped, and their count is written with the next flush.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
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

/// One request, as logged (what the client sent already cut to size by `observe`).
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

/// How long the first line of a flush waits for company.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Buffered bytes that make the writer flush at once.
const FLUSH_AT: usize = 64 * 1024;
/// Buffered bytes past which lines are dropped (stdout does not keep up).
const MAX_BUFFERED: usize = 8 * 1024 * 1024;
/// What one write(2) to a pipe may carry and still never interleave with other writers'.
const ATOMIC_WRITE: usize = 4096;

#[derive(Default)]
struct Buffered {
    lines: String,
    dropped: u64,
}

struct AccessLog {
    format: Format,
    buffered: Mutex<Buffered>,
    wake: Condvar,
    /// Held while writing, so that a flush from another thread keeps whole chunks.
    writing: Mutex<()>,
}

static LOG: OnceLock<AccessLog> = OnceLock::new();

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Turns the access log on for the rest of the process.
pub fn init(format: Format) -> Result<(), String> {
    LOG.set(AccessLog {
        format,
        buffered: Mutex::default(),
        wake: Condvar::new(),
        writing: Mutex::new(()),
    })
    .map_err(|_| "the access log is already set up in this process".to_owned())?;
    std::thread::Builder::new()
        .name("arrowsmith-access-log".to_owned())
        .spawn(write_lines)
        .map(drop)
        .map_err(|error| format!("cannot start the access log's writer: {error}"))
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
    let line = match log.format {
        Format::Json => json_line(entry),
        Format::Text => text_line(entry),
    };
    let mut buffered = lock(&log.buffered);
    let before = buffered.lines.len();
    if before.saturating_add(line.len()) > MAX_BUFFERED {
        buffered.dropped = buffered.dropped.saturating_add(1);
        return;
    }
    buffered.lines.push_str(&line);
    if before == 0 || (before < FLUSH_AT && buffered.lines.len() >= FLUSH_AT) {
        log.wake.notify_one();
    }
}

/// Writes what is buffered now, for the end of the process: waits at most `timeout` (a
/// stdout nobody reads must not hold the process), and says whether it was written.
pub fn flush(timeout: Duration) -> bool {
    let Some(log) = LOG.get() else {
        return true;
    };
    let (written, done) = std::sync::mpsc::channel();
    let flushing = std::thread::Builder::new()
        .name("arrowsmith-access-log-flush".to_owned())
        .spawn(move || {
            let taken = take(log, &mut lock(&log.buffered));
            write_out(log, &taken);
            let _ = written.send(());
        });
    flushing.is_ok() && done.recv_timeout(timeout).is_ok()
}

/// The buffered lines, preceded by the count of dropped ones if any.
fn take(log: &AccessLog, buffered: &mut Buffered) -> String {
    let mut taken = std::mem::take(&mut buffered.lines);
    let dropped = std::mem::take(&mut buffered.dropped);
    if dropped > 0 {
        taken.insert_str(0, &dropped_line(log.format, dropped));
    }
    taken
}

fn dropped_line(format: Format, dropped: u64) -> String {
    match format {
        Format::Json => format!("{{\"access_log_dropped\":{dropped}}}\n"),
        Format::Text => format!("access_log_dropped={dropped}\n"),
    }
}

/// The writer: waits for a first line, gives it FLUSH_EVERY for company (less when the
/// buffer fills), and writes what gathered.
fn write_lines() {
    let Some(log) = LOG.get() else {
        return;
    };
    loop {
        let mut buffered = lock(&log.buffered);
        while buffered.lines.is_empty() && buffered.dropped == 0 {
            buffered = log
                .wake
                .wait(buffered)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if buffered.lines.len() < FLUSH_AT {
            buffered = log
                .wake
                .wait_timeout(buffered, FLUSH_EVERY)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        let taken = take(log, &mut buffered);
        drop(buffered);
        write_out(log, &taken);
    }
}

/// Writes `lines` in `chunks`.
fn write_out(log: &AccessLog, lines: &str) {
    if lines.is_empty() {
        return;
    }
    let _writing = lock(&log.writing);
    let mut out = std::io::stdout().lock();
    for chunk in chunks(lines.as_bytes()) {
        // Nowhere to report a closed stdout: the lines are lost, serving goes on.
        let _ = out.write_all(chunk);
    }
    let _ = out.flush();
}

/// `lines` cut into chunks of whole lines of at most ATOMIC_WRITE bytes (a longer line
/// alone).
fn chunks(lines: &[u8]) -> Vec<&[u8]> {
    let mut chunks = Vec::new();
    let mut rest = lines;
    while !rest.is_empty() {
        let window = rest.get(..ATOMIC_WRITE.min(rest.len())).unwrap_or(rest);
        let end = if window.len() == rest.len() {
            rest.len()
        } else {
            window
                .iter()
                .rposition(|&b| b == b'\n')
                .or_else(|| rest.iter().position(|&b| b == b'\n'))
                .map_or(rest.len(), |newline| newline.saturating_add(1))
        };
        let (chunk, after) = rest.split_at(end);
        chunks.push(chunk);
        rest = after;
    }
    chunks
}

fn millis(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1e6).round() / 1e3
}

/// `text` as a JSON string, quoted and escaped, appended to `out`.
pub(crate) fn json_string(out: &mut String, text: &str) {
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
        ("request_id", Some(entry.request_id)),
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
    numbers(&mut out, entry, Format::Json);
    out.push_str("}\n");
    out
}

/// The rows and the times (in milliseconds), as the format writes a field; absent ones as
/// `null` or `-`.
fn numbers(out: &mut String, entry: &Entry<'_>, format: Format) {
    let ms = |duration: Option<Duration>| duration.map(|d| millis(d).to_string());
    for (key, value) in [
        ("rows", entry.rows.map(|rows| rows.to_string())),
        ("queue_ms", ms(entry.queue_wait)),
        ("predict_ms", ms(entry.predict)),
        ("total_ms", ms(Some(entry.total))),
    ] {
        let _ = match (format, value) {
            (Format::Json, value) => {
                write!(out, ",\"{key}\":{}", value.as_deref().unwrap_or("null"))
            }
            (Format::Text, value) => write!(out, " {key}={}", value.as_deref().unwrap_or("-")),
        };
    }
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
        ("request_id", entry.request_id),
        ("trace_id", entry.trace_id.unwrap_or("-")),
    ] {
        let _ = write!(out, " {key}=");
        text_value(&mut out, value);
    }
    numbers(&mut out, entry, Format::Text);
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
    fn chunks_are_whole_lines_that_a_pipe_writes_at_once() {
        let line = format!("{}\n", "x".repeat(999));
        let lines = line.repeat(10);
        let cut = chunks(lines.as_bytes());
        assert_eq!(cut.len(), 3);
        assert!(cut
            .iter()
            .all(|c| c.len() <= ATOMIC_WRITE && c.ends_with(b"\n")));
        assert_eq!(cut.concat(), lines.as_bytes());
        let long = format!("{}\nshort\n", "y".repeat(3 * ATOMIC_WRITE));
        let cut = chunks(long.as_bytes());
        assert_eq!(cut.len(), 2);
        assert_eq!(cut[1], b"short\n");
        assert_eq!(chunks(b"no newline at the end").len(), 1);
    }
}
