//! Random ops: seeded dropout, drawn from a counter-based generator so that a step's mask depends
//! only on the compile-time seed, the node and the step counter (a checkpointed `i64`), never on
//! hidden state. A resumed run therefore draws the same masks as an uninterrupted one.

use alloc::vec;
use alloc::vec::Vec;
use core::ops::Range;
use serde::{Deserialize, Serialize};

use super::{Check, OpRules, ShapeError};
use crate::kernels::reference::random as kernel;
use crate::kernels::{Float, KernelError, NodeArgs};
use crate::plan::DType;

/// Inverted dropout with a fresh mask per step.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Dropout {
    /// The probability of dropping an element, in `[0, 1)`.
    pub ratio: f32,
    /// The generator's key: the compile-time seed mixed with the node's identity, so that two
    /// dropout nodes draw independent masks.
    pub key: u64,
}

/// The random family. Append new ops at the end (the variant index is the plan encoding).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum RandomOp {
    /// `[x, counter] -> [y, mask]`: `counter` is the `[]` int64 step counter; `mask` (float, `x`'s
    /// shape) is 0 where the element is dropped and `1 / (1 - ratio)` where it is kept, and `y =
    /// x * mask`. Element `i` is kept when `kernels::reference::random::uniform(key, counter, i)
    /// >= ratio`.
    Dropout(Dropout),
    /// `[] -> [counter]`, in place: adds 1 to the `[]` int64 counter (wrapping), once per run of
    /// the program that holds it, after every node that reads it.
    Advance,
    /// `[counter] -> [y]`: `y` of shape `shape`, element `i` `low + (high - low) *
    /// uniform(key, counter, i)` (ONNX `RandomUniformLike`).
    Uniform { low: f32, high: f32, key: u64, shape: Vec<usize> },
}

impl OpRules for RandomOp {
    fn name(&self) -> &'static str {
        match self {
            RandomOp::Dropout(_) => "Dropout",
            RandomOp::Advance => "AdvanceCounter",
            RandomOp::Uniform { .. } => "RandomUniform",
        }
    }

    fn input_arity(&self) -> Option<usize> {
        Some(match self {
            RandomOp::Dropout(_) => 2,
            RandomOp::Advance => 0,
            RandomOp::Uniform { .. } => 1,
        })
    }

    fn dtype_rule(&self, check: Check, inputs: &[DType]) -> Result<Vec<DType>, ShapeError> {
        match self {
            RandomOp::Dropout(_) => {
                check.dtypes(inputs, &[DType::F32, DType::I64])?;
                Ok(vec![DType::F32; 2])
            }
            RandomOp::Advance => Ok(vec![DType::I64]),
            RandomOp::Uniform { .. } => {
                check.dtypes(inputs, &[DType::I64])?;
                Ok(vec![DType::F32])
            }
        }
    }

    fn inplace_outputs(&self) -> Range<usize> {
        match self {
            RandomOp::Dropout(_) | RandomOp::Uniform { .. } => 0..0,
            RandomOp::Advance => 0..1,
        }
    }

    fn shape_rule(&self, check: Check, inputs: &[&[usize]]) -> Result<Vec<Vec<usize>>, ShapeError> {
        match self {
            RandomOp::Dropout(d) => {
                // Checked here because plans come from files: a ratio of 1 or more, or NaN, has
                // no finite scale.
                if !(0.0..1.0).contains(&d.ratio) {
                    return Err(check.err(alloc::format!("ratio {} is outside [0, 1)", d.ratio)));
                }
                check.scalar(inputs[1], "the step counter")?;
                Ok(vec![inputs[0].to_vec(), inputs[0].to_vec()])
            }
            RandomOp::Advance => Ok(vec![vec![]]),
            RandomOp::Uniform { low, high, shape, .. } => {
                if !low.is_finite() || !high.is_finite() || low > high {
                    return Err(check.err(alloc::format!("the range [{low}, {high}) is not finite and ordered")));
                }
                check.scalar(inputs[0], "the step counter")?;
                Ok(vec![shape.clone()])
            }
        }
    }

    fn execute<T: Float>(&self, args: NodeArgs<'_, '_, T>) -> Result<(), KernelError> {
        let NodeArgs { inputs, int_inputs, outputs, int_outputs, .. } = args;
        match self {
            RandomOp::Dropout(d) => match (inputs, int_inputs, outputs) {
                ([x], [counter], [y, mask]) => kernel::dropout(d.ratio, d.key, counter.data[0], x.data, y.data, mask.data),
                _ => return Err(KernelError::Invalid { op: "Dropout", message: "expects [x, counter] -> [y, mask]" }),
            },
            RandomOp::Advance => match int_outputs {
                [counter] => kernel::advance(counter.data),
                _ => return Err(KernelError::Invalid { op: "AdvanceCounter", message: "expects one int64 counter" }),
            },
            RandomOp::Uniform { low, high, key, .. } => match (int_inputs, outputs) {
                ([counter], [y]) => kernel::uniform_fill(*low, *high, *key, counter.data[0], y.data),
                _ => return Err(KernelError::Invalid { op: "RandomUniform", message: "expects [counter] -> [y]" }),
            },
        }
        Ok(())
    }
}
