//! Gradient rules and costs of the quant family (`pock_engine::ops::QuantOp`; the rewrite that
//! emits it is `crate::quantize`). Gradients are real-valued: rounding passes them straight
//! through, the output clamp (fused ReLU/ReLU6, int8 range) stops them, and the weight and bias
//! gradients are those of the integer-domain values, scaled by QAS when the layer says so.

use pock_engine::ops::{OpRules, QuantOp};

use super::{no_gradient, numel, CompileRules, GradCtx};
use crate::error::{CompileError, Result};
use crate::ir::{Node, TensorId};

impl CompileRules for QuantOp {
    fn gradient(&self, ctx: &mut GradCtx, node: &Node, dy: &[Option<TensorId>], needs: &[bool]) -> Result<Vec<Option<TensorId>>> {
        let mut grads = vec![None; node.inputs.len()];
        let Some(dy) = dy[0] else { return Ok(grads) };
        match self {
            QuantOp::Quantize(_) => {
                if needs[0] {
                    return Err(CompileError::Node {
                        node: node.name.clone(),
                        op: self.name(),
                        message:
                            "the gradient through Quantize is not implemented: --quantize int8 quantizes the model's data input only, \
                                  which needs no gradient"
                                .into(),
                    });
                }
            }
            // The real value passes through unchanged.
            QuantOp::Dequantize(_) => {
                if needs[0] {
                    grads[0] = Some(dy);
                }
            }
            QuantOp::Linear(l) => {
                let (x, w, w_scale, y) = (node.inputs[0], node.inputs[1], node.inputs[2], node.outputs[0]);
                if needs[0] {
                    grads[0] = Some(ctx.emit1("dx", QuantOp::LinearGradInput(*l), &[dy, y, w, w_scale])?);
                }
                if needs[1] {
                    grads[1] = Some(ctx.emit1("dw", QuantOp::LinearGradWeight(*l), &[dy, y, x, w_scale])?);
                }
                if needs[3] {
                    grads[3] = Some(ctx.emit1("db", QuantOp::LinearGradBias(*l), &[dy, y, w_scale])?);
                }
            }
            QuantOp::LinearGradInput(_) | QuantOp::LinearGradWeight(_) | QuantOp::LinearGradBias(_) => return no_gradient(node),
        }
        Ok(grads)
    }

    fn flops(&self, inputs: &[&[usize]], outputs: &[&[usize]]) -> u64 {
        match self {
            // A scale, a round and a clamp per element.
            QuantOp::Quantize(_) | QuantOp::Dequantize(_) => numel(outputs[0]),
            // One integer multiply-add per (row, output, input), counted as 2 like a float one.
            QuantOp::Linear(_) => 2 * numel(outputs[0]) * inputs[1].get(1).copied().unwrap_or(0) as u64,
            QuantOp::LinearGradInput(_) => 2 * numel(outputs[0]) * inputs[0].get(1).copied().unwrap_or(0) as u64,
            QuantOp::LinearGradWeight(_) => 2 * numel(outputs[0]) * inputs[0].first().copied().unwrap_or(0) as u64,
            QuantOp::LinearGradBias(_) => numel(inputs[0]),
        }
    }
}
