//! The compiled training plan: what the compiler writes and the engine executes.
//!
//! A plan is plain data. Its tensors live either in the one arena (activations, gradients, inputs,
//! and a persistent prefix holding everything that survives between steps) or in the read-only
//! weight section of the file (frozen parameters, and the initial values of trainable ones).

use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

use crate::ops::Op;

/// Bump this whenever the encoding of [`Plan`] changes other than by appending an op or a family
/// (see [`crate::format`]). Version 2 groups ops in families; version 3 records the model's
/// source ([`Plan::source`]); version 4 records the BatchNorms folded into convolutions
/// ([`Plan::folded_norms`]) and the arena the unreordered schedule would need
/// ([`Plan::arena_bytes_unordered`]).
pub const FORMAT_VERSION: u32 = 4;
/// Alignment of every arena offset and of the weight section, in bytes.
pub const ALIGN: u64 = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TensorId(pub u32);

impl TensorId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DType {
    F32,
    I64,
    // Room for quantized and half-precision training in later format versions.
    F16,
    I8,
    /// One byte per element, 0 or 1 (masks, comparison results). Kernels read any non-zero byte
    /// as true and write only 0 or 1.
    Bool,
    /// One unsigned byte per element, any value. Only the mask family takes it: a packed 1-bit
    /// activation mask (`crate::ops::MaskOp`) is a `[ceil(n / 8)]` tensor of this dtype. Appended
    /// last: the variant index is the plan encoding.
    U8,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::I64 => 8,
            DType::F16 => 2,
            DType::I8 | DType::Bool | DType::U8 => 1,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::I64 => "int64",
            DType::F16 => "float16",
            DType::I8 => "int8",
            DType::Bool => "bool",
            DType::U8 => "uint8",
        }
    }
}

/// Values the host writes into the arena before running a program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RuntimeScalar {
    LearningRate,
    /// The optimizer step about to be taken, counting from 1 (Adam's bias correction).
    OptimizerStep,
}

/// What a tensor is, in the domain's terms.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Role {
    /// A model input (batch axis first).
    Input,
    /// Integer class labels or float regression targets.
    Target,
    Parameter {
        trainable: bool,
    },
    /// BatchNorm running mean / variance.
    RunningStat,
    /// Optimizer state for `param` (`momentum_buffer`, `exp_avg`, `exp_avg_sq`).
    OptimizerState {
        param: TensorId,
        slot: String,
    },
    /// A gradient summed over micro-batches (gradient accumulation).
    GradAccumulator {
        param: TensorId,
    },
    /// A constant with an initial value (for example the loss seed 1.0).
    Constant,
    RuntimeScalar(RuntimeScalar),
    /// A value computed inside a program: activation, gradient, loss, scratch.
    Transient,
    /// The `[]`-shaped f32 count of parameter updates skipped because their gradient (or the
    /// global gradient norm) was not finite. Every update op adds 1 to it when it skips, so one
    /// skipped step adds the number of parameters it skipped. Appended last: the variant index is
    /// the plan encoding.
    SkippedUpdates,
    /// The `[]` int64 step counter that seeded dropout draws its masks from; the train program
    /// adds 1 to it each run. Checkpointed, so a resumed run draws the masks it would have drawn.
    /// Appended last: the variant index is the plan encoding.
    RngCounter,
}

impl Role {
    /// Whether the tensor lives across steps and is saved in a checkpoint.
    pub fn is_checkpointed(&self) -> bool {
        matches!(
            self,
            Role::Parameter { trainable: true }
                | Role::RunningStat
                | Role::OptimizerState { .. }
                | Role::GradAccumulator { .. }
                | Role::SkippedUpdates
                | Role::RngCounter
        )
    }
}

/// Where a tensor's bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Location {
    /// `offset` bytes into the arena.
    Arena { offset: u64 },
    /// `offset` bytes into the mapped weight section (read only).
    Weights { offset: u64 },
}

/// How a persistent arena tensor is initialised when a session starts.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Init {
    /// Not initialised: written before it is read in every program.
    None,
    /// Copied from the weight section.
    FromWeights {
        offset: u64,
    },
    Fill(f32),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorInfo {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub role: Role,
    pub location: Location,
    pub init: Init,
}

impl TensorInfo {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn bytes(&self) -> u64 {
        (self.numel() * self.dtype.size()) as u64
    }
}

/// Which part of training a node belongs to (reported by `pock inspect`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    Forward,
    Backward,
    Optimizer,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    pub op: Op,
    pub inputs: Vec<TensorId>,
    pub outputs: Vec<TensorId>,
    pub phase: Phase,
    /// Scratch memory for the fast CPU kernel (im2col columns), `f32` elements in the arena.
    pub workspace: Option<Workspace>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workspace {
    pub offset: u64,
    pub elems: u64,
}

/// An ordered list of nodes and the tensors it exchanges with the host.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Program {
    pub nodes: Vec<Node>,
    /// Tensors the host writes before running (data, labels).
    pub feeds: Vec<TensorId>,
    /// Tensors the host reads afterwards (loss, logits).
    pub fetches: Vec<TensorId>,
}

/// The programs of a plan. `train` runs forward + backward (+ optimizer when gradients are not
/// accumulated); `apply` runs the optimizer after K accumulated micro-batches; `eval` computes
/// outputs and per-sample losses with frozen statistics; `infer` only outputs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Programs {
    pub train: Program,
    pub apply: Option<Program>,
    pub eval: Program,
    pub infer: Program,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Loss {
    SoftmaxCrossEntropy { classes: usize },
    Mse,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum OptimizerKind {
    Sgd { momentum: f32, dampening: f32, nesterov: bool, weight_decay: f32 },
    Adam { beta1: f32, beta2: f32, eps: f32, weight_decay: f32 },
    AdamW { beta1: f32, beta2: f32, eps: f32, weight_decay: f32 },
}

/// Training settings fixed at compile time (the learning rate is only the default: it is a
/// runtime scalar).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainingInfo {
    pub batch: usize,
    pub loss: Loss,
    pub optimizer: OptimizerKind,
    pub learning_rate: f32,
    pub accumulate: usize,
    pub clip_grad_norm: Option<f32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// The model it was compiled from (`zoo:cnn`, a file name).
    pub model: String,
    /// The target it was compiled for (`host`, `rpi4`).
    pub target: String,
    pub producer: String,
    pub tensors: Vec<TensorInfo>,
    pub programs: Programs,
    pub training: TrainingInfo,
    /// Bytes of the arena; `[0, persistent_bytes)` holds what survives between steps.
    pub arena_bytes: u64,
    pub persistent_bytes: u64,
    pub weight_bytes: u64,
    /// Where the model came from, so that `pock export` can find the ONNX graph it was compiled
    /// from and check that it is the same file.
    pub source: ModelSource,
    /// The BatchNorm layers the compiler folded into the convolution before them
    /// (`--batch-norm fold`), so that an export can write the model in its original form. The
    /// engine never reads them.
    pub folded_norms: Vec<FoldedNorm>,
    /// The arena the Train program would need in the order autodiff emitted it (the optimizer at
    /// the end, what `pock compile --no-reorder` plans), recorded at compile time so that
    /// `pock inspect` can report what reordering saved. Informational: nothing is placed by it.
    pub arena_bytes_unordered: u64,
    /// The side (CPU or GPU) of every node, when the compiler placed the plan for a target with a
    /// GPU (`pock compile --placement`); `None`: every node runs on the backend chosen at load.
    /// Not part of the postcard description: [`crate::format`] writes it after the description,
    /// so plans without it (older files) still decode, and engines that predate it ignore it.
    #[serde(skip)]
    pub placement: Option<crate::placement::Placement>,
}

/// Named float values, as the model had them before folding.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NamedValues {
    pub name: String,
    pub values: Vec<f32>,
}

/// A frozen BatchNorm folded into the convolution that feeds it. With
/// `s = gamma / sqrt(running_var + eps)` per output channel, the plan's tensor named
/// `conv_weight` holds `W * s` and the one named `beta` holds the conv's bias
/// `(b - running_mean) * s + beta` (`b` the conv's own bias, or 0); gamma, the running statistics
/// and the conv's own bias are not in the plan (they do not change while training), so they are
/// recorded here with their values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FoldedNorm {
    pub conv_weight: String,
    /// The convolution's own bias, absorbed into the folded one, if it had one.
    pub conv_bias: Option<NamedValues>,
    pub gamma: NamedValues,
    pub beta: String,
    pub running_mean: NamedValues,
    pub running_var: NamedValues,
    pub eps: f32,
}

/// Where a plan's model came from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub enum ModelSource {
    /// Built in code (a library user's graph): nothing to export but the weights.
    #[default]
    Unrecorded,
    /// A zoo spec, as given (`zoo:cnn:classes=10`).
    Zoo { spec: String },
    /// An ONNX file: its path as given to `pock compile`, and the FNV-1a 64 hash and length of the
    /// model file's own bytes (external data files are not hashed: the graph and the initializer
    /// names are what an export depends on, and hashing gigabytes of weights would slow compiles).
    Onnx { path: String, fnv1a64: u64, bytes: u64 },
}

impl Plan {
    pub fn tensor(&self, id: TensorId) -> &TensorInfo {
        &self.tensors[id.index()]
    }

    pub fn find(&self, name: &str) -> Option<TensorId> {
        self.tensors.iter().position(|t| t.name == name).map(|i| TensorId(i as u32))
    }

    pub fn runtime_scalar(&self, which: RuntimeScalar) -> Option<TensorId> {
        self.tensors.iter().position(|t| t.role == Role::RuntimeScalar(which)).map(|i| TensorId(i as u32))
    }

    pub fn all_programs(&self) -> impl Iterator<Item = (&'static str, &Program)> {
        [
            ("train", Some(&self.programs.train)),
            ("apply", self.programs.apply.as_ref()),
            ("eval", Some(&self.programs.eval)),
            ("infer", Some(&self.programs.infer)),
        ]
        .into_iter()
        .filter_map(|(n, p)| p.map(|p| (n, p)))
    }
}

/// In words, for messages and `pock inspect`: `SGD (momentum 0.9, nesterov, weight decay 0.0001)`.
impl core::fmt::Display for OptimizerKind {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            OptimizerKind::Sgd { momentum, dampening, nesterov, weight_decay } => {
                write!(f, "SGD (momentum {momentum}, dampening {dampening}, ")?;
                if nesterov {
                    write!(f, "nesterov, ")?;
                }
                write!(f, "weight decay {weight_decay})")
            }
            OptimizerKind::Adam { beta1, beta2, eps, weight_decay } => {
                write!(f, "Adam (beta1 {beta1}, beta2 {beta2}, eps {eps:e}, weight decay {weight_decay})")
            }
            OptimizerKind::AdamW { beta1, beta2, eps, weight_decay } => {
                write!(f, "AdamW (beta1 {beta1}, beta2 {beta2}, eps {eps:e}, weight decay {weight_decay})")
            }
        }
    }
}

/// In words: `softmax cross-entropy over 10 classes`, `mean squared error`.
impl core::fmt::Display for Loss {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Loss::SoftmaxCrossEntropy { classes } => write!(f, "softmax cross-entropy over {classes} classes"),
            Loss::Mse => write!(f, "mean squared error"),
        }
    }
}
