//! Downloads from the Hugging Face Hub into the shared Hugging Face cache.
//!
//! A small blocking client on `ureq`, doing what `huggingface_hub`'s
//! `hf_hub_download` does: a `HEAD` on `/{repo}/resolve/{revision}/{file}` gives
//! the commit (`X-Repo-Commit`), the content hash (`X-Linked-Etag`, the SHA-256
//! for LFS files) and the size; the file is then streamed into `blobs/<etag>`
//! and linked from `snapshots/<commit>/<file>`. Unlike the `hf-hub` crate it
//! has connect timeouts (an unreachable Hub fails in seconds), honours
//! `HF_HUB_CACHE`, and checks the SHA-256 of every LFS download.

use std::io::BufWriter;
use std::path::PathBuf;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ureq::Agent;

use crate::cache::{hf_home_dir, is_safe_relative, HfRepoCache};
use crate::digest::{copy_hashing, is_sha256_hex};
use crate::error::{io_err, HubError, Result};

/// The public Hub.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// What the caller already knows about the file, checked against the Hub and the download.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Expected<'a> {
    pub sha256: Option<&'a str>,
    pub size: Option<u64>,
}

/// What the `HEAD` request says about a file.
#[derive(Debug)]
struct Metadata {
    commit: String,
    etag: String,
    size: Option<u64>,
    /// Where to `GET` the bytes (the CDN for LFS files).
    download_url: String,
    /// Whether `download_url` is on the Hub itself (and may get the token).
    on_hub: bool,
}

/// A configured connection to one Hub endpoint.
pub(crate) struct HubClient {
    endpoint: String,
    token: Option<String>,
    meta: Agent,
    data: Agent,
}

impl HubClient {
    /// A client for `endpoint` (else `$HF_ENDPOINT`, else the public Hub).
    ///
    /// `connect_timeout` bounds name resolution and the TCP+TLS connect
    /// separately; the `HEAD` response must come within three times that.
    pub(crate) fn new(endpoint: Option<&str>, connect_timeout: Duration) -> Self {
        let endpoint = endpoint
            .map(str::to_string)
            .or_else(|| std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty()))
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
            .trim_end_matches('/')
            .to_string();
        let loopback = ["http://127.0.0.1", "http://localhost", "http://[::1]"]
            .iter()
            .any(|p| endpoint.starts_with(p));
        let user_agent = concat!("foehn/", env!("CARGO_PKG_VERSION"));
        let base = || {
            let b = Agent::config_builder()
                .http_status_as_error(false)
                .user_agent(user_agent)
                .timeout_resolve(Some(connect_timeout))
                .timeout_connect(Some(connect_timeout));
            // A proxy from the environment has no business with a local test server.
            if loopback {
                b.proxy(None)
            } else {
                b
            }
        };
        let meta = base()
            .max_redirects(0)
            .timeout_global(Some(connect_timeout * 3))
            .build()
            .into();
        let data = base()
            .max_redirects(10)
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .timeout_per_read(Some(Duration::from_secs(60)))
            .build()
            .into();
        Self {
            endpoint,
            token: hf_token(),
            meta,
            data,
        }
    }

    /// The `resolve` URL of `file` at `revision` in `repo`.
    pub(crate) fn resolve_url(&self, repo: &str, revision: &str, file: &str) -> String {
        let file: Vec<String> = file.split('/').map(encode_segment).collect();
        format!(
            "{}/{}/resolve/{}/{}",
            self.endpoint,
            repo,
            encode_segment(revision),
            file.join("/")
        )
    }

    /// Downloads `file` of model repo `repo` at `revision` into `cache`; returns its snapshot path.
    ///
    /// Reuses a blob already in the cache. Checks `expected` against what the Hub
    /// reports before downloading, and the downloaded bytes against `expected`
    /// and the Hub's SHA-256 (LFS files) after.
    pub(crate) fn download(
        &self,
        cache: &HfRepoCache,
        repo: &str,
        revision: &str,
        file: &str,
        expected: Expected<'_>,
        progress: bool,
    ) -> Result<PathBuf> {
        if !is_safe_relative(file) {
            return Err(HubError::InvalidSpec {
                spec: file.to_string(),
                reason: "the file path must be relative, with no `..`".into(),
            });
        }
        let url = self.resolve_url(repo, revision, file);
        let meta = self.metadata(&url)?;
        let what = format!("{repo}/{file} at {}", meta.commit);
        let hub_sha = is_sha256_hex(&meta.etag).then_some(meta.etag.as_str());
        if let (Some(want), Some(hub)) = (expected.sha256, hub_sha) {
            if !want.eq_ignore_ascii_case(hub) {
                return Err(HubError::ChecksumMismatch {
                    what: format!("{what} (as reported by the Hub)"),
                    expected: want.to_string(),
                    actual: hub.to_string(),
                });
            }
        }
        if let (Some(want), Some(hub)) = (expected.size, meta.size) {
            if want != hub {
                return Err(HubError::SizeMismatch {
                    what: format!("{what} (as reported by the Hub)"),
                    expected: want,
                    actual: hub,
                });
            }
        }

        let blob = cache.blob_path(&meta.etag);
        let have_blob = std::fs::metadata(&blob)
            .is_ok_and(|m| m.is_file() && meta.size.is_none_or(|s| s == m.len()));
        if !have_blob {
            self.fetch_blob(&meta, &blob, &what, expected.sha256.or(hub_sha), progress)?;
        }
        let snapshot = cache.link_snapshot(&blob, &meta.commit, file)?;
        cache.write_ref(revision, &meta.commit)?;
        Ok(snapshot)
    }

    /// `HEAD` the resolve URL, following relative redirects (renamed repos) only.
    fn metadata(&self, url: &str) -> Result<Metadata> {
        let hub_err = |url: &str, reason: String| HubError::Hub {
            url: url.to_string(),
            reason,
        };
        let mut current = url.to_string();
        let mut hops = 0;
        let resp = loop {
            let mut req = self
                .meta
                .head(&current)
                .header("Accept-Encoding", "identity");
            if let Some(token) = &self.token {
                req = req.header("Authorization", format!("Bearer {token}"));
            }
            let resp = req.call().map_err(|e| hub_err(&current, e.to_string()))?;
            let relative = resp
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .filter(|l| l.starts_with('/') && !l.starts_with("//"))
                .map(str::to_string);
            match relative {
                Some(path) if resp.status().is_redirection() && hops < 5 => {
                    current = format!("{}{}", self.endpoint, path);
                    hops += 1;
                }
                _ => break resp,
            }
        };
        let status = resp.status();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        if !(status.is_success() || status.is_redirection()) {
            let detail = header("x-error-message")
                .or_else(|| header("x-error-code"))
                .map(|m| format!(": {m}"))
                .unwrap_or_default();
            let hint = match status.as_u16() {
                401 | 403 if self.token.is_none() => {
                    " (gated or private repository: set HF_TOKEN or run `huggingface-cli login`)"
                }
                401 | 403 => " (gated or private repository: check that your token has access)",
                404 => " (check the repository and file names)",
                _ => "",
            };
            return Err(hub_err(&current, format!("HTTP {status}{detail}{hint}")));
        }
        let commit = header("x-repo-commit").ok_or_else(|| {
            hub_err(
                &current,
                "no X-Repo-Commit header in the response: is this a Hugging Face Hub endpoint?"
                    .into(),
            )
        })?;
        let etag = header("x-linked-etag")
            .or_else(|| header("etag"))
            .map(|e| e.trim_start_matches("W/").trim_matches('"').to_string())
            .filter(|e| !e.is_empty() && !e.contains('/') && is_safe_relative(e))
            .ok_or_else(|| hub_err(&current, "no usable ETag header in the response".into()))?;
        if !is_safe_relative(&commit) || commit.contains('/') {
            return Err(hub_err(
                &current,
                format!("invalid X-Repo-Commit {commit:?}"),
            ));
        }
        let size = header("x-linked-size")
            .or_else(|| {
                if status.is_redirection() {
                    None
                } else {
                    header("content-length")
                }
            })
            .and_then(|s| s.parse().ok());
        let location = header("location").filter(|_| status.is_redirection());
        let (download_url, on_hub) = match location {
            Some(loc) if loc.starts_with("http://") || loc.starts_with("https://") => (loc, false),
            _ => (current.clone(), true),
        };
        Ok(Metadata {
            commit,
            etag,
            size,
            download_url,
            on_hub,
        })
    }

    /// Streams the file into `blob` (through a temporary file), checking size and SHA-256.
    fn fetch_blob(
        &self,
        meta: &Metadata,
        blob: &std::path::Path,
        what: &str,
        sha256: Option<&str>,
        progress: bool,
    ) -> Result<()> {
        let hub_err = |reason: String| HubError::Hub {
            url: meta.download_url.clone(),
            reason,
        };
        let dir = blob.parent().unwrap_or(std::path::Path::new("."));
        std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        let mut req = self.data.get(&meta.download_url);
        if meta.on_hub {
            if let Some(token) = &self.token {
                req = req.header("Authorization", format!("Bearer {token}"));
            }
        }
        let resp = req.call().map_err(|e| hub_err(e.to_string()))?;
        if resp.status().as_u16() != 200 {
            return Err(hub_err(format!("HTTP {}", resp.status())));
        }
        let size = meta.size.or_else(|| resp.body().content_length());
        let bar = if progress {
            let bar = ProgressBar::with_draw_target(size, ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template(
                "{msg} [{elapsed_precise}] [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec} ({eta})",
            ) {
                bar.set_style(style);
            }
            bar.set_message(what.to_string());
            bar
        } else {
            ProgressBar::hidden()
        };

        let tmp = tempfile::Builder::new()
            .prefix(".incomplete-")
            .tempfile_in(dir)
            .map_err(io_err("creating a file in", dir))?;
        let mut reader = resp.into_body().into_reader();
        let copied = {
            let mut out = bar.wrap_write(BufWriter::new(tmp.as_file()));
            copy_hashing(&mut reader, &mut out)
        };
        bar.finish_and_clear();
        let (actual, len) = copied.map_err(|e| hub_err(format!("download interrupted: {e}")))?;
        if let Some(size) = size {
            if size != len {
                return Err(HubError::SizeMismatch {
                    what: format!("{what} (downloaded)"),
                    expected: size,
                    actual: len,
                });
            }
        }
        if let Some(want) = sha256 {
            if !want.eq_ignore_ascii_case(&actual) {
                return Err(HubError::ChecksumMismatch {
                    what: format!("{what} (downloaded)"),
                    expected: want.to_string(),
                    actual,
                });
            }
        }
        tmp.persist(blob).map_err(|e| HubError::Io {
            action: "renaming into",
            path: blob.to_path_buf(),
            source: e.error,
        })?;
        Ok(())
    }
}

/// The user's Hub token: `$HF_TOKEN`, else the file written by `huggingface-cli login`.
fn hf_token() -> Option<String> {
    let from_env = ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"]
        .iter()
        .find_map(|k| std::env::var(k).ok());
    let token = from_env.or_else(|| {
        let path = std::env::var_os("HF_TOKEN_PATH")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .or_else(|| hf_home_dir().ok().map(|h| h.join("token")))?;
        std::fs::read_to_string(path).ok()
    })?;
    let token = token.trim().to_string();
    (!token.is_empty()).then_some(token)
}

/// Percent-encodes one URL path segment (everything but RFC 3986 unreserved characters).
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_urls_are_encoded() {
        let c = HubClient::new(Some("https://hub.example/"), Duration::from_secs(1));
        assert_eq!(
            c.resolve_url("o/r", "main", "dir/a b.gguf"),
            "https://hub.example/o/r/resolve/main/dir/a%20b.gguf"
        );
        assert_eq!(
            c.resolve_url("o/r", "refs/pr/1", "f.gguf"),
            "https://hub.example/o/r/resolve/refs%2Fpr%2F1/f.gguf"
        );
    }
}
