//! Test support shared by foehn's crates: where the fixtures are, a reader
//! for the float32 `.npy` files among them, and a JSON-schema check. Test code only: it panics on bad input.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

/// The repository's `tests/fixtures` folder.
pub fn fixtures() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures"))
}

/// A file or folder under `tests/fixtures`.
pub fn fixture(rel: &str) -> PathBuf {
    fixtures().join(rel)
}

/// A float32 `.npy` array: its shape and data (C order).
pub struct Npy {
    /// The array's dimensions, outermost first.
    pub shape: Vec<usize>,
    /// The elements in C (row-major) order.
    pub data: Vec<f32>,
}

impl Npy {
    /// Row `i` of a 2-D array.
    pub fn row(&self, i: usize) -> &[f32] {
        let w = self.shape[1];
        &self.data[i * w..(i + 1) * w]
    }
}

/// Reads a little-endian float32, C-order `.npy` file (format versions 1–3).
pub fn read_npy(path: &Path) -> Npy {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        &bytes[..6],
        b"\x93NUMPY",
        "{}: not a .npy file",
        path.display()
    );
    let (header_len, header_start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => (
            u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize,
            12,
        ),
        v => panic!("{}: unsupported .npy version {v}", path.display()),
    };
    let header = std::str::from_utf8(&bytes[header_start..header_start + header_len]).unwrap();
    assert!(
        header.contains("'descr': '<f4'"),
        "{}: {header}",
        path.display()
    );
    assert!(
        header.contains("'fortran_order': False"),
        "{}: {header}",
        path.display()
    );
    let shape_start = header.find("'shape': (").unwrap() + "'shape': (".len();
    let shape_end = shape_start + header[shape_start..].find(')').unwrap();
    let shape: Vec<usize> = header[shape_start..shape_end]
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    let payload = &bytes[header_start + header_len..];
    assert_eq!(
        payload.len(),
        4 * shape.iter().product::<usize>(),
        "{}",
        path.display()
    );
    let data = payload
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    Npy { shape, data }
}

/// Checks `value` against the subset of JSON schema that foehn's tests use
/// (`type` object / array / string / integer / number / boolean, `enum`,
/// `const`, `required`, `properties`, `additionalProperties: false`,
/// `maxItems`, length and range bounds); the error says where, `at` being
/// the path so far (`$` at the top).
pub fn validate_json(value: &Value, schema: &Value, at: &str) -> Result<(), String> {
    let fail = |why: &str| Err(format!("{at}: {why} ({value})"));
    if schema.get("const").is_some_and(|c| c != value) {
        return fail("not the const value");
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array) {
        if !options.contains(value) {
            return fail("not one of the enum's values");
        }
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => {
            let Some(map) = value.as_object() else {
                return fail("not an object");
            };
            let props = schema["properties"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            for key in schema["required"].as_array().into_iter().flatten() {
                if !map.contains_key(key.as_str().unwrap()) {
                    return fail(&format!("missing {key}"));
                }
            }
            for (key, v) in map {
                match props.get(key) {
                    Some(s) => validate_json(v, s, &format!("{at}.{key}"))?,
                    None if schema["additionalProperties"] == json!(false) => {
                        return fail(&format!("unexpected key {key}"))
                    }
                    None => {}
                }
            }
        }
        Some("array") => {
            let Some(items) = value.as_array() else {
                return fail("not an array");
            };
            if schema["maxItems"]
                .as_u64()
                .is_some_and(|m| items.len() as u64 > m)
            {
                return fail("too many items");
            }
            for (i, item) in items.iter().enumerate() {
                validate_json(item, &schema["items"], &format!("{at}[{i}]"))?;
            }
        }
        Some("string") => {
            let Some(s) = value.as_str() else {
                return fail("not a string");
            };
            let n = s.chars().count() as u64;
            if schema["maxLength"].as_u64().is_some_and(|m| n > m)
                || schema["minLength"].as_u64().is_some_and(|m| n < m)
            {
                return fail("length out of bounds");
            }
        }
        Some("integer") => {
            let Some(i) = value.as_i64() else {
                return fail("not an integer");
            };
            if schema["minimum"].as_i64().is_some_and(|m| i < m)
                || schema["maximum"].as_i64().is_some_and(|m| i > m)
            {
                return fail("out of range");
            }
        }
        Some("number") => {
            let Some(x) = value.as_f64() else {
                return fail("not a number");
            };
            if schema["minimum"].as_f64().is_some_and(|m| x < m)
                || schema["maximum"].as_f64().is_some_and(|m| x > m)
            {
                return fail("out of range");
            }
        }
        Some("boolean") if !value.is_boolean() => return fail("not a boolean"),
        Some("boolean") => {}
        Some(other) => panic!("the test's validator does not know type {other}"),
        None => {}
    }
    Ok(())
}
