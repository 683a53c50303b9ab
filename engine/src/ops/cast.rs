//! Conversion between the dtypes a plan runs: float, `i64` and bool.

use alloc::vec;
use alloc::vec::Vec;
use core::ops::Range;
use serde::{Deserialize, Serialize};

use super::{Check, OpRules, ShapeError};
use crate::kernels::reference::cast as kernel;
use crate::kernels::{Float, KernelError, NodeArgs};
use crate::plan::DType;

/// The dtypes a cast reads and writes (the engine runs no other).
const RUNNABLE: [DType; 3] = [DType::F32, DType::I64, DType::Bool];

/// The cast family. Append new ops at the end (the variant index is the plan encoding).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum CastOp {
    /// `[x] -> [y]`, same shape, `y` of dtype `to`, as ONNX `Cast` and PyTorch's `.to(dtype)`:
    /// float to `i64` truncates toward zero (saturating; NaN becomes 0), anything to bool is
    /// `x != 0` (NaN is true), bool to a number is 0 or 1, `i64` to float rounds to nearest.
    Cast { to: DType },
}

impl OpRules for CastOp {
    fn name(&self) -> &'static str {
        match self {
            CastOp::Cast { .. } => "Cast",
        }
    }

    fn input_arity(&self) -> Option<usize> {
        Some(1)
    }

    fn dtype_rule(&self, check: Check, inputs: &[DType]) -> Result<Vec<DType>, ShapeError> {
        match self {
            CastOp::Cast { to } => {
                if !RUNNABLE.contains(&inputs[0]) {
                    return Err(check.err(alloc::format!("cannot cast from {}: the engine runs float32, int64 and bool", inputs[0].name())));
                }
                if !RUNNABLE.contains(to) {
                    return Err(check.err(alloc::format!("cannot cast to {}: the engine runs float32, int64 and bool", to.name())));
                }
                Ok(vec![*to])
            }
        }
    }

    fn inplace_outputs(&self) -> Range<usize> {
        0..0
    }

    fn shape_rule(&self, _check: Check, inputs: &[&[usize]]) -> Result<Vec<Vec<usize>>, ShapeError> {
        match self {
            CastOp::Cast { .. } => Ok(vec![inputs[0].to_vec()]),
        }
    }

    fn execute<T: Float>(&self, args: NodeArgs<'_, '_, T>) -> Result<(), KernelError> {
        let CastOp::Cast { .. } = self;
        // The dtype rule puts the one input and the one output in exactly one slice each, so the
        // non-empty slices say which conversion this node does.
        let NodeArgs { inputs, int_inputs, bool_inputs, outputs, int_outputs, bool_outputs } = args;
        match (inputs, int_inputs, bool_inputs) {
            ([x], [], []) => match (outputs, int_outputs, bool_outputs) {
                ([y], [], []) => y.data.copy_from_slice(x.data),
                ([], [y], []) => kernel::float_to_int(x.data, y.data),
                ([], [], [y]) => kernel::to_bool(x.data, y.data, T::zero()),
                _ => return Err(wrong_arguments()),
            },
            ([], [x], []) => match (outputs, int_outputs, bool_outputs) {
                ([y], [], []) => kernel::int_to_float(x.data, y.data),
                ([], [y], []) => y.data.copy_from_slice(x.data),
                ([], [], [y]) => kernel::to_bool(x.data, y.data, 0),
                _ => return Err(wrong_arguments()),
            },
            ([], [], [x]) => match (outputs, int_outputs, bool_outputs) {
                ([y], [], []) => kernel::bool_to(x.data, y.data, T::zero(), T::one()),
                ([], [y], []) => kernel::bool_to(x.data, y.data, 0, 1),
                ([], [], [y]) => kernel::bool_to(x.data, y.data, 0, 1),
                _ => return Err(wrong_arguments()),
            },
            _ => return Err(wrong_arguments()),
        }
        Ok(())
    }
}

fn wrong_arguments() -> KernelError {
    KernelError::Invalid { op: "Cast", message: "expects one input and one output" }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{View, ViewMut};
    use crate::ops::Op;

    const SHAPE: &[usize] = &[2, 2];

    fn cast(to: DType) -> Op {
        CastOp::Cast { to }.into()
    }

    #[test]
    fn every_conversion_runs_through_typed_arguments() {
        let floats = [1.5f64, -2.5, 0.0, 3.0];
        let ints = [1i64, -2, 0, 3];
        let bools = [1u8, 1, 0, 1];
        let f_in = [View { data: &floats[..], shape: SHAPE }];
        let i_in = [View { data: &ints[..], shape: SHAPE }];
        let b_in = [View { data: &bools[..], shape: SHAPE }];
        for (from, to) in [DType::F32, DType::I64, DType::Bool].iter().flat_map(|&a| [DType::F32, DType::I64, DType::Bool].map(|b| (a, b)))
        {
            let (mut f, mut i, mut b) = ([f64::NAN; 4], [99i64; 4], [99u8; 4]);
            let mut f_out = [ViewMut { data: &mut f[..], shape: SHAPE }];
            let mut i_out = [ViewMut { data: &mut i[..], shape: SHAPE }];
            let mut b_out = [ViewMut { data: &mut b[..], shape: SHAPE }];
            let args = NodeArgs {
                inputs: if from == DType::F32 { &f_in } else { &[] },
                int_inputs: if from == DType::I64 { &i_in } else { &[] },
                bool_inputs: if from == DType::Bool { &b_in } else { &[] },
                outputs: if to == DType::F32 { &mut f_out } else { &mut [] },
                int_outputs: if to == DType::I64 { &mut i_out } else { &mut [] },
                bool_outputs: if to == DType::Bool { &mut b_out } else { &mut [] },
            };
            cast(to).execute(args).unwrap();
            let what = alloc::format!("{} -> {}", from.name(), to.name());
            match (from, to) {
                (DType::F32, DType::F32) => assert_eq!(f, floats, "{what}"),
                (DType::F32, DType::I64) => assert_eq!(i, [1, -2, 0, 3], "{what}"),
                (DType::I64 | DType::Bool, DType::F32) => {
                    let want = if from == DType::I64 { [1.0, -2.0, 0.0, 3.0] } else { [1.0, 1.0, 0.0, 1.0] };
                    assert_eq!(f, want, "{what}");
                }
                (DType::I64, DType::I64) => assert_eq!(i, ints, "{what}"),
                (DType::Bool, DType::I64) => assert_eq!(i, [1, 1, 0, 1], "{what}"),
                (_, DType::Bool) => assert_eq!(b, bools, "{what}"),
                _ => unreachable!(),
            }
        }
    }

    #[test]
    fn arguments_in_the_wrong_slice_are_an_error_not_a_panic() {
        let x = [1.0f32];
        let mut y = [0i64];
        let args = NodeArgs {
            inputs: &[View { data: &x[..], shape: &[1] }],
            int_inputs: &[],
            bool_inputs: &[],
            outputs: &mut [],
            int_outputs: &mut [ViewMut { data: &mut y[..], shape: &[1] }, ViewMut { data: &mut [], shape: &[0] }],
            bool_outputs: &mut [],
        };
        assert!(matches!(cast(DType::I64).execute(args), Err(KernelError::Invalid { op: "Cast", .. })));
    }

    #[test]
    fn dtype_rule_declares_the_output_and_refuses_what_the_engine_does_not_run() {
        assert_eq!(cast(DType::Bool).output_dtypes(&[DType::F32]).unwrap(), [DType::Bool]);
        assert_eq!(cast(DType::F32).output_dtypes(&[DType::I64]).unwrap(), [DType::F32]);
        let e = cast(DType::F16).output_dtypes(&[DType::F32]).unwrap_err();
        assert_eq!(e.to_string(), "Cast: cannot cast to float16: the engine runs float32, int64 and bool");
        let e = cast(DType::F32).output_dtypes(&[DType::I8]).unwrap_err();
        assert!(e.message.contains("cannot cast from int8"), "{e}");
        assert_eq!(cast(DType::I64).output_shapes(&[&[3, 0, 2]]).unwrap(), [[3, 0, 2]]);
    }

    #[test]
    fn float_ops_refuse_integer_inputs_by_their_dtype_rule() {
        let relu: Op = crate::ops::DenseOp::Relu.into();
        let e = relu.output_dtypes(&[DType::I64]).unwrap_err();
        assert_eq!(e.to_string(), "Relu: input 0 is int64, expected float32");
        let sce: Op = crate::ops::LossOp::SoftmaxCrossEntropy(crate::ops::Reduction::Mean).into();
        assert_eq!(sce.output_dtypes(&[DType::F32, DType::I64]).unwrap(), [DType::F32]);
        let e = sce.output_dtypes(&[DType::F32, DType::F32]).unwrap_err();
        assert_eq!(e.message, "input 1 is float32, expected int64");
    }
}
