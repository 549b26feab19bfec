//! How finely products quantize their activations ([`ActPrecision`]), the
//! two-pass product of [`ActPrecision::Q8x2`], and the scratch buffers a
//! product works in ([`MatScratch`]).

use super::schedule::{ACT_ROWS_PER_TASK, CHUNKS_PER_THREAD};
use super::storage::Storage;
use super::QMatrix;
use crate::cpu::act::{grow, QuantizedActs, ACT_BLOCK};
use crate::Compute;

/// How finely the SIMD kernels quantize the activations of a product.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum ActPrecision {
    /// 8-bit levels with a scale per 32 values, as llama.cpp: the fastest;
    /// each value is off by up to half a step (`max|x| / 254` of its block).
    #[default]
    Q8,
    /// The 8-bit levels and, quantized the same way, what they lost: about
    /// 15 bits per value, so products match f32 activations to ~1e-4
    /// relative. The kernels compute both as one product of twice the
    /// activation rows: up to twice the compute of [`Q8`](Self::Q8) for a
    /// long prompt, little more for a decode step, whose cost is reading
    /// the weights.
    Q8x2,
    /// [`Q8`](Self::Q8), except in the passes of a prompt
    /// ([`MatScratch::set_prompt`]) where the CPU has AMX-BF16 tiles (and
    /// the context's instruction set is
    /// [`Isa::Avx512Amx`](crate::Isa::Avx512Amx)): there the products
    /// compute in bf16 — the activations and the weights rounded to bf16,
    /// summed in f32 — 1.3–1.6× faster for a 7B pp512 (slower for a
    /// few rows, whose cost is converting every weight), as precise as
    /// `Q8` (bf16 loses at most 2⁻⁹ of each value), but not the same bits
    /// as a decode step. Each row's results do not depend on the pass's
    /// other rows, so a prompt gives the same results however it is split
    /// into passes — except while a matrix whose packing is deferred is
    /// not packed yet: a pass of up to 32 rows then computes it as `Q8`
    /// (packing it would cost more than the pass).
    PromptBf16,
}

/// Per-chunk f32 buffers for the products, allocated once so that a product
/// allocates nothing, and the precision of the products that use them.
#[derive(Debug, Clone, Default)]
pub struct MatScratch {
    pub(super) bufs: Vec<Vec<f32>>,
    pub(super) acts: QuantizedActs,
    precision: ActPrecision,
    /// [`ActPrecision::Q8x2`]: the activations and their remainders
    /// (`2n × cols`), and the product of both (`2n × rows`).
    pub(super) wide_xs: Vec<f32>,
    pub(super) wide_out: Vec<f32>,
    /// Products of a prompt pass ([`set_prompt`](Self::set_prompt)).
    prompt: bool,
    /// A prompt product's activations rounded to bf16 (x86-64's AMX-BF16).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(super) bf16: Vec<u16>,
}

impl MatScratch {
    /// Buffers for products with rows of up to `max_cols` weights on
    /// `threads` threads (a [`Compute`]'s), one per chunk of
    /// rows (a few chunks per thread).
    pub fn new(max_cols: usize, threads: usize) -> Self {
        let chunks = threads.max(1) * CHUNKS_PER_THREAD;
        let mut acts = QuantizedActs::default();
        // Room for one row of activations, so that a decode step allocates nothing.
        acts.reserve(1, max_cols.next_multiple_of(ACT_BLOCK));
        Self {
            bufs: (0..chunks).map(|_| vec![0.0; max_cols]).collect(),
            acts,
            ..Self::default()
        }
    }

    /// Sets how the products that use this scratch quantize activations;
    /// with [`ActPrecision::Q8x2`], makes room for the products of one
    /// activation row with matrices of up to `max_rows` rows, so that a
    /// decode step allocates nothing.
    pub fn set_precision(&mut self, precision: ActPrecision, max_rows: usize) {
        self.precision = precision;
        if precision == ActPrecision::Q8x2 {
            let cols = self.bufs.first().map_or(0, Vec::len);
            self.acts.reserve(2, cols.next_multiple_of(ACT_BLOCK));
            grow(&mut self.wide_xs, 2 * cols, 0.0);
            grow(&mut self.wide_out, 2 * max_rows, 0.0);
        }
    }

    /// How the products that use this scratch quantize activations.
    pub fn precision(&self) -> ActPrecision {
        self.precision
    }

    /// Marks the products that use this scratch as those of a prompt pass
    /// (or not): what [`ActPrecision::PromptBf16`] computes differently.
    pub fn set_prompt(&mut self, prompt: bool) {
        self.prompt = prompt;
    }

    /// Whether the products that use this scratch are a prompt pass's.
    pub fn prompt(&self) -> bool {
        self.prompt
    }

    /// Makes sure there are `chunks` buffers of at least `cols` floats; only
    /// allocates when they are too few or too short.
    pub(super) fn reserve(&mut self, chunks: usize, cols: usize) {
        if self.bufs.len() < chunks {
            self.bufs.resize_with(chunks, Vec::new);
        }
        for b in &mut self.bufs[..chunks] {
            if b.len() < cols {
                b.resize(cols, 0.0);
            }
        }
    }
}

/// [`ActPrecision::Q8x2`]: activation rows per product of twice as many
/// (the rows and their remainders), so that its buffers stay small (one
/// task's worth of activation rows, `schedule::ACT_ROWS_PER_TASK`).
const Q8X2_ACT_ROWS: usize = ACT_ROWS_PER_TASK / 2;

impl QMatrix {
    /// `out[t·rows + r] = W[r] · xs[t]` for `n` activation rows through the
    /// SIMD kernels, if the matrix was handed to them (lengths checked by
    /// the callers): the tile kernels, or a deferred matrix's direct kernel
    /// for up to `DIRECT_ACT_ROWS` rows, at the scratch's precision.
    /// `false` (nothing computed) for a matrix computed row by row in f32.
    pub(super) fn kernel_product(
        &self,
        ctx: &Compute,
        xs: &[f32],
        n: usize,
        out: &mut [f32],
        scratch: &mut MatScratch,
    ) -> bool {
        let fmt = match &self.storage {
            Storage::Packed { kernel, .. } => kernel.format(),
            Storage::Deferred(d) => d.kernel.format(),
            _ => return false,
        };
        if scratch.precision == ActPrecision::PromptBf16
            && scratch.prompt
            && self.prompt_product(ctx, xs, n, out, scratch)
        {
            return true;
        }
        if scratch.precision != ActPrecision::Q8x2 {
            self.q8_product(ctx, xs, n, n, out, scratch);
            return true;
        }
        // Q8x2: per run of activation rows, [xs; remainders] as one product
        // of twice the rows, summed in pairs.
        let (cols, rows) = (self.cols, self.rows);
        let mut wide_xs = std::mem::take(&mut scratch.wide_xs);
        let mut wide_out = std::mem::take(&mut scratch.wide_out);
        for (xs, out) in xs
            .chunks(Q8X2_ACT_ROWS * cols)
            .zip(out.chunks_mut(Q8X2_ACT_ROWS * rows))
        {
            let m = xs.len() / cols;
            grow(&mut wide_xs, 2 * m * cols, 0.0);
            grow(&mut wide_out, 2 * m * rows, 0.0);
            let (lead, rest) = wide_xs[..2 * m * cols].split_at_mut(m * cols);
            lead.copy_from_slice(xs);
            scratch.acts.quantize(ctx.vecops(), xs, cols, fmt);
            scratch.acts.remainder(xs, rest);
            let both = &mut wide_out[..2 * m * rows];
            self.q8_product(ctx, &wide_xs[..2 * m * cols], 2 * m, n, both, scratch);
            let (hi, lo) = both.split_at(m * rows);
            for ((o, &h), &l) in out.iter_mut().zip(hi).zip(lo) {
                *o = h + l;
            }
        }
        scratch.wide_xs = wide_xs;
        scratch.wide_out = wide_out;
        true
    }
}
