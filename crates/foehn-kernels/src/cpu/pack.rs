//! Repacking GGUF rows into the tile format of [`super::format`], and reading
//! rows back out of it.

use half::f16;
use rayon::prelude::*;

use super::format::{triads, Format, GroupAt, ScaleCoding, SixBitScales, IQ4_INDEX, TILE};
use crate::quant::blocks::*;
use crate::quant::dequant::{q3_k_scales, scale_min_k4};
use crate::quant::KVALUES_IQ4NL;

/// One row split into integer levels and scale parts (f16 values as bits).
#[derive(Debug, Default, Clone)]
pub(crate) struct RowParts {
    /// One level per weight.
    u: Vec<u8>,
    /// Per unit: `d`.
    d: Vec<u16>,
    /// Per unit, for types with a min: the legacy types' `m`, the k-quants' `−dmin`.
    dm: Vec<u16>,
    /// Per group, superblock mode: the scale multiplier.
    sc: Vec<i8>,
    /// Per group, superblock mode with a min: the min multiplier.
    m: Vec<i8>,
}

impl RowParts {
    /// Buffers for one row of `cols` weights of `fmt`.
    fn with_capacity(fmt: &Format, cols: usize) -> Self {
        let (units, groups) = (cols / fmt.unit(), cols / fmt.group);
        Self {
            u: Vec::with_capacity(cols),
            d: Vec::with_capacity(units),
            dm: Vec::with_capacity(units),
            sc: Vec::with_capacity(groups),
            m: Vec::with_capacity(groups),
        }
    }

    fn clear(&mut self) {
        self.u.clear();
        self.d.clear();
        self.dm.clear();
        self.sc.clear();
        self.m.clear();
    }
}

fn neg(x: f16) -> u16 {
    x.to_bits() ^ 0x8000
}

/// Calls `f` on each `N`-byte block of `src`.
fn blocks<const N: usize>(src: &[u8], mut f: impl FnMut(&[u8; N])) {
    for b in src.chunks_exact(N) {
        if let Ok(b) = b.try_into() {
            f(b);
        }
    }
}

/// Splits one GGUF row into levels and scales (`src` = whole blocks), one
/// function per type, as the quant-type table names them.
pub(crate) type SplitRowFn = fn(&[u8], &mut RowParts);

/// The row splitters of the quant-type table (see [`SplitRowFn`]).
pub(crate) mod split {
    use super::*;

    fn iq4(q: u8) -> u8 {
        (i16::from(KVALUES_IQ4NL[usize::from(q & 0x0f)]) + 128) as u8
    }

    pub(crate) fn q4_0(src: &[u8], p: &mut RowParts) {
        p.clear();
        blocks(src, |b| {
            let b = BlockQ4_0::from_le_bytes(b);
            p.d.push(b.d.to_bits());
            p.u.extend(b.qs.iter().map(|q| q & 0x0f));
            p.u.extend(b.qs.iter().map(|q| q >> 4));
        })
    }

    pub(crate) fn q4_1(src: &[u8], p: &mut RowParts) {
        p.clear();
        blocks(src, |b| {
            let b = BlockQ4_1::from_le_bytes(b);
            p.d.push(b.d.to_bits());
            p.dm.push(b.m.to_bits());
            p.u.extend(b.qs.iter().map(|q| q & 0x0f));
            p.u.extend(b.qs.iter().map(|q| q >> 4));
        })
    }

    /// The 5-bit legacy types' levels, scale and (Q5_1) min.
    fn q5(d: f16, m: Option<f16>, qh: [u8; 4], qs: [u8; 16], p: &mut RowParts) {
        p.d.push(d.to_bits());
        if let Some(m) = m {
            p.dm.push(m.to_bits());
        }
        let qh = u32::from_le_bytes(qh);
        for (j, &q) in qs.iter().enumerate() {
            p.u.push((u32::from(q & 0x0f) | (((qh >> j) << 4) & 0x10)) as u8);
        }
        for (j, &q) in qs.iter().enumerate() {
            p.u.push((u32::from(q >> 4) | ((qh >> (j + 12)) & 0x10)) as u8);
        }
    }

    pub(crate) fn q5_0(src: &[u8], p: &mut RowParts) {
        p.clear();
        blocks(src, |b| {
            let b = BlockQ5_0::from_le_bytes(b);
            q5(b.d, None, b.qh, b.qs, p);
        })
    }

    pub(crate) fn q5_1(src: &[u8], p: &mut RowParts) {
        p.clear();
        blocks(src, |b| {
            let b = BlockQ5_1::from_le_bytes(b);
            q5(b.d, Some(b.m), b.qh, b.qs, p);
        })
    }

    pub(crate) fn q8_0(src: &[u8], p: &mut RowParts) {
        p.clear();
        blocks(src, |b| {
            let b = BlockQ8_0::from_le_bytes(b);
            p.d.push(b.d.to_bits());
            p.u.extend(b.qs.iter().map(|&q| (q as u8) ^ 0x80));
        })
    }

    pub(crate) fn iq4_nl(src: &[u8], p: &mut RowParts) {
        p.clear();
        blocks(src, |b| {
            let b = BlockIQ4_NL::from_le_bytes(b);
            p.d.push(b.d.to_bits());
            p.u.extend(b.qs.iter().map(|&q| iq4(q)));
            p.u.extend(b.qs.iter().map(|&q| iq4(q >> 4)));
        })
    }

    pub(crate) fn q4_k(src: &[u8], p: &mut RowParts) {
        p.clear();
        blocks(src, |b| {
            let b = BlockQ4_K::from_le_bytes(b);
            p.d.push(b.d.to_bits());
            p.dm.push(neg(b.dmin));
            for j in 0..8 {
                let (sc, m) = scale_min_k4(j, &b.scales);
                p.sc.push(sc as i8);
                p.m.push(m as i8);
            }
            for q in b.qs.chunks_exact(32) {
                p.u.extend(q.iter().map(|q| q & 0x0f));
                p.u.extend(q.iter().map(|q| q >> 4));
            }
        })
    }

    pub(crate) fn q5_k(src: &[u8], p: &mut RowParts) {
        p.clear();
        blocks(src, |b| {
            let b = BlockQ5_K::from_le_bytes(b);
            p.d.push(b.d.to_bits());
            p.dm.push(neg(b.dmin));
            for j in 0..8 {
                let (sc, m) = scale_min_k4(j, &b.scales);
                p.sc.push(sc as i8);
                p.m.push(m as i8);
            }
            for (g, ql) in b.qs.chunks_exact(32).enumerate() {
                let (u1, u2) = (1u8 << (2 * g), 2u8 << (2 * g));
                let hi = |qh: u8, bit: u8| if qh & bit != 0 { 16 } else { 0 };
                p.u.extend(ql.iter().zip(&b.qh).map(|(q, &h)| (q & 0x0f) + hi(h, u1)));
                p.u.extend(ql.iter().zip(&b.qh).map(|(q, &h)| (q >> 4) + hi(h, u2)));
            }
        })
    }

    pub(crate) fn q6_k(src: &[u8], p: &mut RowParts) {
        p.clear();
        blocks(src, |b| {
            let b = BlockQ6_K::from_le_bytes(b);
            p.d.push(b.d.to_bits());
            p.sc.extend_from_slice(&b.scales);
            for n in 0..2 {
                let ql = &b.ql[64 * n..64 * n + 64];
                let qh = &b.qh[32 * n..32 * n + 32];
                let start = p.u.len();
                p.u.resize(start + 128, 0);
                let y = &mut p.u[start..];
                for l in 0..32 {
                    y[l] = (ql[l] & 0x0f) | ((qh[l] & 3) << 4);
                    y[l + 32] = (ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4);
                    y[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                    y[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
                }
            }
        })
    }

    pub(crate) fn q3_k(src: &[u8], p: &mut RowParts) {
        p.clear();
        blocks(src, |b| {
            let b = BlockQ3_K::from_le_bytes(b);
            p.d.push(b.d.to_bits());
            p.sc.extend_from_slice(&q3_k_scales(&b.scales));
            let mut m: u8 = 1;
            for q in b.qs.chunks_exact(32) {
                for shift in [0, 2, 4, 6] {
                    for (q, hm) in q.chunks_exact(16).zip(b.hmask.chunks_exact(16)) {
                        p.u.extend(
                            q.iter().zip(hm).map(|(&q, &h)| {
                                ((q >> shift) & 3) + if h & m != 0 { 4 } else { 0 }
                            }),
                        );
                    }
                    m <<= 1;
                }
            }
        })
    }

    pub(crate) fn q2_k(src: &[u8], p: &mut RowParts) {
        p.clear();
        blocks(src, |b| {
            let b = BlockQ2_K::from_le_bytes(b);
            p.d.push(b.d.to_bits());
            p.dm.push(neg(b.dmin));
            p.sc.extend(b.scales.iter().map(|s| (s & 0x0f) as i8));
            p.m.extend(b.scales.iter().map(|s| (s >> 4) as i8));
            for q in b.qs.chunks_exact(32) {
                for shift in [0, 2, 4, 6] {
                    for half in q.chunks_exact(16) {
                        p.u.extend(half.iter().map(|q| (q >> shift) & 3));
                    }
                }
            }
        })
    }

    pub(crate) fn iq4_xs(src: &[u8], p: &mut RowParts) {
        p.clear();
        blocks(src, |b| {
            let b = BlockIQ4_XS::from_le_bytes(b);
            p.d.push(b.d.to_bits());
            for (ib, qs) in b.qs.chunks_exact(16).enumerate() {
                let low = (b.scales_l[ib / 2] >> (4 * (ib % 2))) & 0x0f;
                let high = ((b.scales_h >> (2 * ib)) & 3) as u8;
                p.sc.push(((low | (high << 4)) as i8) - 32);
                p.u.extend(qs.iter().map(|&q| iq4(q)));
                p.u.extend(qs.iter().map(|&q| iq4(q >> 4)));
            }
        })
    }
}

/// Writes the parts of up to 16 rows (`parts[i]` = row `i` of the tile) as
/// one tile of `fmt`; missing rows are zeros.
fn write_tile(fmt: &Format, cols: usize, parts: &[RowParts], tile: &mut [u8]) {
    let unit = fmt.unit();
    let groups_per_unit = fmt.groups_per_unit();
    let layout = fmt.unit_layout();
    let g = fmt.group;
    debug_assert_eq!(tile.len(), fmt.tile_bytes(cols));
    if parts.len() < TILE {
        tile.fill(0);
    }
    for (ui, out) in tile.chunks_exact_mut(fmt.unit_bytes()).enumerate() {
        let (d, rest) = out.split_at_mut(2 * TILE);
        for (o, p) in d.chunks_exact_mut(2).zip(parts) {
            o.copy_from_slice(&p.d[ui].to_le_bytes());
        }
        let rest = if fmt.min {
            let (dm, rest) = rest.split_at_mut(2 * TILE);
            for (o, p) in dm.chunks_exact_mut(2).zip(parts) {
                o.copy_from_slice(&p.dm[ui].to_le_bytes());
            }
            rest
        } else {
            rest
        };
        if fmt.superblocks {
            let scales = &mut rest[..layout.header - 2 * TILE * (1 + usize::from(fmt.min))];
            write_scales(fmt, ui, parts, scales);
        }
        for gi in 0..groups_per_unit {
            let mut levels: [&[u8]; TILE] = [&[]; TILE];
            for (l, p) in levels.iter_mut().zip(parts) {
                *l = &p.u[ui * unit + gi * g..ui * unit + (gi + 1) * g];
            }
            write_group(fmt, out, gi, &levels[..parts.len()]);
        }
    }
}

/// Writes the levels of group `gi` of the unit `ub` (one unit's bytes of a
/// tile): `rows[i]` are row `i`'s, and rows past `rows.len()` get zeros.
pub(crate) fn write_group(fmt: &Format, ub: &mut [u8], gi: usize, rows: &[&[u8]]) {
    let layout = fmt.unit_layout();
    let at = layout.group(gi);
    if triads(fmt.crumbs, fmt.high_bits) {
        write_triads(ub, at, layout.levels, rows);
        return;
    }
    // Each row's level bytes of this group, then the 4-byte words in tile
    // order (sequential stores into the fresh buffer).
    let mut rows_bytes = [[0u8; 32]; TILE];
    let mut planes = [[0u8; 4]; TILE];
    for ((bytes, plane), lv) in rows_bytes.iter_mut().zip(&mut planes).zip(rows) {
        write_levels(fmt, lv, bytes, plane);
    }
    let levels = &mut ub[at.levels..at.levels + layout.levels];
    for (k, word) in levels.chunks_exact_mut(4).enumerate() {
        let (p, i) = (k / TILE, k % TILE);
        word.copy_from_slice(&rows_bytes[i][4 * p..4 * p + 4]);
    }
    if fmt.high_bits > 0 {
        // A nibble group's plane word is its own.
        let plane = &mut ub[at.plane..at.plane + 4 * TILE];
        for (word, bits) in plane.chunks_exact_mut(4).zip(&planes) {
            word.copy_from_slice(bits);
        }
    }
}

/// Writes unit `ui`'s scales (and mins) of `parts` into the header's
/// `scales` bytes, in `fmt`'s [`ScaleCoding`].
fn write_scales(fmt: &Format, ui: usize, parts: &[RowParts], scales: &mut [u8]) {
    let n = fmt.groups_per_unit();
    let coding = ScaleCoding::of(fmt.crumbs, fmt.group, true, fmt.min);
    if matches!(coding, ScaleCoding::SixBit | ScaleCoding::SixBitSigned) {
        scales.fill(0);
    }
    for (i, p) in parts.iter().enumerate() {
        let sc = &p.sc[ui * n..(ui + 1) * n];
        let m = if fmt.min {
            &p.m[ui * n..(ui + 1) * n]
        } else {
            &[][..]
        };
        match coding {
            ScaleCoding::SixBit => {
                for (gi, (&sc, &m)) in sc.iter().zip(m).enumerate() {
                    SixBitScales::set(scales, gi, i, sc as u8, m as u8);
                }
            }
            ScaleCoding::SixBitSigned => {
                // Groups 8..16 in the place of the mins, each plus 32.
                let biased = |v: i8| (i16::from(v) + 32) as u8;
                for gi in 0..8 {
                    SixBitScales::set(scales, gi, i, biased(sc[gi]), biased(sc[gi + 8]));
                }
            }
            ScaleCoding::FourBit => {
                for (gi, (&sc, &m)) in sc.iter().zip(m).enumerate() {
                    debug_assert!((0..16).contains(&sc) && (0..16).contains(&m));
                    scales[gi * TILE + i] = (sc as u8) | ((m as u8) << 4);
                }
            }
            ScaleCoding::Bytes => {
                for (gi, &v) in sc.iter().enumerate() {
                    scales[gi * TILE + i] = v as u8;
                }
                for (gi, &v) in m.iter().enumerate() {
                    scales[(n + gi) * TILE + i] = v as u8;
                }
            }
        }
    }
}

/// [`write_group`] for the triad layout (Q3_K compact, see the format
/// docs): the first group of a pair writes the low six bits of the pair's
/// words X and Y, the second (written after it) all of Z and the top two
/// bits of X and Y.
fn write_triads(ub: &mut [u8], at: GroupAt, levels: usize, rows: &[&[u8]]) {
    // The pair's words X, Y (its level words) and Z (its plane word).
    let (x, y, z) = (at.set, at.set + levels, at.plane);
    for i in 0..TILE {
        for b in 0..4 {
            let l = |o: usize| rows.get(i).map_or(0, |lv| lv[4 * o + b]);
            let (x, y, z) = (x + 4 * i + b, y + 4 * i + b, z + 4 * i + b);
            if at.first() {
                ub[x] = l(0) | (l(1) << 3);
                ub[y] = l(2) | (l(3) << 3);
            } else {
                ub[x] |= (l(2) & 3) << 6;
                ub[y] |= (l(3) & 3) << 6;
                ub[z] = l(0) | (l(1) << 3) | ((l(2) >> 2) << 6) | ((l(3) >> 2) << 7);
            }
        }
    }
}

/// Writes one row's levels `lv` of one group as `fmt` stores them: its level
/// bytes into `bytes` (nibbles, crumbs or bytes, in the order of the row's
/// words) and, in the split layouts, its high bits into the row's plane
/// word `plane` (see the format docs).
fn write_levels(fmt: &Format, lv: &[u8], bytes: &mut [u8; 32], plane: &mut [u8; 4]) {
    let g = lv.len();
    // Nibble operand o's byte b is the level at `op_level(o, b)`; the bits
    // above its low 4 are the plane's.
    let op_level = |o: usize, b: usize| {
        let n = fmt.nibble_words();
        if o < n {
            4 * o + b
        } else {
            g / 2 + 4 * (o - n) + b
        }
    };
    if fmt.crumbs {
        // Level k of word k/16 at bits 2·(k%16/4) of its byte k%4.
        for (k, &l) in lv.iter().enumerate() {
            let j = k % 16;
            bytes[k / 16 * 4 + j % 4] |= (l & 3) << (2 * (j / 4));
        }
    } else if fmt.nibbles {
        let (lo, hi) = lv.split_at(g / 2);
        for ((b, &l), &h) in bytes.iter_mut().zip(lo).zip(hi) {
            let (l, h) = if fmt.lut {
                (IQ4_INDEX[usize::from(l)], IQ4_INDEX[usize::from(h)])
            } else {
                (l, h)
            };
            *b = (l & 0x0f) | (h << 4);
        }
    } else {
        bytes[..g].copy_from_slice(lv);
    }
    if fmt.high_bits > 0 {
        let hb = fmt.high_bits as usize;
        for (b, out) in plane.iter_mut().enumerate() {
            for o in 0..g / 4 {
                *out |= (lv[op_level(o, b)] >> 4) << (hb * o);
            }
        }
    }
}

/// Packs `rows` GGUF rows of `fmt.ty` (`row_bytes` each, back to back in
/// `src`) into tiles; returns the tiles' bytes.
#[cfg(test)]
pub(crate) fn pack(
    fmt: &Format,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    src: &[u8],
) -> Vec<u8> {
    let mut out = vec![0u8; rows.div_ceil(TILE) * fmt.tile_bytes(cols)];
    pack_into(fmt, rows, cols, row_bytes, src, &mut out);
    out
}

/// As [`pack`], into `out` (`⌈rows/16⌉ × fmt.tile_bytes(cols)` bytes).
pub(crate) fn pack_into(
    fmt: &Format,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    src: &[u8],
    out: &mut [u8],
) {
    let tb = fmt.tile_bytes(cols).max(1);
    let tiles = rows.div_ceil(TILE);
    let Some(split_row) = fmt.ty.packing().map(|p| p.split_row) else {
        return;
    };
    // A few runs of tiles per thread, each with one set of row buffers
    // sized once.
    let per_run = tiles
        .div_ceil(4 * rayon::current_num_threads().max(1))
        .max(1);
    out.par_chunks_mut(tb * per_run)
        .enumerate()
        .for_each(|(run, out)| {
            let mut parts: Vec<RowParts> = (0..TILE)
                .map(|_| RowParts::with_capacity(fmt, cols))
                .collect();
            for (k, tile) in out.chunks_exact_mut(tb).enumerate() {
                let r0 = (run * per_run + k) * TILE;
                let n = TILE.min(rows - r0);
                for (i, p) in parts.iter_mut().take(n).enumerate() {
                    let r = r0 + i;
                    split_row(&src[r * row_bytes..(r + 1) * row_bytes], p);
                }
                write_tile(fmt, cols, &parts[..n], tile);
            }
        });
}

fn h(bits: u16) -> f32 {
    f16::from_bits(bits).to_f32()
}

/// Reads row `i` (0..16) of a tile back to f32, with ggml's operations:
/// `S · (u − off) + M`.
pub(crate) fn dequantize_tile_row(fmt: &Format, tile: &[u8], i: usize, dst: &mut [f32]) {
    let (unit, layout) = (fmt.unit(), fmt.unit_layout());
    let g = fmt.group;
    let rd16 = |b: &[u8], at: usize| u16::from_le_bytes([b[at + 2 * i], b[at + 2 * i + 1]]);
    for (ub, y) in tile
        .chunks_exact(fmt.unit_bytes())
        .zip(dst.chunks_exact_mut(unit))
    {
        let d = h(rd16(ub, 0));
        let dm = if fmt.min { h(rd16(ub, 2 * TILE)) } else { 0.0 };
        for (gi, y) in y.chunks_exact_mut(g).enumerate() {
            let (s, m) = if fmt.superblocks {
                let (sc, m) = fmt.scales(ub, gi, i);
                (d * f32::from(sc), dm * f32::from(m))
            } else {
                (d, dm)
            };
            let at = layout.group(gi);
            for (k, y) in y.iter_mut().enumerate() {
                let v = (i32::from(fmt.level(ub, at, i, k)) - fmt.off) as f32;
                *y = if fmt.min { s * v + m } else { s * v };
            }
        }
    }
}

/// Whether rows of `cols` weights are whole units of `fmt` (32 weights,
/// 256 for the k-quants), as packing needs.
pub(crate) fn cols_ok(fmt: &Format, cols: usize) -> bool {
    cols.is_multiple_of(fmt.unit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::testutil::random_bytes;
    use crate::dequantize_row;
    use rand::SeedableRng;

    #[test]
    fn packed_rows_dequantize_bit_exactly() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        // Every type the quant-type table packs.
        for ty in crate::GgmlType::ALL
            .into_iter()
            .filter(|t| t.packing().is_some())
        {
            for fmt in [Format::of(ty), Format::split(ty)].into_iter().flatten() {
                for (rows, cols) in [(1, 256), (16, 512), (37, 256)] {
                    let bytes = random_bytes(&mut rng, ty, rows, cols);
                    let rb = ty.row_bytes(cols).unwrap();
                    let packed = pack(&fmt, rows, cols, rb, &bytes);
                    assert_eq!(packed.len(), rows.div_ceil(TILE) * fmt.tile_bytes(cols));
                    let tb = fmt.tile_bytes(cols);
                    for r in 0..rows {
                        let mut want = vec![0.0f32; cols];
                        dequantize_row(ty, &bytes[r * rb..(r + 1) * rb], &mut want).unwrap();
                        let mut got = vec![f32::NAN; cols];
                        let t = r / TILE;
                        dequantize_tile_row(
                            &fmt,
                            &packed[t * tb..(t + 1) * tb],
                            r % TILE,
                            &mut got,
                        );
                        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                            assert_eq!(
                                g.to_bits(),
                                w.to_bits(),
                                "{ty} {rows}x{cols} row {r} [{k}]: {g} vs {w}"
                            );
                        }
                    }
                }
            }
        }
    }
}
