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
//!
//! # Partial-channel updates and scheme files
//!
//! A scheme can also train part of a weight: some of its *output channels*, the rows along
//! axis 0 (`[O, C/groups, KH, KW]` for a convolution). The rule, the same everywhere: a fraction
//! `f` of a weight with `C` output channels selects the first `ceil(f * C)` channels; explicit
//! indices select those channels, and must form one contiguous run (for example 8 to 15), because
//! pock computes the gradient of one contiguous block of rows and updates it in place, without a
//! gather or scatter. A weight stays one tensor: its gradient is computed for the selected rows
//! only (`Conv2dGradWeightRows`, from those channels of the output gradient), its optimizer
//! update writes those rows only and keeps optimizer state for them only (`SgdUpdateRows`,
//! `AdamUpdateRows`), and its other rows keep their exact bits. Partial channels apply to
//! weights read by convolutions only (the weight must be input 1 of every `Conv2d` that reads it
//! and read by nothing else); a matrix weight (`MatMul`, whether `[O, I]` or `[I, O]`) is refused
//! with a message saying so, and trains whole through `train` globs instead.
//!
//! A scheme file (`pock compile --scheme scheme.toml`) holds every part of a scheme:
//!
//! ```toml
//! update = "bias"            # optional: a preset, as --update
//! train = ["classifier.*"]   # optional: globs, as --train
//!
//! [[channels]]               # any number of these
//! params = "features.1[4-7].conv.0.0.weight"   # a glob over parameter names
//! fraction = "1/4"           # one of "1/8", "1/4", "1/2", "1"
//! # indices = [0, 1, 2, 3]   # or: explicit output channels (one contiguous run), not both
//! ```
//!
//! Everything adds up: a parameter trains whole when the preset or a glob selects it (a
//! `[[channels]]` entry then changes nothing for it), and in part when only a `[[channels]]`
//! entry does. A file combines with `--update` and `--train` the same way; the file and the
//! flags may name the same preset but not two different ones.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use pock_engine::ops::{ConvOp, Op};
use serde::Deserialize;

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
    /// Parameters trained on some of their output channels (see the module documentation).
    pub channels: Vec<ChannelRule>,
}

/// Some output channels of the parameters whose names match `params` (a glob, as in `train`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelRule {
    pub params: String,
    pub select: ChannelSelect,
}

/// Which output channels a [`ChannelRule`] selects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChannelSelect {
    /// The first `ceil(C / denominator)` of `C` channels; the denominator is 1, 2, 4 or 8.
    Fraction { denominator: usize },
    /// These channels (one contiguous run, in any order, no repeats).
    Indices(Vec<usize>),
}

impl ChannelSelect {
    /// The selected rows of a weight with `channels` output channels, by the module's rule, or
    /// a message saying why the selection does not fit that weight.
    pub fn rows(&self, channels: usize) -> std::result::Result<Range<usize>, String> {
        match self {
            ChannelSelect::Fraction { denominator } => Ok(0..channels.div_ceil(*denominator)),
            ChannelSelect::Indices(indices) => {
                let mut sorted = indices.clone();
                sorted.sort_unstable();
                let (Some(&first), Some(&last)) = (sorted.first(), sorted.last()) else {
                    return Err("`indices` is empty; list at least one output channel".into());
                };
                if last >= channels {
                    return Err(format!(
                        "channel {last} does not exist: the weight has {channels} output channels (0 to {})",
                        channels - 1
                    ));
                }
                if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
                    return Err(format!("channel {} is listed twice", w[0]));
                }
                if last - first + 1 != sorted.len() {
                    return Err(format!(
                        "indices {indices:?} are not one contiguous run; pock updates one contiguous block of output channels per weight, so list a run such as [{first}, {}, ..., {}] or use a fraction",
                        first + 1,
                        first + sorted.len() - 1
                    ));
                }
                Ok(first..last + 1)
            }
        }
    }
}

impl std::str::FromStr for ChannelSelect {
    type Err = CompileError;

    /// Parses a fraction: `1/8`, `1/4`, `1/2` or `1`.
    fn from_str(s: &str) -> Result<Self> {
        let denominator = match s.trim() {
            "1" | "1/1" => 1,
            "1/2" => 2,
            "1/4" => 4,
            "1/8" => 8,
            _ => return Err(CompileError::Option(format!("channel fraction '{s}' is not one of \"1/8\", \"1/4\", \"1/2\", \"1\""))),
        };
        Ok(ChannelSelect::Fraction { denominator })
    }
}

impl UpdateScheme {
    /// Every parameter trains.
    pub fn is_full(&self) -> bool {
        self.train.is_empty() && self.channels.is_empty() && matches!(self.preset, None | Some(UpdatePreset::Full))
    }

    /// Parses a scheme file (the format is in the module documentation). `source` names the file
    /// in error messages.
    pub fn from_toml(text: &str, source: &str) -> Result<Self> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            update: Option<String>,
            #[serde(default)]
            train: Vec<String>,
            #[serde(default)]
            channels: Vec<Channels>,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Channels {
            params: String,
            fraction: Option<String>,
            indices: Option<Vec<usize>>,
        }
        let file: File = toml::from_str(text).map_err(|e| {
            // toml's own rendering spans several lines (it quotes the source); errors are one line.
            let line = e.span().map_or(String::new(), |s| format!(", line {}", text[..s.start.min(text.len())].lines().count().max(1)));
            CompileError::Option(format!(
                "scheme file {source}{line}: {}; the keys are update, train and [[channels]] tables with params and fraction or indices",
                e.message().trim_end()
            ))
        })?;
        let preset = file.update.as_deref().map(str::parse).transpose()?;
        let mut channels = Vec::with_capacity(file.channels.len());
        for (i, c) in file.channels.into_iter().enumerate() {
            let entry = format!("scheme file {source}, [[channels]] entry {} (params = \"{}\")", i + 1, c.params);
            check_glob(&c.params).map_err(|e| CompileError::Option(format!("{entry}: {e}")))?;
            let select = match (c.fraction, c.indices) {
                (Some(f), None) => f.parse().map_err(|e: CompileError| CompileError::Option(format!("{entry}: {e}")))?,
                (None, Some(indices)) => ChannelSelect::Indices(indices),
                _ => return Err(CompileError::Option(format!("{entry}: give exactly one of fraction = \"1/4\" or indices = [..]"))),
            };
            channels.push(ChannelRule { params: c.params, select });
        }
        Ok(UpdateScheme { preset, train: file.train, channels })
    }

    /// The union of two schemes (a scheme file and the command-line flags). Two different presets
    /// are an error: a scheme has at most one.
    pub fn union(self, other: UpdateScheme) -> Result<Self> {
        let preset = match (self.preset, other.preset) {
            (Some(a), Some(b)) if a != b => {
                return Err(CompileError::Option(format!(
                    "two update presets ({a:?} and {b:?}): a scheme has one; keep one and name the other's parameters with train globs"
                )))
            }
            (a, b) => a.or(b),
        };
        let mut train = self.train;
        train.extend(other.train);
        let mut channels = self.channels;
        channels.extend(other.channels);
        Ok(UpdateScheme { preset, train, channels })
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
    let partial = channel_rows(graph, &params, &selected, &scheme.channels)?;
    for &p in partial.keys() {
        selected[p.index()] = true;
    }
    graph.trained_rows = partial.into_iter().filter(|(p, rows)| rows.len() < graph.shape(*p)[0]).collect();
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

/// The rows each `[[channels]]` rule selects, for the parameters not already selected whole.
/// Every rule must match a parameter, no parameter may match two rules, and each matched
/// parameter must be a weight that only convolutions read (see the module documentation).
fn channel_rows(graph: &Graph, params: &[TensorId], whole: &[bool], rules: &[ChannelRule]) -> Result<BTreeMap<TensorId, Range<usize>>> {
    let mut rows: BTreeMap<TensorId, Range<usize>> = BTreeMap::new();
    let mut matched_by: HashMap<TensorId, &str> = HashMap::new();
    for rule in rules {
        check_glob(&rule.params)?;
        let matches: Vec<TensorId> = params.iter().copied().filter(|&p| glob_matches(&rule.params, &graph.tensor(p).name)).collect();
        if matches.is_empty() {
            let names: Vec<&str> = params.iter().take(6).map(|&p| graph.tensor(p).name.as_str()).collect();
            return Err(CompileError::Option(format!(
                "[[channels]] params = \"{}\" matches no parameter; parameter names look like {}",
                rule.params,
                names.join(", ")
            )));
        }
        for p in matches {
            let name = &graph.tensor(p).name;
            if let Some(other) = matched_by.insert(p, &rule.params) {
                return Err(CompileError::Option(format!(
                    "'{name}' matches two [[channels]] entries (\"{other}\" and \"{}\"); give each weight one selection",
                    rule.params
                )));
            }
            if whole[p.index()] {
                continue;
            }
            check_conv_weight(graph, p)?;
            let channels = graph.shape(p)[0];
            let r = rule.select.rows(channels).map_err(|m| CompileError::Option(format!("[[channels]] for '{name}': {m}")))?;
            rows.insert(p, r);
        }
    }
    Ok(rows)
}

/// Checks that `p` is read in the Train program's forward pass only as the weight of `Conv2d`
/// nodes, the one place a row-restricted gradient exists.
fn check_conv_weight(graph: &Graph, p: TensorId) -> Result<()> {
    let name = &graph.tensor(p).name;
    let forward = graph.nodes.iter().filter(|n| n.program == Program::Train && n.phase == Phase::Forward);
    for node in forward {
        for (pos, _) in node.inputs.iter().enumerate().filter(|(_, t)| **t == p) {
            if !(matches!(node.op, Op::Conv(ConvOp::Conv2d(_))) && pos == 1) {
                return Err(CompileError::Option(format!(
                    "'{name}' is input {pos} of {} node '{}'; partial-channel updates apply to convolution weights only: select it whole with a train glob, or use fraction = \"1\"",
                    node.op.name(),
                    node.name
                )));
            }
        }
    }
    if graph.shape(p).len() != 4 {
        return Err(CompileError::Option(format!(
            "'{name}' has shape {:?}; partial-channel updates apply to 4-D convolution weights",
            graph.shape(p)
        )));
    }
    Ok(())
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
    fn channel_selection_follows_one_rule() {
        let quarter: ChannelSelect = "1/4".parse().unwrap();
        assert_eq!(quarter.rows(96).unwrap(), 0..24);
        assert_eq!(quarter.rows(10).unwrap(), 0..3, "ceil(10 / 4)");
        assert_eq!("1/8".parse::<ChannelSelect>().unwrap().rows(1).unwrap(), 0..1);
        assert_eq!("1".parse::<ChannelSelect>().unwrap().rows(7).unwrap(), 0..7);
        assert!("1/3".parse::<ChannelSelect>().is_err());
        assert_eq!(ChannelSelect::Indices(vec![5, 3, 4]).rows(8).unwrap(), 3..6);
        assert!(ChannelSelect::Indices(vec![0, 3, 17]).rows(32).unwrap_err().contains("contiguous"));
        assert!(ChannelSelect::Indices(vec![3, 3]).rows(8).unwrap_err().contains("twice"));
        assert!(ChannelSelect::Indices(vec![8]).rows(8).unwrap_err().contains("does not exist"));
        assert!(ChannelSelect::Indices(vec![]).rows(8).is_err());
    }

    #[test]
    fn scheme_files_parse_and_combine() {
        let text = r#"
            update = "bias"
            train = ["classifier.*"]
            [[channels]]
            params = "features.1[4-7].conv.0.0.weight"
            fraction = "1/4"
            [[channels]]
            params = "features.2.conv.0.0.weight"
            indices = [4, 5, 6]
        "#;
        let s = UpdateScheme::from_toml(text, "s.toml").unwrap();
        assert_eq!(s.preset, Some(UpdatePreset::Bias));
        assert_eq!(s.train, ["classifier.*"]);
        assert_eq!(s.channels[0].select, ChannelSelect::Fraction { denominator: 4 });
        assert_eq!(s.channels[1].select, ChannelSelect::Indices(vec![4, 5, 6]));
        let cli = UpdateScheme { preset: Some(UpdatePreset::Bias), train: vec!["fc.*".into()], channels: vec![] };
        let u = s.clone().union(cli).unwrap();
        assert_eq!(u.train, ["classifier.*", "fc.*"]);
        assert_eq!(u.channels.len(), 2);
        let other = UpdateScheme { preset: Some(UpdatePreset::Last(2)), ..Default::default() };
        assert!(s.union(other).is_err());
        for bad in [
            "update = \"top\"",
            "trian = [\"x\"]",
            "[[channels]]\nparams = \"a\"",
            "[[channels]]\nparams = \"a\"\nfraction = \"1/4\"\nindices = [0]",
            "[[channels]]\nparams = \"a\"\nfraction = \"1/3\"",
            "[[channels]]\nparams = \"a[\"\nfraction = \"1/2\"",
        ] {
            let e = UpdateScheme::from_toml(bad, "s.toml").unwrap_err().to_string();
            assert!(e.contains("s.toml") || e.contains("top"), "{bad}: {e}");
        }
    }

    #[test]
    fn layers_are_name_prefixes() {
        assert_eq!(layer_of("features.17.conv.2.weight"), "features.17.conv.2");
        assert_eq!(layer_of("onnx_weight"), "onnx_weight");
    }
}
