//! Hugging Face safetensors: one file or a sharded set with its
//! `model.safetensors.index.json`, memory-mapped and read without copying.
//!
//! The JSON header is parsed and validated by the `safetensors` crate's
//! `Metadata` deserializer (offsets contiguous from 0 with no gap or overlap, each
//! byte range matching its shape × dtype, no arithmetic overflow). This module
//! adds what the crate leaves out or gets wrong: the 8-byte framing with the
//! crate's 100 MB header limit, an overflow-safe check that the data ends exactly
//! at the end of the file (see `parse_file`), a file too short to map, the shard
//! index (shard paths confined to the index's folder, every listed tensor present
//! in its shard), and dtype filtering at access time.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::path::{Component, Path, PathBuf};

use memmap2::Mmap;
// `::` because this module shares the crate's name.
use ::safetensors::tensor::Metadata as StMetadata;
use ::safetensors::Dtype;
use serde::Deserialize;

use crate::{LoadError, Result};

/// Bytes of the little-endian `u64` header length that opens every file.
const HEADER_LEN_BYTES: usize = 8;

/// Largest JSON header accepted (the `safetensors` crate's own limit).
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// File name of the shard index in a Hugging Face model folder.
pub const INDEX_FILE_NAME: &str = "model.safetensors.index.json";

/// File name of an unsharded model in a Hugging Face model folder.
pub const SINGLE_FILE_NAME: &str = "model.safetensors";

/// Element type of a tensor foehn can compute with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StDtype {
    /// IEEE 754 single precision.
    F32,
    /// IEEE 754 half precision.
    F16,
    /// bfloat16 (the upper half of an `f32`).
    BF16,
    /// 8-bit float E4M3 ("fn": no infinities, 0x7F/0xFF are NaN), the
    /// weights of FP8 checkpoints, scaled by a `weight_scale_inv` tensor.
    F8E4M3,
}

impl StDtype {
    /// Bytes per element.
    pub fn size_in_bytes(self) -> usize {
        match self {
            StDtype::F32 => 4,
            StDtype::F16 | StDtype::BF16 => 2,
            StDtype::F8E4M3 => 1,
        }
    }

    fn from_safetensors(dtype: Dtype) -> Option<Self> {
        match dtype {
            Dtype::F32 => Some(StDtype::F32),
            Dtype::F16 => Some(StDtype::F16),
            Dtype::BF16 => Some(StDtype::BF16),
            Dtype::F8_E4M3 => Some(StDtype::F8E4M3),
            _ => None,
        }
    }
}

/// A borrowed view of one tensor: its description and its raw little-endian bytes
/// in C (row-major) order.
///
/// `data` points into the memory map and is only byte-aligned: safetensors puts
/// no alignment requirement on the header length, so read elements with
/// `from_le_bytes` rather than casting the slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StTensor<'a> {
    /// Tensor name as stored in the file (Hugging Face naming, e.g. `model.norm.weight`).
    pub name: &'a str,
    /// Element type.
    pub dtype: StDtype,
    /// Dimensions, outermost first (`[rows, cols]` for a linear layer's weight).
    pub shape: &'a [usize],
    /// `shape.iter().product() * dtype.size_in_bytes()` bytes.
    pub data: &'a [u8],
}

impl StTensor<'_> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The bytes of one file: memory-mapped, or owned (for [`SafetensorsModel::from_bytes`]).
#[derive(Debug)]
enum Bytes {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// One safetensors file of the model.
#[derive(Debug)]
struct Shard {
    path: PathBuf,
    bytes: Bytes,
}

/// Where a tensor lives: shard, type, shape and its absolute byte range in the shard.
#[derive(Debug)]
struct Entry {
    shard: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// A safetensors model, single-file or sharded, with every file memory-mapped.
///
/// Tensors are listed whatever their dtype; [`tensor`](Self::tensor) hands out
/// F32, F16 and BF16 ones and refuses the others with
/// [`LoadError::UnsupportedTensorType`].
#[derive(Debug)]
pub struct SafetensorsModel {
    shards: Vec<Shard>,
    tensors: BTreeMap<String, Entry>,
}

// The model is shared read-only between threads (one mmap, many readers).
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<SafetensorsModel>();
};

/// The parts of `model.safetensors.index.json` the loader uses.
#[derive(Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

impl SafetensorsModel {
    /// Opens a model from a `.safetensors` file, a `*.safetensors.index.json`
    /// shard index, or a folder holding either.
    ///
    /// In a folder, `model.safetensors.index.json` is preferred, then
    /// `model.safetensors`, then the only `*.safetensors.index.json` or the only
    /// `*.safetensors` file; anything else is an error naming the folder.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path).map_err(|e| io_err(path, e))?;
        if meta.is_dir() {
            let file = find_in_dir(path)?;
            return Self::open(file);
        }
        let is_index = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(".json"));
        if is_index {
            Self::open_index(path)
        } else {
            Self::open_single(path)
        }
    }

    /// Reads a single safetensors file held in memory (for tests and fuzzing).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        let path = PathBuf::from("<memory>");
        let entries = parse_file(&path, &bytes)?;
        let tensors = entries
            .into_iter()
            .map(|(name, raw)| (name, raw.into_entry(0)))
            .collect();
        Ok(Self {
            shards: vec![Shard {
                path,
                bytes: Bytes::Owned(bytes),
            }],
            tensors,
        })
    }

    fn open_single(path: &Path) -> Result<Self> {
        let bytes = map_file(path)?;
        let entries = parse_file(path, bytes.as_slice())?;
        let tensors = entries
            .into_iter()
            .map(|(name, raw)| (name, raw.into_entry(0)))
            .collect();
        Ok(Self {
            shards: vec![Shard {
                path: path.to_path_buf(),
                bytes,
            }],
            tensors,
        })
    }

    fn open_index(index_path: &Path) -> Result<Self> {
        let text = std::fs::read(index_path).map_err(|e| io_err(index_path, e))?;
        let index: ShardIndex =
            serde_json::from_slice(&text).map_err(|source| LoadError::Json {
                path: index_path.to_path_buf(),
                source,
            })?;
        if index.weight_map.is_empty() {
            return Err(malformed(
                index_path,
                "the shard index's weight_map lists no tensors",
            ));
        }
        let dir = index_path.parent().unwrap_or(Path::new("."));

        // Each distinct shard file once, in file-name order.
        let files: BTreeSet<&str> = index.weight_map.values().map(String::as_str).collect();
        let shard_ids: BTreeMap<&str, usize> =
            files.iter().enumerate().map(|(i, &f)| (f, i)).collect();
        let mut shards = Vec::with_capacity(files.len());
        let mut contents: Vec<HashMap<String, RawEntry>> = Vec::with_capacity(files.len());
        for file in files {
            let path = shard_path(index_path, dir, file)?;
            let bytes = map_file(&path)?;
            contents.push(parse_file(&path, bytes.as_slice())?.into_iter().collect());
            shards.push(Shard { path, bytes });
        }

        let mut tensors = BTreeMap::new();
        for (name, file) in &index.weight_map {
            let shard = shard_ids[file.as_str()];
            let raw = contents[shard].remove(name).ok_or_else(|| {
                malformed(
                    index_path,
                    format!(
                        "the index maps tensor '{name}' to '{file}', which does not contain it"
                    ),
                )
            })?;
            tensors.insert(name.clone(), raw.into_entry(shard));
        }
        Ok(Self { shards, tensors })
    }

    /// Names of all tensors, whatever their dtype, sorted by name (byte order).
    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether the model has no tensors.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Whether a tensor of that name exists (whatever its dtype).
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The files backing the model (one, or one per shard in shard-name order).
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.shards.iter().map(|s| s.path.as_path())
    }

    /// A zero-copy view of a tensor.
    ///
    /// Errors: [`LoadError::MissingTensor`] when absent,
    /// [`LoadError::UnsupportedTensorType`] when stored as anything but F32, F16 or BF16.
    pub fn tensor(&self, name: &str) -> Result<StTensor<'_>> {
        let (key, entry) = self
            .tensors
            .get_key_value(name)
            .ok_or_else(|| LoadError::MissingTensor(name.to_string()))?;
        let dtype = StDtype::from_safetensors(entry.dtype).ok_or_else(|| {
            LoadError::UnsupportedTensorType {
                name: name.to_string(),
                ty: entry.dtype.to_string(),
            }
        })?;
        let shard = self
            .shards
            .get(entry.shard)
            .ok_or_else(|| LoadError::BadTensor {
                name: name.to_string(),
                reason: "refers to a shard that is not open".to_string(),
            })?;
        // Ranges were checked against the buffer at parse time; check again rather than index.
        let data = shard
            .bytes
            .as_slice()
            .get(entry.start..entry.end)
            .ok_or_else(|| LoadError::BadTensor {
                name: name.to_string(),
                reason: format!(
                    "byte range {}..{} is outside its file",
                    entry.start, entry.end
                ),
            })?;
        Ok(StTensor {
            name: key,
            dtype,
            shape: &entry.shape,
            data,
        })
    }
}

/// A tensor's description as parsed from one file, before it is assigned a shard.
struct RawEntry {
    dtype: Dtype,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

impl RawEntry {
    fn into_entry(self, shard: usize) -> Entry {
        Entry {
            shard,
            dtype: self.dtype,
            shape: self.shape,
            start: self.start,
            end: self.end,
        }
    }
}

/// Parses and validates one file's header; returns each tensor with its absolute byte range.
///
/// This is `SafeTensors::read_metadata` with its last step made overflow-safe:
/// in safetensors 0.6 that function ends with an unchecked
/// `data_len + 8 + header_len`, and offsets near `usize::MAX` (a few hundred
/// bytes of JSON) make it panic in builds with overflow checks (tests, fuzzing).
/// So the 8-byte framing is read here, the JSON is parsed by the crate's own
/// `Metadata` deserializer (which runs all of its offset/shape/dtype validation),
/// and the end of the data is compared with the file length using checked
/// arithmetic. No JSON is parsed by hand.
fn parse_file(path: &Path, bytes: &[u8]) -> Result<Vec<(String, RawEntry)>> {
    let Some(len_bytes) = bytes.get(..HEADER_LEN_BYTES) else {
        return Err(malformed(
            path,
            format!(
                "{} bytes: too short for the 8-byte header length",
                bytes.len()
            ),
        ));
    };
    let mut len_le = [0u8; HEADER_LEN_BYTES];
    len_le.copy_from_slice(len_bytes);
    let header_len = u64::from_le_bytes(len_le);
    if header_len > MAX_HEADER_BYTES {
        return Err(malformed(
            path,
            format!("header length {header_len} exceeds the {MAX_HEADER_BYTES}-byte limit"),
        ));
    }
    // header_len <= 1e8, so the conversion and the addition cannot overflow.
    let data_start = HEADER_LEN_BYTES + header_len as usize;
    let Some(header) = bytes.get(HEADER_LEN_BYTES..data_start) else {
        return Err(malformed(
            path,
            format!(
                "header length {header_len} runs past the end of the file ({} bytes)",
                bytes.len()
            ),
        ));
    };
    let metadata: StMetadata = serde_json::from_slice(header)
        .map_err(|e| malformed(path, format!("invalid header: {e}")))?;
    let data_end = metadata.data_len().checked_add(data_start);
    if data_end != Some(bytes.len()) {
        return Err(malformed(
            path,
            format!(
                "tensor data should end at byte {} but the file has {} bytes",
                data_end.map_or_else(|| "past usize::MAX".to_string(), |e| e.to_string()),
                bytes.len()
            ),
        ));
    }
    let tensors = metadata.tensors();
    let mut out = Vec::with_capacity(tensors.len());
    for (name, info) in tensors {
        let (start, end) = info.data_offsets;
        // The crate checked start <= end <= data_len, and data_start + data_len == bytes.len().
        let (Some(start), Some(end)) = (data_start.checked_add(start), data_start.checked_add(end))
        else {
            return Err(malformed(
                path,
                format!("tensor '{name}': data offsets overflow"),
            ));
        };
        if start > end || end > bytes.len() {
            return Err(malformed(
                path,
                format!(
                    "tensor '{name}': bytes {start}..{end} are outside the file ({} bytes)",
                    bytes.len()
                ),
            ));
        }
        out.push((
            name,
            RawEntry {
                dtype: info.dtype,
                shape: info.shape.clone(),
                start,
                end,
            },
        ));
    }
    Ok(out)
}

/// Memory-maps a file, refusing one too short to hold a header length.
fn map_file(path: &Path) -> Result<Bytes> {
    let file = File::open(path).map_err(|e| io_err(path, e))?;
    let len = file.metadata().map_err(|e| io_err(path, e))?.len();
    if len < HEADER_LEN_BYTES as u64 {
        return Err(malformed(
            path,
            format!("{len} bytes: too short for the 8-byte header length"),
        ));
    }
    // SAFETY: the map is read-only and lives as long as the model. Like every
    // mmap-based loader we rely on the file not being truncated or rewritten
    // while it is open; that is the caller's contract for model files.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| io_err(path, e))?;
    Ok(Bytes::Mapped(map))
}

/// Resolves a shard file named in an index, refusing paths that leave the index's folder.
fn shard_path(index_path: &Path, dir: &Path, file: &str) -> Result<PathBuf> {
    let rel = Path::new(file);
    let plain = !file.is_empty() && rel.components().all(|c| matches!(c, Component::Normal(_)));
    if !plain {
        return Err(malformed(
            index_path,
            format!("shard file '{file}' is not a relative path inside the index's folder"),
        ));
    }
    Ok(dir.join(rel))
}

/// Picks the model file in a folder (see [`SafetensorsModel::open`]).
fn find_in_dir(dir: &Path) -> Result<PathBuf> {
    for name in [INDEX_FILE_NAME, SINGLE_FILE_NAME] {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    let mut indexes = Vec::new();
    let mut singles = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".safetensors.index.json") {
            indexes.push(entry.path());
        } else if name.ends_with(".safetensors") {
            singles.push(entry.path());
        }
    }
    match (indexes.len(), singles.len()) {
        (1, _) => Ok(indexes.swap_remove(0)),
        (0, 1) => Ok(singles.swap_remove(0)),
        (i, s) => Err(io_err(
            dir,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!(
                    "no {INDEX_FILE_NAME} or {SINGLE_FILE_NAME} here, and {i} other index files and \
                     {s} other .safetensors files (need exactly one)"
                ),
            ),
        )),
    }
}

fn io_err(path: &Path, source: std::io::Error) -> LoadError {
    LoadError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn malformed(path: &Path, reason: impl Into<String>) -> LoadError {
    LoadError::MalformedSafetensors {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}
