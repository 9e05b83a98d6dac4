//! gRPC over HTTP/2, the little of it a client needs: the request head, each message behind
//! a 5-byte prefix (a compressed flag, then the length, big-endian), and the call's status
//! in `grpc-status`.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use h2::RecvStream;
use http::header::{CONTENT_TYPE, TE};
use http::{HeaderMap, HeaderValue, Method, Request, Uri};

const PREFIX: usize = 5;

/// The URI of `path` on `target`: HTTP/2 requests carry their scheme and authority, which
/// is `localhost` on a Unix socket (as grpc-go and Kubernetes send it).
pub fn uri(target: &str, path: &str) -> Result<Uri, String> {
    let authority = if target.starts_with("unix:") {
        "localhost"
    } else {
        target
    };
    format!("http://{authority}{path}")
        .parse()
        .map_err(|e| format!("--target {target}: {e}"))
}

/// A gRPC request's head: POST `uri` as `application/grpc`, trailers expected.
pub fn request(uri: &Uri) -> Request<()> {
    let mut request = Request::new(());
    *request.method_mut() = Method::POST;
    *request.uri_mut() = uri.clone();
    let headers = request.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(TE, HeaderValue::from_static("trailers"));
    request
}

/// The next chunk of an answer's body, its flow control window given back at once.
pub async fn data(body: &mut RecvStream) -> Option<Result<Bytes, h2::Error>> {
    let data = body.data().await?;
    if let Ok(data) = &data {
        let _ = body.flow_control().release_capacity(data.len());
    }
    Some(data)
}

/// A message framed for gRPC, once: every request sends a clone of these bytes.
pub fn frame(message: &[u8]) -> Bytes {
    let mut framed = BytesMut::with_capacity(message.len() + PREFIX);
    framed.put_u8(0);
    framed.put_u32(message.len() as u32);
    framed.put_slice(message);
    framed.freeze()
}

/// The `grpc-status` header (or trailer), if present and a number.
pub fn status(headers: &HeaderMap) -> Option<u32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// Splits the data of a response body, as it comes, into whole messages.
#[derive(Default)]
pub struct Messages {
    buffer: BytesMut,
}

impl Messages {
    pub fn push(&mut self, data: &[u8]) {
        self.buffer.extend_from_slice(data);
    }

    /// The next whole message, without its prefix; `None` until all of it has come.
    pub fn next(&mut self) -> Result<Option<Bytes>, String> {
        let Some(&[compressed, a, b, c, d]) = self.buffer.get(..PREFIX) else {
            return Ok(None);
        };
        if compressed != 0 {
            // No grpc-accept-encoding is sent, so no server may compress.
            return Err("a compressed answer, though none was accepted".into());
        }
        let length = u32::from_be_bytes([a, b, c, d]) as usize;
        if self.buffer.len() - PREFIX < length {
            return Ok(None);
        }
        self.buffer.advance(PREFIX);
        Ok(Some(self.buffer.split_to(length).freeze()))
    }

    /// Bytes that are not (yet) a whole message.
    pub fn leftover(&self) -> usize {
        self.buffer.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_split_across_and_within_chunks_are_found() {
        let (first, second) = (frame(b"hello"), frame(b""));
        let third = frame(&[7; 300]);
        let all = [&first[..], &second[..], &third[..]].concat();
        let mut messages = Messages::default();
        let mut found = Vec::new();
        for chunk in all.chunks(3) {
            messages.push(chunk);
            while let Some(message) = messages.next().unwrap() {
                found.push(message);
            }
        }
        assert_eq!(found, [&b"hello"[..], b"", &[7; 300]]);
        assert_eq!(messages.leftover(), 0);
    }

    #[test]
    fn a_compressed_message_is_refused() {
        let mut messages = Messages::default();
        messages.push(&[1, 0, 0, 0, 1, 9]);
        assert!(messages.next().is_err());
    }

    #[test]
    fn statuses_are_read_from_headers() {
        let mut headers = HeaderMap::new();
        assert_eq!(status(&headers), None);
        headers.insert("grpc-status", "14".parse().unwrap());
        assert_eq!(status(&headers), Some(14));
        headers.insert("grpc-status", "x".parse().unwrap());
        assert_eq!(status(&headers), None);
    }
}
