//! The codec of ModelInfer and ModelStreamInfer: a request message is handed on as the
//! bytes tonic buffered (no protobuf decode into an intermediate copy; the native decoder
//! reads them in place), and a response is written straight into tonic's buffer by the
//! native encoder. The repository methods use it too, their messages passing through as
//! bytes.

#![deny(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::marker::PhantomData;

use bytes::{Buf, BufMut, Bytes};
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

use crate::encode::EncodedResponse;

/// tonic's buffers start at 8 KiB per call, and glibc's malloc consolidates its free lists
/// on every allocation that large: a call of a few hundred bytes paid for both, ~15% of
/// W1's front CPU. Buffers start small instead; a big message reserves what it needs.
const FIRST_BUFFER: usize = 512;
/// Encoded responses of a stream are sent on once this much is buffered (tonic's default).
const YIELD_THRESHOLD: usize = 32 << 10;

fn buffer_settings() -> BufferSettings {
    BufferSettings::new(FIRST_BUFFER, YIELD_THRESHOLD)
}

/// A response message that writes its own protobuf encoding.
pub(super) trait WireMessage: Send + 'static {
    fn encoded_len(&self) -> usize;
    fn write_to(&self, out: &mut impl BufMut);
}

impl WireMessage for EncodedResponse {
    fn encoded_len(&self) -> usize {
        EncodedResponse::encoded_len(self)
    }

    fn write_to(&self, out: &mut impl BufMut) {
        EncodedResponse::write_to(self, out);
    }
}

/// A response message already serialized (the repository handler's).
impl WireMessage for Bytes {
    fn encoded_len(&self) -> usize {
        self.len()
    }

    fn write_to(&self, out: &mut impl BufMut) {
        out.put_slice(self);
    }
}

/// Raw request bytes in, `M` out.
pub(super) struct RawCodec<M>(PhantomData<M>);

impl<M> Default for RawCodec<M> {
    fn default() -> Self {
        RawCodec(PhantomData)
    }
}

impl<M: WireMessage> Codec for RawCodec<M> {
    type Encode = M;
    type Decode = Bytes;
    type Encoder = RawEncoder<M>;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> RawEncoder<M> {
        RawEncoder(PhantomData)
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

pub(super) struct RawEncoder<M>(PhantomData<M>);

impl<M: WireMessage> Encoder for RawEncoder<M> {
    type Item = M;
    type Error = Status;

    fn encode(&mut self, item: M, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(item.encoded_len());
        item.write_to(dst);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        buffer_settings()
    }
}

pub(super) struct RawDecoder;

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        // The buffer holds exactly one message; taking it splits tonic's buffer, no copy.
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }

    fn buffer_settings(&self) -> BufferSettings {
        buffer_settings()
    }
}
