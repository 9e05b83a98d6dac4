//! V2's raw tensor contents as Arrow arrays, for requests (the server's decoder) and
//! responses (the client's) alike: fixed-width values little-endian, borrowed when aligned;
//! BOOL one byte each, 0 or 1; BYTES each a 4-byte little-endian length, then its bytes.
//! The callers check sizes against the tensor's shape first and word the errors for their
//! side; here a fault says only what is wrong.
#![deny(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float16Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type,
    UInt32Type, UInt64Type, UInt8Type,
};
use arrow_array::{Array, ArrayRef, ArrowPrimitiveType, BinaryArray, BooleanArray, PrimitiveArray};
use arrow_buffer::{
    ArrowNativeType, BooleanBuffer, Buffer, MutableBuffer, OffsetBuffer, ScalarBuffer,
};
use arrow_schema::DataType as ArrowType;
use bytes::{BufMut, Bytes};

use crate::datatype::DataType;

#[cfg(target_endian = "big")]
compile_error!("raw tensor contents are little-endian; big-endian hosts would need a byte swap");

/// The length prefix of each BYTES element.
pub(crate) const LENGTH_PREFIX: usize = 4;

/// What is wrong with fixed-width raw contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FixedFault {
    /// A BOOL byte that is neither 0 nor 1, and its element.
    NotBool { position: usize, byte: u8 },
    /// BYTES are not fixed-width (see `bytes_array`).
    NotFixed,
}

/// Fixed-width values over `raw`, whose length the caller checked against the shape:
/// borrowed when aligned, BOOL packed into bits.
pub(crate) fn fixed_array(datatype: DataType, raw: Bytes) -> Result<ArrayRef, FixedFault> {
    Ok(match datatype {
        DataType::Bool => return bool_array(&raw),
        DataType::Uint8 => raw_array::<UInt8Type>(raw),
        DataType::Uint16 => raw_array::<UInt16Type>(raw),
        DataType::Uint32 => raw_array::<UInt32Type>(raw),
        DataType::Uint64 => raw_array::<UInt64Type>(raw),
        DataType::Int8 => raw_array::<Int8Type>(raw),
        DataType::Int16 => raw_array::<Int16Type>(raw),
        DataType::Int32 => raw_array::<Int32Type>(raw),
        DataType::Int64 => raw_array::<Int64Type>(raw),
        DataType::Fp16 => raw_array::<Float16Type>(raw),
        DataType::Fp32 => raw_array::<Float32Type>(raw),
        DataType::Fp64 => raw_array::<Float64Type>(raw),
        DataType::Bytes => return Err(FixedFault::NotFixed),
    })
}

/// Little-endian raw values as an Arrow array over `raw` itself when it is aligned for `T`.
pub(crate) fn raw_array<T: ArrowPrimitiveType>(raw: Bytes) -> ArrayRef {
    Arc::new(PrimitiveArray::<T>::new(
        raw_scalars::<T::Native>(raw),
        None,
    ))
}

/// Little-endian raw bytes as a typed Arrow buffer, borrowing `raw` (and through it the
/// message) when the data is aligned for `T`.
fn raw_scalars<T: ArrowNativeType>(raw: Bytes) -> ScalarBuffer<T> {
    let len = raw.len().checked_div(std::mem::size_of::<T>()).unwrap_or(0);
    if raw.as_ptr().align_offset(std::mem::align_of::<T>()) == 0 {
        ScalarBuffer::new(Buffer::from(raw), 0, len)
    } else {
        // The one forced copy: protobuf puts a field at any byte offset and Arrow needs
        // T-aligned values.
        let mut aligned = MutableBuffer::new(raw.len());
        aligned.extend_from_slice(&raw);
        ScalarBuffer::new(aligned.into(), 0, len)
    }
}

/// BOOL bytes as a BooleanArray, unless one is neither 0 nor 1.
fn bool_array(raw: &[u8]) -> Result<ArrayRef, FixedFault> {
    if let Some((position, &byte)) = raw.iter().enumerate().find(|(_, &b)| b > 1) {
        return Err(FixedFault::NotBool { position, byte });
    }
    // Arrow packs booleans into bits: a copy the format requires.
    Ok(Arc::new(BooleanArray::new(
        BooleanBuffer::collect_bool(raw.len(), |i| raw.get(i) == Some(&1)),
        None,
    )))
}

/// What is wrong with BYTES raw contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BytesFault {
    /// Too few bytes for even the length prefixes of the elements wanted.
    CannotHold,
    /// The contents end after this many elements.
    EndsAfter(usize),
    /// Element `index` declares `len` bytes where `remain` are left.
    Overrun {
        index: usize,
        len: usize,
        remain: usize,
    },
    /// Bytes are left after the elements.
    Trailing(usize),
    /// The elements hold 2 GiB or more, past what a BinaryArray's offsets address.
    TooLarge,
}

/// `count` BYTES elements as a BinaryArray: a copy, since Arrow keeps the elements
/// contiguous without their lengths. A count the bytes cannot hold is refused before
/// anything is allocated for it.
pub(crate) fn bytes_array(count: usize, raw: &[u8]) -> Result<ArrayRef, BytesFault> {
    if count > raw.len().checked_div(LENGTH_PREFIX).unwrap_or(0) {
        return Err(BytesFault::CannotHold);
    }
    let mut offsets = Vec::with_capacity(count.saturating_add(1));
    offsets.push(0i32);
    let mut values = Vec::with_capacity(
        raw.len()
            .saturating_sub(count.saturating_mul(LENGTH_PREFIX)),
    );
    let mut rest = raw;
    for index in 0..count {
        let Some((prefix, tail)) = rest.split_first_chunk::<LENGTH_PREFIX>() else {
            return Err(BytesFault::EndsAfter(index));
        };
        let len = u32::from_le_bytes(*prefix) as usize;
        let Some((element, after)) = tail.split_at_checked(len) else {
            return Err(BytesFault::Overrun {
                index,
                len,
                remain: tail.len(),
            });
        };
        values.extend_from_slice(element);
        offsets.push(i32::try_from(values.len()).map_err(|_| BytesFault::TooLarge)?);
        rest = after;
    }
    if !rest.is_empty() {
        return Err(BytesFault::Trailing(rest.len()));
    }
    Ok(binary_array(offsets, values))
}

/// A BinaryArray of `values` cut at `offsets` (checked by the caller).
pub(crate) fn binary_array(offsets: Vec<i32>, values: Vec<u8>) -> ArrayRef {
    Arc::new(BinaryArray::new(
        OffsetBuffer::new(ScalarBuffer::from(offsets)),
        Buffer::from_vec(values),
        None,
    ))
}

/// A tensor's values as raw contents are written: their size is known before writing, and
/// they are written straight from the Arrow buffers.
#[derive(Debug)]
pub(crate) enum RawValues {
    /// Fixed-width values, already little-endian in memory: exactly the tensor's bytes.
    Fixed(Buffer),
    /// One byte per element, 0 or 1.
    Bools(BooleanArray),
    /// Binary or text values, each written after its length; `len` is the total, counted
    /// once.
    Bytes { values: ArrayRef, len: usize },
}

impl RawValues {
    /// BYTES values with their size; None when an element has 4 GiB or more (a length
    /// prefix cannot say it) or the values are not binary or text.
    pub(crate) fn bytes(values: &ArrayRef) -> Option<RawValues> {
        let len = byte_elements(values)?
            .map(|element| {
                u32::try_from(element.len())
                    .ok()
                    .and_then(|_| element.len().checked_add(LENGTH_PREFIX))
            })
            .try_fold(0usize, |total, len| total.checked_add(len?))?;
        Some(RawValues::Bytes {
            values: Arc::clone(values),
            len,
        })
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            RawValues::Fixed(buffer) => buffer.len(),
            RawValues::Bools(values) => values.len(),
            RawValues::Bytes { len, .. } => *len,
        }
    }

    pub(crate) fn write(&self, out: &mut impl BufMut) {
        match self {
            RawValues::Fixed(buffer) => out.put_slice(buffer.as_slice()),
            RawValues::Bools(values) => {
                for value in values.values() {
                    out.put_u8(u8::from(value));
                }
            }
            RawValues::Bytes { values, .. } => {
                for element in byte_elements(values).into_iter().flatten() {
                    // Each length was checked to fit in 4 bytes when the size was counted.
                    out.put_u32_le(u32::try_from(element.len()).unwrap_or(u32::MAX));
                    out.put_slice(element);
                }
            }
        }
    }
}

/// The elements of a binary or text array as byte slices (a null as none); None for any
/// other type.
pub(crate) fn byte_elements(values: &ArrayRef) -> Option<Box<dyn Iterator<Item = &[u8]> + '_>> {
    fn bytes_of<'a, I, T>(values: I) -> Box<dyn Iterator<Item = &'a [u8]> + 'a>
    where
        I: Iterator<Item = Option<&'a T>> + 'a,
        T: AsRef<[u8]> + ?Sized + 'a,
    {
        Box::new(values.map(|v| v.map_or(&[][..], AsRef::as_ref)))
    }
    Some(match values.data_type() {
        ArrowType::Binary => bytes_of(values.as_binary::<i32>().iter()),
        ArrowType::LargeBinary => bytes_of(values.as_binary::<i64>().iter()),
        ArrowType::BinaryView => bytes_of(values.as_binary_view().iter()),
        ArrowType::Utf8 => bytes_of(values.as_string::<i32>().iter()),
        ArrowType::LargeUtf8 => bytes_of(values.as_string::<i64>().iter()),
        ArrowType::Utf8View => bytes_of(values.as_string_view().iter()),
        _ => return None,
    })
}
