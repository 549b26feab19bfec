//! `CandleDevice`: which candle device a model runs on, by name (`cpu`,
//! `cuda:N`, `metal:N`) — known whether or not the `candle` feature is
//! compiled in, so that options and command lines parse the same either way.

/// Which candle device to run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CandleDevice {
    /// The CPU (candle's own kernels, rayon threads).
    #[default]
    Cpu,
    /// A CUDA GPU by ordinal (needs the `cuda` feature).
    Cuda(usize),
    /// A Metal GPU by ordinal (needs the `metal` feature).
    Metal(usize),
}

impl std::str::FromStr for CandleDevice {
    type Err = String;

    /// `cpu`, `cuda` / `cuda:N`, `metal` / `metal:N`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("bad device {s:?}: expected cpu, cuda:N or metal");
        let ordinal = |rest: &str| match rest {
            "" => Some(0),
            n => n.strip_prefix(':')?.parse().ok(),
        };
        if s == "cpu" {
            Ok(CandleDevice::Cpu)
        } else if let Some(rest) = s.strip_prefix("cuda") {
            ordinal(rest).map(CandleDevice::Cuda).ok_or_else(bad)
        } else if let Some(rest) = s.strip_prefix("metal") {
            ordinal(rest).map(CandleDevice::Metal).ok_or_else(bad)
        } else {
            Err(bad())
        }
    }
}

impl std::fmt::Display for CandleDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CandleDevice::Cpu => write!(f, "cpu"),
            CandleDevice::Cuda(i) => write!(f, "cuda:{i}"),
            CandleDevice::Metal(i) => write!(f, "metal:{i}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::CandleDevice;

    #[test]
    fn devices_parse_and_print() {
        for (s, d) in [
            ("cpu", CandleDevice::Cpu),
            ("cuda", CandleDevice::Cuda(0)),
            ("cuda:3", CandleDevice::Cuda(3)),
            ("metal", CandleDevice::Metal(0)),
            ("metal:1", CandleDevice::Metal(1)),
        ] {
            assert_eq!(s.parse::<CandleDevice>(), Ok(d));
            assert_eq!(d.to_string().parse::<CandleDevice>(), Ok(d));
        }
        for bad in ["", "gpu", "cuda:", "cuda:x", "cuda1", "metal:-1"] {
            assert!(bad.parse::<CandleDevice>().is_err(), "{bad}");
        }
    }
}
