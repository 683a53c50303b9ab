//! The primitive operations a plan can contain, grouped in families: one file per family holds the
//! family's ops and their attributes, argument conventions, shape rules, and the dispatch to their
//! reference kernels (the kernels themselves are in [`crate::kernels::reference`]).
//!
//! The compiler and the engine share this one definition. The compiler uses [`Op::output_shapes`]
//! to infer shapes while it builds graphs; the engine uses the same rule to validate every node of
//! a plan it loads before any kernel touches memory. Gradient rules and costs live with the
//! compiler (`compiler/src/ops/<family>.rs`), which implements them for each family enum with an
//! exhaustive match.
//!
//! Argument conventions: a node has `inputs` (read only) and `outputs` (written). Some outputs are
//! updated in place ([`Op::inplace_outputs`]): they name persistent tensors (parameters, optimizer
//! state, running statistics, gradient accumulators) whose previous value the kernel reads. Each
//! op declares the dtype of every input and output with its dtype rule ([`Op::output_dtypes`]):
//! float (`f32` in plans), `i64`, bool, `u8` (the mask family's packed bits) or `i8` (the quant
//! family's int8 values; kernels see them as bytes, in the `bool` slices of their arguments).
//!
//! Encoding: plans store an [`Op`] as postcard writes it, the family's variant index followed by
//! the op's index inside its family (see [`crate::format`] for the rule that keeps old indices
//! meaning the same thing).

mod broadcast;
mod cast;
mod conv;
mod dense;
mod loss;
mod mask;
mod matmul;
mod movement;
mod norm;
mod optim;
mod pool;
mod quant;
mod random;
mod reduce;
mod unary;

use alloc::string::String;
use alloc::vec::Vec;
use core::ops::Range;
use serde::{Deserialize, Serialize};

use crate::kernels::{Float, KernelError, NodeArgs};
use crate::plan::DType;

pub use broadcast::{broadcast_shape, BroadcastOp};
pub use cast::CastOp;
pub use conv::{Activation, Conv2d, ConvOp};
pub use dense::{Clip, DenseOp, MatMul};
pub use loss::{CrossEntropy, LossOp, Reduction};
pub use mask::{packed_shape, MaskKind, MaskOp};
pub use matmul::MatMulOp;
pub use movement::{broadcast_shapes, slice_range, MoveOp, Slice};
pub use norm::{BatchNorm, NormOp};
pub use optim::{Adam, GradScale, OptimOp, ParamRows, Sgd};
pub use pool::{Pool2d, PoolOp};
pub use quant::{QLinear, QOutput, QParams, QuantOp};
pub use random::{Dropout, RandomOp};
pub use reduce::{Reduce, ReduceOp};
pub use unary::{UnaryFn, UnaryFormula, UnaryOp};

/// What every op family defines about its ops, besides their arithmetic's gradient and cost
/// (which the compiler adds).
pub trait OpRules {
    /// The op's name, as `pock inspect` and error messages show it.
    fn name(&self) -> &'static str;
    /// Number of inputs the op takes, or `None` when it takes any number (at least one).
    fn input_arity(&self) -> Option<usize>;
    /// The dtype of every output given the dtypes of the inputs, after checking that the op
    /// takes those (the float dtype is `DType::F32`; kernels see it as their `T`). Called through
    /// [`Op::output_dtypes`], which has checked the number of inputs. Returns as many dtypes as the
    /// node has outputs.
    fn dtype_rule(&self, check: Check, inputs: &[DType]) -> Result<Vec<DType>, ShapeError>;
    /// Output positions that are updated in place: they must name existing persistent tensors.
    fn inplace_outputs(&self) -> Range<usize>;
    /// Shapes of all outputs (in-place ones included) given the input shapes.
    ///
    /// Called through [`Op::output_shapes`], which has already checked the number of inputs
    /// against [`OpRules::input_arity`], so a rule may index its inputs directly. Every size a rule
    /// computes from its inputs uses checked arithmetic ([`Check::mul`], [`Check::numel`]): shapes
    /// come from files and must not wrap.
    fn shape_rule(&self, check: Check, inputs: &[&[usize]]) -> Result<Vec<Vec<usize>>, ShapeError>;
    /// Runs the op's reference kernel. The caller has checked the shapes against
    /// [`Op::output_shapes`], the dtypes against [`Op::output_dtypes`] (which put each argument in
    /// its dtype's slice of `args`) and the argument counts against [`Op::input_arity`].
    fn execute<T: Float>(&self, args: NodeArgs<'_, '_, T>) -> Result<(), KernelError>;
}

/// Every primitive op, by family. Families and the ops inside them are append-only: the variant
/// index is the plan encoding (see [`crate::format`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Op {
    Dense(DenseOp),
    Conv(ConvOp),
    Norm(NormOp),
    Pool(PoolOp),
    Loss(LossOp),
    Optim(OptimOp),
    Cast(CastOp),
    Broadcast(BroadcastOp),
    Unary(UnaryOp),
    Reduce(ReduceOp),
    Move(MoveOp),
    MatMul(MatMulOp),
    Random(RandomOp),
    Mask(MaskOp),
    Quant(QuantOp),
}

/// Evaluates `$body` with `$family` bound to the family op inside an [`Op`]: the one place that
/// lists every family, so that top-level dispatch (here and in the compiler) is one line per
/// method and a new family is a compile error wherever a trait is not implemented for it.
#[macro_export]
macro_rules! dispatch_op {
    ($op:expr, $family:ident => $body:expr) => {
        match $op {
            $crate::ops::Op::Dense($family) => $body,
            $crate::ops::Op::Conv($family) => $body,
            $crate::ops::Op::Norm($family) => $body,
            $crate::ops::Op::Pool($family) => $body,
            $crate::ops::Op::Loss($family) => $body,
            $crate::ops::Op::Optim($family) => $body,
            $crate::ops::Op::Cast($family) => $body,
            $crate::ops::Op::Broadcast($family) => $body,
            $crate::ops::Op::Unary($family) => $body,
            $crate::ops::Op::Reduce($family) => $body,
            $crate::ops::Op::Move($family) => $body,
            $crate::ops::Op::MatMul($family) => $body,
            $crate::ops::Op::Random($family) => $body,
            $crate::ops::Op::Mask($family) => $body,
            $crate::ops::Op::Quant($family) => $body,
        }
    };
}

macro_rules! from_family {
    ($($variant:ident($ty:ty)),* $(,)?) => {
        $(impl From<$ty> for Op {
            fn from(op: $ty) -> Op {
                Op::$variant(op)
            }
        })*
    };
}

from_family!(Dense(DenseOp), Conv(ConvOp), Norm(NormOp), Pool(PoolOp), Loss(LossOp), Optim(OptimOp), Cast(CastOp));
from_family!(Broadcast(BroadcastOp));
from_family!(Unary(UnaryOp));
from_family!(Reduce(ReduceOp), Move(MoveOp), MatMul(MatMulOp), Random(RandomOp), Mask(MaskOp));
from_family!(Quant(QuantOp));

impl Op {
    pub fn name(&self) -> &'static str {
        dispatch_op!(self, op => op.name())
    }

    /// The dtype of every output given the input dtypes, after checking the number of inputs and
    /// that the op takes those dtypes (see [`OpRules::dtype_rule`]).
    pub fn output_dtypes(&self, inputs: &[DType]) -> Result<Vec<DType>, ShapeError> {
        let check = self.check_arity(inputs.len())?;
        dispatch_op!(self, op => op.dtype_rule(check, inputs))
    }

    /// See [`OpRules::inplace_outputs`].
    pub fn inplace_outputs(&self) -> Range<usize> {
        dispatch_op!(self, op => op.inplace_outputs())
    }

    /// See [`OpRules::input_arity`].
    pub fn input_arity(&self) -> Option<usize> {
        dispatch_op!(self, op => op.input_arity())
    }

    /// Shapes of all outputs (in-place ones included) given the input shapes, after checking the
    /// number of inputs; every output's element count is checked to fit in `usize`.
    ///
    /// `Fill` has no inputs to infer from: it returns no shapes and accepts any output.
    pub fn output_shapes(&self, inputs: &[&[usize]]) -> Result<Vec<Vec<usize>>, ShapeError> {
        let check = self.check_arity(inputs.len())?;
        let shapes = dispatch_op!(self, op => op.shape_rule(check, inputs))?;
        for s in &shapes {
            check.numel(s)?;
        }
        Ok(shapes)
    }

    fn check_arity(&self, inputs: usize) -> Result<Check, ShapeError> {
        let check = Check { op: self.name() };
        match self.input_arity() {
            Some(n) if inputs != n => Err(check.err(alloc::format!("expects {n} inputs, got {inputs}"))),
            None if inputs == 0 => Err(check.err("expects at least one input")),
            _ => Ok(check),
        }
    }

    /// Runs the op's reference kernel (see [`OpRules::execute`]).
    pub fn execute<T: Float>(&self, args: NodeArgs<'_, '_, T>) -> Result<(), KernelError> {
        dispatch_op!(self, op => op.execute(args))
    }
}

/// Why a node's shapes do not fit its op.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{op}: {message}")]
pub struct ShapeError {
    pub op: &'static str,
    pub message: String,
}

/// Shape-rule helpers bound to one op's name, so that every error names the op.
#[derive(Clone, Copy, Debug)]
pub struct Check {
    op: &'static str,
}

impl Check {
    pub fn new(op: &'static str) -> Self {
        Check { op }
    }

    pub fn err(self, message: impl Into<String>) -> ShapeError {
        ShapeError { op: self.op, message: message.into() }
    }

    pub fn same(self, a: &[usize], b: &[usize], what: &str) -> Result<(), ShapeError> {
        if a != b {
            return Err(self.err(alloc::format!("{what}: shapes {a:?} and {b:?} differ")));
        }
        Ok(())
    }

    pub fn rank(self, s: &[usize], r: usize, what: &str) -> Result<(), ShapeError> {
        if s.len() != r {
            return Err(self.err(alloc::format!("{what} must have rank {r}, got shape {s:?}")));
        }
        Ok(())
    }

    pub fn scalar(self, s: &[usize], what: &str) -> Result<(), ShapeError> {
        if !s.is_empty() {
            return Err(self.err(alloc::format!("{what} must be a scalar (shape []), got {s:?}")));
        }
        Ok(())
    }

    /// The size of axis 1 (channels), for inputs of rank >= 2.
    pub fn channels(self, x: &[usize]) -> Result<usize, ShapeError> {
        if x.len() < 2 {
            return Err(self.err(alloc::format!("input must have rank >= 2 (channel axis 1), got {x:?}")));
        }
        Ok(x[1])
    }

    /// Number of elements of `shape`, or an error when it does not fit in `usize`.
    pub fn numel(self, shape: &[usize]) -> Result<usize, ShapeError> {
        numel(shape).ok_or_else(|| self.err(alloc::format!("shape {shape:?} has more elements than this machine can address")))
    }

    /// Checks that the inputs have exactly the dtypes `want`, in order.
    pub fn dtypes(self, inputs: &[DType], want: &[DType]) -> Result<(), ShapeError> {
        for (pos, (&got, &want)) in inputs.iter().zip(want).enumerate() {
            if got != want {
                return Err(self.err(alloc::format!("input {pos} is {}, expected {}", got.name(), want.name())));
            }
        }
        Ok(())
    }

    /// The dtype rule of an op that takes and produces only floats: checks every input and returns
    /// `outputs` float dtypes.
    pub fn floats(self, inputs: &[DType], outputs: usize) -> Result<Vec<DType>, ShapeError> {
        if let Some(pos) = inputs.iter().position(|&d| d != DType::F32) {
            return Err(self.err(alloc::format!("input {pos} is {}, expected {}", inputs[pos].name(), DType::F32.name())));
        }
        Ok(alloc::vec![DType::F32; outputs])
    }

    /// `a * b`, or an error naming `what` when it does not fit in `usize`.
    pub fn mul(self, a: usize, b: usize, what: &str) -> Result<usize, ShapeError> {
        a.checked_mul(b).ok_or_else(|| self.err(alloc::format!("{what} ({a} x {b}) does not fit in usize")))
    }
}

/// Number of elements of `shape`, or `None` when the product overflows `usize`.
pub fn numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// Output size of a strided window along one axis, or `None` when the window does not fit.
pub fn window_out(input: usize, pad_a: usize, pad_b: usize, kernel: usize, stride: usize, dilation: usize) -> Option<usize> {
    let span = dilation.checked_mul(kernel.checked_sub(1)?)?.checked_add(1)?;
    let padded = input.checked_add(pad_a)?.checked_add(pad_b)?;
    if stride == 0 || padded < span {
        return None;
    }
    Some((padded - span) / stride + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    /// A dimension whose square wraps `usize` on 64- and 32-bit targets alike (2^40 or 2^24).
    const HUGE: usize = 1 << (usize::BITS / 2 + 8);
    /// A quarter of `usize`'s range: four times it wraps to 0.
    const QUARTER: usize = 1 << (usize::BITS - 2);

    fn refused(op: impl Into<Op>, inputs: &[&[usize]]) -> ShapeError {
        let op = op.into();
        op.output_shapes(inputs).expect_err(&alloc::format!("{op:?} on {inputs:?} must be refused"))
    }

    #[test]
    fn huge_dims_are_refused_not_wrapped() {
        // The product of the output dims wraps usize (HUGE^2 elements).
        let e = refused(DenseOp::MatMul(MatMul { trans_a: false, trans_b: false }), &[&[HUGE, 1], &[1, HUGE]]);
        assert!(e.message.contains("more elements"), "{e}");
        // Both sides of a reshape are counted with checked products.
        refused(DenseOp::Reshape { shape: vec![HUGE, HUGE] }, &[&[4]]);
        refused(DenseOp::Reshape { shape: vec![2, 2] }, &[&[HUGE, HUGE]]);
        // `weight[1] * groups` would wrap to the input's channel count without the check.
        let conv = Conv2d { stride: [1, 1], padding: [0; 4], dilation: [1, 1], groups: QUARTER };
        let e = refused(ConvOp::Conv2d(conv), &[&[1, 0, 4, 4], &[QUARTER, 4, 1, 1]]);
        assert!(e.message.contains("does not fit"), "{e}");
        refused(ConvOp::Conv2dGradInput { conv, input_hw: [4, 4] }, &[&[1, QUARTER, 4, 4], &[QUARTER, 4, 1, 1]]);
        // Windows, padding and dilation near usize::MAX.
        let big = Conv2d { stride: [1, 1], padding: [usize::MAX; 4], dilation: [usize::MAX, 1], groups: 1 };
        refused(ConvOp::Conv2d(big), &[&[1, 1, 4, 4], &[1, 1, 3, 3]]);
        let pool = Pool2d { kernel: [2, 2], stride: [1, 1], padding: [usize::MAX; 4], count_include_pad: true };
        refused(PoolOp::MaxPool2d(pool), &[&[1, 1, 4, 4]]);
        // Outputs that copy a huge input shape still count their elements.
        refused(DenseOp::Relu, &[&[HUGE, HUGE]]);
        refused(NormOp::BatchNormTrain(BatchNorm { eps: 1e-5, momentum: 0.1 }), &[&[HUGE, 2, HUGE, 1], &[2], &[2]]);
    }

    #[test]
    fn arity_is_checked_before_the_rule_indexes_inputs() {
        let e = refused(DenseOp::Add, &[&[2]]);
        assert_eq!(e.message, "expects 2 inputs, got 1");
        let e = refused(OptimOp::GradScale(GradScale { max_norm: None, multiplier: 1.0 }), &[]);
        assert_eq!(e.message, "expects at least one input");
    }
}
