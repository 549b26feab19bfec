//! Scalar reference dequantizers, one per type, with ggml's formulas and
//! operation order (`dequantize_row_*` in ggml-quants.c), so results agree
//! with ggml and gguf-py to the last bit or so.
//!
//! Each function takes `src` holding exactly the blocks of `dst`'s elements;
//! [`dequantize_row`] checks the lengths before dispatching through the
//! quant-type table. With mismatched lengths they stop at the shorter buffer,
//! they never panic.

use half::f16;

use super::blocks::*;
use super::types::{GgmlType, QK_K};
use super::KernelError;

/// The 16 non-linear levels of IQ4_NL and IQ4_XS (`kvalues_iq4nl`).
pub const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// Dequantizes one row of `dst.len()` elements of type `ty` from `src` to f32.
///
/// # Shapes
/// - `src`: `ty.row_bytes(dst.len())` bytes, the row's blocks as stored in GGUF.
/// - `dst`: a whole number of `ty.block_size()` elements.
///
/// # Errors
/// [`KernelError::Unsupported`] when `ty` has no dequantizer
/// (see [`GgmlType::can_dequantize`]); [`KernelError::BadLength`] when the
/// lengths do not fit the type's block layout.
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), KernelError> {
    let Some(dequantize) = ty.traits().dequantize else {
        return Err(KernelError::Unsupported {
            op: "dequantize",
            ty: ty.name(),
        });
    };
    let Some(expected) = ty.row_bytes(dst.len()) else {
        return Err(KernelError::BadLength {
            ty: ty.name(),
            reason: format!(
                "a row of {} elements is not a whole number of {}-element blocks",
                dst.len(),
                ty.block_size()
            ),
        });
    };
    if src.len() != expected {
        return Err(KernelError::BadLength {
            ty: ty.name(),
            reason: format!(
                "{} bytes for a row of {} elements, expected {expected}",
                src.len(),
                dst.len()
            ),
        });
    }
    dequantize(src, dst);
    Ok(())
}

/// Calls `f` on each `N`-byte block of `src` and its `K` outputs in `dst`.
fn each_block<const N: usize, const K: usize>(
    src: &[u8],
    dst: &mut [f32],
    mut f: impl FnMut(&[u8; N], &mut [f32; K]),
) {
    for (b, y) in src.chunks_exact(N).zip(dst.chunks_exact_mut(K)) {
        // Both conversions always succeed: chunks_exact yields exactly N and K.
        if let (Ok(b), Ok(y)) = (b.try_into(), y.try_into()) {
            f(b, y);
        }
    }
}

pub(crate) fn f32(src: &[u8], dst: &mut [f32]) {
    each_block(src, dst, |b: &[u8; 4], y: &mut [f32; 1]| {
        y[0] = f32::from_le_bytes(*b)
    });
}

pub(crate) fn f16(src: &[u8], dst: &mut [f32]) {
    each_block(src, dst, |b: &[u8; 2], y: &mut [f32; 1]| {
        y[0] = f16::from_bits(u16::from_le_bytes(*b)).to_f32();
    });
}

pub(crate) fn bf16(src: &[u8], dst: &mut [f32]) {
    each_block(src, dst, |b: &[u8; 2], y: &mut [f32; 1]| {
        y[0] = f32::from_bits(u32::from(u16::from_le_bytes(*b)) << 16);
    });
}

pub(crate) fn q4_0(src: &[u8], dst: &mut [f32]) {
    each_block(src, dst, |b, y: &mut [f32; 32]| {
        let b = BlockQ4_0::from_le_bytes(b);
        let d = b.d.to_f32();
        for (j, &q) in b.qs.iter().enumerate() {
            let x0 = i32::from(q & 0x0f) - 8;
            let x1 = i32::from(q >> 4) - 8;
            y[j] = x0 as f32 * d;
            y[j + 16] = x1 as f32 * d;
        }
    });
}

pub(crate) fn q4_1(src: &[u8], dst: &mut [f32]) {
    each_block(src, dst, |b, y: &mut [f32; 32]| {
        let b = BlockQ4_1::from_le_bytes(b);
        let (d, m) = (b.d.to_f32(), b.m.to_f32());
        for (j, &q) in b.qs.iter().enumerate() {
            y[j] = f32::from(q & 0x0f) * d + m;
            y[j + 16] = f32::from(q >> 4) * d + m;
        }
    });
}

pub(crate) fn q5_0(src: &[u8], dst: &mut [f32]) {
    each_block(src, dst, |b, y: &mut [f32; 32]| {
        let b = BlockQ5_0::from_le_bytes(b);
        let d = b.d.to_f32();
        let qh = u32::from_le_bytes(b.qh);
        for (j, &q) in b.qs.iter().enumerate() {
            let xh0 = ((qh >> j) << 4) & 0x10;
            let xh1 = (qh >> (j + 12)) & 0x10;
            let x0 = (u32::from(q & 0x0f) | xh0) as i32 - 16;
            let x1 = (u32::from(q >> 4) | xh1) as i32 - 16;
            y[j] = x0 as f32 * d;
            y[j + 16] = x1 as f32 * d;
        }
    });
}

pub(crate) fn q5_1(src: &[u8], dst: &mut [f32]) {
    each_block(src, dst, |b, y: &mut [f32; 32]| {
        let b = BlockQ5_1::from_le_bytes(b);
        let (d, m) = (b.d.to_f32(), b.m.to_f32());
        let qh = u32::from_le_bytes(b.qh);
        for (j, &q) in b.qs.iter().enumerate() {
            let xh0 = ((qh >> j) << 4) & 0x10;
            let xh1 = (qh >> (j + 12)) & 0x10;
            let x0 = u32::from(q & 0x0f) | xh0;
            let x1 = u32::from(q >> 4) | xh1;
            y[j] = x0 as f32 * d + m;
            y[j + 16] = x1 as f32 * d + m;
        }
    });
}

pub(crate) fn q8_0(src: &[u8], dst: &mut [f32]) {
    each_block(src, dst, |b, y: &mut [f32; 32]| {
        let b = BlockQ8_0::from_le_bytes(b);
        let d = b.d.to_f32();
        for (y, &q) in y.iter_mut().zip(&b.qs) {
            *y = f32::from(q) * d;
        }
    });
}

pub(crate) fn q8_1(src: &[u8], dst: &mut [f32]) {
    each_block(src, dst, |b, y: &mut [f32; 32]| {
        let b = BlockQ8_1::from_le_bytes(b);
        let d = b.d.to_f32();
        for (y, &q) in y.iter_mut().zip(&b.qs) {
            *y = f32::from(q) * d;
        }
    });
}

pub(crate) fn q2_k(src: &[u8], dst: &mut [f32]) {
    each_block(src, dst, |b, y: &mut [f32; QK_K]| {
        let b = BlockQ2_K::from_le_bytes(b);
        let (d, min) = (b.d.to_f32(), b.dmin.to_f32());
        // Group g (16 weights) of half n: bits 2j..2j+2 of q[32n + 16(g%2) + l],
        // with j = (g/2) % 4; output order is n, j, g%2, l.
        let mut out = y.chunks_exact_mut(16);
        let mut is = 0;
        for q in b.qs.chunks_exact(32) {
            for shift in [0, 2, 4, 6] {
                for half in q.chunks_exact(16) {
                    let sc = b.scales[is];
                    is += 1;
                    let dl = d * f32::from(sc & 0x0f);
                    let ml = min * f32::from(sc >> 4);
                    if let Some(y) = out.next() {
                        for (y, &q) in y.iter_mut().zip(half) {
                            *y = dl * f32::from((q >> shift) & 3) - ml;
                        }
                    }
                }
            }
        }
    });
}

/// Unpacks Q3_K's sixteen 6-bit scales (stored biased by 32).
///
/// Bytes 0..8 hold the low nibbles (scales 0..8 in the low halves, 8..16 in
/// the high halves); bytes 8..12 hold the high 2-bit pairs, scale `i`'s in
/// bits `2(i/4)..` of byte `8 + i%4`.
pub(crate) fn q3_k_scales(packed: &[u8; 12]) -> [i8; 16] {
    std::array::from_fn(|i| {
        let low = if i < 8 {
            packed[i] & 0x0f
        } else {
            packed[i - 8] >> 4
        };
        let high = (packed[8 + i % 4] >> (2 * (i / 4))) & 3;
        ((low | (high << 4)) as i8) - 32
    })
}

pub(crate) fn q3_k(src: &[u8], dst: &mut [f32]) {
    each_block(src, dst, |b, y: &mut [f32; QK_K]| {
        let b = BlockQ3_K::from_le_bytes(b);
        let d_all = b.d.to_f32();
        let scales = q3_k_scales(&b.scales);
        let mut out = y.chunks_exact_mut(16);
        let mut is = 0;
        let mut m: u8 = 1;
        for q in b.qs.chunks_exact(32) {
            for shift in [0, 2, 4, 6] {
                for (q, hm) in q.chunks_exact(16).zip(b.hmask.chunks_exact(16)) {
                    let dl = d_all * f32::from(scales[is]);
                    is += 1;
                    if let Some(y) = out.next() {
                        for ((y, &q), &h) in y.iter_mut().zip(q).zip(hm) {
                            let v = ((q >> shift) & 3) as i8 - if h & m != 0 { 0 } else { 4 };
                            *y = dl * f32::from(v);
                        }
                    }
                }
                m <<= 1;
            }
        }
    });
}

/// Scale and min `j` (of 8) of a Q4_K/Q5_K block (`get_scale_min_k4`): 6 bits
/// each; 0..4 in the low 6 bits of bytes 0..4 / 4..8, 4..8 split into a
/// nibble of bytes 8..12 and the top 2 bits of bytes 0..4 / 4..8.
pub(crate) fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

pub(crate) fn q4_k(src: &[u8], dst: &mut [f32]) {
    each_block(src, dst, |b, y: &mut [f32; QK_K]| {
        let b = BlockQ4_K::from_le_bytes(b);
        let (d, min) = (b.d.to_f32(), b.dmin.to_f32());
        for (g, (q, y)) in
            b.qs.chunks_exact(32)
                .zip(y.chunks_exact_mut(64))
                .enumerate()
        {
            let (sc1, m1) = scale_min_k4(2 * g, &b.scales);
            let (sc2, m2) = scale_min_k4(2 * g + 1, &b.scales);
            let (d1, m1) = (d * f32::from(sc1), min * f32::from(m1));
            let (d2, m2) = (d * f32::from(sc2), min * f32::from(m2));
            let (lo, hi) = y.split_at_mut(32);
            for ((lo, hi), &q) in lo.iter_mut().zip(hi).zip(q) {
                *lo = d1 * f32::from(q & 0x0f) - m1;
                *hi = d2 * f32::from(q >> 4) - m2;
            }
        }
    });
}

pub(crate) fn q5_k(src: &[u8], dst: &mut [f32]) {
    each_block(src, dst, |b, y: &mut [f32; QK_K]| {
        let b = BlockQ5_K::from_le_bytes(b);
        let (d, min) = (b.d.to_f32(), b.dmin.to_f32());
        for (g, (ql, y)) in
            b.qs.chunks_exact(32)
                .zip(y.chunks_exact_mut(64))
                .enumerate()
        {
            let (sc1, m1) = scale_min_k4(2 * g, &b.scales);
            let (sc2, m2) = scale_min_k4(2 * g + 1, &b.scales);
            let (d1, m1) = (d * f32::from(sc1), min * f32::from(m1));
            let (d2, m2) = (d * f32::from(sc2), min * f32::from(m2));
            let (u1, u2) = (1u8 << (2 * g), 2u8 << (2 * g));
            let (lo, hi) = y.split_at_mut(32);
            for (((lo, hi), &ql), &qh) in lo.iter_mut().zip(hi).zip(ql).zip(&b.qh) {
                let h1 = if qh & u1 != 0 { 16 } else { 0 };
                let h2 = if qh & u2 != 0 { 16 } else { 0 };
                *lo = d1 * f32::from((ql & 0x0f) + h1) - m1;
                *hi = d2 * f32::from((ql >> 4) + h2) - m2;
            }
        }
    });
}

pub(crate) fn q6_k(src: &[u8], dst: &mut [f32]) {
    each_block(src, dst, |b, y: &mut [f32; QK_K]| {
        let b = BlockQ6_K::from_le_bytes(b);
        let d = b.d.to_f32();
        // Each half of 128 weights uses 64 bytes of ql, 32 of qh, 8 scales.
        for (n, y) in y.chunks_exact_mut(128).enumerate() {
            let ql = &b.ql[64 * n..64 * n + 64];
            let qh = &b.qh[32 * n..32 * n + 32];
            let sc = &b.scales[8 * n..8 * n + 8];
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i8 - 32;
                let q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
                y[l] = d * f32::from(sc[is]) * f32::from(q1);
                y[l + 32] = d * f32::from(sc[is + 2]) * f32::from(q2);
                y[l + 64] = d * f32::from(sc[is + 4]) * f32::from(q3);
                y[l + 96] = d * f32::from(sc[is + 6]) * f32::from(q4);
            }
        }
    });
}

pub(crate) fn q8_k(src: &[u8], dst: &mut [f32]) {
    each_block(src, dst, |b, y: &mut [f32; QK_K]| {
        let b = BlockQ8_K::from_le_bytes(b);
        for (y, &q) in y.iter_mut().zip(&b.qs) {
            *y = b.d * f32::from(q);
        }
    });
}

pub(crate) fn iq4_nl(src: &[u8], dst: &mut [f32]) {
    each_block(src, dst, |b, y: &mut [f32; 32]| {
        let b = BlockIQ4_NL::from_le_bytes(b);
        let d = b.d.to_f32();
        for (j, &q) in b.qs.iter().enumerate() {
            y[j] = d * f32::from(KVALUES_IQ4NL[usize::from(q & 0x0f)]);
            y[j + 16] = d * f32::from(KVALUES_IQ4NL[usize::from(q >> 4)]);
        }
    });
}

pub(crate) fn iq4_xs(src: &[u8], dst: &mut [f32]) {
    each_block(src, dst, |b, y: &mut [f32; QK_K]| {
        let b = BlockIQ4_XS::from_le_bytes(b);
        let d = b.d.to_f32();
        for (ib, (qs, y)) in
            b.qs.chunks_exact(16)
                .zip(y.chunks_exact_mut(32))
                .enumerate()
        {
            let low = (b.scales_l[ib / 2] >> (4 * (ib % 2))) & 0x0f;
            let high = ((b.scales_h >> (2 * ib)) & 3) as u8;
            let ls = i32::from(low | (high << 4));
            let dl = d * (ls - 32) as f32;
            for (j, &q) in qs.iter().enumerate() {
                y[j] = dl * f32::from(KVALUES_IQ4NL[usize::from(q & 0x0f)]);
                y[j + 16] = dl * f32::from(KVALUES_IQ4NL[usize::from(q >> 4)]);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    //! Blocks are packed here with the layouts of ggml's `quantize_row_*_ref`
    //! (written from the encoder side, independently of the decoders above),
    //! then decoded and compared with `scale * level` computed directly.

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn h(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_bits().to_le_bytes()
    }

    fn decode(ty: GgmlType, src: &[u8]) -> Vec<f32> {
        let n = src.len() / ty.type_size() * ty.block_size();
        let mut y = vec![f32::NAN; n];
        dequantize_row(ty, src, &mut y).unwrap();
        y
    }

    /// Packs 32 4-bit values as ggml does: `qs[j] = v[j] | v[j + 16] << 4`.
    fn pack_nibbles(v: &[u8]) -> Vec<u8> {
        (0..16).map(|j| v[j] | (v[j + 16] << 4)).collect()
    }

    /// Packs 256 2-bit values in the Q2_K/Q3_K `qs` layout.
    fn pack_2bit(v: &[u8]) -> Vec<u8> {
        let mut qs = vec![0u8; 64];
        for j in (0..256).step_by(128) {
            for l in 0..32 {
                qs[j / 4 + l] =
                    v[j + l] | (v[j + l + 32] << 2) | (v[j + l + 64] << 4) | (v[j + l + 96] << 6);
            }
        }
        qs
    }

    /// Packs eight 6-bit scales and mins in the Q4_K/Q5_K layout.
    fn pack_scales_k4(ls: &[u8; 8], lm: &[u8; 8]) -> [u8; 12] {
        let mut s = [0u8; 12];
        for j in 0..8 {
            if j < 4 {
                s[j] = ls[j];
                s[j + 4] = lm[j];
            } else {
                s[j + 4] = (ls[j] & 0x0f) | ((lm[j] & 0x0f) << 4);
                s[j - 4] |= (ls[j] >> 4) << 6;
                s[j] |= (lm[j] >> 4) << 6;
            }
        }
        s
    }

    fn levels(rng: &mut StdRng, n: usize, max: u8) -> Vec<u8> {
        (0..n).map(|_| rng.gen_range(0..=max)).collect()
    }

    fn assert_close(got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-6 * w.abs().max(1e-30),
                "element {i}: got {g}, want {w}"
            );
        }
    }

    #[test]
    fn f32_f16_bf16_convert_exactly() {
        let src: Vec<u8> = [1.0f32, -2.5, 3.0e-8]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert_eq!(decode(GgmlType::F32, &src), [1.0, -2.5, 3.0e-8]);

        let src: Vec<u8> = [1.0f32, -0.333, 65504.0]
            .iter()
            .flat_map(|&x| h(x))
            .collect();
        let want: Vec<f32> = [1.0f32, -0.333, 65504.0]
            .iter()
            .map(|&x| f16::from_f32(x).to_f32())
            .collect();
        assert_eq!(decode(GgmlType::F16, &src), want);

        // bf16 is the top half of an f32: 0x3fc0 = 1.5, 0xc220 = -40.0.
        assert_eq!(
            decode(GgmlType::BF16, &[0xc0, 0x3f, 0x20, 0xc2]),
            [1.5, -40.0]
        );
    }

    #[test]
    fn q4_0_known_block() {
        // d = 0.5, weight j has level j % 16: y = 0.5 * (level - 8).
        let v: Vec<u8> = (0..32).map(|j| j % 16).collect();
        let mut src = h(0.5).to_vec();
        src.extend(pack_nibbles(&v));
        let want: Vec<f32> = v.iter().map(|&q| 0.5 * (f32::from(q) - 8.0)).collect();
        assert_eq!(decode(GgmlType::Q4_0, &src), want);
        assert_eq!(want[0], -4.0);
        assert_eq!(want[15], 3.5);
    }

    #[test]
    fn q4_1_known_block() {
        let v: Vec<u8> = (0..32).map(|j| 15 - j % 16).collect();
        let mut src = h(0.25).to_vec();
        src.extend(h(-1.0));
        src.extend(pack_nibbles(&v));
        let want: Vec<f32> = v.iter().map(|&q| 0.25 * f32::from(q) - 1.0).collect();
        assert_eq!(decode(GgmlType::Q4_1, &src), want);
    }

    #[test]
    fn q5_0_and_q5_1_use_the_fifth_bit() {
        let mut rng = StdRng::seed_from_u64(5);
        let v = levels(&mut rng, 32, 31);
        let low: Vec<u8> = v.iter().map(|q| q & 0x0f).collect();
        let qh: u32 = v
            .iter()
            .enumerate()
            .map(|(j, &q)| u32::from(q >> 4) << j)
            .sum();

        let mut src = h(0.125).to_vec();
        src.extend(qh.to_le_bytes());
        src.extend(pack_nibbles(&low));
        let want: Vec<f32> = v.iter().map(|&q| 0.125 * (f32::from(q) - 16.0)).collect();
        assert_eq!(decode(GgmlType::Q5_0, &src), want);

        let mut src = h(0.125).to_vec();
        src.extend(h(2.0));
        src.extend(qh.to_le_bytes());
        src.extend(pack_nibbles(&low));
        let want: Vec<f32> = v.iter().map(|&q| 0.125 * f32::from(q) + 2.0).collect();
        assert_eq!(decode(GgmlType::Q5_1, &src), want);
    }

    #[test]
    fn q8_0_and_q8_1_are_d_times_q() {
        let q: Vec<i8> = (0..32).map(|j| (j * 8 - 128) as i8).collect();
        let mut src = h(-0.5).to_vec();
        src.extend(q.iter().map(|&x| x as u8));
        let want: Vec<f32> = q.iter().map(|&x| -0.5 * f32::from(x)).collect();
        assert_eq!(decode(GgmlType::Q8_0, &src), want);

        // Q8_1 carries s = d * sum(q) after d; the dequantizer ignores it.
        let mut src = h(-0.5).to_vec();
        src.extend(h(1234.0));
        src.extend(q.iter().map(|&x| x as u8));
        assert_eq!(decode(GgmlType::Q8_1, &src), want);
    }

    #[test]
    fn q2_k_random_block() {
        let mut rng = StdRng::seed_from_u64(2);
        let (d, dmin) = (0.5f32, 0.25f32);
        let l = levels(&mut rng, 256, 3);
        let sc = levels(&mut rng, 16, 15);
        let m = levels(&mut rng, 16, 15);
        let mut src: Vec<u8> = (0..16).map(|j| sc[j] | (m[j] << 4)).collect();
        src.extend(pack_2bit(&l));
        src.extend(h(d));
        src.extend(h(dmin));
        let want: Vec<f32> = (0..256)
            .map(|i| d * f32::from(sc[i / 16]) * f32::from(l[i]) - dmin * f32::from(m[i / 16]))
            .collect();
        assert_close(&decode(GgmlType::Q2_K, &src), &want);
    }

    #[test]
    fn q3_k_random_block() {
        let mut rng = StdRng::seed_from_u64(3);
        let d = 0.5f32;
        let l = levels(&mut rng, 256, 7); // stored level, value l - 4
        let ls = levels(&mut rng, 16, 63); // stored scale, value ls - 32
        let mut hmask = [0u8; 32];
        let low: Vec<u8> = l.iter().map(|q| q & 3).collect();
        for (j, &q) in l.iter().enumerate() {
            if q > 3 {
                hmask[j % 32] |= 1 << (j / 32);
            }
        }
        let mut scales = [0u8; 12];
        for (j, &s) in ls.iter().enumerate() {
            if j < 8 {
                scales[j] = s & 0x0f;
            } else {
                scales[j - 8] |= (s & 0x0f) << 4;
            }
            scales[j % 4 + 8] |= (s >> 4) << (2 * (j / 4));
        }
        let mut src = hmask.to_vec();
        src.extend(pack_2bit(&low));
        src.extend(scales);
        src.extend(h(d));
        let want: Vec<f32> = (0..256)
            .map(|i| d * (f32::from(ls[i / 16]) - 32.0) * (f32::from(l[i]) - 4.0))
            .collect();
        assert_close(&decode(GgmlType::Q3_K, &src), &want);
    }

    #[test]
    fn q3_k_scales_unpack_extremes() {
        // All scales 63 (max) and all 0 (min), then a one-hot high pair.
        assert_eq!(q3_k_scales(&[0xff; 12]), [31; 16]);
        assert_eq!(q3_k_scales(&[0; 12]), [-32; 16]);
        let mut p = [0u8; 12];
        p[9] = 0b0100_0000; // high pair of scale 13 = 1 << 4
        let mut want = [-32i8; 16];
        want[13] = 16 - 32;
        assert_eq!(q3_k_scales(&p), want);
    }

    fn k4_block(rng: &mut StdRng, max_level: u8) -> (Vec<u8>, [u8; 8], [u8; 8]) {
        let l = levels(rng, 256, max_level);
        let ls: [u8; 8] = std::array::from_fn(|_| rng.gen_range(0..64));
        let lm: [u8; 8] = std::array::from_fn(|_| rng.gen_range(0..64));
        (l, ls, lm)
    }

    #[test]
    fn scale_min_k4_round_trips_all_sixty_four_values() {
        for v in 0..64u8 {
            let ls = [v, 63 - v, v, 0, v, 63 - v, 0, v];
            let lm = [63 - v, v, 0, v, 63 - v, v, v, 0];
            let packed = pack_scales_k4(&ls, &lm);
            for j in 0..8 {
                assert_eq!(scale_min_k4(j, &packed), (ls[j], lm[j]), "j = {j}, v = {v}");
            }
        }
    }

    #[test]
    fn q4_k_random_block() {
        let mut rng = StdRng::seed_from_u64(4);
        let (d, dmin) = (0.5f32, 0.125f32);
        let (l, ls, lm) = k4_block(&mut rng, 15);
        let mut src = h(d).to_vec();
        src.extend(h(dmin));
        src.extend(pack_scales_k4(&ls, &lm));
        for j in (0..256).step_by(64) {
            src.extend((0..32).map(|i| l[j + i] | (l[j + i + 32] << 4)));
        }
        let want: Vec<f32> = (0..256)
            .map(|i| d * f32::from(ls[i / 32]) * f32::from(l[i]) - dmin * f32::from(lm[i / 32]))
            .collect();
        assert_close(&decode(GgmlType::Q4_K, &src), &want);
    }

    #[test]
    fn q5_k_random_block() {
        let mut rng = StdRng::seed_from_u64(55);
        let (d, dmin) = (0.25f32, 0.5f32);
        let (l, ls, lm) = k4_block(&mut rng, 31);
        let mut qh = [0u8; 32];
        let mut qs = Vec::new();
        for (g, j) in (0..256).step_by(64).enumerate() {
            for i in 0..32 {
                qh[i] |= (l[j + i] >> 4) << (2 * g);
                qh[i] |= (l[j + i + 32] >> 4) << (2 * g + 1);
                qs.push((l[j + i] & 0x0f) | ((l[j + i + 32] & 0x0f) << 4));
            }
        }
        let mut src = h(d).to_vec();
        src.extend(h(dmin));
        src.extend(pack_scales_k4(&ls, &lm));
        src.extend(qh);
        src.extend(qs);
        let want: Vec<f32> = (0..256)
            .map(|i| d * f32::from(ls[i / 32]) * f32::from(l[i]) - dmin * f32::from(lm[i / 32]))
            .collect();
        assert_close(&decode(GgmlType::Q5_K, &src), &want);
    }

    #[test]
    fn q6_k_random_block() {
        let mut rng = StdRng::seed_from_u64(6);
        let d = 0.5f32;
        let l = levels(&mut rng, 256, 63); // stored level, value l - 32
        let sc: Vec<i8> = (0..16).map(|_| rng.gen_range(-128..=127)).collect();
        let mut ql = vec![0u8; 128];
        let mut qh = vec![0u8; 64];
        for j in (0..256).step_by(128) {
            let (ql, qh) = (&mut ql[j / 2..], &mut qh[j / 4..]);
            for i in 0..32 {
                let q = [l[j + i], l[j + i + 32], l[j + i + 64], l[j + i + 96]];
                ql[i] = (q[0] & 0x0f) | ((q[2] & 0x0f) << 4);
                ql[i + 32] = (q[1] & 0x0f) | ((q[3] & 0x0f) << 4);
                qh[i] = (q[0] >> 4) | ((q[1] >> 4) << 2) | ((q[2] >> 4) << 4) | ((q[3] >> 4) << 6);
            }
        }
        let mut src = ql;
        src.extend(qh);
        src.extend(sc.iter().map(|&s| s as u8));
        src.extend(h(d));
        let want: Vec<f32> = (0..256)
            .map(|i| d * f32::from(sc[i / 16]) * (f32::from(l[i]) - 32.0))
            .collect();
        assert_close(&decode(GgmlType::Q6_K, &src), &want);
    }

    #[test]
    fn q8_k_is_d_times_q() {
        let q: Vec<i8> = (0..256i32).map(|j| (j - 128) as i8).collect();
        let mut src = 0.1f32.to_le_bytes().to_vec();
        src.extend(q.iter().map(|&x| x as u8));
        src.extend([0xaa; 32]); // bsums: ignored
        let want: Vec<f32> = q.iter().map(|&x| 0.1 * f32::from(x)).collect();
        assert_eq!(decode(GgmlType::Q8_K, &src), want);
    }

    #[test]
    fn iq4_nl_indexes_the_level_table() {
        let v: Vec<u8> = (0..32).map(|j| (j * 7) % 16).collect();
        let mut src = h(0.5).to_vec();
        src.extend(pack_nibbles(&v));
        let want: Vec<f32> = v
            .iter()
            .map(|&q| 0.5 * f32::from(KVALUES_IQ4NL[usize::from(q)]))
            .collect();
        assert_eq!(decode(GgmlType::IQ4_NL, &src), want);
        assert_eq!(want[0], -63.5); // level 0 is -127
    }

    #[test]
    fn iq4_xs_random_block() {
        let mut rng = StdRng::seed_from_u64(44);
        let d = 0.25f32;
        let l = levels(&mut rng, 256, 15);
        let ls = levels(&mut rng, 8, 63); // value ls - 32
        let scales_h: u16 = ls
            .iter()
            .enumerate()
            .map(|(ib, &s)| u16::from(s >> 4) << (2 * ib))
            .sum();
        let scales_l: Vec<u8> = (0..4)
            .map(|k| (ls[2 * k] & 0x0f) | ((ls[2 * k + 1] & 0x0f) << 4))
            .collect();
        let mut src = h(d).to_vec();
        src.extend(scales_h.to_le_bytes());
        src.extend(scales_l);
        for ib in 0..8 {
            src.extend(pack_nibbles(&l[32 * ib..32 * ib + 32]));
        }
        let want: Vec<f32> = (0..256)
            .map(|i| {
                d * (f32::from(ls[i / 32]) - 32.0) * f32::from(KVALUES_IQ4NL[usize::from(l[i])])
            })
            .collect();
        assert_close(&decode(GgmlType::IQ4_XS, &src), &want);
    }

    #[test]
    fn blocks_of_a_row_land_in_order() {
        // Two Q8_0 blocks with different scales.
        let mut src = h(1.0).to_vec();
        src.extend([1u8; 32]);
        src.extend(h(2.0));
        src.extend([3u8; 32]);
        let y = decode(GgmlType::Q8_0, &src);
        assert!(y[..32].iter().all(|&v| v == 1.0));
        assert!(y[32..].iter().all(|&v| v == 6.0));
    }

    #[test]
    fn wrong_lengths_are_errors_not_panics() {
        let mut y = vec![0.0; 512];
        for ty in GgmlType::ALL.into_iter().filter(|t| t.can_dequantize()) {
            let good = ty.row_bytes(512).unwrap();
            for len in [0, good - 1, good + 1] {
                let err = dequantize_row(ty, &vec![0; len], &mut y).unwrap_err();
                assert!(
                    matches!(err, KernelError::BadLength { .. }),
                    "{ty} {len}: {err}"
                );
            }
        }
        // 48 elements: not a whole number of 32- or 256-element blocks.
        let err = dequantize_row(GgmlType::Q4_0, &[0; 27], &mut [0.0; 48]).unwrap_err();
        assert!(matches!(err, KernelError::BadLength { ty: "Q4_0", .. }));
        let err = dequantize_row(GgmlType::Q4_K, &[0; 144], &mut [0.0; 64]).unwrap_err();
        assert!(matches!(err, KernelError::BadLength { ty: "Q4_K", .. }));
    }

    #[test]
    fn unsupported_types_say_so() {
        let err = dequantize_row(GgmlType::IQ2_XXS, &[0; 66], &mut [0.0; 256]).unwrap_err();
        assert_eq!(
            err,
            KernelError::Unsupported {
                op: "dequantize",
                ty: "IQ2_XXS"
            }
        );
        let err = dequantize_row(GgmlType::I32, &[0; 4], &mut [0.0; 1]).unwrap_err();
        assert_eq!(
            err,
            KernelError::Unsupported {
                op: "dequantize",
                ty: "I32"
            }
        );
    }

    #[test]
    fn can_dequantize_matches_the_supported_set() {
        use GgmlType::*;
        let supported = [
            F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K,
            IQ4_NL, IQ4_XS,
        ];
        for ty in GgmlType::ALL {
            assert_eq!(ty.can_dequantize(), supported.contains(&ty), "{ty}");
            // An empty row is valid for every type: only support decides.
            assert_eq!(
                dequantize_row(ty, &[], &mut []).is_ok(),
                ty.can_dequantize(),
                "{ty}"
            );
        }
    }
}
