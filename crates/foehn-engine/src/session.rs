//! Sessions (a KV cache over a shared model) and the token-by-token generation loop.

use std::time::Instant;

use foehn_core::{
    CancelToken, Completion, Event, FinishReason, GenerateError, GenerateRequest, Timings,
    TokenEvent, Usage,
};
use foehn_model::{DecoderSession, LogitsMode};
use foehn_sampler::{Sampler, SamplerConfig, StopStrings};
use foehn_tokenizer::StreamDecoder;

use crate::local::{Inner, LocalModel};
use crate::Result;

/// One conversation with a [`LocalModel`]: its own KV cache, kept across
/// requests so a follow-up only prefills the tokens it does not share with
/// what the cache already holds.
pub struct Session {
    model: LocalModel,
    state: State,
    /// The tokens whose keys and values are in the cache, in order.
    cached: Vec<u32>,
}

impl Session {
    pub(crate) fn new(model: LocalModel) -> Result<Self> {
        // Inside the model's pool: work buffers are sized for its threads.
        let inner = &model.inner;
        let state = State(
            inner
                .pool
                .install(|| inner.net.clone().session(&inner.session_opts))?,
        );
        Ok(Self {
            model,
            state,
            cached: Vec::new(),
        })
    }

    /// The model this session runs.
    pub fn model(&self) -> &LocalModel {
        &self.model
    }

    /// Tokens currently held in the KV cache.
    pub fn cached_tokens(&self) -> &[u32] {
        &self.cached
    }

    /// Forgets the conversation (the next request prefills from scratch).
    pub fn reset(&mut self) {
        self.state.0.clear();
        self.cached.clear();
    }

    /// Runs `tokens` after what the cache holds and returns the logits of the
    /// last one (the low-level path behind teacher forcing and perplexity).
    ///
    /// # Shapes
    /// The result has `vocab_size` entries.
    pub fn feed(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let mut logits = Vec::new();
        self.state
            .run(&self.model.inner, tokens, true, &mut logits)?;
        self.cached.extend_from_slice(tokens);
        Ok(logits)
    }

    /// Like [`feed`](Self::feed), writing the logits into `logits` (resized to
    /// `vocab_size`) instead of a new vector: no allocation per step, for
    /// benchmarks and tight loops.
    pub fn feed_into(&mut self, tokens: &[u32], logits: &mut Vec<f32>) -> Result<()> {
        self.state.run(&self.model.inner, tokens, true, logits)?;
        self.cached.extend_from_slice(tokens);
        Ok(())
    }

    /// Starts a generation; it owns the session until [`Generation::into_session`].
    pub fn into_generation(
        self,
        request: GenerateRequest,
        cancel: CancelToken,
    ) -> Result<Generation> {
        Generation::new(self, request, cancel)
    }

    /// Keeps the longest cached prefix of `ids` (at most `ids.len() - 1`
    /// tokens, so the last prompt token is always run to get its logits) and
    /// returns how many tokens are kept.
    fn reuse_prefix(&mut self, ids: &[u32]) -> usize {
        let common = self
            .cached
            .iter()
            .zip(ids)
            .take_while(|(a, b)| a == b)
            .count()
            .min(ids.len() - 1);
        if common < self.cached.len() && self.state.truncate(common).is_err() {
            // A sliding-window ring that already overwrote needed keys: start over.
            self.reset();
            return 0;
        }
        self.cached.truncate(common);
        common
    }
}

/// A session's KV cache and work buffers on the model's backend.
struct State(Box<dyn DecoderSession>);

impl State {
    fn position(&self) -> usize {
        self.0.position()
    }

    fn ctx_len(&self) -> usize {
        self.0.ctx_len()
    }

    fn truncate(&mut self, to: usize) -> Result<()> {
        Ok(self.0.truncate(to)?)
    }

    /// Runs `tokens` at the cache's position (chunked when `prefill`) and
    /// writes the last position's logits into `out`.
    fn run(
        &mut self,
        model: &Inner,
        tokens: &[u32],
        prefill: bool,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let session = &mut self.0;
        let logits = model.pool.install(|| {
            if prefill {
                session.prefill(tokens)
            } else {
                session.forward(tokens, LogitsMode::Last)
            }
        })?;
        out.clear();
        out.extend_from_slice(logits);
        Ok(())
    }
}

/// A running generation: an iterator of [`Event`]s, one per generated token,
/// then [`Event::Done`].
pub struct Generation {
    session: Session,
    prompt: Vec<u32>,
    /// Prompt tokens found in the cache (not prefilled again).
    reused: usize,
    sampler: Sampler,
    stop: StopStrings,
    decoder: StreamDecoder,
    logits: Vec<f32>,
    logprobs: Option<usize>,
    max_tokens: Option<u32>,
    cancel: CancelToken,
    generated: u32,
    /// A token sampled and emitted but not yet run through the model.
    pending: Option<u32>,
    prefilled: bool,
    finished: Option<FinishReason>,
    done: bool,
    started: Instant,
    first_token: Option<Instant>,
    prefill_time: Option<std::time::Duration>,
    /// With [`Generation::record_top_logits`]: how many logits to keep per step.
    record_k: usize,
    /// The `record_k` largest raw logits before each sampled token.
    recorded: Vec<Vec<(u32, f32)>>,
}

impl Generation {
    fn new(mut session: Session, request: GenerateRequest, cancel: CancelToken) -> Result<Self> {
        let model = session.model.clone();
        let prompt = model.prompt_ids(&request.prompt)?;
        let ctx = session.state.ctx_len();
        if prompt.len() >= ctx {
            return Err(GenerateError::ContextOverflow {
                prompt_tokens: prompt.len() as u32,
                context: ctx as u32,
            }
            .into());
        }
        let defaults = SamplerConfig::default();
        let config = SamplerConfig {
            temperature: request.temperature.unwrap_or(defaults.temperature),
            top_k: request.top_k.map_or(defaults.top_k, |k| k as usize),
            top_p: request.top_p.unwrap_or(defaults.top_p),
            min_p: request.min_p.unwrap_or(defaults.min_p),
            repeat_penalty: request.repeat_penalty.unwrap_or(defaults.repeat_penalty),
            frequency_penalty: request
                .frequency_penalty
                .unwrap_or(defaults.frequency_penalty),
            presence_penalty: request
                .presence_penalty
                .unwrap_or(defaults.presence_penalty),
            seed: request.seed,
            ..defaults
        };
        let vocab = model.config().vocab_size;
        let mut sampler = Sampler::new(config, vocab)?;
        let reused = session.reuse_prefix(&prompt);
        // Penalties look at the prompt too, as llama.cpp's do.
        for &t in &prompt {
            sampler.accept(t);
        }
        let decoder = model.inner.tokenizer.stream_decoder(true);
        Ok(Self {
            session,
            prompt,
            reused,
            sampler,
            stop: StopStrings::new(request.stop.iter()),
            decoder,
            logits: vec![0.0; vocab],
            logprobs: request.logprobs.map(|k| k as usize),
            max_tokens: request.max_tokens,
            cancel,
            generated: 0,
            pending: None,
            prefilled: false,
            finished: None,
            done: false,
            started: Instant::now(),
            first_token: None,
            prefill_time: None,
            record_k: 0,
            recorded: Vec::new(),
        })
    }

    /// Records the `k` largest raw logits (before penalties and sampling) at
    /// every step: the first entry is the last prompt position's.
    pub fn record_top_logits(mut self, k: usize) -> Self {
        self.record_k = k;
        self
    }

    /// What [`Generation::record_top_logits`] recorded so far, one list per step, largest first.
    pub fn top_logits(&self) -> &[Vec<(u32, f32)>] {
        &self.recorded
    }

    /// Ends the generation and gives the session back (its cache holds the
    /// prompt and the generated tokens, ready for a follow-up).
    pub fn into_session(self) -> Session {
        self.session
    }

    /// How many prompt tokens were already in the session's cache (a chat
    /// follow-up prefills only the rest).
    pub fn reused_tokens(&self) -> usize {
        self.reused
    }

    /// The prompt's token ids (after templating).
    pub fn prompt_ids(&self) -> &[u32] {
        &self.prompt
    }

    /// Runs `tokens` through the model at the cache's position and keeps the
    /// last position's logits.
    fn run(&mut self, tokens: &[u32], prefill: bool) -> Result<()> {
        let s = &mut self.session;
        s.state
            .run(&s.model.inner, tokens, prefill, &mut self.logits)?;
        s.cached.extend_from_slice(tokens);
        Ok(())
    }

    fn done_event(&mut self, reason: FinishReason) -> Event {
        self.done = true;
        let now = Instant::now();
        Event::Done(Completion {
            finish_reason: reason,
            usage: Usage {
                prompt_tokens: self.prompt.len() as u32,
                completion_tokens: self.generated,
            },
            timings: Timings {
                time_to_first_token: self.first_token.map(|t| t - self.started),
                prefill: self.prefill_time,
                decode: self.first_token.map(|t| now - t),
            },
            served_by: Some("local".into()),
            tried: Vec::new(),
            provider: None,
        })
    }

    /// Text still held back (an incomplete character, a possible stop string).
    fn flush(&mut self) -> Result<String> {
        let tail = self.decoder.finish(&self.session.model.inner.tokenizer)?;
        let mut text = if self.stop.stopped().is_some() {
            String::new()
        } else {
            self.stop.push(&tail).text
        };
        if self.stop.stopped().is_none() {
            text.push_str(&self.stop.finish());
        }
        Ok(text)
    }

    fn step(&mut self) -> Result<Option<Event>> {
        if self.done {
            return Ok(None);
        }
        if let Some(reason) = self.finished {
            let text = self.flush()?;
            if !text.is_empty() {
                return Ok(Some(Event::Token(TokenEvent {
                    text,
                    id: None,
                    logprob: None,
                    top_logprobs: Vec::new(),
                })));
            }
            return Ok(Some(self.done_event(reason)));
        }
        if self.cancel.is_cancelled() {
            return Ok(Some(self.done_event(FinishReason::Cancelled)));
        }
        if !self.prefilled {
            let kept = self.session.cached.len();
            let rest = self.prompt[kept..].to_vec();
            let t = Instant::now();
            self.run(&rest, true)?;
            self.prefill_time = Some(t.elapsed());
            self.prefilled = true;
        } else if let Some(token) = self.pending.take() {
            self.run(&[token], false)?;
        }
        if self.record_k > 0 {
            self.recorded.push(top_k(&self.logits, self.record_k));
        }
        let (token, logprob) = if self.logprobs.is_some() {
            let (t, lp) = self.sampler.sample_with_logprob(&mut self.logits);
            (t, Some(lp))
        } else {
            (self.sampler.sample(&mut self.logits), None)
        };
        self.sampler.accept(token);
        self.first_token.get_or_insert_with(Instant::now);
        let model = self.session.model.clone();
        let tok = &model.inner.tokenizer;
        if self.is_end_token(token) {
            self.finished = Some(FinishReason::Stop);
            return self.step();
        }
        self.generated += 1;
        let piece = self.decoder.push(tok, token)?;
        let check = self.stop.push(&piece);
        let top_logprobs = match self.logprobs {
            Some(k) if k > 0 => self
                .sampler
                .top_logprobs(k)
                .into_iter()
                .map(|(id, lp)| (tok.token_text(id).unwrap_or_default(), lp))
                .collect(),
            _ => Vec::new(),
        };
        let ctx_full = self.session.state.position() + 1 >= self.session.state.ctx_len();
        if check.stopped.is_some() {
            self.finished = Some(FinishReason::Stop);
        } else if self.max_tokens.is_some_and(|m| self.generated >= m) || ctx_full {
            self.finished = Some(FinishReason::Length);
        } else {
            self.pending = Some(token);
        }
        Ok(Some(Event::Token(TokenEvent {
            text: check.text,
            id: Some(token),
            logprob,
            top_logprobs,
        })))
    }

    /// End-of-generation tokens: EOS, and any control token other than BOS
    /// (`<|im_end|>`, `<|eot_id|>`, `[INST]`, … end a turn).
    fn is_end_token(&self, token: u32) -> bool {
        let tok = &self.session.model.inner.tokenizer;
        Some(token) == tok.eos_id() || (tok.is_control(token) && Some(token) != tok.bos_id())
    }
}

/// The `k` largest values with their indices, largest first (ties: lower index first).
pub fn top_k(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let k = k.min(logits.len());
    if k == 0 {
        return Vec::new();
    }
    let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
    let by_value = |a: &u32, b: &u32| {
        logits[*b as usize]
            .total_cmp(&logits[*a as usize])
            .then(a.cmp(b))
    };
    idx.select_nth_unstable_by(k - 1, by_value);
    idx.truncate(k);
    idx.sort_by(by_value);
    idx.into_iter().map(|i| (i, logits[i as usize])).collect()
}

impl Iterator for Generation {
    type Item = Result<Event, GenerateError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.step() {
            Ok(ev) => ev.map(Ok),
            Err(e) => {
                self.done = true;
                Some(Err(e.into()))
            }
        }
    }
}
