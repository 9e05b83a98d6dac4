//! What Arrow's IPC reader takes on trust in a Flight message, checked before it reads one:
//! every buffer a record batch or dictionary batch header describes lies within the
//! message's body. (The reader slices the body by those offsets and lengths unchecked, and
//! panics past its end.)
#![deny(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use arrow_flight::FlightData;

use crate::error::{Error, Result};

/// The message, when its header's buffers fit its body.
pub fn checked(message: FlightData) -> Result<FlightData> {
    if message.data_header.is_empty() {
        return Ok(message);
    }
    let header = arrow_ipc::root_as_message(&message.data_header)
        .map_err(|e| Error::request(format!("a Flight message's IPC header is not valid: {e}")))?;
    let buffers = header
        .header_as_record_batch()
        .or_else(|| header.header_as_dictionary_batch().and_then(|d| d.data()))
        .and_then(|batch| batch.buffers());
    let body = message.data_body.len() as u64;
    for buffer in buffers.iter().flatten() {
        let end = u64::try_from(buffer.offset())
            .ok()
            .zip(u64::try_from(buffer.length()).ok())
            .and_then(|(offset, length)| offset.checked_add(length));
        if end.is_none_or(|end| end > body) {
            return Err(Error::request(format!(
                "a Flight message's IPC header describes a buffer of {} bytes at offset {}, \
                 outside its body of {body} bytes",
                buffer.length(),
                buffer.offset()
            )));
        }
    }
    Ok(message)
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
        let batch = RecordBatch::try_from_iter([(
            "x",
            Arc::new(Int64Array::from(vec![1, 2, 3])) as arrow_array::ArrayRef,
        )])
        .unwrap();
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
        assert!(error.to_string().contains("outside its body"), "{error}");
        let mut garbage = messages.last().unwrap().clone();
        garbage.data_header = bytes::Bytes::from_static(b"\x01\x02\x03");
        assert!(checked(garbage).is_err());
    }
}
