//! Scalar reference quantizers: f32 rows to the GGUF bytes of a ggml type,
//! with ggml's algorithms and operation order (`quantize_row_*_ref` in
//! ggml-quants.c, which is what `llama-quantize` runs without an importance
//! matrix), so a file quantized here has the same bytes as one quantized by
//! llama.cpp (checked against the tiny-mistral GGUF fixtures in
//! `tests/quantize.rs` at the repository root).
//!
//! Inputs must be finite and, for the block types and F16, no larger in
//! magnitude than f16's largest value (65504): block scales and minima are
//! stored as f16, so larger values could not be represented. Anything else is
//! refused with [`KernelError::NonFinite`] before a byte is written.

use half::{bf16, f16};
use rayon::prelude::*;

use super::types::{GgmlType, QK_K};
use super::KernelError;

/// `GROUP_MAX_EPS` of ggml-quants.c: below this a group counts as all zeros.
const GROUP_MAX_EPS: f32 = 1e-15;

/// Rows of at least this many elements are quantized in parallel by
/// [`quantize_matrix`] (one row is a unit of work).
const MIN_PARALLEL_ELEMENTS: usize = 1 << 14;

/// A scalar quantizer: `src` holds whole blocks, `dst` exactly their bytes.
pub(crate) type QuantizeFn = fn(&[f32], &mut [u8]);

/// The quantizer of `ty` (its row of the quant-type table), if there is one.
fn quantizer(ty: GgmlType) -> Option<QuantizeFn> {
    ty.traits().quantize
}

/// Row quantizers of the block types, as the quant-type table names them.
pub(crate) mod rows {
    macro_rules! block_rows {
        ($($block:ident),* $(,)?) => {$(
            #[doc = concat!("`", stringify!($block), "` over every block of a row.")]
            pub(crate) fn $block(src: &[f32], dst: &mut [u8]) {
                super::each(src, dst, super::$block)
            }
        )*};
    }
    block_rows!(q4_0, q4_1, q5_0, q5_1, q8_0, q8_1, q2_k, q3_k, q4_k, q5_k, q6_k, q8_k,);
    pub(crate) use super::{bf16_row as bf16, f16_row as f16, f32_row as f32};
}

impl GgmlType {
    /// Whether [`quantize_row`] supports this type.
    pub fn can_quantize(self) -> bool {
        quantizer(self).is_some()
    }
}

/// Largest magnitude accepted for `ty` (see the module docs).
fn max_input(ty: GgmlType) -> f32 {
    match ty {
        GgmlType::F32 | GgmlType::BF16 => f32::MAX,
        _ => f16::MAX.to_f32(),
    }
}

/// Quantizes one row of `src.len()` elements to type `ty`, writing the row's
/// GGUF bytes (ggml's block layout, little-endian) to `dst`.
///
/// # Shapes
/// - `src`: a whole number of `ty.block_size()` elements.
/// - `dst`: `ty.row_bytes(src.len())` bytes.
///
/// # Errors
/// [`KernelError::Unsupported`] when `ty` has no quantizer (see
/// [`GgmlType::can_quantize`]); [`KernelError::BadLength`] when the lengths do
/// not fit the type's block layout; [`KernelError::NonFinite`] when an input
/// is NaN, infinite or too large for the type (see the module docs). Nothing
/// is written on error.
pub fn quantize_row(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), KernelError> {
    let Some(quantize) = quantizer(ty) else {
        return Err(KernelError::Unsupported {
            op: "quantize",
            ty: ty.name(),
        });
    };
    let Some(expected) = ty.row_bytes(src.len()) else {
        return Err(KernelError::BadLength {
            ty: ty.name(),
            reason: format!(
                "a row of {} elements is not a whole number of {}-element blocks",
                src.len(),
                ty.block_size()
            ),
        });
    };
    if dst.len() != expected {
        return Err(KernelError::BadLength {
            ty: ty.name(),
            reason: format!(
                "{} bytes for a row of {} elements, expected {expected}",
                dst.len(),
                src.len()
            ),
        });
    }
    check_values(ty, src, 0)?;
    quantize(src, dst);
    Ok(())
}

/// Refuses NaN, infinities and values beyond [`max_input`]; `row` names the
/// row in the error.
fn check_values(ty: GgmlType, src: &[f32], row: usize) -> Result<(), KernelError> {
    let limit = max_input(ty);
    // One cheap vectorizable pass; the position is searched only on failure.
    let ok = src.iter().fold(true, |ok, v| ok & (v.abs() <= limit));
    if ok {
        return Ok(());
    }
    let (index, value) = src
        .iter()
        .copied()
        .enumerate()
        .find(|(_, v)| v.is_nan() || v.abs() > limit)
        .unwrap_or((0, f32::NAN));
    Err(KernelError::NonFinite {
        ty: ty.name(),
        reason: format!(
            "element {index} of row {row} is {value}; {} takes finite values up to {limit:e} in magnitude",
            ty.name()
        ),
    })
}

/// Quantizes a row-major `rows × cols` f32 matrix to type `ty`: the GGUF
/// bytes of the matrix, row after row. Rows are quantized in parallel on
/// rayon's current pool.
///
/// # Shapes
/// - `src`: `rows × cols`, row-major.
/// - returns: `rows × ty.row_bytes(cols)` bytes.
///
/// # Errors
/// As [`quantize_row`]; also [`KernelError::BadLength`] when
/// `src.len() != rows × cols`.
pub fn quantize_matrix(
    ty: GgmlType,
    rows: usize,
    cols: usize,
    src: &[f32],
) -> Result<Vec<u8>, KernelError> {
    let Some(quantize) = quantizer(ty) else {
        return Err(KernelError::Unsupported {
            op: "quantize",
            ty: ty.name(),
        });
    };
    let row_bytes = ty.row_bytes(cols).ok_or_else(|| KernelError::BadLength {
        ty: ty.name(),
        reason: format!(
            "rows of {cols} elements are not a whole number of {}-element blocks",
            ty.block_size()
        ),
    })?;
    let bad = |reason: String| KernelError::BadLength {
        ty: ty.name(),
        reason,
    };
    let elements = rows
        .checked_mul(cols)
        .ok_or_else(|| bad(format!("{rows} × {cols} elements overflow")))?;
    if src.len() != elements {
        return Err(bad(format!(
            "{} values for a {rows} × {cols} matrix",
            src.len()
        )));
    }
    let total = rows
        .checked_mul(row_bytes)
        .ok_or_else(|| bad(format!("{rows} rows of {row_bytes} bytes overflow")))?;
    let mut out = vec![0u8; total];
    if rows == 0 || cols == 0 {
        return Ok(out);
    }
    let work = |(r, (x, y)): (usize, (&[f32], &mut [u8]))| -> Result<(), KernelError> {
        check_values(ty, x, r)?;
        quantize(x, y);
        Ok(())
    };
    if elements < MIN_PARALLEL_ELEMENTS {
        src.chunks_exact(cols)
            .zip(out.chunks_exact_mut(row_bytes))
            .enumerate()
            .try_for_each(work)?;
    } else {
        src.par_chunks_exact(cols)
            .zip(out.par_chunks_exact_mut(row_bytes))
            .enumerate()
            .try_for_each(work)?;
    }
    Ok(out)
}

/// Calls `f` on each `K`-element block of `src` and its `N` bytes in `dst`.
fn each<const K: usize, const N: usize>(
    src: &[f32],
    dst: &mut [u8],
    f: fn(&[f32; K], &mut [u8; N]),
) {
    for (x, y) in src.chunks_exact(K).zip(dst.chunks_exact_mut(N)) {
        // Both conversions always succeed: chunks_exact yields exactly K and N.
        if let (Ok(x), Ok(y)) = (x.try_into(), y.try_into()) {
            f(x, y);
        }
    }
}

pub(crate) fn f32_row(src: &[f32], dst: &mut [u8]) {
    for (x, y) in src.iter().zip(dst.chunks_exact_mut(4)) {
        y.copy_from_slice(&x.to_le_bytes());
    }
}

pub(crate) fn f16_row(src: &[f32], dst: &mut [u8]) {
    for (x, y) in src.iter().zip(dst.chunks_exact_mut(2)) {
        y.copy_from_slice(&f16::from_f32(*x).to_bits().to_le_bytes());
    }
}

pub(crate) fn bf16_row(src: &[f32], dst: &mut [u8]) {
    for (x, y) in src.iter().zip(dst.chunks_exact_mut(2)) {
        y.copy_from_slice(&bf16::from_f32(*x).to_bits().to_le_bytes());
    }
}

/// ggml's `nearest_int`: round to nearest, ties to even, through the
/// 1.5·2²³ trick (exact for |x| ≤ 4194303; the callers stay far inside).
#[inline]
fn nearest_int(fval: f32) -> i32 {
    let i = (fval + 12_582_912.0).to_bits() as i32;
    (i & 0x007f_ffff) - 0x0040_0000
}

/// Writes `v` as a little-endian f16 (`GGML_FP32_TO_FP16`: round to nearest even).
#[inline]
fn put_f16(dst: &mut [u8], v: f32) {
    dst.copy_from_slice(&f16::from_f32(v).to_bits().to_le_bytes());
}

/// `GGML_FP16_TO_FP32(GGML_FP32_TO_FP16(v))`: `v` as stored in a block.
#[inline]
fn f16_round(v: f32) -> f32 {
    f16::from_f32(v).to_f32()
}

/// The element of largest magnitude (the first on ties) and that magnitude.
#[inline]
fn signed_absmax(x: &[f32]) -> (f32, f32) {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    (amax, max)
}

/// Minimum and maximum, starting from (`f32::MAX`, `-f32::MAX`) as ggml does.
#[inline]
fn min_max(x: &[f32]) -> (f32, f32) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

/// `quantize_row_q4_0_ref`: `d = max / -8`, `q = min(15, trunc(x/d + 8.5))`.
fn q4_0(x: &[f32; 32], y: &mut [u8; 18]) {
    let (_, max) = signed_absmax(x);
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(&mut y[0..2], d);
    for j in 0..16 {
        let x0 = x[j] * id;
        let x1 = x[16 + j] * id;
        let xi0 = ((x0 + 8.5) as i8).min(15) as u8;
        let xi1 = ((x1 + 8.5) as i8).min(15) as u8;
        y[2 + j] = xi0 | (xi1 << 4);
    }
}

/// `quantize_row_q4_1_ref`: `d = (max - min) / 15`, `m = min`.
fn q4_1(x: &[f32; 32], y: &mut [u8; 20]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 15.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(&mut y[0..2], d);
    put_f16(&mut y[2..4], min);
    for j in 0..16 {
        let x0 = (x[j] - min) * id;
        let x1 = (x[16 + j] - min) * id;
        let xi0 = ((x0 + 0.5) as i8).min(15) as u8;
        let xi1 = ((x1 + 0.5) as i8).min(15) as u8;
        y[4 + j] = xi0 | (xi1 << 4);
    }
}

/// `quantize_row_q5_0_ref`: `d = max / -16`, 5-bit `q`, fifth bits in `qh`.
fn q5_0(x: &[f32; 32], y: &mut [u8; 22]) {
    let (_, max) = signed_absmax(x);
    let d = max / -16.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(&mut y[0..2], d);
    let mut qh = 0u32;
    for j in 0..16 {
        let x0 = x[j] * id;
        let x1 = x[16 + j] * id;
        let xi0 = ((x0 + 16.5) as i8).min(31) as u8;
        let xi1 = ((x1 + 16.5) as i8).min(31) as u8;
        y[6 + j] = (xi0 & 0x0f) | ((xi1 & 0x0f) << 4);
        qh |= u32::from((xi0 & 0x10) >> 4) << j;
        qh |= u32::from((xi1 & 0x10) >> 4) << (j + 16);
    }
    y[2..6].copy_from_slice(&qh.to_le_bytes());
}

/// `quantize_row_q5_1_ref`: `d = (max - min) / 31`, `m = min`, 5-bit `q`.
fn q5_1(x: &[f32; 32], y: &mut [u8; 24]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 31.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(&mut y[0..2], d);
    put_f16(&mut y[2..4], min);
    let mut qh = 0u32;
    for j in 0..16 {
        let x0 = (x[j] - min) * id;
        let x1 = (x[16 + j] - min) * id;
        let xi0 = (x0 + 0.5) as u8;
        let xi1 = (x1 + 0.5) as u8;
        y[8 + j] = (xi0 & 0x0f) | ((xi1 & 0x0f) << 4);
        qh |= u32::from((xi0 & 0x10) >> 4) << j;
        qh |= u32::from((xi1 & 0x10) >> 4) << (j + 16);
    }
    y[4..8].copy_from_slice(&qh.to_le_bytes());
}

/// Q8_0/Q8_1 quants: `d = amax / 127`, `q = round(x / d)` (half away from zero).
fn q8_quants(x: &[f32; 32], qs: &mut [u8]) -> (f32, i32) {
    let amax = x
        .iter()
        .fold(0.0f32, |a, v| if a > v.abs() { a } else { v.abs() });
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut sum = 0;
    for (q, &v) in qs.iter_mut().zip(x) {
        let q8 = (v * id).round() as i8;
        sum += i32::from(q8);
        *q = q8 as u8;
    }
    (d, sum)
}

/// `quantize_row_q8_0_ref`.
fn q8_0(x: &[f32; 32], y: &mut [u8; 34]) {
    let (d, _) = q8_quants(x, &mut y[2..]);
    put_f16(&mut y[0..2], d);
}

/// `quantize_row_q8_1_ref`: Q8_0 plus `s = d · Σq`.
fn q8_1(x: &[f32; 32], y: &mut [u8; 36]) {
    let (d, sum) = q8_quants(x, &mut y[4..]);
    put_f16(&mut y[0..2], d);
    put_f16(&mut y[2..4], sum as f32 * d);
}

/// `quantize_row_q8_K_ref`: `d = max / -127` (f32), `q = nearest(x / d)`, and
/// the sums of the quants per 16.
fn q8_k(x: &[f32; QK_K], y: &mut [u8; 292]) {
    y.fill(0);
    let (amax, max) = signed_absmax(x);
    if amax == 0.0 {
        return;
    }
    let iscale = -127.0 / max;
    let mut qs = [0i8; QK_K];
    for (q, &v) in qs.iter_mut().zip(x) {
        *q = nearest_int(iscale * v).min(127) as i8;
    }
    y[0..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
    for (b, &q) in y[4..4 + QK_K].iter_mut().zip(&qs) {
        *b = q as u8;
    }
    for (j, g) in qs.chunks_exact(16).enumerate() {
        let sum: i32 = g.iter().map(|&q| i32::from(q)).sum();
        let o = 4 + QK_K + 2 * j;
        y[o..o + 2].copy_from_slice(&(sum as i16).to_le_bytes());
    }
}

/// ggml's `make_qx_quants` without importance weights: symmetric quants in
/// `[0, 2·nmax)` (stored biased by `nmax`) and their scale, refined by a
/// weighted least-squares search over 18 nearby scales (`rmse_type` 1:
/// weights `x²`).
fn make_qx_quants(nmax: i32, x: &[f32], l_out: &mut [i8], rmse_type: i32) -> f32 {
    let (amax, max) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        l_out.fill(0);
        return 0.0;
    }
    let nmax_f = nmax as f32;
    let mut iscale = -nmax_f / max;
    let clamp = |l: i32| l.clamp(-nmax, nmax - 1);
    if rmse_type == 0 {
        for (o, &v) in l_out.iter_mut().zip(x) {
            *o = (nmax + clamp(nearest_int(iscale * v))) as i8;
        }
        return 1.0 / iscale;
    }
    let (rmse_type, return_early) = if rmse_type < 0 {
        (-rmse_type, true)
    } else {
        (rmse_type, false)
    };
    let weight = |v: f32| match rmse_type {
        1 => v * v,
        2 => 1.0,
        3 => v.abs(),
        _ => v.abs().sqrt(),
    };
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for (o, &v) in l_out.iter_mut().zip(x) {
        let l = clamp(nearest_int(iscale * v));
        *o = (l + nmax) as i8;
        let w = weight(v);
        let lf = l as f32;
        sumlx += w * v * lf;
        suml2 += w * lf * lf;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    if return_early {
        return if suml2 > 0.0 {
            0.5 * (scale + 1.0 / iscale)
        } else {
            1.0 / iscale
        };
    }
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax_f + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for &v in x {
            let l = clamp(nearest_int(iscale * v)) as f32;
            let w = weight(v);
            sumlx += w * v * l;
            suml2 += w * l * l;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (o, &v) in l_out.iter_mut().zip(x) {
                *o = (nmax + clamp(nearest_int(iscale * v))) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// ggml's `make_q3_quants` with `do_rmse`: symmetric quants in `[0, 2·nmax)`
/// (biased by `nmax`), improved one element at a time for five rounds.
fn make_q3_quants(nmax: i32, x: &[f32], l_out: &mut [i8]) -> f32 {
    let (amax, max) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        l_out.fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let clamp = |l: i32| l.clamp(-nmax, nmax - 1);
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for (o, &v) in l_out.iter_mut().zip(x) {
        let l = clamp(nearest_int(iscale * v));
        *o = l as i8;
        let w = v * v;
        sumlx += w * v * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for (o, &v) in l_out.iter_mut().zip(x) {
            let w = v * v;
            let li = i32::from(*o);
            let mut slx = sumlx - w * v * li as f32;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * li as f32 * li as f32;
                let new_l = clamp(nearest_int(v * sl2 / slx));
                if new_l != li {
                    slx += w * v * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        *o = new_l as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    for o in l_out.iter_mut() {
        *o += nmax as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// Parameters of ggml's `make_qkx2_quants` search.
struct Qkx2 {
    nmax: i32,
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
}

/// ggml's `make_qkx2_quants`: asymmetric quants `L` in `[0, nmax]` with
/// `x ≈ scale·L − min`, chosen by a weighted search over `nstep + 1` scales.
/// Returns `(scale, min)` (the min as stored: positive means subtracted).
fn make_qkx2_quants(p: &Qkx2, x: &[f32], weights: &[f32], l_out: &mut [u8]) -> (f32, f32) {
    let n = x.len();
    let mut laux = [0u8; 32];
    let laux = &mut laux[..n];
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l_out.fill(0);
        return (0.0, -min);
    }
    let nmax_f = p.nmax as f32;
    let mut iscale = nmax_f / (max - min);
    let mut scale = 1.0 / iscale;
    let err = |diff: f32| if p.use_mad { diff.abs() } else { diff * diff };
    let mut best_error = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, p.nmax);
        l_out[i] = l as u8;
        let diff = scale * l as f32 + min - x[i];
        best_error += weights[i] * err(diff);
    }
    if p.nstep < 1 {
        return (scale, -min);
    }
    for is in 0..=p.nstep {
        iscale = (p.rmin + p.rdelta * is as f32 + nmax_f) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, p.nmax);
            laux[i] = l as u8;
            let (w, lf) = (weights[i], l as f32);
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let big_d = sum_w * sum_l2 - sum_l * sum_l;
        if big_d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / big_d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / big_d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                let diff = this_scale * f32::from(laux[i]) + this_min - x[i];
                cur_error += weights[i] * err(diff);
            }
            if cur_error < best_error {
                l_out.copy_from_slice(laux);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Packs 2-bit quants as Q2_K/Q3_K do: byte `l` of each 32-byte run holds the
/// quants `l`, `l+32`, `l+64`, `l+96` of the run's 128 elements.
fn pack_2bit(l: &[u8; QK_K], qs: &mut [u8]) {
    for (j, q) in (0..QK_K).step_by(128).zip(qs.chunks_exact_mut(32)) {
        for (i, b) in q.iter_mut().enumerate() {
            *b = l[j + i] | (l[j + i + 32] << 2) | (l[j + i + 64] << 4) | (l[j + i + 96] << 6);
        }
    }
}

/// `quantize_row_q2_K_ref`: 16 groups of 16, 4-bit scales and mins.
fn q2_k(x: &[f32; QK_K], y: &mut [u8; 84]) {
    const Q4SCALE: f32 = 15.0;
    let p = Qkx2 {
        nmax: 3,
        rmin: -0.5,
        rdelta: 0.1,
        nstep: 15,
        use_mad: true,
    };
    let mut l = [0u8; QK_K];
    let mut scales = [0.0f32; QK_K / 16];
    let mut mins = [0.0f32; QK_K / 16];
    let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
    for j in 0..QK_K / 16 {
        let xs = &x[16 * j..16 * j + 16];
        let mut weights = [0.0f32; 16];
        for (w, v) in weights.iter_mut().zip(xs) {
            *w = v.abs();
        }
        let (s, m) = make_qkx2_quants(&p, xs, &weights, &mut l[16 * j..16 * j + 16]);
        scales[j] = s;
        mins[j] = m;
        if s > max_scale {
            max_scale = s;
        }
        if m > max_min {
            max_min = m;
        }
    }
    let (sc, rest) = y.split_at_mut(16);
    let (qs, dd) = rest.split_at_mut(64);
    if max_scale > 0.0 {
        let iscale = Q4SCALE / max_scale;
        for (b, &s) in sc.iter_mut().zip(&scales) {
            *b = nearest_int(iscale * s) as u8;
        }
        put_f16(&mut dd[0..2], max_scale / Q4SCALE);
    } else {
        sc.fill(0);
        put_f16(&mut dd[0..2], 0.0);
    }
    if max_min > 0.0 {
        let iscale = Q4SCALE / max_min;
        for (b, &m) in sc.iter_mut().zip(&mins) {
            *b |= (nearest_int(iscale * m) << 4) as u8;
        }
        put_f16(&mut dd[2..4], max_min / Q4SCALE);
    } else {
        put_f16(&mut dd[2..4], 0.0);
    }
    let stored = |m: f32| if m > 0.0 { f16_round(m / Q4SCALE) } else { 0.0 };
    let (d_all, dmin_all) = (stored(max_scale), stored(max_min));
    for j in 0..QK_K / 16 {
        let d = d_all * f32::from(sc[j] & 0x0f);
        if d == 0.0 {
            continue;
        }
        let dm = dmin_all * f32::from(sc[j] >> 4);
        for ii in 0..16 {
            let q = nearest_int((x[16 * j + ii] + dm) / d).clamp(0, 3);
            l[16 * j + ii] = q as u8;
        }
    }
    pack_2bit(&l, qs);
}

/// `quantize_row_q3_K_ref`: 16 groups of 16, 6-bit signed scales.
fn q3_k(x: &[f32; QK_K], y: &mut [u8; 110]) {
    let mut l = [0i8; QK_K];
    let mut scales = [0.0f32; QK_K / 16];
    let (mut max_scale, mut amax) = (0.0f32, 0.0f32);
    for j in 0..QK_K / 16 {
        scales[j] = make_q3_quants(4, &x[16 * j..16 * j + 16], &mut l[16 * j..16 * j + 16]);
        let scale = scales[j].abs();
        if scale > amax {
            amax = scale;
            max_scale = scales[j];
        }
    }
    let (hmask, rest) = y.split_at_mut(32);
    let (qs, rest) = rest.split_at_mut(64);
    let (sc, dd) = rest.split_at_mut(12);
    sc.fill(0);
    let d_all = if max_scale != 0.0 {
        let iscale = -32.0 / max_scale;
        for (j, &s) in scales.iter().enumerate() {
            let lv = (nearest_int(iscale * s).clamp(-32, 31) + 32) as u8;
            if j < 8 {
                sc[j] = lv & 0x0f;
            } else {
                sc[j - 8] |= (lv & 0x0f) << 4;
            }
            sc[j % 4 + 8] |= (lv >> 4) << (2 * (j / 4));
        }
        put_f16(dd, 1.0 / iscale);
        f16_round(1.0 / iscale)
    } else {
        put_f16(dd, 0.0);
        0.0
    };
    for j in 0..QK_K / 16 {
        let low = if j < 8 { sc[j] & 0x0f } else { sc[j - 8] >> 4 };
        let high = (sc[8 + j % 4] >> (2 * (j / 4))) & 3;
        let s = i32::from(low | (high << 4)) - 32;
        let d = d_all * s as f32;
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            let q = nearest_int(x[16 * j + ii] / d).clamp(-4, 3);
            l[16 * j + ii] = (q + 4) as i8;
        }
    }
    hmask.fill(0);
    let mut lu = [0u8; QK_K];
    for (j, (u, &q)) in lu.iter_mut().zip(&l).enumerate() {
        let mut q = q as u8;
        if q > 3 {
            hmask[j % (QK_K / 8)] |= 1 << (j / (QK_K / 8));
            q -= 4;
        }
        *u = q;
    }
    pack_2bit(&lu, qs);
}

/// Q4_K/Q5_K: per group of 32 the `make_qkx2_quants` scale and min, then
/// 6-bit scales and mins packed in 12 bytes, `d` and `dmin` in `dd`, and the
/// quants requantized with the stored scales in `l`.
fn k_scales_mins(x: &[f32; QK_K], p: &Qkx2, sc: &mut [u8], dd: &mut [u8], l: &mut [u8; QK_K]) {
    let mut scales = [0.0f32; QK_K / 32];
    let mut mins = [0.0f32; QK_K / 32];
    let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
    for j in 0..QK_K / 32 {
        let xs = &x[32 * j..32 * j + 32];
        let sum_x2 = xs.iter().fold(0.0f32, |s, v| s + v * v);
        let av_x = (sum_x2 / 32.0).sqrt();
        let mut weights = [0.0f32; 32];
        for (w, v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        let (s, m) = make_qkx2_quants(p, xs, &weights, &mut l[32 * j..32 * j + 32]);
        scales[j] = s;
        mins[j] = m;
        if s > max_scale {
            max_scale = s;
        }
        if m > max_min {
            max_min = m;
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    sc.fill(0);
    for j in 0..QK_K / 32 {
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            sc[j] = ls;
            sc[j + 4] = lm;
        } else {
            sc[j + 4] = (ls & 0x0f) | ((lm & 0x0f) << 4);
            sc[j - 4] |= (ls >> 4) << 6;
            sc[j] |= (lm >> 4) << 6;
        }
    }
    put_f16(&mut dd[0..2], max_scale / 63.0);
    put_f16(&mut dd[2..4], max_min / 63.0);
    let d_all = f16_round(max_scale / 63.0);
    let dmin_all = f16_round(max_min / 63.0);
    for j in 0..QK_K / 32 {
        let (s, m) = scale_min_k4(j, sc);
        let d = d_all * f32::from(s);
        if d == 0.0 {
            continue;
        }
        let dm = dmin_all * f32::from(m);
        for ii in 0..32 {
            let q = nearest_int((x[32 * j + ii] + dm) / d).clamp(0, p.nmax);
            l[32 * j + ii] = q as u8;
        }
    }
}

/// ggml's `get_scale_min_k4`: group `j`'s 6-bit scale and min.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// `quantize_row_q4_K_ref`: 8 groups of 32, 4-bit quants.
fn q4_k(x: &[f32; QK_K], y: &mut [u8; 144]) {
    let p = Qkx2 {
        nmax: 15,
        rmin: -1.0,
        rdelta: 0.1,
        nstep: 20,
        use_mad: false,
    };
    let mut l = [0u8; QK_K];
    let (dd, rest) = y.split_at_mut(4);
    let (sc, qs) = rest.split_at_mut(12);
    k_scales_mins(x, &p, sc, dd, &mut l);
    for (j, q) in (0..QK_K).step_by(64).zip(qs.chunks_exact_mut(32)) {
        for (i, b) in q.iter_mut().enumerate() {
            *b = l[j + i] | (l[j + i + 32] << 4);
        }
    }
}

/// `quantize_row_q5_K_ref`: 8 groups of 32, 5-bit quants.
fn q5_k(x: &[f32; QK_K], y: &mut [u8; 176]) {
    let p = Qkx2 {
        nmax: 31,
        rmin: -0.5,
        rdelta: 0.1,
        nstep: 15,
        use_mad: false,
    };
    let mut l = [0u8; QK_K];
    let (dd, rest) = y.split_at_mut(4);
    let (sc, rest) = rest.split_at_mut(12);
    let (qh, ql) = rest.split_at_mut(32);
    k_scales_mins(x, &p, sc, dd, &mut l);
    qh.fill(0);
    let (mut m1, mut m2) = (1u8, 2u8);
    for (n, q) in (0..QK_K).step_by(64).zip(ql.chunks_exact_mut(32)) {
        for j in 0..32 {
            let mut l1 = l[n + j];
            if l1 > 15 {
                l1 -= 16;
                qh[j] |= m1;
            }
            let mut l2 = l[n + j + 32];
            if l2 > 15 {
                l2 -= 16;
                qh[j] |= m2;
            }
            q[j] = l1 | (l2 << 4);
        }
        m1 = m1.wrapping_shl(2);
        m2 = m2.wrapping_shl(2);
    }
}

/// `quantize_row_q6_K_ref`: 16 groups of 16, 8-bit scales, 6-bit quants.
fn q6_k(x: &[f32; QK_K], y: &mut [u8; 210]) {
    let mut l = [0i8; QK_K];
    let mut scales = [0.0f32; QK_K / 16];
    let (mut max_scale, mut max_abs_scale) = (0.0f32, 0.0f32);
    for ib in 0..QK_K / 16 {
        let scale = make_qx_quants(
            32,
            &x[16 * ib..16 * ib + 16],
            &mut l[16 * ib..16 * ib + 16],
            1,
        );
        scales[ib] = scale;
        if scale.abs() > max_abs_scale {
            max_abs_scale = scale.abs();
            max_scale = scale;
        }
    }
    y.fill(0);
    if max_abs_scale < GROUP_MAX_EPS {
        return;
    }
    let (ql, rest) = y.split_at_mut(128);
    let (qh, rest) = rest.split_at_mut(64);
    let (sc, dd) = rest.split_at_mut(16);
    let iscale = -128.0 / max_scale;
    put_f16(dd, 1.0 / iscale);
    let d_all = f16_round(1.0 / iscale);
    for (b, &s) in sc.iter_mut().zip(&scales) {
        *b = nearest_int(iscale * s).min(127) as i8 as u8;
    }
    for j in 0..QK_K / 16 {
        let d = d_all * f32::from(sc[j] as i8);
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            let q = nearest_int(x[16 * j + ii] / d).clamp(-32, 31);
            l[16 * j + ii] = (q + 32) as i8;
        }
    }
    let lu = l.map(|v| v as u8);
    for ((j, ql), qh) in (0..QK_K)
        .step_by(128)
        .zip(ql.chunks_exact_mut(64))
        .zip(qh.chunks_exact_mut(32))
    {
        for i in 0..32 {
            let q1 = lu[j + i] & 0x0f;
            let q2 = lu[j + i + 32] & 0x0f;
            let q3 = lu[j + i + 64] & 0x0f;
            let q4 = lu[j + i + 96] & 0x0f;
            ql[i] = q1 | (q3 << 4);
            ql[i + 32] = q2 | (q4 << 4);
            qh[i] = (lu[j + i] >> 4)
                | ((lu[j + i + 32] >> 4) << 2)
                | ((lu[j + i + 64] >> 4) << 4)
                | ((lu[j + i + 96] >> 4) << 6);
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::dequantize_row;

    /// Every type with a quantizer that a model may store.
    const WEIGHT_TYPES: [GgmlType; 13] = {
        use GgmlType::*;
        [
            F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K,
        ]
    };

    /// Largest accepted normalized RMS error (‖x − deq(q(x))‖ / ‖x‖) per type
    /// on Gaussian data; measured values (seeded data, see
    /// `round_trip_error_is_bounded`) sit below these with some margin.
    fn max_nrmse(ty: GgmlType) -> f64 {
        use GgmlType::*;
        match ty {
            F32 => 0.0,
            F16 => 5e-4,
            BF16 => 4e-3,
            Q8_0 | Q8_1 => 0.008,
            // One scale per 256: a larger block maximum, a coarser step.
            Q8_K => 0.012,
            Q6_K => 0.025,
            Q5_0 | Q5_1 | Q5_K => 0.05,
            Q4_0 | Q4_1 | Q4_K => 0.1,
            Q3_K => 0.18,
            Q2_K => 0.35,
            _ => 0.0,
        }
    }

    fn gaussian(rng: &mut impl Rng, n: usize, std: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                // Box–Muller: enough for test data.
                let u1: f32 = rng.gen_range(f32::EPSILON..1.0);
                let u2: f32 = rng.gen();
                std * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
            })
            .collect()
    }

    fn nrmse(x: &[f32], y: &[f32]) -> f64 {
        let (mut e, mut s) = (0.0f64, 0.0f64);
        for (&a, &b) in x.iter().zip(y) {
            e += f64::from(a - b).powi(2);
            s += f64::from(a).powi(2);
        }
        (e / s.max(f64::MIN_POSITIVE)).sqrt()
    }

    fn round_trip(ty: GgmlType, rows: usize, cols: usize, x: &[f32]) -> Vec<f32> {
        let q = quantize_matrix(ty, rows, cols, x).unwrap();
        let rb = ty.row_bytes(cols).unwrap();
        assert_eq!(q.len(), rows * rb);
        let mut y = vec![f32::NAN; x.len()];
        for (src, dst) in q.chunks_exact(rb).zip(y.chunks_exact_mut(cols)) {
            dequantize_row(ty, src, dst).unwrap();
        }
        y
    }

    #[test]
    fn nearest_int_rounds_half_to_even() {
        for (x, want) in [
            (0.5, 0),
            (1.5, 2),
            (2.5, 2),
            (-0.5, 0),
            (-1.5, -2),
            (3.49, 3),
            (-7.7, -8),
        ] {
            assert_eq!(nearest_int(x), want, "{x}");
        }
        for i in -1000..1000 {
            let x = i as f32 * 0.37;
            assert_eq!(nearest_int(x), x.round_ties_even() as i32, "{x}");
        }
    }

    #[test]
    fn round_trip_error_is_bounded() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        // Odd row counts, several scales (weights, embeddings, tiny values).
        for (rows, std) in [(7usize, 0.02f32), (3, 1.0), (5, 1e-3)] {
            let cols = 512;
            let x = gaussian(&mut rng, rows * cols, std);
            for ty in WEIGHT_TYPES {
                let y = round_trip(ty, rows, cols, &x);
                let err = nrmse(&x, &y);
                eprintln!("{ty:>5} std {std:e}: nrmse {err:.5}");
                assert!(
                    err <= max_nrmse(ty),
                    "{ty} std {std}: nrmse {err} > {}",
                    max_nrmse(ty)
                );
            }
        }
    }

    #[test]
    fn activation_types_round_trip() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(8);
        let x = gaussian(&mut rng, 3 * 256, 1.0);
        for ty in [GgmlType::Q8_1, GgmlType::Q8_K] {
            let y = round_trip(ty, 3, 256, &x);
            let err = nrmse(&x, &y);
            assert!(err <= max_nrmse(ty), "{ty}: {err}");
        }
        // Q8_1's s field is d · Σq and Q8_K's bsums are the sums per 16.
        let mut b = [0u8; 36];
        quantize_row(GgmlType::Q8_1, &x[..32], &mut b).unwrap();
        // ggml multiplies by the unrounded f32 scale.
        let d = x[..32].iter().fold(0.0f32, |a, v| a.max(v.abs())) / 127.0;
        let sum: i32 = b[4..].iter().map(|&q| i32::from(q as i8)).sum();
        assert_eq!(
            u16::from_le_bytes([b[2], b[3]]),
            f16::from_f32(sum as f32 * d).to_bits()
        );
        let mut k = [0u8; 292];
        quantize_row(GgmlType::Q8_K, &x[..256], &mut k).unwrap();
        for j in 0..16 {
            let sum: i32 = k[4 + 16 * j..4 + 16 * (j + 1)]
                .iter()
                .map(|&q| i32::from(q as i8))
                .sum();
            let o = 4 + 256 + 2 * j;
            assert_eq!(i32::from(i16::from_le_bytes([k[o], k[o + 1]])), sum);
        }
    }

    #[test]
    fn symmetric_types_keep_the_extreme_value_exactly_representable() {
        // The largest-magnitude element sets the scale: it comes back to
        // within one f16 rounding of the scale.
        let mut x = vec![0.01f32; 32];
        x[5] = -3.0;
        for ty in [GgmlType::Q4_0, GgmlType::Q5_0, GgmlType::Q8_0] {
            let y = round_trip(ty, 1, 32, &x);
            assert!((y[5] + 3.0).abs() < 3e-3, "{ty}: {}", y[5]);
        }
    }

    #[test]
    fn zero_and_constant_blocks() {
        for ty in WEIGHT_TYPES {
            let n = ty.block_size().max(32) * 2;
            let zeros = vec![0.0f32; n];
            let y = round_trip(ty, 1, n, &zeros);
            assert!(y.iter().all(|&v| v == 0.0), "{ty}: zeros give {y:?}");
            for c in [0.25f32, -1.5] {
                let x = vec![c; n];
                let y = round_trip(ty, 1, n, &x);
                let err = nrmse(&x, &y);
                // Q2_K/Q3_K/Q6_K store no minimum: a constant is still within
                // the quant grid, so every type gets it back closely.
                assert!(err < 0.05, "{ty} constant {c}: nrmse {err}, first {}", y[0]);
            }
        }
    }

    #[test]
    fn lengths_are_checked() {
        let x = vec![0.5f32; 64];
        let mut dst = vec![0u8; 2 * 18];
        assert!(quantize_row(GgmlType::Q4_0, &x, &mut dst).is_ok());
        // Wrong destination length.
        let err = quantize_row(GgmlType::Q4_0, &x, &mut dst[..35]).unwrap_err();
        assert!(matches!(err, KernelError::BadLength { .. }), "{err}");
        // Not a whole number of blocks.
        let err = quantize_row(GgmlType::Q4_K, &x, &mut [0u8; 144]).unwrap_err();
        assert!(matches!(err, KernelError::BadLength { .. }), "{err}");
        let err = quantize_matrix(GgmlType::Q8_0, 2, 48, &[0.0; 96]).unwrap_err();
        assert!(matches!(err, KernelError::BadLength { .. }), "{err}");
        // src not rows × cols.
        let err = quantize_matrix(GgmlType::Q8_0, 3, 32, &x).unwrap_err();
        assert!(matches!(err, KernelError::BadLength { .. }), "{err}");
        // No quantizer.
        let err = quantize_row(GgmlType::IQ2_XS, &[0.0; 256], &mut [0u8; 74]).unwrap_err();
        assert!(matches!(err, KernelError::Unsupported { .. }), "{err}");
        assert!(!GgmlType::IQ2_XS.can_quantize());
        assert!(GgmlType::Q6_K.can_quantize());
        // Empty matrices are fine.
        assert_eq!(
            quantize_matrix(GgmlType::Q4_0, 0, 64, &[]).unwrap(),
            Vec::<u8>::new()
        );
    }

    #[test]
    fn non_finite_and_huge_values_are_refused_without_writing() {
        for ty in WEIGHT_TYPES {
            let n = ty.block_size().max(32);
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                let mut x = vec![0.1f32; 3 * n];
                x[n + 3] = bad;
                let err = quantize_matrix(ty, 3, n, &x).unwrap_err();
                assert!(matches!(err, KernelError::NonFinite { .. }), "{ty}: {err}");
                assert!(err.to_string().contains("element 3 of row 1"), "{err}");
                let mut dst = vec![0xaau8; ty.row_bytes(n).unwrap()];
                assert!(quantize_row(ty, &x[n..2 * n], &mut dst).is_err());
                assert!(dst.iter().all(|&b| b == 0xaa), "{ty}: wrote on error");
            }
            let mut x = vec![0.1f32; n];
            x[0] = 1e6;
            let r = quantize_matrix(ty, 1, n, &x);
            if matches!(ty, GgmlType::F32 | GgmlType::BF16) {
                assert!(r.is_ok(), "{ty}");
            } else {
                assert!(matches!(r, Err(KernelError::NonFinite { .. })), "{ty}");
            }
        }
    }

    #[test]
    fn parallel_and_serial_paths_agree() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let (rows, cols) = (67, 256); // over MIN_PARALLEL_ELEMENTS
        let x = gaussian(&mut rng, rows * cols, 0.1);
        for ty in [GgmlType::Q4_K, GgmlType::Q8_0, GgmlType::Q6_K] {
            let all = quantize_matrix(ty, rows, cols, &x).unwrap();
            let rb = ty.row_bytes(cols).unwrap();
            for r in [0, 33, 66] {
                let mut one = vec![0u8; rb];
                quantize_row(ty, &x[r * cols..(r + 1) * cols], &mut one).unwrap();
                assert_eq!(&all[r * rb..(r + 1) * rb], &one[..], "{ty} row {r}");
            }
        }
    }
}
