//! Sampling settings, with llama.cpp's defaults.

use serde::{Deserialize, Serialize};

use crate::error::{Result, SamplerError};

/// How to pick the next token.
///
/// Missing fields deserialize to their defaults, which are llama.cpp's. A
/// setting at its "off" value costs nothing per token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplerConfig {
    /// Divides the logits after truncation; 0 = greedy (argmax, no randomness).
    /// Default: 0.8.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 = off. Default: 40.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability sums to at
    /// least `top_p`, in (0, 1]; 1 = off. Default: 0.95.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` × the most likely one, in [0, 1];
    /// 0 = off. Default: 0.05.
    pub min_p: f32,
    /// llama.cpp repetition penalty for tokens seen in the last
    /// `penalty_last_n`: positive logits are divided by it, negative ones
    /// multiplied; must be > 0, 1 = off. Default: 1.0.
    pub repeat_penalty: f32,
    /// OpenAI frequency penalty: subtracts `count × frequency_penalty` from a
    /// token's logit, where `count` is how often it occurs in the last
    /// `penalty_last_n`; 0 = off. Default: 0.0.
    pub frequency_penalty: f32,
    /// OpenAI presence penalty: subtracts `presence_penalty` from the logit of
    /// every token that occurs in the last `penalty_last_n`; 0 = off.
    /// Default: 0.0.
    pub presence_penalty: f32,
    /// How many of the most recently accepted tokens the penalties look at;
    /// 0 = no penalties. Default: 64.
    pub penalty_last_n: usize,
    /// Seed of the random generator; `None` = a random seed (see
    /// [`Sampler::seed`](crate::Sampler::seed)). Default: `None`.
    pub seed: Option<u64>,
    /// `(token, bias)` pairs added to the logits before anything else; -inf
    /// forbids a token, a large value (e.g. 100) forces it. JSON cannot carry
    /// -inf, so forbid with a large negative value there. Default: empty.
    pub logit_bias: Vec<(u32, f32)>,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            penalty_last_n: 64,
            seed: None,
            logit_bias: Vec::new(),
        }
    }
}

impl SamplerConfig {
    /// Always the most likely token: temperature 0, no truncation, no penalties.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            ..Self::default()
        }
    }

    /// Whether this config picks the argmax (temperature 0) without drawing.
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// Whether any of the repetition, frequency or presence penalties is on.
    pub fn has_penalties(&self) -> bool {
        self.penalty_last_n > 0
            && (self.repeat_penalty != 1.0
                || self.frequency_penalty != 0.0
                || self.presence_penalty != 0.0)
    }

    /// Checks every setting's range (the logit-bias token ids are checked
    /// against the vocabulary by [`Sampler::new`](crate::Sampler::new)).
    pub fn validate(&self) -> Result<()> {
        let check = |name, value: f32, ok: bool, expected| {
            if ok {
                Ok(())
            } else {
                Err(SamplerError::InvalidSetting {
                    name,
                    value,
                    expected,
                })
            }
        };
        let t = self.temperature;
        check(
            "temperature",
            t,
            t.is_finite() && t >= 0.0,
            "a finite value >= 0 (0 = greedy)",
        )?;
        let p = self.top_p;
        check(
            "top_p",
            p,
            p > 0.0 && p <= 1.0,
            "a value in (0, 1] (1 = off)",
        )?;
        let m = self.min_p;
        check(
            "min_p",
            m,
            (0.0..=1.0).contains(&m),
            "a value in [0, 1] (0 = off)",
        )?;
        let r = self.repeat_penalty;
        check(
            "repeat_penalty",
            r,
            r.is_finite() && r > 0.0,
            "a finite value > 0 (1 = off)",
        )?;
        let f = self.frequency_penalty;
        check(
            "frequency_penalty",
            f,
            f.is_finite(),
            "a finite value (0 = off)",
        )?;
        let q = self.presence_penalty;
        check(
            "presence_penalty",
            q,
            q.is_finite(),
            "a finite value (0 = off)",
        )?;
        for &(token, bias) in &self.logit_bias {
            if bias.is_nan() || bias == f32::INFINITY {
                return Err(SamplerError::InvalidBias { token, bias });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_llama_cpp_s() {
        let c = SamplerConfig::default();
        assert_eq!(
            (c.temperature, c.top_k, c.top_p, c.min_p),
            (0.8, 40, 0.95, 0.05)
        );
        assert_eq!(
            (c.repeat_penalty, c.frequency_penalty, c.presence_penalty),
            (1.0, 0.0, 0.0)
        );
        assert_eq!((c.penalty_last_n, c.seed), (64, None));
        assert!(c.validate().is_ok());
        assert!(!c.has_penalties() && !c.is_greedy());
        assert!(SamplerConfig::greedy().is_greedy());
    }

    #[test]
    fn missing_fields_take_defaults_and_round_trip() {
        let c: SamplerConfig =
            serde_json::from_str(r#"{"top_k": 5, "logit_bias": [[3, -100.0]]}"#).unwrap();
        assert_eq!(
            c,
            SamplerConfig {
                top_k: 5,
                logit_bias: vec![(3, -100.0)],
                ..SamplerConfig::default()
            }
        );
        let back: SamplerConfig =
            serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn out_of_range_settings_are_refused_by_name() {
        let bad = |c: SamplerConfig, name: &str| match c.validate() {
            Err(SamplerError::InvalidSetting { name: n, .. }) => assert_eq!(n, name),
            other => panic!("{name}: expected an error, got {other:?}"),
        };
        let d = SamplerConfig::default;
        bad(
            SamplerConfig {
                temperature: -0.1,
                ..d()
            },
            "temperature",
        );
        bad(
            SamplerConfig {
                temperature: f32::NAN,
                ..d()
            },
            "temperature",
        );
        bad(
            SamplerConfig {
                temperature: f32::INFINITY,
                ..d()
            },
            "temperature",
        );
        bad(SamplerConfig { top_p: 0.0, ..d() }, "top_p");
        bad(SamplerConfig { top_p: 1.01, ..d() }, "top_p");
        bad(
            SamplerConfig {
                top_p: f32::NAN,
                ..d()
            },
            "top_p",
        );
        bad(
            SamplerConfig {
                min_p: -0.01,
                ..d()
            },
            "min_p",
        );
        bad(SamplerConfig { min_p: 1.5, ..d() }, "min_p");
        bad(
            SamplerConfig {
                repeat_penalty: 0.0,
                ..d()
            },
            "repeat_penalty",
        );
        bad(
            SamplerConfig {
                frequency_penalty: f32::NAN,
                ..d()
            },
            "frequency_penalty",
        );
        bad(
            SamplerConfig {
                presence_penalty: f32::NEG_INFINITY,
                ..d()
            },
            "presence_penalty",
        );
        let msg = SamplerConfig { top_p: 1.5, ..d() }
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("top_p") && msg.contains("1.5") && msg.contains("(0, 1]"),
            "{msg}"
        );
        // Edges that are allowed.
        for ok in [
            SamplerConfig {
                temperature: 0.0,
                top_p: 1.0,
                min_p: 1.0,
                ..d()
            },
            SamplerConfig {
                min_p: 0.0,
                frequency_penalty: -2.0,
                ..d()
            },
            SamplerConfig {
                logit_bias: vec![(1, f32::NEG_INFINITY), (2, 1e6)],
                ..d()
            },
        ] {
            assert!(ok.validate().is_ok(), "{ok:?}");
        }
    }

    #[test]
    fn nan_or_positive_infinite_bias_is_refused() {
        for bias in [f32::NAN, f32::INFINITY] {
            let c = SamplerConfig {
                logit_bias: vec![(7, bias)],
                ..SamplerConfig::default()
            };
            assert!(matches!(
                c.validate(),
                Err(SamplerError::InvalidBias { token: 7, .. })
            ));
        }
    }
}
