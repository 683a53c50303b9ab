//! The mask family: 1-bit activation masks for the backward pass. A ReLU or Clip (ReLU6) gradient
//! only asks, per element, whether the gradient passes; keeping that answer as one bit instead of
//! the 32-bit activation cuts what the backward pass holds for the activation by 32x. The compiler
//! emits these ops (`compiler/src/mask.rs`) in place of `ReluGrad`/`ClipGrad` where the activation
//! would otherwise be kept only for that gradient.
//!
//! Layout: element `i` of the activation is bit `i % 8` (least significant first) of byte `i / 8`
//! of a `[ceil(n / 8)]` `u8` tensor; the unused high bits of the last byte are 0.

use alloc::vec;
use alloc::vec::Vec;
use core::ops::Range;
use serde::{Deserialize, Serialize};

use super::{Check, Clip, OpRules, ShapeError};
use crate::kernels::reference::mask as kernel;
use crate::kernels::{Float, KernelError, NodeArgs};
use crate::plan::DType;

/// Which elements let the gradient through: the predicate of the gradient op the mask replaces,
/// so that `MaskGrad(dy, MaskPack(v))` equals that op on `(dy, v)` bit for bit.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum MaskKind {
    /// `v > 0` (`ReluGrad`; NaN does not pass).
    Relu,
    /// `min < v < max` strictly (`ClipGrad`; ReLU6 is `Clip { 0, 6 }`; NaN does not pass).
    Clip(Clip),
}

/// The mask family. Append new ops at the end (the variant index is the plan encoding).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum MaskOp {
    /// `[v] -> [bits]`: `v` float of any shape (`n` elements), `bits` `u8` `[ceil(n / 8)]`; bit
    /// `i` is set where element `i` passes the kind's predicate.
    Pack(MaskKind),
    /// `[dy, bits] -> [dx]`: `dx = dy` where bit `i` is set, else 0; `bits` is `[ceil(n / 8)]`
    /// for `n` elements of `dy`.
    Grad,
}

/// The shape of the packed mask of a tensor with `numel` elements.
pub fn packed_shape(numel: usize) -> Vec<usize> {
    vec![numel.div_ceil(8)]
}

impl OpRules for MaskOp {
    fn name(&self) -> &'static str {
        match self {
            MaskOp::Pack(_) => "MaskPack",
            MaskOp::Grad => "MaskGrad",
        }
    }

    fn input_arity(&self) -> Option<usize> {
        Some(match self {
            MaskOp::Pack(_) => 1,
            MaskOp::Grad => 2,
        })
    }

    fn dtype_rule(&self, check: Check, inputs: &[DType]) -> Result<Vec<DType>, ShapeError> {
        match self {
            MaskOp::Pack(_) => {
                check.dtypes(inputs, &[DType::F32])?;
                Ok(vec![DType::U8])
            }
            MaskOp::Grad => {
                check.dtypes(inputs, &[DType::F32, DType::U8])?;
                Ok(vec![DType::F32])
            }
        }
    }

    fn inplace_outputs(&self) -> Range<usize> {
        0..0
    }

    fn shape_rule(&self, check: Check, inputs: &[&[usize]]) -> Result<Vec<Vec<usize>>, ShapeError> {
        let n = check.numel(inputs[0])?;
        match self {
            MaskOp::Pack(_) => Ok(vec![packed_shape(n)]),
            MaskOp::Grad => {
                check.same(inputs[1], &packed_shape(n), "bits vs the packed shape of dy")?;
                Ok(vec![inputs[0].to_vec()])
            }
        }
    }

    fn execute<T: Float>(&self, args: NodeArgs<'_, '_, T>) -> Result<(), KernelError> {
        match self {
            MaskOp::Pack(kind) => kernel::pack(kind, args.inputs[0].data, args.bool_outputs[0].data),
            MaskOp::Grad => kernel::grad(args.inputs[0].data, args.bool_inputs[0].data, args.outputs[0].data),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{View, ViewMut};
    use crate::ops::Op;

    #[test]
    fn shapes_and_dtypes() {
        let pack: Op = MaskOp::Pack(MaskKind::Relu).into();
        assert_eq!(pack.output_shapes(&[&[2, 3, 3]]).unwrap(), [[3]]);
        assert_eq!(pack.output_shapes(&[&[2, 4]]).unwrap(), [[1]]);
        assert_eq!(pack.output_shapes(&[&[0, 4]]).unwrap(), [[0]]);
        assert_eq!(pack.output_dtypes(&[DType::F32]).unwrap(), [DType::U8]);
        assert_eq!(pack.output_dtypes(&[DType::Bool]).unwrap_err().to_string(), "MaskPack: input 0 is bool, expected float32");
        let grad: Op = MaskOp::Grad.into();
        assert_eq!(grad.output_shapes(&[&[2, 9], &[3]]).unwrap(), [[2, 9]]);
        let e = grad.output_shapes(&[&[2, 9], &[2]]).unwrap_err();
        assert_eq!(e.to_string(), "MaskGrad: bits vs the packed shape of dy: shapes [2] and [3] differ");
        assert_eq!(grad.output_dtypes(&[DType::F32, DType::U8]).unwrap(), [DType::F32]);
        // A bool tensor is one byte per element too, but it is not a packed mask.
        assert!(grad.output_dtypes(&[DType::F32, DType::Bool]).is_err());
    }

    #[test]
    fn ops_run_through_the_dispatch() {
        let x = [1.0f32, -1.0, 0.5, 6.0, 0.0, 2.0, 7.0, 3.0, 5.0];
        let mut bits = [0xffu8; 2];
        let pack: Op = MaskOp::Pack(MaskKind::Clip(Clip { min: 0.0, max: 6.0 })).into();
        pack.execute(NodeArgs {
            inputs: &[View { data: &x, shape: &[9] }],
            int_inputs: &[],
            bool_inputs: &[],
            outputs: &mut [],
            int_outputs: &mut [],
            bool_outputs: &mut [ViewMut { data: &mut bits, shape: &[2] }],
        })
        .unwrap();
        // Passing: 1.0 (bit 0), 0.5 (bit 2), 2.0 (bit 5), 3.0 (bit 7); 5.0 is bit 0 of byte 1.
        assert_eq!(bits, [0b1010_0101, 0b0000_0001]);
        let dy = [10.0f32; 9];
        let mut dx = [9.0f32; 9];
        let grad: Op = MaskOp::Grad.into();
        grad.execute(NodeArgs {
            inputs: &[View { data: &dy, shape: &[9] }],
            int_inputs: &[],
            bool_inputs: &[View { data: &bits, shape: &[2] }],
            outputs: &mut [ViewMut { data: &mut dx, shape: &[9] }],
            int_outputs: &mut [],
            bool_outputs: &mut [],
        })
        .unwrap();
        assert_eq!(dx, [10.0, 0.0, 10.0, 0.0, 0.0, 10.0, 0.0, 10.0, 10.0]);
    }
}
