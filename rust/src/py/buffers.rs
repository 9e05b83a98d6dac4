//! Ownership across the boundary: request bytes borrowed from Python without a copy, and
//! Arrow arrays passed both ways through the Arrow PyCapsule interface. The only file with
//! `unsafe`.

use std::ffi::CStr;

use arrow_array::ffi::{from_ffi, FFI_ArrowArray, FFI_ArrowSchema};
use arrow_array::{make_array, Array, ArrayRef};
use arrow_data::transform::MutableArrayData;

use crate::error::Error;
use bytes::Bytes;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyBytes, PyCapsule};

const SCHEMA_CAPSULE: &CStr = c"arrow_schema";
const ARRAY_CAPSULE: &CStr = c"arrow_array";

/// The contents of a Python `bytes` object as `Bytes`, without copying: the `Bytes` owns a
/// reference to the (immutable) Python object, so slices of it, and Arrow buffers built on
/// those slices, keep the request alive for as long as they live.
pub fn borrow_bytes(data: Bound<'_, PyBytes>) -> Bytes {
    Bytes::from_owner(PyBackedBytes::from(data))
}

/// An Arrow array handed to Python through `__arrow_c_array__` (pyarrow, polars, ... read
/// it without a copy).
#[pyclass(name = "ArrowArray", module = "arrowsmith._native", frozen)]
pub struct ArrowArray {
    array: ArrayRef,
}

impl ArrowArray {
    pub fn new(array: ArrayRef) -> Self {
        Self { array }
    }
}

#[pymethods]
impl ArrowArray {
    #[pyo3(signature = (requested_schema = None))]
    fn __arrow_c_array__<'py>(
        &self,
        py: Python<'py>,
        requested_schema: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<(Bound<'py, PyCapsule>, Bound<'py, PyCapsule>)> {
        // The array is offered in its own type; a consumer asking for another casts itself.
        let _ = requested_schema;
        let schema = FFI_ArrowSchema::try_from(self.array.data_type())
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        let array = FFI_ArrowArray::new(&self.array.to_data());
        // A consumer moves the structs out of the capsules (leaving `release` empty); if none
        // does, dropping them with the capsules releases the Arrow data.
        Ok((
            PyCapsule::new_with_value(py, schema, SCHEMA_CAPSULE)?,
            PyCapsule::new_with_value(py, array, ARRAY_CAPSULE)?,
        ))
    }

    fn __len__(&self) -> usize {
        self.array.len()
    }
}

/// Imports any object that exports `__arrow_c_array__` (a pyarrow Array, ...).
pub fn import_array(source: &Bound<'_, PyAny>) -> PyResult<ArrayRef> {
    let (schema, array): (Bound<'_, PyCapsule>, Bound<'_, PyCapsule>) =
        source.call_method0("__arrow_c_array__")?.extract()?;
    let schema_ptr = schema
        .pointer_checked(Some(SCHEMA_CAPSULE))?
        .cast::<FFI_ArrowSchema>();
    let array_ptr = array
        .pointer_checked(Some(ARRAY_CAPSULE))?
        .cast::<FFI_ArrowArray>();
    // Safety: the capsules are named per the Arrow PyCapsule interface, so their pointers are
    // a valid FFI_ArrowSchema and FFI_ArrowArray. `from_raw` moves the array struct out and
    // marks the capsule's copy released, so the data has exactly one owner (the returned
    // ArrayRef); the schema is only borrowed while the capsule is alive.
    let data = unsafe {
        let array = FFI_ArrowArray::from_raw(array_ptr.as_ptr());
        from_ffi(array, schema_ptr.as_ref())
    }
    .map_err(|e| PyValueError::new_err(format!("not a readable Arrow array: {e}")))?;
    Ok(make_array(data))
}

/// A copy of `array` in memory Rust owns. An imported array's memory belongs to Python, and
/// releasing it takes the interpreter lock: whatever outlives the call that imported it (a
/// response the gRPC front's thread writes and drops) is copied, so that thread never
/// waits for the interpreter.
pub fn rust_owned(array: &ArrayRef) -> Result<ArrayRef, Error> {
    let data = array.to_data();
    let mut copy = MutableArrayData::new(vec![&data], false, data.len());
    copy.try_extend(0, 0, data.len())
        .map_err(|e| Error::Internal(format!("copying a model output failed: {e}")))?;
    Ok(make_array(copy.freeze()))
}
