//! Gradient rules and costs of Conv2d and its two gradient ops.

use pock_engine::ops::Op;

use super::{numel, GradCtx};
use crate::error::{CompileError, Result};
use crate::ir::{Node, TensorId};

pub fn gradient(ctx: &mut GradCtx, node: &Node, dy: &[Option<TensorId>], needs: &[bool]) -> Result<Vec<Option<TensorId>>> {
    let mut grads = vec![None; node.inputs.len()];
    let Some(dy) = dy[0] else { return Ok(grads) };
    let Op::Conv2d(conv) = node.op else { return Err(CompileError::NoGradient { node: node.name.clone(), op: node.op.name() }) };
    let (x, w) = (node.inputs[0], node.inputs[1]);
    // Each gradient keeps alive only the forward value it reads: dx needs the weights, dw the
    // input, so a frozen layer's input is not saved for the backward pass.
    if needs[0] {
        let xs = ctx.shape(x);
        grads[0] = Some(ctx.emit1("dx", Op::Conv2dGradInput { conv, input_hw: [xs[2], xs[3]] }, &[dy, w])?);
    }
    if needs[1] {
        let ws = ctx.shape(w);
        grads[1] = Some(ctx.emit1("dw", Op::Conv2dGradWeight { conv, kernel_hw: [ws[2], ws[3]] }, &[dy, x])?);
    }
    Ok(grads)
}

/// All three ops perform the same multiply-adds: one per (output element, weight element of its
/// group), visited in a different order.
pub fn flops(op: &Op, inputs: &[&[usize]], outputs: &[&[usize]]) -> u64 {
    // Each op has the conv output gradient (or the output) and the weight-like shape at hand:
    // taps per output element = C/groups * KH * KW = weight elements per output channel.
    let (output, weight) = match op {
        Op::Conv2d(_) => (outputs[0], inputs[1]),
        Op::Conv2dGradInput { .. } => (inputs[0], inputs[1]),
        Op::Conv2dGradWeight { .. } => (inputs[0], outputs[0]),
        other => unreachable!("conv::flops dispatched for {}", other.name()),
    };
    2 * numel(output) * numel(&weight[1..])
}
