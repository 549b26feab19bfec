//! Sessions (a KV cache over a shared model) and the token-by-token generation loop.

use std::collections::VecDeque;
use std::time::Instant;

use foehn_chat::ToolCallParser;
use foehn_core::{
    CancelToken, Completion, Constraint, Event, FinishReason, GenerateError, GenerateRequest,
    Timings, TokenEvent, ToolCallDelta, ToolCallIds, ToolChoice, Usage,
};
use foehn_model::{DecoderSession, LogitsMode};
use foehn_sampler::{Sampler, SamplerConfig, StopCheck, StopStrings, TokenConstraint};
use foehn_tokenizer::StreamDecoder;

use crate::local::{Inner, LocalModel};
use crate::reasoning::ThinkBlocks;
use crate::spec::{Drafter, Drafting, MAX_DRAFT};
use crate::{EngineError, Result};

/// One conversation with a [`LocalModel`]: its own KV cache, kept across
/// requests so a follow-up only prefills the tokens it does not share with
/// what the cache already holds.
pub struct Session {
    model: LocalModel,
    state: State,
    /// The tokens whose keys and values are in the cache, in order.
    cached: Vec<u32>,
    /// Whether its generations decode speculatively (the model's choice
    /// unless set).
    speculate: bool,
    /// The draft model's session, between generations, when the model
    /// drafts with one.
    draft_session: Option<Box<Session>>,
    /// Whether the tokens a constraint forces run as one chunk.
    fast_forward: bool,
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
        let speculate = model.inner.drafting.is_some();
        Ok(Self {
            model,
            state,
            cached: Vec::new(),
            speculate,
            draft_session: None,
            fast_forward: true,
        })
    }

    /// This session with its generations decoded speculatively or not
    /// (default: as the model's [`LoadOptions::speculation`](crate::LoadOptions::speculation)
    /// says); on a model loaded without speculation, speculation is prompt
    /// lookup.
    pub fn with_speculation(mut self, on: bool) -> Self {
        self.speculate = on;
        self
    }

    /// This session with the tokens a constraint forces run as one chunk
    /// (the default) or one forward pass each, as plain decoding would: the
    /// output is the same; `bench --constrained` measures what the chunk saves.
    pub fn with_fast_forward(mut self, on: bool) -> Self {
        self.fast_forward = on;
        self
    }

    /// Bytes of the session's KV cache.
    pub fn memory_bytes(&self) -> usize {
        self.state.0.memory_bytes()
    }

    /// Most tokens the session's cache holds.
    pub(crate) fn context_length(&self) -> usize {
        self.state.ctx_len()
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

    /// Runs `tokens` after what the cache holds, each chunk as a decode step
    /// computes it, and returns the logits of the last one (the low-level
    /// path behind teacher forcing and perplexity).
    ///
    /// # Shapes
    /// The result has `vocab_size` entries.
    pub fn feed(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let mut logits = Vec::new();
        self.feed_into(tokens, &mut logits)?;
        Ok(logits)
    }

    /// Like [`feed`](Self::feed), writing the logits into `logits` (resized to
    /// `vocab_size`) instead of a new vector: no allocation per step, for
    /// benchmarks and tight loops.
    pub fn feed_into(&mut self, tokens: &[u32], logits: &mut Vec<f32>) -> Result<()> {
        self.run_into(tokens, Run::Feed, logits)
    }

    /// Like [`feed_into`](Self::feed_into) for a prompt: its passes are a
    /// prompt's, as a generation runs its prompt (faster where the backend
    /// has a prompt product: see `Model::forward_prompt`).
    pub fn prefill_into(&mut self, tokens: &[u32], logits: &mut Vec<f32>) -> Result<()> {
        self.run_into(tokens, Run::Prefill, logits)
    }

    /// Runs `tokens` as `how` says after what the cache holds, the last
    /// logits into `logits`, and records them as cached.
    fn run_into(&mut self, tokens: &[u32], how: Run, logits: &mut Vec<f32>) -> Result<()> {
        self.state.run(&self.model.inner, tokens, how, logits)?;
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
    pub(crate) fn reuse_prefix(&mut self, ids: &[u32]) -> usize {
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

/// How [`State::run`] runs its tokens and which logits it keeps.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Run {
    /// A prompt, in chunks; the last position's logits.
    Prefill,
    /// In chunks, as decode steps; the last position's logits.
    Feed,
    /// One chunk of a prompt (the last: its last position's logits).
    PromptChunk { last: bool },
    /// As one pass; the last position's logits.
    Last,
    /// As one pass; every position's logits, one row each.
    All,
}

impl Run {
    /// Whether the pass returns logits (all but a prompt chunk before the
    /// last).
    fn keeps_logits(self) -> bool {
        self != (Run::PromptChunk { last: false })
    }
}

/// What a generation needs for its next event ([`Generation::begin`]).
pub(crate) enum Next {
    /// The event (`None`: the generation is over), without a forward pass.
    Event(Option<Event>),
    /// The logits after the tokens emitted so far, then
    /// [`Generation::sample`].
    Logits,
}

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

    /// Runs `tokens` at the cache's position as `how` says and writes the
    /// logits it keeps into `out` (left as it was where it keeps none:
    /// [`Run::keeps_logits`]).
    fn run(&mut self, model: &Inner, tokens: &[u32], how: Run, out: &mut Vec<f32>) -> Result<()> {
        let session = &mut self.0;
        let logits = model.pool.install(|| match how {
            Run::Prefill => session.prefill(tokens),
            Run::Feed => session.feed(tokens),
            Run::PromptChunk { last: true } => session.forward_prompt(tokens, LogitsMode::Last),
            Run::PromptChunk { last: false } => session.forward_prompt(tokens, LogitsMode::Skip),
            Run::Last => session.forward(tokens, LogitsMode::Last),
            Run::All => session.forward(tokens, LogitsMode::All),
        })?;
        if how.keeps_logits() {
            out.clear();
            out.extend_from_slice(logits);
        }
        Ok(())
    }
}

/// A request read against a model: its prompt's token ids and its tools.
pub(crate) struct Prepared {
    pub(crate) prompt: Vec<u32>,
    specs: Vec<foehn_core::ToolSpec>,
    choice: ToolChoice,
}

impl Prepared {
    /// The prompt's ids (chat template, tools offered) and the tool choice.
    pub(crate) fn new(model: &LocalModel, request: &GenerateRequest) -> Result<Self> {
        let (specs, choice) =
            foehn_core::tool_request(request.tools.as_ref(), request.tool_choice.as_ref())?
                .unwrap_or((Vec::new(), ToolChoice::None));
        let prompt = model.prompt_ids_with_tools(&request.prompt, &specs)?;
        Ok(Self {
            prompt,
            specs,
            choice,
        })
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
    /// `[THINK]…[/THINK]` tracking, for models whose vocabulary has them.
    think: Option<ThinkBlocks>,
    logits: Vec<f32>,
    logprobs: Option<usize>,
    max_tokens: Option<u32>,
    /// End-of-generation tokens do not end it (`GenerateRequest::ignore_eos`).
    ignore_eos: bool,
    cancel: CancelToken,
    generated: u32,
    /// Tokens emitted but not yet run through the model: the last sampled
    /// one, and those a constraint forced after it.
    pending: Vec<u32>,
    /// Tokens a constraint forces next, emitted before the next sample.
    forced: VecDeque<u32>,
    /// Tokens the constraint forced so far.
    forced_count: usize,
    /// What the output must match, when the request says.
    constraint: Option<TokenConstraint>,
    /// Tool calls: the parser of the model's call syntax, when the request
    /// offers tools.
    tools: Option<ToolCallParser>,
    /// The grammar of the calls under `tool_choice: auto`, compiled up
    /// front and made the constraint when the model writes the token that
    /// opens a call.
    lazy_calls: Option<TokenConstraint>,
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
    /// Speculation, when it is on.
    spec: Option<Speculative>,
}

/// The state of speculative decoding in a generation: the drafter, and the
/// batch being consumed (the last sampled token and the tokens drafted after
/// it, run as one pass, with a row of logits per token).
struct Speculative {
    drafter: Drafter,
    /// The batch's tokens: the sampled token, then the drafts.
    batch: Vec<u32>,
    /// The batch's logits, `batch.len() × vocab`.
    rows: Vec<f32>,
    /// Rows handed to the sampler so far (0: no batch).
    consumed: usize,
    /// Cache position of the batch's first token.
    base: usize,
    /// Tokens drafted and accepted over the generation.
    drafted: usize,
    accepted: usize,
}

impl Generation {
    fn new(session: Session, request: GenerateRequest, cancel: CancelToken) -> Result<Self> {
        let prepared = Prepared::new(&session.model, &request)?;
        Self::start(session, request, prepared, cancel)
    }

    /// Starts a generation of a prepared request.
    pub(crate) fn start(
        mut session: Session,
        request: GenerateRequest,
        prepared: Prepared,
        cancel: CancelToken,
    ) -> Result<Self> {
        let model = session.model.clone();
        let Prepared {
            prompt,
            specs,
            choice,
        } = prepared;
        let format = model.inner.tools.clone().filter(|_| !specs.is_empty());
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
        // Compiled before any token, so a constraint that does not compile
        // is an error of the request.
        let mut output = request.output_constraint()?;
        let mut lazy_calls = None;
        if let Some(format) = &format {
            let parallel = request.parallel_tool_calls != Some(false);
            let calls = format
                .grammar(&specs, &choice, parallel)
                .map(Constraint::Lark);
            match choice {
                ToolChoice::Required | ToolChoice::Function(_) if output.is_some() => {
                    return Err(GenerateError::InvalidRequest(
                        "response_format and a required tool call both constrain the output: \
                         ask for one of them"
                            .into(),
                    )
                    .into())
                }
                ToolChoice::Required | ToolChoice::Function(_) => output = calls,
                ToolChoice::Auto if output.is_none() && format.trigger_token().is_some() => {
                    lazy_calls = calls.map(|c| model.compile_constraint(&c)).transpose()?;
                }
                ToolChoice::Auto | ToolChoice::None => {}
            }
        }
        let constraint = match output {
            Some(c) => Some(model.compile_constraint(&c)?),
            None => None,
        };
        let tools = format.map(|f| {
            let ids = request
                .seed
                .map_or_else(ToolCallIds::from_clock, ToolCallIds::new);
            ToolCallParser::new(f, ids)
        });
        let reused = session.reuse_prefix(&prompt);
        // Penalties look at the prompt too, as llama.cpp's do.
        for &t in &prompt {
            sampler.accept(t);
        }
        let decoder = model.inner.tokenizer.stream_decoder(true);
        // Sampled generations speculate too: the drafter is deterministic,
        // so drawing from a verified row and keeping the draft when the draw
        // equals it is exactly speculative sampling's acceptance (probability
        // p(draft), else a draw from p without it), and each row is the one
        // plain decoding would draw from, with the same random numbers.
        // Constrained generations speculate as well: the constraint follows
        // only the tokens sampled (each from its row, under the mask of the
        // tokens before it), so a draft is kept exactly when plain decoding
        // would have picked it.
        let drafter = if !session.speculate {
            None
        } else {
            Some(match &model.inner.drafting {
                Some(Drafting::Model(draft)) => {
                    let s = match session.draft_session.take() {
                        Some(s) => s,
                        None => Box::new(draft.session()?),
                    };
                    Drafter::model(s)
                }
                Some(Drafting::Ngram) | None => Drafter::ngram(),
            })
        };
        let spec = drafter.map(|drafter| Speculative {
            drafter,
            batch: Vec::with_capacity(MAX_DRAFT + 1),
            rows: Vec::new(),
            consumed: 0,
            base: 0,
            drafted: 0,
            accepted: 0,
        });
        Ok(Self {
            session,
            prompt,
            reused,
            sampler,
            stop: StopStrings::new(request.stop.iter()),
            decoder,
            think: ThinkBlocks::for_tokenizer(&model.inner.tokenizer),
            logits: vec![0.0; vocab],
            logprobs: request.logprobs.map(|k| k as usize),
            max_tokens: request.max_tokens,
            ignore_eos: request.ignore_eos,
            cancel,
            generated: 0,
            pending: Vec::with_capacity(MAX_DRAFT + 1),
            forced: VecDeque::new(),
            forced_count: 0,
            constraint,
            tools,
            lazy_calls,
            prefilled: false,
            finished: None,
            done: false,
            started: Instant::now(),
            first_token: None,
            prefill_time: None,
            record_k: 0,
            recorded: Vec::new(),
            spec,
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
    pub fn into_session(mut self) -> Session {
        if self.settle().is_err() {
            // The cache could not drop the drafts past the answer: forget it
            // rather than keep tokens that were never generated.
            self.session.reset();
        }
        if let Some(sp) = self.spec.take() {
            self.session.draft_session = sp.drafter.into_session();
        }
        self.session
    }

    /// Tokens drafted by speculative decoding so far, and how many of them
    /// the model accepted (each accepted one is a token without a pass of
    /// its own); `(0, 0)` without speculation.
    pub fn speculation_stats(&self) -> (usize, usize) {
        self.spec
            .as_ref()
            .map_or((0, 0), |s| (s.drafted, s.accepted))
    }

    /// How many of the generated tokens a constraint forced (they skip
    /// sampling, and run through the model as one chunk with the token
    /// sampled before them).
    pub fn forced_tokens(&self) -> usize {
        self.forced_count
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
    fn run(&mut self, tokens: &[u32], how: Run) -> Result<()> {
        let s = &mut self.session;
        s.state.run(&s.model.inner, tokens, how, &mut self.logits)?;
        s.cached.extend_from_slice(tokens);
        Ok(())
    }

    /// Makes `self.logits` the logits after `token`, the token just
    /// sampled: the next row of the batch being consumed when `token` is the
    /// draft that row follows, else a forward pass — of `token` and the
    /// tokens drafted after it when speculating and a draft is found.
    fn advance(&mut self, token: u32) -> Result<()> {
        let vocab = self.logits.len();
        if let Some(sp) = &mut self.spec {
            let next = sp.consumed;
            if next > 0 && next < sp.batch.len() && sp.batch[next] == token {
                self.logits
                    .copy_from_slice(&sp.rows[next * vocab..(next + 1) * vocab]);
                sp.consumed += 1;
                return Ok(());
            }
        }
        self.settle()?;
        let Some(sp) = &mut self.spec else {
            return self.run(&[token], Run::Last);
        };
        let s = &mut self.session;
        let at = s.state.position();
        // Drafts must fit the cache, and are useless past the token limit.
        let room = s.state.ctx_len().saturating_sub(at + 1);
        let left = self
            .max_tokens
            .map_or(usize::MAX, |m| m.saturating_sub(self.generated) as usize);
        // What is looked up: the tokens run, then `token` (pushed onto the
        // cached tokens for the look-up only, not copied).
        s.cached.push(token);
        sp.batch.clear();
        sp.batch.push(token);
        let drafted = sp.drafter.draft(&s.cached, room.min(left), &mut sp.batch);
        s.cached.pop();
        drafted?;
        if sp.batch.len() == 1 {
            return self.run(&[token], Run::Last);
        }
        s.state
            .run(&s.model.inner, &sp.batch, Run::All, &mut sp.rows)?;
        s.cached.extend_from_slice(&sp.batch);
        self.logits.copy_from_slice(&sp.rows[..vocab]);
        sp.base = at;
        sp.consumed = 1;
        Ok(())
    }

    /// Ends the batch being consumed, if any: the cache keeps the tokens
    /// whose rows were consumed (what plain decoding would have run) and
    /// drops the drafts past them, and the drafter learns how many were
    /// accepted.
    fn settle(&mut self) -> Result<()> {
        let Some(sp) = &mut self.spec else {
            return Ok(());
        };
        if sp.consumed == 0 {
            return Ok(());
        }
        let (drafted, accepted) = (sp.batch.len() - 1, sp.consumed - 1);
        sp.drafter.update(drafted, accepted);
        sp.drafted += drafted;
        sp.accepted += accepted;
        let keep = sp.base + sp.consumed;
        sp.consumed = 0;
        let s = &mut self.session;
        if keep < s.state.position() {
            s.state.truncate(keep)?;
        }
        s.cached.truncate(keep);
        Ok(())
    }

    /// Where the next token runs: the cache's position, less the drafts
    /// of the batch being consumed that were not reached yet.
    fn next_position(&self) -> usize {
        match &self.spec {
            Some(sp) if sp.consumed > 0 => sp.base + sp.consumed,
            _ => self.session.state.position(),
        }
    }

    fn done_event(&mut self, reason: FinishReason) -> Event {
        self.done = true;
        let called = self.tools.as_ref().is_some_and(|t| t.calls() > 0);
        let reason = match reason {
            FinishReason::Stop if called => FinishReason::ToolCalls,
            other => other,
        };
        let now = Instant::now();
        Event::Done(Completion {
            finish_reason: reason,
            usage: Usage {
                prompt_tokens: self.prompt.len() as u32,
                completion_tokens: self.generated,
                cached_tokens: self.reused as u32,
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

    /// Text still held back (an incomplete character, a possible stop
    /// string, a possible call marker) and the call still open.
    fn flush(&mut self) -> Result<(String, Vec<ToolCallDelta>)> {
        let tail = self.decoder.finish(&self.session.model.inner.tokenizer)?;
        let (tail, calls) = match &mut self.tools {
            Some(parser) => {
                let mut parsed = parser.push_text(&tail);
                let end = parser.finish();
                parsed.text.push_str(&end.text);
                parsed.calls.extend(end.calls);
                (parsed.text, parsed.calls)
            }
            None => (tail, Vec::new()),
        };
        let mut text = if self.stop.stopped().is_some() {
            String::new()
        } else {
            self.stop.push(&tail).text
        };
        if self.stop.stopped().is_none() {
            text.push_str(&self.stop.finish());
        }
        Ok((text, calls))
    }

    fn step(&mut self) -> Result<Option<Event>> {
        match self.begin()? {
            Next::Event(ev) => Ok(ev),
            Next::Logits => {
                self.next_logits()?;
                self.sample()
            }
        }
    }

    /// The first half of a step: the next event when it needs no forward
    /// pass (the end, a cancellation, a forced token, the text held back),
    /// else [`Next::Logits`]: the logits after the tokens emitted so far
    /// must be computed, then [`sample`](Self::sample) gives the event.
    pub(crate) fn begin(&mut self) -> Result<Next> {
        if self.done {
            return Ok(Next::Event(None));
        }
        if let Some(reason) = self.finished {
            self.settle()?;
            let (text, tool_calls) = self.flush()?;
            if !text.is_empty() || !tool_calls.is_empty() {
                return Ok(Next::Event(Some(Event::Token(TokenEvent {
                    text,
                    reasoning: self.in_reasoning(),
                    tool_calls,
                    ..TokenEvent::default()
                }))));
            }
            return Ok(Next::Event(Some(self.done_event(reason))));
        }
        if self.cancel.is_cancelled() {
            self.settle()?;
            return Ok(Next::Event(Some(self.done_event(FinishReason::Cancelled))));
        }
        if let Some(token) = self.forced.pop_front() {
            self.forced_count += 1;
            // Forced: the only token the constraint allows, probability 1.
            let logprob = self.logprobs.map(|_| 0.0);
            return self
                .emit(token, logprob, Vec::new())
                .map(|e| Next::Event(Some(e)));
        }
        Ok(Next::Logits)
    }

    /// The second half of a step, once `self.logits` are those after the
    /// tokens emitted so far: samples the next token and emits it.
    pub(crate) fn sample(&mut self) -> Result<Option<Event>> {
        if self.record_k > 0 {
            self.recorded.push(top_k(&self.logits, self.record_k));
        }
        if let Some(c) = &mut self.constraint {
            c.apply_mask(&mut self.logits)?;
        }
        let (token, logprob) = if self.logprobs.is_some() {
            let (t, lp) = self.sampler.sample_with_logprob(&mut self.logits);
            (t, Some(lp))
        } else {
            (self.sampler.sample(&mut self.logits), None)
        };
        self.sampler.accept(token);
        self.first_token.get_or_insert_with(Instant::now);
        // `[THINK]` / `[/THINK]` and the tool-call markers are control
        // tokens that do not end a turn.
        let marker = self.think.as_ref().is_some_and(|t| t.is_marker(token))
            || self
                .tools
                .as_ref()
                .is_some_and(|t| t.format().is_marker(token));
        if !marker && !self.ignore_eos && self.is_end_token(token) {
            self.finished = Some(FinishReason::Stop);
            return self.step();
        }
        if self.constraint.is_none()
            && self.lazy_calls.is_some()
            && self.tools.as_ref().and_then(|t| t.format().trigger_token()) == Some(token)
        {
            // The model starts a call: from here on it must be valid.
            self.constraint = self.lazy_calls.take();
        }
        if let Some(c) = &mut self.constraint {
            c.commit(token)?;
            self.forced.extend(c.forced()?);
        }
        let top_logprobs = match self.logprobs {
            Some(k) if k > 0 => {
                let tok = &self.session.model.inner.tokenizer;
                self.sampler
                    .top_logprobs(k)
                    .into_iter()
                    .map(|(id, lp)| (tok.token_text(id).unwrap_or_default(), lp))
                    .collect()
            }
            _ => Vec::new(),
        };
        self.emit(token, logprob, top_logprobs).map(Some)
    }

    /// The one token a batched step runs for this generation, when that is
    /// all it needs (prefilled, one token pending, no speculation); `None`
    /// when its next pass is its own (the prompt, a forced chunk).
    pub(crate) fn batch_token(&self) -> Option<u32> {
        match self.pending[..] {
            [token] if self.prefilled && self.spec.is_none() => Some(token),
            _ => None,
        }
    }

    /// The session's cache and work buffers, for a batched step.
    pub(crate) fn decoder_session(&mut self) -> &mut dyn DecoderSession {
        self.session.state.0.as_mut()
    }

    /// Takes the logits a batched step computed for
    /// [`batch_token`](Self::batch_token) (which the step appended to the
    /// session's cache).
    pub(crate) fn batched(&mut self, row: &[f32]) {
        self.logits.copy_from_slice(row);
        self.session.cached.append(&mut self.pending);
    }

    /// Whether the prompt still needs prefilling.
    pub(crate) fn prefilling(&self) -> bool {
        !self.prefilled
    }

    /// Runs the next chunk of the prompt's prefill (the chunks
    /// [`DecoderSession::prefill`] would run, so the logits are the same)
    /// and returns whether it was the last (then `self.logits` are its
    /// logits): a scheduler runs decode steps of other sessions between
    /// the chunks of a long prompt.
    pub(crate) fn prefill_chunk(&mut self) -> Result<bool> {
        let t = Instant::now();
        let s = &mut self.session;
        let kept = s.cached.len();
        let chunk = s.state.0.max_chunk();
        let end = self.prompt.len().min(kept + chunk);
        let last = end == self.prompt.len();
        let how = Run::PromptChunk { last };
        s.state.run(
            &s.model.inner,
            &self.prompt[kept..end],
            how,
            &mut self.logits,
        )?;
        s.cached.extend_from_slice(&self.prompt[kept..end]);
        *self.prefill_time.get_or_insert_with(Default::default) += t.elapsed();
        self.prefilled = last;
        Ok(last)
    }

    /// Makes `self.logits` those after the tokens emitted so far: the
    /// prompt's prefill first, then the pending tokens. A constraint's mask
    /// for the same point is computed meanwhile on another thread (it
    /// depends on the tokens, not on the logits).
    pub(crate) fn next_logits(&mut self) -> Result<()> {
        let Some(mut constraint) = self.constraint.take() else {
            return self.run_pending();
        };
        let (ran, masked) = std::thread::scope(|scope| {
            let mask = scope.spawn(|| constraint.compute_mask());
            let ran = self.run_pending();
            (ran, mask.join())
        });
        self.constraint = Some(constraint);
        ran?;
        masked.map_err(|_| EngineError::Other("the token-mask thread panicked".into()))??;
        Ok(())
    }

    /// Prefills the prompt, or runs the pending tokens: one as speculation
    /// allows, several (a sampled token and those forced after it) as one chunk.
    fn run_pending(&mut self) -> Result<()> {
        if !self.prefilled {
            let kept = self.session.cached.len();
            let rest = self.prompt[kept..].to_vec();
            let t = Instant::now();
            self.run(&rest, Run::Prefill)?;
            self.prefill_time = Some(t.elapsed());
            self.prefilled = true;
            return Ok(());
        }
        let mut pending = std::mem::take(&mut self.pending);
        let ran = match pending[..] {
            [] => Ok(()),
            [token] => self.advance(token),
            // A sampled token and those forced after it: past any drafts.
            _ if self.session.fast_forward => {
                self.settle().and_then(|()| self.run(&pending, Run::Last))
            }
            // One pass each, as plain decoding would run them.
            _ => self
                .settle()
                .and_then(|()| pending.iter().try_for_each(|&t| self.run(&[t], Run::Last))),
        };
        pending.clear();
        self.pending = pending;
        ran
    }

    /// Emits a generated token (sampled, or forced by the constraint) and
    /// decides whether the generation ends after it.
    fn emit(
        &mut self,
        token: u32,
        logprob: Option<f32>,
        top_logprobs: Vec<(String, f32)>,
    ) -> Result<Event> {
        let model = self.session.model.clone();
        self.generated += 1;
        let was_reasoning = self.in_reasoning();
        let mut tool_calls = Vec::new();
        let check = match self.think.as_mut().and_then(|t| t.switch(token)) {
            // A block's boundary has no text of its own; the text held back
            // for stop strings before it belongs to the side it ends.
            Some(_) => StopCheck {
                text: self.stop.finish(),
                stopped: None,
            },
            None => {
                let piece = self.decoder.push(&model.inner.tokenizer, token)?;
                match &mut self.tools {
                    Some(parser) => {
                        let parsed = parser.push(token, &piece);
                        tool_calls = parsed.calls;
                        self.stop.push(&parsed.text)
                    }
                    None => self.stop.push(&piece),
                }
            }
        };
        self.pending.push(token);
        let complete = self.forced.is_empty()
            && self
                .constraint
                .as_ref()
                .is_some_and(TokenConstraint::is_finished);
        let ctx_full = self.next_position() + self.pending.len() >= self.session.state.ctx_len();
        if check.stopped.is_some() || complete {
            self.finished = Some(FinishReason::Stop);
        } else if self.max_tokens.is_some_and(|m| self.generated >= m) || ctx_full {
            self.finished = Some(FinishReason::Length);
        }
        Ok(Event::Token(TokenEvent {
            text: check.text,
            id: Some(token),
            logprob,
            top_logprobs,
            reasoning: was_reasoning,
            tool_calls,
        }))
    }

    /// Whether the text generated now is inside a `[THINK]…[/THINK]` block.
    fn in_reasoning(&self) -> bool {
        self.think.as_ref().is_some_and(ThinkBlocks::inside)
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
