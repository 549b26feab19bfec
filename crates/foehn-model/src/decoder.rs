//! `Model<B>`: the Mistral/Llama decoder — embedding, blocks of RMSNorm →
//! grouped-query attention with RoPE → RMSNorm → SwiGLU (or a mixture of
//! SwiGLU experts, Mixtral), final norm, output
//! projection — built from a model file and run on any [`Backend`]: the
//! forward pass is written once, here.

use std::sync::Arc;

use foehn_core::ModelConfig;
use foehn_loader::{config_from_gguf, GgufFile, SafetensorsModel};

use crate::backend::{Act, Backend, Head};
use crate::cache::{check_chunk_tokens, check_room, KvCache, KvCacheOptions, KvGeometry};
use crate::moe::Moe;
use crate::naming::{Naming, Part};
use crate::weights::{GgufSource, StSource, TensorSource};
use crate::{ModelError, Result, Rope, RopeStyle, WeightOptions};

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

/// One decoder block.
#[derive(Debug)]
pub(crate) struct Block<B: Backend> {
    pub(crate) attn_norm: B::Vector,
    /// Query, key and value projections.
    pub(crate) qkv: B::Stack,
    pub(crate) wo: B::Linear,
    pub(crate) ffn_norm: B::Vector,
    pub(crate) ffn: Ffn<B>,
}

/// The feed-forward part of a block.
#[derive(Debug)]
pub(crate) enum Ffn<B: Backend> {
    /// One SwiGLU block: the gate and up projections (stacked) and the down
    /// projection.
    Dense { gate_up: B::Stack, down: B::Linear },
    /// A mixture of SwiGLU experts (Mixtral).
    Moe(Moe<B>),
}

/// A Mistral/Llama decoder-only transformer on backend `B`, read-only once
/// built: share it (`Arc<Model<B>>`) between sessions, each with its own
/// [`KvCache`] and work buffers ([`new_scratch`](Self::new_scratch)).
#[derive(Debug)]
pub struct Model<B: Backend> {
    pub(crate) cfg: ModelConfig,
    pub(crate) backend: B,
    pub(crate) embed: B::Embedding,
    pub(crate) blocks: Vec<Block<B>>,
    pub(crate) norm: B::Vector,
    /// `None` when the output projection is the embedding (tied).
    pub(crate) output: Option<B::Linear>,
    pub(crate) rope: Rope,
}

impl<B: Backend> Model<B> {
    /// Builds the model of a GGUF file on `backend` (llama.cpp tensor names),
    /// reading its configuration with [`config_from_gguf`].
    ///
    /// GGUF files of the `llama` family store Q and K with the rows permuted
    /// by llama.cpp's converter, so RoPE rotates adjacent pairs. No
    /// `output.weight` means the output projection is `token_embd.weight`.
    ///
    /// # Errors
    /// A missing tensor, a shape that does not match the configuration, or a
    /// tensor type the backend cannot compute with
    /// ([`ModelError::UnsupportedTensorType`], naming the tensor and the type).
    pub fn load_gguf(backend: B, file: Arc<GgufFile>) -> Result<Self> {
        let cfg = config_from_gguf(&file)?;
        Self::load_gguf_with_config(backend, file, cfg)
    }

    /// Like [`load_gguf`](Self::load_gguf) with a configuration given by the caller.
    ///
    /// # Errors
    /// As [`load_gguf`](Self::load_gguf).
    pub fn load_gguf_with_config(
        backend: B,
        file: Arc<GgufFile>,
        cfg: ModelConfig,
    ) -> Result<Self> {
        let src = GgufSource::new(file);
        let tied = !src.contains(Naming::Gguf.output());
        Self::build(
            backend,
            &src,
            cfg,
            Naming::Gguf,
            RopeStyle::AdjacentPairs,
            tied,
        )
    }

    /// Builds the model of a Hugging Face safetensors checkpoint on
    /// `backend` (HF tensor names, un-permuted Q/K, so RoPE rotates halves),
    /// with the weights stored as `opts` asks: `opts.isq` quantizes every
    /// matrix at load (see [`WeightOptions`]).
    ///
    /// The output projection is `lm_head.weight`, or the embedding when
    /// `cfg.tie_word_embeddings` is set or there is no `lm_head.weight`.
    ///
    /// # Errors
    /// As [`load_gguf`](Self::load_gguf); [`ModelError::Config`] for an ISQ
    /// type without a quantizer or weights it cannot represent (NaN, inf).
    pub fn load_safetensors(
        backend: B,
        model: Arc<SafetensorsModel>,
        cfg: ModelConfig,
        opts: &WeightOptions,
    ) -> Result<Self> {
        let dense = StSource::new(model);
        let tied = cfg.tie_word_embeddings || !dense.contains(Naming::Hf.output());
        let Some(ty) = opts.isq else {
            return Self::build(backend, &dense, cfg, Naming::Hf, RopeStyle::Halves, tied);
        };
        crate::isq::check_isq_type(ty)?;
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
        Self::build(backend, &src, cfg, Naming::Hf, RopeStyle::Halves, tied)
    }

    fn build(
        backend: B,
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
        let embed = backend.embedding(
            names.embed(),
            src.matrix(names.embed(), cfg.vocab_size, hidden)?,
            tied,
        )?;
        let blocks = (0..cfg.num_hidden_layers)
            .map(|i| {
                let vector = |part| -> Result<B::Vector> {
                    backend.vector(src.vector(&names.block(i, part), hidden)?)
                };
                let linear = |part, rows, cols| -> Result<B::Linear> {
                    let name = names.block(i, part);
                    backend.linear(&name, src.matrix(&name, rows, cols)?)
                };
                let stack = |parts: &[(Part, usize, usize)]| -> Result<B::Stack> {
                    let names: Vec<String> =
                        parts.iter().map(|&(p, _, _)| names.block(i, p)).collect();
                    let mats = parts
                        .iter()
                        .zip(&names)
                        .map(|(&(_, rows, cols), name)| src.matrix(name, rows, cols))
                        .collect::<Result<Vec<_>>>()?;
                    backend.stack(&names, mats)
                };
                let feed_forward = match cfg.moe {
                    Some(moe) => Ffn::Moe(Moe::load(&backend, src, names, &cfg, moe, i)?),
                    None => Ffn::Dense {
                        gate_up: stack(&[(Part::Gate, ffn, hidden), (Part::Up, ffn, hidden)])?,
                        down: linear(Part::Down, hidden, ffn)?,
                    },
                };
                Ok(Block {
                    attn_norm: vector(Part::AttnNorm)?,
                    qkv: stack(&[
                        (Part::Q, q_dim, hidden),
                        (Part::K, kv_dim, hidden),
                        (Part::V, kv_dim, hidden),
                    ])?,
                    wo: linear(Part::O, hidden, q_dim)?,
                    ffn_norm: vector(Part::FfnNorm)?,
                    ffn: feed_forward,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let norm = backend.vector(src.vector(names.norm(), hidden)?)?;
        let output = if tied {
            None
        } else {
            let name = names.output();
            Some(backend.linear(name, src.matrix(name, cfg.vocab_size, hidden)?)?)
        };
        let rope = Rope::new(&cfg, style);
        let model = Self {
            cfg,
            backend,
            embed,
            blocks,
            norm,
            output,
            rope,
        };
        B::loaded(&model);
        Ok(model)
    }

    /// The model's hyperparameters.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The backend the model runs on.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The RoPE convention the weights need.
    pub fn rope_style(&self) -> RopeStyle {
        self.rope.style()
    }

    /// Whether the output projection is the token embedding.
    pub fn is_tied(&self) -> bool {
        self.output.is_none()
    }

    /// The output projection.
    fn head(&self) -> Head<'_, B> {
        match &self.output {
            Some(m) => Head::Output(m),
            None => Head::Tied(&self.embed),
        }
    }

    /// An empty KV cache for a session of this model.
    ///
    /// # Errors
    /// [`ModelError::Config`] for a zero context or chunk size; memory or
    /// device errors.
    pub fn new_cache(&self, opts: KvCacheOptions) -> Result<KvCache<B::Kv>> {
        let geom = KvGeometry::new(&self.cfg, &opts)?;
        let store = self.backend.new_kv(&geom)?;
        Ok(KvCache::with_store(geom, store))
    }

    /// Work buffers that fit `cache` (chunks as large as it takes).
    pub fn new_scratch(&self, cache: &KvCache<B::Kv>) -> B::Work {
        self.backend.new_work(&self.cfg, cache.max_chunk())
    }

    /// Runs `tokens` (one chunk) at the cache's position, appends their keys
    /// and values to the cache and returns the logits `mode` asks for.
    ///
    /// # Shapes
    /// - `tokens`: `n`, with `1 ≤ n ≤` the chunk size of `cache` and `work`.
    /// - returns: `vocab` ([`LogitsMode::Last`]), `n × vocab` ([`LogitsMode::All`])
    ///   or empty ([`LogitsMode::Skip`]).
    ///
    /// # Errors
    /// [`ModelError::ContextOverflow`] when the tokens do not fit in the
    /// context, [`ModelError::ChunkTooLarge`], [`ModelError::EmptyInput`],
    /// [`ModelError::TokenOutOfRange`], or [`ModelError::Mismatch`] when the
    /// cache or work buffers were built for another model. On error the
    /// cache's position is unchanged.
    pub fn forward<'w>(
        &self,
        tokens: &[u32],
        cache: &mut KvCache<B::Kv>,
        work: &'w mut B::Work,
        mode: LogitsMode,
    ) -> Result<&'w [f32]> {
        self.pass(tokens, cache, work, mode, false)
    }

    /// As [`forward`](Self::forward), for a chunk of a prompt: the backend
    /// may compute its products faster than a decode step's (the CPU: in
    /// bf16 on AMX tiles), to results as precise but not the same bits.
    /// Each row's results do not depend on the chunk's other rows, so a
    /// prompt gives the same results however it is split (prefix caching),
    /// as long as all of it runs this way; rows that must equal a decode
    /// step's (verifying drafts, batched steps) run through
    /// [`forward`](Self::forward).
    ///
    /// # Errors
    /// As [`forward`](Self::forward).
    pub fn forward_prompt<'w>(
        &self,
        tokens: &[u32],
        cache: &mut KvCache<B::Kv>,
        work: &'w mut B::Work,
        mode: LogitsMode,
    ) -> Result<&'w [f32]> {
        self.pass(tokens, cache, work, mode, true)
    }

    /// [`forward`](Self::forward) or, `prompt`, [`forward_prompt`](Self::forward_prompt).
    fn pass<'w>(
        &self,
        tokens: &[u32],
        cache: &mut KvCache<B::Kv>,
        work: &'w mut B::Work,
        mode: LogitsMode,
        prompt: bool,
    ) -> Result<&'w [f32]> {
        self.check_chunk(tokens, cache, work)?;
        self.backend.set_prompt(work, prompt);
        let (b, eps) = (&self.backend, self.cfg.rms_norm_eps);
        b.embed(work, &self.embed, &self.rope, tokens, cache.position())?;
        self.blocks(work, |w, l| {
            b.attend(w, cache, l, Act::Q, Act::K, Act::V, Act::Att)
        })?;
        cache.advance(tokens.len());
        b.logits(work, Act::X, &self.norm, eps, self.head(), mode)
    }

    /// Runs one token of each of several sessions as one pass: row `t` is
    /// `tokens[t]` at the position of `caches[t]`, whose keys and values it
    /// appends to and attends over; the linear layers run once over all rows
    /// (each weight read once for the batch). Returns one row of logits per
    /// session. A backend that does not batch ([`Backend::batches`]) is
    /// refused: run its sessions one by one.
    ///
    /// # Shapes
    /// - `tokens`: `n`, with `1 ≤ n ≤` the chunk size of `work`; `caches`: `n`.
    /// - returns: `n × vocab`.
    ///
    /// # Errors
    /// As [`forward`](Self::forward) for any row, [`ModelError::Mismatch`]
    /// when `caches` and `tokens` differ in length, and
    /// [`ModelError::Config`] on a backend that does not batch. On error
    /// no cache's position changes.
    pub fn forward_batch<'w>(
        &self,
        caches: &mut [&mut KvCache<B::Kv>],
        tokens: &[u32],
        work: &'w mut B::Work,
    ) -> Result<&'w [f32]> {
        if caches.len() != tokens.len() {
            return Err(ModelError::Mismatch(format!(
                "a batch of {} tokens for {} sessions",
                tokens.len(),
                caches.len()
            )));
        }
        if tokens.is_empty() {
            return Err(ModelError::EmptyInput);
        }
        for (cache, &token) in caches.iter().zip(tokens) {
            self.check_chunk(&[token], cache, work)?;
        }
        self.backend.check_work(work, &self.cfg, tokens.len())?;
        self.backend.set_prompt(work, false);
        let (b, eps) = (&self.backend, self.cfg.rms_norm_eps);
        let positions = caches.iter().map(|c| c.position()).collect::<Vec<_>>();
        b.embed_batch(work, &self.embed, &self.rope, tokens, &positions)?;
        self.blocks(work, |w, l| {
            b.attend_batch(w, caches, l, Act::Q, Act::K, Act::V, Act::Att)
        })?;
        for cache in caches.iter_mut() {
            cache.advance(1);
        }
        b.logits(work, Act::X, &self.norm, eps, self.head(), LogitsMode::All)
    }

    /// Every block over the rows [`Backend::embed`] (or
    /// [`Backend::embed_batch`]) started, with `attend` storing each layer's
    /// keys and values and attending over them.
    fn blocks(
        &self,
        work: &mut B::Work,
        mut attend: impl FnMut(&mut B::Work, usize) -> Result<()>,
    ) -> Result<()> {
        use Act::*;
        let (b, eps) = (&self.backend, self.cfg.rms_norm_eps);
        for (l, blk) in self.blocks.iter().enumerate() {
            // Attention.
            b.rms_norm(work, X, &blk.attn_norm, eps, Xn)?;
            b.project(work, &blk.qkv, Xn, &[Q, K, V])?;
            b.rope(work, &self.rope, Q, K)?;
            attend(work, l)?;
            b.linear_into(work, &blk.wo, Att, Xn)?;
            b.add(work, X, Xn)?;
            // Feed-forward.
            b.rms_norm(work, X, &blk.ffn_norm, eps, Xn)?;
            match &blk.ffn {
                Ffn::Dense { gate_up, down } => {
                    b.project(work, gate_up, Xn, &[Gate, Up])?;
                    b.silu_mul(work, Gate, Up)?;
                    b.linear_into(work, down, Gate, Xn)?;
                }
                Ffn::Moe(moe) => b.moe(work, moe, Xn, Xn)?,
            }
            b.add(work, X, Xn)?;
        }
        Ok(())
    }

    /// Runs a prompt of any length in chunks of up to the cache's (and the
    /// work buffers') chunk size, each a [`forward_prompt`](Self::forward_prompt),
    /// and returns the last token's logits.
    ///
    /// # Shapes
    /// - `tokens`: `n ≥ 1`.
    /// - returns: `vocab`.
    ///
    /// # Errors
    /// As [`forward`](Self::forward); a prompt that does not fit in the
    /// context is refused before anything is processed.
    pub fn prefill<'w>(
        &self,
        tokens: &[u32],
        cache: &mut KvCache<B::Kv>,
        work: &'w mut B::Work,
    ) -> Result<&'w [f32]> {
        self.chunks(tokens, cache, work, true)
    }

    /// As [`prefill`](Self::prefill), each chunk a [`forward`](Self::forward):
    /// the results of decode steps (teacher forcing, a draft model catching
    /// up), whatever the length.
    ///
    /// # Errors
    /// As [`prefill`](Self::prefill).
    pub fn feed<'w>(
        &self,
        tokens: &[u32],
        cache: &mut KvCache<B::Kv>,
        work: &'w mut B::Work,
    ) -> Result<&'w [f32]> {
        self.chunks(tokens, cache, work, false)
    }

    /// [`prefill`](Self::prefill) or, not `prompt`, [`feed`](Self::feed).
    fn chunks<'w>(
        &self,
        tokens: &[u32],
        cache: &mut KvCache<B::Kv>,
        work: &'w mut B::Work,
        prompt: bool,
    ) -> Result<&'w [f32]> {
        if tokens.is_empty() {
            return Err(ModelError::EmptyInput);
        }
        check_room(cache.position(), cache.ctx_len(), tokens.len())?;
        let chunk = self.backend.work_chunk(work).min(cache.max_chunk()).max(1);
        let mut chunks = tokens.chunks(chunk).peekable();
        while let Some(c) = chunks.next() {
            if chunks.peek().is_some() {
                self.pass(c, cache, work, LogitsMode::Skip, prompt)?;
            } else {
                return self.pass(c, cache, work, LogitsMode::Last, prompt);
            }
        }
        Err(ModelError::EmptyInput)
    }

    /// Everything [`forward`](Self::forward) checks before touching the cache.
    fn check_chunk(&self, tokens: &[u32], cache: &KvCache<B::Kv>, work: &B::Work) -> Result<()> {
        cache.check(&self.cfg)?;
        self.backend.check_work(work, &self.cfg, tokens.len())?;
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
    if let Some(moe) = cfg.moe {
        if moe.num_experts == 0 || !(1..=moe.num_experts).contains(&moe.experts_per_token) {
            return bad(format!(
                "a mixture of experts needs 1 ≤ experts per token ≤ experts, got {} of {}",
                moe.experts_per_token, moe.num_experts
            ));
        }
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
