//! Fuzzes the safetensors header parser: any bytes must give a model or an
//! error, never a panic or a file-sized allocation, and every tensor of a model
//! that parses must be readable (or refused by dtype) without panicking.
#![no_main]

use foehn_loader::SafetensorsModel;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(model) = SafetensorsModel::from_bytes(data.to_vec()) else {
        return;
    };
    let names: Vec<String> = model.tensor_names().map(str::to_owned).collect();
    assert_eq!(names.len(), model.len());
    for name in &names {
        if let Ok(t) = model.tensor(name) {
            assert_eq!(t.name, name.as_str());
            assert_eq!(t.data.len(), t.len() * t.dtype.size_in_bytes());
            // Touch the bytes so that a bad range would fault here.
            std::hint::black_box(t.data.iter().fold(0u8, |a, &b| a ^ b));
        }
    }
});
