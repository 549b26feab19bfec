// The kernels that use these definitions are x86-64 only.
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
//! Products of prompt passes in bf16, on tile instructions that multiply
//! bf16 pairs into f32 sums (AMX-BF16, [`super::amx_bf16`]): what this
//! module defines is what those kernels compute, in portable Rust (the
//! reference the tests hold them to).
//!
//! The weights of a packed tile are dequantized to f32 exactly as
//! [`super::pack::dequantize_tile_row`] does (so as ggml does) and rounded
//! to bf16; the activations are rounded to bf16 too, and the products
//! summed in f32 over the whole row: no per-group scaling, so the sums
//! stay in the tile registers from the first weight to the last. Rounding
//! to bf16 loses at most 2⁻⁹ of each value — less than the 8-bit
//! activations of the exact kernels lose in every block (up to
//! `max|x| / 254` per value) — but the results are not those kernels':
//! only passes whose rows need not equal a one-row pass (a prompt's) use
//! them.
//!
//! The weight operand of one K-step of [`STEP`] weights and one tile of 16
//! rows is 16 *pair rows* of 64 bytes: pair row `p` holds, for each weight
//! row `n`, its weights `2p` and `2p + 1` of the step (the layout of
//! `tdpbf16ps`'s second operand), so the step's operand is one KiB and a
//! tile's K-steps follow one another.

#[cfg(test)]
use super::format::Format;
use super::format::TILE;

/// Weights per K-step (one tile product: 16 pair rows of 2).
pub(crate) const STEP: usize = 32;

/// bf16 values of one K-step of a 16-row tile's weight operand.
pub(crate) const STEP_WORDS: usize = STEP * TILE;

#[cfg(test)]
/// `x` rounded to bf16 as `vcvtne2ps2bf16` rounds it: to nearest, ties to
/// even; denormals become zeros of their sign, NaNs quiet NaNs.
pub(crate) fn round(x: f32) -> u16 {
    let b = x.to_bits();
    if b & 0x7f80_0000 == 0 {
        return (b >> 16) as u16 & 0x8000;
    }
    if x.is_nan() {
        return (b >> 16) as u16 | 0x0040;
    }
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

#[cfg(test)]
/// The f32 value of bf16 `v`.
pub(crate) fn value(v: u16) -> f32 {
    f32::from_bits(u32::from(v) << 16)
}

#[cfg(test)]
/// The weight operand (see the module docs) of `steps` K-steps from 16
/// rows of f32 weights (`rows[n][k]`, each at least `steps · STEP` long;
/// missing rows are zeros), into `dst` (`steps ·` [`STEP_WORDS`]).
pub(crate) fn arrange(rows: &[&[f32]], steps: usize, dst: &mut [u16]) {
    for (s, step) in dst.chunks_exact_mut(STEP_WORDS).take(steps).enumerate() {
        for (p, pair) in step.chunks_exact_mut(2 * TILE).enumerate() {
            for n in 0..TILE {
                for j in 0..2 {
                    let w = rows.get(n).map_or(0.0, |r| r[s * STEP + 2 * p + j]);
                    pair[2 * n + j] = round(w);
                }
            }
        }
    }
}

#[cfg(test)]
/// The weight operand of a whole packed tile of rows of `cols` weights
/// (`cols / STEP` K-steps): the reference for the SIMD conversions.
pub(crate) fn tile_operand(fmt: &Format, tile: &[u8], cols: usize) -> Vec<u16> {
    let rows: Vec<Vec<f32>> = (0..TILE)
        .map(|i| {
            let mut w = vec![0.0; cols];
            super::pack::dequantize_tile_row(fmt, tile, i, &mut w);
            w
        })
        .collect();
    let refs: Vec<&[f32]> = rows.iter().map(Vec::as_slice).collect();
    let mut dst = vec![0; cols / STEP * STEP_WORDS];
    arrange(&refs, cols / STEP, &mut dst);
    dst
}

/// Where the activation operand keeps value `k` of activation row `t`
/// (rows of `cols` values): rows in blocks of 16, each block's K-steps one
/// after the other, each 16 rows × [`STEP`] values — so that one tile load
/// reads 1 KiB in a row, and a block's loads run through memory in order.
pub(crate) fn act_index(t: usize, k: usize, cols: usize) -> usize {
    ((t / TILE) * (cols / STEP) + k / STEP) * STEP_WORDS + t % TILE * STEP + k % STEP
}

/// Values of the activation operand of `n` rows of `cols` (whole blocks
/// of 16 rows).
pub(crate) fn acts_len(n: usize, cols: usize) -> usize {
    n.next_multiple_of(TILE) * cols
}

#[cfg(test)]
/// `n × cols` activations (row-major) rounded to bf16 into the activation
/// operand `dst` ([`act_index`]; `cols` a multiple of [`STEP`]); the
/// values of rows past `n` are left as they were.
pub(crate) fn round_acts(xs: &[f32], cols: usize, dst: &mut [u16]) {
    for (t, row) in xs.chunks_exact(cols).enumerate() {
        for (k, &x) in row.iter().enumerate() {
            dst[act_index(t, k, cols)] = round(x);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_to_nearest_even_with_denormals_as_zeros() {
        assert_eq!(round(1.0), 0x3f80);
        assert_eq!(round(-2.5), 0xc020);
        // 1 + 2⁻⁸ is halfway between 1 and 1 + 2⁻⁷: to the even one (1).
        assert_eq!(round(1.0 + 1.0 / 256.0), 0x3f80);
        // 1 + 3·2⁻⁸ is halfway between 1 + 2⁻⁷ and 1 + 2⁻⁶: up, to even.
        assert_eq!(round(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(round(1.0 + 1.5 / 256.0), 0x3f81);
        assert_eq!(round(f32::from_bits(1)), 0);
        assert_eq!(round(-f32::from_bits(0x007f_ffff)), 0x8000);
        assert_eq!(round(f32::MAX), 0x7f80);
        assert_eq!(round(f32::INFINITY), 0x7f80);
        assert!(value(round(f32::NAN)).is_nan());
        for x in [0.1f32, -3.7, 1e-30, 6.5e4] {
            assert!((value(round(x)) - x).abs() <= x.abs() / 256.0);
        }
    }

    #[test]
    fn the_operand_holds_pairs_of_each_row() {
        let rows: Vec<Vec<f32>> = (0..3)
            .map(|n| (0..64).map(|k| (n * 100 + k) as f32).collect())
            .collect();
        let refs: Vec<&[f32]> = rows.iter().map(Vec::as_slice).collect();
        let mut dst = vec![7; 2 * STEP_WORDS];
        arrange(&refs, 2, &mut dst);
        // Step 1, pair row 3, weight row 2: weights 32 + 6 and 32 + 7.
        let at = STEP_WORDS + 3 * 2 * TILE + 2 * 2;
        assert_eq!(value(dst[at]), 238.0);
        assert_eq!(value(dst[at + 1]), 239.0);
        // Rows past the given ones are zeros.
        assert_eq!(dst[STEP_WORDS + 2 * 5], 0);
    }
}
