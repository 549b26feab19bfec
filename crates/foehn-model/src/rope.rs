//! Rotary position embeddings: the frequencies (with Llama-3, linear or YaRN
//! scaling), the per-position cos/sin tables, the rotation in either pairing
//! convention, and the attention temperature that scales queries after it.

use foehn_core::{AttnTemperature, ModelConfig, RopeScaling};

/// Which dimensions of a head RoPE rotates together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs `(x[2i], x[2i+1])`: ggml's "normal" mode, used with GGUF `llama`
    /// files, whose converter permuted the rows of Q and K to match.
    AdjacentPairs,
    /// Pairs `(x[i], x[i + d/2])`: the "rotate halves" (NeoX) convention of
    /// Hugging Face checkpoints.
    Halves,
}

/// RoPE for one model: a frequency per pair of head dimensions.
#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f64>,
    style: RopeStyle,
    /// Factor on cos and sin (YaRN's magnitude; 1 otherwise).
    magnitude: f64,
    temperature: Option<AttnTemperature>,
}

impl Rope {
    /// The frequencies of `cfg` (`rope_theta`, `head_dim`, `rope_scaling`).
    ///
    /// Linear scaling divides positions by the factor, which is the same as
    /// dividing every frequency; Llama-3 scaling is HF's
    /// `_compute_llama3_parameters`: wavelengths shorter than
    /// `original_max / high_freq_factor` are kept, longer than
    /// `original_max / low_freq_factor` divided by `factor`, and in between
    /// interpolated smoothly. YaRN is ggml's `rope_yarn`: pair `i` keeps the
    /// fraction `ramp(i)` of its original frequency and takes the rest from the
    /// interpolated one (`/ factor`), where the ramp falls linearly from 1 to 0
    /// between the correction dimensions of `beta_fast` and `beta_slow`; cos
    /// and sin are multiplied by the magnitude.
    pub fn new(cfg: &ModelConfig, style: RopeStyle) -> Self {
        let d = cfg.head_dim;
        let base = f64::from(cfg.rope_theta);
        let mut inv_freq: Vec<f64> = (0..d / 2)
            .map(|i| 1.0 / base.powf((2 * i) as f64 / d as f64))
            .collect();
        let mut magnitude = 1.0;
        match cfg.rope_scaling {
            None => {}
            Some(RopeScaling::Linear { factor }) => {
                for f in &mut inv_freq {
                    *f /= f64::from(factor);
                }
            }
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                let (factor, low, high) = (
                    f64::from(factor),
                    f64::from(low_freq_factor),
                    f64::from(high_freq_factor),
                );
                let old = original_max_position_embeddings as f64;
                let (low_wavelen, high_wavelen) = (old / low, old / high);
                for f in &mut inv_freq {
                    let wavelen = 2.0 * std::f64::consts::PI / *f;
                    if wavelen < high_wavelen {
                        continue;
                    }
                    if wavelen > low_wavelen {
                        *f /= factor;
                    } else {
                        let smooth = (old / wavelen - low) / (high - low);
                        *f = (1.0 - smooth) * *f / factor + smooth * *f;
                    }
                }
            }
            Some(RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                beta_fast,
                beta_slow,
                magnitude: m,
            }) => {
                let (low, high) = yarn_correction_dims(
                    d,
                    original_max_position_embeddings,
                    base,
                    f64::from(beta_fast),
                    f64::from(beta_slow),
                );
                let factor = f64::from(factor);
                for (i, f) in inv_freq.iter_mut().enumerate() {
                    let y = (i as f64 - low) / (high - low).max(0.001);
                    let ramp = 1.0 - y.clamp(0.0, 1.0);
                    *f = *f / factor * (1.0 - ramp) + *f * ramp;
                }
                magnitude = f64::from(m);
            }
        }
        Self {
            inv_freq,
            style,
            magnitude,
            temperature: cfg.attn_temperature,
        }
    }

    /// The pairing convention.
    pub fn style(&self) -> RopeStyle {
        self.style
    }

    /// The frequency of each pair of head dimensions (radians per position).
    pub fn inv_freq(&self) -> &[f64] {
        &self.inv_freq
    }

    /// Fills the cos/sin tables of positions `start..start + n`.
    ///
    /// # Shapes
    /// - `cos`, `sin`: `n × head_dim/2` (n is `cos.len() / (head_dim/2)`).
    pub fn tables(&self, start: usize, cos: &mut [f32], sin: &mut [f32]) {
        let half = self.inv_freq.len().max(1);
        for (t, (c, s)) in cos.chunks_mut(half).zip(sin.chunks_mut(half)).enumerate() {
            let pos = (start + t) as f64;
            for ((c, s), &f) in c.iter_mut().zip(s.iter_mut()).zip(&self.inv_freq) {
                let (sn, cs) = (pos * f).sin_cos();
                *c = (cs * self.magnitude) as f32;
                *s = (sn * self.magnitude) as f32;
            }
        }
    }

    /// The factor on the queries of position `pos` (the attention
    /// temperature), or `None` where it is 1: below the temperature's length,
    /// or for a model without one.
    pub fn query_scale(&self, pos: usize) -> Option<f32> {
        self.temperature
            .filter(|t| pos >= t.length)
            .map(|t| t.scale(pos))
    }

    /// Rotates each head of one token by that token's table.
    ///
    /// # Shapes
    /// - `x`: `heads × head_dim`.
    /// - `cos`, `sin`: `head_dim/2` (one row of [`tables`](Self::tables)).
    pub fn apply(&self, x: &mut [f32], cos: &[f32], sin: &[f32]) {
        let half = self.inv_freq.len();
        if half == 0 {
            return;
        }
        for head in x.chunks_exact_mut(2 * half) {
            match self.style {
                RopeStyle::AdjacentPairs => {
                    for ((p, &c), &s) in head.chunks_exact_mut(2).zip(cos).zip(sin) {
                        let (a, b) = (p[0], p[1]);
                        p[0] = a * c - b * s;
                        p[1] = a * s + b * c;
                    }
                }
                RopeStyle::Halves => {
                    let (lo, hi) = head.split_at_mut(half);
                    for (((a, b), &c), &s) in lo.iter_mut().zip(hi.iter_mut()).zip(cos).zip(sin) {
                        let (x0, x1) = (*a, *b);
                        *a = x0 * c - x1 * s;
                        *b = x0 * s + x1 * c;
                    }
                }
            }
        }
    }
}

/// ggml's `ggml_rope_yarn_corr_dims`: the first and last pair index of the
/// ramp, the pairs that turn `beta_fast` and `beta_slow` times over the
/// original context (floored and ceiled, clamped to the head).
fn yarn_correction_dims(
    head_dim: usize,
    original_context: usize,
    base: f64,
    beta_fast: f64,
    beta_slow: f64,
) -> (f64, f64) {
    let d = head_dim as f64;
    let dim = |rotations: f64| {
        d * (original_context as f64 / (rotations * 2.0 * std::f64::consts::PI)).ln()
            / (2.0 * base.ln())
    };
    let low = dim(beta_fast).floor().max(0.0);
    let high = dim(beta_slow).ceil().min(d - 1.0);
    (low, high)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(head_dim: usize, scaling: Option<RopeScaling>) -> ModelConfig {
        ModelConfig {
            vocab_size: 10,
            hidden_size: head_dim * 2,
            intermediate_size: 8,
            num_hidden_layers: 1,
            num_attention_heads: 2,
            num_key_value_heads: 1,
            head_dim,
            rope_theta: 500_000.0,
            rope_scaling: scaling,
            rms_norm_eps: 1e-5,
            sliding_window: None,
            max_position_embeddings: 131_072,
            tie_word_embeddings: false,
            sliding_layers: None,
            attn_temperature: None,
            moe: None,
        }
    }

    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        let plain = Rope::new(&cfg(128, None), RopeStyle::Halves);
        let scaled = Rope::new(
            &cfg(
                128,
                Some(RopeScaling::Llama3 {
                    factor: 8.0,
                    low_freq_factor: 1.0,
                    high_freq_factor: 4.0,
                    original_max_position_embeddings: 8192,
                }),
            ),
            RopeStyle::Halves,
        );
        let (p, s) = (plain.inv_freq(), scaled.inv_freq());
        let mut kinds = [0; 3];
        for (&p, &s) in p.iter().zip(s) {
            let wavelen = 2.0 * std::f64::consts::PI / p;
            if wavelen < 2048.0 {
                assert_eq!(s, p);
                kinds[0] += 1;
            } else if wavelen > 8192.0 {
                assert!((s - p / 8.0).abs() <= 1e-15 * p);
                kinds[2] += 1;
            } else {
                assert!(s < p && s > p / 8.0, "{s} vs {p}");
                kinds[1] += 1;
            }
        }
        assert!(kinds.iter().all(|&k| k > 0), "{kinds:?}");
        // Linear scaling divides every frequency.
        let lin = Rope::new(
            &cfg(128, Some(RopeScaling::Linear { factor: 2.0 })),
            RopeStyle::Halves,
        );
        assert!(lin.inv_freq().iter().zip(p).all(|(&l, &p)| l == p / 2.0));
    }

    #[test]
    fn yarn_ramps_between_the_correction_dims_and_scales_the_tables() {
        // Ministral 3: head_dim 128, theta 1e6, original context 16,384 → dims [20, 37].
        assert_eq!(
            yarn_correction_dims(128, 16384, 1e6, 32.0, 1.0),
            (20.0, 37.0)
        );
        let mut c = cfg(128, None);
        c.rope_theta = 1e6;
        let plain = Rope::new(&c, RopeStyle::AdjacentPairs);
        c.rope_scaling = Some(RopeScaling::Yarn {
            factor: 16.0,
            original_max_position_embeddings: 16384,
            beta_fast: 32.0,
            beta_slow: 1.0,
            magnitude: 1.5,
        });
        let yarn = Rope::new(&c, RopeStyle::AdjacentPairs);
        for (i, (&p, &y)) in plain.inv_freq().iter().zip(yarn.inv_freq()).enumerate() {
            if i <= 20 {
                assert_eq!(y, p, "pair {i} is extrapolated");
            } else if i >= 37 {
                assert!(
                    (y - p / 16.0).abs() <= 1e-15 * p,
                    "pair {i} is interpolated"
                );
            } else {
                let ramp = 1.0 - (i as f64 - 20.0) / 17.0;
                let want = p / 16.0 * (1.0 - ramp) + p * ramp;
                assert!((y - want).abs() <= 1e-15 * p, "pair {i}: {y} vs {want}");
            }
        }
        let (mut cos, mut sin) = (vec![0.0; 64], vec![0.0; 64]);
        yarn.tables(1000, &mut cos, &mut sin);
        for i in 0..64 {
            let (s, c) = (1000.0 * yarn.inv_freq()[i]).sin_cos();
            assert!((cos[i] as f64 - 1.5 * c).abs() < 1e-6);
            assert!((sin[i] as f64 - 1.5 * s).abs() < 1e-6);
        }
    }

    #[test]
    fn query_scale_steps_every_length_positions() {
        let mut c = cfg(8, None);
        assert_eq!(Rope::new(&c, RopeStyle::Halves).query_scale(1 << 40), None);
        c.attn_temperature = Some(AttnTemperature {
            beta: 0.1,
            length: 16384,
        });
        let rope = Rope::new(&c, RopeStyle::Halves);
        assert_eq!(rope.query_scale(0), None);
        assert_eq!(rope.query_scale(16383), None);
        let at = |pos| rope.query_scale(pos).unwrap() as f64;
        assert!((at(16384) - (1.0 + 0.1 * 2f64.ln())).abs() < 1e-7);
        assert_eq!(at(16384), at(32767));
        assert!((at(5 * 16384 + 7) - (1.0 + 0.1 * 6f64.ln())).abs() < 1e-7);
    }

    /// ggml's adjacent pairs on rows permuted like llama.cpp's converter give
    /// the permuted result of rotate-halves on the original rows.
    #[test]
    fn adjacent_pairs_on_permuted_rows_equal_halves() {
        let d = 8;
        let adj = Rope::new(&cfg(d, None), RopeStyle::AdjacentPairs);
        let hal = Rope::new(&cfg(d, None), RopeStyle::Halves);
        let (mut cos, mut sin) = (vec![0.0; 4 * d / 2], vec![0.0; 4 * d / 2]);
        adj.tables(7, &mut cos, &mut sin);
        let x: Vec<f32> = (0..d).map(|i| (i as f32 * 0.37).sin()).collect();
        // convert_hf_to_gguf permute for one head: new[2i] = old[i], new[2i+1] = old[i + d/2].
        let perm = |v: &[f32]| -> Vec<f32> {
            (0..d)
                .map(|j| {
                    if j % 2 == 0 {
                        v[j / 2]
                    } else {
                        v[j / 2 + d / 2]
                    }
                })
                .collect()
        };
        for t in 0..4 {
            let (c, s) = (
                &cos[t * d / 2..(t + 1) * d / 2],
                &sin[t * d / 2..(t + 1) * d / 2],
            );
            let mut a = perm(&x);
            adj.apply(&mut a, c, s);
            let mut h = x.clone();
            hal.apply(&mut h, c, s);
            let h = perm(&h);
            for (a, h) in a.iter().zip(&h) {
                assert!((a - h).abs() < 1e-6);
            }
        }
    }
}
