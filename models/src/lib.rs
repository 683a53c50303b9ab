//! The model zoo: known architectures built directly as pock IR.
//!
//! A model is named by a spec string, `zoo:NAME` or `zoo:NAME:key=value,key=value`, and
//! [`build`] turns it into a [`ForwardGraph`] for one batch size. Every builder produces the
//! forward pass in its training form (BatchNorm with batch statistics) with a single input tensor
//! named `input` (`[batch, ...]`, `f32`) and a single output: logits `[batch, classes]` for
//! classification, `[batch, outputs]` for regression.
//!
//! Parameter and running-statistic names follow PyTorch's `state_dict` keys for the same
//! architecture (torchvision's for `mobilenetv2` and `resnet18`), so later stages can select
//! parameters by name (`layer4.*`, `classifier.1.weight`) and checkpoints line up with PyTorch's.
//! Node names follow the module path (`features.0.0`); a bias added after a convolution or matrix
//! product is its own node, `<module>.bias_add`.
//!
//! Initial values are deterministic: each parameter draws from its own ChaCha8 stream keyed by
//! the seed and the parameter's name, so one parameter's values do not depend on the others
//! (changing `classes` leaves every convolution's initial weights unchanged). The distributions
//! are the ones PyTorch and torchvision use, see [`builder::WeightInit`].
//!
//! What this crate does not do: it does not attach a loss, differentiate, or plan memory (that is
//! the compiler's job, starting at [`ForwardGraph::into_training`]), and it does not load
//! pretrained weights.

pub mod builder;
mod cnn;
mod mlp;
mod mobilenetv2;
mod resnet;
mod spec;

use pock_compiler::{CompileError, ForwardGraph};

pub use spec::Params;

/// One `key=value` setting a model accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    pub key: &'static str,
    pub default: &'static str,
    pub help: &'static str,
}

/// A model of the zoo, as listed by [`catalog`] and `pock compile --help`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelInfo {
    pub name: &'static str,
    pub summary: &'static str,
    pub keys: &'static [KeyInfo],
}

/// Why a model spec could not be turned into a graph.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model spec '{spec}' does not name a zoo model: zoo specs look like zoo:NAME or zoo:NAME:key=value,key=value (for example zoo:cnn:classes=10); known models: {known}")]
    NotZoo { spec: String, known: String },
    #[error("unknown zoo model '{name}' in '{spec}'; known models: {known}")]
    UnknownModel { spec: String, name: String, known: String },
    #[error("zoo model '{model}' has no key '{key}'; valid keys: {valid}")]
    UnknownKey { model: &'static str, key: String, valid: String },
    #[error("bad value '{value}' for key '{key}' of zoo model '{model}': expected {expected}")]
    BadValue { model: &'static str, key: &'static str, value: String, expected: String },
    #[error("malformed model spec '{spec}': {message}")]
    Malformed { spec: String, message: String },
    #[error("batch size must be at least 1 (building '{spec}')")]
    ZeroBatch { spec: String },
    #[error("building the model graph failed: {0}")]
    Graph(#[from] CompileError),
    #[error("'{spec}' is too large: {message}; the zoo builds models of at most {max} parameters, use smaller settings")]
    TooLarge { spec: String, message: String, max: u64 },
}

const MLP_KEYS: &[KeyInfo] = &[
    KeyInfo { key: "inputs", default: "2", help: "input features per sample" },
    KeyInfo { key: "hidden", default: "64", help: "units per hidden layer" },
    KeyInfo { key: "depth", default: "2", help: "number of hidden layers (Linear + ReLU each); 0 gives a linear model" },
    KeyInfo { key: "classes", default: "2", help: "output classes (task=classification)" },
    KeyInfo { key: "task", default: "classification", help: "classification (softmax cross-entropy) or regression (mean squared error)" },
    KeyInfo { key: "outputs", default: "1", help: "output values per sample (task=regression)" },
];

const CNN_KEYS: &[KeyInfo] = &[
    KeyInfo { key: "channels", default: "1", help: "input image channels" },
    KeyInfo { key: "size", default: "28", help: "input image height and width (at least 4)" },
    KeyInfo { key: "classes", default: "4", help: "output classes" },
    KeyInfo { key: "width", default: "16", help: "channels of the first conv layer (the next two have 2x and 4x)" },
];

const MOBILENETV2_KEYS: &[KeyInfo] = &[
    KeyInfo { key: "classes", default: "1000", help: "output classes" },
    KeyInfo { key: "size", default: "224", help: "input image height and width" },
    KeyInfo { key: "width", default: "1.0", help: "width multiplier applied to every layer's channels (0.25, 0.5, 1.0, ... up to 4)" },
    KeyInfo { key: "channels", default: "3", help: "input image channels" },
];

const RESNET18_KEYS: &[KeyInfo] = &[
    KeyInfo { key: "classes", default: "1000", help: "output classes" },
    KeyInfo { key: "size", default: "224", help: "input image height and width" },
    KeyInfo { key: "channels", default: "3", help: "input image channels" },
];

const CATALOG: &[ModelInfo] = &[
    ModelInfo { name: "mlp", summary: "multi-layer perceptron: Linear/ReLU stack (layers.N)", keys: MLP_KEYS },
    ModelInfo {
        name: "cnn",
        summary: "small conv net for the demo: 3 x (conv3x3, BatchNorm, ReLU), 2 max-pools, global average pool, linear",
        keys: CNN_KEYS,
    },
    ModelInfo { name: "mobilenetv2", summary: "torchvision MobileNetV2 (inverted residuals, ReLU6, BatchNorm)", keys: MOBILENETV2_KEYS },
    ModelInfo { name: "resnet18", summary: "torchvision ResNet-18 (BasicBlocks, BatchNorm)", keys: RESNET18_KEYS },
];

/// Every model of the zoo with its keys and their defaults.
pub fn catalog() -> &'static [ModelInfo] {
    CATALOG
}

/// A readable listing of the zoo for `pock compile --help`.
pub fn help_text() -> String {
    let mut out = String::from("Zoo models (MODEL = zoo:NAME or zoo:NAME:key=value,key=value):\n");
    for model in CATALOG {
        out.push_str(&format!("\n  zoo:{:<12} {}\n", model.name, model.summary));
        for k in model.keys {
            let setting = format!("{}={}", k.key, k.default);
            out.push_str(&format!("      {setting:<22} {}\n", k.help));
        }
    }
    out.push_str("\nExample: zoo:mobilenetv2:classes=10,size=96,width=0.5\n");
    out
}

/// Builds the forward graph of a zoo model for `batch` samples per step, with initial values drawn
/// from `seed`.
pub fn build(spec: &str, batch: usize, seed: u64) -> Result<ForwardGraph, ModelError> {
    let params = Params::parse(spec)?;
    if batch == 0 {
        return Err(ModelError::ZeroBatch { spec: spec.to_string() });
    }
    builder::reset_parameter_budget();
    let built = match params.model().name {
        "mlp" => mlp::build(&params, batch, seed),
        "cnn" => cnn::build(&params, batch, seed),
        "mobilenetv2" => mobilenetv2::build(&params, batch, seed),
        "resnet18" => resnet::build_resnet18(&params, batch, seed),
        other => unreachable!("catalog model '{other}' has no builder"),
    };
    // An oversized parameter is replaced by an empty one so nothing large is allocated; the
    // shape errors that follows from it are not the user's problem, the size is.
    if let Some(message) = builder::take_parameter_overflow() {
        return Err(ModelError::TooLarge { spec: spec.to_string(), message, max: builder::MAX_PARAMETERS });
    }
    let mut forward = built?;
    forward.name = spec.to_string();
    Ok(forward)
}

fn known_models() -> String {
    CATALOG.iter().map(|m| m.name).collect::<Vec<_>>().join(", ")
}
