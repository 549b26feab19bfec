//! Mixtral (a mixture of 8 experts, top-2) on tiny synthetic GGUFs against
//! the float64 references of `tests/fixtures/tiny-mixtral` (made by
//! `tests/tools/make_tiny_mixtral.py` with `tests/tools/ref_llama.py`) and
//! llama.cpp's top-1 on the same files: merged 3-D expert tensors and the
//! older per-expert ones, the CPU and candle backends, teacher forcing
//! through the decode path, the count of experts a pass runs, and the
//! errors of malformed files.

mod common;

use std::sync::Arc;

use common::{max_abs_diff, read_json, read_npy, Npy};
use foehn_kernels::GgmlType;
use foehn_loader::gguf::{GgufWriter, Value};
use foehn_loader::GgufFile;

use foehn_model::{argmax, KvCacheOptions, KvCacheType, LogitsMode, ModelError, Transformer};

/// Dense f32 weights, f32 arithmetic, f32 cache.
const TOL: f32 = 1e-3;

/// Quantized weights: the kernels quantize activations to int8 (as llama.cpp
/// does; a token whose router logits nearly tie may then pick another
/// expert), so the log-probabilities may be this many times llama.cpp's own
/// distance from the reference of the same file.
const LLAMA_CPP_FACTOR: f32 = 1.5;

const LAYERS: u64 = 2;
const EXPERTS: u64 = 8;
const EXPERTS_USED: u64 = 2;

fn dir() -> std::path::PathBuf {
    std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/tiny-mixtral"
    ))
}

fn file(variant: &str) -> GgufFile {
    let path = dir().join(format!("tiny-mixtral-{variant}.gguf"));
    GgufFile::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn reference() -> serde_json::Value {
    read_json(&dir().join("reference/reference.json"))
}

fn prompt() -> Vec<u32> {
    reference()["prompt"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect()
}

/// The reference logits of every prompt position (`prompt × vocab`).
fn reference_logits(variant: &str) -> Npy {
    read_npy(&dir().join(format!("reference/{variant}.npy")))
}

/// The largest |Δ| between `rows` (`n × vocab`, row-major) and the reference.
fn max_diff(rows: &[f32], want: &Npy, vocab: usize) -> f32 {
    rows.chunks_exact(vocab)
        .enumerate()
        .map(|(i, r)| max_abs_diff(r, want.row(i)))
        .fold(0.0, f32::max)
}

/// The largest |Δ| between the log-probabilities (log-softmax) of `rows`
/// and of the reference: llama.cpp's distance is measured so.
fn max_logprob_diff(rows: &[f32], want: &Npy, vocab: usize) -> f32 {
    let log_softmax = |r: &[f32]| -> Vec<f64> {
        let max = r.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let sum: f64 = r.iter().map(|&v| f64::from(v - max).exp()).sum();
        r.iter().map(|&v| f64::from(v - max) - sum.ln()).collect()
    };
    rows.chunks_exact(vocab)
        .enumerate()
        .map(|(i, r)| {
            let (a, b) = (log_softmax(r), log_softmax(want.row(i)));
            a.iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f64::max) as f32
        })
        .fold(0.0, f32::max)
}

/// The tolerance of a quantized variant's log-probabilities (see
/// [`LLAMA_CPP_FACTOR`]).
fn quant_tol(variant: &str) -> f32 {
    let d = reference()["variants"][variant]["llama_cpp_vs_ref_max_logprob_diff"]
        .as_f64()
        .unwrap();
    LLAMA_CPP_FACTOR * d as f32
}

/// `variant` rewritten: `meta` replaces (or adds) metadata, `tensors` maps
/// each tensor to the tensors written in its place.
fn rewritten(
    variant: &str,
    meta: &[(&str, Value)],
    tensors: impl Fn(&foehn_loader::gguf::TensorView<'_>) -> Vec<(String, GgmlType, Vec<u64>, Vec<u8>)>,
) -> GgufFile {
    let src = file(variant);
    let mut w = GgufWriter::new();
    for (k, v) in src.metadata().iter() {
        let v = meta
            .iter()
            .find(|(m, _)| *m == k)
            .map_or_else(|| v.clone(), |(_, v)| v.clone());
        w.add_metadata(k, v).unwrap();
    }
    for (k, v) in meta {
        if !src.metadata().contains(k) {
            w.add_metadata(*k, v.clone()).unwrap();
        }
    }
    for info in src.tensors() {
        let t = src.tensor(&info.name).unwrap();
        for (name, ty, shape, data) in tensors(&t) {
            w.add_tensor(name, ty, &shape, data).unwrap();
        }
    }
    let mut bytes = Vec::new();
    w.write_to(&mut bytes).unwrap();
    GgufFile::from_bytes(bytes).unwrap()
}

/// A tensor written unchanged.
fn same(t: &foehn_loader::gguf::TensorView<'_>) -> Vec<(String, GgmlType, Vec<u64>, Vec<u8>)> {
    vec![(t.name.to_string(), t.ty, t.shape.to_vec(), t.data.to_vec())]
}

/// The F32 fixture with each merged `ffn_*_exps` tensor split into the older
/// per-expert tensors `ffn_*.E.weight`.
fn per_expert_file() -> GgufFile {
    rewritten("F32", &[], |t| {
        let Some(stem) = t.name.strip_suffix("_exps.weight") else {
            return same(t);
        };
        let experts = t.shape[2] as usize;
        let per = t.data.len() / experts;
        (0..experts)
            .map(|e| {
                (
                    format!("{stem}.{e}.weight"),
                    t.ty,
                    t.shape[..2].to_vec(),
                    t.data[e * per..(e + 1) * per].to_vec(),
                )
            })
            .collect()
    })
}

fn cpu_model(file: GgufFile) -> Transformer {
    Transformer::from_gguf(Arc::new(file)).unwrap()
}

/// Logits of every prompt position from one chunk, and from teacher forcing
/// through the decode path (one token per pass), with the experts each run.
struct Run {
    all: Vec<f32>,
    decoded: Vec<f32>,
    prefill_experts: u64,
    decode_experts: Vec<u64>,
}

fn run_cpu(model: &Transformer) -> Run {
    let prompt = prompt();
    let opts = KvCacheOptions {
        ctx_len: None,
        types: KvCacheType::F32.into(),
        max_chunk: 64,
    };
    let mut cache = model.new_cache(opts).unwrap();
    let mut scratch = model.new_scratch(&cache);
    let all = model
        .forward(&prompt, &mut cache, &mut scratch, LogitsMode::All)
        .unwrap()
        .to_vec();
    let prefill_experts = scratch.experts_run();

    let mut cache = model.new_cache(opts).unwrap();
    let mut scratch = model.new_scratch(&cache);
    let mut decoded = Vec::new();
    let mut decode_experts = Vec::new();
    for &t in &prompt {
        let before = scratch.experts_run();
        let l = model
            .forward(&[t], &mut cache, &mut scratch, LogitsMode::Last)
            .unwrap();
        decoded.extend_from_slice(l);
        decode_experts.push(scratch.experts_run() - before);
    }
    Run {
        all,
        decoded,
        prefill_experts,
        decode_experts,
    }
}

#[test]
fn config_is_a_mixture() {
    let cfg = cpu_model(file("F32")).config().clone();
    let moe = cfg.moe.unwrap();
    assert_eq!(
        (moe.num_experts, moe.experts_per_token),
        (EXPERTS as usize, EXPERTS_USED as usize)
    );
}

#[test]
fn f32_matches_the_reference_in_a_chunk_and_decoding() {
    let model = cpu_model(file("F32"));
    let vocab = model.config().vocab_size;
    let want = reference_logits("F32");
    let run = run_cpu(&model);
    let (chunk, decode) = (
        max_diff(&run.all, &want, vocab),
        max_diff(&run.decoded, &want, vocab),
    );
    eprintln!("F32 cpu: max |Δ| vs reference: chunk {chunk:.2e}, decode {decode:.2e}");
    assert!(
        chunk <= TOL && decode <= TOL,
        "chunk {chunk}, decode {decode}"
    );
}

#[test]
fn per_expert_tensors_give_the_same_logits() {
    let merged = run_cpu(&cpu_model(file("F32")));
    let apart = run_cpu(&cpu_model(per_expert_file()));
    let d = max_abs_diff(&merged.all, &apart.all);
    assert!(d <= 1e-6, "{d}");
    let want = reference_logits("F32");
    let vocab = want.shape[1];
    assert!(max_diff(&apart.decoded, &want, vocab) <= TOL);
}

/// A prefill reads each expert at most once per layer; a decode step reads
/// exactly the `k` chosen experts of each layer.
#[test]
fn decode_runs_only_the_chosen_experts() {
    let run = run_cpu(&cpu_model(file("F32")));
    let n = prompt().len() as u64;
    eprintln!(
        "experts run: prefill of {n} tokens {} (per-token would be {}), decode steps {:?}",
        run.prefill_experts,
        n * LAYERS * EXPERTS_USED,
        &run.decode_experts[..4]
    );
    assert!(run.prefill_experts <= LAYERS * EXPERTS);
    assert!(run.prefill_experts >= LAYERS * EXPERTS_USED);
    assert!(run
        .decode_experts
        .iter()
        .all(|&e| e == LAYERS * EXPERTS_USED));
}

/// Q4_K_M: near the reference of the same file, and llama.cpp's top-1 at
/// every position where the reference's margin exceeds twice that distance.
#[test]
fn q4_k_m_matches_the_reference_and_llama_cpp() {
    let model = cpu_model(file("Q4_K_M"));
    let vocab = model.config().vocab_size;
    let want = reference_logits("Q4_K_M");
    let run = run_cpu(&model);
    let d =
        max_logprob_diff(&run.all, &want, vocab).max(max_logprob_diff(&run.decoded, &want, vocab));
    let agree = top1_agreement(&run.all, vocab, "Q4_K_M", d);
    eprintln!(
        "Q4_K_M cpu: max |Δ logprob| vs reference {d:.3e} (tolerance {:.3e}); top-1 = llama.cpp's at {agree}",
        quant_tol("Q4_K_M")
    );
    assert!(d <= quant_tol("Q4_K_M"), "{d}");
}

/// Checks foehn's top-1 against llama.cpp's at each position whose reference
/// margin exceeds `2·d`; returns "agreeing of checked (of all)".
fn top1_agreement(all: &[f32], vocab: usize, variant: &str, d: f32) -> String {
    let r = &reference()["variants"][variant];
    let (mut checked, mut agree) = (0, 0);
    for (i, logits) in all.chunks_exact(vocab).enumerate() {
        let ours = argmax(logits) as u64;
        let theirs = r["llama_cpp_top1"][i].as_u64().unwrap();
        if ours == theirs {
            agree += 1;
        }
        if r["ref_margin"][i].as_f64().unwrap() > 2.0 * f64::from(d) {
            checked += 1;
            assert_eq!(ours, theirs, "position {i}");
        }
    }
    format!(
        "{agree} of {} positions ({checked} decisive, all equal)",
        all.len() / vocab
    )
}

#[test]
fn f32_top1_equals_llama_cpp() {
    let model = cpu_model(file("F32"));
    let run = run_cpu(&model);
    let agree = top1_agreement(&run.all, model.config().vocab_size, "F32", TOL);
    eprintln!("F32 cpu: top-1 = llama.cpp's at {agree}");
}

/// The F32 fixture as a Hugging Face `mixtral` checkpoint: HF tensor names,
/// the experts one tensor each (w1 = gate, w3 = up, w2 = down), Q and K rows
/// in HF's order (llama.cpp's converter permutes them for adjacent-pair
/// RoPE; HF rotates halves).
fn hf_checkpoint() -> (foehn_loader::SafetensorsModel, foehn_core::ModelConfig) {
    let src = file("F32");
    let layer = |name: &str| -> Option<(usize, String)> {
        let rest = name.strip_prefix("blk.")?;
        let (i, part) = rest.split_once('.')?;
        Some((i.parse().ok()?, part.to_string()))
    };
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for info in src.tensors() {
        let t = src.tensor(&info.name).unwrap();
        let dims: Vec<usize> = t.shape.iter().rev().map(|&d| d as usize).collect();
        let (name, data) = match (t.name, layer(t.name)) {
            ("token_embd.weight", _) => ("model.embed_tokens.weight".to_string(), t.data.to_vec()),
            ("output_norm.weight", _) => ("model.norm.weight".to_string(), t.data.to_vec()),
            ("output.weight", _) => ("lm_head.weight".to_string(), t.data.to_vec()),
            (_, Some((i, part))) => {
                let p = format!("model.layers.{i}.");
                match part.as_str() {
                    "attn_norm.weight" => (p + "input_layernorm.weight", t.data.to_vec()),
                    "ffn_norm.weight" => (p + "post_attention_layernorm.weight", t.data.to_vec()),
                    "attn_q.weight" => (p + "self_attn.q_proj.weight", unpermute(t.data, 4, &dims)),
                    "attn_k.weight" => (p + "self_attn.k_proj.weight", unpermute(t.data, 2, &dims)),
                    "attn_v.weight" => (p + "self_attn.v_proj.weight", t.data.to_vec()),
                    "attn_output.weight" => (p + "self_attn.o_proj.weight", t.data.to_vec()),
                    "ffn_gate_inp.weight" => (p + "block_sparse_moe.gate.weight", t.data.to_vec()),
                    exps => {
                        let w = match exps {
                            "ffn_gate_exps.weight" => "w1",
                            "ffn_up_exps.weight" => "w3",
                            "ffn_down_exps.weight" => "w2",
                            other => panic!("unexpected tensor {other}"),
                        };
                        let per = t.data.len() / dims[0];
                        for e in 0..dims[0] {
                            tensors.push((
                                format!("{p}block_sparse_moe.experts.{e}.{w}.weight"),
                                dims[1..].to_vec(),
                                t.data[e * per..(e + 1) * per].to_vec(),
                            ));
                        }
                        continue;
                    }
                }
            }
            (other, None) => panic!("unexpected tensor {other}"),
        };
        tensors.push((name, dims, data));
    }
    let md = src.metadata();
    let json = serde_json::json!({
        "model_type": "mixtral",
        "vocab_size": md.get_usize("llama.vocab_size").unwrap(),
        "hidden_size": md.get_usize("llama.embedding_length").unwrap(),
        "intermediate_size": md.get_usize("llama.feed_forward_length").unwrap(),
        "num_hidden_layers": md.get_usize("llama.block_count").unwrap(),
        "num_attention_heads": md.get_usize("llama.attention.head_count").unwrap(),
        "num_key_value_heads": md.get_usize("llama.attention.head_count_kv").unwrap(),
        "max_position_embeddings": md.get_usize("llama.context_length").unwrap(),
        "rope_theta": md.get_f64("llama.rope.freq_base").unwrap(),
        "rms_norm_eps": md.get_f64("llama.attention.layer_norm_rms_epsilon").unwrap(),
        "num_local_experts": md.get_usize("llama.expert_count").unwrap(),
        "num_experts_per_tok": md.get_usize("llama.expert_used_count").unwrap(),
        "tie_word_embeddings": false,
    });
    let cfg = foehn_loader::config_from_hf_json(json.to_string().as_bytes()).unwrap();
    (safetensors(&tensors), cfg)
}

/// Q or K rows back in HF's order: llama.cpp stores row `h·d + 2j + a` of
/// head `h` where HF has row `h·d + a·d/2 + j`.
fn unpermute(data: &[u8], heads: usize, dims: &[usize]) -> Vec<u8> {
    let (rows, row_bytes) = (dims[0], data.len() / dims[0]);
    let (d, mut out) = (rows / heads, vec![0u8; data.len()]);
    for h in 0..heads {
        for j in 0..d / 2 {
            for a in 0..2 {
                let (from, to) = (h * d + 2 * j + a, h * d + a * d / 2 + j);
                out[to * row_bytes..(to + 1) * row_bytes]
                    .copy_from_slice(&data[from * row_bytes..(from + 1) * row_bytes]);
            }
        }
    }
    out
}

/// A safetensors file of F32 tensors.
fn safetensors(tensors: &[(String, Vec<usize>, Vec<u8>)]) -> foehn_loader::SafetensorsModel {
    let mut header = serde_json::Map::new();
    let mut at = 0;
    for (name, shape, data) in tensors {
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [at, at + data.len()]}),
        );
        at += data.len();
    }
    let mut head = serde_json::Value::Object(header).to_string().into_bytes();
    head.resize(head.len().next_multiple_of(8), b' ');
    let mut bytes = (head.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&head);
    for (_, _, data) in tensors {
        bytes.extend_from_slice(data);
    }
    foehn_loader::SafetensorsModel::from_bytes(bytes).unwrap()
}

#[test]
fn hf_mixtral_matches_the_reference() {
    let (st, cfg) = hf_checkpoint();
    let model = Transformer::from_safetensors(Arc::new(st), cfg).unwrap();
    let vocab = model.config().vocab_size;
    let run = run_cpu(&model);
    let want = reference_logits("F32");
    let (chunk, decode) = (
        max_diff(&run.all, &want, vocab),
        max_diff(&run.decoded, &want, vocab),
    );
    eprintln!("HF mixtral cpu: max |Δ| vs reference: chunk {chunk:.2e}, decode {decode:.2e}");
    assert!(
        chunk <= TOL && decode <= TOL,
        "chunk {chunk}, decode {decode}"
    );
}

fn load_err(file: GgufFile) -> ModelError {
    match Transformer::from_gguf(Arc::new(file)) {
        Ok(_) => panic!("a malformed file loaded"),
        Err(e) => e,
    }
}

#[test]
fn malformed_mixtures_are_errors() {
    // A merged expert tensor missing.
    let e = load_err(rewritten("F32", &[], |t| {
        if t.name == "blk.1.ffn_up_exps.weight" {
            vec![]
        } else {
            same(t)
        }
    }));
    let msg = e.to_string();
    assert!(
        msg.contains("blk.1.ffn_up.0.weight") && msg.contains("blk.1.ffn_up_exps.weight"),
        "{msg}"
    );

    // One per-expert tensor missing.
    let apart = per_expert_file();
    let e = load_err(rewritten_from(&apart, "blk.0.ffn_down.5.weight"));
    assert!(e.to_string().contains("blk.0.ffn_down.5.weight"), "{e}");

    // Seven experts stored where the metadata says eight.
    let e = load_err(rewritten("F32", &[], |t| {
        if t.name != "blk.0.ffn_gate_exps.weight" {
            return same(t);
        }
        let per = t.data.len() / 8;
        let shape = vec![t.shape[0], t.shape[1], 7];
        vec![(t.name.to_string(), t.ty, shape, t.data[..7 * per].to_vec())]
    }));
    assert!(
        matches!(&e, ModelError::Shape { tensor, expected, found }
            if tensor == "blk.0.ffn_gate_exps.weight" && expected[2] == 8 && found[2] == 7),
        "{e}"
    );

    // A router of the wrong width.
    let e = load_err(rewritten("F32", &[], |t| {
        if t.name != "blk.0.ffn_gate_inp.weight" {
            return same(t);
        }
        let shape = vec![t.shape[0], 7];
        vec![(
            t.name.to_string(),
            t.ty,
            shape,
            t.data[..t.data.len() / 8 * 7].to_vec(),
        )]
    }));
    assert!(
        matches!(&e, ModelError::Shape { tensor, .. } if tensor == "blk.0.ffn_gate_inp.weight"),
        "{e}"
    );

    // More experts per token than experts.
    let e = load_err(rewritten(
        "F32",
        &[("llama.expert_used_count", Value::U32(9))],
        same,
    ));
    assert!(e.to_string().contains("got 9 of 8"), "{e}");
}

/// `file` without the tensor `drop`.
fn rewritten_from(file: &GgufFile, drop: &str) -> GgufFile {
    let mut w = GgufWriter::new();
    for (k, v) in file.metadata().iter() {
        w.add_metadata(k, v.clone()).unwrap();
    }
    for info in file.tensors().iter().filter(|t| t.name != drop) {
        let t = file.tensor(&info.name).unwrap();
        w.add_tensor(&info.name, t.ty, t.shape, t.data).unwrap();
    }
    let mut bytes = Vec::new();
    w.write_to(&mut bytes).unwrap();
    GgufFile::from_bytes(bytes).unwrap()
}

#[cfg(feature = "candle")]
mod candle_backend {
    use super::*;
    use foehn_model::candle::{CandleTransformer, Device};

    fn logits(variant: &str) -> (Vec<f32>, Vec<f32>, usize) {
        let model = CandleTransformer::from_gguf(&Arc::new(file(variant)), &Device::Cpu).unwrap();
        let prompt = prompt();
        let opts = KvCacheOptions {
            ctx_len: None,
            types: KvCacheType::F32.into(),
            max_chunk: 64,
        };
        let mut cache = model.new_cache(opts).unwrap();
        let mut work = model.new_scratch(&cache);
        let all = model
            .forward(&prompt, &mut cache, &mut work, LogitsMode::All)
            .unwrap()
            .to_vec();
        let mut cache = model.new_cache(opts).unwrap();
        let mut work = model.new_scratch(&cache);
        let mut decoded = Vec::new();
        for &t in &prompt {
            let l = model
                .forward(&[t], &mut cache, &mut work, LogitsMode::Last)
                .unwrap();
            decoded.extend_from_slice(l);
        }
        (all, decoded, model.config().vocab_size)
    }

    #[test]
    fn candle_f32_matches_the_reference() {
        let (all, decoded, vocab) = logits("F32");
        let want = reference_logits("F32");
        let (a, d) = (
            max_diff(&all, &want, vocab),
            max_diff(&decoded, &want, vocab),
        );
        eprintln!("F32 candle: max |Δ| vs reference: chunk {a:.2e}, decode {d:.2e}");
        assert!(a <= TOL && d <= TOL, "chunk {a}, decode {d}");
    }

    #[test]
    fn candle_q4_k_m_matches_the_reference_and_llama_cpp() {
        let (all, decoded, vocab) = logits("Q4_K_M");
        let want = reference_logits("Q4_K_M");
        let d = max_logprob_diff(&all, &want, vocab).max(max_logprob_diff(&decoded, &want, vocab));
        let agree = top1_agreement(&all, vocab, "Q4_K_M", d);
        eprintln!(
            "Q4_K_M candle: max |Δ logprob| vs reference {d:.3e}; top-1 = llama.cpp's at {agree}"
        );
        assert!(d <= quant_tol("Q4_K_M"), "{d}");
    }
}
