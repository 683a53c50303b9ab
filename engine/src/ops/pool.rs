//! Global average, average and max pooling, and their gradient ops.

use alloc::vec;
use alloc::vec::Vec;
use core::ops::Range;
use serde::{Deserialize, Serialize};

use super::{window_out, Check, OpRules, ShapeError};
use crate::kernels::reference::pool as kernel;
use crate::kernels::{Float, KernelError, NodeArgs};
use crate::plan::DType;

/// Max/average pooling attributes, NCHW layout. Output size rounds down (no ceil mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool2d {
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    /// `[top, left, bottom, right]`.
    pub padding: [usize; 4],
    /// Average pooling only: whether padded zeros count in the divisor (PyTorch's default: true).
    pub count_include_pad: bool,
}

/// The pooling family. Append new ops at the end (the variant index is the plan encoding).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PoolOp {
    /// `[x] -> [y]`: `[N, C, H, W] -> [N, C, 1, 1]`.
    GlobalAvgPool,
    /// `[x] -> [y]`.
    AvgPool2d(Pool2d),
    /// `[x] -> [y]`.
    MaxPool2d(Pool2d),
    /// `[dy] -> [dx]`: `[N, C, 1, 1] -> [N, C, H, W]`.
    GlobalAvgPoolGrad { input_hw: [usize; 2] },
    /// `[dy] -> [dx]`.
    AvgPool2dGrad { pool: Pool2d, input_hw: [usize; 2] },
    /// `[dy, x] -> [dx]`: the gradient goes to the first maximum of each window.
    MaxPool2dGrad(Pool2d),
}

impl OpRules for PoolOp {
    fn name(&self) -> &'static str {
        match self {
            PoolOp::GlobalAvgPool => "GlobalAvgPool",
            PoolOp::AvgPool2d(_) => "AvgPool2d",
            PoolOp::MaxPool2d(_) => "MaxPool2d",
            PoolOp::GlobalAvgPoolGrad { .. } => "GlobalAvgPoolGrad",
            PoolOp::AvgPool2dGrad { .. } => "AvgPool2dGrad",
            PoolOp::MaxPool2dGrad(_) => "MaxPool2dGrad",
        }
    }

    fn input_arity(&self) -> Option<usize> {
        Some(match self {
            PoolOp::GlobalAvgPool | PoolOp::AvgPool2d(_) | PoolOp::MaxPool2d(_) => 1,
            PoolOp::GlobalAvgPoolGrad { .. } | PoolOp::AvgPool2dGrad { .. } => 1,
            PoolOp::MaxPool2dGrad(_) => 2,
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
            PoolOp::GlobalAvgPool => {
                check.rank(inputs[0], 4, "x")?;
                vec![vec![inputs[0][0], inputs[0][1], 1, 1]]
            }
            PoolOp::AvgPool2d(p) | PoolOp::MaxPool2d(p) => {
                let x = inputs[0];
                check.rank(x, 4, "x")?;
                let (ho, wo) = pool_out(check, p, [x[2], x[3]])?;
                vec![vec![x[0], x[1], ho, wo]]
            }
            PoolOp::GlobalAvgPoolGrad { input_hw } => {
                let dy = inputs[0];
                check.rank(dy, 4, "dy")?;
                check.same(&dy[2..], &[1, 1], "dy spatial size")?;
                vec![vec![dy[0], dy[1], input_hw[0], input_hw[1]]]
            }
            PoolOp::AvgPool2dGrad { pool, input_hw } => {
                let dy = inputs[0];
                check.rank(dy, 4, "dy")?;
                let (ho, wo) = pool_out(check, pool, *input_hw)?;
                check.same(&dy[2..], &[ho, wo], "dy spatial size")?;
                vec![vec![dy[0], dy[1], input_hw[0], input_hw[1]]]
            }
            PoolOp::MaxPool2dGrad(p) => {
                let (dy, x) = (inputs[0], inputs[1]);
                check.rank(x, 4, "x")?;
                let (ho, wo) = pool_out(check, p, [x[2], x[3]])?;
                check.same(dy, &[x[0], x[1], ho, wo], "dy vs forward output")?;
                vec![x.to_vec()]
            }
        })
    }

    fn execute<T: Float>(&self, args: NodeArgs<'_, '_, T>) -> Result<(), KernelError> {
        let NodeArgs { inputs: i, outputs: o, .. } = args;
        match self {
            PoolOp::GlobalAvgPool => kernel::global_avg_pool(i[0], &mut o[0]),
            PoolOp::AvgPool2d(p) => kernel::avg_pool2d(p, i[0], &mut o[0]),
            PoolOp::MaxPool2d(p) => kernel::max_pool2d(p, i[0], &mut o[0]),
            PoolOp::GlobalAvgPoolGrad { .. } => kernel::global_avg_pool_grad(i[0], &mut o[0]),
            PoolOp::AvgPool2dGrad { pool, .. } => kernel::avg_pool2d_grad(pool, i[0], &mut o[0]),
            PoolOp::MaxPool2dGrad(p) => kernel::max_pool2d_grad(p, i[0], i[1], &mut o[0]),
        }
        Ok(())
    }
}

fn pool_out(check: Check, p: &Pool2d, hw: [usize; 2]) -> Result<(usize, usize), ShapeError> {
    let h = window_out(hw[0], p.padding[0], p.padding[2], p.kernel[0], p.stride[0], 1);
    let w = window_out(hw[1], p.padding[1], p.padding[3], p.kernel[1], p.stride[1], 1);
    match (h, w) {
        (Some(h), Some(w)) if h > 0 && w > 0 => Ok((h, w)),
        _ => Err(check.err(alloc::format!("window {:?} does not fit input {hw:?}", p.kernel))),
    }
}
