//! Learning-rate schedules. The learning rate is a runtime scalar of every plan, so a schedule is
//! a host-side function of the optimizer step and never needs recompilation.

use std::fmt;

/// `NAME[:key=value,...]`: `constant`, `step:every=N,gamma=G`, `cosine[:total=N,min=LR]`, each
/// optionally with `warmup=N` (linear warm-up from 0 over the first N steps).
#[derive(Clone, Debug, PartialEq)]
pub struct LrSchedule {
    pub kind: ScheduleKind,
    pub warmup: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ScheduleKind {
    Constant,
    /// Multiply by `gamma` every `every` steps.
    Step {
        every: u64,
        gamma: f32,
    },
    /// Cosine decay from the base rate to `min` over `total` steps (`None`: the end of this run).
    Cosine {
        total: Option<u64>,
        min: f32,
    },
}

pub const HELP: &str = "constant | step:every=N,gamma=G | cosine[:total=N,min=LR]; add warmup=N to any (e.g. cosine:warmup=100)";

#[derive(Debug, thiserror::Error)]
#[error("bad --lr-schedule '{spec}': {message} (expected {HELP})")]
pub struct ScheduleError {
    spec: String,
    message: String,
}

impl LrSchedule {
    pub fn parse(spec: &str) -> Result<Self, ScheduleError> {
        let fail = |message: String| ScheduleError { spec: spec.to_string(), message };
        let (name, rest) = spec.split_once(':').unwrap_or((spec, ""));
        let mut keys: Vec<(&str, &str)> = Vec::new();
        for kv in rest.split(',').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').ok_or_else(|| fail(format!("'{kv}' is not key=value")))?;
            keys.push((k.trim(), v.trim()));
        }
        let mut take = |key: &str| keys.iter().position(|(k, _)| *k == key).map(|i| keys.remove(i).1.to_string());
        fn num<T: std::str::FromStr>(
            key: &str,
            v: Option<String>,
            fail: &dyn Fn(String) -> ScheduleError,
        ) -> Result<Option<T>, ScheduleError> {
            v.map(|v| v.parse::<T>().map_err(|_| fail(format!("{key}={v} is not a valid number")))).transpose()
        }
        let warmup = num::<u64>("warmup", take("warmup"), &fail)?.unwrap_or(0);
        let kind = match name {
            "constant" => ScheduleKind::Constant,
            "step" => {
                let every = num::<u64>("every", take("every"), &fail)?.ok_or_else(|| fail("step needs every=N".into()))?;
                let gamma = num::<f32>("gamma", take("gamma"), &fail)?.unwrap_or(0.1);
                if every == 0 {
                    return Err(fail("every must be at least 1".into()));
                }
                if !(gamma.is_finite() && gamma > 0.0) {
                    return Err(fail(format!("gamma={gamma} is out of range: it must be a finite number > 0")));
                }
                ScheduleKind::Step { every, gamma }
            }
            "cosine" => {
                let total = num::<u64>("total", take("total"), &fail)?;
                let min = num::<f32>("min", take("min"), &fail)?.unwrap_or(0.0);
                if total == Some(0) {
                    return Err(fail("total=0 would train at the minimum rate from the first step; total must be at least 1".into()));
                }
                if !(min.is_finite() && min >= 0.0) {
                    return Err(fail(format!("min={min} is out of range: it must be a finite number >= 0")));
                }
                ScheduleKind::Cosine { total, min }
            }
            other => return Err(fail(format!("unknown schedule '{other}'"))),
        };
        if let Some((k, _)) = keys.first() {
            return Err(fail(format!("unknown key '{k}' for {name}")));
        }
        Ok(LrSchedule { kind, warmup })
    }

    /// The learning rate for optimizer step `step` (counting from 0); `run_end` is the step at
    /// which this run ends (the cosine horizon when none is given).
    pub fn rate(&self, base: f32, step: u64, run_end: u64) -> f32 {
        let scheduled = match self.kind {
            ScheduleKind::Constant => base,
            ScheduleKind::Step { every, gamma } => base * gamma.powi((step / every) as i32),
            ScheduleKind::Cosine { total, min } => {
                let total = total.unwrap_or(run_end).max(1);
                let t = (step.min(total) as f64) / total as f64;
                min + (base - min) * (0.5 * (1.0 + (std::f64::consts::PI * t).cos())) as f32
            }
        };
        if step < self.warmup {
            scheduled * (step + 1) as f32 / self.warmup as f32
        } else {
            scheduled
        }
    }
}

impl fmt::Display for LrSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            ScheduleKind::Constant => write!(f, "constant")?,
            ScheduleKind::Step { every, gamma } => write!(f, "step:every={every},gamma={gamma}")?,
            ScheduleKind::Cosine { total, min } => {
                write!(f, "cosine:min={min}")?;
                if let Some(t) = total {
                    write!(f, ",total={t}")?;
                }
            }
        }
        if self.warmup > 0 {
            write!(f, " (warmup {})", self.warmup)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_evaluates_schedules() {
        let c = LrSchedule::parse("constant").unwrap();
        assert_eq!(c.rate(0.1, 500, 1000), 0.1);
        let s = LrSchedule::parse("step:every=10,gamma=0.5").unwrap();
        assert_eq!(s.rate(1.0, 9, 100), 1.0);
        assert_eq!(s.rate(1.0, 10, 100), 0.5);
        assert_eq!(s.rate(1.0, 25, 100), 0.25);
        let cos = LrSchedule::parse("cosine:total=100").unwrap();
        assert_eq!(cos.rate(1.0, 0, 7), 1.0);
        assert!((cos.rate(1.0, 50, 7) - 0.5).abs() < 1e-6);
        assert!(cos.rate(1.0, 100, 7).abs() < 1e-6);
        let w = LrSchedule::parse("constant:warmup=4").unwrap();
        assert_eq!([0, 1, 2, 3, 4].map(|s| w.rate(1.0, s, 10)), [0.25, 0.5, 0.75, 1.0, 1.0]);
    }

    #[test]
    fn rejects_bad_specs_with_reasons() {
        for (spec, needle) in [
            ("linear", "unknown schedule"),
            ("step", "every=N"),
            ("step:every=x", "not a valid number"),
            ("cosine:foo=1", "unknown key"),
            ("step:every=0", "at least 1"),
            ("cosine:total=0", "at least 1"),
            ("cosine:min=nan", "finite"),
            ("cosine:min=-1", ">= 0"),
            ("step:every=3,gamma=0", "> 0"),
            ("step:every=3,gamma=inf", "finite"),
        ] {
            let e = LrSchedule::parse(spec).unwrap_err().to_string();
            assert!(e.contains(needle), "{spec}: {e}");
        }
    }
}
