//! Python's `str()` / `repr()` of template values, for what templates print:
//! jinja2 writes `True`, `None` and `['a', 1]` where minijinja would write
//! `true`, `none` and `["a", 1]`.

use minijinja::value::ValueKind;
use minijinja::Value;

/// Python's `str(value)`, or `None` where minijinja's own text already is
/// (strings, integers, undefined, objects).
pub(crate) fn python_str(value: &Value) -> Option<String> {
    match value.kind() {
        ValueKind::Bool | ValueKind::None | ValueKind::Seq | ValueKind::Map => {
            let mut out = String::new();
            write_repr(&mut out, value);
            Some(out)
        }
        ValueKind::Number if !value.is_integer() => {
            Some(python_float_repr(f64::try_from(value.clone()).ok()?))
        }
        _ => None,
    }
}

/// The `string` filter as jinja2 has it: `str(value)`, `""` for undefined.
pub(crate) fn string_filter(value: &Value) -> Value {
    if value.is_undefined() {
        return Value::from("");
    }
    match value.kind() {
        ValueKind::String => value.clone(),
        _ => Value::from(python_str(value).unwrap_or_else(|| value.to_string())),
    }
}

fn write_repr(out: &mut String, value: &Value) {
    match value.kind() {
        ValueKind::Bool => out.push_str(if value.is_true() { "True" } else { "False" }),
        ValueKind::None => out.push_str("None"),
        ValueKind::String => write_str_repr(out, value.as_str().unwrap_or_default()),
        ValueKind::Number => match python_str(value) {
            Some(s) => out.push_str(&s),
            None => out.push_str(&value.to_string()),
        },
        ValueKind::Seq => {
            out.push('[');
            for (i, item) in value.try_iter().into_iter().flatten().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_repr(out, &item);
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            for (i, key) in value.try_iter().into_iter().flatten().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_repr(out, &key);
                out.push_str(": ");
                write_repr(out, &value.get_item(&key).unwrap_or_default());
            }
            out.push('}');
        }
        ValueKind::Undefined => out.push_str("Undefined"),
        _ => out.push_str(&value.to_string()),
    }
}

/// Python's `repr(str)`: single quotes unless the text has `'` and no `"`.
fn write_str_repr(out: &mut String, s: &str) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

/// Python's `repr(float)`: shortest round-trip digits, exponent form below
/// 1e-4 and from 1e16 on (`1e+16`, `1.5e-05`); `NaN` / `Infinity` as
/// `json.dumps` writes them.
pub(crate) fn python_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    let a = f.abs();
    if a != 0.0 && !(1e-4..1e16).contains(&a) {
        let s = format!("{f:e}");
        let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let (sign, digits) = match exp.strip_prefix('-') {
            Some(d) => ('-', d),
            None => ('+', exp),
        };
        return format!("{mantissa}e{sign}{digits:0>2}");
    }
    let s = format!("{f}");
    if s.contains('.') {
        s
    } else {
        s + ".0"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_like_python() {
        let v = Value::from_serialize(serde_json::json!([
            1,
            2.5,
            true,
            null,
            "it's",
            "a\"b'c\n",
            []
        ]));
        assert_eq!(
            python_str(&v).unwrap(),
            r#"[1, 2.5, True, None, "it's", 'a"b\'c\n', []]"#
        );
        assert_eq!(python_str(&Value::from(false)).unwrap(), "False");
        assert_eq!(python_str(&Value::from(3)), None);
        assert_eq!(python_str(&Value::from("text")), None);
        assert_eq!(string_filter(&Value::UNDEFINED).as_str(), Some(""));
        for (f, want) in [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1e16, "1e+16"),
            (1.5e-5, "1.5e-05"),
            (-0.0, "-0.0"),
            (123.456, "123.456"),
        ] {
            assert_eq!(python_float_repr(f), want);
        }
    }
}
