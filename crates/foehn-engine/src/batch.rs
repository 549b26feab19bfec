//! Continuous batching: a [`Batcher`] runs the generations of many sessions
//! on one background thread, gathering the next token of every running
//! generation into one forward pass per step ([`DecoderBatch`]), so that a
//! decode step reads the weights once for all of them instead of once each.
//!
//! Generations join and leave between steps. Each keeps its own sampler,
//! stop strings, constraint, tool-call parser and cancellation (the
//! [`Generation`] state machine: the batcher only computes its logits). A
//! prompt is prefilled in its own passes, one chunk per step, between the
//! decode steps of the others. Speculative decoding is off under batching
//! (its drafts would make rows of several tokens; batching is the better
//! use of a step's weight reads when several sessions run).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::sync::Arc;

use foehn_core::{CancelToken, Event, EventStream, GenerateError, GenerateRequest};
use foehn_model::{DecoderBatch, DecoderSession};

use crate::local::LocalModel;
use crate::session::{Generation, Next, Prepared};
use crate::{EngineError, Result};

/// What a generation's stream receives.
type Item = std::result::Result<Event, GenerateError>;

/// Runs generations of one model in batched decode steps on a background
/// thread (see the [module](self) notes). Dropping it ends the thread once
/// the generations it runs have ended.
#[derive(Debug)]
pub struct Batcher {
    model: LocalModel,
    jobs: Sender<Job>,
    max_sessions: usize,
    counts: Arc<Counts>,
}

/// What the batcher's thread counts.
#[derive(Debug, Default)]
struct Counts {
    steps: AtomicU64,
    rows: AtomicU64,
}

/// How much the batched steps batched so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatchStats {
    /// Batched decode steps run.
    pub steps: u64,
    /// Tokens they decoded (the rows of all steps together).
    pub rows: u64,
}

/// A generation handed to the batcher, with the sender of its stream.
struct Job {
    generation: Generation,
    events: Sender<Item>,
    /// What ends the generation (its `Done` event or its error), sent once
    /// its session is in the prefix cache, so that a client's next request
    /// finds it there.
    last: Option<Item>,
}

impl Batcher {
    /// A batcher over `model` running up to `max_sessions` generations at
    /// once (more wait for a free row, in order).
    ///
    /// # Errors
    /// `max_sessions` 0, or work buffers the backend cannot make.
    pub fn new(model: &LocalModel, max_sessions: usize) -> Result<Self> {
        if max_sessions == 0 {
            return Err(EngineError::Other(
                "a batcher needs room for at least one session".into(),
            ));
        }
        let model = model.without_batcher();
        let inner = &model.inner;
        let batch = inner
            .pool
            .install(|| Arc::clone(&inner.net).batch(max_sessions, &inner.session_opts))?;
        let (jobs, rx) = channel();
        let runner = model.clone();
        let counts = Arc::new(Counts::default());
        let counted = Arc::clone(&counts);
        std::thread::Builder::new()
            .name("foehn-batcher".into())
            .spawn(move || run(&runner, batch, &rx, &counted, max_sessions))
            .map_err(|e| EngineError::Other(format!("starting the batcher thread: {e}")))?;
        Ok(Self {
            model,
            jobs,
            max_sessions,
            counts,
        })
    }

    /// The batched steps run so far and the tokens they decoded.
    pub fn stats(&self) -> BatchStats {
        BatchStats {
            steps: self.counts.steps.load(Ordering::Relaxed),
            rows: self.counts.rows.load(Ordering::Relaxed),
        }
    }

    /// Most generations decoded in one step.
    pub fn max_sessions(&self) -> usize {
        self.max_sessions
    }

    /// Starts a generation in a new session: the request is checked and
    /// templated here (its errors are returned), then the batcher runs it;
    /// the stream yields the events a [`Generation`] would.
    ///
    /// # Errors
    /// As [`Session::into_generation`](crate::Session::into_generation), and
    /// [`GenerateError::Backend`] when the batcher's thread is gone.
    pub fn generate(
        &self,
        request: GenerateRequest,
        cancel: CancelToken,
    ) -> std::result::Result<EventStream, GenerateError> {
        // A kept session sharing the prompt's start, else a new one.
        let prepared = Prepared::new(&self.model, &request)?;
        let prefix = &self.model.inner.prefix;
        let session = match prefix.take(&prepared.prompt) {
            Some(s) => s,
            None => self.model.session()?,
        };
        let generation =
            Generation::start(session.with_speculation(false), request, prepared, cancel)?;
        prefix.record_reuse(generation.reused_tokens());
        let (events, rx) = channel();
        self.jobs
            .send(Job {
                generation,
                events,
                last: None,
            })
            .map_err(|_| GenerateError::Backend("the batcher's thread has stopped".into()))?;
        Ok(Box::new(rx.into_iter()))
    }
}

/// The batcher's thread: admits jobs, steps every generation until it
/// needs logits, runs prompts' chunks on their own and the rest as one
/// batched pass, then samples each; until the [`Batcher`] is dropped and
/// every generation has ended.
fn run(
    model: &LocalModel,
    mut batch: Box<dyn DecoderBatch>,
    jobs: &Receiver<Job>,
    counts: &Counts,
    max: usize,
) {
    let mut running: Vec<Job> = Vec::with_capacity(max);
    let mut rows: Vec<usize> = Vec::with_capacity(max);
    let mut tokens: Vec<u32> = Vec::with_capacity(max);
    let mut keep: Vec<bool> = Vec::with_capacity(max);
    let vocab = model.config().vocab_size;
    loop {
        if running.is_empty() {
            match jobs.recv() {
                Ok(job) => running.push(job),
                Err(_) => return,
            }
        }
        while running.len() < max {
            match jobs.try_recv() {
                Ok(job) => running.push(job),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        // Each generation up to its next forward pass (or its end).
        retain_jobs(model, &mut running, |_, job| job.until_logits());
        // Those that need one token run: one pass for all of them.
        rows.clear();
        tokens.clear();
        for (i, job) in running.iter().enumerate() {
            if let Some(token) = job.generation.batch_token() {
                rows.push(i);
                tokens.push(token);
            }
        }
        keep.clear();
        keep.resize(running.len(), true);
        if !rows.is_empty() {
            let ran = {
                let mut at = rows.iter().peekable();
                let mut sessions: Vec<&mut dyn DecoderSession> = Vec::with_capacity(rows.len());
                for (i, job) in running.iter_mut().enumerate() {
                    if at.next_if_eq(&&i).is_some() {
                        sessions.push(job.generation.decoder_session());
                    }
                }
                let inner = &model.inner;
                inner
                    .pool
                    .install(|| batch.forward(&mut sessions, &tokens).map(<[f32]>::to_vec))
            };
            if ran.is_ok() {
                counts.steps.fetch_add(1, Ordering::Relaxed);
                counts.rows.fetch_add(rows.len() as u64, Ordering::Relaxed);
            }
            for (r, &i) in rows.iter().enumerate() {
                let job = &mut running[i];
                keep[i] = match &ran {
                    Ok(logits) => {
                        job.generation.batched(&logits[r * vocab..(r + 1) * vocab]);
                        job.sample()
                    }
                    Err(e) => job.fail(EngineError::Other(format!("batched decode step: {e}"))),
                };
            }
        }
        // The others run passes of their own: a chunk of a prompt, or a
        // sampled token with those a constraint forced after it.
        let mut at = rows.iter().peekable();
        for (i, job) in running.iter_mut().enumerate() {
            if at.next_if_eq(&&i).is_some() {
                continue;
            }
            let g = &mut job.generation;
            let ready = if g.prefilling() {
                g.prefill_chunk()
            } else {
                g.next_logits().map(|()| true)
            };
            keep[i] = match ready {
                Ok(true) => job.sample(),
                Ok(false) => true,
                Err(e) => job.fail(e),
            };
        }
        retain_jobs(model, &mut running, |i, _| {
            keep.get(i).copied().unwrap_or(true)
        });
    }
}

/// Keeps the jobs `keep` (given each one's index before any is removed)
/// says to; the sessions of the others go to the model's prefix cache.
fn retain_jobs(
    model: &LocalModel,
    running: &mut Vec<Job>,
    mut keep: impl FnMut(usize, &mut Job) -> bool,
) {
    let mut i = 0;
    for index in 0..running.len() {
        if keep(index, &mut running[i]) {
            i += 1;
        } else {
            let job = running.remove(i);
            model.inner.prefix.put(job.generation.into_session());
            if let Some(last) = job.last {
                let _ = job.events.send(last);
            }
        }
    }
}

impl Job {
    /// Sends events that need no forward pass until the generation needs
    /// logits (true) or has ended, failed or lost its receiver (false).
    fn until_logits(&mut self) -> bool {
        loop {
            match self.generation.begin() {
                Ok(Next::Logits) => return true,
                Ok(Next::Event(None)) => return false,
                Ok(Next::Event(Some(ev))) => {
                    if !self.send(ev) {
                        return false;
                    }
                }
                Err(e) => return self.fail(e),
            }
        }
    }

    /// Samples the next token from the logits just computed and sends its
    /// event; false when the generation has ended.
    fn sample(&mut self) -> bool {
        match self.generation.sample() {
            Ok(Some(ev)) => self.send(ev),
            Ok(None) => false,
            Err(e) => self.fail(e),
        }
    }

    /// Sends `ev`; false when it ends the generation (then it is kept as
    /// [`Job::last`]) or nobody listens.
    fn send(&mut self, ev: Event) -> bool {
        if matches!(ev, Event::Done(_)) {
            self.last = Some(Ok(ev));
            return false;
        }
        self.events.send(Ok(ev)).is_ok()
    }

    /// Keeps the error that ends the generation as [`Job::last`]; false.
    fn fail(&mut self, e: EngineError) -> bool {
        self.last = Some(Err(e.into()));
        false
    }
}
