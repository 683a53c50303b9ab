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
}

impl OpRules for LossOp {
    fn name(&self) -> &'static str {
        match self {
            LossOp::SoftmaxCrossEntropy(_) => "SoftmaxCrossEntropy",
            LossOp::Mse(_) => "Mse",
            LossOp::SoftmaxCrossEntropyGrad(_) => "SoftmaxCrossEntropyGrad",
            LossOp::MseGrad(_) => "MseGrad",
        }
    }

    fn input_arity(&self) -> Option<usize> {
        Some(match self {
            LossOp::SoftmaxCrossEntropy(_) | LossOp::Mse(_) => 2,
            LossOp::SoftmaxCrossEntropyGrad(_) | LossOp::MseGrad(_) => 3,
        })
    }

    fn dtype_rule(&self, check: Check, inputs: &[DType]) -> Result<Vec<DType>, ShapeError> {
        match self {
            // Class labels are `i64`.
            LossOp::SoftmaxCrossEntropy(_) => check.dtypes(inputs, &[DType::F32, DType::I64])?,
            LossOp::SoftmaxCrossEntropyGrad(_) => check.dtypes(inputs, &[DType::F32, DType::F32, DType::I64])?,
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
        }
        Ok(())
    }
}

fn loss_shape(r: Reduction, batch: usize) -> Vec<usize> {
    match r {
        Reduction::Mean => vec![],
        Reduction::PerSample => vec![batch],
    }
}
