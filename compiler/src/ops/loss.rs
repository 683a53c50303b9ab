//! Gradient rules and costs of the loss family.

use pock_engine::ops::LossOp;

use super::{no_gradient, numel, CompileRules, GradCtx};
use crate::error::Result;
use crate::ir::{Node, TensorId};

impl CompileRules for LossOp {
    fn gradient(&self, ctx: &mut GradCtx, node: &Node, dy: &[Option<TensorId>], needs: &[bool]) -> Result<Vec<Option<TensorId>>> {
        let mut grads = vec![None; node.inputs.len()];
        let Some(dloss) = dy[0] else { return Ok(grads) };
        match self {
            LossOp::SoftmaxCrossEntropy(r) => {
                let (logits, labels) = (node.inputs[0], node.inputs[1]);
                // Integer labels have no gradient, whatever `needs` says about them.
                if needs[0] {
                    grads[0] = Some(ctx.emit1("dlogits", LossOp::SoftmaxCrossEntropyGrad(*r), &[dloss, logits, labels])?);
                }
            }
            LossOp::Mse(r) => {
                let (pred, target) = (node.inputs[0], node.inputs[1]);
                if needs[0] {
                    grads[0] = Some(ctx.emit1("dpred", LossOp::MseGrad(*r), &[dloss, pred, target])?);
                }
                // The loss is symmetric in its two operands, so the target's gradient is the same
                // rule with them swapped: 2 * (target - pred) * w = -dpred, without a negation node.
                if needs[1] {
                    grads[1] = Some(ctx.emit1("dtarget", LossOp::MseGrad(*r), &[dloss, target, pred])?);
                }
            }
            LossOp::CrossEntropy(ce) => {
                let (logits, labels) = (node.inputs[0], node.inputs[1]);
                if needs[0] {
                    grads[0] = Some(ctx.emit1("dlogits", LossOp::CrossEntropyGrad(*ce), &[dloss, logits, labels])?);
                }
            }
            // Gradient ops are not differentiated again: pock computes first-order gradients only.
            LossOp::SoftmaxCrossEntropyGrad(_) | LossOp::MseGrad(_) | LossOp::CrossEntropyGrad(_) => return no_gradient(node),
        }
        Ok(grads)
    }

    fn flops(&self, inputs: &[&[usize]], outputs: &[&[usize]]) -> u64 {
        match self {
            // Per logit: the running maximum, the shift, exp and the sum; per row: log, the
            // subtraction of the labelled logit, and the share of the mean.
            LossOp::SoftmaxCrossEntropy(_) => {
                let (rows, logits) = (inputs[0][0] as u64, numel(inputs[0]));
                4 * logits + 3 * rows
            }
            // Per logit: maximum, shift, exp, sum, and the division and weighting of the softmax;
            // per row: the weight and the one-hot subtraction.
            LossOp::SoftmaxCrossEntropyGrad(_) => {
                let (rows, logits) = (inputs[1][0] as u64, numel(inputs[1]));
                6 * logits + 2 * rows
            }
            // As SoftmaxCrossEntropy, per position (a label entry) instead of per row.
            LossOp::CrossEntropy(_) => 4 * numel(inputs[0]) + 3 * numel(inputs[1]),
            LossOp::CrossEntropyGrad(_) => 6 * numel(inputs[1]) + 2 * numel(inputs[2]),
            // Difference, square and sum per element, one division per loss value.
            LossOp::Mse(_) => 3 * numel(inputs[0]) + numel(outputs[0]),
            // Difference and weighting per element, the weight once per sample.
            LossOp::MseGrad(_) => 2 * numel(inputs[1]) + 2 * inputs[1][0] as u64,
        }
    }
}
