//! Products of prompt passes ([`MatScratch::set_prompt`]) at
//! [`ActPrecision::PromptBf16`](super::ActPrecision::PromptBf16) on the
//! bf16 tile kernel where the CPU has one (AMX-BF16): the activations rounded to
//! bf16 once per product, the work split into pairs of 16-row tiles over
//! the context's threads.

use super::precision::MatScratch;
#[cfg(target_arch = "x86_64")]
use super::schedule::DIRECT_ACT_ROWS;
use super::QMatrix;
use crate::Compute;

impl QMatrix {
    /// `out[t·rows + r] = W[r] · xs[t]` for `n` activation rows on the bf16
    /// tile kernel, if this CPU runs it for the context's instruction set
    /// and the matrix is packed (a deferred one is packed first when the
    /// product has more rows than its direct kernel computes); `false`
    /// (nothing computed) otherwise.
    ///
    /// However few the rows: each row's results must not depend on how a
    /// prompt is split into passes (a prefix-cache hit runs the rest of a
    /// prompt as a short pass), and on a 135M model a different last bit
    /// of a prompt row was seen to change the greedy answer. Few rows cost
    /// more in bf16, which converts every weight (4096 × 4096 Q4_K, 2
    /// threads, Intel Xeon: 1 row at 31 GOP/s against 220 on the exact
    /// kernels, 16 rows 490 against 690; 32 rows 860 against 680, 512 rows
    /// 1,700 against 590). A deferred matrix not packed yet computes a
    /// short prompt on its exact direct kernel (packing it would cost more
    /// than the whole pass), so until the background packing is done a
    /// short prompt's rows are those of a decode step.
    #[cfg(target_arch = "x86_64")]
    pub(super) fn prompt_product(
        &self,
        ctx: &Compute,
        xs: &[f32],
        n: usize,
        out: &mut [f32],
        scratch: &mut MatScratch,
    ) -> bool {
        use super::schedule::{OutPtr, MIN_PARALLEL_WEIGHTS};
        use crate::cpu::act::grow;
        use crate::cpu::amx_bf16::{self, Product};
        use crate::cpu::Isa;

        if ctx.isa().isa() != Isa::Avx512Amx || !amx_bf16::available() {
            return false;
        }
        let Some((kernel, tiles)) = self.tiles(n > DIRECT_ACT_ROWS) else {
            return false;
        };
        let fmt = kernel.format();
        let Some(convert) = amx_bf16::converter(fmt.shape) else {
            return false;
        };
        let cols = self.cols;
        let len = crate::cpu::bf16::acts_len(n, cols);
        grow(&mut scratch.bf16, len, 0);
        let acts = &mut scratch.bf16[..len];
        // SAFETY: the CPU runs the bf16 product (`available`).
        unsafe { amx_bf16::round_acts(&xs[..n * cols], cols, acts) };
        let product = Product::new(convert, fmt, tiles, (self.rows, cols), acts, n);
        let pairs = product.pairs();
        let tasks = if self.rows * cols * n >= MIN_PARALLEL_WEIGHTS {
            (2 * ctx.threads()).min(pairs)
        } else {
            1
        };
        let per = pairs.div_ceil(tasks.max(1));
        let tasks = pairs.div_ceil(per);
        let dst = OutPtr(out.as_mut_ptr());
        let product = &product;
        let task = move |k: usize| {
            let dst = dst;
            // SAFETY: the CPU runs the product; `out` is `n × rows` (checked
            // by the callers), and task `k` alone writes the columns of its
            // pairs.
            unsafe { product.run(k * per..((k + 1) * per).min(pairs), dst.0) };
        };
        ctx.parallel_for(tasks, &task);
        true
    }

    /// No bf16 tile kernel on this target.
    #[cfg(not(target_arch = "x86_64"))]
    pub(super) fn prompt_product(
        &self,
        _ctx: &Compute,
        _xs: &[f32],
        _n: usize,
        _out: &mut [f32],
        _scratch: &mut MatScratch,
    ) -> bool {
        false
    }
}
