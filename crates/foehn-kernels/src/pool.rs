//! A small persistent thread pool for the matmul products, as ggml does it:
//! workers spin briefly on an epoch counter between jobs (a decode step runs
//! hundreds of products a few microseconds apart, too short for a sleep and
//! wake-up), take tasks from one atomic counter, and park on a condition
//! variable when no job has come for a while.
//!
//! A [`crate::Compute`] owns one; every product of the model that owns the
//! context runs on it.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins before parking.
const SPIN: Duration = Duration::from_micros(200);

/// A job: a type-erased `&(dyn Fn(usize) + Sync)` and its task count.
#[derive(Clone, Copy)]
struct Job {
    f: *const (dyn Fn(usize) + Sync),
    tasks: usize,
}

struct Shared {
    /// Bumped (Release) when a job is published.
    epoch: AtomicUsize,
    /// The current job (valid while `busy > 0` for this epoch).
    job: Mutex<Option<Job>>,
    /// Next task index of the current job.
    next: AtomicUsize,
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
// closure it points to (which is Sync) outlives every use.
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
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            job: Mutex::new(None),
            next: AtomicUsize::new(0),
            busy: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            parked: Mutex::new(0),
            wake: Condvar::new(),
            quit: AtomicBool::new(false),
        });
        let workers = (1..threads.max(1))
            .filter_map(|i| {
                let s = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("foehn-kernel-{i}"))
                    .spawn(move || {
                        SLOT.with(|slot| slot.set(i));
                        worker(&s)
                    })
                    .ok()
            })
            .collect();
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
        let f_static: *const (dyn Fn(usize) + Sync) = unsafe { std::mem::transmute(f) };
        *s.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(Job { f: f_static, tasks });
        s.next.store(0, Ordering::Relaxed);
        s.busy.store(self.workers.len(), Ordering::Relaxed);
        s.epoch.fetch_add(1, Ordering::Release);
        if *s.parked.lock().unwrap_or_else(|e| e.into_inner()) > 0 {
            s.wake.notify_all();
        }
        let caller = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| loop {
            let i = s.next.fetch_add(1, Ordering::Relaxed);
            if i >= tasks {
                break;
            }
            f(i);
        }));
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
        *s.job.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if caller.is_err() || s.panicked.swap(false, Ordering::Relaxed) {
            panic!("a kernel task panicked");
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.quit.store(true, Ordering::Release);
        self.shared.epoch.fetch_add(1, Ordering::Release);
        {
            let _g = self.shared.parked.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn worker(s: &Shared) {
    let mut seen = 0usize;
    loop {
        // Wait for a new epoch: spin, then park.
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            let e = s.epoch.load(Ordering::Acquire);
            if e != seen {
                seen = e;
                break;
            }
            spins += 1;
            if spins.is_multiple_of(1024) && start.elapsed() > SPIN {
                let mut parked = s.parked.lock().unwrap_or_else(|e| e.into_inner());
                *parked += 1;
                while s.epoch.load(Ordering::Acquire) == seen {
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
        let job = *s.job.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(job) = job {
            // SAFETY: the publisher waits for `busy` to reach 0 before the
            // closure goes out of scope.
            let f = unsafe { &*job.f };
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| loop {
                let i = s.next.fetch_add(1, Ordering::Relaxed);
                if i >= job.tasks {
                    break;
                }
                f(i);
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
