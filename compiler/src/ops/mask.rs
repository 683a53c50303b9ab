//! Gradient rules and costs of the mask family. Its ops are not written by gradient rules: the
//! mask pass (`crate::mask`) puts them in place of `ReluGrad`/`ClipGrad` after autodiff, so they
//! are never differentiated.

use pock_engine::ops::MaskOp;

use super::{no_gradient, numel, CompileRules, GradCtx};
use crate::error::Result;
use crate::ir::{Node, TensorId};

impl CompileRules for MaskOp {
    fn gradient(&self, _ctx: &mut GradCtx, node: &Node, _dy: &[Option<TensorId>], _needs: &[bool]) -> Result<Vec<Option<TensorId>>> {
        match self {
            // Pack's output is bits, which nothing differentiates; Grad is a backward op.
            MaskOp::Pack(_) | MaskOp::Grad => no_gradient(node),
        }
    }

    fn flops(&self, inputs: &[&[usize]], outputs: &[&[usize]]) -> u64 {
        match self {
            // One or two comparisons per element, and the bit insertion.
            MaskOp::Pack(_) => numel(inputs[0]),
            // One select per element.
            MaskOp::Grad => numel(outputs[0]),
        }
    }
}
