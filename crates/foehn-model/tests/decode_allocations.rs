//! A decode step allocates nothing: every buffer lives in the `Scratch`, the
//! `KvCache` or the model. Counted with a global allocator over all threads.
//!
//! The loop runs inside rayon's pool: a parallel call made from outside the
//! pool goes through rayon's global injector queue, which allocates a block
//! per 63 such calls (rayon's cost, not ours; a session's decode loop avoids
//! it the same way).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use foehn_loader::GgufFile;
use foehn_model::{argmax, ActPrecision, KvCacheOptions, LogitsMode, Transformer};

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

#[test]
fn decode_step_does_not_allocate() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/tiny-mistral/gguf/tiny-mistral-Q4_K_M.gguf"
    );
    let model = Transformer::from_gguf(Arc::new(GgufFile::open(path).unwrap())).unwrap();
    for (max_chunk, precision) in [
        (512, ActPrecision::Q8),
        (4, ActPrecision::Q8),
        (4, ActPrecision::Q8x2),
    ] {
        let opts = KvCacheOptions {
            max_chunk,
            ..KvCacheOptions::default()
        };
        let mut cache = model.new_cache(opts).unwrap();
        let mut scratch = model.new_scratch(&cache);
        scratch.set_act_precision(precision);
        let (before, after) = rayon::scope(|_| {
            let mut next = argmax(
                model
                    .prefill(&[1, 375, 385, 294], &mut cache, &mut scratch)
                    .unwrap(),
            );
            // Warm up the thread pool.
            for _ in 0..4 {
                next = argmax(
                    model
                        .forward(&[next], &mut cache, &mut scratch, LogitsMode::Last)
                        .unwrap(),
                );
            }
            let before = ALLOCATIONS.load(Ordering::SeqCst);
            for _ in 0..200 {
                next = argmax(
                    model
                        .forward(&[next], &mut cache, &mut scratch, LogitsMode::Last)
                        .unwrap(),
                );
                if cache.position() + 1 >= cache.ctx_len() {
                    break;
                }
            }
            (before, ALLOCATIONS.load(Ordering::SeqCst))
        });
        let allocs = after - before;
        assert_eq!(
            allocs, 0,
            "200 decode steps (max_chunk {max_chunk}, {precision:?}) allocated {allocs} times"
        );
    }
}
