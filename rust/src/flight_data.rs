//! A Flight exchange's messages as record batches, read with Arrow's IPC reader, which
//! takes a message on trust: it slices a batch's body by the offsets and lengths its header
//! gives, unchecked, and assumes the buffers aligned and sized for their type; otherwise it
//! panics. So each message is checked first:
//!
//! - a schema may hold only the column types the data path takes (booleans, integers,
//!   floating-point numbers, text and binary, and fixed-size lists of them), so that no
//!   other type's reader runs;
//! - a record batch's buffers lie within its body, each at an offset that is a multiple of
//!   8, as the IPC format lays them out, and the body starts 8-byte aligned in memory
//!   (copied once when it does not);
//! - dictionary batches are refused (no column taken is dictionary-encoded).
//!
//! What the checks cannot see (a buffer whose length does not fit its type, say) may still
//! make the reader panic: that panic is contained to the exchange, which ends refused.
#![deny(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};

use arrow_array::RecordBatch;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::error::FlightError;
use arrow_flight::FlightData;
use arrow_schema::{DataType as ArrowType, Schema};
use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};

use crate::error::{Error, Result};

/// Why an exchange's messages stopped: the client's messages could not be read, or its
/// stream failed (the transport's status, as it came).
#[derive(Debug)]
pub enum Stopped {
    Refused(Error),
    Transport(tonic::Status),
}

/// The record batches of an exchange's messages, in order; messages without an IPC header
/// (a descriptor or app metadata alone) carry none. The stream ends after its first error.
pub fn record_batches<S>(messages: S) -> impl Stream<Item = Result<RecordBatch, Stopped>> + Send
where
    S: Stream<Item = Result<FlightData, tonic::Status>> + Send + 'static,
{
    let checked_messages = messages
        .try_filter(|message| std::future::ready(!message.data_header.is_empty()))
        .map(|message| match message {
            Ok(message) => checked(message).map_err(|error| {
                FlightError::Tonic(Box::new(tonic::Status::invalid_argument(error.to_string())))
            }),
            Err(status) => Err(FlightError::Tonic(Box::new(status))),
        });
    let decoded = FlightRecordBatchStream::new_from_flight_data(checked_messages);
    Contained(Some(decoded)).map(|item| {
        item.map_err(|error| match error {
            FlightError::Tonic(status) if status.code() == tonic::Code::InvalidArgument => {
                Stopped::Refused(Error::request(status.message().to_owned()))
            }
            FlightError::Tonic(status) => Stopped::Transport(*status),
            other => Stopped::Refused(Error::request(format!(
                "a Flight message could not be read: {other}"
            ))),
        })
    })
}

/// The decoder, with a panic in it turned into the exchange's end, refused.
struct Contained(Option<FlightRecordBatchStream>);

impl Stream for Contained {
    type Item = Result<RecordBatch, FlightError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(decoder) = self.0.as_mut() else {
            return Poll::Ready(None);
        };
        match catch_unwind(AssertUnwindSafe(|| decoder.poll_next_unpin(cx))) {
            Ok(Poll::Ready(item @ Some(Err(_)))) => {
                self.0 = None;
                Poll::Ready(item)
            }
            Ok(polled) => polled,
            Err(_) => {
                self.0 = None;
                Poll::Ready(Some(Err(FlightError::ProtocolError(
                    "its IPC data does not describe valid arrays".to_owned(),
                ))))
            }
        }
    }
}

/// The alignment IPC buffers are laid out at, and the widest any taken column needs.
const ALIGNMENT: usize = 8;

/// The message, when Arrow's reader may read it (its body realigned if need be).
fn checked(mut message: FlightData) -> Result<FlightData> {
    if message.data_header.is_empty() {
        return Ok(message);
    }
    let header = arrow_ipc::root_as_message(&message.data_header)
        .map_err(|e| Error::request(format!("a Flight message's IPC header is not valid: {e}")))?;
    if header.header_as_schema().is_some() {
        let schema = Schema::try_from(&message)
            .map_err(|e| Error::request(format!("a Flight message's schema is not valid: {e}")))?;
        for field in schema.fields() {
            if !taken(field.data_type()) {
                return Err(Error::input(
                    field.name(),
                    format!(
                        "column '{}' holds Arrow {} values; a column holds booleans, integers, \
                         floating-point numbers, strings or binary values, one per row or a \
                         fixed-size list of them",
                        field.name(),
                        field.data_type()
                    ),
                ));
            }
        }
        return Ok(message);
    }
    if header.header_as_dictionary_batch().is_some() {
        return Err(Error::request(
            "a Flight message holds a dictionary batch; dictionary-encoded columns are not taken",
        ));
    }
    let buffers = header
        .header_as_record_batch()
        .and_then(|batch| batch.buffers());
    let body = message.data_body.len() as u64;
    for buffer in buffers.iter().flatten() {
        let offset = u64::try_from(buffer.offset()).ok();
        let end = offset
            .zip(u64::try_from(buffer.length()).ok())
            .and_then(|(offset, length)| offset.checked_add(length));
        let aligned = offset.is_some_and(|offset| offset.is_multiple_of(ALIGNMENT as u64));
        if !aligned || end.is_none_or(|end| end > body) {
            return Err(Error::request(format!(
                "a Flight message's IPC header describes a buffer of {} bytes at offset {}, \
                 not an 8-byte aligned part of its body of {body} bytes",
                buffer.length(),
                buffer.offset()
            )));
        }
    }
    if message.data_body.as_ptr().align_offset(ALIGNMENT) != 0 {
        // One copy, into an Arrow buffer (64-byte aligned).
        let aligned = arrow_buffer::Buffer::from_slice_ref(&message.data_body);
        message.data_body = Bytes::from_owner(aligned);
    }
    Ok(message)
}

/// Whether the data path takes columns of this type.
fn taken(data_type: &ArrowType) -> bool {
    match data_type {
        ArrowType::FixedSizeList(item, _) => taken(item.data_type()),
        other => crate::datatype::DataType::from_arrow(other).is_some(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use arrow_array::{Int64Array, RecordBatch};
    use arrow_flight::encode::FlightDataEncoderBuilder;
    use futures::StreamExt;
    use std::sync::Arc;

    fn encoded() -> Vec<FlightData> {
        encoded_batch(
            RecordBatch::try_from_iter([(
                "x",
                Arc::new(Int64Array::from(vec![1, 2, 3])) as arrow_array::ArrayRef,
            )])
            .unwrap(),
        )
    }

    fn encoded_batch(batch: RecordBatch) -> Vec<FlightData> {
        let stream = FlightDataEncoderBuilder::new()
            .build(futures::stream::iter([Ok(batch)]))
            .map(Result::unwrap);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut stream = Box::pin(stream);
        let mut messages = Vec::new();
        while let std::task::Poll::Ready(Some(message)) = stream.poll_next_unpin(&mut cx) {
            messages.push(message);
        }
        messages
    }

    #[test]
    fn well_formed_messages_pass_and_a_cut_body_is_refused() {
        let messages = encoded();
        assert_eq!(messages.len(), 2, "a schema and a batch");
        for message in &messages {
            assert!(checked(message.clone()).is_ok());
        }
        let mut cut = messages.last().unwrap().clone();
        cut.data_body = cut.data_body.slice(..4);
        let error = checked(cut).unwrap_err();
        assert!(
            error.to_string().contains("aligned part of its body"),
            "{error}"
        );
        let mut shifted = messages.last().unwrap().clone();
        let mut bytes = vec![0u8];
        bytes.extend_from_slice(&shifted.data_body);
        shifted.data_body = Bytes::from(bytes).slice(1..);
        let realigned = checked(shifted).unwrap();
        assert_eq!(realigned.data_body.as_ptr().align_offset(ALIGNMENT), 0);
        let mut garbage = messages.last().unwrap().clone();
        garbage.data_header = bytes::Bytes::from_static(b"\x01\x02\x03");
        assert!(checked(garbage).is_err());
    }

    #[test]
    fn schemas_of_columns_not_taken_are_refused() {
        let values = arrow_array::Decimal128Array::from(vec![1, 2]);
        let batch =
            RecordBatch::try_from_iter([("d", Arc::new(values) as arrow_array::ArrayRef)]).unwrap();
        let schema = encoded_batch(batch).into_iter().next().unwrap();
        let error = checked(schema).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("column 'd' holds Arrow Decimal128"),
            "{error}"
        );
    }
}
