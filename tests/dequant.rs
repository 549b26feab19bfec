//! Every scalar dequantizer against gguf-py: for each type listed in
//! `tests/fixtures/dequant/index.json`, the named rows of a real GGUF tensor are
//! dequantized and compared with gguf-py's float32 output (`.npy`).

use foehn::kernels::{dequantize_row, GgmlType};
use foehn::loader::gguf::GgufFile;
use foehn_testkit::{fixtures, read_npy};

/// Largest relative difference accepted (gguf-py uses ggml's formulas in f32;
/// only the operation order may move the last bit).
const MAX_REL: f64 = 1e-6;

/// Largest `|got - want| / max(|want|, tiny)` over a row.
fn max_rel_error(got: &[f32], want: &[f32]) -> f64 {
    got.iter()
        .zip(want)
        .map(|(&g, &w)| {
            let (g, w) = (f64::from(g), f64::from(w));
            assert!(
                g.is_finite() && w.is_finite(),
                "non-finite value: got {g}, want {w}"
            );
            (g - w).abs() / w.abs().max(f64::from(f32::MIN_POSITIVE))
        })
        .fold(0.0, f64::max)
}

#[test]
fn dequantize_matches_gguf_py() {
    let dir = fixtures();
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("dequant/index.json")).unwrap())
            .unwrap();
    let types = index["types"]
        .as_object()
        .expect("index.json: `types` is an object");
    assert!(!types.is_empty(), "index.json lists no types");

    let mut report = Vec::new();
    for (type_name, entry) in types {
        let gguf_path = dir.join(entry["gguf_file"].as_str().unwrap());
        let tensor_name = entry["tensor"].as_str().unwrap();
        let row_length = entry["row_length"].as_u64().unwrap() as usize;
        let rows: Vec<usize> = entry["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_u64().unwrap() as usize)
            .collect();
        let npy = read_npy(&dir.join(entry["npy"].as_str().unwrap()));

        let gguf =
            GgufFile::open(&gguf_path).unwrap_or_else(|e| panic!("{}: {e}", gguf_path.display()));
        let view = gguf.tensor(tensor_name).unwrap();
        // The entry's key names the type the tensor must have.
        assert_eq!(
            view.ty.name(),
            type_name,
            "{tensor_name} in {}",
            gguf_path.display()
        );
        assert!(view.ty.can_dequantize(), "{type_name}");
        assert_eq!(
            view.shape[0] as usize, row_length,
            "{type_name}: row length"
        );
        assert_eq!(
            npy.shape,
            [rows.len(), row_length],
            "{type_name}: .npy shape"
        );

        let ty: GgmlType = view.ty;
        let row_bytes = ty.row_bytes(row_length).unwrap();
        let mut out = vec![0f32; row_length];
        let mut worst = 0f64;
        for (i, &r) in rows.iter().enumerate() {
            let src = &view.data[r * row_bytes..(r + 1) * row_bytes];
            dequantize_row(ty, src, &mut out).unwrap();
            let want = &npy.data[i * row_length..(i + 1) * row_length];
            // A zero row would pass any relative test vacuously.
            assert!(
                want.iter().any(|&w| w != 0.0),
                "{type_name}: row {r} is all zeros"
            );
            let err = max_rel_error(&out, want);
            assert!(
                err <= MAX_REL,
                "{type_name}: row {r}: max relative error {err:e} > {MAX_REL:e}"
            );
            worst = worst.max(err);
        }
        report.push(format!(
            "{type_name}: max rel error {worst:e} over {} rows",
            rows.len()
        ));
    }
    // Shown with `--nocapture`.
    for line in report {
        println!("{line}");
    }
}
