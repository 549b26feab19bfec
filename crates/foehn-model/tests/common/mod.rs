//! Fixture access shared by the model's end-to-end tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

#[allow(unused_imports)]
pub use foehn_testkit::{fixtures, read_npy, Npy};

/// Reads a JSON fixture.
pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Largest absolute difference between two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// A JSON array of integers as token ids.
pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// The tiny-mistral fixture folder.
pub fn tiny() -> PathBuf {
    fixtures().join("tiny-mistral")
}

/// The public prompts: (name, ids with BOS).
pub fn prompts() -> Vec<(String, Vec<u32>)> {
    let json = read_json(&tiny().join("reference/prompts.json"));
    json["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap().to_string(), ids(&p["ids"])))
        .collect()
}

/// A variant's `reference.json`.
pub fn reference(variant: &str) -> serde_json::Value {
    read_json(&tiny().join(format!("reference/{variant}/reference.json")))
}

/// The tiny-mistral F32 GGUF rewritten with one tensor stored as another type
/// (zero bytes of that type's size): for "uncomputable type" tests.
pub fn tiny_gguf_with_retyped(tensor: &str, ty: foehn_kernels::GgmlType) -> foehn_loader::GgufFile {
    let src = foehn_loader::GgufFile::open(tiny().join("gguf/tiny-mistral-F32.gguf")).unwrap();
    let mut w = foehn_loader::gguf::GgufWriter::new();
    for (k, v) in src.metadata().iter() {
        w.add_metadata(k, v.clone()).unwrap();
    }
    let mut found = false;
    for info in src.tensors() {
        if info.name == tensor {
            found = true;
            let rows: u64 = info.shape[1..].iter().product();
            let fake = vec![0u8; ty.row_bytes(info.shape[0] as usize).unwrap() * rows as usize];
            w.add_tensor(&info.name, ty, &info.shape, fake).unwrap();
        } else {
            let t = src.tensor(&info.name).unwrap();
            w.add_tensor(&info.name, t.ty, t.shape, t.data).unwrap();
        }
    }
    assert!(found, "no tensor {tensor}");
    let mut bytes = Vec::new();
    w.write_to(&mut bytes).unwrap();
    foehn_loader::GgufFile::from_bytes(bytes).unwrap()
}

/// A temporary HF model folder: tiny-mistral's safetensors beside `config`
/// (removed when dropped).
pub struct TinyHfDir(pub PathBuf);

impl TinyHfDir {
    /// Writes `config` as `config.json` next to a copy of tiny-mistral's weights.
    pub fn new(tag: &str, config: &serde_json::Value) -> Self {
        let dir = std::env::temp_dir().join(format!("foehn-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        std::fs::copy(
            tiny().join("hf/model.safetensors"),
            dir.join("model.safetensors"),
        )
        .unwrap();
        Self(dir)
    }
}

impl Drop for TinyHfDir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}
