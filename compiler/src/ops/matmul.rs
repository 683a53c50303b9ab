//! Gradient rule and cost of the batched matmul family.

use pock_engine::ops::{MatMul, MatMulOp};

use super::movement::sum_to_shape;
use super::{numel, CompileRules, GradCtx};
use crate::error::Result;
use crate::ir::{Node, TensorId};

impl CompileRules for MatMulOp {
    fn gradient(&self, ctx: &mut GradCtx, node: &Node, dy: &[Option<TensorId>], needs: &[bool]) -> Result<Vec<Option<TensorId>>> {
        let mut grads = vec![None; node.inputs.len()];
        let Some(dy) = dy[0] else { return Ok(grads) };
        let MatMulOp::BatchMatMul(m) = self;
        let (a, b) = (node.inputs[0], node.inputs[1]);
        // The 2-D rules of the dense MatMul, matrix by matrix. `dy` has the full broadcast batch,
        // so each product does too; it is then summed over the batch axes its operand broadcast.
        if needs[0] {
            let full = if m.trans_a {
                // a is stored as A^T, so da = dA^T = B @ dy^T.
                ctx.emit1("da", MatMulOp::BatchMatMul(MatMul { trans_a: m.trans_b, trans_b: true }), &[b, dy])?
            } else {
                ctx.emit1("da", MatMulOp::BatchMatMul(MatMul { trans_a: false, trans_b: !m.trans_b }), &[dy, b])?
            };
            grads[0] = Some(sum_to_shape(ctx, "da", full, &ctx.shape(a))?);
        }
        if needs[1] {
            let full = if m.trans_b {
                // b is stored as B^T, so db = dB^T = dy^T @ A.
                ctx.emit1("db", MatMulOp::BatchMatMul(MatMul { trans_a: true, trans_b: m.trans_a }), &[dy, a])?
            } else {
                ctx.emit1("db", MatMulOp::BatchMatMul(MatMul { trans_a: !m.trans_a, trans_b: false }), &[a, dy])?
            };
            grads[1] = Some(sum_to_shape(ctx, "db", full, &ctx.shape(b))?);
        }
        Ok(grads)
    }

    fn flops(&self, inputs: &[&[usize]], outputs: &[&[usize]]) -> u64 {
        let MatMulOp::BatchMatMul(m) = self;
        let a = inputs[0];
        let inner = if m.trans_a { a[a.len() - 2] } else { a[a.len() - 1] };
        2 * numel(outputs[0]) * inner as u64
    }
}
