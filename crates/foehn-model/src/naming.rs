//! Tensor names of the decoder in each file format.

/// Tensor naming of a file format.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Naming {
    /// llama.cpp's GGUF names.
    Gguf,
    /// Hugging Face names.
    Hf,
}

/// The tensors of a block.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Part {
    AttnNorm,
    Q,
    K,
    V,
    O,
    FfnNorm,
    Gate,
    Up,
    Down,
    /// The router of a mixture of experts.
    Router,
}

/// The matrices of one expert of a mixture.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ExpertPart {
    Gate,
    Up,
    Down,
}

impl Naming {
    /// The token embedding.
    pub(crate) fn embed(self) -> &'static str {
        match self {
            Naming::Gguf => "token_embd.weight",
            Naming::Hf => "model.embed_tokens.weight",
        }
    }

    /// The final norm.
    pub(crate) fn norm(self) -> &'static str {
        match self {
            Naming::Gguf => "output_norm.weight",
            Naming::Hf => "model.norm.weight",
        }
    }

    /// The output projection.
    pub(crate) fn output(self) -> &'static str {
        match self {
            Naming::Gguf => "output.weight",
            Naming::Hf => "lm_head.weight",
        }
    }

    /// Tensor `part` of block `i`.
    pub(crate) fn block(self, i: usize, part: Part) -> String {
        match self {
            Naming::Gguf => {
                let p = match part {
                    Part::AttnNorm => "attn_norm",
                    Part::Q => "attn_q",
                    Part::K => "attn_k",
                    Part::V => "attn_v",
                    Part::O => "attn_output",
                    Part::FfnNorm => "ffn_norm",
                    Part::Gate => "ffn_gate",
                    Part::Up => "ffn_up",
                    Part::Down => "ffn_down",
                    Part::Router => "ffn_gate_inp",
                };
                format!("blk.{i}.{p}.weight")
            }
            Naming::Hf => {
                let p = match part {
                    Part::AttnNorm => "input_layernorm",
                    Part::Q => "self_attn.q_proj",
                    Part::K => "self_attn.k_proj",
                    Part::V => "self_attn.v_proj",
                    Part::O => "self_attn.o_proj",
                    Part::FfnNorm => "post_attention_layernorm",
                    Part::Gate => "mlp.gate_proj",
                    Part::Up => "mlp.up_proj",
                    Part::Down => "mlp.down_proj",
                    Part::Router => "block_sparse_moe.gate",
                };
                format!("model.layers.{i}.{p}.weight")
            }
        }
    }

    /// Expert `e`'s own matrix `part` in block `i` (GGUF's older per-expert
    /// tensors; HF `mixtral`: w1 = gate, w3 = up, w2 = down).
    pub(crate) fn expert(self, i: usize, e: usize, part: ExpertPart) -> String {
        match self {
            Naming::Gguf => {
                let p = match part {
                    ExpertPart::Gate => "ffn_gate",
                    ExpertPart::Up => "ffn_up",
                    ExpertPart::Down => "ffn_down",
                };
                format!("blk.{i}.{p}.{e}.weight")
            }
            Naming::Hf => {
                let w = match part {
                    ExpertPart::Gate => "w1",
                    ExpertPart::Up => "w3",
                    ExpertPart::Down => "w2",
                };
                format!("model.layers.{i}.block_sparse_moe.experts.{e}.{w}.weight")
            }
        }
    }

    /// The 3-D tensor of every expert's matrix `part` in block `i` (one
    /// matrix per expert along the outer dimension), where the format has one.
    pub(crate) fn merged_experts(self, i: usize, part: ExpertPart) -> Option<String> {
        match self {
            Naming::Gguf => {
                let p = match part {
                    ExpertPart::Gate => "ffn_gate_exps",
                    ExpertPart::Up => "ffn_up_exps",
                    ExpertPart::Down => "ffn_down_exps",
                };
                Some(format!("blk.{i}.{p}.weight"))
            }
            Naming::Hf => None,
        }
    }
}
