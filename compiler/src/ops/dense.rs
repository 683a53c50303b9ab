//! Gradient rules and costs of the dense family: MatMul, BiasAdd, the elementwise ops, the
//! activations, Reshape, and their gradient ops.

use pock_engine::ops::{DenseOp, MatMul};

use super::{no_gradient, numel, CompileRules, GradCtx};
use crate::error::Result;
use crate::ir::{Node, TensorId};

impl CompileRules for DenseOp {
    fn gradient(&self, ctx: &mut GradCtx, node: &Node, dy: &[Option<TensorId>], needs: &[bool]) -> Result<Vec<Option<TensorId>>> {
        let mut grads = vec![None; node.inputs.len()];
        // An output nobody differentiates contributes nothing to any input.
        let Some(dy) = dy[0] else { return Ok(grads) };
        let x = node.inputs[0];
        match self {
            DenseOp::MatMul(m) => {
                let (a, b) = (node.inputs[0], node.inputs[1]);
                // With A = op(a) and B = op(b): dA = dy @ B^T and dB = A^T @ dy. Each is arranged to
                // the stored layout of its operand purely through the transpose flags.
                if needs[0] {
                    grads[0] = Some(if m.trans_a {
                        // a is stored as A^T, so da = dA^T = B @ dy^T.
                        ctx.emit1("da", DenseOp::MatMul(MatMul { trans_a: m.trans_b, trans_b: true }), &[b, dy])?
                    } else {
                        ctx.emit1("da", DenseOp::MatMul(MatMul { trans_a: false, trans_b: !m.trans_b }), &[dy, b])?
                    });
                }
                if needs[1] {
                    grads[1] = Some(if m.trans_b {
                        // b is stored as B^T, so db = dB^T = dy^T @ A.
                        ctx.emit1("db", DenseOp::MatMul(MatMul { trans_a: true, trans_b: m.trans_a }), &[dy, a])?
                    } else {
                        ctx.emit1("db", DenseOp::MatMul(MatMul { trans_a: !m.trans_a, trans_b: false }), &[a, dy])?
                    });
                }
            }
            DenseOp::BiasAdd => {
                // The identity on x needs no node: its gradient is dy itself.
                if needs[0] {
                    grads[0] = Some(dy);
                }
                if needs[1] {
                    grads[1] = Some(ctx.emit1("db", DenseOp::BiasGrad, &[dy])?);
                }
            }
            DenseOp::Add => {
                for (grad, &need) in grads.iter_mut().zip(needs) {
                    if need {
                        *grad = Some(dy);
                    }
                }
            }
            DenseOp::Mul => {
                let (a, b) = (node.inputs[0], node.inputs[1]);
                if needs[0] {
                    grads[0] = Some(ctx.emit1("da", DenseOp::Mul, &[dy, b])?);
                }
                if needs[1] {
                    grads[1] = Some(ctx.emit1("db", DenseOp::Mul, &[dy, a])?);
                }
            }
            // Both rules read the activation's output, not its input: `y > 0` exactly when `x > 0`,
            // and `min < clip(x) < max` exactly when `min < x < max`, so the result is the same
            // bit for bit, while the input (a BatchNorm or conv output) need not be kept alive: the
            // output is usually kept anyway, as the input the next layer's weight gradient reads.
            DenseOp::Relu => {
                if needs[0] {
                    grads[0] = Some(ctx.emit1("dx", DenseOp::ReluGrad, &[dy, node.outputs[0]])?);
                }
            }
            DenseOp::Clip(c) => {
                if needs[0] {
                    grads[0] = Some(ctx.emit1("dx", DenseOp::ClipGrad(*c), &[dy, node.outputs[0]])?);
                }
            }
            DenseOp::Reshape { .. } => {
                if needs[0] {
                    let shape = ctx.shape(x);
                    grads[0] = Some(ctx.emit1("dx", DenseOp::Reshape { shape }, &[dy])?);
                }
            }
            // Gradient ops are not differentiated again: pock computes first-order gradients only.
            DenseOp::BiasGrad | DenseOp::ReluGrad | DenseOp::ClipGrad(_) => return no_gradient(node),
            // Made by the fusion pass (crate::fuse) after autodiff, which saw the unfused ops.
            DenseOp::MatMulBiasAct { .. } => return no_gradient(node),
        }
        Ok(grads)
    }

    fn flops(&self, inputs: &[&[usize]], outputs: &[&[usize]]) -> u64 {
        match self {
            DenseOp::MatMul(m) => {
                let inner = if m.trans_a { inputs[0][0] } else { inputs[0][1] };
                2 * numel(outputs[0]) * inner as u64
            }
            // One add, multiply, comparison or select per output element.
            DenseOp::BiasAdd
            | DenseOp::Add
            | DenseOp::Mul
            | DenseOp::Relu
            | DenseOp::ReluGrad
            | DenseOp::Clip(_)
            | DenseOp::ClipGrad(_) => numel(outputs[0]),
            // One add per input element folded into its channel's sum.
            DenseOp::BiasGrad => numel(inputs[0]),
            // At most a copy, which moves memory but computes nothing.
            DenseOp::Reshape { .. } => 0,
            // The product, then one add per output element and one select for an activation, as
            // the unfused ops count them.
            DenseOp::MatMulBiasAct { mm, act } => {
                let inner = if mm.trans_a { inputs[0][0] } else { inputs[0][1] };
                let epilogue = if *act == pock_engine::ops::Activation::Identity { 1 } else { 2 };
                2 * numel(outputs[0]) * inner as u64 + epilogue * numel(outputs[0])
            }
        }
    }
}
