//! HTTP/1.1 by hand, for the REST endpoints: one pre-built POST sent over keep-alive
//! connections, one request at a time on each (no pipelining). Of each answer only the status
//! and the framing are read (Content-Length, chunked, or up to the connection's close); the
//! body is skipped.

use std::cell::RefCell;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::client::Outcome;

/// An answer's head (status line and headers) longer than this is refused.
const MAX_HEAD: usize = 64 * 1024;
/// Free room kept in a connection's read buffer: an answer this small arrives in one read.
const READ_ROOM: usize = 16 * 1024;

/// The whole request, built once: `POST path` with the body as is.
pub fn request(target: &str, path: &str, content_type: &str, body: &[u8]) -> Bytes {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {target}\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    let mut request = BytesMut::with_capacity(head.len() + body.len());
    request.extend_from_slice(head.as_bytes());
    request.extend_from_slice(body);
    request.freeze()
}

/// Connections shared by every request of a run: an idle one is reused (the most recently
/// used first), a new one opened when none is idle, and at most `size` in use at once.
pub struct Pool {
    target: String,
    request: Bytes,
    idle: RefCell<Vec<Connection>>,
    slots: Semaphore,
}

impl Pool {
    /// At most `size` connections, `ready` of them opened up front (at least one, so an
    /// unreachable target fails at once); the first requests that find none idle open more.
    pub async fn open(
        target: &str,
        request: Bytes,
        size: usize,
        ready: usize,
    ) -> Result<Self, String> {
        let ready = ready.clamp(1, size);
        let mut idle = Vec::with_capacity(ready);
        for _ in 0..ready {
            idle.push(Connection::open(target).await?);
        }
        Ok(Pool {
            target: target.to_owned(),
            request,
            idle: RefCell::new(idle),
            slots: Semaphore::new(size),
        })
    }

    /// One request; also whether it had to wait for a connection to come free.
    pub async fn call(&self) -> (Outcome, bool) {
        let (_slot, waited) = match self.slots.try_acquire() {
            Ok(slot) => (slot, false),
            Err(_) => (self.slots.acquire().await.expect("never closed"), true),
        };
        (self.send().await, waited)
    }

    async fn send(&self) -> Outcome {
        let idle = self.idle.borrow_mut().pop();
        let mut connection = match idle {
            Some(connection) => connection,
            None => match Connection::open(&self.target).await {
                Ok(connection) => connection,
                Err(e) => return Outcome::Transport(e),
            },
        };
        let mut answer = connection.exchange(&self.request).await;
        if let Err(Failure::Stale(_)) = answer {
            // The server had closed this idle connection before reading the request: once
            // more on a new one, as any HTTP client does.
            connection = match Connection::open(&self.target).await {
                Ok(connection) => connection,
                Err(e) => return Outcome::Transport(e),
            };
            answer = connection.exchange(&self.request).await;
        }
        match answer {
            Ok(answer) => {
                if answer.reusable {
                    self.idle.borrow_mut().push(connection);
                }
                Outcome::Http(answer.status)
            }
            Err(Failure::Stale(e) | Failure::Broken(e)) => Outcome::Transport(e),
        }
    }
}

/// Why an exchange failed.
#[derive(Debug)]
enum Failure {
    /// A connection that had already served answers failed before any byte of this answer
    /// came: the server most likely closed it while idle, and never saw the request.
    Stale(String),
    Broken(String),
}

#[derive(Debug, PartialEq, Eq)]
struct Answer {
    status: u16,
    /// The connection may carry the next request.
    reusable: bool,
}

/// How an answer's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(usize),
    Chunked,
    UntilClose,
}

#[derive(Debug, PartialEq, Eq)]
struct Head {
    status: u16,
    /// Bytes of the status line and headers, the blank line included.
    size: usize,
    framing: Framing,
    close: bool,
}

struct Connection {
    stream: TcpStream,
    buffer: BytesMut,
    /// It has carried a whole exchange already.
    reused: bool,
}

impl Connection {
    async fn open(target: &str) -> Result<Self, String> {
        let stream = TcpStream::connect(target)
            .await
            .map_err(|e| format!("connect {target}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        Ok(Connection {
            stream,
            buffer: BytesMut::with_capacity(READ_ROOM),
            reused: false,
        })
    }

    /// Reads more of the answer; `Ok(false)` at the end of the stream.
    async fn fill(&mut self) -> Result<bool, String> {
        if self.buffer.capacity() - self.buffer.len() < READ_ROOM / 4 {
            self.buffer.reserve(READ_ROOM);
        }
        match self.stream.read_buf(&mut self.buffer).await {
            Ok(n) => Ok(n > 0),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Reads more of an answer that must go on.
    async fn more(&mut self) -> Result<(), Failure> {
        match self.fill().await {
            Ok(true) => Ok(()),
            Ok(false) => Err(Failure::Broken("connection closed inside an answer".into())),
            Err(e) => Err(Failure::Broken(e)),
        }
    }

    async fn exchange(&mut self, request: &[u8]) -> Result<Answer, Failure> {
        // Anything left over is not part of the answer to come: refuse it below.
        let may_be_stale = self.reused && self.buffer.is_empty();
        let stale = |e: String| {
            if may_be_stale {
                Failure::Stale(e)
            } else {
                Failure::Broken(e)
            }
        };
        if let Err(e) = self.stream.write_all(request).await {
            return Err(stale(e.to_string()));
        }
        let head = loop {
            match parse_head(&self.buffer).map_err(Failure::Broken)? {
                // An interim answer (100 Continue...): the real one follows.
                Some(head) if (100..200).contains(&head.status) && head.status != 101 => {
                    self.buffer.advance(head.size);
                }
                Some(head) => break head,
                None => match self.fill().await {
                    Ok(true) => {}
                    Ok(false) if self.buffer.is_empty() => {
                        return Err(stale("connection closed before an answer".into()));
                    }
                    Ok(false) => {
                        return Err(Failure::Broken("connection closed inside an answer".into()))
                    }
                    Err(e) if self.buffer.is_empty() => return Err(stale(e)),
                    Err(e) => return Err(Failure::Broken(e)),
                },
            }
        };
        if head.status == 101 {
            return Err(Failure::Broken("the server switched protocols".into()));
        }
        self.buffer.advance(head.size);
        match head.framing {
            Framing::Empty => {}
            Framing::Length(length) => self.skip(length).await?,
            Framing::Chunked => self.skip_chunks().await?,
            Framing::UntilClose => {
                self.buffer.clear();
                while self.fill().await.map_err(Failure::Broken)? {
                    self.buffer.clear();
                }
            }
        }
        self.reused = true;
        Ok(Answer {
            status: head.status,
            reusable: !head.close && head.framing != Framing::UntilClose,
        })
    }

    async fn skip(&mut self, mut length: usize) -> Result<(), Failure> {
        loop {
            let here = length.min(self.buffer.len());
            self.buffer.advance(here);
            length -= here;
            if length == 0 {
                return Ok(());
            }
            self.more().await?;
        }
    }

    /// Skips a chunked body: chunks of `size-in-hex[;extensions] CRLF data CRLF`, a last
    /// chunk of size 0, then trailer lines up to a blank one.
    async fn skip_chunks(&mut self) -> Result<(), Failure> {
        loop {
            let line = loop {
                if let Some(line) = find(&self.buffer, b"\r\n") {
                    break line;
                }
                if self.buffer.len() > MAX_HEAD {
                    return Err(Failure::Broken("chunk size line too long".into()));
                }
                self.more().await?;
            };
            let size = chunk_size(&self.buffer[..line]).map_err(Failure::Broken)?;
            self.buffer.advance(line + 2);
            if size == 0 {
                break;
            }
            self.skip(size).await?;
            while self.buffer.len() < 2 {
                self.more().await?;
            }
            if self.buffer[..2] != *b"\r\n" {
                return Err(Failure::Broken("no CRLF after a chunk's data".into()));
            }
            self.buffer.advance(2);
        }
        loop {
            match find(&self.buffer, b"\r\n") {
                Some(0) => {
                    self.buffer.advance(2);
                    return Ok(());
                }
                Some(line) => self.buffer.advance(line + 2),
                None if self.buffer.len() > MAX_HEAD => {
                    return Err(Failure::Broken("trailer line too long".into()));
                }
                None => self.more().await?,
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn chunk_size(line: &[u8]) -> Result<usize, String> {
    let digits = line.split(|&b| b == b';').next().unwrap_or_default();
    std::str::from_utf8(digits)
        .ok()
        .map(|d| d.trim_matches([' ', '\t']))
        .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_hexdigit()))
        .and_then(|d| usize::from_str_radix(d, 16).ok())
        .ok_or_else(|| format!("bad chunk size '{}'", String::from_utf8_lossy(line)))
}

/// The comma-separated tokens of a header value.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii)
}

/// The status line and headers at the start of `buffer`, once all have come.
fn parse_head(buffer: &[u8]) -> Result<Option<Head>, String> {
    let Some(end) = find(buffer, b"\r\n\r\n") else {
        return if buffer.len() > MAX_HEAD {
            Err("answer head too long".into())
        } else {
            Ok(None)
        };
    };
    let mut lines = buffer[..end]
        .split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line));
    let status_line = lines.next().unwrap_or_default();
    let bad_status = || format!("bad status line '{}'", String::from_utf8_lossy(status_line));
    let (version, rest) = status_line.split_at_checked(8).ok_or_else(bad_status)?;
    let http10 = match version {
        b"HTTP/1.1" => false,
        b"HTTP/1.0" => true,
        _ => return Err(bad_status()),
    };
    let digits = match rest {
        [b' ', a, b, c] | [b' ', a, b, c, b' ', ..] => [*a, *b, *c],
        _ => return Err(bad_status()),
    };
    if !digits.iter().all(u8::is_ascii_digit) {
        return Err(bad_status());
    }
    let status = digits
        .iter()
        .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    let (mut length, mut chunked, mut encoded) = (None, false, false);
    let (mut close, mut keep_alive) = (false, false);
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(format!(
                "bad header line '{}'",
                String::from_utf8_lossy(line)
            ));
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = std::str::from_utf8(value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<usize>().ok())
                .ok_or_else(|| {
                    format!("bad Content-Length '{}'", String::from_utf8_lossy(value))
                })?;
            if length.is_some_and(|l| l != n) {
                return Err("conflicting Content-Length headers".into());
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            encoded = true;
            chunked = tokens(value)
                .last()
                .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in tokens(value) {
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }
    let framing = if status < 200 || status == 204 || status == 304 {
        Framing::Empty
    } else if encoded {
        // Transfer-Encoding wins over Content-Length; not ending in chunked, the body runs
        // to the connection's close.
        if chunked {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }
    } else {
        length.map_or(Framing::UntilClose, Framing::Length)
    };
    Ok(Some(Head {
        status,
        size: end + 4,
        framing,
        close: close || (http10 && !keep_alive),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Head {
        parse_head(text.as_bytes()).unwrap().unwrap()
    }

    #[test]
    fn heads_are_parsed() {
        let h = head(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\ncontent-length: 12\r\n\r\n{}",
        );
        assert_eq!(
            (h.status, h.framing, h.close),
            (200, Framing::Length(12), false)
        );
        assert_eq!(h.size, 71);
        let h =
            head("HTTP/1.1 429\r\nTransfer-Encoding: gzip, Chunked\r\nContent-Length: 5\r\n\r\n");
        assert_eq!((h.status, h.framing), (429, Framing::Chunked));
        let h = head("HTTP/1.1 500 Oops\r\nConnection: Close\r\n\r\n");
        assert_eq!((h.framing, h.close), (Framing::UntilClose, true));
        let h = head("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert!(h.close);
        let h = head("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n");
        assert!(!h.close);
        assert_eq!(
            head("HTTP/1.1 204 No Content\r\n\r\n").framing,
            Framing::Empty
        );
        assert_eq!(
            head("HTTP/1.1 100 Continue\r\n\r\n").framing,
            Framing::Empty
        );
    }

    #[test]
    fn incomplete_and_bad_heads() {
        assert_eq!(
            parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"),
            Ok(None)
        );
        assert!(parse_head(b"HTTP/2 200\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 20x OK\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 2000 OK\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n").is_err());
        assert!(
            parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
                .is_err()
        );
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n").is_err());
        assert!(parse_head(&vec![b'a'; MAX_HEAD + 1]).is_err());
    }

    #[test]
    fn chunk_sizes() {
        assert_eq!(chunk_size(b"1aF"), Ok(0x1af));
        assert_eq!(chunk_size(b"10;name=value"), Ok(16));
        assert_eq!(chunk_size(b"0"), Ok(0));
        assert!(chunk_size(b"").is_err());
        assert!(chunk_size(b"+5").is_err());
        assert!(chunk_size(b"zz").is_err());
    }

    /// A server that answers each request on one connection with the next canned answer,
    /// split into small writes, then closes; the client's view of each exchange.
    fn exchanges(answers: &'static [&'static str]) -> Vec<Result<Answer, String>> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let target = listener.local_addr().unwrap().to_string();
            let server = tokio::spawn(async move {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut request = vec![0; 1024];
                for answer in answers {
                    let _ = socket.read(&mut request).await.unwrap();
                    for piece in answer.as_bytes().chunks(7) {
                        socket.write_all(piece).await.unwrap();
                        socket.flush().await.unwrap();
                        tokio::task::yield_now().await;
                    }
                }
            });
            let mut connection = Connection::open(&target).await.unwrap();
            let request = request(&target, "/x", "text/plain", b"hello");
            let mut results = Vec::new();
            for _ in 0..=answers.len() {
                results.push(connection.exchange(&request).await.map_err(|e| match e {
                    Failure::Stale(e) => format!("stale: {e}"),
                    Failure::Broken(e) => format!("broken: {e}"),
                }));
            }
            server.await.unwrap();
            results
        })
    }

    #[test]
    fn answers_of_every_framing_are_read_to_their_end() {
        let results = exchanges(&[
            "HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world",
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 429 Too Many\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n\
             1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nTrailer: yes\r\n\r\n",
            "HTTP/1.1 400 Bad\r\nContent-Length: 3\r\n\r\nbad",
            "HTTP/1.1 503 Busy\r\nContent-Type: text/plain\r\n\r\nuntil the end",
        ]);
        let ok = |status, reusable| Ok(Answer { status, reusable });
        assert_eq!(
            results[..5],
            [
                ok(200, true),
                ok(429, true),
                ok(201, true),
                ok(400, true),
                ok(503, false)
            ]
        );
        // After the server closed, the reused connection's failure is a stale one.
        assert!(
            results[5].as_ref().unwrap_err().starts_with("stale: "),
            "{:?}",
            results[5]
        );
    }

    #[test]
    fn a_connection_closed_mid_answer_is_broken() {
        let results = exchanges(&["HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshort"]);
        assert_eq!(
            results[0],
            Err("broken: connection closed inside an answer".into())
        );
    }
}
