//! Batch normalisation (training and frozen forms) and its gradient ops.

use alloc::vec;
use alloc::vec::Vec;
use core::ops::Range;
use serde::{Deserialize, Serialize};

use super::{Activation, Check, OpRules, ShapeError};
use crate::kernels::reference::norm as kernel;
use crate::kernels::{Float, KernelError, NodeArgs};
use crate::plan::DType;

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchNorm {
    pub eps: f32,
    /// Running statistics update: `running = (1 - momentum) * running + momentum * batch`
    /// (PyTorch's convention; the running variance uses the unbiased batch variance).
    pub momentum: f32,
}

/// The normalisation family. Append new ops at the end (the variant index is the plan encoding).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum NormOp {
    /// `[x, gamma, beta] -> [y, saved_mean, saved_invstd, running_mean*, running_var*]`: batch
    /// statistics over all axes but 1 (input rank 2 or 4); `*` marks outputs updated in place.
    BatchNormTrain(BatchNorm),
    /// `[x, gamma, beta, running_mean, running_var] -> [y]`: frozen statistics.
    BatchNormInfer(BatchNorm),
    /// `[dy, x, gamma, saved_mean, saved_invstd] -> [dx, dgamma, dbeta]`.
    BatchNormTrainGrad(BatchNorm),
    /// `[dy, x, gamma, running_mean, running_var] -> [dx, dgamma, dbeta]`.
    BatchNormInferGrad(BatchNorm),
    /// `BatchNormTrain` with the ReLU/ReLU6 after it: the same inputs and outputs, `y =
    /// act(batch_norm(x))` with `Relu`'s or `Clip`'s formula, so the normalised output is never
    /// written by itself. Made by the compiler's fusion pass (`compiler/src/fuse.rs`) after
    /// autodiff; never differentiated (the gradient rules run on the plain ops).
    BatchNormTrainAct { norm: BatchNorm, act: Activation },
}

impl NormOp {
    /// The activation applied to `y`: `BatchNormTrainAct`'s, [`Activation::Identity`] for the
    /// other ops.
    pub fn activation(&self) -> Activation {
        match self {
            NormOp::BatchNormTrainAct { act, .. } => *act,
            _ => Activation::Identity,
        }
    }
}

impl OpRules for NormOp {
    fn name(&self) -> &'static str {
        match self {
            NormOp::BatchNormTrain(_) => "BatchNormTrain",
            NormOp::BatchNormInfer(_) => "BatchNormInfer",
            NormOp::BatchNormTrainGrad(_) => "BatchNormTrainGrad",
            NormOp::BatchNormInferGrad(_) => "BatchNormInferGrad",
            NormOp::BatchNormTrainAct { .. } => "BatchNormTrainAct",
        }
    }

    fn input_arity(&self) -> Option<usize> {
        Some(match self {
            NormOp::BatchNormTrain(_) | NormOp::BatchNormTrainAct { .. } => 3,
            NormOp::BatchNormInfer(_) | NormOp::BatchNormTrainGrad(_) | NormOp::BatchNormInferGrad(_) => 5,
        })
    }

    fn dtype_rule(&self, check: Check, inputs: &[DType]) -> Result<Vec<DType>, ShapeError> {
        let outputs = match self {
            NormOp::BatchNormTrain(_) | NormOp::BatchNormTrainAct { .. } => 5,
            NormOp::BatchNormInfer(_) => 1,
            NormOp::BatchNormTrainGrad(_) | NormOp::BatchNormInferGrad(_) => 3,
        };
        check.floats(inputs, outputs)
    }

    fn inplace_outputs(&self) -> Range<usize> {
        match self {
            NormOp::BatchNormTrain(_) | NormOp::BatchNormTrainAct { .. } => 3..5,
            NormOp::BatchNormInfer(_) | NormOp::BatchNormTrainGrad(_) | NormOp::BatchNormInferGrad(_) => 0..0,
        }
    }

    fn shape_rule(&self, check: Check, inputs: &[&[usize]]) -> Result<Vec<Vec<usize>>, ShapeError> {
        Ok(match self {
            NormOp::BatchNormTrain(_) | NormOp::BatchNormTrainAct { .. } => {
                let c = channels(check, inputs[0])?;
                check.same(inputs[1], &[c], "gamma")?;
                check.same(inputs[2], &[c], "beta")?;
                vec![inputs[0].to_vec(), vec![c], vec![c], vec![c], vec![c]]
            }
            NormOp::BatchNormInfer(_) => {
                let c = channels(check, inputs[0])?;
                for (i, what) in [(1, "gamma"), (2, "beta"), (3, "running_mean"), (4, "running_var")] {
                    check.same(inputs[i], &[c], what)?;
                }
                vec![inputs[0].to_vec()]
            }
            NormOp::BatchNormTrainGrad(_) | NormOp::BatchNormInferGrad(_) => {
                check.same(inputs[0], inputs[1], "dy vs x")?;
                let c = channels(check, inputs[1])?;
                for (i, what) in [(2, "gamma"), (3, "mean"), (4, "invstd or var")] {
                    check.same(inputs[i], &[c], what)?;
                }
                vec![inputs[1].to_vec(), vec![c], vec![c]]
            }
        })
    }

    fn execute<T: Float>(&self, args: NodeArgs<'_, '_, T>) -> Result<(), KernelError> {
        let NodeArgs { inputs: i, outputs: o, .. } = args;
        let arity = KernelError::Invalid { op: self.name(), message: "wrong number of outputs" };
        match self {
            NormOp::BatchNormTrain(b) => {
                let [y, mean, invstd, rmean, rvar] = o else { return Err(arity) };
                kernel::batch_norm_train(b, i[0], i[1], i[2], y, mean, invstd, rmean, rvar)
            }
            NormOp::BatchNormTrainAct { norm, act } => {
                let [y, mean, invstd, rmean, rvar] = o else { return Err(arity) };
                kernel::batch_norm_train(norm, i[0], i[1], i[2], y, mean, invstd, rmean, rvar);
                crate::kernels::reference::dense::activate(act, y.data);
            }
            NormOp::BatchNormInfer(b) => kernel::batch_norm_infer(b, i[0], i[1], i[2], i[3], i[4], &mut o[0]),
            NormOp::BatchNormTrainGrad(b) => {
                let [dx, dgamma, dbeta] = o else { return Err(arity) };
                kernel::batch_norm_train_grad(b, i[0], i[1], i[2], i[3], i[4], dx, dgamma, dbeta)
            }
            NormOp::BatchNormInferGrad(b) => {
                let [dx, dgamma, dbeta] = o else { return Err(arity) };
                kernel::batch_norm_infer_grad(b, i[0], i[1], i[2], i[3], i[4], dx, dgamma, dbeta)
            }
        }
        Ok(())
    }
}

/// Channels of a batch-norm input: axis 1 of a rank-2 or rank-4 tensor.
fn channels(check: Check, x: &[usize]) -> Result<usize, ShapeError> {
    if x.len() != 2 && x.len() != 4 {
        return Err(check.err(alloc::format!("input must have rank 2 or 4, got {x:?}")));
    }
    Ok(x[1])
}
