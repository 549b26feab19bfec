//! Hugging Face checkpoints as Mistral publishes them: the text decoder of a
//! multimodal `Mistral3ForConditionalGeneration` (under `language_model.` or
//! `model.language_model.`, beside a vision tower that is never read), and
//! FP8 E4M3 weights with `weight_scale_inv` scales, per tensor or per block.
//! Built here from tiny-mistral's BF16 safetensors.

mod common;

use std::sync::Arc;

use common::{max_abs_diff, prompts, read_json, tiny};
use foehn_loader::{config_from_hf_json, SafetensorsModel, StDtype};
use foehn_model::{argmax, KvCacheOptions, KvCacheType, LogitsMode, ModelError, Transformer};
use half::bf16;

/// One tensor of a checkpoint being written.
struct Tensor {
    name: String,
    dtype: &'static str,
    shape: Vec<usize>,
    data: Vec<u8>,
}

/// A safetensors file in memory (8-byte header length, JSON header, data).
fn safetensors(tensors: &[Tensor]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut offset = 0;
    for t in tensors {
        header.insert(
            t.name.clone(),
            serde_json::json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, offset + t.data.len()]}),
        );
        offset += t.data.len();
    }
    let mut head = serde_json::Value::Object(header).to_string().into_bytes();
    while !head.len().is_multiple_of(8) {
        head.push(b' ');
    }
    let mut out = (head.len() as u64).to_le_bytes().to_vec();
    out.extend(head);
    for t in tensors {
        out.extend(&t.data);
    }
    out
}

/// tiny-mistral's tensors: (name, shape, values), all BF16 in the file.
fn tiny_tensors() -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let st = SafetensorsModel::open(tiny().join("hf")).unwrap();
    st.tensor_names()
        .map(|name| {
            let t = st.tensor(name).unwrap();
            assert_eq!(t.dtype, StDtype::BF16);
            let values = t
                .data
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect();
            (name.to_string(), t.shape.to_vec(), values)
        })
        .collect()
}

fn bf16_bytes(values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
        .collect()
}

/// Every finite E4M3 ("fn") value, by code: 2^(e−7)·(1 + m/8), subnormals 2^−6·m/8.
fn e4m3_table() -> Vec<(u8, f32)> {
    (0u8..=255)
        .filter(|&c| c & 0x7F != 0x7F)
        .map(|c| {
            let (e, m) = (i32::from((c >> 3) & 15), f32::from(c & 7));
            let mag = if e == 0 {
                m / 8.0 / 64.0
            } else {
                (1.0 + m / 8.0) * 2f32.powi(e - 7)
            };
            (c, if c & 0x80 != 0 { -mag } else { mag })
        })
        .collect()
}

/// The nearest E4M3 code of `v` (|v| ≤ 448).
fn to_e4m3(table: &[(u8, f32)], v: f32) -> u8 {
    table
        .iter()
        .min_by(|a, b| (a.1 - v).abs().total_cmp(&(b.1 - v).abs()))
        .unwrap()
        .0
}

/// Whether a tensor is a linear layer's weight (what FP8 checkpoints quantize).
fn is_linear(name: &str) -> bool {
    name.contains("_proj.weight")
}

/// FP8 of a `rows × cols` weight with one scale per `block × block` (amax/448):
/// the codes, the scales, and the values they stand for rounded to bf16 (the
/// weight of the BF16 twin).
fn fp8_blocks(
    values: &[f32],
    rows: usize,
    cols: usize,
    block: usize,
) -> (Vec<u8>, Vec<f32>, Vec<f32>) {
    let table = e4m3_table();
    let (br, bc) = (rows / block, cols / block);
    let mut scales = vec![0.0f32; br * bc];
    for r in 0..rows {
        for c in 0..cols {
            let s = &mut scales[(r / block) * bc + c / block];
            *s = s.max(values[r * cols + c].abs() / 448.0);
        }
    }
    let mut codes = Vec::with_capacity(values.len());
    let mut twin = Vec::with_capacity(values.len());
    for r in 0..rows {
        for c in 0..cols {
            let s = scales[(r / block) * bc + c / block].max(f32::MIN_POSITIVE);
            let code = to_e4m3(&table, values[r * cols + c] / s);
            let value = table.iter().find(|t| t.0 == code).unwrap().1;
            codes.push(code);
            twin.push(bf16::from_f32(value * s).to_f32());
        }
    }
    (codes, scales, twin)
}

/// The multimodal config around tiny-mistral's text config.
fn mistral3_config() -> Vec<u8> {
    let text = read_json(&tiny().join("hf/config.json"));
    serde_json::json!({
        "architectures": ["Mistral3ForConditionalGeneration"], "model_type": "mistral3",
        "text_config": text, "vision_config": {"hidden_size": 16},
        "quantization_config": {"quant_method": "fp8", "weight_block_size": [32, 32]}
    })
    .to_string()
    .into_bytes()
}

/// The vision tower and projector of a multimodal checkpoint (never read).
fn vision_tensors() -> Vec<Tensor> {
    vec![
        Tensor {
            name: "vision_tower.patch_conv.weight".into(),
            dtype: "F32",
            shape: vec![4, 4],
            data: vec![0; 64],
        },
        Tensor {
            name: "multi_modal_projector.linear_1.weight".into(),
            dtype: "BF16",
            shape: vec![2, 8],
            data: vec![0; 32],
        },
    ]
}

fn model_of(tensors: &[Tensor]) -> Transformer {
    let cfg = config_from_hf_json(&mistral3_config()).unwrap();
    let st = SafetensorsModel::from_bytes(safetensors(tensors)).unwrap();
    Transformer::from_safetensors(Arc::new(st), cfg).unwrap()
}

/// Every position's logits of each public prompt (f32 cache).
fn logits(model: &Transformer) -> Vec<Vec<f32>> {
    prompts()
        .iter()
        .map(|(_, ids)| {
            let mut cache = model
                .new_cache(KvCacheOptions {
                    ctx_len: Some(ids.len()),
                    types: KvCacheType::F32.into(),
                    max_chunk: ids.len(),
                })
                .unwrap();
            let mut work = model.new_scratch(&cache);
            model
                .forward(ids, &mut cache, &mut work, LogitsMode::All)
                .unwrap()
                .to_vec()
        })
        .collect()
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(a, b)| max_abs_diff(a, b))
        .fold(0.0, f32::max)
}

/// The plain checkpoint's logits (names as tiny-mistral's own file).
fn plain_logits() -> Vec<Vec<f32>> {
    let tensors: Vec<Tensor> = tiny_tensors()
        .into_iter()
        .map(|(name, shape, values)| Tensor {
            name,
            dtype: "BF16",
            shape,
            data: bf16_bytes(&values),
        })
        .collect();
    logits(&model_of(&tensors))
}

#[test]
fn multimodal_prefixes_give_the_text_model() {
    let plain = plain_logits();
    for (prefix, lm_head) in [
        ("language_model.model.", "language_model.lm_head.weight"),
        ("model.language_model.", "lm_head.weight"),
    ] {
        let mut tensors = vision_tensors();
        for (name, shape, values) in tiny_tensors() {
            let name = match name.strip_prefix("model.") {
                Some(rest) => format!("{prefix}{rest}"),
                None => lm_head.to_string(),
            };
            tensors.push(Tensor {
                name,
                dtype: "BF16",
                shape,
                data: bf16_bytes(&values),
            });
        }
        assert_eq!(
            max_diff(&logits(&model_of(&tensors)), &plain),
            0.0,
            "{prefix}"
        );
    }
}

#[test]
fn fp8_block_scaled_weights_equal_their_bf16_twin() {
    let (mut fp8, mut twin) = (vision_tensors(), Vec::new());
    for (name, shape, values) in tiny_tensors() {
        let prefixed = match name.strip_prefix("model.") {
            Some(rest) => format!("language_model.model.{rest}"),
            None => format!("language_model.{name}"),
        };
        if is_linear(&name) {
            let (rows, cols) = (shape[0], shape[1]);
            let (codes, scales, dequantized) = fp8_blocks(&values, rows, cols, 32);
            fp8.push(Tensor {
                name: format!("{prefixed}_scale_inv"),
                dtype: "F32",
                shape: vec![rows / 32, cols / 32],
                data: scales.iter().flat_map(|s| s.to_le_bytes()).collect(),
            });
            fp8.push(Tensor {
                name: prefixed,
                dtype: "F8_E4M3",
                shape: shape.clone(),
                data: codes,
            });
            twin.push(Tensor {
                name,
                dtype: "BF16",
                shape,
                data: bf16_bytes(&dequantized),
            });
        } else {
            let data = bf16_bytes(&values);
            fp8.push(Tensor {
                name: prefixed,
                dtype: "BF16",
                shape: shape.clone(),
                data: data.clone(),
            });
            twin.push(Tensor {
                name,
                dtype: "BF16",
                shape,
                data,
            });
        }
    }
    let (fp8, twin) = (logits(&model_of(&fp8)), logits(&model_of(&twin)));
    assert_eq!(max_diff(&fp8, &twin), 0.0, "FP8 and its BF16 twin");
    // And FP8's own error against the original weights: small next to the logits' spread.
    let plain = plain_logits();
    let d = max_diff(&fp8, &plain);
    let agree = fp8
        .iter()
        .zip(&plain)
        .flat_map(|(a, b)| a.chunks(1024).zip(b.chunks(1024)))
        .filter(|(a, b)| argmax(a) == argmax(b))
        .count();
    let total: usize = plain.iter().map(|p| p.len() / 1024).sum();
    // The yardstick: what 8- and 4-bit GGUF weights of the same model move the logits by.
    let gguf = |variant: &str| {
        let path = tiny().join(format!("gguf/tiny-mistral-{variant}.gguf"));
        logits(
            &Transformer::from_gguf(Arc::new(foehn_loader::GgufFile::open(path).unwrap())).unwrap(),
        )
    };
    let f32_logits = gguf("F32");
    let (q8, q4) = (
        max_diff(&gguf("Q8_0"), &f32_logits),
        max_diff(&gguf("Q4_K_M"), &f32_logits),
    );
    eprintln!(
        "FP8 vs BF16 weights: max |Δ| {d:.3}, top-1 equal at {agree}/{total} positions \
         (Q8_0 GGUF: {q8:.3}, Q4_K_M: {q4:.3})"
    );
    // E4M3 keeps 3 mantissa bits: between 8-bit and 4-bit block quantization.
    assert!(
        d > q8 && d < q4,
        "FP8 |Δ| {d} outside Q8_0 {q8} .. Q4_K_M {q4}"
    );
}

#[test]
fn fp8_errors_are_clear() {
    let build = |drop_scale: bool, scale_shape: Vec<usize>| {
        let mut tensors = Vec::new();
        for (name, shape, values) in tiny_tensors() {
            if name == "model.layers.0.self_attn.q_proj.weight" {
                let (codes, scales, _) = fp8_blocks(&values, shape[0], shape[1], 32);
                if !drop_scale {
                    let n: usize = scale_shape.iter().product();
                    tensors.push(Tensor {
                        name: format!("{name}_scale_inv"),
                        dtype: "F32",
                        shape: scale_shape.clone(),
                        data: scales[..n].iter().flat_map(|s| s.to_le_bytes()).collect(),
                    });
                }
                tensors.push(Tensor {
                    name,
                    dtype: "F8_E4M3",
                    shape,
                    data: codes,
                });
            } else {
                tensors.push(Tensor {
                    name,
                    dtype: "BF16",
                    shape,
                    data: bf16_bytes(&values),
                });
            }
        }
        let cfg = config_from_hf_json(&mistral3_config()).unwrap();
        let st = SafetensorsModel::from_bytes(safetensors(&tensors)).unwrap();
        Transformer::from_safetensors(Arc::new(st), cfg)
    };
    let msg = |r: Result<Transformer, ModelError>| match r {
        Err(e) => e.to_string(),
        Ok(_) => panic!("expected an error"),
    };
    assert!(msg(build(true, vec![])).contains("weight_scale_inv"));
    assert!(msg(build(false, vec![7, 3])).contains("does not tile"));
    // A per-tensor scale works.
    assert!(build(false, vec![1]).is_ok());
}
