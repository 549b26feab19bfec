//! Candidate selection over a logit vector without sorting the vocabulary.
//!
//! Every function here skips logits that are NaN or -inf: such tokens can
//! never be drawn. Ties are broken toward the lower token id everywhere.

use std::cmp::Ordering;

use foehn_kernels::vecops::exp;

/// A token still in the running, with its (biased, penalized) logit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Candidate {
    /// Token id.
    pub(crate) id: u32,
    /// Its logit.
    pub(crate) logit: f32,
}

/// Higher logit first, then lower id: the order every truncation keeps a
/// prefix of. Candidates never hold NaN, so `partial_cmp` is total here.
pub(crate) fn best_first(a: &Candidate, b: &Candidate) -> Ordering {
    b.logit
        .partial_cmp(&a.logit)
        .unwrap_or(Ordering::Equal)
        .then(a.id.cmp(&b.id))
}

/// Width of the blocks scanned with a branch-free "anything above the
/// threshold?" test before looking at single logits.
const BLOCK: usize = 32;

/// Lanes of the vectorizable max reduction.
const LANES: usize = 8;

/// The largest logit, ignoring NaN (-inf if there is none).
pub(crate) fn max_logit(logits: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = logits.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (m, &x) in lanes.iter_mut().zip(chunk) {
            *m = if x > *m { x } else { *m };
        }
    }
    let mut max = f32::NEG_INFINITY;
    for &x in lanes.iter().chain(chunks.remainder()) {
        max = if x > max { x } else { max };
    }
    max
}

/// The index of the largest logit, the lowest one on ties; 0 when every logit
/// is NaN or -inf.
pub(crate) fn argmax(logits: &[f32]) -> usize {
    let max = max_logit(logits);
    if max == f32::NEG_INFINITY {
        return 0;
    }
    for (b, block) in logits.chunks(BLOCK).enumerate() {
        if block.iter().fold(false, |any, &x| any | (x == max)) {
            return b * BLOCK + block.iter().position(|&x| x == max).unwrap_or(0);
        }
    }
    0
}

/// Whether any value of `block` is above `threshold` (branch-free, so it
/// vectorizes).
#[inline]
fn any_above(block: &[f32], threshold: f32) -> bool {
    block.iter().fold(false, |any, &x| any | (x > threshold))
}

/// Replaces `out` with the `k` best candidates (fewer if fewer logits are above
/// -inf), sorted best first.
///
/// One pass keeps a buffer of up to `2k + 64` candidates above a running
/// threshold; when the buffer fills, `select_nth_unstable_by` keeps its best
/// `k` and raises the threshold to the k-th logit. Since logits are scanned in
/// id order, a later logit equal to the threshold loses the tie, so the strict
/// `>` test is exact. Expected cost: one comparison per logit plus
/// O(k log(n/k)) buffer work on unordered input; linear in the worst case.
/// `out` must have capacity `min(2k + 64, logits.len())` to stay allocation-free.
pub(crate) fn top_k(logits: &[f32], k: usize, out: &mut Vec<Candidate>) {
    out.clear();
    if k == 0 {
        return;
    }
    let limit = 2 * k + 64;
    let mut threshold = f32::NEG_INFINITY;
    for (b, block) in logits.chunks(BLOCK).enumerate() {
        if !any_above(block, threshold) {
            continue;
        }
        for (j, &logit) in block.iter().enumerate() {
            if logit > threshold {
                out.push(Candidate {
                    id: (b * BLOCK + j) as u32,
                    logit,
                });
                if out.len() == limit {
                    out.select_nth_unstable_by(k - 1, best_first);
                    out.truncate(k);
                    threshold = out[k - 1].logit;
                }
            }
        }
    }
    if out.len() > k {
        out.select_nth_unstable_by(k - 1, best_first);
        out.truncate(k);
    }
    out.sort_unstable_by(best_first);
}

/// Replaces `out` with every candidate whose logit is `>= threshold` (and above
/// -inf), in id order.
pub(crate) fn at_least(logits: &[f32], threshold: f32, out: &mut Vec<Candidate>) {
    // `x > next_down(t)` is `x >= t` for floats.
    above(logits, next_down(threshold), out);
}

/// Replaces `out` with every candidate whose logit is `> below`, in id order.
fn above(logits: &[f32], below: f32, out: &mut Vec<Candidate>) {
    out.clear();
    for (b, block) in logits.chunks(BLOCK).enumerate() {
        if !any_above(block, below) {
            continue;
        }
        for (j, &logit) in block.iter().enumerate() {
            if logit > below {
                out.push(Candidate {
                    id: (b * BLOCK + j) as u32,
                    logit,
                });
            }
        }
    }
}

/// The largest float below `x` (for finite `x`; -inf and NaN map to themselves).
fn next_down(x: f32) -> f32 {
    if !x.is_finite() {
        return if x == f32::INFINITY { f32::MAX } else { x };
    }
    if x == 0.0 {
        return -f32::from_bits(1);
    }
    let bits = x.to_bits();
    f32::from_bits(if x > 0.0 { bits - 1 } else { bits + 1 })
}

/// Σ of a block of weights in `f32` lanes (so that it vectorizes), widened:
/// totals add these up in `f64`, and a walk over the same blocks reaches the
/// same total.
pub(crate) fn block_sum(block: &[f32]) -> f64 {
    let mut lanes = [0.0f32; LANES];
    let mut chunks = block.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (acc, &x) in lanes.iter_mut().zip(chunk) {
            *acc += x;
        }
    }
    f64::from(lanes.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>())
}

/// Buckets of the logit histogram that locates the top-p boundary.
const BUCKETS: usize = 1024;

/// Logits more than this far below the max share the last histogram bucket
/// (their weight is below e⁻³², nothing next to 1 − top_p).
const HISTOGRAM_RANGE: f32 = 32.0;

/// Replaces `out` with the top-p nucleus of the whole vocabulary, less the
/// tokens below `min_floor` (min-p), in no particular order; `max` is the
/// largest logit (finite).
///
/// Top-p normalizes over every token, so there is no way around one `exp` per
/// logit; sorting is avoided. Pass 1 adds each token's weight exp(logit − max)
/// into a histogram of `max − logit` and finds the bucket where the running
/// mass crosses `top_p`. Pass 2 gathers the tokens of the buckets above it
/// (all in the nucleus) and of that bucket (and a little more), which
/// [`nucleus`] then orders just enough to find the cut. Cost: two passes over
/// the logits plus O(bucket size), whatever the nucleus size.
pub(crate) fn top_p_unsorted(
    logits: &[f32],
    max: f32,
    top_p: f32,
    min_floor: f32,
    out: &mut Vec<Candidate>,
) {
    out.clear();
    let range = (max - min_floor).clamp(1e-3, HISTOGRAM_RANGE);
    let scale = BUCKETS as f32 / range;
    // round((max − logit) × scale), capped: monotone in the logit, so equal
    // logits share a bucket. The 2²³ trick rounds without a saturating float
    // to integer cast, which would not vectorize. NaN and -inf land in the
    // last bucket (NaN weighs 0 and is never gathered).
    const LAST: f32 = (BUCKETS - 1) as f32;
    let bucket = |logit: f32| {
        (((max - logit) * scale).min(LAST) + 8_388_608.0).to_bits() as usize - 0x4B00_0000
    };
    let mut hist = [0.0f64; BUCKETS];
    let mut weights = [0.0f32; BLOCK];
    // Blocks wholly below this (with a bucket of slack) belong to the last
    // bucket: summed in lanes rather than added one by one into one slot, a
    // dependency chain that would dominate when min-p narrows the range.
    let tail_below = max - (BUCKETS + 1) as f32 / scale;
    let mut tail = 0.0f64;
    for block in logits.chunks(BLOCK) {
        let weights = &mut weights[..block.len()];
        for (w, &x) in weights.iter_mut().zip(block) {
            *w = exp(x - max);
        }
        if !any_above(block, tail_below) {
            tail += block_sum(weights);
            continue;
        }
        for (&w, &x) in weights.iter().zip(block) {
            hist[bucket(x)] += f64::from(w);
        }
    }
    hist[BUCKETS - 1] += tail;
    let z: f64 = hist.iter().sum();
    let target = f64::from(top_p) * z;
    let mut before = 0.0f64; // mass of the buckets before `cut`
    let mut cut = BUCKETS - 1;
    for (b, &mass) in hist.iter().enumerate() {
        if before + mass >= target {
            cut = b;
            break;
        }
        before += mass;
    }
    // Every token of the buckets ≤ cut is above this logit (with a bucket of
    // slack); the few extra ones gathered are sorted out by `nucleus`.
    above(
        logits,
        (max - (cut + 2) as f32 / scale).max(next_down(min_floor)),
        out,
    );
    // The sure members (buckets before the cut) first, then the rest.
    let mut sure = 0;
    for i in 0..out.len() {
        if bucket(out[i].logit) < cut {
            out.swap(sure, i);
            sure += 1;
        }
    }
    let len = sure + nucleus(&mut out[sure..], max, target - before);
    out.truncate(len);
}

/// Moves the top-p nucleus of `cands` to its front, in no particular order,
/// and returns its length: the shortest prefix, in [`best_first`] order, whose
/// weight Σ exp(logit − max) reaches `target`.
///
/// A quickselect on mass rather than a sort: each round partitions the
/// remaining range at its median and keeps the half where the target is
/// crossed, so the cost is O(len) on average, however large the nucleus. If
/// rounding keeps the total below `target`, everything is kept.
pub(crate) fn nucleus(cands: &mut [Candidate], max: f32, target: f64) -> usize {
    const SMALL: usize = 64;
    let weight = |c: &Candidate| f64::from(exp(c.logit - max));
    // Invariant: cands[..lo] weigh `acc` < target, and the nucleus ends in (lo, hi].
    let (mut lo, mut hi) = (0, cands.len());
    let mut acc = 0.0f64;
    while hi - lo > SMALL {
        let mid = lo + (hi - lo) / 2;
        cands[lo..hi].select_nth_unstable_by(mid - lo, best_first);
        let left: f64 = cands[lo..=mid].iter().map(weight).sum();
        if acc + left >= target {
            hi = mid + 1;
        } else {
            acc += left;
            lo = mid + 1;
        }
    }
    cands[lo..hi].sort_unstable_by(best_first);
    for (i, c) in cands[lo..hi].iter().enumerate() {
        acc += weight(c);
        if acc >= target {
            return lo + i + 1;
        }
    }
    hi
}

/// Cuts sorted `cands` (best first) to top-p then min-p, as llama.cpp does.
///
/// `z` is Σ exp(logit − max) over the set top-p normalizes against: the
/// candidates themselves after top-k, the whole vocabulary without it; when
/// `cands` is only a prefix of that set, top-p keeps all of it if the prefix
/// does not reach `top_p`. Top-p keeps the shortest prefix whose probability
/// reaches `top_p`; min-p keeps those with logit ≥ max + ln(min_p). At least
/// one candidate stays.
pub(crate) fn cut_sorted(cands: &mut Vec<Candidate>, z: f64, top_p: f32, min_p: f32) {
    let Some(first) = cands.first() else { return };
    let max = first.logit;
    let mut keep = cands.len();
    if top_p < 1.0 {
        let target = f64::from(top_p) * z;
        let mut cum = 0.0f64;
        for (i, c) in cands.iter().enumerate() {
            cum += f64::from(exp(c.logit - max));
            if cum >= target {
                keep = i + 1;
                break;
            }
        }
    }
    if min_p > 0.0 {
        let threshold = max + min_p.ln();
        keep = cands[..keep]
            .partition_point(|c| c.logit >= threshold)
            .max(1);
    }
    cands.truncate(keep);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_prefers_the_lowest_id_and_skips_nan() {
        assert_eq!(argmax(&[1.0, 3.0, 2.0, 3.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 0.5, f32::NAN, 0.5]), 1);
        assert_eq!(argmax(&[f32::NEG_INFINITY, f32::NAN]), 0);
        let mut long = vec![0.0f32; 1001];
        long[1000] = 1.0;
        long[999] = 1.0;
        assert_eq!(argmax(&long), 999);
        assert_eq!(max_logit(&long), 1.0);
        assert_eq!(max_logit(&[]), f32::NEG_INFINITY);
    }

    #[test]
    fn top_k_is_exact_with_ties_and_forbidden_tokens() {
        // Many ties across compactions: the lowest ids must win.
        let logits: Vec<f32> = (0..1000).map(|i| (i % 7) as f32).collect();
        let mut out = Vec::new();
        top_k(&logits, 10, &mut out);
        let want: Vec<u32> = (0..1000u32).filter(|i| i % 7 == 6).take(10).collect();
        assert_eq!(out.iter().map(|c| c.id).collect::<Vec<_>>(), want);
        // Ascending input (worst case for the running threshold).
        let asc: Vec<f32> = (0..5000).map(|i| i as f32).collect();
        top_k(&asc, 3, &mut out);
        assert_eq!(
            out.iter().map(|c| c.id).collect::<Vec<_>>(),
            [4999, 4998, 4997]
        );
        // Fewer than k allowed tokens.
        let few = [f32::NEG_INFINITY, 2.0, f32::NAN, 1.0];
        top_k(&few, 3, &mut out);
        assert_eq!(out.iter().map(|c| c.id).collect::<Vec<_>>(), [1, 3]);
    }

    #[test]
    fn at_least_includes_the_threshold_itself() {
        let logits = [0.5, -1.0, 0.25, 0.0, -0.0, f32::NAN, f32::NEG_INFINITY];
        let mut out = Vec::new();
        at_least(&logits, 0.25, &mut out);
        assert_eq!(out.iter().map(|c| c.id).collect::<Vec<_>>(), [0, 2]);
        at_least(&logits, 0.0, &mut out);
        assert_eq!(out.iter().map(|c| c.id).collect::<Vec<_>>(), [0, 2, 3, 4]);
        at_least(&logits, f32::NEG_INFINITY, &mut out);
        assert_eq!(out.len(), 5);
    }

    /// The nucleus by sorting everything.
    fn sorted_nucleus(cands: &[Candidate], max: f32, target: f64) -> Vec<u32> {
        let mut all = cands.to_vec();
        all.sort_by(best_first);
        let mut cum = 0.0;
        let len = all.iter().position(|c| {
            cum += f64::from(exp(c.logit - max));
            cum >= target
        });
        all.truncate(len.map_or(all.len(), |i| i + 1));
        let mut ids: Vec<u32> = all.iter().map(|c| c.id).collect();
        ids.sort_unstable();
        ids
    }

    #[test]
    fn nucleus_quickselect_matches_a_sort() {
        let mut state = 12345u32;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state
        };
        for &n in &[1usize, 65, 300, 5001] {
            for &levels in &[3u32, 50, 1 << 20] {
                let cands: Vec<Candidate> = (0..n)
                    .map(|i| Candidate {
                        id: i as u32,
                        logit: (next() % levels) as f32 / levels as f32 * 8.0,
                    })
                    .collect();
                let max = cands.iter().fold(f32::NEG_INFINITY, |m, c| m.max(c.logit));
                let z: f64 = cands.iter().map(|c| f64::from(exp(c.logit - max))).sum();
                for &p in &[0.01, 0.3, 0.9, 0.999, 1.5] {
                    let mut got = cands.clone();
                    let len = nucleus(&mut got, max, p * z);
                    let mut ids: Vec<u32> = got[..len].iter().map(|c| c.id).collect();
                    ids.sort_unstable();
                    assert_eq!(
                        ids,
                        sorted_nucleus(&cands, max, p * z),
                        "n {n}, levels {levels}, p {p}"
                    );
                }
            }
        }
    }

    #[test]
    fn top_p_unsorted_handles_one_crowded_bucket() {
        // All logits equal: everything lands in one bucket, ties go to low ids.
        let logits = vec![1.5f32; 5000];
        let mut out = Vec::new();
        top_p_unsorted(&logits, 1.5, 0.25, f32::NEG_INFINITY, &mut out);
        let mut ids: Vec<u32> = out.iter().map(|c| c.id).collect();
        ids.sort_unstable();
        assert_eq!(ids, (0..1250).collect::<Vec<u32>>());
        // Min-p below the nucleus boundary wins.
        let mut logits: Vec<f32> = (0..1000).map(|i| -(i as f32) * 0.001).collect();
        logits[700] = f32::NAN;
        top_p_unsorted(&logits, 0.0, 0.9, -0.1, &mut out);
        assert_eq!(out.len(), 101);
        assert!(out.iter().all(|c| c.id <= 100));
    }

    #[test]
    fn cut_sorted_keeps_the_prefix_reaching_top_p() {
        let ln = |p: f32| p.ln();
        // Probabilities 0.5, 0.3, 0.15, 0.05.
        let cands: Vec<Candidate> = [0.5, 0.3, 0.15, 0.05]
            .iter()
            .enumerate()
            .map(|(i, &p)| Candidate {
                id: i as u32,
                logit: ln(p),
            })
            .collect();
        let z = 1.0 / 0.5; // Σ exp(l - max) = 1 / p_max
        let kept = |top_p, min_p| {
            let mut c = cands.clone();
            cut_sorted(&mut c, z, top_p, min_p);
            c.len()
        };
        assert_eq!(kept(0.5, 0.0), 1);
        assert_eq!(kept(0.79, 0.0), 2);
        assert_eq!(kept(0.81, 0.0), 3);
        assert_eq!(kept(1.0, 0.0), 4);
        assert_eq!(kept(1.0, 0.2), 3); // 0.05 < 0.2 × 0.5
        assert_eq!(kept(1.0, 0.31), 2);
        assert_eq!(kept(0.6, 0.2), 2);
        assert_eq!(kept(1.0, 1.0), 1);
    }
}
