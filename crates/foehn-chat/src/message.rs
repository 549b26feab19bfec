//! Chat messages are the core crate's (`foehn_core::{Message, Role}`), shared
//! with the generation request; templates see roles in lowercase.

pub use foehn_core::{Message, Role};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_serialize_lowercase() {
        let m = Message::assistant("hi");
        let v = minijinja::Value::from_serialize(&m);
        assert_eq!(v.get_attr("role").unwrap().as_str(), Some("assistant"));
        let back: Role = serde::Deserialize::deserialize(serde::de::value::StrDeserializer::<
            serde::de::value::Error,
        >::new("tool"))
        .unwrap();
        assert_eq!(back, Role::Tool);
    }
}
