//! The compiler's stage types and the functions that move a model from one stage to the next.

use pock_engine::plan::OptimizerKind;

use crate::autodiff::ParamGrads;
use crate::error::Result;
use crate::ir::{Graph, TensorId};
use crate::scheme::UpdateScheme;

/// What the model's output is trained for.
#[derive(Clone, Debug, PartialEq)]
pub enum Task {
    /// Output `[N, classes]` logits, int64 labels, softmax cross-entropy.
    Classification { classes: usize },
    /// Output `[N, ...]`, float targets of the same shape, mean squared error.
    Regression,
    /// Output `[..., classes]` logits of any rank (a language model's `[batch, time, vocab]`),
    /// int64 labels of the output's shape without its last axis, softmax cross-entropy over the
    /// last axis averaged over the positions whose label is not `ignore_index`
    /// (`pock_engine::ops::CrossEntropy`).
    CrossEntropy { classes: usize, ignore_index: i64 },
}

/// A model: forward nodes only (BatchNorm in its training form), built for one batch size.
#[derive(Clone, Debug)]
pub struct ForwardGraph {
    /// `zoo:cnn`, a file name: recorded in the plan.
    pub name: String,
    pub graph: Graph,
    /// The data inputs in the model's order; each is a `Role::Input` tensor whose name, dtype and
    /// shape the graph holds. Zoo models have one; an ONNX model may have several (token ids and
    /// an attention mask), each of which the plan feeds by name.
    pub inputs: Vec<TensorId>,
    /// The output the loss is attached to.
    pub output: TensorId,
    pub task: Task,
}

/// How BatchNorm layers behave while training.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BatchNormMode {
    /// Running statistics used and kept fixed, and each BatchNorm that follows a convolution
    /// folded into it: the conv weight absorbs the scale, the shift becomes a trainable conv bias
    /// named as the BatchNorm's bias (see [`crate::fold_norm`]). Other BatchNorms are as `Frozen`.
    #[default]
    Fold,
    /// Batch statistics, running statistics updated (PyTorch's `train()`).
    Train,
    /// Running statistics used and kept fixed; gamma and beta can still learn.
    Frozen,
}

/// Everything `pock compile` decides.
#[derive(Clone, Debug)]
pub struct CompileOptions {
    pub optimizer: OptimizerKind,
    /// Default learning rate stored in the plan (a runtime scalar, so it can be changed later).
    pub learning_rate: f32,
    /// Gradient accumulation over K micro-batches (1 = none).
    pub accumulate: usize,
    pub clip_grad_norm: Option<f32>,
    pub batch_norm: BatchNormMode,
    /// Target board name (see `pock_targets::TARGETS`).
    pub target: String,
    /// Choose the Train program's order to minimise the planned peak (each optimizer update right
    /// after its gradient is complete, see [`crate::schedule`]); off keeps autodiff's order.
    pub reorder: bool,
    /// Keep a 1-bit mask instead of the float activation for the ReLU/ReLU6 gradients that alone
    /// read it (see [`crate::mask`]); gradients are the same bit for bit.
    pub activation_masks: bool,
    /// Fuse each convolution with the bias and ReLU/ReLU6 after it into one `Conv2dBiasAct` node,
    /// and a training-mode BatchNorm with its ReLU/ReLU6 into one `BatchNormTrainAct` (see
    /// [`crate::fuse`]); results are the same bit for bit. Off (`--no-fuse`) for comparison.
    pub fuse: bool,
    /// Which parameters train; the others are frozen (see [`crate::scheme`]).
    pub update: UpdateScheme,
    /// Rewrite the model into int8 ops calibrated on these samples (see [`crate::quantize`]).
    pub quantize: Option<crate::quantize::Int8Options>,
    /// Which side, CPU or GPU, runs each node, for a target with a GPU (see [`crate::placement`]).
    pub placement: crate::placement::PlacementOptions,
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            optimizer: OptimizerKind::Sgd { momentum: 0.0, dampening: 0.0, nesterov: false, weight_decay: 0.0 },
            learning_rate: 0.01,
            accumulate: 1,
            clip_grad_norm: None,
            batch_norm: BatchNormMode::Fold,
            target: "host".into(),
            reorder: true,
            activation_masks: true,
            fuse: true,
            update: UpdateScheme::default(),
            quantize: None,
            placement: Default::default(),
        }
    }
}

/// A graph with every program of the plan: train (forward, backward, optimizer), apply, eval.
#[derive(Clone, Debug)]
pub struct TrainingGraph {
    pub name: String,
    pub graph: Graph,
    pub options: CompileOptions,
    pub task: Task,
    pub batch: usize,
    /// Train program: the first model input (the only one of a zoo model), every model input in
    /// the model's order, target, scalar loss.
    pub train_input: TensorId,
    pub train_inputs: Vec<TensorId>,
    pub train_target: TensorId,
    pub train_loss: TensorId,
    /// Eval program: the first model input, every model input, target, model output,
    /// per-sample loss.
    pub eval_input: TensorId,
    pub eval_inputs: Vec<TensorId>,
    pub eval_target: TensorId,
    pub eval_output: TensorId,
    pub eval_loss: TensorId,
    /// Each trainable parameter with its gradient in the Train program (before the optimizer
    /// consumes it), so tests can evaluate gradients directly.
    pub param_grads: ParamGrads,
    /// The BatchNorms folded into convolutions (`BatchNormMode::Fold`), for export.
    pub folded_norms: Vec<pock_engine::plan::FoldedNorm>,
    /// The Train program's packed scratch peak in the order autodiff emitted it (the optimizer
    /// last), measured before reordering; the plan records the arena it implies
    /// (`Plan::arena_bytes_unordered`).
    pub train_scratch_unordered: u64,
}

impl ForwardGraph {
    /// The model's one data input. Plans, sessions and data files feed exactly one input (`x`)
    /// so far; a model with several is an error that names them.
    pub fn single_input(&self) -> Result<TensorId> {
        match self.inputs[..] {
            [input] => Ok(input),
            _ => Err(crate::error::CompileError::Option(format!(
                "the model has {} data inputs ({}); training plans feed exactly one input so far, so re-export the model with a \
                 single input",
                self.inputs.len(),
                self.inputs.iter().map(|&t| self.graph.tensor(t).name.as_str()).collect::<Vec<_>>().join(", ")
            ))),
        }
    }

    /// Attaches the loss, differentiates, adds the optimizer and builds the eval program.
    pub fn into_training(self, options: CompileOptions) -> Result<TrainingGraph> {
        crate::autodiff::build_training(self, options)
    }
}

impl TrainingGraph {
    /// Plans memory and lays out weights.
    pub fn into_plan(self) -> Result<crate::memory::CompiledPlan> {
        let (target, placement) = (self.options.target.clone(), self.options.placement.clone());
        let mut compiled = crate::memory::build_plan(self)?;
        crate::placement::place(&mut compiled.plan, &target, &placement)?;
        Ok(compiled)
    }
}
