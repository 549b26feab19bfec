//! The element-wise and row-wise operations of the CPU backend, on f32 slices.

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
/// # Shapes
/// - `gate`, `up`: the same length.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
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

/// In-place softmax (the maximum is subtracted first).
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    if sum > 0.0 {
        let inv = 1.0 / sum;
        for v in x.iter_mut() {
            *v *= inv;
        }
    }
}

/// `y += a · x`, element-wise.
///
/// # Shapes
/// - `y`, `x`: the same length.
pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += a * x;
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
    fn softmax_sums_to_one_and_silu_matches() {
        let mut x = [1000.0, 1001.0, 999.0];
        softmax(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6 && x[1] > x[0] && x[0] > x[2]);
        let mut g = [0.0, 2.0, -1.0];
        silu_mul(&mut g, &[1.0, 0.5, 2.0]);
        assert_eq!(g[0], 0.0);
        assert!((g[1] - 2.0 / (1.0 + (-2.0f32).exp()) * 0.5).abs() < 1e-6);
        assert!((g[2] - (-1.0 / (1.0 + 1.0f32.exp())) * 2.0).abs() < 1e-6);
    }
}
