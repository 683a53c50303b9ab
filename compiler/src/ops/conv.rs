//! Gradient rules and costs of the convolution family: Conv2d and its two gradient ops, and
//! Conv2dGradInput read as a transposed convolution in a forward graph (ONNX ConvTranspose).

use pock_engine::ops::{Activation, ConvOp};

use super::{no_gradient, numel, CompileRules, GradCtx};
use crate::error::Result;
use crate::ir::{Node, TensorId};

impl CompileRules for ConvOp {
    fn gradient(&self, ctx: &mut GradCtx, node: &Node, dy: &[Option<TensorId>], needs: &[bool]) -> Result<Vec<Option<TensorId>>> {
        let mut grads = vec![None; node.inputs.len()];
        let Some(dy) = dy[0] else { return Ok(grads) };
        match self {
            ConvOp::Conv2d(conv) => {
                let conv = *conv;
                let (x, w) = (node.inputs[0], node.inputs[1]);
                // Each gradient keeps alive only the forward value it reads: dx needs the weights, dw
                // the input, so a frozen layer's input is not saved for the backward pass.
                if needs[0] {
                    let xs = ctx.shape(x);
                    grads[0] = Some(ctx.emit1("dx", ConvOp::Conv2dGradInput { conv, input_hw: [xs[2], xs[3]] }, &[dy, w])?);
                }
                if needs[1] {
                    let ws = ctx.shape(w);
                    let kernel_hw = [ws[2], ws[3]];
                    // A partially trained weight (scheme.rs) gets the gradient of its trained rows
                    // only, computed from those channels of dy.
                    let op = match ctx.graph.trained_rows.get(&w) {
                        Some(rows) => ConvOp::Conv2dGradWeightRows { conv, kernel_hw, rows: [rows.start, rows.end] },
                        None => ConvOp::Conv2dGradWeight { conv, kernel_hw },
                    };
                    grads[1] = Some(ctx.emit1("dw", op, &[dy, x])?);
                }
            }
            // In a forward graph, Conv2dGradInput is a transposed convolution (ONNX ConvTranspose,
            // compiler/src/onnx/import_resize.rs): `y = A_w^T x` where `A_w` is the convolution
            // with weights `w`. Its input gradient is that convolution of `dy`, and its weight
            // gradient the convolution's weight gradient with the activations swapped: `x` plays
            // the convolution's output gradient and `dy` its input.
            ConvOp::Conv2dGradInput { conv, input_hw } => {
                let conv = *conv;
                let (x, w) = (node.inputs[0], node.inputs[1]);
                if needs[0] {
                    grads[0] = Some(ctx.emit1("dx", ConvOp::Conv2d(conv), &[dy, w])?);
                }
                if needs[1] {
                    let ws = ctx.shape(w);
                    let kernel_hw = [ws[2], ws[3]];
                    debug_assert_eq!(ctx.shape(dy)[2..], input_hw[..]);
                    let op = match ctx.graph.trained_rows.get(&w) {
                        Some(rows) => ConvOp::Conv2dGradWeightRows { conv, kernel_hw, rows: [rows.start, rows.end] },
                        None => ConvOp::Conv2dGradWeight { conv, kernel_hw },
                    };
                    grads[1] = Some(ctx.emit1("dw", op, &[x, dy])?);
                }
            }
            // Gradient ops are not differentiated again: pock computes first-order gradients only.
            ConvOp::Conv2dGradWeight { .. } | ConvOp::Conv2dGradWeightRows { .. } => return no_gradient(node),
            // The fusion pass (crate::fuse) runs after autodiff: the graphs autodiff sees hold the
            // unfused Conv2d, BiasAdd and activation, whose rules apply.
            ConvOp::Conv2dBiasAct { .. } | ConvOp::Conv2dGradInputMasked { .. } => return no_gradient(node),
        }
        Ok(grads)
    }

    /// All three ops perform the same multiply-adds: one per (output element, weight element of
    /// its group), visited in a different order.
    fn flops(&self, inputs: &[&[usize]], outputs: &[&[usize]]) -> u64 {
        // Each op has the conv output gradient (or the output) and the weight-like shape at hand:
        // taps per output element = C/groups * KH * KW = weight elements per output channel.
        let (output, weight) = match self {
            ConvOp::Conv2d(_) => (outputs[0], inputs[1]),
            // The convolution, then one add per output element and one select for an activation,
            // as the unfused ops count them.
            ConvOp::Conv2dBiasAct { act, .. } => {
                let epilogue = if *act == Activation::Identity { 1 } else { 2 };
                return 2 * numel(outputs[0]) * numel(&inputs[1][1..]) + epilogue * numel(outputs[0]);
            }
            ConvOp::Conv2dGradInput { .. } => (inputs[0], inputs[1]),
            // The input gradient, then one select per element of dx, as MaskGrad counts it.
            ConvOp::Conv2dGradInputMasked { .. } => return 2 * numel(inputs[0]) * numel(&inputs[1][1..]) + numel(outputs[0]),
            ConvOp::Conv2dGradWeight { .. } => (inputs[0], outputs[0]),
            // Only the trained rows' share of dy is visited.
            ConvOp::Conv2dGradWeightRows { .. } => {
                let (dy, dw) = (inputs[0], outputs[0]);
                return 2 * numel(dy) / (dy[1].max(1) as u64) * numel(dw);
            }
        };
        2 * numel(output) * numel(&weight[1..])
    }
}
