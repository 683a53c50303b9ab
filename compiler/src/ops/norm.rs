//! Gradient rules and costs of BatchNormTrain, BatchNormInfer and their gradient ops.

use pock_engine::ops::Op;

use super::{numel, GradCtx};
use crate::error::{CompileError, Result};
use crate::ir::{Node, TensorId};

pub fn gradient(ctx: &mut GradCtx, node: &Node, dy: &[Option<TensorId>], needs: &[bool]) -> Result<Vec<Option<TensorId>>> {
    let mut grads = vec![None; node.inputs.len()];
    // Only `y` is differentiable: the saved statistics feed nothing but this rule, and the running
    // statistics are state, not functions the loss depends on within the step.
    let Some(dy) = dy[0] else { return Ok(grads) };
    // Running statistics (BatchNormInfer's inputs 3 and 4) are never trained.
    if !needs.iter().take(3).any(|&n| n) {
        return Ok(grads);
    }
    let (x, gamma) = (node.inputs[0], node.inputs[1]);
    // One node computes all three gradients: they share the per-channel sums.
    let outs = match &node.op {
        Op::BatchNormTrain(b) => {
            let (saved_mean, saved_invstd) = (node.outputs[1], node.outputs[2]);
            ctx.emit("grad", Op::BatchNormTrainGrad(*b), &[dy, x, gamma, saved_mean, saved_invstd])?
        }
        Op::BatchNormInfer(b) => {
            let (running_mean, running_var) = (node.inputs[3], node.inputs[4]);
            ctx.emit("grad", Op::BatchNormInferGrad(*b), &[dy, x, gamma, running_mean, running_var])?
        }
        other => return Err(CompileError::NoGradient { node: node.name.clone(), op: other.name() }),
    };
    for ((grad, &need), out) in grads.iter_mut().zip(needs).zip(outs) {
        if need {
            *grad = Some(out);
        }
    }
    Ok(grads)
}

/// Per-element estimates; the per-channel work (C square roots and a few scalars) is negligible
/// next to them and left out.
pub fn flops(op: &Op, inputs: &[&[usize]], outputs: &[&[usize]]) -> u64 {
    match op {
        // Mean (1 add), variance (subtract, multiply-add: 3), normalise and affine (subtract,
        // multiply-add: 3).
        Op::BatchNormTrain(_) => 7 * numel(inputs[0]),
        // Subtract and multiply-add with the folded per-channel scale.
        Op::BatchNormInfer(_) => 3 * numel(inputs[0]),
        // Sums of dy and dy * xhat (xhat: 2, two adds, one multiply: 5), then dx (xhat: 2, three
        // multiplies and two subtracts: 5).
        Op::BatchNormTrainGrad(_) => 10 * numel(outputs[0]),
        // Sums of dy and dy * xhat (5), then dx = dy * scale (1).
        Op::BatchNormInferGrad(_) => 6 * numel(outputs[0]),
        other => unreachable!("norm::flops dispatched for {}", other.name()),
    }
}
