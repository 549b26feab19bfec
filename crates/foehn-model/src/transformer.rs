//! `Transformer`: the Mistral/Llama decoder — embedding, blocks of RMSNorm →
//! grouped-query attention with RoPE → RMSNorm → SwiGLU, final norm, output
//! projection — and its forward pass on the CPU.

use std::sync::Arc;

use foehn_core::ModelConfig;
use foehn_kernels::{MatScratch, QMatrix};
use foehn_loader::{config_from_gguf, GgufFile, SafetensorsModel};

use crate::attention::{attention, ChunkPos};
use crate::cache::{check_chunk_tokens, check_room, KvCache, KvCacheOptions};
use crate::ops::{add_assign, rmsnorm, rmsnorm_rows, silu_mul};
use crate::rope::{Rope, RopeStyle};
use crate::scratch::{attn_shape, dims, Scratch};
use crate::weights::{GgufSource, StSource, TensorSource};
use crate::{ModelError, Result};

/// Which logits a forward pass computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogitsMode {
    /// The last token's logits (`vocab`): prefill and decode.
    #[default]
    Last,
    /// Every token's logits (`n × vocab`): teacher forcing, perplexity.
    All,
    /// None (an empty slice): prefill chunks before the last one.
    Skip,
}

/// Projections that read the same input: stacked into one matrix when the
/// kernels can (one product, one pass over the input, one synchronization),
/// else kept apart.
#[derive(Debug)]
enum Projections {
    /// The parts' rows stacked, with each part's row count.
    Stacked(QMatrix, Vec<usize>),
    /// One matrix per part.
    Apart(Vec<QMatrix>),
}

impl Projections {
    /// The (unpacked) `parts`, packed stacked or one by one.
    fn new(parts: Vec<QMatrix>) -> Self {
        let rows = parts.iter().map(QMatrix::rows).collect();
        match QMatrix::pack_stacked(&parts) {
            Some(m) => Projections::Stacked(m, rows),
            None => Projections::Apart(parts.into_iter().map(QMatrix::packed).collect()),
        }
    }

    /// The matrices (one when stacked).
    fn parts(&self) -> impl Iterator<Item = &QMatrix> + '_ {
        match self {
            Projections::Stacked(m, _) => std::slice::from_ref(m).iter(),
            Projections::Apart(parts) => parts.iter(),
        }
    }

    /// `outs[i] = parts[i] · xs` for `n` rows; `wide` is work space of at
    /// least `n × Σ rows` floats.
    fn matmul(
        &self,
        xs: &[f32],
        n: usize,
        outs: &mut [&mut [f32]],
        wide: &mut [f32],
        mat: &mut MatScratch,
    ) -> Result<()> {
        match self {
            Projections::Apart(parts) => {
                for (m, out) in parts.iter().zip(outs.iter_mut()) {
                    m.matmul(xs, out, mat)?;
                }
            }
            Projections::Stacked(m, rows) => {
                let total = m.rows();
                let wide = &mut wide[..n * total];
                m.matmul(xs, wide, mat)?;
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

/// One decoder block.
#[derive(Debug)]
struct Block {
    attn_norm: Vec<f32>,
    /// Query, key and value projections.
    qkv: Projections,
    wo: QMatrix,
    ffn_norm: Vec<f32>,
    /// Gate and up projections.
    gate_up: Projections,
    w_down: QMatrix,
}

/// A Mistral/Llama decoder-only transformer, read-only once built: share it
/// (`Arc<Transformer>`) between sessions, each with its own [`KvCache`] and
/// [`Scratch`].
#[derive(Debug)]
pub struct Transformer {
    cfg: ModelConfig,
    embed: QMatrix,
    blocks: Vec<Block>,
    norm: Vec<f32>,
    /// `None` when the output projection is the embedding (tied).
    output: Option<QMatrix>,
    rope: Rope,
}

const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Transformer>();
};

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
}

impl Naming {
    pub(crate) fn embed(self) -> &'static str {
        match self {
            Naming::Gguf => "token_embd.weight",
            Naming::Hf => "model.embed_tokens.weight",
        }
    }

    pub(crate) fn norm(self) -> &'static str {
        match self {
            Naming::Gguf => "output_norm.weight",
            Naming::Hf => "model.norm.weight",
        }
    }

    pub(crate) fn output(self) -> &'static str {
        match self {
            Naming::Gguf => "output.weight",
            Naming::Hf => "lm_head.weight",
        }
    }

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
                };
                format!("model.layers.{i}.{p}.weight")
            }
        }
    }
}

impl Transformer {
    /// Builds the model of a GGUF file (llama.cpp tensor names), reading its
    /// configuration with [`config_from_gguf`].
    ///
    /// GGUF files of the `llama` family store Q and K with the rows permuted
    /// by llama.cpp's converter, so RoPE rotates adjacent pairs. No
    /// `output.weight` means the output projection is `token_embd.weight`.
    ///
    /// # Errors
    /// A missing tensor, a shape that does not match the configuration, or a
    /// tensor type the kernels cannot compute with
    /// ([`ModelError::UnsupportedTensorType`], naming the tensor and the type).
    pub fn from_gguf(file: Arc<GgufFile>) -> Result<Self> {
        let cfg = config_from_gguf(&file)?;
        Self::from_gguf_with_config(file, cfg)
    }

    /// Like [`from_gguf`](Self::from_gguf) with a configuration given by the caller.
    pub fn from_gguf_with_config(file: Arc<GgufFile>, cfg: ModelConfig) -> Result<Self> {
        let src = GgufSource(file);
        let tied = !src.contains(Naming::Gguf.output());
        Self::build(&src, cfg, Naming::Gguf, RopeStyle::AdjacentPairs, tied)
    }

    /// Builds the model of a Hugging Face safetensors checkpoint (HF tensor
    /// names, un-permuted Q/K, so RoPE rotates halves).
    ///
    /// The output projection is `lm_head.weight`, or the embedding when
    /// `cfg.tie_word_embeddings` is set or there is no `lm_head.weight`.
    ///
    /// # Errors
    /// As [`from_gguf`](Self::from_gguf).
    pub fn from_safetensors(model: Arc<SafetensorsModel>, cfg: ModelConfig) -> Result<Self> {
        let src = StSource(model);
        let tied = cfg.tie_word_embeddings || !src.contains(Naming::Hf.output());
        Self::build(&src, cfg, Naming::Hf, RopeStyle::Halves, tied)
    }

    /// Like [`from_safetensors`](Self::from_safetensors), with the weights
    /// stored as `opts` asks: `opts.isq` quantizes every matrix at load (see
    /// [`WeightOptions`](crate::WeightOptions) and the `isq` module for which
    /// tensor gets which type).
    ///
    /// # Errors
    /// As [`from_gguf`](Self::from_gguf); [`ModelError::Config`] for an ISQ
    /// type without a quantizer or weights it cannot represent (NaN, inf).
    pub fn from_safetensors_with(
        model: Arc<SafetensorsModel>,
        cfg: ModelConfig,
        opts: &crate::WeightOptions,
    ) -> Result<Self> {
        let Some(ty) = opts.isq else {
            return Self::from_safetensors(model, cfg);
        };
        crate::isq::check_isq_type(ty)?;
        let dense = StSource(model);
        let tied = cfg.tie_word_embeddings || !dense.contains(Naming::Hf.output());
        let output = if tied {
            Naming::Hf.embed()
        } else {
            Naming::Hf.output()
        };
        let src = crate::isq::IsqSource {
            inner: &dense,
            ty,
            output,
        };
        Self::build(&src, cfg, Naming::Hf, RopeStyle::Halves, tied)
    }

    fn build(
        src: &dyn TensorSource,
        cfg: ModelConfig,
        names: Naming,
        style: RopeStyle,
        tied: bool,
    ) -> Result<Self> {
        check_config(&cfg)?;
        let (hidden, ffn) = (cfg.hidden_size, cfg.intermediate_size);
        let q_dim = cfg.num_attention_heads * cfg.head_dim;
        let kv_dim = cfg.num_key_value_heads * cfg.head_dim;
        // Linear layers are repacked for the SIMD kernels; an untied embedding
        // is only read row by row and stays in the file.
        let embed = src.matrix(names.embed(), cfg.vocab_size, hidden)?;
        let embed = if tied { embed.packed() } else { embed };
        let blocks = (0..cfg.num_hidden_layers)
            .map(|i| {
                let m = |part, rows, cols| src.matrix(&names.block(i, part), rows, cols);
                Ok(Block {
                    attn_norm: src.vector(&names.block(i, Part::AttnNorm), hidden)?,
                    qkv: Projections::new(vec![
                        m(Part::Q, q_dim, hidden)?,
                        m(Part::K, kv_dim, hidden)?,
                        m(Part::V, kv_dim, hidden)?,
                    ]),
                    wo: m(Part::O, hidden, q_dim)?.packed(),
                    ffn_norm: src.vector(&names.block(i, Part::FfnNorm), hidden)?,
                    gate_up: Projections::new(vec![
                        m(Part::Gate, ffn, hidden)?,
                        m(Part::Up, ffn, hidden)?,
                    ]),
                    w_down: m(Part::Down, hidden, ffn)?.packed(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let norm = src.vector(names.norm(), hidden)?;
        let output = if tied {
            None
        } else {
            Some(src.matrix(names.output(), cfg.vocab_size, hidden)?.packed())
        };
        let rope = Rope::new(&cfg, style);
        let model = Self {
            cfg,
            embed,
            blocks,
            norm,
            output,
            rope,
        };
        // Matrices whose packing waits for a long prefill are packed
        // meanwhile, from the last one a forward pass reads: a prefill that
        // packs as it goes (from the first) meets the thread once instead of
        // waiting on it for every matrix.
        let mut matrices: Vec<&QMatrix> = model
            .blocks
            .iter()
            .flat_map(|b| {
                b.qkv
                    .parts()
                    .chain([&b.wo])
                    .chain(b.gate_up.parts())
                    .chain([&b.w_down])
            })
            .chain([model.lm_head()])
            .collect();
        matrices.reverse();
        QMatrix::pack_in_background(matrices);
        Ok(model)
    }

    /// The model's hyperparameters.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The RoPE convention the weights need.
    pub fn rope_style(&self) -> RopeStyle {
        self.rope.style()
    }

    /// Whether the output projection is the token embedding.
    pub fn is_tied(&self) -> bool {
        self.output.is_none()
    }

    /// The output projection (`vocab × hidden`).
    pub fn lm_head(&self) -> &QMatrix {
        self.output.as_ref().unwrap_or(&self.embed)
    }

    /// The token embedding (`vocab × hidden`).
    pub fn embedding(&self) -> &QMatrix {
        &self.embed
    }

    /// Every weight matrix once: the embedding, each block's linear layers
    /// (query, key and value, and gate and up, may be stacked into one
    /// matrix each), and the output projection unless tied (for sizes and
    /// parameter counts; the norms are `hidden` f32 values each, two per
    /// block and a final one).
    pub fn matrices(&self) -> impl Iterator<Item = &QMatrix> + '_ {
        let blocks = self.blocks.iter().flat_map(|b| {
            b.qkv
                .parts()
                .chain([&b.wo])
                .chain(b.gate_up.parts())
                .chain([&b.w_down])
        });
        std::iter::once(&self.embed)
            .chain(blocks)
            .chain(self.output.as_ref())
    }

    /// An empty KV cache for a session of this model.
    ///
    /// # Errors
    /// [`ModelError::Config`] for a zero context or chunk size.
    pub fn new_cache(&self, opts: KvCacheOptions) -> Result<KvCache> {
        KvCache::new(&self.cfg, opts)
    }

    /// Scratch buffers that fit `cache` (its chunk size and window).
    pub fn new_scratch(&self, cache: &KvCache) -> Scratch {
        Scratch::for_cache(&self.cfg, cache)
    }

    /// Runs `tokens` (one chunk) at the cache's position, appends their keys
    /// and values to the cache and returns the logits `mode` asks for.
    ///
    /// # Shapes
    /// - `tokens`: `n`, with `1 ≤ n ≤ min(scratch.chunk(), cache.max_chunk())`.
    /// - returns: `vocab` ([`LogitsMode::Last`]), `n × vocab` ([`LogitsMode::All`])
    ///   or empty ([`LogitsMode::Skip`]).
    ///
    /// # Errors
    /// [`ModelError::ContextOverflow`] when the tokens do not fit in the
    /// context, [`ModelError::ChunkTooLarge`], [`ModelError::EmptyInput`],
    /// [`ModelError::TokenOutOfRange`], or [`ModelError::Mismatch`] when the
    /// cache or scratch was built for another model. On error the cache's
    /// position is unchanged.
    pub fn forward<'s>(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        scratch: &'s mut Scratch,
        mode: LogitsMode,
    ) -> Result<&'s [f32]> {
        let cfg = &self.cfg;
        let n = tokens.len();
        self.check_chunk(tokens, cache, scratch)?;
        let start = cache.position();
        let (hidden, vocab) = (cfg.hidden_size, cfg.vocab_size);
        let (q_dim, kv_dim) = (
            cfg.num_attention_heads * cfg.head_dim,
            cfg.num_key_value_heads * cfg.head_dim,
        );
        let (ffn, half, eps) = (cfg.intermediate_size, cfg.head_dim / 2, cfg.rms_norm_eps);
        let s = scratch;

        for (&tok, row) in tokens.iter().zip(s.x.chunks_exact_mut(hidden)) {
            self.embed.dequantize_row_into(tok as usize, row)?;
        }
        self.rope
            .tables(start, &mut s.cos[..n * half], &mut s.sin[..n * half]);
        let shape = attn_shape(cfg);
        let at = ChunkPos {
            start,
            n,
            slots: cache.slots(),
        };

        let x = &mut s.x[..n * hidden];
        let xn = &mut s.xn[..n * hidden];
        let (q, k, v) = (
            &mut s.q[..n * q_dim],
            &mut s.k[..n * kv_dim],
            &mut s.v[..n * kv_dim],
        );
        let att = &mut s.att[..n * q_dim];
        let (gate, up) = (&mut s.gate[..n * ffn], &mut s.up[..n * ffn]);
        let wide = &mut s.wide[..];
        for (l, b) in self.blocks.iter().enumerate() {
            // Attention.
            rmsnorm_rows(x, &b.attn_norm, eps, xn);
            b.qkv
                .matmul(xn, n, &mut [&mut *q, &mut *k, &mut *v], wide, &mut s.mat)?;
            for t in 0..n {
                let (c, sn) = (
                    &s.cos[t * half..(t + 1) * half],
                    &s.sin[t * half..(t + 1) * half],
                );
                self.rope.apply(&mut q[t * q_dim..(t + 1) * q_dim], c, sn);
                self.rope.apply(&mut k[t * kv_dim..(t + 1) * kv_dim], c, sn);
                let kv = t * kv_dim..(t + 1) * kv_dim;
                cache.write(l, start + t, &k[kv.clone()], &v[kv]);
            }
            attention(cache.layer(l), shape, at, q, att, &s.attn);
            b.wo.matmul(att, xn, &mut s.mat)?;
            add_assign(x, xn);
            // Feed-forward.
            rmsnorm_rows(x, &b.ffn_norm, eps, xn);
            b.gate_up
                .matmul(xn, n, &mut [&mut *gate, &mut *up], wide, &mut s.mat)?;
            silu_mul(gate, up);
            b.w_down.matmul(gate, xn, &mut s.mat)?;
            add_assign(x, xn);
        }
        cache.advance(n);

        let head = self.lm_head();
        match mode {
            LogitsMode::Skip => Ok(&s.logits[..0]),
            LogitsMode::Last => {
                let last = &x[(n - 1) * hidden..];
                rmsnorm(last, &self.norm, eps, &mut xn[..hidden]);
                let logits = &mut s.logits[..vocab];
                head.matvec(&xn[..hidden], logits, &mut s.mat)?;
                Ok(&s.logits[..vocab])
            }
            LogitsMode::All => {
                rmsnorm_rows(x, &self.norm, eps, xn);
                if s.logits.len() < n * vocab {
                    s.logits.resize(n * vocab, 0.0);
                }
                head.matmul(xn, &mut s.logits[..n * vocab], &mut s.mat)?;
                Ok(&s.logits[..n * vocab])
            }
        }
    }

    /// Runs a prompt of any length in chunks of up to
    /// `min(scratch.chunk(), cache.max_chunk())` tokens and returns the last
    /// token's logits.
    ///
    /// # Shapes
    /// - `tokens`: `n ≥ 1`.
    /// - returns: `vocab`.
    ///
    /// # Errors
    /// As [`forward`](Self::forward); a prompt that does not fit in the
    /// context is refused before anything is processed.
    pub fn prefill<'s>(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        scratch: &'s mut Scratch,
    ) -> Result<&'s [f32]> {
        if tokens.is_empty() {
            return Err(ModelError::EmptyInput);
        }
        check_room(cache.position(), cache.ctx_len(), tokens.len())?;
        let chunk = scratch.chunk().min(cache.max_chunk()).max(1);
        let mut chunks = tokens.chunks(chunk).peekable();
        while let Some(c) = chunks.next() {
            if chunks.peek().is_some() {
                self.forward(c, cache, scratch, LogitsMode::Skip)?;
            } else {
                return self.forward(c, cache, scratch, LogitsMode::Last);
            }
        }
        Err(ModelError::EmptyInput)
    }

    /// Everything [`forward`](Self::forward) checks before touching the cache.
    fn check_chunk(&self, tokens: &[u32], cache: &KvCache, scratch: &Scratch) -> Result<()> {
        cache.check(&self.cfg)?;
        if scratch.dims != dims(&self.cfg) {
            return Err(ModelError::Mismatch(
                "the scratch buffers were built for another model".into(),
            ));
        }
        if tokens.len() > scratch.chunk() {
            return Err(ModelError::ChunkTooLarge {
                n_tokens: tokens.len(),
                max: scratch.chunk(),
                what: "scratch",
            });
        }
        check_chunk_tokens(
            tokens,
            cache.position(),
            cache.ctx_len(),
            cache.max_chunk(),
            self.cfg.vocab_size,
        )
    }
}

/// What the forward pass relies on beyond what the loader validated (a
/// caller may pass a configuration of its own).
pub(crate) fn check_config(cfg: &ModelConfig) -> Result<()> {
    let bad = |m: String| Err(ModelError::Config(m));
    if cfg.vocab_size == 0 || cfg.hidden_size == 0 || cfg.head_dim == 0 {
        return bad("vocab_size, hidden_size and head_dim must be nonzero".into());
    }
    if cfg.num_key_value_heads == 0
        || !cfg
            .num_attention_heads
            .is_multiple_of(cfg.num_key_value_heads)
    {
        return bad(format!(
            "num_attention_heads {} is not a multiple of num_key_value_heads {}",
            cfg.num_attention_heads, cfg.num_key_value_heads
        ));
    }
    if !cfg.head_dim.is_multiple_of(2) {
        return bad(format!(
            "head_dim {} is odd; RoPE needs pairs",
            cfg.head_dim
        ));
    }
    if cfg.sliding_window == Some(0) {
        return bad("sliding_window 0 (use None for full attention)".into());
    }
    if cfg.vocab_size > u32::MAX as usize {
        return bad(format!(
            "vocab_size {} does not fit token ids",
            cfg.vocab_size
        ));
    }
    Ok(())
}
