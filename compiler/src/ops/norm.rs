//! Gradient rules and costs of the normalisation family: BatchNormTrain, BatchNormInfer, their
//! gradient ops and the fused BatchNormTrainAct.

use pock_engine::ops::{Activation, NormOp};

use super::{no_gradient, numel, CompileRules, GradCtx};
use crate::error::Result;
use crate::ir::{Node, TensorId};

impl CompileRules for NormOp {
    fn gradient(&self, ctx: &mut GradCtx, node: &Node, dy: &[Option<TensorId>], needs: &[bool]) -> Result<Vec<Option<TensorId>>> {
        let mut grads = vec![None; node.inputs.len()];
        // Only `y` is differentiable: the saved statistics feed nothing but this rule, and the
        // running statistics are state, not functions the loss depends on within the step.
        let Some(dy) = dy[0] else { return Ok(grads) };
        let (x, gamma) = (node.inputs[0], node.inputs[1]);
        // Running statistics (BatchNormInfer's inputs 3 and 4) are never trained.
        let any = needs.iter().take(3).any(|&n| n);
        // One node computes all three gradients: they share the per-channel sums.
        let outs = match self {
            NormOp::BatchNormTrain(b) => {
                if !any {
                    return Ok(grads);
                }
                let (saved_mean, saved_invstd) = (node.outputs[1], node.outputs[2]);
                ctx.emit("grad", NormOp::BatchNormTrainGrad(*b), &[dy, x, gamma, saved_mean, saved_invstd])?
            }
            NormOp::BatchNormInfer(b) => {
                if !any {
                    return Ok(grads);
                }
                let (running_mean, running_var) = (node.inputs[3], node.inputs[4]);
                ctx.emit("grad", NormOp::BatchNormInferGrad(*b), &[dy, x, gamma, running_mean, running_var])?
            }
            // Gradient ops are not differentiated again: pock computes first-order gradients only.
            // Fused after autodiff (`crate::fuse`): the rules ran on the plain ops.
            NormOp::BatchNormTrainGrad(_) | NormOp::BatchNormInferGrad(_) | NormOp::BatchNormTrainAct { .. } => return no_gradient(node),
        };
        for ((grad, &need), out) in grads.iter_mut().zip(needs).zip(outs) {
            if need {
                *grad = Some(out);
            }
        }
        Ok(grads)
    }

    /// Per-element estimates; the per-channel work (C square roots and a few scalars) is
    /// negligible next to them and left out.
    fn flops(&self, inputs: &[&[usize]], outputs: &[&[usize]]) -> u64 {
        match self {
            // Mean (1 add), variance (subtract, multiply-add: 3), normalise and affine (subtract,
            // multiply-add: 3).
            NormOp::BatchNormTrain(_) => 7 * numel(inputs[0]),
            // And one select per element for the activation, as the fused convolution counts it.
            NormOp::BatchNormTrainAct { act, .. } => (7 + u64::from(*act != Activation::Identity)) * numel(inputs[0]),
            // Subtract and multiply-add with the folded per-channel scale.
            NormOp::BatchNormInfer(_) => 3 * numel(inputs[0]),
            // Sums of dy and dy * xhat (xhat: 2, two adds, one multiply: 5), then dx (xhat: 2,
            // three multiplies and two subtracts: 5).
            NormOp::BatchNormTrainGrad(_) => 10 * numel(outputs[0]),
            // Sums of dy and dy * xhat (5), then dx = dy * scale (1).
            NormOp::BatchNormInferGrad(_) => 6 * numel(outputs[0]),
        }
    }
}
