//! A small persistent thread pool for the matmul products, as ggml does it:
//! workers spin briefly on an epoch counter between jobs (a decode step runs
//! hundreds of products a few microseconds apart, too short for a sleep and
//! wake-up) and park on a condition variable when no job has come for a
//! while.
//!
//! A job's tasks are split into one contiguous range per thread, each with
//! a counter of its own cache line: a thread takes its own tasks in order
//! (a product's thread streams one contiguous run of tiles), then takes the
//! next tasks of the others' ranges while they have any. So threads share
//! cache lines only when a job is published (the job sits in the epoch's
//! line), when one runs out of its own tasks, and when each reports done —
//! not at every task, as with one shared counter.
//!
//! A [`crate::Compute`] owns one; every product of the model that owns the
//! context runs on it.

use std::cell::{Cell, UnsafeCell};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins before parking.
const SPIN: Duration = Duration::from_micros(200);

/// A job: a type-erased `&(dyn Fn(usize) + Sync)`.
type Job = *const (dyn Fn(usize) + Sync);

/// The published job and its epoch, in one cache line: a worker that sees
/// the new epoch has the job with it.
#[repr(align(64))]
struct Published {
    /// Bumped (Release) when a job is published.
    epoch: AtomicUsize,
    /// The current job: written by the publisher before it bumps `epoch`,
    /// while no worker reads it (every worker has finished the previous
    /// job), and read by the workers after they see the bump.
    job: UnsafeCell<Option<Job>>,
}

/// One thread's range of the current job's tasks: the next to take and
/// the end (set before the job is published), alone in its cache line.
#[repr(align(64))]
struct Range {
    next: AtomicUsize,
    end: AtomicUsize,
}

impl Range {
    /// Takes this range's next task, if any is left.
    fn take(&self) -> Option<usize> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        (i < self.end.load(Ordering::Relaxed)).then_some(i)
    }
}

struct Shared {
    published: Published,
    /// Per thread slot (the caller's 0, the workers' 1..), its tasks; the
    /// slots of workers that could not be started stay empty.
    ranges: Vec<Range>,
    /// Workers that have not finished the current job.
    busy: AtomicUsize,
    /// A task panicked in a worker.
    panicked: AtomicBool,
    /// Parked workers wait here for the next epoch.
    parked: Mutex<usize>,
    wake: Condvar,
    quit: AtomicBool,
}

// SAFETY: the raw job pointer is only dereferenced while the publishing call
// of `run` is blocked waiting for every worker to finish the job, so the
// closure it points to (which is Sync) outlives every use; the job cell is
// written only while no worker reads it (see `Published::job`).
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

/// A pool of `threads − 1` workers; the calling thread is the last one.
pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Serializes jobs from different callers.
    submit: Mutex<()>,
}

impl ThreadPool {
    /// A pool computing with `threads` threads (the caller included).
    pub fn new(threads: usize) -> Self {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            published: Published {
                epoch: AtomicUsize::new(0),
                job: UnsafeCell::new(None),
            },
            ranges: (0..threads)
                .map(|_| Range {
                    next: AtomicUsize::new(0),
                    end: AtomicUsize::new(0),
                })
                .collect(),
            busy: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            parked: Mutex::new(0),
            wake: Condvar::new(),
            quit: AtomicBool::new(false),
        });
        // Slots 1.. of the workers that could be started (a failed spawn
        // leaves no gap).
        let mut workers = Vec::with_capacity(threads - 1);
        for _ in 1..threads {
            let (s, i) = (Arc::clone(&shared), workers.len() + 1);
            let spawned = std::thread::Builder::new()
                .name(format!("foehn-kernel-{i}"))
                .spawn(move || {
                    SLOT.with(|slot| slot.set(i));
                    worker(&s, i)
                });
            if let Ok(w) = spawned {
                workers.push(w);
            }
        }
        Self {
            shared,
            workers,
            submit: Mutex::new(()),
        }
    }

    /// Threads computing a job, the caller included.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `f(0..tasks)` on the pool's threads and the caller's; returns
    /// when every task is done.
    ///
    /// # Panics
    /// When a task panics (after every other task has finished).
    pub fn run(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        if tasks <= 1 || self.workers.is_empty() {
            (0..tasks).for_each(f);
            return;
        }
        let _one_job = self.submit.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        // SAFETY (lifetime erasure): see `Shared`'s Send/Sync impls — the
        // pointer is not used after this function returns.
        let f_static: Job = unsafe { std::mem::transmute(f) };
        let threads = self.threads();
        // SAFETY: no worker reads the job now: each finished the previous
        // one (the last `run` waited for `busy` to reach 0) and reads it
        // again only after the epoch bump below (Release).
        unsafe { *s.published.job.get() = Some(f_static) };
        for (t, range) in s.ranges.iter().take(threads).enumerate() {
            range.next.store(t * tasks / threads, Ordering::Relaxed);
            range
                .end
                .store((t + 1) * tasks / threads, Ordering::Relaxed);
        }
        s.busy.store(self.workers.len(), Ordering::Relaxed);
        s.published.epoch.fetch_add(1, Ordering::Release);
        if *s.parked.lock().unwrap_or_else(|e| e.into_inner()) > 0 {
            s.wake.notify_all();
        }
        let caller =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_tasks(&s.ranges, 0, f)));
        let mut spins = 0u32;
        while s.busy.load(Ordering::Acquire) > 0 {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(256) {
                // A worker may have been descheduled (more threads than free
                // cores): let it run rather than burn its core.
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        if caller.is_err() || s.panicked.swap(false, Ordering::Relaxed) {
            panic!("a kernel task panicked");
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.quit.store(true, Ordering::Release);
        self.shared.published.epoch.fetch_add(1, Ordering::Release);
        {
            let _g = self.shared.parked.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// Runs the tasks of `ranges` from thread `slot`'s: its own in order, then
/// the others' (from the next slot on) while they have any left.
fn run_tasks(ranges: &[Range], slot: usize, f: &(dyn Fn(usize) + Sync)) {
    for k in 0..ranges.len() {
        let range = &ranges[(slot + k) % ranges.len()];
        while let Some(i) = range.take() {
            f(i);
        }
    }
}

/// A worker's loop: wait for a job (spin, then park), run tasks of it from
/// `slot`'s range on, report done.
fn worker(s: &Shared, slot: usize) {
    let mut seen = 0usize;
    loop {
        // Wait for a new epoch: spin, then park.
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            let e = s.published.epoch.load(Ordering::Acquire);
            if e != seen {
                seen = e;
                break;
            }
            spins += 1;
            if spins.is_multiple_of(1024) && start.elapsed() > SPIN {
                let mut parked = s.parked.lock().unwrap_or_else(|e| e.into_inner());
                *parked += 1;
                while s.published.epoch.load(Ordering::Acquire) == seen {
                    parked = s.wake.wait(parked).unwrap_or_else(|e| e.into_inner());
                }
                *parked -= 1;
            } else if spins.is_multiple_of(256) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        if s.quit.load(Ordering::Acquire) {
            return;
        }
        // SAFETY: the epoch was bumped (Acquire above) after the job was
        // written, and it is not written again before this worker reports
        // done (see `Published::job`).
        let job = unsafe { *s.published.job.get() };
        if let Some(job) = job {
            // SAFETY: the publisher waits for `busy` to reach 0 before the
            // closure goes out of scope.
            let f = unsafe { &*job };
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run_tasks(&s.ranges, slot, f)
            }));
            if r.is_err() {
                s.panicked.store(true, Ordering::Relaxed);
            }
        }
        s.busy.fetch_sub(1, Ordering::Release);
    }
}

thread_local! {
    /// A pool worker's index (1..threads); 0 on every other thread.
    static SLOT: Cell<usize> = const { Cell::new(0) };
}

/// The calling thread's slot while it runs a task of [`ThreadPool::run`]:
/// no two threads running tasks of one job share a slot (the submitting
/// thread is 0, the workers 1..threads, and jobs run one at a time), and
/// slots are below the pool's thread count. Tasks use it to pick
/// per-thread work space that is allocated up front.
pub fn current_slot() -> usize {
    SLOT.with(Cell::get)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once() {
        let pool = ThreadPool::new(3);
        for tasks in [0, 1, 2, 7, 100] {
            let hits: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
            pool.run(tasks, &|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(
                hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                "{tasks}"
            );
        }
    }

    #[test]
    fn workers_wake_up_after_parking() {
        let pool = ThreadPool::new(2);
        std::thread::sleep(SPIN * 5);
        let n = AtomicUsize::new(0);
        pool.run(64, &|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 64);
    }

    #[test]
    fn a_panicking_task_panics_the_caller_not_the_pool() {
        let pool = ThreadPool::new(2);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.run(8, &|i| {
                if i == 5 {
                    panic!("task 5");
                }
            })
        }));
        assert!(r.is_err());
        let n = AtomicUsize::new(0);
        pool.run(8, &|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 8);
    }
}
