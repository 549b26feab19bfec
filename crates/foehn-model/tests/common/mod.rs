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
