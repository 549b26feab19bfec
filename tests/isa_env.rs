//! `FOEHN_ISA` sets the default instruction set of every CPU kernel, the
//! vector operations (attention, f32 products) included: on the F32 tiny
//! model, whose products are f32 dot products, `FOEHN_ISA=scalar` gives the
//! logit bits of `--isa scalar`, and those differ from a SIMD instruction
//! set's (fused multiply-adds round differently), so the vector operations
//! followed the choice. A bad value is a clear error.

mod common;

use std::process::{Command, Output};

use common::{example_bin, fixture};
use foehn::kernels::Isa;

/// `generate` teacher-forcing 12 tokens on the F32 tiny model with `args`
/// added, `FOEHN_ISA` set to `env` (or removed).
fn forced(env: Option<&str>, args: &[&str]) -> Output {
    let model = fixture("tiny-mistral/gguf/tiny-mistral-F32.gguf");
    let mut cmd = Command::new(example_bin("generate"));
    cmd.args([
        "--model",
        model.to_str().unwrap(),
        "--prompt-ids",
        "1,736,479,944,414,289,678,498,928,264,397,945,292,676,579,268",
        "--force-ids",
        "836,375,464,104,261,606,449,185,269,261,574,606",
        "--top-logits",
        "8",
        "--kv",
        "f32",
        "--json",
    ])
    .args(args)
    .env("HF_HUB_OFFLINE", "1");
    match env {
        Some(v) => cmd.env("FOEHN_ISA", v),
        None => cmd.env_remove("FOEHN_ISA"),
    };
    cmd.output().expect("run generate")
}

/// The logits of every step.
fn steps(o: &Output) -> serde_json::Value {
    assert!(
        o.status.success(),
        "generate failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    assert_eq!(v["steps"].as_array().map(Vec::len), Some(12), "{v}");
    v["steps"].clone()
}

#[test]
fn foehn_isa_picks_the_instruction_set_of_every_kernel() {
    let scalar_env = steps(&forced(Some("scalar"), &[]));
    let scalar_flag = steps(&forced(None, &["--isa", "scalar"]));
    assert_eq!(
        scalar_env, scalar_flag,
        "FOEHN_ISA=scalar is not --isa scalar"
    );
    // --isa wins over the variable.
    assert_eq!(
        steps(&forced(Some("nonsense"), &["--isa", "scalar"])),
        scalar_flag
    );
    let best = Isa::best().isa();
    if best != Isa::Scalar {
        let simd = steps(&forced(None, &[]));
        assert_eq!(steps(&forced(Some(best.name()), &[])), simd);
        assert_ne!(
            simd,
            scalar_flag,
            "{} and scalar give the same bits: the vector operations ignore the instruction set",
            best.name()
        );
    }
}

#[test]
fn a_bad_foehn_isa_is_a_clear_error() {
    let o = forced(Some("avx9000"), &[]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("FOEHN_ISA") && err.contains("avx9000") && err.contains("scalar"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    let supported = Isa::supported();
    if let Some(other) = Isa::ALL.into_iter().find(|i| !supported.contains(i)) {
        let o = forced(Some(other.name()), &[]);
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(other.name()) && err.contains("from FOEHN_ISA"),
            "{err}"
        );
    }
}
