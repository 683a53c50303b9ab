//! Update schemes: which parameters a plan trains, decided at compile time.
//!
//! A scheme freezes every parameter it does not select (`Role::Parameter { trainable: false }`),
//! so frozen parameters move to the weight section and autodiff, which differentiates only what
//! depends on a trainable parameter, emits no backward op for them.
//!
//! A *layer* is the set of parameters that share a name up to their last `.` (the module path in
//! torchvision and ONNX names: `features.17.conv.2.weight` and `features.17.conv.2.bias` are one
//! layer; a conv and the BatchNorm after it are two). A name without a `.` is a layer of its own.
//! Layers are ordered by the first forward node of the training program that reads one of their
//! parameters. The *classifier* is the last layer in that order.
//!
//! Schemes see the parameters after BatchNorm folding (`--batch-norm fold`, the default; see
//! [`crate::fold_norm`]): a folded conv keeps its weight's name (`features.0.0.weight`, now
//! holding the BatchNorm's scale too), and its folded bias is named as the BatchNorm's bias
//! (`features.0.1.bias`), so `bias` and `*.bias` select it and the conv and its BatchNorm are still
//! two layers. The BatchNorm's own weight (gamma) no longer exists, so a glob naming it alone
//! selects nothing.

use std::collections::HashMap;

use crate::error::{CompileError, Result};
use crate::ir::{Graph, Phase, Program, Role, TensorId};

/// The preset part of a scheme (`--update`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdatePreset {
    /// Every parameter.
    Full,
    /// Every parameter named `*.bias` (or `bias`), plus the classifier.
    Bias,
    /// The last K layers.
    Last(usize),
}

/// Which parameters a plan trains: the union of a preset and of the parameters whose names match
/// one of the globs. With neither, every parameter is trained.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct UpdateScheme {
    pub preset: Option<UpdatePreset>,
    /// Globs over parameter names: `*` any run of characters (dots included), `?` one character,
    /// `[abc]`, `[a-z]`, `[!a-z]` one character of (or not of) a class.
    pub train: Vec<String>,
}

impl UpdateScheme {
    /// Every parameter trains.
    pub fn is_full(&self) -> bool {
        self.train.is_empty() && matches!(self.preset, None | Some(UpdatePreset::Full))
    }
}

impl std::str::FromStr for UpdatePreset {
    type Err = CompileError;

    /// Parses `full`, `bias` or `last:K` (K >= 1).
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "full" => Ok(UpdatePreset::Full),
            "bias" => Ok(UpdatePreset::Bias),
            _ => match s.strip_prefix("last:").map(str::parse::<usize>) {
                Some(Ok(k)) if k >= 1 => Ok(UpdatePreset::Last(k)),
                _ => Err(CompileError::Option(format!(
                    "--update '{s}' is not a scheme; use full, bias or last:K with K >= 1 (for example last:2)"
                ))),
            },
        }
    }
}

/// Checks that a glob is well formed (every `[` closed, no empty class).
pub fn check_glob(glob: &str) -> Result<()> {
    let chars: Vec<char> = glob.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '[' {
            match class_end(&chars, i) {
                Some(end) => i = end,
                None => {
                    return Err(CompileError::Option(format!(
                        "--train '{glob}': the '[' at character {} has no closing ']' (write a class as [a-z] or [6-8])",
                        i + 1
                    )))
                }
            }
        }
        i += 1;
    }
    Ok(())
}

/// Whether `name` matches `glob` as a whole (see [`UpdateScheme::train`]).
pub fn glob_matches(glob: &str, name: &str) -> bool {
    let g: Vec<char> = glob.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // Iterative matching with one backtrack point for the last `*`: linear in practice and never
    // exponential, because a later `*` makes the earlier choice irrelevant.
    let (mut gi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        let step = match g.get(gi) {
            Some('*') => {
                star = Some((gi, ni));
                gi += 1;
                continue;
            }
            Some('?') => Some(gi + 1),
            Some('[') => match class_end(&g, gi) {
                Some(end) if class_contains(&g[gi + 1..end], n[ni]) => Some(end + 1),
                Some(_) => None,
                // An unclosed `[` matches itself literally.
                None => (n[ni] == '[').then_some(gi + 1),
            },
            Some(&c) => (c == n[ni]).then_some(gi + 1),
            None => None,
        };
        match (step, star) {
            (Some(next), _) => {
                gi = next;
                ni += 1;
            }
            (None, Some((sg, sn))) => {
                gi = sg + 1;
                ni = sn + 1;
                star = Some((sg, sn + 1));
            }
            (None, None) => return false,
        }
    }
    g[gi..].iter().all(|&c| c == '*')
}

/// The index of the `]` that closes the class opened at `open`; a `]` right after `[` or `[!` is
/// a member, as in shell globs.
fn class_end(g: &[char], open: usize) -> Option<usize> {
    let mut i = open + 1;
    if matches!(g.get(i), Some('!' | '^')) {
        i += 1;
    }
    if g.get(i) == Some(&']') {
        i += 1;
    }
    (i..g.len()).find(|&j| g[j] == ']')
}

fn class_contains(class: &[char], c: char) -> bool {
    let (negated, body) = match class.first() {
        Some('!' | '^') => (true, &class[1..]),
        _ => (false, class),
    };
    let mut i = 0;
    let mut hit = false;
    while i < body.len() {
        if i + 2 < body.len() && body[i + 1] == '-' {
            hit |= body[i] <= c && c <= body[i + 2];
            i += 3;
        } else {
            hit |= body[i] == c;
            i += 1;
        }
    }
    hit != negated
}

/// The layer a parameter belongs to: its name up to the last `.`.
pub fn layer_of(name: &str) -> &str {
    name.rsplit_once('.').map_or(name, |(layer, _)| layer)
}

/// The model's layers in graph order, each with its parameters (see the module documentation).
pub fn layers(graph: &Graph) -> Vec<(String, Vec<TensorId>)> {
    let mut order: Vec<(String, Vec<TensorId>)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let nodes = graph.nodes.iter().filter(|n| n.program == Program::Train && n.phase == Phase::Forward);
    for node in nodes {
        for &t in &node.inputs {
            if !matches!(graph.tensor(t).role, Role::Parameter { .. }) {
                continue;
            }
            let layer = layer_of(&graph.tensor(t).name).to_string();
            let i = *index.entry(layer.clone()).or_insert_with(|| {
                order.push((layer, Vec::new()));
                order.len() - 1
            });
            if !order[i].1.contains(&t) {
                order[i].1.push(t);
            }
        }
    }
    order
}

/// Freezes every parameter `scheme` does not select. Returns the number of trainable parameters
/// left; selecting nothing is an error that lists some parameter names.
pub fn apply(graph: &mut Graph, scheme: &UpdateScheme) -> Result<usize> {
    for g in &scheme.train {
        check_glob(g)?;
    }
    let params: Vec<TensorId> = graph.trainable_parameters();
    if scheme.is_full() {
        return Ok(params.len());
    }
    let layers = layers(graph);
    let mut selected = vec![false; graph.tensors.len()];
    match scheme.preset {
        None => {}
        Some(UpdatePreset::Full) => params.iter().for_each(|p| selected[p.index()] = true),
        Some(UpdatePreset::Bias) => {
            for &p in &params {
                let name = &graph.tensor(p).name;
                if name == "bias" || name.ends_with(".bias") {
                    selected[p.index()] = true;
                }
            }
            if let Some((_, classifier)) = layers.last() {
                classifier.iter().for_each(|p| selected[p.index()] = true);
            }
        }
        Some(UpdatePreset::Last(k)) => {
            for (_, ps) in layers.iter().rev().take(k) {
                ps.iter().for_each(|p| selected[p.index()] = true);
            }
        }
    }
    for &p in &params {
        if scheme.train.iter().any(|g| glob_matches(g, &graph.tensor(p).name)) {
            selected[p.index()] = true;
        }
    }
    let mut kept = 0;
    for &p in &params {
        if selected[p.index()] {
            kept += 1;
        } else {
            graph.tensor_mut(p).role = Role::Parameter { trainable: false };
        }
    }
    if kept == 0 {
        let names: Vec<&str> = params.iter().take(6).map(|&p| graph.tensor(p).name.as_str()).collect();
        let more = if params.len() > names.len() { format!(", ... ({} in all)", params.len()) } else { String::new() };
        return Err(CompileError::NothingTrainable {
            hint: format!(
                ": the update scheme selects none of the model's parameters ({}{more}); check the --train globs against these names",
                names.join(", ")
            ),
        });
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_whole_names() {
        assert!(glob_matches("*.bias", "features.1.conv.0.1.bias"));
        assert!(!glob_matches("*.bias", "features.1.conv.0.1.weight"));
        assert!(glob_matches("features.1[6-8].*", "features.17.conv.0.0.weight"));
        assert!(!glob_matches("features.1[6-8].*", "features.15.conv.0.0.weight"));
        assert!(!glob_matches("features.1[6-8].*", "features.1.conv.0.0.weight"));
        assert!(glob_matches("fc.?eight", "fc.weight"));
        assert!(!glob_matches("fc.?eight", "fc.eight"));
        assert!(glob_matches("layer[!1].*", "layer2.0.conv1.weight"));
        assert!(!glob_matches("layer[!1].*", "layer1.0.conv1.weight"));
        assert!(glob_matches("[a-c]*", "bn1.bias"));
        assert!(glob_matches("*", ""));
        assert!(glob_matches("a*b*c", "a.x.b.y.c"));
        assert!(!glob_matches("a*b*c", "a.x.b.y.d"));
        assert!(!glob_matches("fc", "fc.weight"));
        assert!(glob_matches("[]]x", "]x"));
    }

    #[test]
    fn malformed_globs_and_presets_are_errors() {
        assert!(check_glob("features.[1").is_err());
        assert!(check_glob("features.[1-3].*").is_ok());
        assert!("last:0".parse::<UpdatePreset>().is_err());
        assert!("top".parse::<UpdatePreset>().is_err());
        assert_eq!("last:3".parse::<UpdatePreset>().unwrap(), UpdatePreset::Last(3));
    }

    #[test]
    fn layers_are_name_prefixes() {
        assert_eq!(layer_of("features.17.conv.2.weight"), "features.17.conv.2");
        assert_eq!(layer_of("onnx_weight"), "onnx_weight");
    }
}
