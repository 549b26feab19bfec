//! The CPU backend's mixture of experts: a chunk's tokens are grouped by
//! the experts they are routed to, so each chosen expert's matrices are read
//! once per chunk — and only the chosen experts' (a decode step reads `k`
//! of them per layer).

use foehn_core::ModelConfig;
use foehn_kernels::Compute;

use super::ops::silu_mul;
use super::{Cpu, Scratch};
use crate::backend::Act;
use crate::moe::{route, Moe};
use crate::Result;

/// Work space of the mixture-of-experts blocks (empty for a dense model).
#[derive(Debug, Clone, Default)]
pub(crate) struct MoeWork {
    /// Router logits, `chunk × experts`.
    logits: Vec<f32>,
    /// Each token's experts and weights, `chunk × k`.
    routes: Vec<(usize, f32)>,
    /// Each expert's tokens and their weights (room for `chunk` each).
    by_expert: Vec<Vec<(usize, f32)>>,
    /// One expert's input rows, gathered, `chunk × hidden`.
    xs: Vec<f32>,
    /// One expert's output rows, `chunk × hidden`.
    ys: Vec<f32>,
    /// The mixture's output, `chunk × hidden`.
    acc: Vec<f32>,
    /// Expert blocks run since the buffers were made.
    pub(crate) runs: u64,
}

impl MoeWork {
    /// Buffers for chunks of up to `chunk` tokens of a model of `cfg`.
    pub(crate) fn new(cfg: &ModelConfig, chunk: usize) -> Self {
        let Some(moe) = cfg.moe else {
            return Self::default();
        };
        let (experts, k, hidden) = (moe.num_experts, moe.experts_per_token, cfg.hidden_size);
        Self {
            logits: vec![0.0; chunk * experts],
            routes: vec![(0, 0.0); chunk * k],
            by_expert: (0..experts).map(|_| Vec::with_capacity(chunk)).collect(),
            xs: vec![0.0; chunk * hidden],
            ys: vec![0.0; chunk * hidden],
            acc: vec![0.0; chunk * hidden],
            runs: 0,
        }
    }
}

/// `out = Σ weight · expert(x)` over each row's routed experts (`out` may be `x`).
pub(crate) fn moe_ffn(
    ctx: &Compute,
    s: &mut Scratch,
    moe: &Moe<Cpu>,
    x: Act,
    out: Act,
) -> Result<()> {
    let input = s.take(x);
    let len = s.n * s.dims.hidden;
    let r = mix(ctx, s, moe, &input[..len]);
    s.put(x, input);
    r?;
    let mut o = s.take(out);
    o[..len].copy_from_slice(&s.moe.acc[..len]);
    s.put(out, o);
    Ok(())
}

/// The mixture of the rows of `input` into `s.moe.acc`.
fn mix(ctx: &Compute, s: &mut Scratch, moe: &Moe<Cpu>, input: &[f32]) -> Result<()> {
    let (n, hidden, ffn) = (s.n, s.dims.hidden, s.dims.intermediate);
    let (experts, k) = (moe.experts().len(), moe.experts_per_token());
    let w = &mut s.moe;
    moe.router()
        .matmul(ctx, input, &mut w.logits[..n * experts], &mut s.mat)?;
    for tokens in &mut w.by_expert {
        tokens.clear();
    }
    for t in 0..n {
        let r = &mut w.routes[t * k..(t + 1) * k];
        route(&w.logits[t * experts..(t + 1) * experts], r);
        for &(e, weight) in r.iter() {
            w.by_expert[e].push((t, weight));
        }
    }
    w.acc[..n * hidden].fill(0.0);
    for (expert, tokens) in moe.experts().iter().zip(&w.by_expert) {
        let m = tokens.len();
        if m == 0 {
            continue;
        }
        for (row, &(t, _)) in w.xs.chunks_exact_mut(hidden).zip(tokens) {
            row.copy_from_slice(&input[t * hidden..(t + 1) * hidden]);
        }
        let mut outs = [std::mem::take(&mut s.gate), std::mem::take(&mut s.up)];
        let r = expert.gate_up().matmul(
            ctx,
            &w.xs[..m * hidden],
            m,
            &mut outs,
            &mut s.wide,
            &mut s.mat,
        );
        [s.gate, s.up] = outs;
        r?;
        silu_mul(&mut s.gate[..m * ffn], &s.up[..m * ffn]);
        expert
            .down()
            .matmul(ctx, &s.gate[..m * ffn], &mut w.ys[..m * hidden], &mut s.mat)?;
        for (y, &(t, weight)) in w.ys.chunks_exact(hidden).zip(tokens) {
            for (a, &v) in w.acc[t * hidden..(t + 1) * hidden].iter_mut().zip(y) {
                *a += weight * v;
            }
        }
        w.runs += 1;
    }
    Ok(())
}
