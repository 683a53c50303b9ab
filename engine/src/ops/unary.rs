//! The unary maths family: elementwise functions of one float tensor, each defined once by its
//! [`UnaryFormula`] (forward formula and derivative, in `crate::kernels::unary`), their backward
//! ops, and the bool `Not`.

use alloc::vec;
use alloc::vec::Vec;
use core::ops::Range;
use serde::{Deserialize, Serialize};

use super::{Check, OpRules, ShapeError};
use crate::kernels::reference::unary as kernel;
use crate::kernels::unary::{
    Abs, Ceil, Cos, Elu, Erf, Exp, Floor, HardSigmoid, LeakyRelu, Log, Neg, Reciprocal, Round, Saves, Sigmoid, Sign, Sin, Softplus, Sqrt,
    Tanh,
};
use crate::kernels::{Float, KernelError, NodeArgs};
use crate::plan::DType;

pub use crate::kernels::unary::UnaryFormula;

/// A float function of one argument. Append new functions at the end: the variant index is part
/// of the plan encoding of [`UnaryOp`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum UnaryFn {
    Neg(Neg),
    Exp(Exp),
    Log(Log),
    Sqrt(Sqrt),
    Reciprocal(Reciprocal),
    Tanh(Tanh),
    Sigmoid(Sigmoid),
    Erf(Erf),
    Abs(Abs),
    Sin(Sin),
    Cos(Cos),
    Softplus(Softplus),
    LeakyRelu(LeakyRelu),
    Elu(Elu),
    HardSigmoid(HardSigmoid),
    Floor(Floor),
    Ceil(Ceil),
    Round(Round),
    Sign(Sign),
}

/// Evaluates `$body` with `$f` bound to the [`UnaryFormula`] inside a [`UnaryFn`]: the one list of
/// every function, so that kernels and rules are generated per function from one definition.
#[macro_export]
macro_rules! dispatch_unary {
    ($fun:expr, $f:ident => $body:expr) => {{
        use $crate::ops::UnaryFn as U;
        match $fun {
            U::Neg($f) => $body,
            U::Exp($f) => $body,
            U::Log($f) => $body,
            U::Sqrt($f) => $body,
            U::Reciprocal($f) => $body,
            U::Tanh($f) => $body,
            U::Sigmoid($f) => $body,
            U::Erf($f) => $body,
            U::Abs($f) => $body,
            U::Sin($f) => $body,
            U::Cos($f) => $body,
            U::Softplus($f) => $body,
            U::LeakyRelu($f) => $body,
            U::Elu($f) => $body,
            U::HardSigmoid($f) => $body,
            U::Floor($f) => $body,
            U::Ceil($f) => $body,
            U::Round($f) => $body,
            U::Sign($f) => $body,
        }
    }};
}

/// Reads a formula's associated constant through a value (the dispatch binds values, not types).
fn saves_of<F: UnaryFormula>(_: &F) -> Saves {
    F::SAVES
}

fn name_of<F: UnaryFormula>(_: &F) -> &'static str {
    F::NAME
}

fn grad_name_of<F: UnaryFormula>(_: &F) -> &'static str {
    F::GRAD_NAME
}

impl UnaryFn {
    pub fn name(&self) -> &'static str {
        dispatch_unary!(self, f => name_of(f))
    }

    /// The forward value the derivative reads, which the backward pass keeps.
    pub fn saves(&self) -> Saves {
        dispatch_unary!(self, f => saves_of(f))
    }
}

/// The unary family. Append new ops at the end (the variant index is the plan encoding, followed
/// by the function's index for `Map` and `Grad`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum UnaryOp {
    /// `[x] -> [y]`, same shape: `y = f(x)`.
    Map(UnaryFn),
    /// `[dy, saved] -> [dx]`, or `[dy] -> [dx]` when the function saves nothing:
    /// `dx = dy * f'(saved)`, where `saved` is `x` or `y` as [`UnaryFn::saves`] says.
    Grad(UnaryFn),
    /// `[x] -> [y]`, bool to bool: logical not.
    Not,
}

impl OpRules for UnaryOp {
    fn name(&self) -> &'static str {
        match self {
            UnaryOp::Map(f) => f.name(),
            UnaryOp::Grad(f) => dispatch_unary!(f, f => grad_name_of(f)),
            UnaryOp::Not => "Not",
        }
    }

    fn input_arity(&self) -> Option<usize> {
        Some(match self {
            UnaryOp::Map(_) | UnaryOp::Not => 1,
            UnaryOp::Grad(f) if f.saves() == Saves::Nothing => 1,
            UnaryOp::Grad(_) => 2,
        })
    }

    fn dtype_rule(&self, check: Check, inputs: &[DType]) -> Result<Vec<DType>, ShapeError> {
        match self {
            UnaryOp::Map(_) | UnaryOp::Grad(_) => check.floats(inputs, 1),
            UnaryOp::Not => {
                check.dtypes(inputs, &[DType::Bool])?;
                Ok(vec![DType::Bool])
            }
        }
    }

    fn inplace_outputs(&self) -> Range<usize> {
        0..0
    }

    fn shape_rule(&self, check: Check, inputs: &[&[usize]]) -> Result<Vec<Vec<usize>>, ShapeError> {
        if let [dy, saved] = inputs {
            check.same(dy, saved, "dy vs saved forward value")?;
        }
        Ok(vec![inputs[0].to_vec()])
    }

    fn execute<T: Float>(&self, args: NodeArgs<'_, '_, T>) -> Result<(), KernelError> {
        match self {
            UnaryOp::Map(f) => {
                let (i, o) = (args.inputs, args.outputs);
                dispatch_unary!(f, f => kernel::apply(f, i[0].data, o[0].data))
            }
            UnaryOp::Grad(f) => {
                let (i, o) = (args.inputs, args.outputs);
                match i {
                    [dy] => dispatch_unary!(f, f => kernel::grad_constant(f, dy.data, o[0].data)),
                    [dy, saved] => dispatch_unary!(f, f => kernel::grad(f, dy.data, saved.data, o[0].data)),
                    _ => return Err(KernelError::Invalid { op: "UnaryGrad", message: "expects one or two float inputs" }),
                }
            }
            UnaryOp::Not => kernel::not(args.bool_inputs[0].data, args.bool_outputs[0].data),
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
    fn grad_arity_follows_what_the_function_saves() {
        let neg: Op = UnaryOp::Grad(UnaryFn::Neg(Neg)).into();
        assert_eq!(neg.input_arity(), Some(1));
        let exp: Op = UnaryOp::Grad(UnaryFn::Exp(Exp)).into();
        assert_eq!(exp.input_arity(), Some(2));
        assert_eq!(exp.name(), "ExpGrad");
        let e = exp.output_shapes(&[&[2, 3], &[3, 2]]).unwrap_err();
        assert_eq!(e.to_string(), "ExpGrad: dy vs saved forward value: shapes [2, 3] and [3, 2] differ");
    }

    #[test]
    fn not_is_bool_only_and_maps_are_float_only() {
        let not: Op = UnaryOp::Not.into();
        assert_eq!(not.output_dtypes(&[DType::Bool]).unwrap(), [DType::Bool]);
        assert_eq!(not.output_dtypes(&[DType::F32]).unwrap_err().to_string(), "Not: input 0 is float32, expected bool");
        let exp: Op = UnaryOp::Map(UnaryFn::Exp(Exp)).into();
        assert_eq!(exp.output_dtypes(&[DType::I64]).unwrap_err().to_string(), "Exp: input 0 is int64, expected float32");
        let x = [0u8, 1, 7];
        let mut y = [9u8; 3];
        let args = NodeArgs {
            inputs: &[] as &[View<f32>],
            int_inputs: &[],
            bool_inputs: &[View { data: &x, shape: &[3] }],
            outputs: &mut [],
            int_outputs: &mut [],
            bool_outputs: &mut [ViewMut { data: &mut y, shape: &[3] }],
        };
        not.execute(args).unwrap();
        assert_eq!(y, [1, 0, 0]);
    }

    #[test]
    fn map_runs_the_formula_through_the_op() {
        let op: Op = UnaryOp::Map(UnaryFn::LeakyRelu(LeakyRelu { alpha: 0.5 })).into();
        let x = [-2.0f64, 3.0];
        let mut y = [0.0; 2];
        op.execute(NodeArgs::floats(&[View { data: &x, shape: &[2] }], &mut [ViewMut { data: &mut y, shape: &[2] }])).unwrap();
        assert_eq!(y, [-1.0, 3.0]);
        assert_eq!(op.name(), "LeakyRelu");
    }
}
