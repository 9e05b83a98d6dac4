//! gRPC's message framing, the little of it the floor needs: each message goes behind a
//! 5-byte prefix (a compressed flag, then the length, big-endian).

use bytes::{BufMut, Bytes, BytesMut};

const PREFIX: usize = 5;

/// A message framed for gRPC, once: every answer sends a clone of these bytes.
pub fn frame(message: &[u8]) -> Bytes {
    let mut framed = BytesMut::with_capacity(message.len() + PREFIX);
    framed.put_u8(0);
    framed.put_u32(message.len() as u32);
    framed.put_slice(message);
    framed.freeze()
}

/// Counts the messages of a request body as its chunks come, keeping none of them: only
/// the prefix of the message under way, and how much of it is still to come.
#[derive(Debug, Default)]
pub struct MessageCounter {
    prefix: [u8; PREFIX],
    /// Bytes of the current prefix seen; `PREFIX` once it is whole and its payload is due.
    prefix_seen: usize,
    payload_left: usize,
}

impl MessageCounter {
    /// How many messages `chunk` completes.
    pub fn push(&mut self, mut chunk: &[u8]) -> usize {
        let mut completed = 0;
        loop {
            if self.prefix_seen < PREFIX {
                let take = (PREFIX - self.prefix_seen).min(chunk.len());
                self.prefix[self.prefix_seen..self.prefix_seen + take]
                    .copy_from_slice(&chunk[..take]);
                self.prefix_seen += take;
                chunk = &chunk[take..];
                if self.prefix_seen < PREFIX {
                    return completed;
                }
                let [_, a, b, c, d] = self.prefix;
                self.payload_left = u32::from_be_bytes([a, b, c, d]) as usize;
            }
            let take = self.payload_left.min(chunk.len());
            self.payload_left -= take;
            chunk = &chunk[take..];
            if self.payload_left > 0 {
                return completed;
            }
            completed += 1;
            self.prefix_seen = 0;
            if chunk.is_empty() {
                return completed;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_is_the_prefix_then_the_message() {
        assert_eq!(&frame(b"abc")[..], b"\0\0\0\0\x03abc");
        assert_eq!(&frame(b"")[..], b"\0\0\0\0\0");
    }

    #[test]
    fn messages_split_across_and_within_chunks_are_counted() {
        let all = [frame(b"hello"), frame(b""), frame(&[7; 300]), frame(b"x")].concat();
        for size in [1, 2, 3, 5, 6, 7, 64, all.len()] {
            let mut counter = MessageCounter::default();
            let counts: Vec<usize> = all.chunks(size).map(|c| counter.push(c)).collect();
            assert_eq!(counts.iter().sum::<usize>(), 4, "chunks of {size}");
        }
        // Each message is counted by the chunk that ends it.
        let mut counter = MessageCounter::default();
        assert_eq!(counter.push(&all[..4]), 0);
        assert_eq!(counter.push(&all[4..10]), 1);
        assert_eq!(counter.push(&all[10..15]), 1);
        assert_eq!(counter.push(&all[15..all.len() - 1]), 1);
        assert_eq!(counter.push(&all[all.len() - 1..]), 1);
        assert_eq!(counter.push(&[]), 0);
    }
}
