//! Crafted GGUF files: every malformation the reader must reject with an error
//! (never a panic, an abort, a huge allocation or a hang), built byte by byte.

use foehn_kernels::GgmlType;
use foehn_loader::gguf::{GgufWriter, Value, ValueType};
use foehn_loader::{GgufFile, LoadError};

/// A little-endian byte builder for hand-made GGUF files.
#[derive(Clone, Default)]
struct B(Vec<u8>);

impl B {
    /// Magic, version, tensor count, key count.
    fn header(version: u32, n_tensors: u64, n_kv: u64) -> B {
        B::default()
            .raw(b"GGUF")
            .u32(version)
            .u64(n_tensors)
            .u64(n_kv)
    }
    fn raw(mut self, bytes: &[u8]) -> B {
        self.0.extend_from_slice(bytes);
        self
    }
    fn u8(self, v: u8) -> B {
        self.raw(&[v])
    }
    fn u32(self, v: u32) -> B {
        self.raw(&v.to_le_bytes())
    }
    fn u64(self, v: u64) -> B {
        self.raw(&v.to_le_bytes())
    }
    fn str(self, s: &str) -> B {
        self.bstr(s.as_bytes())
    }
    fn bstr(self, s: &[u8]) -> B {
        self.u64(s.len() as u64).raw(s)
    }
    /// A key with a value type tag; the value bytes follow.
    fn key(self, key: &str, tag: u32) -> B {
        self.str(key).u32(tag)
    }
    /// A tensor info.
    fn tensor(self, name: &str, shape: &[u64], ty: u32, offset: u64) -> B {
        let mut b = self.str(name).u32(shape.len() as u32);
        for &d in shape {
            b = b.u64(d);
        }
        b.u32(ty).u64(offset)
    }
    /// Zero padding up to a multiple of `align`.
    fn pad(self, align: usize) -> B {
        let n = self.0.len().next_multiple_of(align) - self.0.len();
        self.raw(&vec![0; n])
    }
    /// `n` bytes of tensor data.
    fn data(self, n: usize) -> B {
        self.raw(&vec![0x11; n])
    }
    fn len(&self) -> usize {
        self.0.len()
    }
    fn open(self) -> Result<GgufFile, LoadError> {
        GgufFile::from_bytes(self.0)
    }
    fn err(self) -> LoadError {
        match self.open() {
            Ok(f) => panic!("crafted file was accepted: {f:?}"),
            Err(e) => e,
        }
    }
}

/// The error's message, checked to contain every fragment.
fn assert_msg(e: &LoadError, fragments: &[&str]) {
    let msg = e.to_string();
    for f in fragments {
        assert!(msg.contains(f), "message {msg:?} lacks {f:?}");
    }
}

/// A `MalformedGguf` at exactly `offset` whose message contains `fragment`.
fn assert_malformed_at(e: &LoadError, offset: u64, fragment: &str) {
    match e {
        LoadError::MalformedGguf { offset: o, reason } => {
            assert_eq!(*o, offset, "offset of {reason:?}");
            assert!(
                reason.contains(fragment),
                "reason {reason:?} lacks {fragment:?}"
            );
        }
        e => panic!("expected MalformedGguf at {offset}, got {e:?}"),
    }
}

/// A `BadTensor` about `name` whose message contains every fragment.
fn assert_bad_tensor(e: &LoadError, name: &str, fragments: &[&str]) {
    match e {
        LoadError::BadTensor { name: n, .. } => assert_eq!(n, name, "{e}"),
        e => panic!("expected BadTensor for {name}, got {e:?}"),
    }
    assert_msg(e, fragments);
}

/// One F32 tensor of `shape` at offset 0, with `data` bytes after the header.
fn one_tensor(shape: &[u64], ty: u32, offset: u64, data: usize) -> B {
    B::header(3, 1, 0)
        .tensor("w", shape, ty, offset)
        .pad(32)
        .data(data)
}

// ---- header ----------------------------------------------------------------

#[test]
fn valid_minimal_files_open() {
    let f = B::header(3, 0, 0).open().unwrap();
    assert_eq!(
        (f.version(), f.tensors().len(), f.metadata().len()),
        (3, 0, 0)
    );
    assert_eq!(f.alignment(), 32);
    let f = B::header(2, 0, 1).key("a", 4).u32(7).open().unwrap();
    assert_eq!(f.version(), 2);
    assert_eq!(f.metadata().get_usize("a").unwrap(), 7);
    let f = one_tensor(&[4, 2], 0, 0, 32).open().unwrap();
    assert_eq!(f.data_offset(), 96); // 24 header + 41 info, padded to 32
    assert_eq!(f.tensor("w").unwrap().data, &[0x11; 32]);
}

#[test]
fn bad_magic() {
    let e = B::default().raw(b"GGML").u32(3).u64(0).u64(0).err();
    assert_malformed_at(&e, 0, "not a GGUF file");
    assert_malformed_at(&B::default().err(), 0, "file ends");
    assert_malformed_at(&B::default().raw(b"GG").err(), 0, "file ends");
}

#[test]
fn unsupported_versions() {
    for v in [0, 1, 4, 0xFFFF_FFFF] {
        assert!(matches!(B::header(v, 0, 0).err(), LoadError::UnsupportedGgufVersion(x) if x == v));
    }
}

#[test]
fn big_endian_file_is_named() {
    for v in [2u32, 3] {
        let e = B::default()
            .raw(b"GGUF")
            .raw(&v.to_be_bytes())
            .u64(0)
            .u64(0)
            .err();
        assert_malformed_at(&e, 4, "big-endian");
    }
}

#[test]
fn truncated_header() {
    let full = B::header(3, 0, 0);
    for n in 0..full.len() {
        assert!(matches!(
            GgufFile::from_bytes(full.0[..n].to_vec()),
            Err(LoadError::MalformedGguf { .. })
        ));
    }
}

// ---- counts ----------------------------------------------------------------

#[test]
fn huge_kv_count() {
    let e = B::header(3, 0, u64::MAX).err();
    assert_malformed_at(&e, 16, "metadata key count");
    let e = B::header(3, 0, 2).key("a", 0).u8(1).err();
    assert_malformed_at(&e, 16, "metadata key count is 2");
    let e = B::header(3, 0, 2).key("a", 0).u8(1).key("b", 0).err();
    assert_malformed_at(&e, 24 + 14 + 13, "file ends inside a u8 value");
}

#[test]
fn huge_tensor_count() {
    let e = B::header(3, u64::MAX, 0).err();
    assert_malformed_at(&e, 8, "tensor count");
    let e = B::header(3, 1 << 40, 0).raw(&[0; 100]).err();
    assert_malformed_at(&e, 8, "tensor count");
}

#[test]
fn huge_array_counts() {
    for (tag, name) in [(4u32, "u32"), (8, "string"), (9, "array"), (7, "bool")] {
        let e = B::header(3, 0, 1)
            .key("a", 9)
            .u32(tag)
            .u64(1 << 60)
            .u32(0)
            .err();
        assert_malformed_at(&e, 24 + 9 + 4 + 4, "array length");
        let e = B::header(3, 0, 1).key("a", 9).u32(tag).u64(u64::MAX).err();
        assert_msg(&e, &["array length", "'a'"]);
        let _ = name;
    }
    // 3 u32 need 12 bytes; 11 remain
    let e = B::header(3, 0, 1)
        .key("a", 9)
        .u32(4)
        .u64(3)
        .raw(&[0; 11])
        .err();
    assert_msg(&e, &["array length is 3", "11 bytes remain"]);
}

// ---- strings ---------------------------------------------------------------

#[test]
fn string_longer_than_file() {
    let e = B::header(3, 0, 1).u64(1000).raw(b"abc").raw(&[0; 20]).err();
    assert_malformed_at(&e, 24, "longer than");
    let e = B::header(3, 0, 1).u64(u64::MAX).raw(&[0; 20]).err();
    assert_malformed_at(&e, 24, "longer than");
    let e = B::header(3, 0, 1).key("a", 8).u64(u64::MAX - 3).err();
    assert_malformed_at(&e, 24 + 9 + 4, "longer than");
}

#[test]
fn invalid_utf8() {
    let e = B::header(3, 0, 1).bstr(b"ab\xffc").u32(0).u8(0).err();
    assert_malformed_at(&e, 24 + 8 + 2, "metadata key is not valid UTF-8");
    let e = B::header(3, 0, 1).key("k", 8).bstr(b"\xc3").err();
    assert_malformed_at(&e, 24 + 9 + 4 + 8, "string value is not valid UTF-8");
    let e = B::header(3, 1, 0)
        .bstr(b"\xe2\x82")
        .u32(1)
        .u64(1)
        .u32(0)
        .u64(0)
        .err();
    assert_malformed_at(&e, 24 + 8, "tensor name is not valid UTF-8");
}

// ---- metadata --------------------------------------------------------------

#[test]
fn duplicate_keys() {
    let e = B::header(3, 0, 2).key("a", 0).u8(1).key("a", 0).u8(2).err();
    assert_malformed_at(&e, 24 + 9 + 4 + 1, "duplicate metadata key 'a'");
}

#[test]
fn unknown_value_type_tag() {
    let e = B::header(3, 0, 1).key("a", 13).u8(1).err();
    assert_malformed_at(&e, 24 + 9, "unknown metadata value type tag 13");
    let e = B::header(3, 0, 1).key("a", 9).u32(0xFFFF_FFFF).u64(0).err();
    assert_malformed_at(&e, 24 + 9 + 4, "unknown metadata value type tag 4294967295");
}

#[test]
fn bool_bytes_other_than_0_or_1() {
    for b in [2u8, 0xFF] {
        let e = B::header(3, 0, 1).key("flag", 7).u8(b).err();
        assert_malformed_at(&e, 24 + 12 + 4, "not 0 or 1");
        assert_msg(&e, &["'flag'"]);
    }
    let e = B::header(3, 0, 1)
        .key("a", 9)
        .u32(7)
        .u64(3)
        .u8(1)
        .u8(0)
        .u8(9)
        .err();
    assert_malformed_at(&e, 24 + 9 + 4 + 12 + 2, "bool value is byte 9");
}

/// `depth` levels of arrays around an empty u8 array.
fn nested(depth: usize) -> B {
    let mut b = B::header(3, 0, 1).key("deep", 9);
    for _ in 1..depth {
        b = b.u32(9).u64(1);
    }
    b.u32(0).u64(0)
}

#[test]
fn nesting_depth_is_limited() {
    let f = nested(8).open().unwrap();
    let mut v = f.metadata().get("deep").unwrap();
    for _ in 1..8 {
        v = &v.as_array().unwrap()[0];
    }
    assert_eq!(v, &Value::Array(ValueType::U8, vec![]));
    let e = nested(9).err();
    assert_msg(&e, &["nested more than 8 deep", "'deep'"]);
    let e = nested(100_000).err();
    assert_msg(&e, &["nested more than 8 deep"]);
}

#[test]
fn alignment_must_be_u32_power_of_two() {
    for a in [0u32, 3, 48, 0x8000_0001] {
        let e = B::header(3, 0, 1).key("general.alignment", 4).u32(a).err();
        assert_malformed_at(&e, 24 + 8 + 17 + 4, "power of two");
    }
    let e = B::header(3, 0, 1)
        .key("general.alignment", 10)
        .u64(32)
        .err();
    assert_malformed_at(&e, 24 + 8 + 17 + 4, "u32");
    let f = B::header(3, 1, 1)
        .key("general.alignment", 4)
        .u32(64)
        .tensor("w", &[1], 0, 0)
        .pad(64)
        .data(4)
        .open()
        .unwrap();
    assert_eq!(f.alignment(), 64);
    assert_eq!(f.data_offset() % 64, 0);
    assert!(f.data_offset() > 64);
    let f = B::header(3, 0, 1)
        .key("general.alignment", 4)
        .u32(1 << 31)
        .open()
        .unwrap();
    assert_eq!(f.alignment(), 1 << 31);
}

// ---- tensor infos ----------------------------------------------------------

#[test]
fn more_than_four_dims() {
    let e = one_tensor(&[1, 1, 1, 1, 1], 0, 0, 4).err();
    assert_bad_tensor(&e, "w", &["5 dimensions", "at most 4", "byte 24"]);
    let e = B::header(3, 1, 0)
        .str("w")
        .u32(u32::MAX)
        .raw(&[0; 64])
        .err();
    assert_bad_tensor(&e, "w", &["4294967295 dimensions"]);
}

#[test]
fn zero_dimension() {
    let e = one_tensor(&[4, 0], 0, 0, 16).err();
    assert_bad_tensor(&e, "w", &["dimension 1 is 0", "byte 24"]);
}

#[test]
fn element_count_overflow() {
    let e = one_tensor(&[1 << 32, 1 << 32], 0, 0, 0).err();
    assert_bad_tensor(&e, "w", &["overflows"]);
    // also for a type foehn does not know: the shape is checked regardless
    let e = one_tensor(&[u64::MAX, 2], 4, 0, 0).err();
    assert_bad_tensor(&e, "w", &["overflows"]);
    // fits in elements, but not in bytes
    let e = one_tensor(&[1 << 62, 2], 0, 0, 0).err();
    assert_bad_tensor(&e, "w", &["overflow"]);
}

#[test]
fn row_not_a_multiple_of_the_block_size() {
    let e = one_tensor(&[33, 2], GgmlType::Q4_0.id(), 0, 36).err();
    assert_bad_tensor(&e, "w", &["row length 33", "block size 32"]);
    let e = one_tensor(&[128, 2], GgmlType::Q4_K.id(), 0, 144).err();
    assert_bad_tensor(&e, "w", &["row length 128", "256"]);
}

#[test]
fn offset_not_aligned() {
    let e = one_tensor(&[4], 0, 4, 64).err();
    assert_bad_tensor(&e, "w", &["offset 4", "not a multiple of the alignment 32"]);
}

#[test]
fn offset_past_the_end() {
    let e = one_tensor(&[4], 0, 1 << 40, 16).err();
    assert_bad_tensor(&e, "w", &["offset 1099511627776", "past the end"]);
    let e = one_tensor(&[4], 0, u64::MAX - 31, 16).err();
    assert_bad_tensor(&e, "w", &["past the end"]);
    // unknown type: no size, but the start must still be inside the file
    let e = one_tensor(&[4], 4, 64, 32).err();
    assert_bad_tensor(&e, "w", &["offset 64", "past the end"]);
}

#[test]
fn data_runs_past_the_end() {
    let e = one_tensor(&[4, 2], 0, 0, 31).err();
    assert_bad_tensor(
        &e,
        "w",
        &["offset 0 (32 bytes)", "past the end", "31 bytes"],
    );
    let e = one_tensor(&[4, 2], 0, 0, 0).err();
    assert_bad_tensor(&e, "w", &["past the end"]);
}

#[test]
fn data_section_missing() {
    // the infos end at byte 61; the data section would start at 64
    let e = B::header(3, 1, 0).tensor("w", &[1], 0, 0).err();
    assert_msg(&e, &["file ends before its data section", "byte 64"]);
}

#[test]
fn overlapping_tensors() {
    let file = |off_b: u64| {
        B::header(3, 2, 0)
            .tensor("a", &[16], 0, 0)
            .tensor("b", &[8], 0, off_b)
            .pad(32)
            .data(128)
    };
    file(64).open().unwrap();
    let e = file(32).err();
    assert_bad_tensor(&e, "b", &["overlaps tensor 'a'", "offset 32"]);
    let e = file(0).err();
    assert_bad_tensor(&e, "b", &["overlaps tensor 'a'"]);
    // order in the file does not matter; unknown types occupy at least a byte
    let e = B::header(3, 2, 0)
        .tensor("late", &[8], 0, 64)
        .tensor("unknown", &[8], 4, 64)
        .pad(32)
        .data(128)
        .err();
    assert_msg(&e, &["overlaps", "offset 64"]);
}

#[test]
fn duplicate_tensor_names() {
    let e = B::header(3, 2, 0)
        .tensor("w", &[8], 0, 0)
        .tensor("w", &[8], 0, 32)
        .pad(32)
        .data(64)
        .err();
    assert_bad_tensor(&e, "w", &["duplicate tensor name"]);
}

#[test]
fn unknown_type_fails_at_use_not_at_open() {
    let f = B::header(3, 2, 0)
        .tensor("odd", &[7, 3], 31, 0)
        .tensor("ok", &[2], 0, 32)
        .pad(32)
        .data(64)
        .open()
        .unwrap();
    let odd = &f.tensors()[0];
    assert_eq!(
        (odd.type_id, odd.ggml_type(), odd.n_bytes),
        (31, None, None)
    );
    assert_eq!(odd.n_elements(), 21);
    match f.tensor("odd") {
        Err(LoadError::UnsupportedTensorType { name, ty }) => {
            assert_eq!(name, "odd");
            assert!(ty.contains("31"), "{ty}");
        }
        other => panic!("expected UnsupportedTensorType, got {other:?}"),
    }
    assert_eq!(f.tensor("ok").unwrap().data, &[0x11; 8]);
    assert!(matches!(f.tensor("absent"), Err(LoadError::MissingTensor(n)) if n == "absent"));
}

#[test]
fn error_names_the_key_of_a_bad_value() {
    let e = B::header(3, 0, 2)
        .key("fine", 4)
        .u32(1)
        .key("tokenizer.ggml.tokens", 9)
        .u32(8)
        .u64(2)
        .str("a")
        .err();
    assert_msg(&e, &["'tokenizer.ggml.tokens'", "array length is 2"]);
    let e = B::header(3, 0, 1)
        .key("tokenizer.ggml.tokens", 9)
        .u32(8)
        .u64(2)
        .str("a")
        .u64(9)
        .err();
    assert_msg(&e, &["'tokenizer.ggml.tokens'", "longer than"]);
}

// ---- every byte ------------------------------------------------------------

/// A small but complete file: every value type, nested arrays, several tensors.
fn small_valid_file() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", Value::String("llama".into()))
        .unwrap();
    w.add_metadata("general.alignment", Value::U32(16)).unwrap();
    w.add_metadata("b", Value::Bool(true)).unwrap();
    w.add_metadata("i8", Value::I8(-3)).unwrap();
    w.add_metadata("u16", Value::U16(9)).unwrap();
    w.add_metadata("i16", Value::I16(-9)).unwrap();
    w.add_metadata("f32", Value::F32(0.5)).unwrap();
    w.add_metadata("u64", Value::U64(1 << 40)).unwrap();
    w.add_metadata("i64", Value::I64(-1)).unwrap();
    w.add_metadata("f64", Value::F64(2.5)).unwrap();
    let strs = (0..4).map(|i| Value::String(format!("tok{i}"))).collect();
    w.add_metadata("tokens", Value::Array(ValueType::String, strs))
        .unwrap();
    w.add_metadata(
        "flags",
        Value::Array(ValueType::Bool, vec![Value::Bool(false), Value::Bool(true)]),
    )
    .unwrap();
    let inner = Value::Array(ValueType::I32, vec![Value::I32(1), Value::I32(-2)]);
    w.add_metadata(
        "nested",
        Value::Array(
            ValueType::Array,
            vec![inner, Value::Array(ValueType::U8, vec![])],
        ),
    )
    .unwrap();
    w.add_tensor("a", GgmlType::F32, &[4, 2], vec![1u8; 32])
        .unwrap();
    w.add_tensor("b", GgmlType::Q4_0, &[32, 2], vec![2u8; 36])
        .unwrap();
    w.add_tensor("c", GgmlType::F16, &[3], vec![3u8; 6])
        .unwrap();
    let mut out = Vec::new();
    w.write_to(&mut out).unwrap();
    out
}

#[test]
fn truncation_at_every_byte_is_an_error() {
    let bytes = small_valid_file();
    let f = GgufFile::from_bytes(bytes.clone()).unwrap();
    let data_end = f.data_offset()
        + f.tensors()
            .iter()
            .map(|t| t.offset + t.n_bytes.unwrap())
            .max()
            .unwrap();
    assert!(
        bytes.len() < 4096,
        "keep the loops small: {} bytes",
        bytes.len()
    );
    for n in 0..bytes.len() {
        let r = GgufFile::from_bytes(bytes[..n].to_vec());
        assert_eq!(
            r.is_ok(),
            n as u64 >= data_end,
            "prefix of {n} bytes: {r:?}"
        );
    }
}

#[test]
fn corrupting_any_byte_never_panics() {
    let bytes = small_valid_file();
    let mut accepted = 0;
    for i in 0..bytes.len() {
        for v in [0xFF, 0x00, 0x80, bytes[i].wrapping_add(1)] {
            let mut b = bytes.clone();
            b[i] = v;
            if let Ok(f) = GgufFile::from_bytes(b) {
                accepted += 1;
                for t in f.tensors() {
                    if let Ok(view) = f.tensor(&t.name) {
                        assert_eq!(view.data.len() as u64, t.n_bytes.unwrap());
                    }
                }
            }
        }
    }
    // data bytes and most value bytes are free to change
    assert!(accepted > 0);
}

/// Writes small seed files for the `gguf` fuzz target (the corpus directory is
/// not committed): `FOEHN_FUZZ_SEEDS=fuzz/corpus/gguf cargo test -p foehn-loader
/// --test crafted_gguf -- --ignored write_fuzz_seeds`.
#[test]
#[ignore = "writes files; run by hand to seed the fuzz corpus"]
fn write_fuzz_seeds() {
    let Some(dir) = std::env::var_os("FOEHN_FUZZ_SEEDS") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut tok = GgufWriter::new();
    tok.add_metadata("tokenizer.ggml.model", Value::String("gpt2".into()))
        .unwrap();
    let tokens = (0..48).map(|i| Value::String(format!("Ġt{i}"))).collect();
    tok.add_metadata(
        "tokenizer.ggml.tokens",
        Value::Array(ValueType::String, tokens),
    )
    .unwrap();
    let types = (0..48).map(|i| Value::I32(i % 3)).collect();
    tok.add_metadata(
        "tokenizer.ggml.token_type",
        Value::Array(ValueType::I32, types),
    )
    .unwrap();
    let merges = (0..16).map(|i| Value::String(format!("Ġ t{i}"))).collect();
    tok.add_metadata(
        "tokenizer.ggml.merges",
        Value::Array(ValueType::String, merges),
    )
    .unwrap();
    tok.add_tensor(
        "token_embd.weight",
        GgmlType::Q8_0,
        &[32, 4],
        vec![7u8; 34 * 4],
    )
    .unwrap();
    tok.add_tensor("output_norm.weight", GgmlType::F32, &[32], vec![0u8; 128])
        .unwrap();
    let mut tok_bytes = Vec::new();
    tok.write_to(&mut tok_bytes).unwrap();
    let seeds = [
        ("small-every-type.gguf", small_valid_file()),
        ("tokenizer-like.gguf", tok_bytes),
        ("v2-one-kv.gguf", B::header(2, 0, 1).key("a", 4).u32(7).0),
        ("nested-8.gguf", nested(8).0),
        (
            "unknown-type.gguf",
            B::header(3, 2, 0)
                .tensor("odd", &[7, 3], 31, 0)
                .tensor("ok", &[2], 0, 32)
                .pad(32)
                .data(64)
                .0,
        ),
        (
            "align-64.gguf",
            B::header(3, 1, 1)
                .key("general.alignment", 4)
                .u32(64)
                .tensor("w", &[1], 0, 0)
                .pad(64)
                .data(4)
                .0,
        ),
    ];
    for (name, bytes) in seeds {
        GgufFile::from_bytes(bytes.clone()).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}
