//! A branch-free `exp` for the softmax loops.
//!
//! `f32::exp` is a libm call per element; this one is a few multiply-adds, so
//! loops over logits vectorize. Softmax over a 131k vocabulary is otherwise
//! dominated by `exp`.

/// e^x for x ≤ 0, within 2 ulp of `f32::exp`; exactly 0 below -87 and for
/// NaN (a NaN logit then weighs nothing).
///
/// Cephes' `expf`: x = n ln2 + r with |r| ≤ ln2 / 2, a degree-6 polynomial for
/// e^r, and 2^n put into the exponent bits. Rounding to n uses the 1.5 × 2²³
/// trick instead of `round` so that SSE2 can vectorize it.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 × 2^23
    let clamped = x.max(-87.0);
    let shifted = clamped * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = clamped - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    // The low bits of `shifted` hold n + 0x40_0000; n ∈ [-126, 0].
    let n_int = (shifted.to_bits() as i32).wrapping_sub(0x4B40_0000);
    let scale = f32::from_bits(((n_int + 127) as u32) << 23);
    let y = er * scale;
    if x >= -87.0 {
        y
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_std_exp_within_two_ulp() {
        let mut worst = 0u32;
        let mut x = 0.0f32;
        while x > -87.0 {
            let (got, want) = (exp(x), x.exp());
            worst = worst.max(got.to_bits().abs_diff(want.to_bits()));
            x -= 0.000_37;
        }
        assert!(worst <= 2, "worst error {worst} ulp");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(f32::NAN), 0.0);
    }
}
