//! Gradient rules and costs of the broadcasting family. Every float input's gradient is computed
//! at the output's (broadcast) shape and then summed back over the axes along which that input
//! was broadcast ([`BroadcastOp::SumTo`], emitted only where the shapes differ), so the gradient
//! of `b[C]` in `a[B, T, C] + b[C]` is `db[C]`.
//!
//! What each rule keeps for the backward pass: Add and Sub nothing; Mul the other operand; Div
//! the divisor (and the dividend for the divisor's gradient); Pow, Max and Min both operands;
//! Where the condition. Comparisons and logic have bool outputs, which are never differentiated.

use pock_engine::ops::{BroadcastOp, UnaryFn, UnaryOp};

use super::{no_gradient, numel, CompileRules, GradCtx};
use crate::error::Result;
use crate::ir::{Node, TensorId};

/// `g` summed down to `shape` (the shape of the input it is the gradient of), or `g` itself when
/// that input was not broadcast. Every rule whose forward broadcasts (this family, Expand,
/// BatchMatMul) sums its gradient back through this one helper.
pub(super) fn sum_to(ctx: &mut GradCtx, suffix: &str, g: TensorId, shape: Vec<usize>) -> Result<TensorId> {
    if ctx.shape(g) == shape {
        return Ok(g);
    }
    ctx.emit1(&format!("{suffix}.sum"), BroadcastOp::SumTo { shape }, &[g])
}

impl CompileRules for BroadcastOp {
    fn gradient(&self, ctx: &mut GradCtx, node: &Node, dy: &[Option<TensorId>], needs: &[bool]) -> Result<Vec<Option<TensorId>>> {
        let mut grads = vec![None; node.inputs.len()];
        // An output nobody differentiates (bool, i64, or unused) contributes nothing to any input.
        let Some(dy) = dy[0] else { return Ok(grads) };
        let shapes: Vec<Vec<usize>> = node.inputs.iter().map(|&t| ctx.shape(t)).collect();
        let (a, b) = (node.inputs[0], *node.inputs.get(1).unwrap_or(&node.inputs[0]));
        // Emits `op` over `inputs` at dy's shape and sums the result down to input `pos`'s shape.
        let reduced = |ctx: &mut GradCtx, pos: usize, op: BroadcastOp, inputs: &[TensorId]| -> Result<Option<TensorId>> {
            let suffix = ["da", "db", "dc"][pos];
            let full = ctx.emit1(suffix, op, inputs)?;
            Ok(Some(sum_to(ctx, suffix, full, shapes[pos].clone())?))
        };
        match self {
            BroadcastOp::Add | BroadcastOp::Sub => {
                if needs[0] {
                    grads[0] = Some(sum_to(ctx, "da", dy, shapes[0].clone())?);
                }
                if needs[1] {
                    let db = sum_to(ctx, "db", dy, shapes[1].clone())?;
                    grads[1] = Some(if *self == BroadcastOp::Sub {
                        // Negated after the sum, where the tensor is smallest.
                        ctx.emit1("db.neg", UnaryOp::Map(UnaryFn::Neg(Default::default())), &[db])?
                    } else {
                        db
                    });
                }
            }
            BroadcastOp::Mul => {
                if needs[0] {
                    grads[0] = reduced(ctx, 0, BroadcastOp::Mul, &[dy, b])?;
                }
                if needs[1] {
                    grads[1] = reduced(ctx, 1, BroadcastOp::Mul, &[dy, a])?;
                }
            }
            BroadcastOp::Div => {
                if needs[0] {
                    grads[0] = reduced(ctx, 0, BroadcastOp::Div, &[dy, b])?;
                }
                if needs[1] {
                    grads[1] = reduced(ctx, 1, BroadcastOp::DivGradDivisor, &[dy, a, b])?;
                }
            }
            BroadcastOp::Pow => {
                if needs[0] {
                    grads[0] = reduced(ctx, 0, BroadcastOp::PowGradBase, &[dy, a, b])?;
                }
                if needs[1] {
                    grads[1] = reduced(ctx, 1, BroadcastOp::PowGradExponent, &[dy, a, b])?;
                }
            }
            BroadcastOp::Max | BroadcastOp::Min => {
                let op = if *self == BroadcastOp::Max { BroadcastOp::MaxGrad } else { BroadcastOp::MinGrad };
                // The rule is symmetric: b's share is the same op with the operands swapped, and
                // at a tie each side gets half.
                if needs[0] {
                    grads[0] = reduced(ctx, 0, op.clone(), &[dy, a, b])?;
                }
                if needs[1] {
                    grads[1] = reduced(ctx, 1, op, &[dy, b, a])?;
                }
            }
            BroadcastOp::Where => {
                // dy flows to `a` where the condition holds and to `b` elsewhere; the other side
                // gets a zero, a scalar constant that broadcasts.
                let cond = node.inputs[0];
                if needs[1] || needs[2] {
                    let zero = ctx.constant("zero", vec![], vec![0.0]);
                    if needs[1] {
                        grads[1] = reduced(ctx, 1, BroadcastOp::Where, &[cond, dy, zero])?;
                    }
                    if needs[2] {
                        grads[2] = reduced(ctx, 2, BroadcastOp::Where, &[cond, zero, dy])?;
                    }
                }
            }
            // Bool outputs are never differentiated; the early return above has handled them.
            BroadcastOp::Equal
            | BroadcastOp::Less
            | BroadcastOp::LessOrEqual
            | BroadcastOp::Greater
            | BroadcastOp::GreaterOrEqual
            | BroadcastOp::And
            | BroadcastOp::Or
            | BroadcastOp::Xor => {}
            // Gradient ops are not differentiated again: pock computes first-order gradients only.
            BroadcastOp::SumTo { .. }
            | BroadcastOp::DivGradDivisor
            | BroadcastOp::PowGradBase
            | BroadcastOp::PowGradExponent
            | BroadcastOp::MaxGrad
            | BroadcastOp::MinGrad => return no_gradient(node),
        }
        Ok(grads)
    }

    fn flops(&self, inputs: &[&[usize]], outputs: &[&[usize]]) -> u64 {
        let n = numel(outputs[0]);
        match self {
            // One operation, comparison or select per output element (pow counted as one).
            BroadcastOp::Add
            | BroadcastOp::Sub
            | BroadcastOp::Mul
            | BroadcastOp::Div
            | BroadcastOp::Pow
            | BroadcastOp::Max
            | BroadcastOp::Min
            | BroadcastOp::Equal
            | BroadcastOp::Less
            | BroadcastOp::LessOrEqual
            | BroadcastOp::Greater
            | BroadcastOp::GreaterOrEqual
            | BroadcastOp::And
            | BroadcastOp::Or
            | BroadcastOp::Xor
            | BroadcastOp::Where
            | BroadcastOp::MaxGrad
            | BroadcastOp::MinGrad => n,
            // One add per input element folded into its sum.
            BroadcastOp::SumTo { .. } => numel(inputs[0]),
            // -dy * a / b^2: three multiplications and a division.
            BroadcastOp::DivGradDivisor => 4 * n,
            // A pow (counted as one) and two or three multiplications (and a log).
            BroadcastOp::PowGradBase | BroadcastOp::PowGradExponent => 4 * n,
        }
    }
}
