//! Safetensors reader: the tiny-mistral fixture, a sharded copy of it, and crafted bad files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use foehn_loader::gguf::GgufFile;
use foehn_loader::{LoadError, SafetensorsModel, StDtype};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

const HF_DIR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/fixtures/tiny-mistral/hf"
);
const GGUF_F32: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/fixtures/tiny-mistral/gguf/tiny-mistral-F32.gguf"
);

fn single_file() -> PathBuf {
    Path::new(HF_DIR).join("model.safetensors")
}

#[test]
fn fixture_lists_hf_tensors_with_shapes() {
    let model = SafetensorsModel::open(single_file()).unwrap();
    assert_eq!(model.len(), 21);
    let names: Vec<&str> = model.tensor_names().collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted, "tensor_names is documented as sorted");
    assert_eq!(names[0], "lm_head.weight");
    assert_eq!(names[20], "model.norm.weight");

    let expect: [(&str, &[usize]); 6] = [
        ("lm_head.weight", &[1024, 256]),
        ("model.embed_tokens.weight", &[1024, 256]),
        ("model.layers.0.self_attn.q_proj.weight", &[256, 256]),
        ("model.layers.1.self_attn.k_proj.weight", &[128, 256]),
        ("model.layers.0.mlp.down_proj.weight", &[256, 512]),
        ("model.norm.weight", &[256]),
    ];
    for (name, shape) in expect {
        let t = model.tensor(name).unwrap();
        assert_eq!(t.name, name);
        assert_eq!(t.dtype, StDtype::BF16);
        assert_eq!(t.shape, shape, "{name}");
        assert_eq!(t.data.len(), shape.iter().product::<usize>() * 2, "{name}");
        assert_eq!(t.len(), shape.iter().product::<usize>());
    }
}

#[test]
fn folder_opens_the_single_file() {
    let by_dir = SafetensorsModel::open(HF_DIR).unwrap();
    let by_file = SafetensorsModel::open(single_file()).unwrap();
    assert_eq!(by_dir.files().count(), 1);
    assert!(by_dir.tensor_names().eq(by_file.tensor_names()));
}

/// The GGUF F32 fixture holds the same BF16 values widened exactly, so the
/// safetensors bytes are checked against an independent reader.
#[test]
fn bf16_bytes_match_the_f32_gguf() {
    let model = SafetensorsModel::open(single_file()).unwrap();
    let gguf = GgufFile::open(GGUF_F32).unwrap();
    for (st_name, gguf_name) in [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("lm_head.weight", "output.weight"),
        (
            "model.layers.1.mlp.down_proj.weight",
            "blk.1.ffn_down.weight",
        ),
        ("model.norm.weight", "output_norm.weight"),
    ] {
        let st = model.tensor(st_name).unwrap();
        let g = gguf.tensor(gguf_name).unwrap();
        let widened: Vec<u8> = st
            .data
            .chunks_exact(2)
            .flat_map(|b| (u32::from(u16::from_le_bytes([b[0], b[1]])) << 16).to_le_bytes())
            .collect();
        assert_eq!(widened.len(), g.data.len(), "{st_name}");
        assert!(widened == g.data, "{st_name} differs from {gguf_name}");
    }
}

fn to_dtype(d: StDtype) -> Dtype {
    match d {
        StDtype::F32 => Dtype::F32,
        StDtype::F16 => Dtype::F16,
        StDtype::BF16 => Dtype::BF16,
        StDtype::F8E4M3 => Dtype::F8_E4M3,
    }
}

/// Writes the fixture as two shards plus an index into `dir`; returns the index's weight map.
fn write_sharded(dir: &Path, model: &SafetensorsModel) -> BTreeMap<String, String> {
    let names: Vec<&str> = model.tensor_names().collect();
    let files = [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ];
    let mut weight_map = BTreeMap::new();
    for (k, file) in files.iter().enumerate() {
        let mut views = Vec::new();
        for (i, name) in names.iter().enumerate() {
            if i % 2 == k {
                let t = model.tensor(name).unwrap();
                let view = TensorView::new(to_dtype(t.dtype), t.shape.to_vec(), t.data).unwrap();
                views.push((name.to_string(), view));
                weight_map.insert(name.to_string(), file.to_string());
            }
        }
        let bytes =
            safetensors::serialize(views.iter().map(|(n, v)| (n.as_str(), v)), None).unwrap();
        std::fs::write(dir.join(file), bytes).unwrap();
    }
    write_index(dir, &weight_map);
    weight_map
}

fn write_index(dir: &Path, weight_map: &BTreeMap<String, String>) {
    let index = serde_json::json!({ "metadata": { "total_size": 0 }, "weight_map": weight_map });
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
}

#[test]
fn sharded_copy_has_identical_tensors() {
    let single = SafetensorsModel::open(single_file()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    write_sharded(tmp.path(), &single);
    // A stray single file next to the index: the folder must prefer the index.
    std::fs::copy(single_file(), tmp.path().join("model.safetensors")).unwrap();

    for sharded in [
        SafetensorsModel::open(tmp.path()).unwrap(),
        SafetensorsModel::open(tmp.path().join("model.safetensors.index.json")).unwrap(),
    ] {
        assert_eq!(sharded.files().count(), 2);
        assert!(sharded.tensor_names().eq(single.tensor_names()));
        for name in single.tensor_names() {
            let a = single.tensor(name).unwrap();
            let b = sharded.tensor(name).unwrap();
            assert_eq!(a, b, "{name}");
        }
    }
}

#[test]
fn sharded_errors_are_clear() {
    let single = SafetensorsModel::open(single_file()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut map = write_sharded(tmp.path(), &single);
    let index = tmp.path().join("model.safetensors.index.json");

    // A tensor mapped to a shard that does not hold it.
    let moved = "model.norm.weight".to_string();
    let owner = map[&moved].clone();
    let other = if owner.contains("00001") {
        "model-00002-of-00002.safetensors"
    } else {
        "model-00001-of-00002.safetensors"
    };
    map.insert(moved.clone(), other.to_string());
    write_index(tmp.path(), &map);
    match SafetensorsModel::open(&index) {
        Err(LoadError::MalformedSafetensors { reason, .. }) => {
            assert!(
                reason.contains(&moved) && reason.contains(other),
                "{reason}"
            )
        }
        other => panic!("expected MalformedSafetensors, got {other:?}"),
    }
    map.insert(moved.clone(), owner);

    // A shard file that does not exist.
    map.insert(
        moved.clone(),
        "model-00003-of-00002.safetensors".to_string(),
    );
    write_index(tmp.path(), &map);
    match SafetensorsModel::open(&index) {
        Err(LoadError::Io { path, source }) => {
            assert!(path.ends_with("model-00003-of-00002.safetensors"));
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected Io NotFound, got {other:?}"),
    }

    // A shard path that leaves the folder.
    map.insert(moved.clone(), "../model.safetensors".to_string());
    write_index(tmp.path(), &map);
    assert!(matches!(
        SafetensorsModel::open(&index),
        Err(LoadError::MalformedSafetensors { .. })
    ));

    // An index that is not JSON, or has no weight_map.
    std::fs::write(&index, "{\"weight_map\": [").unwrap();
    assert!(matches!(
        SafetensorsModel::open(&index),
        Err(LoadError::Json { .. })
    ));
    std::fs::write(&index, "{\"metadata\": {}}").unwrap();
    assert!(matches!(
        SafetensorsModel::open(&index),
        Err(LoadError::Json { .. })
    ));
    std::fs::write(&index, "{\"weight_map\": {}}").unwrap();
    assert!(matches!(
        SafetensorsModel::open(&index),
        Err(LoadError::MalformedSafetensors { .. })
    ));
}

#[test]
fn empty_folder_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(matches!(
        SafetensorsModel::open(tmp.path()),
        Err(LoadError::Io { .. })
    ));
}

/// A file from a JSON header and `data_len` zero bytes of data.
fn craft(header: &str, data_len: usize) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.resize(out.len() + data_len, 0);
    out
}

fn assert_malformed(bytes: Vec<u8>, what: &str) {
    match SafetensorsModel::from_bytes(bytes) {
        Err(LoadError::MalformedSafetensors { .. }) => {}
        other => panic!("{what}: expected MalformedSafetensors, got {other:?}"),
    }
}

#[test]
fn crafted_bad_files_are_malformed() {
    let ok = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    assert!(SafetensorsModel::from_bytes(craft(ok, 8)).is_ok());

    assert_malformed(vec![], "empty");
    assert_malformed(vec![1, 0, 0], "truncated header length");
    let mut past_end = 100u64.to_le_bytes().to_vec();
    past_end.extend_from_slice(b"{}");
    assert_malformed(past_end, "header length past the end");
    let mut huge = u64::MAX.to_le_bytes().to_vec();
    huge.extend_from_slice(b"{}");
    assert_malformed(huge, "header length u64::MAX");
    let mut big = 200_000_000u64.to_le_bytes().to_vec();
    big.extend_from_slice(b"{}");
    assert_malformed(big, "header length over the limit");
    assert_malformed(craft("{not json", 0), "bad JSON");
    assert_malformed(craft("[1, 2]", 0), "JSON not an object");
    let valid = r#"{"__metadata__":{"k":"xx"}}"#;
    assert!(SafetensorsModel::from_bytes(craft(valid, 0))
        .unwrap()
        .is_empty());
    let mut bad_utf8 = craft(valid, 0);
    let x = bad_utf8.iter().position(|&b| b == b'x').unwrap();
    bad_utf8[x] = 0xff;
    assert_malformed(bad_utf8, "invalid UTF-8");
    assert_malformed(
        craft(
            r#"{"a":{"dtype":"Q4","shape":[2],"data_offsets":[0,8]}}"#,
            8,
        ),
        "bad dtype",
    );
    assert_malformed(craft(ok, 4), "offsets past the data");
    assert_malformed(craft(ok, 12), "data past the last tensor");
    assert_malformed(
        craft(
            r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
            8,
        ),
        "shape does not match the byte range",
    );
    assert_malformed(
        craft(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},
                "b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
            12,
        ),
        "overlapping offsets",
    );
    assert_malformed(
        craft(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},
                "b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}}"#,
            20,
        ),
        "gap between tensors",
    );
    assert_malformed(
        craft(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}"#,
            8,
        ),
        "reversed offsets",
    );
    assert_malformed(
        craft(
            r#"{"a":{"dtype":"U8","shape":[18446744073709551615],"data_offsets":[0,18446744073709551615]}}"#,
            0,
        ),
        "size overflow",
    );
}

/// Offsets summing to nearly `usize::MAX` overflow (and panic) inside
/// `SafeTensors::read_metadata` 0.6 in checked builds; the loader must not.
#[test]
fn offsets_near_usize_max_do_not_panic() {
    let m: u64 = (1 << 61) - 1;
    let entries: Vec<String> = (0..8u64)
        .map(|i| {
            format!(
                r#""t{i}":{{"dtype":"U8","shape":[{m}],"data_offsets":[{},{}]}}"#,
                i * m,
                (i + 1) * m
            )
        })
        .collect();
    assert_malformed(
        craft(&format!("{{{}}}", entries.join(",")), 0),
        "offsets near usize::MAX",
    );
}

#[test]
fn short_file_on_disk_is_malformed() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("short.safetensors");
    std::fs::write(&path, [0u8; 5]).unwrap();
    assert!(matches!(
        SafetensorsModel::open(&path),
        Err(LoadError::MalformedSafetensors { .. })
    ));
    std::fs::write(&path, []).unwrap();
    assert!(matches!(
        SafetensorsModel::open(&path),
        Err(LoadError::MalformedSafetensors { .. })
    ));
}

#[test]
fn dtypes_other_than_float_and_fp8_are_listed_but_refused() {
    let header = r#"{"__metadata__":{"format":"pt"},
        "f32":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},
        "f16":{"dtype":"F16","shape":[2,1],"data_offsets":[8,12]},
        "ids":{"dtype":"I64","shape":[1],"data_offsets":[12,20]},
        "f8":{"dtype":"F8_E4M3","shape":[4],"data_offsets":[20,24]}}"#;
    let mut bytes = craft(header, 24);
    let data_start = bytes.len() - 24;
    bytes[data_start..data_start + 4].copy_from_slice(&1.5f32.to_le_bytes());
    let model = SafetensorsModel::from_bytes(bytes).unwrap();
    assert_eq!(
        model.tensor_names().collect::<Vec<_>>(),
        ["f16", "f32", "f8", "ids"]
    );

    let f32 = model.tensor("f32").unwrap();
    assert_eq!((f32.dtype, f32.shape), (StDtype::F32, &[2usize][..]));
    assert_eq!(f32.data[..4], 1.5f32.to_le_bytes());
    let f16 = model.tensor("f16").unwrap();
    assert_eq!(
        (f16.dtype, f16.shape, f16.data.len()),
        (StDtype::F16, &[2usize, 1][..], 4)
    );

    let f8 = model.tensor("f8").unwrap();
    assert_eq!((f8.dtype, f8.data.len()), (StDtype::F8E4M3, 4));
    for (name, ty) in [("ids", "I64")] {
        match model.tensor(name) {
            Err(LoadError::UnsupportedTensorType { name: n, ty: t }) => {
                assert_eq!((n.as_str(), t.as_str()), (name, ty))
            }
            other => panic!("{name}: expected UnsupportedTensorType, got {other:?}"),
        }
    }
    assert!(matches!(model.tensor("nope"), Err(LoadError::MissingTensor(n)) if n == "nope"));
}

#[test]
fn model_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<SafetensorsModel>();
}
