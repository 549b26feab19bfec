//! The quantizers against llama.cpp, byte for byte: every quantized tiny-mistral
//! GGUF was made by `llama-quantize` from `tiny-mistral-F32.gguf` without an
//! importance matrix, i.e. with ggml's `quantize_row_*_ref`. Quantizing the F32
//! tensors with foehn must give the same bytes, tensor by tensor.

use foehn::kernels::{quantize_matrix, GgmlType};
use foehn::loader::gguf::GgufFile;
use foehn_testkit::fixture;

/// The shipped quantized variants (MANIFEST.md).
const VARIANTS: [&str; 10] = [
    "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K_M", "Q5_K_M", "Q6_K", "Q3_K_M", "Q2_K",
];

fn open(variant: &str) -> GgufFile {
    let path = fixture(&format!("tiny-mistral/gguf/tiny-mistral-{variant}.gguf"));
    GgufFile::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn quantizers_match_llama_quantize_byte_for_byte() {
    let f32_file = open("F32");
    let mut checked = std::collections::BTreeMap::<&str, (usize, usize)>::new();
    let mut failures = Vec::new();
    for variant in VARIANTS {
        let q_file = open(variant);
        for info in q_file.tensors() {
            let q = q_file.tensor(&info.name).unwrap();
            if !q.ty.is_quantized() {
                continue; // norms stay F32
            }
            assert!(q.ty.can_quantize(), "{variant} {}: {}", info.name, q.ty);
            let src = f32_file.tensor(&info.name).unwrap();
            assert_eq!(src.ty, GgmlType::F32);
            assert_eq!(src.shape, q.shape, "{}", info.name);
            let cols = q.shape[0] as usize;
            let rows = (q.n_elements() as usize) / cols;
            let x: Vec<f32> = src
                .data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            let ours = quantize_matrix(q.ty, rows, cols, &x).unwrap();
            assert_eq!(ours.len(), q.data.len(), "{variant} {}", info.name);
            let bs = q.ty.type_size();
            let bad = ours
                .chunks_exact(bs)
                .zip(q.data.chunks_exact(bs))
                .filter(|(a, b)| a != b)
                .count();
            let e = checked.entry(q.ty.name()).or_default();
            e.0 += ours.len() / bs;
            e.1 += bad;
            if bad > 0 {
                failures.push(format!(
                    "{variant} {} ({}): {bad} of {} blocks differ",
                    info.name,
                    q.ty,
                    ours.len() / bs
                ));
            }
        }
    }
    for (ty, (blocks, bad)) in &checked {
        println!("{ty}: {blocks} blocks compared, {bad} differ");
    }
    let expected = [
        "Q2_K", "Q3_K", "Q4_0", "Q4_1", "Q4_K", "Q5_0", "Q5_1", "Q5_K", "Q6_K", "Q8_0",
    ];
    assert_eq!(checked.keys().copied().collect::<Vec<_>>(), expected);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
