//! Parsing of `zoo:NAME:key=value,...` specs into typed settings with the catalog's defaults.

use crate::{known_models, KeyInfo, ModelError, ModelInfo, CATALOG};

/// The largest value of any integer setting (sizes, widths, classes): with it and the largest
/// batch, every tensor size of a zoo model is far below 2^64, so no size arithmetic can wrap.
pub const MAX_SETTING: usize = 1 << 16;

/// The settings of one zoo model: the keys the spec set explicitly, every other key at its
/// catalog default.
#[derive(Clone, Debug)]
pub struct Params {
    model: &'static ModelInfo,
    /// Explicit `key=value` pairs, in spec order; each key appears at most once.
    set: Vec<(&'static str, String)>,
}

impl Params {
    /// Parses a spec. Keys are checked against the model's catalog entry here; values are
    /// checked when the builder reads them, so each model states its own valid ranges.
    pub fn parse(spec: &str) -> Result<Params, ModelError> {
        let rest = spec.strip_prefix("zoo:").ok_or_else(|| ModelError::NotZoo { spec: spec.to_string(), known: known_models() })?;
        let (name, settings) = match rest.split_once(':') {
            Some((name, settings)) => (name, Some(settings)),
            None => (rest, None),
        };
        let model = CATALOG.iter().find(|m| m.name == name).ok_or_else(|| ModelError::UnknownModel {
            spec: spec.to_string(),
            name: name.to_string(),
            known: known_models(),
        })?;
        let mut set: Vec<(&'static str, String)> = Vec::new();
        for item in settings.into_iter().flat_map(|s| s.split(',')) {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            let (key, value) = item.split_once('=').ok_or_else(|| ModelError::Malformed {
                spec: spec.to_string(),
                message: format!("setting '{item}' is not of the form key=value"),
            })?;
            let (key, value) = (key.trim(), value.trim());
            let info = model.keys.iter().find(|k| k.key == key).ok_or_else(|| ModelError::UnknownKey {
                model: model.name,
                key: key.to_string(),
                valid: model.keys.iter().map(|k| k.key).collect::<Vec<_>>().join(", "),
            })?;
            if set.iter().any(|(k, _)| *k == info.key) {
                return Err(ModelError::Malformed { spec: spec.to_string(), message: format!("key '{key}' is set twice") });
            }
            set.push((info.key, value.to_string()));
        }
        Ok(Params { model, set })
    }

    pub fn model(&self) -> &'static ModelInfo {
        self.model
    }

    /// Whether the spec set `key` explicitly.
    pub fn is_set(&self, key: &str) -> bool {
        self.set.iter().any(|(k, _)| *k == key)
    }

    /// The value of `key` as written in the spec, or its catalog default.
    pub fn raw(&self, key: &str) -> &str {
        match self.set.iter().find(|(k, _)| *k == key) {
            Some((_, v)) => v,
            None => self.info(key).default,
        }
    }

    fn info(&self, key: &str) -> &'static KeyInfo {
        // Builders only ask for keys of their own catalog entry; a miss is a bug in this crate.
        self.model
            .keys
            .iter()
            .find(|k| k.key == key)
            .unwrap_or_else(|| panic!("zoo model '{}' reads undeclared key '{key}'", self.model.name))
    }

    fn bad(&self, key: &str, expected: impl Into<String>) -> ModelError {
        ModelError::BadValue {
            model: self.model.name,
            key: self.info(key).key,
            value: self.raw(key).to_string(),
            expected: expected.into(),
        }
    }

    /// An integer setting in `[min, max]`, and never above [`MAX_SETTING`].
    pub fn usize_in(&self, key: &str, min: usize, max: usize) -> Result<usize, ModelError> {
        let max = max.min(MAX_SETTING);
        let expected = || format!("an integer in [{min}, {max}]");
        let v: usize = self.raw(key).parse().map_err(|_| self.bad(key, expected()))?;
        if v < min || v > max {
            return Err(self.bad(key, expected()));
        }
        Ok(v)
    }

    /// A finite, strictly positive real setting.
    pub fn positive_f64(&self, key: &str) -> Result<f64, ModelError> {
        match self.raw(key).parse::<f64>() {
            Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
            _ => Err(self.bad(key, "a positive number such as 0.5 or 1.0")),
        }
    }

    /// A finite real setting in `(0, max]`.
    pub fn positive_f64_up_to(&self, key: &str, max: f64) -> Result<f64, ModelError> {
        match self.raw(key).parse::<f64>() {
            Ok(v) if v.is_finite() && v > 0.0 && v <= max => Ok(v),
            _ => Err(self.bad(key, format!("a positive number up to {max}, such as 0.5 or 1.0"))),
        }
    }

    /// One of a fixed set of words.
    pub fn choice(&self, key: &str, choices: &[&'static str]) -> Result<&'static str, ModelError> {
        let v = self.raw(key);
        choices.iter().copied().find(|c| *c == v).ok_or_else(|| self.bad(key, format!("one of {}", choices.join(", "))))
    }

    /// Rejects an explicit setting that the other settings make meaningless (such as `outputs`
    /// for a classifier), so a typo in the task does not silently build a different model.
    pub fn reject_if_set(&self, key: &str, reason: &str) -> Result<(), ModelError> {
        if self.is_set(key) {
            return Err(self.bad(key, format!("the key to be left out ({reason})")));
        }
        Ok(())
    }
}
