//! Gradient rules and costs of MatMul, BiasAdd, the elementwise ops, the activations and Reshape.

use pock_engine::ops::{MatMul, Op};

use super::{numel, GradCtx};
use crate::error::{CompileError, Result};
use crate::ir::{Node, TensorId};

pub fn gradient(ctx: &mut GradCtx, node: &Node, dy: &[Option<TensorId>], needs: &[bool]) -> Result<Vec<Option<TensorId>>> {
    let mut grads = vec![None; node.inputs.len()];
    // An output nobody differentiates contributes nothing to any input.
    let Some(dy) = dy[0] else { return Ok(grads) };
    let x = node.inputs[0];
    match &node.op {
        Op::MatMul(m) => {
            let (a, b) = (node.inputs[0], node.inputs[1]);
            // With A = op(a) and B = op(b): dA = dy @ B^T and dB = A^T @ dy. Each is arranged to
            // the stored layout of its operand purely through the transpose flags.
            if needs[0] {
                grads[0] = Some(if m.trans_a {
                    // a is stored as A^T, so da = dA^T = B @ dy^T.
                    ctx.emit1("da", Op::MatMul(MatMul { trans_a: m.trans_b, trans_b: true }), &[b, dy])?
                } else {
                    ctx.emit1("da", Op::MatMul(MatMul { trans_a: false, trans_b: !m.trans_b }), &[dy, b])?
                });
            }
            if needs[1] {
                grads[1] = Some(if m.trans_b {
                    // b is stored as B^T, so db = dB^T = dy^T @ A.
                    ctx.emit1("db", Op::MatMul(MatMul { trans_a: true, trans_b: m.trans_a }), &[dy, a])?
                } else {
                    ctx.emit1("db", Op::MatMul(MatMul { trans_a: !m.trans_a, trans_b: false }), &[a, dy])?
                });
            }
        }
        Op::BiasAdd => {
            // The identity on x needs no node: its gradient is dy itself.
            if needs[0] {
                grads[0] = Some(dy);
            }
            if needs[1] {
                grads[1] = Some(ctx.emit1("db", Op::BiasGrad, &[dy])?);
            }
        }
        Op::Add => {
            for (grad, &need) in grads.iter_mut().zip(needs) {
                if need {
                    *grad = Some(dy);
                }
            }
        }
        Op::Mul => {
            let (a, b) = (node.inputs[0], node.inputs[1]);
            if needs[0] {
                grads[0] = Some(ctx.emit1("da", Op::Mul, &[dy, b])?);
            }
            if needs[1] {
                grads[1] = Some(ctx.emit1("db", Op::Mul, &[dy, a])?);
            }
        }
        Op::Relu => {
            if needs[0] {
                grads[0] = Some(ctx.emit1("dx", Op::ReluGrad, &[dy, x])?);
            }
        }
        Op::Clip(c) => {
            if needs[0] {
                grads[0] = Some(ctx.emit1("dx", Op::ClipGrad(*c), &[dy, x])?);
            }
        }
        Op::Reshape { .. } => {
            if needs[0] {
                let shape = ctx.shape(x);
                grads[0] = Some(ctx.emit1("dx", Op::Reshape { shape }, &[dy])?);
            }
        }
        other => return Err(CompileError::NoGradient { node: node.name.clone(), op: other.name() }),
    }
    Ok(grads)
}

pub fn flops(op: &Op, inputs: &[&[usize]], outputs: &[&[usize]]) -> u64 {
    match op {
        Op::MatMul(m) => {
            let inner = if m.trans_a { inputs[0][0] } else { inputs[0][1] };
            2 * numel(outputs[0]) * inner as u64
        }
        // One add, multiply, comparison or select per output element.
        Op::BiasAdd | Op::Add | Op::Mul | Op::Relu | Op::ReluGrad | Op::Clip(_) | Op::ClipGrad(_) => numel(outputs[0]),
        // One add per input element folded into its channel's sum.
        Op::BiasGrad => numel(inputs[0]),
        // At most a copy, which moves memory but computes nothing.
        Op::Reshape { .. } => 0,
        other => unreachable!("dense::flops dispatched for {}", other.name()),
    }
}
