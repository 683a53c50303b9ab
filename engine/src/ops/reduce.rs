//! Reductions over a static list of axes (ReduceSum, ReduceMean, ReduceMax), Softmax and
//! LogSoftmax over one axis, and their gradient ops.

use alloc::vec;
use alloc::vec::Vec;
use core::ops::Range;
use serde::{Deserialize, Serialize};

use super::{Check, OpRules, ShapeError};
use crate::kernels::reference::reduce as kernel;
use crate::kernels::{Float, KernelError, NodeArgs};
use crate::plan::DType;

/// Which axes a reduction folds, and whether they stay in the output as size 1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reduce {
    /// Strictly increasing, each below the input's rank (the importer normalises ONNX's negative
    /// and unordered axes, and spells out "all axes"). Empty reduces nothing.
    pub axes: Vec<usize>,
    pub keepdims: bool,
}

impl Reduce {
    /// The output shape of this reduction over an input of shape `x`.
    pub fn output_shape(&self, check: Check, x: &[usize]) -> Result<Vec<usize>, ShapeError> {
        if self.axes.windows(2).any(|w| w[0] >= w[1]) {
            return Err(check.err(alloc::format!("axes {:?} must be strictly increasing", self.axes)));
        }
        if let Some(&a) = self.axes.iter().find(|&&a| a >= x.len()) {
            return Err(check.err(alloc::format!("axis {a} is out of range for input {x:?}")));
        }
        Ok(x.iter()
            .enumerate()
            .filter_map(|(k, &d)| match (self.axes.contains(&k), self.keepdims) {
                (false, _) => Some(d),
                (true, true) => Some(1),
                (true, false) => None,
            })
            .collect())
    }
}

/// The reduce family. The doc comment of each variant is its argument convention:
/// `inputs -> outputs`. Append new ops at the end (the variant index is the plan encoding).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ReduceOp {
    /// `[x] -> [y]`: sum over `axes`.
    ReduceSum(Reduce),
    /// `[x] -> [y]`: mean over `axes` (NaN over an empty group, as PyTorch).
    ReduceMean(Reduce),
    /// `[x] -> [y]`: maximum over `axes` (PyTorch's `amax`; a NaN in a group makes it NaN).
    ReduceMax(Reduce),
    /// `[dy] -> [dx]`: `dy` copied back over the reduced axes of an input of shape `shape`.
    ReduceSumGrad { reduce: Reduce, shape: Vec<usize> },
    /// `[dy] -> [dx]`: `dy / n` copied back over the reduced axes (`n` elements per group).
    ReduceMeanGrad { reduce: Reduce, shape: Vec<usize> },
    /// `[dy, x, y] -> [dx]`: `dy` split evenly among the elements of each group equal to its
    /// maximum, as PyTorch's `amax` backward does (`max` with `dim` would pick one); NaN over a
    /// group whose maximum is NaN, as PyTorch.
    ReduceMaxGrad(Reduce),
    /// `[x] -> [y]`: `softmax` along `axis`, any rank, computed as `exp(x - max) / sum`.
    Softmax { axis: usize },
    /// `[x] -> [y]`: `x - max - log(sum(exp(x - max)))` along `axis`.
    LogSoftmax { axis: usize },
    /// `[dy, y] -> [dx]`: `dx = y * (dy - sum(dy * y))` along `axis`, from Softmax's output.
    SoftmaxGrad { axis: usize },
    /// `[dy, y] -> [dx]`: `dx = dy - exp(y) * sum(dy)` along `axis`, from LogSoftmax's output.
    LogSoftmaxGrad { axis: usize },
}

impl OpRules for ReduceOp {
    fn name(&self) -> &'static str {
        match self {
            ReduceOp::ReduceSum(_) => "ReduceSum",
            ReduceOp::ReduceMean(_) => "ReduceMean",
            ReduceOp::ReduceMax(_) => "ReduceMax",
            ReduceOp::ReduceSumGrad { .. } => "ReduceSumGrad",
            ReduceOp::ReduceMeanGrad { .. } => "ReduceMeanGrad",
            ReduceOp::ReduceMaxGrad(_) => "ReduceMaxGrad",
            ReduceOp::Softmax { .. } => "Softmax",
            ReduceOp::LogSoftmax { .. } => "LogSoftmax",
            ReduceOp::SoftmaxGrad { .. } => "SoftmaxGrad",
            ReduceOp::LogSoftmaxGrad { .. } => "LogSoftmaxGrad",
        }
    }

    fn input_arity(&self) -> Option<usize> {
        Some(match self {
            ReduceOp::ReduceSum(_)
            | ReduceOp::ReduceMean(_)
            | ReduceOp::ReduceMax(_)
            | ReduceOp::ReduceSumGrad { .. }
            | ReduceOp::ReduceMeanGrad { .. }
            | ReduceOp::Softmax { .. }
            | ReduceOp::LogSoftmax { .. } => 1,
            ReduceOp::SoftmaxGrad { .. } | ReduceOp::LogSoftmaxGrad { .. } => 2,
            ReduceOp::ReduceMaxGrad(_) => 3,
        })
    }

    fn dtype_rule(&self, check: Check, inputs: &[DType]) -> Result<Vec<DType>, ShapeError> {
        check.floats(inputs, 1)
    }

    fn inplace_outputs(&self) -> Range<usize> {
        0..0
    }

    fn shape_rule(&self, check: Check, inputs: &[&[usize]]) -> Result<Vec<Vec<usize>>, ShapeError> {
        Ok(match self {
            ReduceOp::ReduceSum(r) | ReduceOp::ReduceMean(r) | ReduceOp::ReduceMax(r) => vec![r.output_shape(check, inputs[0])?],
            ReduceOp::ReduceSumGrad { reduce, shape } | ReduceOp::ReduceMeanGrad { reduce, shape } => {
                check.same(inputs[0], &reduce.output_shape(check, shape)?, "dy vs the reduced shape")?;
                vec![shape.clone()]
            }
            ReduceOp::ReduceMaxGrad(r) => {
                let (dy, x, y) = (inputs[0], inputs[1], inputs[2]);
                let reduced = r.output_shape(check, x)?;
                check.same(y, &reduced, "y vs the reduced shape of x")?;
                check.same(dy, &reduced, "dy vs the reduced shape of x")?;
                vec![x.to_vec()]
            }
            ReduceOp::Softmax { axis } | ReduceOp::LogSoftmax { axis } => {
                softmax_axis(check, inputs[0], *axis)?;
                vec![inputs[0].to_vec()]
            }
            ReduceOp::SoftmaxGrad { axis } | ReduceOp::LogSoftmaxGrad { axis } => {
                check.same(inputs[0], inputs[1], "dy vs y")?;
                softmax_axis(check, inputs[1], *axis)?;
                vec![inputs[1].to_vec()]
            }
        })
    }

    fn execute<T: Float>(&self, args: NodeArgs<'_, '_, T>) -> Result<(), KernelError> {
        let NodeArgs { inputs: i, outputs: o, .. } = args;
        match self {
            ReduceOp::ReduceSum(r) => kernel::reduce_sum(&r.axes, i[0], &mut o[0]),
            ReduceOp::ReduceMean(r) => kernel::reduce_mean(&r.axes, i[0], &mut o[0]),
            ReduceOp::ReduceMax(r) => kernel::reduce_max(&r.axes, i[0], &mut o[0]),
            ReduceOp::ReduceSumGrad { reduce, .. } => kernel::reduce_sum_grad(&reduce.axes, i[0], &mut o[0], false),
            ReduceOp::ReduceMeanGrad { reduce, .. } => kernel::reduce_sum_grad(&reduce.axes, i[0], &mut o[0], true),
            ReduceOp::ReduceMaxGrad(r) => kernel::reduce_max_grad(&r.axes, i[0], i[1], i[2], &mut o[0]),
            ReduceOp::Softmax { axis } => kernel::softmax(*axis, i[0], &mut o[0]),
            ReduceOp::LogSoftmax { axis } => kernel::log_softmax(*axis, i[0], &mut o[0]),
            ReduceOp::SoftmaxGrad { axis } => kernel::softmax_grad(*axis, i[0], i[1], &mut o[0]),
            ReduceOp::LogSoftmaxGrad { axis } => kernel::log_softmax_grad(*axis, i[0], i[1], &mut o[0]),
        }
        Ok(())
    }
}

fn softmax_axis(check: Check, x: &[usize], axis: usize) -> Result<(), ShapeError> {
    if axis >= x.len() {
        return Err(check.err(alloc::format!("axis {axis} is out of range for input {x:?}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::Op;

    fn reduce(axes: &[usize], keepdims: bool) -> Reduce {
        Reduce { axes: axes.to_vec(), keepdims }
    }

    #[test]
    fn shape_rule_keeps_or_drops_reduced_axes() {
        let op: Op = ReduceOp::ReduceSum(reduce(&[0, 2], true)).into();
        assert_eq!(op.output_shapes(&[&[2, 3, 4]]).unwrap(), [[1, 3, 1]]);
        let op: Op = ReduceOp::ReduceMean(reduce(&[0, 2], false)).into();
        assert_eq!(op.output_shapes(&[&[2, 3, 4]]).unwrap(), [[3]]);
        let op: Op = ReduceOp::ReduceMax(reduce(&[0, 1], false)).into();
        assert_eq!(op.output_shapes(&[&[2, 3]]).unwrap(), [Vec::<usize>::new()]);
        let op: Op = ReduceOp::ReduceSumGrad { reduce: reduce(&[1], false), shape: vec![2, 3] }.into();
        assert_eq!(op.output_shapes(&[&[2]]).unwrap(), [[2, 3]]);
    }

    #[test]
    fn shape_rule_refuses_bad_axes() {
        for (axes, want) in [(&[2, 1][..], "strictly increasing"), (&[1, 1], "strictly increasing"), (&[3], "axis 3 is out of range")] {
            let op: Op = ReduceOp::ReduceSum(reduce(axes, false)).into();
            let e = op.output_shapes(&[&[2, 3, 4]]).unwrap_err();
            assert!(e.message.contains(want), "{axes:?}: {e}");
        }
        let op: Op = ReduceOp::Softmax { axis: 2 }.into();
        assert_eq!(op.output_shapes(&[&[2, 3]]).unwrap_err().to_string(), "Softmax: axis 2 is out of range for input [2, 3]");
        let op: Op = ReduceOp::ReduceSumGrad { reduce: reduce(&[1], false), shape: vec![2, 3] }.into();
        assert!(op.output_shapes(&[&[3]]).is_err());
    }
}
