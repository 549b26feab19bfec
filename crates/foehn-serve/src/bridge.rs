//! Runs a blocking generation on a blocking thread and hands its events to
//! the async response through a bounded channel; whichever side goes away
//! first stops the other.

use std::sync::Arc;

use foehn_core::{CancelToken, Event, FinishReason, GenerateError, GenerateRequest, Generator};
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use crate::queue::{Outcome, Scheduler};

/// Events buffered between the generation and a slow client.
const CHANNEL_CAPACITY: usize = 64;

/// Cancels a generation when dropped: the response (or the handler waiting
/// for it) went away, so its client disconnected.
#[derive(Debug)]
pub(crate) struct CancelOnDrop(CancelToken);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// The async end of a running generation.
pub(crate) struct Running {
    /// The generation's events in order; closed after `Done` or an error.
    pub(crate) events: mpsc::Receiver<Result<Event, GenerateError>>,
    /// Cancels the generation when this end is dropped.
    pub(crate) _cancel: CancelOnDrop,
}

/// Starts `request` on a blocking thread; the permit (the turn in the queue)
/// is held until the generation has ended.
pub(crate) fn start(
    generator: Arc<dyn Generator>,
    request: GenerateRequest,
    permit: OwnedSemaphorePermit,
    scheduler: Arc<Scheduler>,
) -> Running {
    let cancel = CancelToken::new();
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    let token = cancel.clone();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let mut running = scheduler.running();
        running.set_outcome(drive(generator.as_ref(), request, &token, &tx));
    });
    Running {
        events: rx,
        _cancel: CancelOnDrop(cancel),
    }
}

/// Pulls events and sends them on until `Done`, an error, or the receiver is gone.
fn drive(
    generator: &dyn Generator,
    request: GenerateRequest,
    cancel: &CancelToken,
    tx: &mpsc::Sender<Result<Event, GenerateError>>,
) -> Outcome {
    let stream = match generator.generate(request, cancel.clone()) {
        Ok(s) => s,
        Err(e) => {
            let _ = tx.blocking_send(Err(e));
            return Outcome::Failed;
        }
    };
    for item in stream {
        let outcome = match &item {
            Ok(Event::Token(_)) => None,
            Ok(Event::Done(c)) if c.finish_reason == FinishReason::Cancelled => {
                Some(Outcome::Cancelled)
            }
            Ok(Event::Done(_)) => Some(Outcome::Completed),
            Err(_) => Some(Outcome::Failed),
        };
        if tx.blocking_send(item).is_err() {
            // The client went away: stop, and drop the stream (its session) now.
            cancel.cancel();
            return Outcome::Cancelled;
        }
        if let Some(outcome) = outcome {
            return outcome;
        }
        if cancel.is_cancelled() && tx.is_closed() {
            return Outcome::Cancelled;
        }
    }
    let _ = tx.blocking_send(Err(GenerateError::Backend(
        "the generation ended without a final event".into(),
    )));
    Outcome::Failed
}
