//! Triton's system shared memory as Python sees it: the server allows it (or not) at start,
//! and the HTTP front's REST endpoints register, list and unregister regions in the same
//! process-wide registry the gRPC front and the decoder use.

use pyo3::prelude::*;

use crate::shm::regions;

/// Allows shared memory in this process from now on (or not: every region is then
/// unregistered).
#[pyfunction]
pub fn allow_shared_memory(allowed: bool) {
    regions().allow(allowed);
}

/// Maps `byte_size` bytes at `offset` of the POSIX shared memory object `key` as region
/// `name`.
#[pyfunction]
pub fn register_shared_memory(
    py: Python<'_>,
    name: &str,
    key: &str,
    offset: u64,
    byte_size: u64,
) -> PyResult<()> {
    py.detach(|| regions().register(name, key, offset, byte_size))?;
    Ok(())
}

/// `(name, key, offset, byte_size)` of region `name`, or of every region when empty.
#[pyfunction]
pub fn shared_memory_status(name: &str) -> PyResult<Vec<(String, String, u64, u64)>> {
    Ok(regions()
        .status(name)?
        .into_iter()
        .map(|r| (r.name, r.key, r.offset, r.byte_size))
        .collect())
}

/// Forgets region `name` (every region when empty); requests holding its values keep them.
#[pyfunction]
pub fn unregister_shared_memory(name: &str) {
    regions().unregister(name);
}
