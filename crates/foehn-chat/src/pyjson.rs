//! JSON as Python's `json.dumps(x, ensure_ascii=False)` writes it, with keys
//! in the order they were read: mistral-common tokenizes tool definitions and
//! tool-call arguments in that form (`{"a": 1, "b": [2, 3]}`).
//!
//! serde_json's own `Value` sorts object keys (its `preserve_order` feature is
//! off in this workspace), so JSON text is read into [`PyJson`], which keeps
//! them as written, as Python's `json.loads` does.

use std::fmt::{self, Write as _};

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// A JSON value with object keys in their original order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum PyJson {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Array(Vec<PyJson>),
    Object(Vec<(String, PyJson)>),
}

impl PyJson {
    /// Parses JSON text as `json.loads` does; `None` when it is not JSON.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        serde_json::from_str(text).ok()
    }

    /// A serde_json value (its keys in serde_json's order).
    pub(crate) fn from_value(value: &serde_json::Value) -> Self {
        use serde_json::Value;
        match value {
            Value::Null => Self::Null,
            Value::Bool(b) => Self::Bool(*b),
            Value::Number(n) => match (n.as_i64(), n.as_u64()) {
                (Some(i), _) => Self::Int(i.into()),
                (None, Some(u)) => Self::Int(u.into()),
                (None, None) => Self::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            Value::String(s) => Self::Str(s.clone()),
            Value::Array(items) => Self::Array(items.iter().map(Self::from_value).collect()),
            Value::Object(map) => Self::Object(
                map.iter()
                    .map(|(k, v)| (k.clone(), Self::from_value(v)))
                    .collect(),
            ),
        }
    }

    /// `json.dumps(self, ensure_ascii=False)`.
    pub(crate) fn dumps(&self) -> String {
        let mut out = String::new();
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut String) {
        match self {
            Self::Null => out.push_str("null"),
            Self::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Self::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Self::Float(f) => write_float(*f, out),
            Self::Str(s) => write_str(s, out),
            Self::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    item.write(out);
                }
                out.push(']');
            }
            Self::Object(entries) => {
                out.push('{');
                for (i, (key, value)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    write_str(key, out);
                    out.push_str(": ");
                    value.write(out);
                }
                out.push('}');
            }
        }
    }
}

/// Python's `float.__repr__`: the shortest round-trip digits, `.0` on whole
/// numbers, exponent form (`1e-05`, `1e+16`) below 1e-4 and from 1e16 on.
fn write_float(f: f64, out: &mut String) {
    if f.is_nan() {
        out.push_str("NaN");
    } else if f.is_infinite() {
        out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
    } else {
        // Rust's `{:?}` switches to exponent form at the same thresholds.
        let repr = format!("{f:?}");
        match repr.split_once('e') {
            None => out.push_str(&repr),
            Some((mantissa, exp)) => {
                let (sign, digits) = match exp.strip_prefix('-') {
                    Some(d) => ('-', d),
                    None => ('+', exp),
                };
                let mantissa = mantissa.strip_suffix(".0").unwrap_or(mantissa);
                let _ = write!(out, "{mantissa}e{sign}{digits:0>2}");
            }
        }
    }
}

/// A JSON string as `json.dumps(ensure_ascii=False)` escapes it.
fn write_str(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

impl<'de> Deserialize<'de> for PyJson {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(PyJsonVisitor)
    }
}

struct PyJsonVisitor;

impl<'de> Visitor<'de> for PyJsonVisitor {
    type Value = PyJson;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<PyJson, E> {
        Ok(PyJson::Null)
    }

    fn visit_bool<E>(self, b: bool) -> Result<PyJson, E> {
        Ok(PyJson::Bool(b))
    }

    fn visit_i64<E>(self, i: i64) -> Result<PyJson, E> {
        Ok(PyJson::Int(i.into()))
    }

    fn visit_u64<E>(self, u: u64) -> Result<PyJson, E> {
        Ok(PyJson::Int(u.into()))
    }

    fn visit_f64<E>(self, f: f64) -> Result<PyJson, E> {
        Ok(PyJson::Float(f))
    }

    fn visit_str<E>(self, s: &str) -> Result<PyJson, E> {
        Ok(PyJson::Str(s.to_owned()))
    }

    fn visit_string<E>(self, s: String) -> Result<PyJson, E> {
        Ok(PyJson::Str(s))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<PyJson, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(PyJson::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PyJson, A::Error> {
        let mut entries: Vec<(String, PyJson)> = Vec::new();
        while let Some((key, value)) = map.next_entry::<String, PyJson>()? {
            // `json.loads` keeps a repeated key's last value at its first place.
            match entries.iter_mut().find(|(k, _)| *k == key) {
                Some(entry) => entry.1 = value,
                None => entries.push((key, value)),
            }
        }
        Ok(PyJson::Object(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(text: &str) -> String {
        PyJson::parse(text).expect("valid JSON").dumps()
    }

    #[test]
    fn dumps_like_python() {
        // Expected strings are Python 3.11's json.dumps(json.loads(text), ensure_ascii=False).
        assert_eq!(
            roundtrip(r#"{"z":1,"a":[true,null,"x"],"m":{"k":-2}}"#),
            r#"{"z": 1, "a": [true, null, "x"], "m": {"k": -2}}"#
        );
        assert_eq!(
            roundtrip(r#"[1.0, 1.5, 1e-5, 1e16, 2.5e20, 0.0001, 123456789012345678]"#),
            "[1.0, 1.5, 1e-05, 1e+16, 2.5e+20, 0.0001, 123456789012345678]"
        );
        assert_eq!(
            roundtrip(r#""a\"b\\c\n\t\u0001é😀\u007f""#),
            "\"a\\\"b\\\\c\\n\\t\\u0001é😀\u{7f}\""
        );
        assert_eq!(roundtrip(r#"{"a":1,"b":2,"a":3}"#), r#"{"a": 3, "b": 2}"#);
        assert_eq!(PyJson::parse("not json"), None);
    }
}
