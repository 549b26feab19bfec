//! f32 vector operations for the non-matmul parts of a forward pass
//! (attention scores and weighted sums), compiled for AVX-512 and AVX2 as well
//! as baseline x86-64 and chosen at run time: the portable code is written so
//! that the compiler vectorizes it at whatever width the target allows.

/// Independent accumulators of [`dot`]: enough to hide the FMA latency at
/// 16 lanes.
const ACC: usize = 32;

#[inline(always)]
fn dot_body(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; ACC];
    let (ca, cb) = (a.chunks_exact(ACC), b.chunks_exact(ACC));
    let (ta, tb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..ACC {
            acc[i] += x[i] * y[i];
        }
    }
    let mut tail = 0.0;
    for (x, y) in ta.iter().zip(tb) {
        tail += x * y;
    }
    let mut w = ACC;
    while w > 1 {
        w /= 2;
        for i in 0..w {
            acc[i] += acc[i + w];
        }
    }
    acc[0] + tail
}

#[inline(always)]
fn axpy_body(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

#[inline(always)]
fn scale_body(y: &mut [f32], a: f32) {
    for y in y.iter_mut() {
        *y *= a;
    }
}

macro_rules! dispatch {
    ($(#[$m:meta])* pub fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? => $body:ident) => {
        $(#[$m])*
        pub fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,fma")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? { $body($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? { $body($($arg),*) }
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has the features the function is compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: as above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}

dispatch! {
    /// Dot product of two f32 slices (over the shorter length).
    pub fn dot(a: &[f32], b: &[f32]) -> f32 => dot_body
}

dispatch! {
    /// `y += a · x`, element-wise (over the shorter length).
    pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) => axpy_body
}

dispatch! {
    /// `y *= a`, element-wise.
    pub fn scale(y: &mut [f32], a: f32) => scale_body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_match_plain_loops_on_odd_lengths() {
        for n in [0, 1, 7, 31, 32, 33, 64, 100, 129] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let want: f64 = a
                .iter()
                .zip(&b)
                .map(|(x, y)| f64::from(*x) * f64::from(*y))
                .sum();
            assert!(
                (f64::from(dot(&a, &b)) - want).abs() <= 1e-5 * (1.0 + want.abs()),
                "{n}"
            );
            let mut y = b.clone();
            axpy(&mut y, 0.5, &a);
            for i in 0..n {
                assert!((y[i] - (b[i] + 0.5 * a[i])).abs() <= 1e-6);
            }
            scale(&mut y, 2.0);
            for i in 0..n {
                assert!((y[i] - 2.0 * (b[i] + 0.5 * a[i])).abs() <= 1e-5);
            }
        }
    }
}
