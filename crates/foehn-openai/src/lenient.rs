//! serde helpers for reading replies leniently: a field of an unexpected type
//! reads as absent (or its default) instead of failing the whole body.

use serde::de::{DeserializeOwned, Deserializer};
use serde::Deserialize;
use serde_json::Value;

/// The field as `T`, or `None` when it is `null` or of another type.
pub(crate) fn or_none<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    Ok(serde_json::from_value(Value::deserialize(d)?).ok())
}

/// The field as `T`, or `T`'s default when it is of another type.
pub(crate) fn or_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned + Default,
{
    Ok(or_none(d)?.unwrap_or_default())
}

/// The field's items when it is a list.
fn array<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Value>>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Array(values) => Some(values),
        _ => None,
    })
}

/// A list when the field is one (the items that read as `T`; others are
/// skipped), else `None`.
pub(crate) fn list<'de, D, T>(d: D) -> Result<Option<Vec<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    Ok(array(d)?.map(|values| {
        values
            .into_iter()
            .filter_map(|v| serde_json::from_value(v).ok())
            .collect()
    }))
}

/// A list as by [`list`]; empty when the field is not a list.
pub(crate) fn items<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    Ok(list(d)?.unwrap_or_default())
}

/// A list read position by position: `None` where an item is not a `T`;
/// empty when the field is not a list.
pub(crate) fn each<'de, D, T>(d: D) -> Result<Vec<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    Ok(array(d)?
        .unwrap_or_default()
        .into_iter()
        .map(|v| serde_json::from_value(v).ok())
        .collect())
}

/// A field that may be absent (outer `None`), `null` (`Some(None)`) or a `T`
/// (`Some(Some(_))`); one of another type reads as `null`. Needs
/// `#[serde(default)]` for the absent case.
pub(crate) fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    Ok(Some(or_none(d)?))
}

/// Any value as text: a string as itself, anything else as its JSON
/// (`null` included: a present but empty message still says something).
pub(crate) fn text<'de, D>(d: D) -> Result<Option<String>, D::Error>
where
    D: Deserializer<'de>,
{
    Ok(Some(match Value::deserialize(d)? {
        Value::String(s) => s,
        other => other.to_string(),
    }))
}
