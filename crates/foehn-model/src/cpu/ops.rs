//! The element-wise and row-wise operations of the CPU backend, on f32 slices.

use foehn_kernels::vecops::exp;

/// RMSNorm of one row: `out = x / sqrt(mean(x²) + eps) · w`.
///
/// The mean of squares is accumulated in f64, as ggml does.
///
/// # Shapes
/// - `x`, `w`, `out`: `hidden`.
pub fn rmsnorm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let sum: f64 = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
    let mean = sum / x.len().max(1) as f64;
    let scale = (1.0 / (mean + f64::from(eps)).sqrt()) as f32;
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(w) {
        *o = v * scale * w;
    }
}

/// RMSNorm of each row of `x` into the same row of `out`.
///
/// # Shapes
/// - `x`, `out`: `n × hidden`; `w`: `hidden`.
pub fn rmsnorm_rows(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let hidden = w.len().max(1);
    for (x, o) in x.chunks_exact(hidden).zip(out.chunks_exact_mut(hidden)) {
        rmsnorm(x, w, eps, o);
    }
}

/// SwiGLU's gate: `gate = silu(gate) · up`, with `silu(g) = g / (1 + e^−g)`.
///
/// The sigmoid is computed from `e = e^−|g|` (the branch-free [`exp`], so the
/// loop vectorizes): `1 / (1 + e)` for `g ≥ 0`, `e / (1 + e)` below.
///
/// # Shapes
/// - `gate`, `up`: the same length.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        let e = exp(-g.abs());
        let sigmoid = if *g >= 0.0 { 1.0 } else { e } / (1.0 + e);
        *g = *g * sigmoid * u;
    }
}

/// `x += y`, element-wise.
///
/// # Shapes
/// - `x`, `y`: the same length.
pub fn add_assign(x: &mut [f32], y: &[f32]) {
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rmsnorm_normalizes_and_scales() {
        let x = [3.0, -4.0];
        let mut out = [0.0; 2];
        rmsnorm(&x, &[1.0, 2.0], 0.0, &mut out);
        let r = (12.5f32).sqrt();
        assert!((out[0] - 3.0 / r).abs() < 1e-6 && (out[1] + 8.0 / r).abs() < 1e-6);
    }

    #[test]
    fn silu_matches_the_formula() {
        let xs: Vec<f32> = (-400..=400).map(|i| i as f32 * 0.25).collect();
        let mut g = xs.clone();
        silu_mul(&mut g, &vec![0.5; xs.len()]);
        for (&got, &x) in g.iter().zip(&xs) {
            let want = f64::from(x) / (1.0 + (-f64::from(x)).exp()) * 0.5;
            assert!(
                (f64::from(got) - want).abs() <= 1e-6 * (1.0 + want.abs()),
                "{x}: {got} vs {want}"
            );
        }
        assert_eq!(g[400], 0.0);
    }
}
