//! Mixture-of-experts feed-forward blocks (Mixtral): a router, SwiGLU
//! experts, and the routing rule every backend shares.
//!
//! A token goes to the `k` experts whose router logits are largest, and
//! their outputs are mixed by the softmax of the router's logits over the
//! experts, renormalised over the `k` chosen (llama.cpp's `build_moe_ffn`
//! with `norm_w`, transformers' `MixtralSparseMoeBlock`).

use foehn_core::{ModelConfig, MoeConfig};
use foehn_kernels::QMatrix;

use crate::backend::Backend;
use crate::naming::{ExpertPart, Naming, Part};
use crate::weights::TensorSource;
use crate::{ModelError, Result};

/// One expert: a SwiGLU feed-forward block.
#[derive(Debug)]
pub struct Expert<B: Backend> {
    gate_up: B::Stack,
    down: B::Linear,
}

impl<B: Backend> Expert<B> {
    /// The gate and up projections (`intermediate × hidden` each), stacked.
    pub fn gate_up(&self) -> &B::Stack {
        &self.gate_up
    }

    /// The down projection (`hidden × intermediate`).
    pub fn down(&self) -> &B::Linear {
        &self.down
    }
}

/// The mixture-of-experts block of a layer: the router and its experts.
#[derive(Debug)]
pub struct Moe<B: Backend> {
    router: B::Linear,
    experts: Vec<Expert<B>>,
    experts_per_token: usize,
}

impl<B: Backend> Moe<B> {
    /// The router (`experts × hidden`): one logit per expert.
    pub fn router(&self) -> &B::Linear {
        &self.router
    }

    /// The experts, in the router's order.
    pub fn experts(&self) -> &[Expert<B>] {
        &self.experts
    }

    /// Experts run per token (`k`).
    pub fn experts_per_token(&self) -> usize {
        self.experts_per_token
    }

    /// The block of layer `i` from `src`: the router, and each expert's
    /// matrices from the layer's 3-D tensors (GGUF `ffn_*_exps`, sliced into
    /// one matrix per expert) or, where the file has none, from the
    /// per-expert tensors (GGUF `ffn_*.E`, HF `block_sparse_moe.experts.E.w*`).
    pub(crate) fn load(
        backend: &B,
        src: &dyn TensorSource,
        names: Naming,
        cfg: &ModelConfig,
        moe: MoeConfig,
        i: usize,
    ) -> Result<Self> {
        let (hidden, ffn) = (cfg.hidden_size, cfg.intermediate_size);
        let router_name = names.block(i, Part::Router);
        let router = backend.linear(
            &router_name,
            src.matrix(&router_name, moe.num_experts, hidden)?,
        )?;
        let parts = [
            (ExpertPart::Gate, ffn, hidden),
            (ExpertPart::Up, ffn, hidden),
            (ExpertPart::Down, hidden, ffn),
        ];
        let merged = parts.map(|(p, _, _)| names.merged_experts(i, p));
        let source = |k: usize| -> Result<Source> {
            let per_expert = names.expert(i, 0, parts[k].0);
            match &merged[k] {
                Some(name) if src.contains(name) => Ok(Source::Merged(name.clone())),
                _ if src.contains(&per_expert) => Ok(Source::PerExpert),
                merged => Err(ModelError::Config(format!(
                    "layer {i} is a mixture of {} experts but has no tensor '{}'{}",
                    moe.num_experts,
                    per_expert,
                    merged
                        .as_ref()
                        .map(|m| format!(" nor '{m}'"))
                        .unwrap_or_default()
                ))),
            }
        };
        let sources = [source(0)?, source(1)?, source(2)?];
        let matrix = |k: usize, e: usize| -> Result<(String, QMatrix)> {
            let (part, rows, cols) = parts[k];
            match &sources[k] {
                Source::Merged(name) => Ok((
                    format!("{name}[{e}]"),
                    src.expert_matrix(name, e, moe.num_experts, rows, cols)?,
                )),
                Source::PerExpert => {
                    let name = names.expert(i, e, part);
                    let m = src.matrix(&name, rows, cols)?;
                    Ok((name, m))
                }
            }
        };
        let experts = (0..moe.num_experts)
            .map(|e| {
                let (gate_name, gate) = matrix(0, e)?;
                let (up_name, up) = matrix(1, e)?;
                let (down_name, down) = matrix(2, e)?;
                Ok(Expert {
                    gate_up: backend.stack(&[gate_name, up_name], vec![gate, up])?,
                    down: backend.linear(&down_name, down)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            router,
            experts,
            experts_per_token: moe.experts_per_token,
        })
    }
}

/// Where a layer's matrices of one kind (gate, up or down) come from.
enum Source {
    /// A 3-D tensor of every expert's matrix.
    Merged(String),
    /// One tensor per expert.
    PerExpert,
}

/// Routes one token: the `route.len()` experts with the largest router
/// `logits` (the first on ties), best first, each with its weight — the
/// softmax over all experts renormalised over the chosen ones, which is
/// the softmax over the chosen logits alone.
///
/// # Shapes
/// - `logits`: `experts`; `route`: `k ≤ experts`.
pub fn route(logits: &[f32], route: &mut [(usize, f32)]) {
    let k = route.len().min(logits.len());
    for slot in 0..k {
        let mut best: Option<usize> = None;
        for (e, &l) in logits.iter().enumerate() {
            let taken = route[..slot].iter().any(|&(t, _)| t == e);
            if !taken && best.is_none_or(|b| l > logits[b]) {
                best = Some(e);
            }
        }
        route[slot] = (best.unwrap_or(0), 0.0);
    }
    let top = route.first().map_or(0.0, |&(e, _)| logits[e]);
    let mut sum = 0.0f32;
    for r in route[..k].iter_mut() {
        r.1 = (logits[r.0] - top).exp();
        sum += r.1;
    }
    for r in route[..k].iter_mut() {
        r.1 /= sum;
    }
}

#[cfg(test)]
mod tests {
    use super::route;

    #[test]
    fn top_k_of_the_renormalised_softmax() {
        let logits = [0.5f32, 2.0, -1.0, 1.5, 2.0];
        let mut r = [(0, 0.0); 2];
        route(&logits, &mut r);
        // Ties go to the first expert.
        assert_eq!((r[0].0, r[1].0), (1, 4));
        assert!((r[0].1 - 0.5).abs() < 1e-6 && (r[1].1 - 0.5).abs() < 1e-6);

        let mut r = [(0, 0.0); 3];
        route(&logits, &mut r);
        let soft: Vec<f64> = logits.iter().map(|&l| f64::from(l).exp()).collect();
        let chosen = soft[1] + soft[4] + soft[3];
        for (&(e, w), want) in r.iter().zip([soft[1], soft[4], soft[3]]) {
            assert!((f64::from(w) - want / chosen).abs() < 1e-6, "expert {e}");
        }
        assert_eq!(r[2].0, 3);
    }
}
