//! The `tokenize` example as a user runs it: output formats, stdin, and one-line
//! errors (never a panic) for bad input.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::{example_bin, fixture};

fn run(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(example_bin("tokenize"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tokenize");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("write stdin");
    child.wait_with_output().expect("tokenize output")
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).expect("UTF-8 stdout")
}

/// A failed run: non-zero exit, one line on stderr, no panic.
fn assert_clean_error(o: &Output, what: &str) -> String {
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(
        !o.status.success(),
        "{what}: expected failure, got {}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(!err.contains("panicked"), "{what}: panic: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "{what}: not one line: {err}"
    );
    assert!(err.starts_with("error: "), "{what}: {err}");
    err
}

fn ids(json_line: &str) -> Vec<u64> {
    let v: serde_json::Value = serde_json::from_str(json_line).expect("JSON output");
    v["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|i| i.as_u64().expect("id"))
        .collect()
}

#[test]
fn json_output_with_and_without_bos() {
    let tok = fixture("tiny-mistral/hf/tokenizer.model");
    let tok = tok.to_str().unwrap();
    let with = stdout(&run(
        &["--tokenizer", tok, "--text", "Hello world", "--json"],
        b"",
    ));
    let without = stdout(&run(
        &[
            "--tokenizer",
            tok,
            "--text",
            "Hello world",
            "--json",
            "--no-bos",
        ],
        b"",
    ));
    let (with, without) = (ids(with.trim()), ids(without.trim()));
    assert_eq!(with[0], 1, "BOS first");
    assert_eq!(&with[1..], &without[..]);
}

#[test]
fn text_from_stdin_and_the_plain_listing() {
    let tok = fixture("tiny-mistral/gguf/tiny-mistral-F32.gguf");
    let out = stdout(&run(
        &["--model", tok.to_str().unwrap(), "--no-bos"],
        b"Every function",
    ));
    let last = out.lines().last().unwrap();
    let n: usize = last
        .strip_suffix(" tokens")
        .expect("count line")
        .parse()
        .unwrap();
    assert_eq!(out.lines().count(), n + 1);
    assert!(out.contains("-> \" function\""), "{out}");
}

#[test]
fn jsonl_and_parse_special() {
    let check: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("tiny-mistral/reference/hf_tokenizer_check.json"))
            .unwrap(),
    )
    .unwrap();
    let m = &check["encode_special_tokens=false"]["mismatches"][1];
    let text = m["text"].as_str().unwrap();
    let want = |k: &str| -> Vec<u64> {
        m[k].as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_u64().unwrap())
            .collect()
    };
    let input = format!(
        "{}\n\n{}\n",
        serde_json::json!({ "text": text }),
        serde_json::json!({ "text": "" })
    );
    for file in [
        "tiny-mistral/hf/tokenizer.json",
        "tiny-mistral/gguf/tiny-mistral-Q4_0.gguf",
    ] {
        let path = fixture(file);
        let path = path.to_str().unwrap();
        let plain = stdout(&run(
            &["--tokenizer", path, "--jsonl", "--no-bos"],
            input.as_bytes(),
        ));
        let lines: Vec<&str> = plain.lines().collect();
        assert_eq!(
            lines.len(),
            2,
            "{file}: one output line per non-empty input line"
        );
        assert_eq!(ids(lines[0]), want("sentencepiece"), "{file}");
        assert_eq!(ids(lines[1]), Vec::<u64>::new(), "{file}");
        let parsed = stdout(&run(
            &[
                "--tokenizer",
                path,
                "--jsonl",
                "--no-bos",
                "--parse-special",
            ],
            input.as_bytes(),
        ));
        assert_eq!(
            ids(parsed.lines().next().unwrap()),
            want("tokenizer_json"),
            "{file}"
        );
    }
}

#[test]
fn bad_input_gives_one_line_errors() {
    let dir = std::env::temp_dir().join(format!("foehn-tokenize-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let garbage = dir.join("garbage.gguf");
    std::fs::write(&garbage, b"GGUF\x03\x00\x00\x00 this is not a model").unwrap();
    let truncated = dir.join("truncated.gguf");
    let full = std::fs::read(fixture("vocab/mistral-v3-spm.gguf")).unwrap();
    std::fs::write(&truncated, &full[..full.len() / 2]).unwrap();
    let not_json = dir.join("tokenizer.json");
    std::fs::write(&not_json, b"{\"model\": ").unwrap();
    let not_spm = dir.join("tokenizer.model");
    std::fs::write(&not_spm, [0xFFu8; 64]).unwrap();
    let tiny = fixture("tiny-mistral/hf/tokenizer.json");
    let tiny = tiny.to_str().unwrap();

    for (what, args, stdin) in [
        (
            "garbage GGUF",
            vec!["--model", garbage.to_str().unwrap(), "--text", "x"],
            &b""[..],
        ),
        (
            "truncated GGUF",
            vec!["--model", truncated.to_str().unwrap(), "--text", "x"],
            b"",
        ),
        (
            "missing file",
            vec!["--model", "/nonexistent/model.gguf", "--text", "x"],
            b"",
        ),
        (
            "unknown catalog id",
            vec!["--model", "no-such-model", "--text", "x"],
            b"",
        ),
        (
            "broken tokenizer.json",
            vec!["--tokenizer", not_json.to_str().unwrap(), "--text", "x"],
            b"",
        ),
        (
            "broken tokenizer.model",
            vec!["--tokenizer", not_spm.to_str().unwrap(), "--text", "x"],
            b"",
        ),
        (
            "invalid UTF-8 on stdin",
            vec!["--tokenizer", tiny],
            b"ab\xFF\xFEcd",
        ),
        (
            "invalid JSONL",
            vec!["--tokenizer", tiny, "--jsonl"],
            b"{\"text\": \"ok\"}\nnot json\n",
        ),
        (
            "JSONL without text",
            vec!["--tokenizer", tiny, "--jsonl"],
            b"{\"txt\": 1}\n",
        ),
    ] {
        assert_clean_error(&run(&args, stdin), what);
    }
    std::fs::remove_dir_all(&dir).ok();
}
