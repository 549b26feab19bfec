//! GGUF: the llama.cpp model file format (v2 and v3).
//!
//! `value` holds the metadata types, `tensor` the tensor descriptions, `reader`
//! parses a file (memory-mapped or owned bytes) and `writer` produces one.

mod reader;
mod tensor;
mod value;
mod writer;

pub use reader::GgufFile;
pub use tensor::{TensorInfo, TensorView};
pub use value::{Metadata, Value, ValueType};
pub use writer::GgufWriter;

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";

/// The GGUF version the writer produces.
pub const GGUF_VERSION: u32 = 3;

/// Metadata key that sets the data alignment (a `u32` power of two).
pub const ALIGNMENT_KEY: &str = "general.alignment";

/// Data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// Most dimensions a GGUF tensor may have.
pub const MAX_DIMS: usize = 4;

/// Deepest nesting of metadata arrays (arrays of arrays of …) that is accepted.
pub const MAX_ARRAY_DEPTH: usize = 8;
