//! `serve --parallel 4` runs its generations on the model's threads: while
//! four streams run, the process has no more threads than the model's pools
//! (`--threads`), the runtime's fixed ones and one blocking thread per
//! running generation (Linux: counted in /proc/PID/task).
#![cfg(target_os = "linux")]

mod common;
#[path = "serve/server.rs"]
mod server;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use server::{concurrent_streams, Job, ServeProcess};

/// Threads of process `pid` now.
fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("/proc/PID/task")
        .count()
}

#[test]
fn four_streams_use_the_configured_threads() {
    const THREADS: usize = 3;
    const PARALLEL: usize = 4;
    let server = ServeProcess::start(&["--parallel", "4", "--threads", &THREADS.to_string()], &[]);
    let pid = server.pid();
    // The model's pools: the kernels' (THREADS - 1 workers, the caller is
    // the last) and the sessions' (THREADS). The fixed part, measured with
    // --threads 1 and 3 on a 2-core machine (5 threads both times before
    // batching): the main thread, two helpers and the runtime's workers,
    // one per core; and the batcher's thread, which steps every generation.
    let pools = 2 * THREADS - 1;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let fixed = 3 + cores + 1;
    // Threads of the start (the runtime's blocking threads linger 10 s)
    // may still be there: wait for the idle count to come within the bound.
    let mut idle = threads(pid);
    for _ in 0..300 {
        if idle <= pools + fixed {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        idle = threads(pid);
    }
    assert!(
        idle <= pools + fixed,
        "idle: {idle} threads, more than the pools ({pools}) and the fixed {fixed}"
    );

    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut most = 0;
            while !done.load(Ordering::Relaxed) {
                most = most.max(threads(pid));
                std::thread::sleep(Duration::from_millis(5));
            }
            most
        })
    };
    let job = Job {
        path: "/v1/chat/completions",
        body: json!({
            "model": "smollm2-135m-instruct-q4_1",
            "messages": [{"role": "user", "content": "Write a long story about a cat."}],
            "max_tokens": 48,
            "temperature": 0.8,
            "seed": 3,
        }),
    };
    let run = concurrent_streams(&server, &[job], PARALLEL);
    done.store(true, Ordering::Relaxed);
    let most = sampler.join().expect("sampler");
    for (_, s) in &run.results {
        assert_eq!(s.status, 200);
    }
    // Each running generation takes one blocking thread; the sessions
    // share the model's pools, so nothing else may appear but the model's
    // packer, which the first request starts (a thread and its one-thread
    // pool, once per model).
    let packer = 2;
    assert!(
        most <= pools + fixed + PARALLEL + packer,
        "{most} threads while {PARALLEL} streams ran (idle {idle}, pools {pools}, fixed {fixed}, packer {packer})"
    );
    assert!(
        most > idle,
        "the sampler saw no generation thread ({most} vs {idle})"
    );
}
