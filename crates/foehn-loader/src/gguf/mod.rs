//! GGUF: the llama.cpp model file format (v2 and v3).
//!
//! `value` holds the metadata types; the reader and writer live beside it.

mod value;

pub use value::{Metadata, Value, ValueType};
