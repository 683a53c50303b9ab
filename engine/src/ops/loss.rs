//! The losses (softmax cross-entropy with integer labels, mean squared error) and their gradients.

use alloc::vec;
use alloc::vec::Vec;
use core::ops::Range;
use serde::{Deserialize, Serialize};

use super::{Check, OpRules, ShapeError};
use crate::kernels::reference::loss as kernel;
use crate::kernels::{Float, KernelError, NodeArgs};
use crate::plan::DType;

/// How a loss reduces over the batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reduction {
    /// One scalar: the mean over all samples (the training loss).
    Mean,
    /// One value per sample, shape `[N]` (evaluation, where padded rows are dropped on the host).
    PerSample,
}

/// Softmax cross-entropy over the last axis of logits of any rank >= 1 (`[..., classes]`), with
/// `i64` labels of the leading shape (`[...]`), as `torch.nn.functional.cross_entropy` over
/// `logits.reshape(-1, classes)` (a language model's `[batch, time, vocab]`).
///
/// A position whose label is `ignore_index` contributes neither loss nor gradient, and is not
/// counted in the mean. [`Reduction::Mean`] is the mean over the positions that are not ignored;
/// [`Reduction::PerSample`] (shape `[batch]`) is, for each sample (index of axis 0), the mean over
/// its positions that are not ignored. Where every position is ignored the mean is 0, not
/// PyTorch's NaN (0 / 0): a batch without one labelled position then trains nothing and leaves
/// the parameters as they were, where a NaN would count as a diverging loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrossEntropy {
    pub reduction: Reduction,
    /// PyTorch's default is -100.
    pub ignore_index: i64,
}

impl CrossEntropy {
    /// PyTorch's `ignore_index` default.
    pub const DEFAULT_IGNORE_INDEX: i64 = -100;
}

/// The loss family. Append new ops at the end (the variant index is the plan encoding).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum LossOp {
    /// `[logits, labels] -> [loss]`: logits `[N, C]`, labels `[N]` (`i64`), loss `[]` or `[N]`.
    SoftmaxCrossEntropy(Reduction),
    /// `[pred, target] -> [loss]`: mean squared error over all but axis 0, loss `[]` or `[N]`.
    Mse(Reduction),
    /// `[dloss, logits, labels] -> [dlogits]`.
    SoftmaxCrossEntropyGrad(Reduction),
    /// `[dloss, pred, target] -> [dpred]`.
    MseGrad(Reduction),
    /// `[logits, labels] -> [loss]`: logits `[..., C]`, labels `[...]` (`i64`), loss `[]` or
    /// `[N]` (see [`CrossEntropy`]).
    CrossEntropy(CrossEntropy),
    /// `[dloss, logits, labels] -> [dlogits]`.
    CrossEntropyGrad(CrossEntropy),
}

impl OpRules for LossOp {
    fn name(&self) -> &'static str {
        match self {
            LossOp::SoftmaxCrossEntropy(_) => "SoftmaxCrossEntropy",
            LossOp::Mse(_) => "Mse",
            LossOp::SoftmaxCrossEntropyGrad(_) => "SoftmaxCrossEntropyGrad",
            LossOp::MseGrad(_) => "MseGrad",
            LossOp::CrossEntropy(_) => "CrossEntropy",
            LossOp::CrossEntropyGrad(_) => "CrossEntropyGrad",
        }
    }

    fn input_arity(&self) -> Option<usize> {
        Some(match self {
            LossOp::SoftmaxCrossEntropy(_) | LossOp::Mse(_) | LossOp::CrossEntropy(_) => 2,
            LossOp::SoftmaxCrossEntropyGrad(_) | LossOp::MseGrad(_) | LossOp::CrossEntropyGrad(_) => 3,
        })
    }

    fn dtype_rule(&self, check: Check, inputs: &[DType]) -> Result<Vec<DType>, ShapeError> {
        match self {
            // Class labels are `i64`.
            LossOp::SoftmaxCrossEntropy(_) | LossOp::CrossEntropy(_) => check.dtypes(inputs, &[DType::F32, DType::I64])?,
            LossOp::SoftmaxCrossEntropyGrad(_) | LossOp::CrossEntropyGrad(_) => {
                check.dtypes(inputs, &[DType::F32, DType::F32, DType::I64])?
            }
            LossOp::Mse(_) | LossOp::MseGrad(_) => return check.floats(inputs, 1),
        }
        Ok(vec![DType::F32])
    }

    fn inplace_outputs(&self) -> Range<usize> {
        0..0
    }

    fn shape_rule(&self, check: Check, inputs: &[&[usize]]) -> Result<Vec<Vec<usize>>, ShapeError> {
        Ok(match self {
            LossOp::SoftmaxCrossEntropy(r) => {
                let (logits, labels) = (inputs[0], inputs[1]);
                check.rank(logits, 2, "logits")?;
                check.same(labels, &[logits[0]], "labels vs batch")?;
                vec![loss_shape(*r, logits[0])]
            }
            LossOp::Mse(r) => {
                let (pred, target) = (inputs[0], inputs[1]);
                check.same(pred, target, "pred vs target")?;
                if pred.is_empty() {
                    return Err(check.err("pred must have a batch axis"));
                }
                vec![loss_shape(*r, pred[0])]
            }
            LossOp::SoftmaxCrossEntropyGrad(r) => {
                let (dloss, logits, labels) = (inputs[0], inputs[1], inputs[2]);
                check.rank(logits, 2, "logits")?;
                check.same(labels, &[logits[0]], "labels vs batch")?;
                check.same(dloss, &loss_shape(*r, logits[0]), "dloss")?;
                vec![logits.to_vec()]
            }
            LossOp::MseGrad(r) => {
                let (dloss, pred, target) = (inputs[0], inputs[1], inputs[2]);
                check.same(pred, target, "pred vs target")?;
                if pred.is_empty() {
                    return Err(check.err("pred must have a batch axis"));
                }
                check.same(dloss, &loss_shape(*r, pred[0]), "dloss")?;
                vec![pred.to_vec()]
            }
            LossOp::CrossEntropy(ce) => vec![cross_entropy_shapes(check, *ce, inputs[0], inputs[1])?],
            LossOp::CrossEntropyGrad(ce) => {
                let loss = cross_entropy_shapes(check, *ce, inputs[1], inputs[2])?;
                check.same(inputs[0], &loss, "dloss")?;
                vec![inputs[1].to_vec()]
            }
        })
    }

    fn execute<T: Float>(&self, args: NodeArgs<'_, '_, T>) -> Result<(), KernelError> {
        let NodeArgs { inputs: i, int_inputs, outputs: o, .. } = args;
        let labels = int_inputs.first().copied().ok_or(KernelError::Invalid { op: self.name(), message: "missing labels" });
        match self {
            LossOp::SoftmaxCrossEntropy(r) => kernel::softmax_cross_entropy(*r, i[0], labels?, &mut o[0])?,
            LossOp::Mse(r) => kernel::mse(*r, i[0], i[1], &mut o[0]),
            LossOp::SoftmaxCrossEntropyGrad(r) => kernel::softmax_cross_entropy_grad(*r, i[0], i[1], labels?, &mut o[0])?,
            LossOp::MseGrad(r) => kernel::mse_grad(*r, i[0], i[1], i[2], &mut o[0]),
            LossOp::CrossEntropy(ce) => kernel::cross_entropy(*ce, i[0], labels?, &mut o[0])?,
            LossOp::CrossEntropyGrad(ce) => kernel::cross_entropy_grad(*ce, i[0], i[1], labels?, &mut o[0])?,
        }
        Ok(())
    }
}

/// Checks logits `[..., C]` (C >= 1) against labels `[...]` and returns the loss shape: `[]`, or
/// `[N]` per sample, which needs a batch axis besides the class axis.
fn cross_entropy_shapes(check: Check, ce: CrossEntropy, logits: &[usize], labels: &[usize]) -> Result<Vec<usize>, ShapeError> {
    let Some((&classes, leading)) = logits.split_last() else { return Err(check.err("logits need a class axis (the last)")) };
    if classes == 0 {
        return Err(check.err("logits have no classes (the last axis is 0)"));
    }
    check.same(labels, leading, "labels vs logits without their class axis")?;
    match (ce.reduction, leading.first()) {
        (Reduction::Mean, _) => Ok(vec![]),
        (Reduction::PerSample, Some(&batch)) => Ok(vec![batch]),
        (Reduction::PerSample, None) => Err(check.err("a per-sample loss needs logits with a batch axis before the class axis")),
    }
}

fn loss_shape(r: Reduction, batch: usize) -> Vec<usize> {
    match r {
        Reduction::Mean => vec![],
        Reduction::PerSample => vec![batch],
    }
}
