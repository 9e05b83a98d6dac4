//! Triton's system shared memory extension: a client on the same host registers a region by
//! name (a POSIX shared memory object's key, an offset into it and a size); a request then
//! names the region for an input's values, which are read where they lie (the decoder
//! takes them as it takes raw contents, without a copy), or for an output, whose values are
//! written there instead of into the response.
//!
//! One registry per process, off until the server allows it. Every offset and size a client
//! gives is checked against its region before anything is read or written. A region is
//! mapped while registered and while any request still holds its values: unregistering it
//! mid-request leaves that request's mapping valid to its end.
//!
//! What no check can prevent: a process that can write the shared memory object may change
//! the values while a batch runs (its answers are then its own doing), or shrink the object
//! (which the kernel answers with SIGBUS on the next read of the lost pages). Each use checks
//! the object's size first, which leaves only a race with a deliberate truncation; a server
//! that must not trust its local clients does not allow shared memory.
#![deny(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, PoisonError, RwLock};

use bytes::Bytes;
use memmap2::{MmapOptions, MmapRaw};

use crate::error::{Error, Result};
use crate::tensor::{ParamValue, Parameters};

/// The parameters that name a region for a tensor (Triton's names).
pub const REGION: &str = "shared_memory_region";
pub const BYTE_SIZE: &str = "shared_memory_byte_size";
pub const OFFSET: &str = "shared_memory_offset";

/// Where POSIX shared memory objects live (`shm_open` names them from here).
const SHM_FOLDER: &str = "/dev/shm";
/// Regions registered at once, at most: each holds a file and a mapping.
const MAX_REGIONS: usize = 1024;
/// The longest key: a file name.
const MAX_KEY_BYTES: usize = 255;

/// A registered region: its mapping and what the client registered it as.
pub struct Region {
    pub name: String,
    pub key: String,
    pub offset: u64,
    pub byte_size: usize,
    file: File,
    map: MmapRaw,
}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region")
            .field("name", &self.name)
            .field("key", &self.key)
            .field("offset", &self.offset)
            .field("byte_size", &self.byte_size)
            .finish_non_exhaustive()
    }
}

impl Region {
    /// Whether the object still holds the whole region (a shrunk object would fault).
    fn intact(&self) -> Result<()> {
        let needed = self.offset.checked_add(self.byte_size as u64);
        match self.file.metadata() {
            Ok(meta) if needed.is_some_and(|needed| meta.len() >= needed) => Ok(()),
            _ => Err(Error::request(format!(
                "shared memory region '{}' (key '{}') is no longer as large as it was \
                 registered",
                self.name, self.key
            ))),
        }
    }

    /// `[offset, offset + len)` of the region, checked.
    fn span(&self, offset: usize, len: usize, what: &str) -> Result<usize> {
        match offset.checked_add(len) {
            Some(end) if end <= self.byte_size => Ok(offset),
            _ => Err(Error::request(format!(
                "{what}: {len} bytes at offset {offset} do not fit shared memory region '{}' \
                 of {} bytes",
                self.name, self.byte_size
            ))),
        }
    }
}

/// Bytes of a region, keeping its mapping alive for as long as they are held.
struct Held {
    region: Arc<Region>,
    start: usize,
    len: usize,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `start + len <= byte_size` was checked when the span was made, the mapping
        // covers `byte_size` bytes and lives as long as `region`, which `self` holds.
        unsafe {
            std::slice::from_raw_parts(self.region.map.as_ptr().wrapping_add(self.start), self.len)
        }
    }
}

/// A requested output to be written into a region instead of the response.
#[derive(Debug, Clone)]
pub struct OutputRegion {
    pub output: String,
    region: Arc<Region>,
    offset: usize,
    byte_size: usize,
}

impl OutputRegion {
    pub fn region_name(&self) -> &str {
        &self.region.name
    }

    pub fn byte_size(&self) -> usize {
        self.byte_size
    }

    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Writes `len` bytes there with `fill`, which is handed exactly that many bytes.
    /// More than the request gave room for is an error, and nothing is written.
    pub fn write(&self, len: usize, fill: impl FnOnce(&mut [u8])) -> Result<()> {
        if len > self.byte_size {
            return Err(Error::request(format!(
                "output '{}' has {len} bytes, more than the {} bytes given for it in shared \
                 memory region '{}'",
                self.output, self.byte_size, self.region.name
            )));
        }
        let start = self
            .region
            .span(self.offset, len, &format!("output '{}'", self.output))?;
        self.region.intact()?;
        // SAFETY: the span lies within the mapping (checked above), which `self.region`
        // keeps alive; the region is the client's to share, and it asked for the write.
        let target = unsafe {
            std::slice::from_raw_parts_mut(self.region.map.as_mut_ptr().wrapping_add(start), len)
        };
        fill(target);
        Ok(())
    }
}

/// The process's regions.
pub struct Regions {
    allowed: AtomicBool,
    table: RwLock<HashMap<String, Arc<Region>>>,
}

/// What Status says of a region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionStatus {
    pub name: String,
    pub key: String,
    pub offset: u64,
    pub byte_size: u64,
}

static REGIONS: LazyLock<Regions> = LazyLock::new(|| Regions {
    allowed: AtomicBool::new(false),
    table: RwLock::new(HashMap::new()),
});

/// The process's registry.
pub fn regions() -> &'static Regions {
    &REGIONS
}

fn refused_off() -> Error {
    Error::request(
        "shared memory is not allowed on this server (it is off unless started with \
         --allow-shared-memory)",
    )
}

/// The file a POSIX shared memory key names; keys are `/name`, one component.
fn key_path(key: &str) -> Result<PathBuf> {
    let name = key.strip_prefix('/').unwrap_or(key);
    let valid = !name.is_empty()
        && key.len() <= MAX_KEY_BYTES
        && !name.contains(['/', '\0'])
        && name != "."
        && name != "..";
    if valid {
        Ok(PathBuf::from(SHM_FOLDER).join(name))
    } else {
        Err(Error::request(format!(
            "shared memory key '{}' is not a POSIX shared memory name ('/name', one path \
             component of at most {MAX_KEY_BYTES} bytes)",
            key.escape_debug()
        )))
    }
}

impl Regions {
    /// Allows shared memory (or not) from now on; disallowing it unregisters every region.
    pub fn allow(&self, allowed: bool) {
        self.allowed.store(allowed, Ordering::Release);
        if !allowed {
            self.write().clear();
        }
    }

    pub fn allowed(&self) -> bool {
        self.allowed.load(Ordering::Acquire)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<Region>>> {
        self.table.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Region>>> {
        self.table.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Maps `byte_size` bytes at `offset` of the object `key` as region `name`.
    pub fn register(&self, name: &str, key: &str, offset: u64, byte_size: u64) -> Result<()> {
        if !self.allowed() {
            return Err(refused_off());
        }
        if name.is_empty() || name.contains('\0') {
            return Err(Error::request(
                "a shared memory region needs a name without NUL characters",
            ));
        }
        let size = usize::try_from(byte_size)
            .ok()
            .filter(|&size| size > 0)
            .ok_or_else(|| {
                Error::request(format!(
                    "shared memory region '{name}' needs a byte_size above 0 that this host \
                     can map, not {byte_size}"
                ))
            })?;
        if self.read().contains_key(name) {
            return Err(Error::request(format!(
                "shared memory region '{name}' is already registered; unregister it first"
            )));
        }
        let path = key_path(key)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::request(format!("cannot open shared memory key '{key}': {e}")))?;
        let length = file.metadata().map_or(0, |m| m.len());
        if offset.checked_add(byte_size).is_none_or(|end| end > length) {
            return Err(Error::request(format!(
                "shared memory region '{name}': {byte_size} bytes at offset {offset} do not \
                 fit key '{key}' of {length} bytes"
            )));
        }
        let map = MmapOptions::new()
            .offset(offset)
            .len(size)
            .map_raw(&file)
            .map_err(|e| Error::request(format!("cannot map shared memory key '{key}': {e}")))?;
        let region = Arc::new(Region {
            name: name.to_owned(),
            key: key.to_owned(),
            offset,
            byte_size: size,
            file,
            map,
        });
        let mut table = self.write();
        if table.len() >= MAX_REGIONS {
            return Err(Error::QueueFull(format!(
                "{MAX_REGIONS} shared memory regions are registered, the most a server holds; \
                 unregister some first"
            )));
        }
        if table.contains_key(name) {
            return Err(Error::request(format!(
                "shared memory region '{name}' is already registered; unregister it first"
            )));
        }
        table.insert(name.to_owned(), region);
        Ok(())
    }

    /// Forgets region `name` (every region when empty); a region unknown is no error.
    /// Requests that hold its values keep them to their end.
    pub fn unregister(&self, name: &str) {
        let mut table = self.write();
        if name.is_empty() {
            table.clear();
        } else {
            table.remove(name);
        }
    }

    /// Region `name`'s status, or every region's when empty; an unknown name is NOT_FOUND.
    pub fn status(&self, name: &str) -> Result<Vec<RegionStatus>> {
        let table = self.read();
        let status = |region: &Arc<Region>| RegionStatus {
            name: region.name.clone(),
            key: region.key.clone(),
            offset: region.offset,
            byte_size: region.byte_size as u64,
        };
        if name.is_empty() {
            let mut all: Vec<RegionStatus> = table.values().map(status).collect();
            all.sort_by(|a, b| a.name.cmp(&b.name));
            return Ok(all);
        }
        table.get(name).map(|r| vec![status(r)]).ok_or_else(|| {
            Error::NotFound(format!("shared memory region '{name}' is not registered"))
        })
    }

    fn region(&self, name: &str, what: &str) -> Result<Arc<Region>> {
        if !self.allowed() {
            return Err(refused_off());
        }
        self.read().get(name).cloned().ok_or_else(|| {
            Error::request(format!(
                "{what} names shared memory region '{name}', which is not registered"
            ))
        })
    }

    /// The values of input `input` when its parameters name a region (which they then no
    /// longer hold); None when they name none.
    pub fn input_values(&self, input: &str, parameters: &mut Parameters) -> Result<Option<Bytes>> {
        if !names_place(parameters) {
            return Ok(None);
        }
        let what = format!("input '{input}'");
        let Some(place) = take_place(parameters, &what)? else {
            return Ok(None);
        };
        let region = self.region(&place.region, &what)?;
        let start = region.span(place.offset, place.byte_size, &what)?;
        region.intact()?;
        Ok(Some(Bytes::from_owner(Held {
            region,
            start,
            len: place.byte_size,
        })))
    }

    /// Where output `output` goes when its parameters name a region.
    pub fn output_place(
        &self,
        output: &str,
        parameters: &mut Parameters,
    ) -> Result<Option<OutputRegion>> {
        if !names_place(parameters) {
            return Ok(None);
        }
        let what = format!("output '{output}'");
        let Some(place) = take_place(parameters, &what)? else {
            return Ok(None);
        };
        let region = self.region(&place.region, &what)?;
        region.span(place.offset, place.byte_size, &what)?;
        Ok(Some(OutputRegion {
            output: output.to_owned(),
            region,
            offset: place.offset,
            byte_size: place.byte_size,
        }))
    }
}

/// A tensor's place in a region, as its parameters give it.
struct Place {
    region: String,
    offset: usize,
    byte_size: usize,
}

/// Whether any of the region parameters is there (most tensors have none: nothing is
/// allocated for them).
fn names_place(parameters: &Parameters) -> bool {
    [REGION, BYTE_SIZE, OFFSET]
        .iter()
        .any(|key| parameters.contains_key(*key))
}

/// Takes the region parameters out of `parameters`: the region and its byte size go
/// together, the offset defaults to 0.
fn take_place(parameters: &mut Parameters, what: &str) -> Result<Option<Place>> {
    let region = parameters.remove(REGION);
    let byte_size = parameters.remove(BYTE_SIZE);
    let offset = parameters.remove(OFFSET);
    let region = match (region, &byte_size, &offset) {
        (None, None, None) => return Ok(None),
        (Some(ParamValue::String(region)), Some(_), _) => region,
        (Some(ParamValue::String(_)), None, _) => {
            return Err(Error::request(format!(
                "{what} names a shared memory region without {BYTE_SIZE}"
            )))
        }
        (Some(_), _, _) => {
            return Err(Error::request(format!("{what}: {REGION} must be a string")))
        }
        (None, _, _) => {
            return Err(Error::request(format!(
                "{what} gives {BYTE_SIZE} or {OFFSET} without {REGION}"
            )))
        }
    };
    let number = |value: Option<ParamValue>, name: &str| -> Result<usize> {
        let value = match value {
            None => return Ok(0),
            Some(ParamValue::Int64(v)) => usize::try_from(v).ok(),
            Some(ParamValue::Uint64(v)) => usize::try_from(v).ok(),
            Some(_) => None,
        };
        value.ok_or_else(|| {
            Error::request(format!(
                "{what}: {name} must be a whole number of bytes, 0 or more"
            ))
        })
    };
    Ok(Some(Place {
        region,
        byte_size: number(byte_size, BYTE_SIZE)?,
        offset: number(offset, OFFSET)?,
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    /// A shared memory object of `size` bytes holding 0, 1, 2, ..., removed when dropped.
    struct Object(String);

    impl Object {
        fn new(tag: &str, size: usize) -> Object {
            let key = format!("/arrowsmith-test-{tag}-{}", std::process::id());
            let bytes: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            std::fs::write(key_path(&key).unwrap(), bytes).unwrap();
            Object(key)
        }
    }

    impl Drop for Object {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(key_path(&self.0).unwrap());
        }
    }

    fn registry() -> Regions {
        Regions {
            allowed: AtomicBool::new(true),
            table: RwLock::new(HashMap::new()),
        }
    }

    fn place(region: &str, size: i64, offset: i64) -> Parameters {
        let mut p = Parameters::new();
        p.insert(REGION.into(), ParamValue::String(region.into()));
        p.insert(BYTE_SIZE.into(), ParamValue::Int64(size));
        p.insert(OFFSET.into(), ParamValue::Int64(offset));
        p
    }

    #[test]
    fn an_input_reads_its_bytes_where_they_lie_and_outlives_unregistering() {
        let object = Object::new("read", 64);
        let regions = registry();
        regions.register("r", &object.0, 8, 32).unwrap();
        let mut params = place("r", 4, 2);
        let values = regions.input_values("x", &mut params).unwrap().unwrap();
        assert!(params.is_empty(), "the region's parameters are taken");
        assert_eq!(&values[..], &[10, 11, 12, 13]);
        regions.unregister("r");
        assert_eq!(&values[..], &[10, 11, 12, 13]);
        assert!(regions.input_values("x", &mut place("r", 4, 0)).is_err());
    }

    #[test]
    fn spans_outside_the_region_are_refused() {
        let object = Object::new("bounds", 64);
        let regions = registry();
        regions.register("r", &object.0, 0, 16).unwrap();
        for (size, offset) in [(17, 0), (1, 16), (i64::MAX, 1), (-1, 0), (1, -1)] {
            let error = regions
                .input_values("x", &mut place("r", size, offset))
                .unwrap_err();
            assert!(matches!(error, Error::InvalidInput { .. }), "{error}");
        }
        assert!(regions.register("big", &object.0, 60, 8).is_err());
        assert!(
            regions.register("r", &object.0, 0, 8).is_err(),
            "a name once"
        );
    }

    #[test]
    fn keys_name_one_file_under_dev_shm() {
        for key in ["", "/", "/a/b", "/..", "/x\0y", "../etc/passwd"] {
            assert!(key_path(key).is_err(), "{key:?}");
        }
        assert_eq!(key_path("/ok").unwrap(), PathBuf::from("/dev/shm/ok"));
    }

    #[test]
    fn an_output_is_written_within_its_place_only() {
        let object = Object::new("write", 32);
        let regions = registry();
        regions.register("r", &object.0, 0, 32).unwrap();
        let out = regions
            .output_place("y", &mut place("r", 8, 4))
            .unwrap()
            .unwrap();
        out.write(8, |dst| dst.fill(0xAB)).unwrap();
        assert!(out.write(9, |dst| dst.fill(0)).is_err());
        let bytes = std::fs::read(key_path(&object.0).unwrap()).unwrap();
        assert_eq!(&bytes[4..12], &[0xAB; 8]);
        assert_eq!(bytes[3], 3);
        assert_eq!(bytes[12], 12);
    }

    #[test]
    fn off_refuses_every_use() {
        let object = Object::new("off", 8);
        let regions = registry();
        regions.allow(false);
        assert!(regions.register("r", &object.0, 0, 8).is_err());
        assert!(regions.input_values("x", &mut place("r", 1, 0)).is_err());
        assert!(regions
            .input_values("x", &mut Parameters::new())
            .unwrap()
            .is_none());
    }

    #[test]
    fn a_region_without_its_size_is_refused() {
        let regions = registry();
        let mut params = Parameters::new();
        params.insert(REGION.into(), ParamValue::String("r".into()));
        assert!(regions.input_values("x", &mut params).is_err());
        let mut params = Parameters::new();
        params.insert(BYTE_SIZE.into(), ParamValue::Int64(4));
        assert!(regions.input_values("x", &mut params).is_err());
    }
}
