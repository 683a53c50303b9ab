//! Gradient rules and costs of GlobalAvgPool, AvgPool2d, MaxPool2d and their gradient ops.

use pock_engine::ops::Op;

use super::{numel, GradCtx};
use crate::error::{CompileError, Result};
use crate::ir::{Node, TensorId};

pub fn gradient(ctx: &mut GradCtx, node: &Node, dy: &[Option<TensorId>], needs: &[bool]) -> Result<Vec<Option<TensorId>>> {
    let mut grads = vec![None; node.inputs.len()];
    let Some(dy) = dy[0] else { return Ok(grads) };
    if !needs[0] {
        return Ok(grads);
    }
    let x = node.inputs[0];
    let xs = ctx.shape(x);
    let input_hw = [xs[2], xs[3]];
    grads[0] = Some(match &node.op {
        // Average pooling is linear, so its gradient needs only the input's size, not its value.
        Op::GlobalAvgPool => ctx.emit1("dx", Op::GlobalAvgPoolGrad { input_hw }, &[dy])?,
        Op::AvgPool2d(pool) => ctx.emit1("dx", Op::AvgPool2dGrad { pool: *pool, input_hw }, &[dy])?,
        // Max pooling recomputes each window's argmax from the saved input rather than storing
        // indices: the plan only has f32 tensors, and the input is usually alive anyway.
        Op::MaxPool2d(pool) => ctx.emit1("dx", Op::MaxPool2dGrad(*pool), &[dy, x])?,
        other => return Err(CompileError::NoGradient { node: node.name.clone(), op: other.name() }),
    });
    Ok(grads)
}

pub fn flops(op: &Op, inputs: &[&[usize]], outputs: &[&[usize]]) -> u64 {
    match op {
        // One add per input element, one divide per output element.
        Op::GlobalAvgPool => numel(inputs[0]) + numel(outputs[0]),
        // One divide per output element (every input element gets the same share of its dy).
        Op::GlobalAvgPoolGrad { .. } => numel(outputs[0]),
        // One add (or comparison) per window element, one divide per window.
        Op::AvgPool2d(p) | Op::MaxPool2d(p) => numel(outputs[0]) * (window(p) + 1),
        // One divide per window, one add per window element it is spread to.
        Op::AvgPool2dGrad { pool, .. } => numel(inputs[0]) * (window(pool) + 1),
        // The forward argmax search again, then one add per window.
        Op::MaxPool2dGrad(p) => numel(inputs[0]) * (window(p) + 1),
        other => unreachable!("pool::flops dispatched for {}", other.name()),
    }
}

fn window(p: &pock_engine::ops::Pool2d) -> u64 {
    (p.kernel[0] * p.kernel[1]) as u64
}
