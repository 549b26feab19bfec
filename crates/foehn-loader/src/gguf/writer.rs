//! The GGUF writer: metadata and tensors in, a version-3 file out.
//!
//! Everything is validated when it is added, so writing can only fail on I/O.

use std::borrow::Cow;
use std::collections::HashSet;
use std::io::Write;
use std::path::Path;

use foehn_kernels::GgmlType;

use super::tensor::data_size;
use super::value::{Metadata, Value};
use super::{
    ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUF_VERSION, MAX_ARRAY_DEPTH, MAX_DIMS,
};
use crate::{LoadError, Result};

/// A tensor waiting to be written; the data is borrowed (e.g. from a mapped
/// `GgufFile`) or owned.
struct PendingTensor<'a> {
    name: String,
    ty: GgmlType,
    shape: Vec<u64>,
    data: Cow<'a, [u8]>,
}

/// Builds a GGUF v3 file: metadata in insertion order, then tensors in
/// insertion order, each aligned to `general.alignment` (default 32) and
/// padded with zeros.
#[derive(Default)]
pub struct GgufWriter<'a> {
    metadata: Metadata,
    tensors: Vec<PendingTensor<'a>>,
    names: HashSet<String>,
}

impl<'a> GgufWriter<'a> {
    /// An empty file: no metadata, no tensors.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a metadata key. Errors: a duplicate key, an array whose elements do
    /// not all have its element type, arrays nested deeper than the reader
    /// accepts, or a `general.alignment` that is not a `u32` power of two.
    pub fn add_metadata(&mut self, key: impl Into<String>, value: Value) -> Result<()> {
        let key = key.into();
        check_value(&key, &value, 0)?;
        if key == ALIGNMENT_KEY && !matches!(value, Value::U32(a) if a.is_power_of_two()) {
            return Err(LoadError::WrongType {
                key,
                expected: "u32 power of two",
                found: format!("{} {value:?}", value.type_name()),
            });
        }
        self.metadata.insert(key, value)
    }

    /// Adds a tensor. `shape` is in ggml order (`shape[0]` is the row length, at
    /// most 4 dimensions, none 0) and `data` must hold exactly
    /// `row_bytes(shape[0]) * shape[1..].product()` bytes.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        ty: GgmlType,
        shape: &[u64],
        data: impl Into<Cow<'a, [u8]>>,
    ) -> Result<()> {
        let name = name.into();
        let data = data.into();
        let bad = |reason: String| LoadError::BadTensor {
            name: name.clone(),
            reason,
        };
        if self.names.contains(&name) {
            return Err(bad("duplicate tensor name".to_string()));
        }
        if shape.len() > MAX_DIMS {
            return Err(bad(format!(
                "{} dimensions; GGUF allows at most {MAX_DIMS}",
                shape.len()
            )));
        }
        if let Some(d) = shape.iter().position(|&d| d == 0) {
            return Err(bad(format!("dimension {d} is 0")));
        }
        let expected = data_size(ty, shape).map_err(bad)?;
        if data.len() as u64 != expected {
            return Err(bad(format!(
                "{} bytes of data, but {ty} with shape {shape:?} needs {expected}",
                data.len()
            )));
        }
        self.names.insert(name.clone());
        self.tensors.push(PendingTensor {
            name,
            ty,
            shape: shape.to_vec(),
            data,
        });
        Ok(())
    }

    /// The metadata added so far.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The data alignment the file will use.
    pub fn alignment(&self) -> u64 {
        match self.metadata.get(ALIGNMENT_KEY) {
            Some(Value::U32(a)) => u64::from(*a),
            _ => DEFAULT_ALIGNMENT,
        }
    }

    /// Writes the file to `w`; returns the number of bytes written.
    pub fn write_to(&self, w: &mut impl Write) -> std::io::Result<u64> {
        let alignment = self.alignment();
        // Header, metadata and tensor infos are many small pieces: build them in
        // memory and write them at once, so an unbuffered `w` stays fast.
        let mut head = Vec::new();
        head.extend_from_slice(&GGUF_MAGIC);
        head.extend_from_slice(&GGUF_VERSION.to_le_bytes());
        head.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        head.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in self.metadata.iter() {
            put_str(&mut head, key);
            head.extend_from_slice(&(value.value_type() as u32).to_le_bytes());
            put_value(&mut head, value);
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            put_str(&mut head, &t.name);
            head.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
            for d in &t.shape {
                head.extend_from_slice(&d.to_le_bytes());
            }
            head.extend_from_slice(&t.ty.id().to_le_bytes());
            head.extend_from_slice(&offset.to_le_bytes());
            offset = (offset + t.data.len() as u64).next_multiple_of(alignment);
        }
        w.write_all(&head)?;
        let mut written = head.len() as u64;
        written += write_padding(w, written, alignment)?;
        for t in &self.tensors {
            w.write_all(&t.data)?;
            written += t.data.len() as u64;
            written += write_padding(w, written, alignment)?;
        }
        Ok(written)
    }

    /// Writes the file to `path` (created or truncated).
    pub fn write_file(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let io = |source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::create(path).map_err(io)?;
        let mut w = std::io::BufWriter::new(file);
        self.write_to(&mut w).map_err(io)?;
        w.flush().map_err(io)
    }
}

/// Arrays must be homogeneous and nested no deeper than the reader accepts.
fn check_value(key: &str, value: &Value, depth: usize) -> Result<()> {
    let Value::Array(elem, items) = value else {
        return Ok(());
    };
    if depth >= MAX_ARRAY_DEPTH {
        return Err(LoadError::WrongType {
            key: key.to_string(),
            expected: "arrays nested at most 8 deep",
            found: "deeper nesting".to_string(),
        });
    }
    for item in items {
        if item.value_type() != *elem {
            return Err(LoadError::WrongType {
                key: key.to_string(),
                expected: "array elements of the array's element type",
                found: format!("{} in {}", item.type_name(), value.type_name()),
            });
        }
        check_value(key, item, depth + 1)?;
    }
    Ok(())
}

/// Writes zeros from `pos` up to the next multiple of `alignment`, in small
/// chunks (the alignment may be as large as 2^31); returns how many.
fn write_padding(w: &mut impl Write, pos: u64, alignment: u64) -> std::io::Result<u64> {
    const ZEROS: [u8; 4096] = [0; 4096];
    let pad = pos.next_multiple_of(alignment) - pos;
    let mut left = pad;
    while left > 0 {
        let n = left.min(ZEROS.len() as u64);
        w.write_all(&ZEROS[..n as usize])?;
        left -= n;
    }
    Ok(pad)
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::U8(v) => out.push(*v),
        Value::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::Bool(v) => out.push(u8::from(*v)),
        Value::String(s) => put_str(out, s),
        Value::Array(elem, items) => {
            out.extend_from_slice(&(*elem as u32).to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                put_value(out, item);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::gguf::{GgufFile, ValueType};

    fn to_bytes(w: &GgufWriter<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        let n = w.write_to(&mut out).unwrap();
        assert_eq!(n, out.len() as u64);
        out
    }

    /// One key of every value type, nested and empty arrays included.
    fn every_value() -> Vec<(&'static str, Value)> {
        use Value as V;
        vec![
            ("u8", V::U8(200)),
            ("i8", V::I8(-100)),
            ("u16", V::U16(60000)),
            ("i16", V::I16(-30000)),
            ("u32", V::U32(4_000_000_000)),
            ("i32", V::I32(-2_000_000_000)),
            ("f32", V::F32(-1.5e-7)),
            ("bool.t", V::Bool(true)),
            ("bool.f", V::Bool(false)),
            ("string", V::String("héllo ▁wörld <0x0A>".into())),
            ("string.empty", V::String(String::new())),
            ("u64", V::U64(u64::MAX - 1)),
            ("i64", V::I64(i64::MIN + 1)),
            ("f64", V::F64(std::f64::consts::PI)),
            (
                "arr.u8",
                V::Array(ValueType::U8, vec![V::U8(1), V::U8(2), V::U8(255)]),
            ),
            (
                "arr.i32",
                V::Array(ValueType::I32, vec![V::I32(-1), V::I32(7)]),
            ),
            (
                "arr.f32",
                V::Array(ValueType::F32, vec![V::F32(0.25), V::F32(-3.0)]),
            ),
            (
                "arr.bool",
                V::Array(ValueType::Bool, vec![V::Bool(true), V::Bool(false)]),
            ),
            (
                "arr.str",
                V::Array(
                    ValueType::String,
                    vec![V::String("a".into()), V::String("".into())],
                ),
            ),
            ("arr.empty", V::Array(ValueType::U64, vec![])),
            ("arr.empty.arr", V::Array(ValueType::Array, vec![])),
            (
                "arr.nested",
                V::Array(
                    ValueType::Array,
                    vec![
                        V::Array(ValueType::I16, vec![V::I16(-5)]),
                        V::Array(ValueType::String, vec![]),
                        V::Array(
                            ValueType::Array,
                            vec![V::Array(ValueType::F64, vec![V::F64(1e300), V::F64(-0.0)])],
                        ),
                    ],
                ),
            ),
        ]
    }

    fn bytes(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    fn sample_writer(alignment: Option<u32>) -> GgufWriter<'static> {
        let mut w = GgufWriter::new();
        if let Some(a) = alignment {
            w.add_metadata(ALIGNMENT_KEY, Value::U32(a)).unwrap();
        }
        for (k, v) in every_value() {
            w.add_metadata(k, v).unwrap();
        }
        w.add_tensor("f32", GgmlType::F32, &[3, 5], bytes(60, 1))
            .unwrap();
        w.add_tensor("f16.1d", GgmlType::F16, &[7], bytes(14, 2))
            .unwrap();
        w.add_tensor("q4_0", GgmlType::Q4_0, &[64, 2, 3], bytes(2 * 18 * 6, 3))
            .unwrap();
        w.add_tensor("q4_k", GgmlType::Q4_K, &[256, 3], bytes(144 * 3, 4))
            .unwrap();
        w.add_tensor("q8_0.4d", GgmlType::Q8_0, &[32, 1, 2, 2], bytes(34 * 4, 5))
            .unwrap();
        w.add_tensor("bf16.scalar", GgmlType::BF16, &[], bytes(2, 6))
            .unwrap();
        w
    }

    fn assert_round_trip(w: &GgufWriter<'_>, alignment: u64) {
        let out = to_bytes(w);
        assert_eq!(out.len() as u64 % alignment, 0);
        let f = GgufFile::from_bytes(out).unwrap();
        assert_eq!(f.version(), 3);
        assert_eq!(f.alignment(), alignment);
        assert_eq!(f.data_offset() % alignment, 0);
        assert_eq!(f.metadata(), w.metadata());
        assert_eq!(f.tensors().len(), w.tensors.len());
        for (info, t) in f.tensors().iter().zip(&w.tensors) {
            assert_eq!(info.name, t.name);
            assert_eq!(info.ggml_type(), Some(t.ty));
            assert_eq!(info.offset % alignment, 0);
            let view = f.tensor(&t.name).unwrap();
            assert_eq!(view.ty, t.ty);
            assert_eq!(view.shape, t.shape.as_slice());
            assert_eq!(view.data, &*t.data);
        }
    }

    #[test]
    fn every_value_type_and_tensor_round_trips() {
        assert_round_trip(&sample_writer(None), DEFAULT_ALIGNMENT);
        assert_round_trip(&sample_writer(Some(64)), 64);
        assert_round_trip(&sample_writer(Some(1)), 1);
        assert_round_trip(&sample_writer(Some(1 << 20)), 1 << 20);
        assert_round_trip(&GgufWriter::new(), DEFAULT_ALIGNMENT);
    }

    #[test]
    fn metadata_keeps_insertion_order() {
        let f = GgufFile::from_bytes(to_bytes(&sample_writer(None))).unwrap();
        let keys: Vec<&str> = f.metadata().iter().map(|(k, _)| k).collect();
        let expected: Vec<&str> = every_value().iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, expected);
    }

    #[test]
    fn rejects_bad_input() {
        let mut w = GgufWriter::new();
        w.add_metadata("k", Value::U8(1)).unwrap();
        assert!(w
            .add_metadata("k", Value::U8(2))
            .unwrap_err()
            .to_string()
            .contains("duplicate"));
        let mixed = Value::Array(ValueType::U8, vec![Value::U8(1), Value::I8(1)]);
        assert!(matches!(
            w.add_metadata("mixed", mixed),
            Err(LoadError::WrongType { .. })
        ));
        let mut deep = Value::Array(ValueType::U8, vec![]);
        for _ in 0..MAX_ARRAY_DEPTH {
            deep = Value::Array(ValueType::Array, vec![deep]);
        }
        assert!(matches!(
            w.add_metadata("deep", deep),
            Err(LoadError::WrongType { .. })
        ));
        for bad in [Value::U32(0), Value::U32(48), Value::U64(32)] {
            assert!(w.add_metadata(ALIGNMENT_KEY, bad).is_err());
        }

        let err = w
            .add_tensor("t", GgmlType::F32, &[3], vec![0; 11])
            .unwrap_err();
        assert!(err.to_string().contains("needs 12"), "{err}");
        let err = w
            .add_tensor("t", GgmlType::Q4_0, &[33], vec![0; 18])
            .unwrap_err();
        assert!(err.to_string().contains("block size"), "{err}");
        let err = w
            .add_tensor("t", GgmlType::F32, &[1, 1, 1, 1, 1], vec![0; 4])
            .unwrap_err();
        assert!(err.to_string().contains("at most 4"), "{err}");
        let err = w
            .add_tensor("t", GgmlType::F32, &[2, 0], Vec::new())
            .unwrap_err();
        assert!(err.to_string().contains("is 0"), "{err}");
        w.add_tensor("t", GgmlType::F32, &[1], vec![0; 4]).unwrap();
        let err = w
            .add_tensor("t", GgmlType::F32, &[1], vec![0; 4])
            .unwrap_err();
        assert!(err.to_string().contains("duplicate"), "{err}");
    }

    #[test]
    fn write_file_and_open_round_trip() {
        let path =
            std::env::temp_dir().join(format!("foehn-gguf-writer-{}.gguf", std::process::id()));
        let w = sample_writer(None);
        w.write_file(&path).unwrap();
        let f = GgufFile::open(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(f.metadata(), w.metadata());
        assert_eq!(f.tensor("q4_k").unwrap().data, &*w.tensors[3].data);
    }

    /// Rewrites a real llama.cpp-produced file: re-reads identically, and since
    /// gguf-py lays files out the same way, comes back byte for byte.
    #[test]
    fn tiny_mistral_rewrites_identically() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/tiny-mistral/gguf/tiny-mistral-Q4_K_M.gguf");
        let original = GgufFile::open(&path).unwrap();
        let mut w = GgufWriter::new();
        for (k, v) in original.metadata().iter() {
            w.add_metadata(k, v.clone()).unwrap();
        }
        for t in original.tensors() {
            let view = original.tensor(&t.name).unwrap();
            w.add_tensor(view.name, view.ty, view.shape, view.data)
                .unwrap();
        }
        let out = to_bytes(&w);
        let copy = GgufFile::from_bytes(out.clone()).unwrap();
        assert_eq!(copy.metadata(), original.metadata());
        assert_eq!(copy.tensors(), original.tensors());
        assert_eq!(copy.data_offset(), original.data_offset());
        for t in original.tensors() {
            assert_eq!(
                copy.tensor(&t.name).unwrap().data,
                original.tensor(&t.name).unwrap().data
            );
        }
        assert_eq!(out, std::fs::read(&path).unwrap());
    }
}
