//! The CPU backend: weights as [`QMatrix`]es borrowed from the model file
//! (packed for foehn's SIMD kernels), a [`KvCache`] of f16 or f32 vectors,
//! and every activation in the preallocated buffers of a [`Scratch`], so
//! that a decode step allocates nothing.

pub(crate) mod attention;
mod kv;
mod moe;
pub mod ops;
mod scratch;

use std::sync::Arc;

use foehn_core::ModelConfig;
use foehn_kernels::{ActPrecision, Compute, MatScratch, QMatrix};
use foehn_loader::{GgufFile, SafetensorsModel};

use self::attention::{attention, attention_jobs, AttnJob, ChunkPos};
pub use self::kv::CpuKv;
use self::ops::{add_assign, rmsnorm, rmsnorm_rows, silu_mul};
use self::scratch::Dims;
pub use self::scratch::Scratch;
use crate::backend::{Act, Backend, Head};
use crate::cache::{KvCache, KvGeometry};
use crate::decoder::Ffn;
use crate::moe::Moe;
use crate::{LogitsMode, Model, ModelError, Result, Rope, WeightOptions};

/// foehn's own CPU kernels, in the model's [`Compute`] context: the
/// instruction set its matrices are packed for and the threads every
/// session's passes run on (shared: sessions of one model do not multiply
/// threads).
#[derive(Debug, Clone, Default)]
pub struct Cpu {
    compute: Arc<Compute>,
}

impl Cpu {
    /// The CPU backend in `compute`'s context.
    pub fn new(compute: Arc<Compute>) -> Self {
        Self { compute }
    }

    /// The context the backend packs and computes in.
    pub fn compute(&self) -> &Arc<Compute> {
        &self.compute
    }
}

/// The Mistral/Llama decoder on the CPU backend.
pub type Transformer = Model<Cpu>;

/// Projections that read the same input: stacked into one matrix when the
/// kernels can (one product, one pass over the input, one synchronization),
/// else kept apart.
#[derive(Debug)]
pub enum CpuStack {
    /// The parts' rows stacked, with each part's row count.
    Stacked(QMatrix, Vec<usize>),
    /// One matrix per part.
    Apart(Vec<QMatrix>),
}

impl CpuStack {
    /// The (unpacked) `parts`, packed stacked or one by one for `ctx`.
    fn new(parts: Vec<QMatrix>, ctx: &Compute) -> Self {
        let rows = parts.iter().map(QMatrix::rows).collect();
        match QMatrix::pack_stacked(&parts, ctx) {
            Some(m) => CpuStack::Stacked(m, rows),
            None => CpuStack::Apart(parts.into_iter().map(|m| m.packed(ctx)).collect()),
        }
    }

    /// The matrices (one when stacked).
    fn parts(&self) -> impl Iterator<Item = &QMatrix> + '_ {
        match self {
            CpuStack::Stacked(m, _) => std::slice::from_ref(m).iter(),
            CpuStack::Apart(parts) => parts.iter(),
        }
    }

    /// `outs[i][..n × rows_i] = parts[i] · xs` for `n` rows; `wide` is work
    /// space of at least `n × Σ rows` floats.
    fn matmul(
        &self,
        ctx: &Compute,
        xs: &[f32],
        n: usize,
        outs: &mut [Vec<f32>],
        wide: &mut [f32],
        mat: &mut MatScratch,
    ) -> Result<()> {
        match self {
            CpuStack::Apart(parts) => {
                for (m, out) in parts.iter().zip(outs.iter_mut()) {
                    m.matmul(ctx, xs, &mut out[..n * m.rows()], mat)?;
                }
            }
            CpuStack::Stacked(m, rows) => {
                let total = m.rows();
                let wide = &mut wide[..n * total];
                m.matmul(ctx, xs, wide, mat)?;
                for (t, row) in wide.chunks_exact(total).enumerate() {
                    let mut at = 0;
                    for (&r, out) in rows.iter().zip(outs.iter_mut()) {
                        out[t * r..(t + 1) * r].copy_from_slice(&row[at..at + r]);
                        at += r;
                    }
                }
            }
        }
        Ok(())
    }
}

impl Backend for Cpu {
    type Linear = QMatrix;
    type Stack = CpuStack;
    type Vector = Vec<f32>;
    /// Packed when it is also the output projection; an untied embedding is
    /// only read row by row and stays in the file.
    type Embedding = QMatrix;
    type Kv = CpuKv;
    type Work = Scratch;

    fn name(&self) -> String {
        "cpu".into()
    }

    fn linear(&self, _name: &str, m: QMatrix) -> Result<QMatrix> {
        Ok(m.packed(&self.compute))
    }

    fn stack(&self, _names: &[String], parts: Vec<QMatrix>) -> Result<CpuStack> {
        Ok(CpuStack::new(parts, &self.compute))
    }

    fn vector(&self, v: Vec<f32>) -> Result<Vec<f32>> {
        Ok(v)
    }

    fn embedding(&self, _name: &str, m: QMatrix, tied: bool) -> Result<QMatrix> {
        Ok(if tied { m.packed(&self.compute) } else { m })
    }

    /// Matrices whose packing waits (deferred) are packed on a background
    /// thread from the end of the first forward pass on (so it does not
    /// delay the first token), from the last one a forward pass reads: a
    /// prefill that packs as it goes (from the first) meets the thread once
    /// instead of waiting on it for every matrix.
    fn loaded(model: &Model<Self>) {
        // The output projection first, whatever its type: its products have
        // one row per step (or a few, verifying drafts), so no prefill packs
        // it (SmolLM2's Q8_0 one on the direct kernel: tg128 ~15 % slower).
        QMatrix::pack_after_first_use(&[model.lm_head()], packing_order(model));
    }

    fn finish_packing(model: &Model<Self>) {
        QMatrix::pack_deferred_now(&[model.lm_head()], packing_order(model));
    }

    fn new_kv(&self, geom: &KvGeometry) -> Result<CpuKv> {
        CpuKv::new(geom)
    }

    fn new_work(&self, cfg: &ModelConfig, chunk: usize) -> Scratch {
        Scratch::new(cfg, chunk, self.compute.threads())
    }

    fn set_precision(&self, work: &mut Scratch, precision: ActPrecision) -> Result<()> {
        work.set_act_precision(precision);
        Ok(())
    }

    fn set_prompt(&self, work: &mut Scratch, prompt: bool) {
        work.mat.set_prompt(prompt);
    }

    fn work_chunk(&self, work: &Scratch) -> usize {
        work.chunk()
    }

    fn check_work(&self, work: &Scratch, cfg: &ModelConfig, n: usize) -> Result<()> {
        if work.dims != Dims::of(cfg) {
            return Err(ModelError::Mismatch(
                "the scratch buffers were built for another model".into(),
            ));
        }
        if n > work.chunk() {
            return Err(ModelError::ChunkTooLarge {
                n_tokens: n,
                max: work.chunk(),
                what: "scratch",
            });
        }
        Ok(())
    }

    fn embed(
        &self,
        s: &mut Scratch,
        embedding: &QMatrix,
        rope: &Rope,
        tokens: &[u32],
        start: usize,
    ) -> Result<()> {
        let n = tokens.len();
        let (hidden, half) = (s.dims.hidden, s.dims.head_dim / 2);
        (s.n, s.start) = (n, start);
        for (&tok, row) in tokens.iter().zip(s.x.chunks_exact_mut(hidden)) {
            embedding.dequantize_row_into(tok as usize, row)?;
        }
        rope.tables(start, &mut s.cos[..n * half], &mut s.sin[..n * half]);
        for (t, p) in s.pos[..n].iter_mut().enumerate() {
            *p = start + t;
        }
        Ok(())
    }

    fn batches(&self) -> bool {
        true
    }

    fn embed_batch(
        &self,
        s: &mut Scratch,
        embedding: &QMatrix,
        rope: &Rope,
        tokens: &[u32],
        positions: &[usize],
    ) -> Result<()> {
        let n = tokens.len();
        let (hidden, half) = (s.dims.hidden, s.dims.head_dim / 2);
        (s.n, s.start) = (n, 0);
        for (&tok, row) in tokens.iter().zip(s.x.chunks_exact_mut(hidden)) {
            embedding.dequantize_row_into(tok as usize, row)?;
        }
        let tables = s
            .cos
            .chunks_exact_mut(half)
            .zip(s.sin.chunks_exact_mut(half));
        for ((&p, (c, sn)), slot) in positions.iter().zip(tables).zip(&mut s.pos[..n]) {
            rope.tables(p, c, sn);
            *slot = p;
        }
        Ok(())
    }

    fn attend_batch(
        &self,
        s: &mut Scratch,
        caches: &mut [&mut KvCache<CpuKv>],
        layer: usize,
        q: Act,
        k: Act,
        v: Act,
        out: Act,
    ) -> Result<()> {
        let kv_dim = s.dims.kv_dim();
        let ops = self.compute.vecops();
        for (t, cache) in caches.iter_mut().enumerate() {
            let kv = t * kv_dim..(t + 1) * kv_dim;
            cache.write(ops, layer, s.pos[t], &s.act(k)[kv.clone()], &s.act(v)[kv])?;
        }
        let mut o = s.take(out);
        let caches: &[&mut KvCache<CpuKv>] = caches;
        let pos = &s.pos;
        let job = |i: usize| AttnJob {
            kv: caches[i].layer(layer),
            window: caches[i].window(layer),
            at: ChunkPos {
                start: pos[i],
                n: 1,
                slots: caches[i].slots(layer),
            },
            row: i,
        };
        attention_jobs(
            &self.compute,
            caches.len(),
            &job,
            s.dims.attn_shape(None),
            s.act(q),
            &mut o,
            &s.attn,
        );
        s.put(out, o);
        Ok(())
    }

    fn rms_norm(
        &self,
        s: &mut Scratch,
        x: Act,
        weight: &Vec<f32>,
        eps: f32,
        out: Act,
    ) -> Result<()> {
        let mut o = s.take(out);
        let len = s.n * s.dims.width(out);
        rmsnorm_rows(s.act(x), weight, eps, &mut o[..len]);
        s.put(out, o);
        Ok(())
    }

    fn project(&self, s: &mut Scratch, m: &CpuStack, x: Act, outs: &[Act]) -> Result<()> {
        let mut bufs: [Vec<f32>; 3] = Default::default();
        let bufs = &mut bufs[..outs.len()];
        for (b, &a) in bufs.iter_mut().zip(outs) {
            *b = s.take(a);
        }
        let xs = s.take(x);
        let n = s.n;
        let r = m.matmul(
            &self.compute,
            &xs[..n * s.dims.width(x)],
            n,
            bufs,
            &mut s.wide,
            &mut s.mat,
        );
        s.put(x, xs);
        for (b, &a) in bufs.iter_mut().zip(outs) {
            s.put(a, std::mem::take(b));
        }
        r
    }

    fn linear_into(&self, s: &mut Scratch, m: &QMatrix, x: Act, out: Act) -> Result<()> {
        let mut o = s.take(out);
        let xs = s.take(x);
        let n = s.n;
        let r = m.matmul(
            &self.compute,
            &xs[..n * m.cols()],
            &mut o[..n * m.rows()],
            &mut s.mat,
        );
        s.put(x, xs);
        s.put(out, o);
        Ok(r?)
    }

    fn rope(&self, s: &mut Scratch, rope: &Rope, q: Act, k: Act) -> Result<()> {
        let half = s.dims.head_dim / 2;
        for a in [q, k] {
            let width = s.dims.width(a);
            let mut buf = s.take(a);
            for (t, row) in buf.chunks_exact_mut(width).take(s.n).enumerate() {
                let (c, sn) = (
                    &s.cos[t * half..(t + 1) * half],
                    &s.sin[t * half..(t + 1) * half],
                );
                rope.apply(row, c, sn);
                if a == q {
                    if let Some(scale) = rope.query_scale(s.pos[t]) {
                        row.iter_mut().for_each(|x| *x *= scale);
                    }
                }
            }
            s.put(a, buf);
        }
        Ok(())
    }

    fn attend(
        &self,
        s: &mut Scratch,
        cache: &mut KvCache<CpuKv>,
        layer: usize,
        q: Act,
        k: Act,
        v: Act,
        out: Act,
    ) -> Result<()> {
        let (n, start, kv_dim) = (s.n, s.start, s.dims.kv_dim());
        let ops = self.compute.vecops();
        for t in 0..n {
            let kv = t * kv_dim..(t + 1) * kv_dim;
            cache.write(ops, layer, start + t, &s.act(k)[kv.clone()], &s.act(v)[kv])?;
        }
        let at = ChunkPos {
            start,
            n,
            slots: cache.slots(layer),
        };
        let shape = s.dims.attn_shape(cache.window(layer));
        let mut o = s.take(out);
        attention(
            &self.compute,
            cache.layer(layer),
            shape,
            at,
            s.act(q),
            &mut o,
            &s.attn,
        );
        s.put(out, o);
        Ok(())
    }

    fn add(&self, s: &mut Scratch, acc: Act, y: Act) -> Result<()> {
        let mut a = s.take(acc);
        let len = s.n * s.dims.width(acc);
        add_assign(&mut a[..len], s.act(y));
        s.put(acc, a);
        Ok(())
    }

    fn silu_mul(&self, s: &mut Scratch, gate: Act, up: Act) -> Result<()> {
        let mut g = s.take(gate);
        let len = s.n * s.dims.width(gate);
        silu_mul(&mut g[..len], s.act(up));
        s.put(gate, g);
        Ok(())
    }

    fn moe(&self, s: &mut Scratch, moe: &Moe<Self>, x: Act, out: Act) -> Result<()> {
        self::moe::moe_ffn(&self.compute, s, moe, x, out)
    }

    fn logits<'w>(
        &self,
        s: &'w mut Scratch,
        x: Act,
        norm: &Vec<f32>,
        eps: f32,
        head: Head<'_, Self>,
        mode: LogitsMode,
    ) -> Result<&'w [f32]> {
        let head = match head {
            Head::Tied(m) | Head::Output(m) => m,
        };
        let (n, hidden, vocab) = (s.n, s.dims.hidden, s.dims.vocab);
        let xs = s.take(x);
        // The output projection's products are a decode step's in any
        // pass: a prompt's has one row (its last), which the bf16 prompt
        // product would compute at the cost of converting every weight.
        let prompt = s.mat.prompt();
        s.mat.set_prompt(false);
        let r = match mode {
            LogitsMode::Skip => Ok(0),
            LogitsMode::Last => {
                let last = &xs[(n - 1) * hidden..n * hidden];
                rmsnorm(last, norm, eps, &mut s.xn[..hidden]);
                let (xn, logits) = (&s.xn[..hidden], &mut s.logits[..vocab]);
                head.matvec(&self.compute, xn, logits, &mut s.mat)
                    .map(|()| vocab)
            }
            LogitsMode::All => {
                rmsnorm_rows(&xs[..n * hidden], norm, eps, &mut s.xn[..n * hidden]);
                if s.logits.len() < n * vocab {
                    s.logits.resize(n * vocab, 0.0);
                }
                let (xn, logits) = (&s.xn[..n * hidden], &mut s.logits[..n * vocab]);
                head.matmul(&self.compute, xn, logits, &mut s.mat)
                    .map(|()| n * vocab)
            }
        };
        s.put(x, xs);
        s.mat.set_prompt(prompt);
        Ok(&s.logits[..r?])
    }
}

/// The block matrices in the order the background packer takes them: from
/// the last one a forward pass reads.
fn packing_order(model: &Model<Cpu>) -> Vec<&QMatrix> {
    let mut matrices: Vec<&QMatrix> = model.block_matrices().collect();
    matrices.reverse();
    matrices
}

impl Model<Cpu> {
    /// [`Model::load_gguf`] on the CPU backend in its default context (a thread
    /// per core, the best instruction set: [`Cpu::default`]).
    ///
    /// # Errors
    /// As [`Model::load_gguf`].
    pub fn from_gguf(file: Arc<GgufFile>) -> Result<Self> {
        Self::load_gguf(Cpu::default(), file)
    }

    /// [`Model::load_gguf_with_config`] on the CPU backend in its default context (a thread
    /// per core, the best instruction set: [`Cpu::default`]).
    ///
    /// # Errors
    /// As [`Model::load_gguf`].
    pub fn from_gguf_with_config(file: Arc<GgufFile>, cfg: ModelConfig) -> Result<Self> {
        Self::load_gguf_with_config(Cpu::default(), file, cfg)
    }

    /// [`Model::load_safetensors`] on the CPU backend in its default context
    /// (a thread per core, the best instruction set), weights as stored.
    ///
    /// # Errors
    /// As [`Model::load_safetensors`].
    pub fn from_safetensors(model: Arc<SafetensorsModel>, cfg: ModelConfig) -> Result<Self> {
        Self::load_safetensors(Cpu::default(), model, cfg, &WeightOptions::default())
    }

    /// [`Model::load_safetensors`] on the CPU backend in its default context (a thread
    /// per core, the best instruction set: [`Cpu::default`]).
    ///
    /// # Errors
    /// As [`Model::load_safetensors`].
    pub fn from_safetensors_with(
        model: Arc<SafetensorsModel>,
        cfg: ModelConfig,
        opts: &WeightOptions,
    ) -> Result<Self> {
        Self::load_safetensors(Cpu::default(), model, cfg, opts)
    }

    /// The output projection (`vocab × hidden`).
    pub fn lm_head(&self) -> &QMatrix {
        self.output.as_ref().unwrap_or(&self.embed)
    }

    /// The token embedding (`vocab × hidden`).
    pub fn embedding(&self) -> &QMatrix {
        &self.embed
    }

    /// Each block's linear layers, in the order a forward pass reads them
    /// (a mixture's router, then its experts in order).
    fn block_matrices(&self) -> impl Iterator<Item = &QMatrix> + '_ {
        self.blocks.iter().flat_map(|b| {
            let ffn: Box<dyn Iterator<Item = &QMatrix>> = match &b.ffn {
                Ffn::Dense { gate_up, down } => Box::new(gate_up.parts().chain([down])),
                Ffn::Moe(moe) => Box::new(
                    std::iter::once(moe.router()).chain(
                        moe.experts()
                            .iter()
                            .flat_map(|e| e.gate_up().parts().chain([e.down()])),
                    ),
                ),
            };
            b.qkv.parts().chain([&b.wo]).chain(ffn)
        })
    }

    /// Every weight matrix once: the embedding, each block's linear layers
    /// (query, key and value, and gate and up, may be stacked into one
    /// matrix each; a mixture's router and every expert's), and the output
    /// projection unless tied (for sizes and
    /// parameter counts; the norms are `hidden` f32 values each, two per
    /// block and a final one).
    pub fn matrices(&self) -> impl Iterator<Item = &QMatrix> + '_ {
        std::iter::once(&self.embed)
            .chain(self.block_matrices())
            .chain(self.output.as_ref())
    }
}

const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Transformer>();
};
