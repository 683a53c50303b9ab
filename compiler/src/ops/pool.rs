//! Gradient rules and costs of the pooling family: GlobalAvgPool, AvgPool2d, MaxPool2d and their
//! gradient ops.

use pock_engine::ops::{Pool2d, PoolOp};

use super::{no_gradient, numel, CompileRules, GradCtx};
use crate::error::Result;
use crate::ir::{Node, TensorId};

impl CompileRules for PoolOp {
    fn gradient(&self, ctx: &mut GradCtx, node: &Node, dy: &[Option<TensorId>], needs: &[bool]) -> Result<Vec<Option<TensorId>>> {
        let mut grads = vec![None; node.inputs.len()];
        let Some(dy) = dy[0] else { return Ok(grads) };
        let x = node.inputs[0];
        let input_hw = || {
            let xs = ctx.shape(x);
            [xs[2], xs[3]]
        };
        let (op, inputs) = match self {
            // Average pooling is linear, so its gradient needs only the input's size, not its value.
            PoolOp::GlobalAvgPool => (PoolOp::GlobalAvgPoolGrad { input_hw: input_hw() }, vec![dy]),
            PoolOp::AvgPool2d(pool) => (PoolOp::AvgPool2dGrad { pool: *pool, input_hw: input_hw() }, vec![dy]),
            // Max pooling recomputes each window's argmax from the saved input rather than storing
            // indices: the plan only has f32 tensors, and the input is usually alive anyway.
            PoolOp::MaxPool2d(pool) => (PoolOp::MaxPool2dGrad(*pool), vec![dy, x]),
            // Gradient ops are not differentiated again: pock computes first-order gradients only.
            PoolOp::GlobalAvgPoolGrad { .. } | PoolOp::AvgPool2dGrad { .. } | PoolOp::MaxPool2dGrad(_) => return no_gradient(node),
        };
        if needs[0] {
            grads[0] = Some(ctx.emit1("dx", op, &inputs)?);
        }
        Ok(grads)
    }

    fn flops(&self, inputs: &[&[usize]], outputs: &[&[usize]]) -> u64 {
        match self {
            // One add per input element, one divide per output element.
            PoolOp::GlobalAvgPool => numel(inputs[0]) + numel(outputs[0]),
            // One divide per output element (every input element gets the same share of its dy).
            PoolOp::GlobalAvgPoolGrad { .. } => numel(outputs[0]),
            // One add (or comparison) per window element, one divide per window.
            PoolOp::AvgPool2d(p) | PoolOp::MaxPool2d(p) => numel(outputs[0]) * (window(p) + 1),
            // One divide per window, one add per window element it is spread to.
            PoolOp::AvgPool2dGrad { pool, .. } => numel(inputs[0]) * (window(pool) + 1),
            // The forward argmax search again, then one add per window.
            PoolOp::MaxPool2dGrad(p) => numel(inputs[0]) * (window(p) + 1),
        }
    }
}

fn window(p: &Pool2d) -> u64 {
    (p.kernel[0] * p.kernel[1]) as u64
}
