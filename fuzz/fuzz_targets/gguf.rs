//! Fuzzes the GGUF reader: any input must give `Ok` or `Err`, never a panic,
//! abort, huge allocation or hang; an accepted file must be self-consistent
//! and survive a write/read round trip.

#![no_main]

use foehn_loader::gguf::{GgufWriter, Value};
use foehn_loader::{GgufFile, LoadError};
use libfuzzer_sys::fuzz_target;

/// Visits every (nested) value; returns something that depends on all of them.
fn touch(value: &Value) -> u64 {
    match value {
        Value::Array(_, items) => items.iter().map(touch).fold(1, u64::wrapping_add),
        Value::String(s) => s.len() as u64,
        Value::Bool(b) => u64::from(*b),
        v => v.as_f64().map_or(0, f64::to_bits),
    }
}

/// The file as the writer would produce it (only for small alignments: the
/// writer pads each tensor to it).
fn rewrite(f: &GgufFile) -> Option<Vec<u8>> {
    if f.alignment() > 4096 {
        return None;
    }
    let mut w = GgufWriter::new();
    for (k, v) in f.metadata().iter() {
        w.add_metadata(k, v.clone()).ok()?;
    }
    for t in f.tensors() {
        let view = f.tensor(&t.name).ok()?;
        w.add_tensor(view.name, view.ty, view.shape, view.data).ok()?;
    }
    let mut out = Vec::new();
    w.write_to(&mut out).ok()?;
    Some(out)
}

fuzz_target!(|data: &[u8]| {
    let Ok(f) = GgufFile::from_bytes(data.to_vec()) else { return };
    assert!(matches!(f.version(), 2 | 3));
    assert!(f.alignment().is_power_of_two());
    assert_eq!(f.data_offset() % f.alignment(), 0);
    let mut sum = 0u64;
    for (k, v) in f.metadata().iter() {
        sum = sum.wrapping_add(k.len() as u64).wrapping_add(touch(v));
    }
    for t in f.tensors() {
        sum = sum.wrapping_add(t.n_elements());
        match (t.ggml_type(), f.tensor(&t.name)) {
            (Some(ty), Ok(view)) => {
                assert_eq!(view.ty, ty);
                assert_eq!(Some(view.data.len() as u64), t.n_bytes);
                sum = sum.wrapping_add(view.data.iter().map(|&b| u64::from(b)).sum::<u64>());
            }
            (None, Err(LoadError::UnsupportedTensorType { .. })) => assert_eq!(t.n_bytes, None),
            (ty, r) => panic!("tensor {:?}: type {ty:?} gave {r:?}", t.name),
        }
    }
    std::hint::black_box(sum);

    // What the writer makes of an accepted file is accepted too, and stable.
    if let Some(once) = rewrite(&f) {
        let again = GgufFile::from_bytes(once.clone()).expect("the writer's output is readable");
        assert_eq!(again.tensors().len(), f.tensors().len());
        assert_eq!(rewrite(&again).as_ref(), Some(&once));
    }
});
