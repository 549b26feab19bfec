//! The portable tile kernel: the reference every SIMD kernel is tested
//! against, and the fallback on CPUs without one.

use super::act::QuantizedActs;
use super::format::{Format, TILE};

/// `out[r·16 + i] = Σ_k w[i][k] · a[r0 + r][k]` for the 16 rows `i` of `tile`
/// and `nr` activation rows, with integer dot products per group and the
/// group's `S · (Σ u·a − off·Σ a) + M · Σ a` scaled by the activation scale.
///
/// # Shapes
/// - `tile`: `fmt.tile_bytes(cols)`; `out`: at least `nr × 16`.
pub(crate) fn tile(
    fmt: &Format,
    cols: usize,
    tile: &[u8],
    acts: &QuantizedActs,
    r0: usize,
    nr: usize,
    out: &mut [f32],
) {
    let (unit, g, layout) = (fmt.unit(), fmt.group, fmt.unit_layout());
    let groups_per_unit = fmt.groups_per_unit();
    let f16 = |b: &[u8], at: usize, i: usize| {
        half::f16::from_bits(u16::from_le_bytes([b[at + 2 * i], b[at + 2 * i + 1]])).to_f32()
    };
    for r in 0..nr {
        let (a, ad, asum) = (acts.row(r0 + r), acts.scales(r0 + r), acts.sums(r0 + r, g));
        for i in 0..TILE {
            let mut acc = 0.0f32;
            for (ui, ub) in tile
                .chunks_exact(fmt.unit_bytes())
                .take(cols / unit)
                .enumerate()
            {
                let d = f16(ub, 0, i);
                let dm = if fmt.min { f16(ub, 2 * TILE, i) } else { 0.0 };
                for gi in 0..groups_per_unit {
                    let (s, m) = if fmt.superblocks {
                        let (sc, m) = fmt.scales(ub, gi, i);
                        (d * f32::from(sc), dm * f32::from(m))
                    } else {
                        (d, dm)
                    };
                    let gg = ui * groups_per_unit + gi;
                    let a = &a[gg * g..(gg + 1) * g];
                    let at = layout.group(gi);
                    let mut isum = 0i32;
                    for (k, &a) in a.iter().enumerate() {
                        isum += i32::from(fmt.level(ub, at, i, k)) * i32::from(a);
                    }
                    let sa = i32::from(asum[gg]);
                    let mut v = s * (isum - fmt.off * sa) as f32;
                    if fmt.min {
                        v += m * sa as f32;
                    }
                    acc += v * ad[gg * g / 32];
                }
            }
            out[r * TILE + i] = acc;
        }
    }
}
