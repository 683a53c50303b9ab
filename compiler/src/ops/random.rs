//! Gradient rules and costs of the random family.

use pock_engine::ops::{DenseOp, RandomOp};

use super::{numel, CompileRules, GradCtx};
use crate::error::Result;
use crate::ir::{Node, TensorId};

impl CompileRules for RandomOp {
    fn gradient(&self, ctx: &mut GradCtx, node: &Node, dy: &[Option<TensorId>], needs: &[bool]) -> Result<Vec<Option<TensorId>>> {
        let mut grads = vec![None; node.inputs.len()];
        match self {
            // The backward pass multiplies by the very mask the forward pass drew (output 1,
            // already scaled by 1 / (1 - ratio)), so no random number is drawn twice. The mask
            // itself and the counter have no gradient.
            RandomOp::Dropout(_) => {
                if let (Some(dy), true) = (dy[0], needs[0]) {
                    grads[0] = Some(ctx.emit1("dx", DenseOp::Mul, &[dy, node.outputs[1]])?);
                }
            }
            // It has no inputs, so there is nothing to differentiate; Uniform reads only the
            // integer counter.
            RandomOp::Advance | RandomOp::Uniform { .. } => {}
        }
        Ok(grads)
    }

    fn flops(&self, inputs: &[&[usize]], outputs: &[&[usize]]) -> u64 {
        match self {
            // One draw and one multiply-add per element.
            RandomOp::Uniform { .. } => 3 * numel(outputs[0]),
            // One draw, one comparison and one multiply per element.
            RandomOp::Dropout(_) => 3 * numel(inputs[0]),
            RandomOp::Advance => 1,
        }
    }
}
