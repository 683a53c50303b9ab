//! Gradient rules and costs of the reduce family: ReduceSum, ReduceMean, ReduceMax, Softmax,
//! LogSoftmax and their gradient ops.

use pock_engine::ops::ReduceOp;

use super::{no_gradient, numel, CompileRules, GradCtx};
use crate::error::Result;
use crate::ir::{Node, TensorId};

impl CompileRules for ReduceOp {
    fn gradient(&self, ctx: &mut GradCtx, node: &Node, dy: &[Option<TensorId>], needs: &[bool]) -> Result<Vec<Option<TensorId>>> {
        let mut grads = vec![None; node.inputs.len()];
        let Some(dy) = dy[0] else { return Ok(grads) };
        if !needs[0] {
            return Ok(grads);
        }
        let (x, y) = (node.inputs[0], node.outputs[0]);
        grads[0] = Some(match self {
            // Sum and mean need only the input's shape, kept in the attributes, not its value.
            ReduceOp::ReduceSum(reduce) => {
                let shape = ctx.shape(x);
                ctx.emit1("dx", ReduceOp::ReduceSumGrad { reduce: reduce.clone(), shape }, &[dy])?
            }
            ReduceOp::ReduceMean(reduce) => {
                let shape = ctx.shape(x);
                ctx.emit1("dx", ReduceOp::ReduceMeanGrad { reduce: reduce.clone(), shape }, &[dy])?
            }
            ReduceOp::ReduceMax(reduce) => ctx.emit1("dx", ReduceOp::ReduceMaxGrad(reduce.clone()), &[dy, x, y])?,
            // Both softmax gradients are written in terms of the output, so the input need not
            // stay alive for the backward pass.
            ReduceOp::Softmax { axis } => ctx.emit1("dx", ReduceOp::SoftmaxGrad { axis: *axis }, &[dy, y])?,
            ReduceOp::LogSoftmax { axis } => ctx.emit1("dx", ReduceOp::LogSoftmaxGrad { axis: *axis }, &[dy, y])?,
            // Gradient ops are not differentiated again: pock computes first-order gradients only.
            ReduceOp::ReduceSumGrad { .. }
            | ReduceOp::ReduceMeanGrad { .. }
            | ReduceOp::ReduceMaxGrad(_)
            | ReduceOp::SoftmaxGrad { .. }
            | ReduceOp::LogSoftmaxGrad { .. } => return no_gradient(node),
        });
        Ok(grads)
    }

    fn flops(&self, inputs: &[&[usize]], outputs: &[&[usize]]) -> u64 {
        match self {
            // One add or comparison per input element (and a division per output for the mean).
            ReduceOp::ReduceSum(_) | ReduceOp::ReduceMax(_) => numel(inputs[0]),
            ReduceOp::ReduceMean(_) => numel(inputs[0]) + numel(outputs[0]),
            // A copy computes nothing; the mean's copy multiplies by 1/n.
            ReduceOp::ReduceSumGrad { .. } => 0,
            ReduceOp::ReduceMeanGrad { .. } => numel(outputs[0]),
            // Counting the ties, then comparing again and dividing.
            ReduceOp::ReduceMaxGrad(_) => 3 * numel(outputs[0]),
            // Max, subtract, exp, sum, divide (softmax) or subtract (log-softmax).
            ReduceOp::Softmax { .. } | ReduceOp::LogSoftmax { .. } => 5 * numel(outputs[0]),
            // A dot product or sum along the axis, then two operations per element.
            ReduceOp::SoftmaxGrad { .. } | ReduceOp::LogSoftmaxGrad { .. } => 4 * numel(outputs[0]),
        }
    }
}
