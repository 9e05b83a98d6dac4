//! HTTP/1.1 for the REST endpoints, over hyper's client: one POST, built once, sent over
//! keep-alive connections, one request at a time on each (no pipelining). Of each answer
//! only the status is kept; its body is read to its end, so the connection can go on.

use std::cell::RefCell;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderMap, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use tokio::sync::Semaphore;

use crate::connect;
use crate::outcome::Outcome;

/// The request every call sends: `POST path` with the body as is (hyper adds its
/// Content-Length).
pub struct Post {
    path: Uri,
    headers: HeaderMap,
    body: Bytes,
}

impl Post {
    pub fn new(target: &str, path: &str, content_type: &str, body: Bytes) -> Result<Self, String> {
        let path = path.parse().map_err(|e| format!("--http {path}: {e}"))?;
        let mut headers = HeaderMap::with_capacity(2);
        let value = |text: &str| HeaderValue::try_from(text).map_err(|e| format!("'{text}': {e}"));
        headers.insert(HOST, value(target)?);
        headers.insert(CONTENT_TYPE, value(content_type)?);
        Ok(Post {
            path,
            headers,
            body,
        })
    }

    fn request(&self) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(self.body.clone()));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.path.clone();
        *request.headers_mut() = self.headers.clone();
        request
    }
}

/// Connections shared by every request of a run: an idle one is reused (the most recently
/// used first), a new one opened when none is idle, and at most `size` in use at once.
pub struct Pool {
    target: String,
    post: Post,
    idle: RefCell<Vec<Connection>>,
    slots: Semaphore,
}

impl Pool {
    /// At most `size` connections, `ready` of them opened up front (at least one, so an
    /// unreachable target fails at once); the first requests that find none idle open more.
    pub async fn open(target: &str, post: Post, size: usize, ready: usize) -> Result<Self, String> {
        let ready = ready.clamp(1, size);
        let mut idle = Vec::with_capacity(ready);
        for _ in 0..ready {
            idle.push(Connection::open(target).await?);
        }
        Ok(Pool {
            target: target.to_owned(),
            post,
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
        let mut answer = connection.exchange(self.post.request()).await;
        if let Err(Failure::Stale(_)) = answer {
            // The server had closed this idle connection before reading the request: once
            // more on a new one, as any HTTP client does.
            connection = match Connection::open(&self.target).await {
                Ok(connection) => connection,
                Err(e) => return Outcome::Transport(e),
            };
            answer = connection.exchange(self.post.request()).await;
        }
        match answer {
            Ok(status) => {
                if !connection.sender.is_closed() {
                    self.idle.borrow_mut().push(connection);
                }
                Outcome::Http(status)
            }
            Err(Failure::Stale(e) | Failure::Broken(e)) => Outcome::Transport(e),
        }
    }
}

/// Why an exchange failed.
#[derive(Debug)]
enum Failure {
    /// A connection that had already served answers closed before this answer's head came:
    /// most likely the server closed it while idle, and never saw the request.
    Stale(String),
    Broken(String),
}

struct Connection {
    sender: SendRequest<Full<Bytes>>,
    /// It has carried a whole exchange already.
    reused: bool,
}

impl Connection {
    async fn open(target: &str) -> Result<Self, String> {
        Ok(Connection {
            sender: connect::http1(target).await?,
            reused: false,
        })
    }

    /// The answer's status, once its body has been read to the end.
    async fn exchange(&mut self, request: Request<Full<Bytes>>) -> Result<u16, Failure> {
        let reused = self.reused;
        let failed = |e: hyper::Error| {
            if reused && (e.is_closed() || e.is_canceled() || e.is_incomplete_message()) {
                Failure::Stale(e.to_string())
            } else {
                Failure::Broken(e.to_string())
            }
        };
        // Waits for the last answer's end to free the connection, or finds it closed.
        self.sender.ready().await.map_err(failed)?;
        let response = self.sender.send_request(request).await.map_err(failed)?;
        let status = response.status().as_u16();
        let mut body = response.into_body();
        while let Some(frame) = body.frame().await {
            frame.map_err(|e| Failure::Broken(e.to_string()))?;
        }
        self.reused = true;
        Ok(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A canned answer, and whether the server closes the connection after it.
    type Answer = (&'static str, bool);

    /// Reads one request (its body is "hello") from `socket`; false at the end of the
    /// connection.
    async fn read_request(socket: &mut TcpStream) -> bool {
        let mut request = Vec::new();
        while !request.ends_with(b"\r\n\r\nhello") {
            let mut piece = [0; 1024];
            match socket.read(&mut piece).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => request.extend_from_slice(&piece[..n]),
            }
        }
        assert!(request.starts_with(b"POST /x HTTP/1.1\r\n"));
        let head = String::from_utf8_lossy(&request).to_lowercase();
        assert!(head.contains("content-length: 5\r\n"), "{head}");
        assert!(head.contains("content-type: text/plain\r\n"), "{head}");
        true
    }

    /// A server that answers the requests, whatever connection they come on, with the next
    /// of `answers`, each split into small writes; the client's outcomes, one request at a
    /// time on a pool of one connection, and how many connections the server accepted.
    fn outcomes(answers: &'static [Answer]) -> (Vec<Outcome>, usize) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let target = listener.local_addr().unwrap().to_string();
            let (served, accepted) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
            let counts = (Arc::clone(&served), Arc::clone(&accepted));
            tokio::spawn(async move {
                loop {
                    let (mut socket, _) = listener.accept().await.unwrap();
                    counts.1.fetch_add(1, Ordering::SeqCst);
                    let served = Arc::clone(&counts.0);
                    tokio::spawn(async move {
                        while read_request(&mut socket).await {
                            let (answer, close) = answers[served.fetch_add(1, Ordering::SeqCst)];
                            for piece in answer.as_bytes().chunks(7) {
                                socket.write_all(piece).await.unwrap();
                                tokio::task::yield_now().await;
                            }
                            if close {
                                break;
                            }
                        }
                    });
                }
            });
            let post =
                Post::new(&target, "/x", "text/plain", Bytes::from_static(b"hello")).unwrap();
            let pool = Pool::open(&target, post, 1, 1).await.unwrap();
            let mut results = Vec::new();
            for _ in answers {
                results.push(pool.call().await.0);
            }
            assert_eq!(served.load(Ordering::SeqCst), answers.len());
            (results, accepted.load(Ordering::SeqCst))
        })
    }

    #[test]
    fn answers_of_every_framing_are_read_to_their_end() {
        let (results, connections) = outcomes(&[
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world",
                false,
            ),
            (
                "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 429 Too Many\r\nContent-Length: 0\r\n\r\n",
                false,
            ),
            (
                "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n\
                 1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nTrailer: yes\r\n\r\n",
                false,
            ),
            ("HTTP/1.1 400 Bad\r\nContent-Length: 3\r\n\r\nbad", false),
            (
                "HTTP/1.1 503 Busy\r\nContent-Type: text/plain\r\n\r\nuntil the end",
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
                true,
            ),
            ("HTTP/1.1 204 No Content\r\n\r\n", false),
        ]);
        let statuses = [200, 429, 201, 400, 503, 200, 204];
        assert_eq!(results, statuses.map(Outcome::Http));
        // A new connection after each answer that ended its own.
        assert_eq!(connections, 3);
    }

    #[test]
    fn a_connection_the_server_closed_while_idle_is_replaced() {
        // No `Connection: close`: the client learns of the close only by trying.
        const ANSWER: Answer = ("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", true);
        let (results, connections) = outcomes(&[ANSWER; 3]);
        assert_eq!(results, [200; 3].map(Outcome::Http));
        assert_eq!(connections, 3);
    }

    #[test]
    fn a_connection_closed_mid_answer_is_a_transport_error() {
        let (results, _) =
            outcomes(&[("HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshort", true)]);
        assert!(
            matches!(&results[..], [Outcome::Transport(_)]),
            "{results:?}"
        );
    }
}
