//! A decode step allocates nothing: every buffer lives in the `Scratch`, the
//! `KvCache` or the model. Counted with a global allocator over all threads.
//!
//! The loop runs inside rayon's pool: a parallel call made from outside the
//! pool goes through rayon's global injector queue, which allocates a block
//! per 63 such calls (rayon's cost, not ours; a session's decode loop avoids
//! it the same way).
//!
//! The first forward pass starts the background packer (Q8_0 and k-quant
//! tiles, on a thread of its own), which allocates as it packs: the test packs
//! everything first, so that only the decode steps are counted.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use foehn_loader::GgufFile;
use foehn_model::{
    argmax, ActPrecision, KvCacheOptions, KvCacheType, KvTypes, LogitsMode, Transformer,
};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call unchanged to the system allocator; it only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Both models in one test: the allocation counter is global, so nothing may
/// run beside them.
#[test]
fn decode_step_does_not_allocate() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures");
    decode_steps_do_not_allocate(
        &format!("{fixtures}/tiny-mistral/gguf/tiny-mistral-Q4_K_M.gguf"),
        &[1, 375, 385, 294],
    );
    // A mixture of experts routes each step to other experts.
    decode_steps_do_not_allocate(
        &format!("{fixtures}/tiny-mixtral/tiny-mixtral-Q4_K_M.gguf"),
        &[1, 75, 185, 94],
    );
}

fn decode_steps_do_not_allocate(path: &str, prompt: &[u32]) {
    let model = Transformer::from_gguf(Arc::new(GgufFile::open(path).unwrap())).unwrap();
    wait_for_background_packing(&model);
    // Quantized keys and values (and a mix) go through the same steps.
    let q8 = KvTypes::both(KvCacheType::Q8_0);
    let mixed = KvTypes {
        k: KvCacheType::Q8_0,
        v: KvCacheType::Q4_0,
    };
    for (max_chunk, precision, types) in [
        (512, ActPrecision::Q8, KvTypes::default()),
        (4, ActPrecision::Q8, KvTypes::default()),
        (4, ActPrecision::Q8x2, KvTypes::default()),
        (512, ActPrecision::Q8, q8),
        (4, ActPrecision::Q8, mixed),
    ] {
        let opts = KvCacheOptions {
            max_chunk,
            types,
            ..KvCacheOptions::default()
        };
        let mut cache = model.new_cache(opts).unwrap();
        let mut scratch = model.new_scratch(&cache);
        scratch.set_act_precision(precision);
        // Rounds of 200 steps: a step that allocates fails every round; a
        // one-time first use (a pool thread's lazily made state, picked up by
        // work stealing only now) may cost the first round a few.
        let rounds: Vec<usize> = rayon::scope(|_| {
            let mut next = argmax(model.prefill(prompt, &mut cache, &mut scratch).unwrap());
            // Warm up the thread pool.
            for _ in 0..4 {
                next = argmax(
                    model
                        .forward(&[next], &mut cache, &mut scratch, LogitsMode::Last)
                        .unwrap(),
                );
            }
            let mut rounds = Vec::new();
            for _ in 0..3 {
                let before = ALLOCATIONS.load(Ordering::SeqCst);
                for _ in 0..200 {
                    next = argmax(
                        model
                            .forward(&[next], &mut cache, &mut scratch, LogitsMode::Last)
                            .unwrap(),
                    );
                    if cache.position() + 1 >= cache.ctx_len() {
                        cache.truncate(8).unwrap();
                    }
                }
                rounds.push(ALLOCATIONS.load(Ordering::SeqCst) - before);
                if rounds.last() == Some(&0) {
                    break;
                }
            }
            rounds
        });
        assert_eq!(
            rounds.last(),
            Some(&0),
            "{path}: rounds of 200 decode steps (max_chunk {max_chunk}, {precision:?}, kv {types}) allocated {rounds:?} times"
        );
    }
}

/// Packs every deferred matrix now (`Decoder::finish_packing`; the
/// background packer would start with the first token) and waits until any
/// packer threads have exited (their exit frees and allocates too). They are
/// found by name (`foehn-pack`, which the one-thread pool it starts inherits)
/// in `/proc/self/task`, where there is one.
fn wait_for_background_packing(model: &Transformer) {
    foehn_model::Decoder::finish_packing(model);
    let packer_running = || {
        std::fs::read_dir("/proc/self/task").is_ok_and(|tasks| {
            tasks.flatten().any(|t| {
                std::fs::read_to_string(t.path().join("comm"))
                    .is_ok_and(|name| name.trim() == "foehn-pack")
            })
        })
    };
    let start = std::time::Instant::now();
    while model
        .matrices()
        .filter(|m| m.is_deferred())
        .any(|m| !m.is_packed())
        || packer_running()
    {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(120),
            "the background packer has not packed the deferred matrices in 120 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}
