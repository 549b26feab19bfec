//! `tojson` as Hugging Face defines it for chat templates: Python's
//! `json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`.
//! Tool definitions are rendered with it, so its spacing (`{"a": 1, "b": 2}`)
//! is part of the prompt the model was trained on.

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Error, ErrorKind, Value};

/// How to lay out the JSON (Python `json.dumps` options).
#[derive(Debug, Clone)]
pub(crate) struct JsonStyle {
    /// `None`: one line; `Some(s)`: one item per line, `s` per nesting level.
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
    ensure_ascii: bool,
}

impl Default for JsonStyle {
    fn default() -> Self {
        Self {
            indent: None,
            item_sep: ", ".into(),
            key_sep: ": ".into(),
            sort_keys: false,
            ensure_ascii: false,
        }
    }
}

fn invalid(msg: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::new(ErrorKind::InvalidOperation, msg)
}

/// The `tojson` filter: `x|tojson`, `x|tojson(indent=4)`, `x|tojson(2)`,
/// `x|tojson(separators=(",", ":"), sort_keys=true, ensure_ascii=true)`.
pub(crate) fn tojson_filter(
    value: &Value,
    indent: Option<Value>,
    kwargs: Kwargs,
) -> Result<Value, Error> {
    let mut style = JsonStyle::default();
    let indent = match indent {
        Some(v) => Some(v),
        None => kwargs.get::<Option<Value>>("indent")?,
    };
    if let Some(indent) = indent.filter(|v| !v.is_none() && !v.is_undefined()) {
        style.indent = Some(match indent.as_str() {
            Some(s) => s.to_string(),
            None => {
                let n = indent
                    .as_i64()
                    .ok_or_else(|| invalid("tojson: indent must be an integer or a string"))?;
                " ".repeat(usize::try_from(n).unwrap_or(0))
            }
        });
        style.item_sep = ",".into();
    }
    if let Some(seps) = kwargs
        .get::<Option<Value>>("separators")?
        .filter(|v| !v.is_none())
    {
        let parts: Vec<Value> = seps.try_iter()?.collect();
        match parts.as_slice() {
            [a, b] => {
                let (Some(a), Some(b)) = (a.as_str(), b.as_str()) else {
                    return Err(invalid("tojson: separators must be two strings"));
                };
                style.item_sep = a.to_string();
                style.key_sep = b.to_string();
            }
            _ => return Err(invalid("tojson: separators must be two strings")),
        }
    }
    style.sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    style.ensure_ascii = kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false);
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_value(&mut out, value, &style, 0)?;
    Ok(Value::from_safe_string(out))
}

/// Serializes `value` as Python's `json.dumps` would with `style`.
#[cfg(test)]
fn to_json(value: &Value, style: &JsonStyle) -> Result<String, Error> {
    let mut out = String::new();
    write_value(&mut out, value, style, 0)?;
    Ok(out)
}

fn newline(out: &mut String, style: &JsonStyle, level: usize) {
    if let Some(indent) = &style.indent {
        out.push('\n');
        for _ in 0..level {
            out.push_str(indent);
        }
    }
}

fn write_value(
    out: &mut String,
    value: &Value,
    style: &JsonStyle,
    level: usize,
) -> Result<(), Error> {
    match value.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => write_number(out, value),
        ValueKind::String => {
            write_string(out, value.as_str().unwrap_or_default(), style.ensure_ascii)
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&style.item_sep);
                }
                newline(out, style, level + 1);
                write_value(out, item, style, level + 1)?;
            }
            newline(out, style, level);
            out.push(']');
        }
        ValueKind::Map => {
            let mut entries = Vec::new();
            for key in value.try_iter()? {
                let item = value.get_item(&key)?;
                entries.push((key_text(&key)?, item));
            }
            if style.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            if entries.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, (key, item)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(&style.item_sep);
                }
                newline(out, style, level + 1);
                write_string(out, key, style.ensure_ascii);
                out.push_str(&style.key_sep);
                write_value(out, item, style, level + 1)?;
            }
            newline(out, style, level);
            out.push('}');
        }
        ValueKind::Undefined => {
            return Err(invalid(
                "tojson: an undefined value is not JSON serializable",
            ))
        }
        other => {
            return Err(invalid(format!(
                "tojson: a value of kind {other} is not JSON serializable"
            )))
        }
    }
    Ok(())
}

/// Python turns non-string keys into strings (`True` → `"true"`, `1` → `"1"`).
fn key_text(key: &Value) -> Result<String, Error> {
    match key.kind() {
        ValueKind::String => Ok(key.as_str().unwrap_or_default().to_string()),
        ValueKind::Number | ValueKind::Bool | ValueKind::None => {
            let mut s = String::new();
            write_value(&mut s, key, &JsonStyle::default(), 0)?;
            Ok(s)
        }
        other => Err(invalid(format!(
            "tojson: keys must be strings, not {other}"
        ))),
    }
}

fn write_number(out: &mut String, value: &Value) {
    if value.is_integer() {
        if let Ok(i) = i128::try_from(value.clone()) {
            out.push_str(&i.to_string());
            return;
        }
    }
    let f = f64::try_from(value.clone()).unwrap_or(f64::NAN);
    out.push_str(&crate::pyrepr::python_float_repr(f));
}

/// A JSON string literal as Python writes it.
fn write_string(out: &mut String, s: &str, ensure_ascii: bool) {
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
            c if (c as u32) < 0x20 || (ensure_ascii && !(' '..='~').contains(&c)) => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(src: &str, ctx: Value) -> String {
        let mut env = minijinja::Environment::new();
        env.add_filter("tojson", tojson_filter);
        env.render_str(src, ctx).unwrap()
    }

    #[test]
    fn matches_python_json_dumps() {
        // A Jinja dict literal keeps its order, as a Python dict does.
        let x = r#"{% set x = {"name": "get_weather", "args": [1, 2.5, true, none, "é\"\n"], "empty": {}, "none": []} %}"#;
        // json.dumps(x, ensure_ascii=False)
        assert_eq!(
            render(&format!("{x}{{{{ x|tojson }}}}"), Value::UNDEFINED),
            r#"{"name": "get_weather", "args": [1, 2.5, true, null, "é\"\n"], "empty": {}, "none": []}"#
        );
        // json.dumps(x["args"][:2], ensure_ascii=False, indent=2)
        assert_eq!(
            render(
                &format!("{x}{{{{ x.args[:2]|tojson(indent=2) }}}}"),
                Value::UNDEFINED
            ),
            "[\n  1,\n  2.5\n]"
        );
        // json.dumps(x, ensure_ascii=True, separators=(",", ":"), sort_keys=True)
        assert_eq!(
            render(
                &format!("{x}{{{{ x|tojson(separators=(',', ':'), sort_keys=true, ensure_ascii=true) }}}}"),
                Value::UNDEFINED
            ),
            r#"{"args":[1,2.5,true,null,"\u00e9\"\n"],"empty":{},"name":"get_weather","none":[]}"#
        );
        // json.dumps({"a": {"b": [1]}}, indent=2)
        assert_eq!(
            render(
                r#"{{ {"a": {"b": [1]}, "c": {}}|tojson(indent=2) }}"#,
                Value::UNDEFINED
            ),
            "{\n  \"a\": {\n    \"b\": [\n      1\n    ]\n  },\n  \"c\": {}\n}"
        );
    }

    #[test]
    fn ensure_ascii_writes_surrogate_pairs() {
        assert_eq!(
            to_json(
                &Value::from("😀"),
                &JsonStyle {
                    ensure_ascii: true,
                    ..Default::default()
                }
            )
            .unwrap(),
            r#""\ud83d\ude00""#
        );
    }
}
