//! Gradient rule and cost of the cast family.

use pock_engine::ops::CastOp;

use super::{numel, CompileRules, GradCtx};
use crate::error::Result;
use crate::ir::{DType, Node, TensorId};

impl CompileRules for CastOp {
    fn gradient(&self, ctx: &mut GradCtx, node: &Node, dy: &[Option<TensorId>], needs: &[bool]) -> Result<Vec<Option<TensorId>>> {
        let mut grads = vec![None; node.inputs.len()];
        let Some(dy) = dy[0] else { return Ok(grads) };
        match self {
            CastOp::Cast { to } => {
                // Float to float is the identity, so the gradient passes through without a node.
                // Integer and bool values are never differentiated: a cast from one has no input
                // gradient, and a cast to one has no output gradient to pass back.
                let from = ctx.graph.tensor(node.inputs[0]).dtype;
                if needs[0] && from == DType::F32 && *to == DType::F32 {
                    grads[0] = Some(dy);
                }
            }
        }
        Ok(grads)
    }

    fn flops(&self, _inputs: &[&[usize]], outputs: &[&[usize]]) -> u64 {
        match self {
            // One conversion per element.
            CastOp::Cast { .. } => numel(outputs[0]),
        }
    }
}
