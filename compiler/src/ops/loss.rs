//! Gradient rules and costs.

use pock_engine::ops::Op;

use super::GradCtx;
use crate::error::Result;
use crate::ir::{Node, TensorId};

pub fn gradient(ctx: &mut GradCtx, node: &Node, dy: &[Option<TensorId>], needs: &[bool]) -> Result<Vec<Option<TensorId>>> {
    todo!()
}

pub fn flops(op: &Op, inputs: &[&[usize]], outputs: &[&[usize]]) -> u64 {
    todo!()
}
