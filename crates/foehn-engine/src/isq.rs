//! `Isq`: the in-situ quantization types offered when loading a safetensors
//! model (`--isq q8_0|q4_0|q4k|q6k`).

use std::fmt;
use std::str::FromStr;

use foehn_kernels::GgmlType;

/// A type that dense safetensors weights are quantized to at load.
///
/// Linear layers and the embedding get the type; the output projection gets
/// Q6_K below 6 bits, as llama-quantize does (see
/// [`foehn_model::WeightOptions`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isq {
    /// 8-bit, blocks of 32 (`q8_0`): nearly lossless.
    Q8_0,
    /// 4-bit, blocks of 32 (`q4_0`).
    Q4_0,
    /// 4-bit K-quant, super-blocks of 256 (`q4k`).
    Q4K,
    /// 6-bit K-quant, super-blocks of 256 (`q6k`).
    Q6K,
}

impl Isq {
    /// Every choice, in the order the CLI lists them.
    pub const ALL: [Isq; 4] = [Isq::Q8_0, Isq::Q4_0, Isq::Q4K, Isq::Q6K];

    /// The ggml type of the linear layers.
    pub fn ggml_type(self) -> GgmlType {
        match self {
            Isq::Q8_0 => GgmlType::Q8_0,
            Isq::Q4_0 => GgmlType::Q4_0,
            Isq::Q4K => GgmlType::Q4_K,
            Isq::Q6K => GgmlType::Q6_K,
        }
    }

    /// The CLI name (`q8_0`, `q4_0`, `q4k`, `q6k`).
    pub fn name(self) -> &'static str {
        match self {
            Isq::Q8_0 => "q8_0",
            Isq::Q4_0 => "q4_0",
            Isq::Q4K => "q4k",
            Isq::Q6K => "q6k",
        }
    }
}

impl fmt::Display for Isq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Isq {
    type Err = String;

    /// `q8_0`, `q4_0`, `q4k`, `q6k`; also ggml's spelling (`Q4_K`, `q6_k`), any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "q8_0" | "q80" => Ok(Isq::Q8_0),
            "q4_0" | "q40" => Ok(Isq::Q4_0),
            "q4k" | "q4_k" => Ok(Isq::Q4K),
            "q6k" | "q6_k" => Ok(Isq::Q6K),
            _ => Err(format!(
                "unknown in-situ quantization {s:?}: expected q8_0, q4_0, q4k or q6k"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back() {
        for isq in Isq::ALL {
            assert_eq!(isq.name().parse::<Isq>(), Ok(isq));
            assert_eq!(isq.ggml_type().name().parse::<Isq>(), Ok(isq));
        }
        assert!("q5k"
            .parse::<Isq>()
            .unwrap_err()
            .contains("q8_0, q4_0, q4k or q6k"));
    }
}
