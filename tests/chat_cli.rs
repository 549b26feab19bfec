//! The `chat` and `perplexity` examples as a user runs them.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{example_bin, fixture, pypi};

#[test]
fn chat_keeps_history_and_reuses_the_cache() {
    let model = pypi(&foehn::hub::known::SMOLLM2_135M_Q4_1);
    let mut child = Command::new(example_bin("chat"))
        .args([
            "--model",
            model.to_str().unwrap(),
            "--temp",
            "0",
            "-n",
            "24",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chat");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Name the capital of France.\nAnd the capital of Germany?\n/reset\nHi\n/exit\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("Paris"), "{stdout}");
    // One stats line per turn: "[N prompt tokens, R reused from the cache; ...]".
    let reused: Vec<(usize, usize)> = stderr
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix('[')?;
            let (n, rest) = rest.split_once(" prompt tokens, ")?;
            let (r, _) = rest.split_once(" reused")?;
            Some((n.parse().ok()?, r.parse().ok()?))
        })
        .collect();
    assert_eq!(reused.len(), 3, "{stderr}");
    assert_eq!(reused[0].1, 0, "first turn starts from an empty cache");
    assert!(
        reused[1].1 > reused[0].0 / 2,
        "the second turn reuses the first turn's prompt: {reused:?}"
    );
    assert_eq!(reused[2].1, 0, "after /reset nothing is reused: {reused:?}");
}

/// The perplexity of one text through the F32 GGUF and through the HF
/// safetensors of the same weights: the same number (different files, RoPE
/// layouts and tokenizer routes).
#[test]
fn perplexity_is_the_same_through_gguf_and_safetensors() {
    let dir = std::env::temp_dir().join(format!("foehn-ppl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = dir.join("text.txt");
    let sentence =
        "Every function in Python returns a value, even when the return statement is missing. ";
    std::fs::write(&text, sentence.repeat(20)).unwrap();
    let ppl = |model: &str| -> f64 {
        let model = fixture(model);
        let out = Command::new(example_bin("perplexity"))
            .args([
                "--model",
                model.to_str().unwrap(),
                "--file",
                text.to_str().unwrap(),
                "--ctx",
                "64",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        stdout
            .split("PPL = ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no final estimate in {stdout}"))
    };
    let (gguf, hf) = (
        ppl("tiny-mistral/gguf/tiny-mistral-F32.gguf"),
        ppl("tiny-mistral/hf"),
    );
    std::fs::remove_dir_all(&dir).ok();
    assert!(gguf.is_finite() && gguf > 1.0, "{gguf}");
    assert!(
        (gguf - hf).abs() <= 1e-3 * gguf,
        "GGUF {gguf} vs safetensors {hf}"
    );
}
