//! `Compute`: the execution context of the kernels — the instruction set
//! their kernels are chosen for and the threads their products run on —
//! made once by its owner (a loaded model) and passed to every packing and
//! product, so that no library code reads it from the environment or from
//! per-thread globals, and sessions sharing a model share its threads.

use crate::cpu::{Isa, SupportedIsa};
use crate::pool::ThreadPool;
use crate::vecops::VecOps;

/// The instruction set and the thread pool of the kernels.
pub struct Compute {
    isa: SupportedIsa,
    vecops: VecOps,
    pool: ThreadPool,
}

impl Compute {
    /// `threads` threads (the calling thread included) on the best
    /// instruction set this CPU runs.
    pub fn new(threads: usize) -> Self {
        Self::with_isa(threads, Isa::best())
    }

    /// `threads` threads (the calling thread included) on `isa`.
    pub fn with_isa(threads: usize, isa: SupportedIsa) -> Self {
        Self {
            isa,
            vecops: VecOps::new(isa),
            pool: ThreadPool::new(threads),
        }
    }

    /// The instruction set kernels are chosen for.
    pub fn isa(&self) -> SupportedIsa {
        self.isa
    }

    /// The f32 vector operations (attention, KV conversions) compiled for
    /// [`isa`](Self::isa).
    pub fn vecops(&self) -> VecOps {
        self.vecops
    }

    /// Threads a product runs on, the caller's included.
    pub fn threads(&self) -> usize {
        self.pool.threads()
    }

    /// Runs `f(0..tasks)` on the pool's threads and the caller's; returns
    /// when every task is done. Jobs of concurrent callers run one after
    /// the other.
    ///
    /// # Panics
    /// When a task panics (after every other task has finished).
    pub fn parallel_for(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        self.pool.run(tasks, f);
    }
}

impl Default for Compute {
    /// One thread per core available to the process, on the best
    /// instruction set.
    fn default() -> Self {
        Self::new(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }
}

impl std::fmt::Debug for Compute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compute")
            .field("isa", &self.isa.isa())
            .field("threads", &self.threads())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn a_context_runs_every_task_once_on_its_threads() {
        let ctx = Compute::with_isa(3, Isa::Scalar.check().unwrap());
        assert_eq!(ctx.threads(), 3);
        assert_eq!(ctx.isa().isa(), Isa::Scalar);
        assert_eq!(ctx.vecops().path(), "portable");
        let hits: Vec<AtomicUsize> = (0..50).map(|_| AtomicUsize::new(0)).collect();
        ctx.parallel_for(50, &|i| {
            hits[i].fetch_add(1, Ordering::Relaxed);
        });
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
    }

    #[test]
    fn the_default_context_uses_the_best_instruction_set() {
        assert_eq!(Compute::new(1).isa(), Isa::best());
    }
}
