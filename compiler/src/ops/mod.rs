//! The compiler's half of each primitive op: its gradient rule and its cost. (Attributes, shape
//! rules and reference kernels are the engine's half, in `pock_engine::ops` and
//! `pock_engine::kernels::reference`, because the engine validates and runs plans on its own.)
//!
//! A gradient rule receives the gradients of the node's outputs (`None` where an output has none)
//! and which inputs need a gradient; it emits backward nodes and returns one optional gradient per
//! input. The forward tensors it passes to those nodes are exactly the values kept alive for the
//! backward pass: the memory planner extends their lifetime, nothing else does.

mod conv;
mod dense;
mod loss;
mod norm;
mod optim;
mod pool;

use pock_engine::ops::Op;

use crate::error::{CompileError, Result};
use crate::ir::{Graph, Node, Phase, Program, TensorId};

/// Emits backward nodes for one forward node.
pub struct GradCtx<'g> {
    pub graph: &'g mut Graph,
    node_name: String,
}

impl<'g> GradCtx<'g> {
    pub fn new(graph: &'g mut Graph, node_name: &str) -> Self {
        GradCtx { graph, node_name: node_name.to_string() }
    }

    /// Emits a backward node named `<forward node>.grad.<suffix>`.
    pub fn emit(&mut self, suffix: &str, op: Op, inputs: &[TensorId]) -> Result<Vec<TensorId>> {
        self.graph.emit(format!("{}.grad.{suffix}", self.node_name), op, inputs, Phase::Backward, Program::Train)
    }

    /// Emits a single-output backward node and returns that output.
    pub fn emit1(&mut self, suffix: &str, op: Op, inputs: &[TensorId]) -> Result<TensorId> {
        Ok(self.emit(suffix, op, inputs)?[0])
    }

    pub fn shape(&self, t: TensorId) -> Vec<usize> {
        self.graph.shape(t).to_vec()
    }
}

/// The gradient rule of `node`'s op. `dy[i]` is the gradient of output `i`; `needs[j]` says
/// whether input `j` needs a gradient. Returns one entry per input.
pub fn gradient(ctx: &mut GradCtx, node: &Node, dy: &[Option<TensorId>], needs: &[bool]) -> Result<Vec<Option<TensorId>>> {
    let grads = match &node.op {
        Op::MatMul(_) | Op::BiasAdd | Op::Add | Op::Mul | Op::Relu | Op::Clip(_) | Op::Reshape { .. } => {
            dense::gradient(ctx, node, dy, needs)?
        }
        Op::Conv2d(_) => conv::gradient(ctx, node, dy, needs)?,
        Op::BatchNormTrain(_) | Op::BatchNormInfer(_) => norm::gradient(ctx, node, dy, needs)?,
        Op::GlobalAvgPool | Op::AvgPool2d(_) | Op::MaxPool2d(_) => pool::gradient(ctx, node, dy, needs)?,
        Op::SoftmaxCrossEntropy(_) | Op::Mse(_) => loss::gradient(ctx, node, dy, needs)?,
        other => return Err(CompileError::NoGradient { node: node.name.clone(), op: other.name() }),
    };
    debug_assert_eq!(grads.len(), node.inputs.len(), "{}: one gradient entry per input", node.name);
    Ok(grads)
}

/// Floating-point operations (multiply-add counted as 2) the op performs on these shapes.
pub fn flops(op: &Op, inputs: &[&[usize]], outputs: &[&[usize]]) -> u64 {
    match op {
        Op::MatMul(_)
        | Op::BiasAdd
        | Op::BiasGrad
        | Op::Add
        | Op::Mul
        | Op::Relu
        | Op::ReluGrad
        | Op::Clip(_)
        | Op::ClipGrad(_)
        | Op::Reshape { .. } => dense::flops(op, inputs, outputs),
        Op::Conv2d(_) | Op::Conv2dGradInput { .. } | Op::Conv2dGradWeight { .. } => conv::flops(op, inputs, outputs),
        Op::BatchNormTrain(_) | Op::BatchNormInfer(_) | Op::BatchNormTrainGrad(_) | Op::BatchNormInferGrad(_) => {
            norm::flops(op, inputs, outputs)
        }
        Op::GlobalAvgPool
        | Op::GlobalAvgPoolGrad { .. }
        | Op::AvgPool2d(_)
        | Op::AvgPool2dGrad { .. }
        | Op::MaxPool2d(_)
        | Op::MaxPool2dGrad(_) => pool::flops(op, inputs, outputs),
        Op::SoftmaxCrossEntropy(_) | Op::SoftmaxCrossEntropyGrad(_) | Op::Mse(_) | Op::MseGrad(_) => loss::flops(op, inputs, outputs),
        Op::AccumulateGrad | Op::Fill { .. } | Op::GradScale(_) | Op::SgdUpdate(_) | Op::AdamUpdate(_) => optim::flops(op, inputs, outputs),
    }
}

fn numel(s: &[usize]) -> u64 {
    s.iter().product::<usize>() as u64
}
