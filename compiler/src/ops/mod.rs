//! The compiler's half of each primitive op: its gradient rule and its cost, one file per op family
//! implementing [`CompileRules`] for the engine's family enum. (Attributes, shape rules and the
//! dispatch to reference kernels are the engine's half, in `pock_engine::ops::<family>`, because
//! the engine validates and runs plans on its own.)
//!
//! A gradient rule receives the gradients of the node's outputs (`None` where an output has none)
//! and which inputs need a gradient; it emits backward nodes and returns one optional gradient per
//! input. The forward tensors it passes to those nodes are exactly the values kept alive for the
//! backward pass: the memory planner extends their lifetime, nothing else does.

mod broadcast;
mod cast;
mod conv;
mod dense;
mod loss;
mod mask;
mod matmul;
mod movement;
mod norm;
mod optim;
mod pool;
mod quant;
mod random;
mod reduce;
mod unary;

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
    pub fn emit(&mut self, suffix: &str, op: impl Into<Op>, inputs: &[TensorId]) -> Result<Vec<TensorId>> {
        self.graph.emit(format!("{}.grad.{suffix}", self.node_name), op, inputs, Phase::Backward, Program::Train)
    }

    /// Emits a single-output backward node and returns that output.
    pub fn emit1(&mut self, suffix: &str, op: impl Into<Op>, inputs: &[TensorId]) -> Result<TensorId> {
        Ok(self.emit(suffix, op, inputs)?[0])
    }

    /// A constant named `<forward node>.grad.<suffix>` (for example a zero that broadcasts).
    pub fn constant(&mut self, suffix: &str, shape: Vec<usize>, value: Vec<f32>) -> TensorId {
        self.graph.constant(format!("{}.grad.{suffix}", self.node_name), shape, value)
    }

    pub fn shape(&self, t: TensorId) -> Vec<usize> {
        self.graph.shape(t).to_vec()
    }
}

/// The compiler's half of an op family: gradient rules and costs. Each family implements it with
/// an exhaustive match, so an op added to a family without a gradient or cost arm does not
/// compile; ops that have no gradient by nature (backward ops, optimizer ops) say so in their arm.
pub trait CompileRules {
    /// The gradient rule of `node`, whose op is `self`. `dy[i]` is the gradient of output `i`
    /// (`None` where nothing differentiates it); `needs[j]` says whether input `j` needs a
    /// gradient. Returns one entry per input.
    fn gradient(&self, ctx: &mut GradCtx, node: &Node, dy: &[Option<TensorId>], needs: &[bool]) -> Result<Vec<Option<TensorId>>>;

    /// Floating-point operations (multiply-add counted as 2) the op performs on these shapes.
    fn flops(&self, inputs: &[&[usize]], outputs: &[&[usize]]) -> u64;
}

/// The gradient rule of `node`'s op (see [`CompileRules::gradient`]).
pub fn gradient(ctx: &mut GradCtx, node: &Node, dy: &[Option<TensorId>], needs: &[bool]) -> Result<Vec<Option<TensorId>>> {
    let grads = pock_engine::dispatch_op!(&node.op, op => op.gradient(ctx, node, dy, needs))?;
    debug_assert_eq!(grads.len(), node.inputs.len(), "{}: one gradient entry per input", node.name);
    Ok(grads)
}

/// Floating-point operations (multiply-add counted as 2) the op performs on these shapes.
pub fn flops(op: &Op, inputs: &[&[usize]], outputs: &[&[usize]]) -> u64 {
    pock_engine::dispatch_op!(op, op => op.flops(inputs, outputs))
}

/// The arm of an op that has no gradient rule by nature (a backward or optimizer op): reaching it
/// means the op lies between a trainable parameter and the loss, which the graph builders never do.
fn no_gradient(node: &Node) -> Result<Vec<Option<TensorId>>> {
    Err(CompileError::NoGradient { node: node.name.clone(), op: node.op.name() })
}

fn numel(s: &[usize]) -> u64 {
    s.iter().product::<usize>() as u64
}
