//! What the examples that load a local model share: the model flags (`generate`, `chat`,
//! `bench`, `serve`): the KV cache type, the backend and its device, in-situ
//! quantization, the kernels' instruction set; the lazily loaded local route of a routed run, the
//! `--remote` client and the checks of a remote run's flags. Included with `mod common;` (a folder without `main.rs` is
//! not an example of its own).

use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};
use clap::parser::ValueSource;
use clap::{Args, ValueEnum};
use foehn::engine::{Backend, CandleDevice, Isq, Speculation};
use foehn::model::{ActPrecision, Isa, KvCacheType, KvTypes};
use foehn::remote::OpenAiClient;
use foehn::{
    CancelToken, Capabilities, EventStream, GenerateError, GenerateRequest, Generator, LoadOptions,
    LocalModel,
};

/// How a local model is loaded and run, beyond threads and context length.
#[derive(Args, Debug, Clone)]
pub struct ModelFlags {
    /// KV cache element type of keys and values: f16, f32, q8_0 (0.53x the memory of f16) or q4_0 (0.28x); quantized types are for the cpu backend and a head size that is a multiple of 32.
    #[arg(long, default_value = "f16")]
    pub kv: KvCacheType,
    /// Element type of the cached keys alone, overriding --kv (llama.cpp's -ctk / --cache-type-k).
    #[arg(long, alias = "cache-type-k", value_name = "TYPE")]
    pub kv_k: Option<KvCacheType>,
    /// Element type of the cached values alone, overriding --kv (llama.cpp's -ctv / --cache-type-v).
    #[arg(long, alias = "cache-type-v", value_name = "TYPE")]
    pub kv_v: Option<KvCacheType>,
    /// Compute backend: `cpu` (foehn's kernels) or `candle` (candle tensors on --device).
    #[arg(long, value_enum, default_value_t = BackendArg::Cpu)]
    pub backend: BackendArg,
    /// Device of the candle backend: `cpu`, `cuda:N` (build with --features cuda) or `metal` (--features metal).
    #[arg(long, default_value = "cpu")]
    pub device: CandleDevice,
    /// Quantize a safetensors model's weights at load: q8_0, q4_0, q4k or q6k (not for GGUF files).
    #[arg(long)]
    pub isq: Option<Isq>,
    /// Quantize activations in two 8-bit passes (the levels, then what they lost): the logits of f32 activations, at 2-2.3x the prefill time (cpu backend).
    #[arg(long)]
    pub precise: bool,
    /// Compute the prompt's passes in bf16 on AMX-BF16 tiles where the CPU has them (Intel Xeon 4th gen on): 7B pp512 1.3-1.6x faster, a pass of few tokens slower; as precise as the 8-bit activations but not the same bits as decode steps, and until a deferred matrix is packed a short prompt computes as a decode step (cpu backend).
    #[arg(long, conflicts_with = "precise")]
    pub prompt_bf16: bool,
    /// Instruction set of the CPU kernels: scalar, avx2, avx512vnni, avx512amx or neon-dotprod (default: the best this CPU runs; cpu backend).
    #[arg(long, value_parser = parse_isa)]
    pub isa: Option<Isa>,
    /// Speculative decoding: ngram (prompt lookup: drafts what followed the text's last tokens earlier on), draft:MODEL (a smaller model with the same tokenizer drafts) or off; drafts are verified in one pass, so the output is the same, greedy or seeded.
    #[arg(long, default_value = "ngram")]
    pub spec: Speculation,
}

/// An `--isa` name.
fn parse_isa(name: &str) -> std::result::Result<Isa, String> {
    Isa::from_name(name).ok_or_else(|| {
        let names: Vec<&str> = Isa::ALL.into_iter().map(Isa::name).collect();
        format!(
            "unknown instruction set {name:?} (one of {})",
            names.join(", ")
        )
    })
}

/// The `--backend` choice.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum BackendArg {
    Cpu,
    Candle,
}

impl ModelFlags {
    /// The backend the flags select.
    pub fn backend(&self) -> Backend {
        match self.backend {
            BackendArg::Cpu => Backend::Cpu,
            BackendArg::Candle => Backend::Candle(self.device),
        }
    }

    /// The KV cache types of keys and values: --kv, then --kv-k / --kv-v.
    pub fn kv_types(&self) -> KvTypes {
        KvTypes {
            k: self.kv_k.unwrap_or(self.kv),
            v: self.kv_v.unwrap_or(self.kv),
        }
    }

    /// `opts` with the flags' KV cache type, backend and quantization.
    pub fn apply(&self, opts: LoadOptions) -> LoadOptions {
        LoadOptions {
            kv_types: self.kv_types(),
            backend: self.backend(),
            isq: self.isq,
            isa: self.isa,
            speculation: self.spec.clone(),
            act_precision: if self.precise {
                ActPrecision::Q8x2
            } else if self.prompt_bf16 {
                ActPrecision::PromptBf16
            } else {
                ActPrecision::Q8
            },
            ..opts
        }
    }
}

/// The local route of a routed run, loaded on first use: a remote-first run
/// the remote serves never loads it, and a model that cannot be loaded is a
/// failed route the router moves past.
pub struct LazyLocal {
    spec: Option<String>,
    opts: LoadOptions,
    model: OnceLock<Result<LocalModel, String>>,
}

impl LazyLocal {
    #[allow(dead_code)] // the examples that route use it, `tools` does not
    pub fn new(spec: Option<String>, opts: LoadOptions) -> Self {
        Self {
            spec,
            opts,
            model: OnceLock::new(),
        }
    }

    fn model(&self) -> Result<&LocalModel, GenerateError> {
        let loaded = self.model.get_or_init(|| {
            LocalModel::load(self.spec.as_deref(), self.opts.clone())
                .map_err(|e| format!("loading the local model: {e}"))
        });
        loaded
            .as_ref()
            .map_err(|e| GenerateError::Backend(e.clone()))
    }

    #[allow(dead_code)] // generate reports it, chat does not
    pub fn load_ms(&self) -> Option<f64> {
        match self.model.get() {
            Some(Ok(m)) => Some(m.load_time().as_secs_f64() * 1e3),
            _ => None,
        }
    }
}

impl Generator for LazyLocal {
    fn name(&self) -> &str {
        "local"
    }

    fn capabilities(&self) -> Capabilities {
        match self.model.get() {
            Some(Ok(m)) => m.capabilities(),
            // Not loaded yet: the context is unknown (an overflow fails over when it happens).
            _ => Capabilities {
                context_length: None,
                tools: false,
                json_schema: true,
                token_prompts: true,
            },
        }
    }

    fn generate(
        &self,
        request: GenerateRequest,
        cancel: CancelToken,
    ) -> Result<EventStream, GenerateError> {
        self.model()?.generate(request, cancel)
    }
}

/// The ids among `ids` whose flags were given on the command line.
pub fn given_flags(matches: &clap::ArgMatches, ids: &[&'static str]) -> Vec<&'static str> {
    ids.iter()
        .copied()
        .filter(|id| matches!(matches.value_source(id), Some(ValueSource::CommandLine)))
        .collect()
}

/// Flag ids as the command line spells them: `--top-logits, --kv`.
pub fn flag_list(ids: &[&str]) -> String {
    ids.iter()
        .map(|id| format!("--{}", id.replace('_', "-")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A `--remote` run without `--route` takes no local-model flags and no
/// `--model` (which side should serve?).
pub fn check_remote_only(given_local_flags: &[&str], model_given: bool) -> Result<()> {
    if !given_local_flags.is_empty() {
        bail!(
            "local-only flags with a remote-only run: {} (--remote without --route runs remotely only; \
             add --route local-first|remote-first|fastest|cheapest to also use the local model)",
            flag_list(given_local_flags)
        );
    }
    if model_given {
        bail!(
            "--model and --remote together need --route local-first|remote-first|fastest|cheapest \
             (which one should serve?)"
        );
    }
    Ok(())
}

/// The flags of a remote run: the server, its token and the model there.
#[derive(Args, Debug, Clone)]
pub struct RemoteFlags {
    /// Send the request to an OpenAI-compatible server: its base URL (`http://127.0.0.1:8080/v1`),
    /// or `hf` for the Hugging Face router (https://router.huggingface.co/v1).
    #[arg(long, value_name = "BASE_URL", requires = "model_id")]
    pub remote: Option<String>,
    /// Bearer token for --remote (default: the HF_TOKEN environment variable).
    #[arg(long, requires = "remote")]
    pub api_key: Option<String>,
    /// The remote model id, e.g. `mistralai/Mistral-7B-Instruct-v0.3:fastest` on the HF router.
    #[arg(long, requires = "remote")]
    pub model_id: Option<String>,
}

impl RemoteFlags {
    /// The client the flags name (`None` without `--remote`).
    pub fn client(&self) -> Result<Option<OpenAiClient>> {
        self.remote
            .as_deref()
            .map(|base| remote_client(base, self.api_key.as_deref(), self.model_id.as_deref()))
            .transpose()
    }
}

/// The client for `--remote`: `hf` is the Hugging Face router; the token comes
/// from `--api-key`, else `HF_TOKEN`.
fn remote_client(
    base: &str,
    api_key: Option<&str>,
    model_id: Option<&str>,
) -> Result<OpenAiClient> {
    let model_id = model_id.context("--remote needs --model-id (the remote model's id)")?;
    let api_key = api_key.map(str::to_string);
    let client = if base.eq_ignore_ascii_case("hf") {
        match api_key {
            Some(key) => OpenAiClient::hf_router_with_token(key),
            None => OpenAiClient::hf_router()
                .map_err(|e| anyhow!("--remote hf: {e} (or pass --api-key)"))?,
        }
    } else {
        let client = OpenAiClient::new(base);
        match api_key.or_else(|| {
            std::env::var("HF_TOKEN")
                .ok()
                .filter(|t| !t.trim().is_empty())
        }) {
            Some(key) => client.with_api_key(key.trim()),
            None => client,
        }
    };
    Ok(client.with_model(model_id))
}
