//! `GET /v1/models`: `{"object": "list", "data": [{"id", "object", "created", "owned_by"}]}`.
//!
//! Read leniently: Ollama's native list (`{"models": [{"name": …}]}`) reads
//! too, and entries without an id or name are skipped.

use serde::{Deserialize, Serialize};

use crate::lenient;

/// The model list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelList {
    /// `list`.
    #[serde(default, deserialize_with = "lenient::or_default")]
    pub object: String,
    /// The models (`None` when the reply has no such list).
    #[serde(default, deserialize_with = "lenient::list")]
    pub data: Option<Vec<ModelObject>>,
    /// The models as Ollama's native API lists them (never written).
    #[serde(default, skip_serializing, deserialize_with = "lenient::list")]
    pub models: Option<Vec<ModelObject>>,
}

impl ModelList {
    /// The list with these models.
    pub fn new(data: Vec<ModelObject>) -> Self {
        Self {
            object: "list".into(),
            data: Some(data),
            models: None,
        }
    }

    /// The models listed, `data` first; `None` when there is no list.
    pub fn entries(&self) -> Option<&[ModelObject]> {
        self.data.as_deref().or(self.models.as_deref())
    }
}

/// One model.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelObject {
    /// The id to put in requests.
    #[serde(default, deserialize_with = "lenient::or_none")]
    pub id: Option<String>,
    /// Ollama's name for it, when there is no `id` (never written).
    #[serde(default, skip_serializing, deserialize_with = "lenient::or_none")]
    pub name: Option<String>,
    /// `model`.
    #[serde(default, deserialize_with = "lenient::or_default")]
    pub object: String,
    /// Unix time of creation, in seconds.
    #[serde(default, deserialize_with = "lenient::or_default")]
    pub created: u64,
    /// Its owner, when the server says.
    #[serde(default, deserialize_with = "lenient::or_none")]
    pub owned_by: Option<String>,
}

impl ModelObject {
    /// A model as a server lists it.
    pub fn new(id: impl Into<String>, created: u64, owned_by: impl Into<String>) -> Self {
        Self {
            id: Some(id.into()),
            name: None,
            object: "model".into(),
            created,
            owned_by: Some(owned_by.into()),
        }
    }

    /// The id to put in requests: `id`, else `name`.
    pub fn model_id(&self) -> Option<&str> {
        self.id.as_deref().or(self.name.as_deref())
    }
}
