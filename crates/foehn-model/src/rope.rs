//! Rotary position embeddings: the frequencies (with Llama-3 or linear
//! scaling), the per-position cos/sin tables and the rotation in either
//! pairing convention.

use foehn_core::{ModelConfig, RopeScaling};

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
}

impl Rope {
    /// The frequencies of `cfg` (`rope_theta`, `head_dim`, `rope_scaling`).
    ///
    /// Linear scaling divides positions by the factor, which is the same as
    /// dividing every frequency; Llama-3 scaling is HF's
    /// `_compute_llama3_parameters`: wavelengths shorter than
    /// `original_max / high_freq_factor` are kept, longer than
    /// `original_max / low_freq_factor` divided by `factor`, and in between
    /// interpolated smoothly.
    pub fn new(cfg: &ModelConfig, style: RopeStyle) -> Self {
        let d = cfg.head_dim;
        let base = f64::from(cfg.rope_theta);
        let mut inv_freq: Vec<f64> = (0..d / 2)
            .map(|i| 1.0 / base.powf((2 * i) as f64 / d as f64))
            .collect();
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
            Some(RopeScaling::Yarn { .. }) => unimplemented!(),
        }
        Self { inv_freq, style }
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
                *c = cs as f32;
                *s = sn as f32;
            }
        }
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
