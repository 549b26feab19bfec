//! `generate --isq`: the tiny-mistral safetensors quantized at load.

mod common;

use std::process::{Command, Output};

use common::{example_bin, fixture};

fn generate(args: &[&str]) -> Output {
    Command::new(example_bin("generate"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("run generate")
}

fn json(o: &Output) -> serde_json::Value {
    assert!(
        o.status.success(),
        "generate failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("one JSON object")
}

/// `--isq q8_0` on the BF16 safetensors gives the weights of the Q8_0 GGUF
/// (same ggml quantizer): the last-position top logits match that file's
/// float64 reference as closely as llama.cpp's do (≤ 0.35; int8 activations),
/// with the same top-5 ids. q4k and q6k run and stay within their
/// quantization error of the F32 reference.
#[test]
fn isq_matches_the_reference_of_the_same_quantization() {
    let hf = fixture("tiny-mistral/hf");
    for (isq, variant, tol) in [
        ("q8_0", "Q8_0", 0.35),
        ("q6k", "Q6_K", 0.35),
        ("q4k", "F32", 4.0),
    ] {
        let reference: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(fixture(&format!(
                "tiny-mistral/reference/{variant}/reference.json"
            )))
            .unwrap(),
        )
        .unwrap();
        let r = &reference["prompts"]["p40"];
        let prompt: Vec<String> = r["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.to_string())
            .collect();
        let out = json(&generate(&[
            "--model",
            hf.to_str().unwrap(),
            "--isq",
            isq,
            "--prompt-ids",
            &prompt.join(","),
            "-n",
            "1",
            "--kv",
            "f32",
            "--json",
            "--top-logits",
            "5",
        ]));
        let top = out["top_logits"].as_array().unwrap();
        let want = &r["last_top20_swa"];
        let mut worst = 0.0f64;
        for (k, t) in top.iter().enumerate() {
            let d = (t[1].as_f64().unwrap() - want["logits"][k].as_f64().unwrap()).abs();
            worst = worst.max(d);
            if tol < 1.0 {
                assert_eq!(t[0].as_u64(), want["ids"][k].as_u64(), "{isq}: rank {k}");
            }
        }
        eprintln!("--isq {isq}: top-5 logits max |Δ| vs {variant} reference = {worst:.3}");
        assert!(worst <= tol, "{isq}: {worst} > {tol}");
        assert_eq!(top[0][0].as_u64(), want["ids"][0].as_u64(), "{isq}: top-1");
    }
}

#[test]
fn isq_errors_are_one_line() {
    let gguf = fixture("tiny-mistral/gguf/tiny-mistral-F32.gguf");
    let o = generate(&[
        "--model",
        gguf.to_str().unwrap(),
        "--isq",
        "q4k",
        "--prompt",
        "hi",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.starts_with("error: ") && err.trim_end().lines().count() == 1,
        "{err}"
    );
    assert!(err.contains("safetensors") && err.contains("GGUF"), "{err}");
    let hf = fixture("tiny-mistral/hf");
    let o = generate(&[
        "--model",
        hf.to_str().unwrap(),
        "--isq",
        "q5k",
        "--prompt",
        "hi",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("q8_0, q4_0, q4k or q6k"), "{err}");
}
