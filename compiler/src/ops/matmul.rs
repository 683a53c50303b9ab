//! Gradient rule and cost of the batched matmul family.

use pock_engine::ops::{DenseOp, MatMul, MatMulOp};

use super::broadcast::sum_to;
use super::{numel, CompileRules, GradCtx};
use crate::error::Result;
use crate::ir::{Node, TensorId};

impl CompileRules for MatMulOp {
    fn gradient(&self, ctx: &mut GradCtx, node: &Node, dy: &[Option<TensorId>], needs: &[bool]) -> Result<Vec<Option<TensorId>>> {
        let mut grads = vec![None; node.inputs.len()];
        let Some(dy) = dy[0] else { return Ok(grads) };
        let MatMulOp::BatchMatMul(m) = self;
        let (a, b) = (node.inputs[0], node.inputs[1]);
        let (a_shape, b_shape) = (ctx.shape(a), ctx.shape(b));
        // A 1-D operand is the row [1, K] (a) or the column [K, 1] (b) whose axis the output
        // dropped: reshaping it, and dy, to those matrices lets the 2-D rules below apply.
        let (a_vec, b_vec) = (a_shape.len() == 1, b_shape.len() == 1);
        let (a_mat, b_mat) =
            (if a_vec { vec![1, a_shape[0]] } else { a_shape.clone() }, if b_vec { vec![b_shape[0], 1] } else { b_shape.clone() });
        let dy = if a_vec || b_vec {
            let mut full = ctx.shape(dy);
            let n_at = full.len();
            if a_vec {
                full.insert(if b_vec { n_at } else { n_at - 1 }, 1);
            }
            if b_vec {
                full.push(1);
            }
            ctx.emit1("dy2", DenseOp::Reshape { shape: full }, &[dy])?
        } else {
            dy
        };
        // The 2-D rules of the dense MatMul, matrix by matrix. `dy` has the full broadcast batch,
        // so each product does too; it is then summed over the batch axes its operand broadcast.
        if needs[0] {
            let b = promoted(ctx, "b2", b, b_vec, &b_mat)?;
            let full = if m.trans_a {
                // a is stored as A^T, so da = dA^T = B @ dy^T.
                ctx.emit1("da", MatMulOp::BatchMatMul(MatMul { trans_a: m.trans_b, trans_b: true }), &[b, dy])?
            } else {
                ctx.emit1("da", MatMulOp::BatchMatMul(MatMul { trans_a: false, trans_b: !m.trans_b }), &[dy, b])?
            };
            let da = sum_to(ctx, "da", full, a_mat.clone())?;
            grads[0] = Some(promoted(ctx, "da.vec", da, a_vec, &a_shape)?);
        }
        if needs[1] {
            let a = promoted(ctx, "a2", a, a_vec, &a_mat)?;
            let full = if m.trans_b {
                // b is stored as B^T, so db = dB^T = dy^T @ A.
                ctx.emit1("db", MatMulOp::BatchMatMul(MatMul { trans_a: true, trans_b: m.trans_a }), &[dy, a])?
            } else {
                ctx.emit1("db", MatMulOp::BatchMatMul(MatMul { trans_a: !m.trans_a, trans_b: false }), &[a, dy])?
            };
            let db = sum_to(ctx, "db", full, b_mat.clone())?;
            grads[1] = Some(promoted(ctx, "db.vec", db, b_vec, &b_shape)?);
        }
        Ok(grads)
    }

    fn flops(&self, inputs: &[&[usize]], outputs: &[&[usize]]) -> u64 {
        let MatMulOp::BatchMatMul(m) = self;
        let a = inputs[0];
        let inner = match a.len() {
            1 => a[0],
            r if m.trans_a => a[r - 2],
            r => a[r - 1],
        };
        2 * numel(outputs[0]) * inner as u64
    }
}

/// `t` reshaped to `shape` when it is a 1-D operand (or its gradient), else `t` itself.
fn promoted(ctx: &mut GradCtx, suffix: &str, t: TensorId, is_vec: bool, shape: &[usize]) -> Result<TensorId> {
    if is_vec {
        ctx.emit1(suffix, DenseOp::Reshape { shape: shape.to_vec() }, &[t])
    } else {
        Ok(t)
    }
}
