//! Batched matrix multiplication with numpy broadcasting of the batch axes (ONNX `MatMul` for
//! operands of rank >= 2). The 2-D `MatMul` of the dense family stays the zoo's op.

use alloc::vec;
use alloc::vec::Vec;
use core::ops::Range;
use serde::{Deserialize, Serialize};

use super::{broadcast_shapes, Check, MatMul, OpRules, ShapeError};
use crate::kernels::reference::matmul as kernel;
use crate::kernels::{Float, KernelError, NodeArgs};
use crate::plan::DType;

/// The batched matmul family. Append new ops at the end (the variant index is the plan encoding).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum MatMulOp {
    /// `[a, b] -> [y]`: `a` is `[..., M, K]` (`[..., K, M]` with `trans_a`), `b` is `[..., K, N]`
    /// (`[..., N, K]` with `trans_b`); the batch axes (all but the last two) broadcast as numpy's,
    /// and `y` is `[broadcast batch..., M, N]`. As in ONNX, a 1-D `a` is a row `[1, K]` and a 1-D
    /// `b` a column `[K, 1]` whose added axis is dropped from `y` (1-D operands are never
    /// transposed).
    BatchMatMul(MatMul),
}

impl OpRules for MatMulOp {
    fn name(&self) -> &'static str {
        match self {
            MatMulOp::BatchMatMul(_) => "BatchMatMul",
        }
    }

    fn input_arity(&self) -> Option<usize> {
        Some(2)
    }

    fn dtype_rule(&self, check: Check, inputs: &[DType]) -> Result<Vec<DType>, ShapeError> {
        check.floats(inputs, 1)
    }

    fn inplace_outputs(&self) -> Range<usize> {
        0..0
    }

    fn shape_rule(&self, check: Check, inputs: &[&[usize]]) -> Result<Vec<Vec<usize>>, ShapeError> {
        let MatMulOp::BatchMatMul(m) = self;
        let (a, b) = (inputs[0], inputs[1]);
        if a.is_empty() || b.is_empty() {
            return Err(check.err(alloc::format!("operands must have rank >= 1, got {a:?} and {b:?}")));
        }
        if (a.len() == 1 && m.trans_a) || (b.len() == 1 && m.trans_b) {
            return Err(check.err("a 1-D operand cannot be transposed"));
        }
        // A 1-D `a` is the row [1, K] and a 1-D `b` the column [K, 1], with no batch axes; the
        // output drops the axis each brings.
        let (ra, rb) = (a.len().saturating_sub(2), b.len().saturating_sub(2));
        let (a2, b2) =
            (if a.len() == 1 { [1, a[0]] } else { [a[ra], a[ra + 1]] }, if b.len() == 1 { [b[0], 1] } else { [b[rb], b[rb + 1]] });
        let (mm, ka) = if m.trans_a { (a2[1], a2[0]) } else { (a2[0], a2[1]) };
        let (kb, nn) = if m.trans_b { (b2[1], b2[0]) } else { (b2[0], b2[1]) };
        if ka != kb {
            return Err(check.err(alloc::format!(
                "inner dimensions differ: a {a:?}, b {b:?} (trans_a {}, trans_b {})",
                m.trans_a,
                m.trans_b
            )));
        }
        let (a_batch, b_batch) = (&a[..ra], &b[..rb]);
        let mut y = broadcast_shapes(check, a_batch, b_batch)
            .map_err(|_| check.err(alloc::format!("batch axes {a_batch:?} of a {a:?} and {b_batch:?} of b {b:?} do not broadcast")))?;
        if a.len() > 1 {
            y.push(mm);
        }
        if b.len() > 1 {
            y.push(nn);
        }
        Ok(vec![y])
    }

    fn execute<T: Float>(&self, args: NodeArgs<'_, '_, T>) -> Result<(), KernelError> {
        let MatMulOp::BatchMatMul(m) = self;
        let NodeArgs { inputs: i, outputs: o, .. } = args;
        kernel::batch_matmul(m, i[0], i[1], &mut o[0]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::Op;

    fn bmm(trans_a: bool, trans_b: bool) -> Op {
        MatMulOp::BatchMatMul(MatMul { trans_a, trans_b }).into()
    }

    #[test]
    fn batch_axes_broadcast() {
        assert_eq!(bmm(false, false).output_shapes(&[&[2, 1, 3, 4], &[5, 4, 6]]).unwrap(), [[2, 5, 3, 6]]);
        assert_eq!(bmm(true, true).output_shapes(&[&[7, 4, 3], &[6, 4]]).unwrap(), [[7, 3, 6]]);
        assert_eq!(bmm(false, false).output_shapes(&[&[3, 4], &[4, 6]]).unwrap(), [[3, 6]]);
        let e = bmm(false, false).output_shapes(&[&[2, 3, 4], &[3, 4, 6]]).unwrap_err();
        assert_eq!(e.message, "batch axes [2] of a [2, 3, 4] and [3] of b [3, 4, 6] do not broadcast");
        assert!(bmm(false, false).output_shapes(&[&[2, 3, 4], &[5, 6]]).unwrap_err().message.contains("inner dimensions"));
        assert_eq!(bmm(false, false).output_shapes(&[&[4], &[2, 4, 6]]).unwrap(), [[2, 6]]);
        assert_eq!(bmm(true, false).output_shapes(&[&[2, 4, 3], &[4]]).unwrap(), [[2, 3]]);
        assert_eq!(bmm(false, false).output_shapes(&[&[4], &[4]]).unwrap(), [Vec::<usize>::new()]);
        assert!(bmm(true, false).output_shapes(&[&[4], &[4, 6]]).unwrap_err().message.contains("1-D"));
        assert!(bmm(false, false).output_shapes(&[&[], &[4, 6]]).unwrap_err().message.contains("rank >= 1"));
    }
}
