//! Gradient bookkeeping (accumulation, filling, global-norm scaling) and the optimizer updates.

use alloc::vec;
use alloc::vec::Vec;
use core::ops::Range;
use serde::{Deserialize, Serialize};

use super::{Check, OpRules, ShapeError};
use crate::kernels::reference::optim as kernel;
use crate::kernels::{Float, KernelError, NodeArgs};
use crate::plan::DType;

/// SGD with momentum, dampening, Nesterov and (coupled) weight decay, exactly as `torch.optim.SGD`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sgd {
    pub momentum: f32,
    pub dampening: f32,
    pub nesterov: bool,
    pub weight_decay: f32,
    /// Whether the gradient is multiplied by a runtime scale (clipping, accumulation) first.
    pub scaled: bool,
}

/// Adam / AdamW with bias correction, as `torch.optim.Adam` and `torch.optim.AdamW`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Adam {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// `true`: AdamW's decoupled decay `p -= lr * wd * p`; `false`: Adam's `g += wd * p`.
    pub decoupled: bool,
    pub scaled: bool,
}

/// Computes the runtime gradient scale `multiplier * min(1, max_norm / (norm + 1e-6))`, where
/// `norm` is the global L2 norm of `multiplier * g` over all inputs (PyTorch's
/// `clip_grad_norm_`). Without `max_norm` the scale is just `multiplier` (1/K for accumulation).
/// When the norm (without `max_norm`: any gradient element) is not finite the scale is NaN, so
/// every update reading it skips and the whole step is skipped, as PyTorch's `GradScaler` does.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct GradScale {
    pub max_norm: Option<f32>,
    pub multiplier: f32,
}

/// Which rows (axis 0) of a parameter a row-restricted update writes: `start .. start + the
/// gradient's rows`, of a parameter with `param_rows` rows (partial-channel updates).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamRows {
    pub start: usize,
    pub param_rows: usize,
}

/// The optimizer family; `*` marks outputs updated in place. Append new ops at the end (the
/// variant index is the plan encoding).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum OptimOp {
    /// `[g] -> [acc*]`: `acc += g`.
    AccumulateGrad,
    /// `[] -> [t*]`: every element of `t` becomes `value`.
    Fill { value: f32 },
    /// `[g_1, ..., g_n] -> [scale]`, `scale` has shape `[]`.
    GradScale(GradScale),
    /// `[grad, lr, step, (scale)] -> [param*, (momentum_buffer*)]`; the buffer exists iff momentum
    /// != 0. On step 1 the buffer is set to the gradient, as PyTorch does. Nothing is written when
    /// the scale or any gradient element is not finite (the update is skipped).
    SgdUpdate(Sgd),
    /// `[grad, lr, step, (scale)] -> [param*, exp_avg*, exp_avg_sq*]`; `step` counts from 1.
    /// Skipped like `SgdUpdate` on a non-finite gradient or scale.
    AdamUpdate(Adam),
    /// `[x] -> [count*]`, `count` has shape `[]`: `count += 1` when any element of `x` is not
    /// finite. It counts the updates that the skip rule above skips, reading the same value.
    CountNonFinite,
    /// `[grad, lr, step, (scale)] -> [param*, (momentum_buffer*)]`: `SgdUpdate` of the rows
    /// `rows.start ..` of `param` that `grad` covers (`grad` is `[k, ...]`, `param`
    /// `[rows.param_rows, ...]`); the buffer has the gradient's shape and every other row of
    /// `param` is left untouched.
    SgdUpdateRows { sgd: Sgd, rows: ParamRows },
    /// `[grad, lr, step, (scale)] -> [param*, exp_avg*, exp_avg_sq*]`: `AdamUpdate` of some rows,
    /// as `SgdUpdateRows`; the moments have the gradient's shape.
    AdamUpdateRows { adam: Adam, rows: ParamRows },
}

impl OpRules for OptimOp {
    fn name(&self) -> &'static str {
        match self {
            OptimOp::AccumulateGrad => "AccumulateGrad",
            OptimOp::Fill { .. } => "Fill",
            OptimOp::GradScale(_) => "GradScale",
            OptimOp::SgdUpdate(_) => "SgdUpdate",
            OptimOp::AdamUpdate(_) => "AdamUpdate",
            OptimOp::CountNonFinite => "CountNonFinite",
            OptimOp::SgdUpdateRows { .. } => "SgdUpdateRows",
            OptimOp::AdamUpdateRows { .. } => "AdamUpdateRows",
        }
    }

    fn input_arity(&self) -> Option<usize> {
        Some(match self {
            OptimOp::AccumulateGrad | OptimOp::CountNonFinite => 1,
            OptimOp::Fill { .. } => 0,
            OptimOp::GradScale(_) => return None,
            OptimOp::SgdUpdate(s) | OptimOp::SgdUpdateRows { sgd: s, .. } => 3 + s.scaled as usize,
            OptimOp::AdamUpdate(a) | OptimOp::AdamUpdateRows { adam: a, .. } => 3 + a.scaled as usize,
        })
    }

    fn dtype_rule(&self, check: Check, inputs: &[DType]) -> Result<Vec<DType>, ShapeError> {
        let outputs = match self {
            OptimOp::AccumulateGrad | OptimOp::Fill { .. } | OptimOp::GradScale(_) | OptimOp::CountNonFinite => 1,
            OptimOp::SgdUpdate(_) | OptimOp::AdamUpdate(_) | OptimOp::SgdUpdateRows { .. } | OptimOp::AdamUpdateRows { .. } => {
                self.inplace_outputs().len()
            }
        };
        check.floats(inputs, outputs)
    }

    fn inplace_outputs(&self) -> Range<usize> {
        match self {
            OptimOp::AccumulateGrad | OptimOp::Fill { .. } | OptimOp::CountNonFinite => 0..1,
            OptimOp::GradScale(_) => 0..0,
            OptimOp::SgdUpdate(s) | OptimOp::SgdUpdateRows { sgd: s, .. } => 0..if s.momentum != 0.0 { 2 } else { 1 },
            OptimOp::AdamUpdate(_) | OptimOp::AdamUpdateRows { .. } => 0..3,
        }
    }

    fn shape_rule(&self, check: Check, inputs: &[&[usize]]) -> Result<Vec<Vec<usize>>, ShapeError> {
        Ok(match self {
            OptimOp::AccumulateGrad => vec![inputs[0].to_vec()],
            // Fill has no inputs to infer from: it accepts any output.
            OptimOp::Fill { .. } => vec![],
            OptimOp::GradScale(_) | OptimOp::CountNonFinite => vec![vec![]],
            OptimOp::SgdUpdate(Sgd { scaled, .. }) | OptimOp::AdamUpdate(Adam { scaled, .. }) => {
                check.scalar(inputs[1], "lr")?;
                check.scalar(inputs[2], "step")?;
                if *scaled {
                    check.scalar(inputs[3], "scale")?;
                }
                let g = inputs[0].to_vec();
                vec![g; self.inplace_outputs().len()]
            }
            OptimOp::SgdUpdateRows { sgd: Sgd { scaled, .. }, rows } | OptimOp::AdamUpdateRows { adam: Adam { scaled, .. }, rows } => {
                check.scalar(inputs[1], "lr")?;
                check.scalar(inputs[2], "step")?;
                if *scaled {
                    check.scalar(inputs[3], "scale")?;
                }
                let g = inputs[0].to_vec();
                let Some(&k) = g.first() else { return Err(check.err("a row-restricted update needs a gradient of rank >= 1")) };
                let end = rows.start.saturating_add(k);
                if k == 0 || end > rows.param_rows {
                    return Err(check.err(alloc::format!(
                        "gradient rows {}..{end} are not a non-empty range of the parameter's {} rows",
                        rows.start,
                        rows.param_rows
                    )));
                }
                let mut param = g.clone();
                param[0] = rows.param_rows;
                let mut shapes = vec![param];
                shapes.resize(self.inplace_outputs().len(), g);
                shapes
            }
        })
    }

    fn execute<T: Float>(&self, args: NodeArgs<'_, '_, T>) -> Result<(), KernelError> {
        let NodeArgs { inputs: i, outputs: o, .. } = args;
        match self {
            OptimOp::AccumulateGrad => kernel::accumulate_grad(i[0], &mut o[0]),
            OptimOp::Fill { value } => kernel::fill(*value, &mut o[0]),
            OptimOp::GradScale(g) => kernel::grad_scale(g, i, &mut o[0]),
            OptimOp::SgdUpdate(s) => kernel::sgd_update(s, i, o),
            OptimOp::AdamUpdate(a) => kernel::adam_update(a, i, o),
            OptimOp::CountNonFinite => kernel::count_non_finite(i[0], &mut o[0]),
            OptimOp::SgdUpdateRows { sgd, rows } => kernel::sgd_update_rows(sgd, rows.start, i, o),
            OptimOp::AdamUpdateRows { adam, rows } => kernel::adam_update_rows(adam, rows.start, i, o),
        }
        Ok(())
    }
}
