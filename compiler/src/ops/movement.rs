//! Gradient rules and costs of the movement family: Transpose, Concat, Split, Slice, Expand,
//! Gather, Pad, Trilu and their gradient ops.

use pock_engine::ops::{MoveOp, Slice};

use super::broadcast::sum_to;
use super::{no_gradient, numel, CompileRules, GradCtx};
use crate::error::Result;
use crate::ir::{Node, TensorId};

impl CompileRules for MoveOp {
    fn gradient(&self, ctx: &mut GradCtx, node: &Node, dy: &[Option<TensorId>], needs: &[bool]) -> Result<Vec<Option<TensorId>>> {
        let mut grads = vec![None; node.inputs.len()];
        if !needs.iter().any(|&n| n) {
            return Ok(grads);
        }
        // Split is the one op with several outputs; every other op's gradient starts from dy[0].
        if let MoveOp::Split { axis, .. } = self {
            if dy.iter().all(Option::is_none) {
                return Ok(grads);
            }
            // Pieces nobody differentiates contribute zeros to the joined gradient.
            let mut pieces = Vec::with_capacity(dy.len());
            for (i, (&d, &out)) in dy.iter().zip(&node.outputs).enumerate() {
                pieces.push(match d {
                    Some(d) => d,
                    None => zeros(ctx, node, i, out)?,
                });
            }
            grads[0] = Some(ctx.emit1("dx", MoveOp::Concat { axis: *axis }, &pieces)?);
            return Ok(grads);
        }
        let Some(dy) = dy[0] else { return Ok(grads) };
        let x = node.inputs[0];
        match self {
            MoveOp::Transpose { perm } => {
                let mut inverse = vec![0; perm.len()];
                for (k, &p) in perm.iter().enumerate() {
                    inverse[p] = k;
                }
                grads[0] = Some(ctx.emit1("dx", MoveOp::Transpose { perm: inverse }, &[dy])?);
            }
            MoveOp::Concat { axis } => {
                let sizes = node.inputs.iter().map(|&t| ctx.shape(t)[*axis]).collect();
                let pieces = ctx.emit("dx", MoveOp::Split { axis: *axis, sizes }, &[dy])?;
                for ((grad, &need), piece) in grads.iter_mut().zip(needs).zip(pieces) {
                    if need {
                        *grad = Some(piece);
                    }
                }
            }
            MoveOp::Slice(slice) => {
                let shape = ctx.shape(x);
                grads[0] = Some(ctx.emit1("dx", MoveOp::SliceGrad { slice: slice.clone(), shape }, &[dy])?);
            }
            MoveOp::Expand { .. } => grads[0] = Some(sum_to(ctx, "dx", dy, ctx.shape(x))?),
            // The indices are never differentiated; only the data gets a gradient.
            MoveOp::Gather { axis } => {
                if needs[0] {
                    let shape = ctx.shape(x);
                    grads[0] = Some(ctx.emit1("ddata", MoveOp::GatherGrad { axis: *axis, shape }, &[dy, node.inputs[1]])?);
                }
            }
            MoveOp::Pad { pads, .. } => {
                let shape = ctx.shape(x);
                let rank = shape.len();
                let slice = Slice {
                    axes: (0..rank).collect(),
                    starts: pads[..rank].iter().map(|&p| p as i64).collect(),
                    ends: (0..rank).map(|k| (pads[k] + shape[k]) as i64).collect(),
                    steps: vec![1; rank],
                };
                grads[0] = Some(ctx.emit1("dx", MoveOp::Slice(slice), &[dy])?);
            }
            // A mask is its own adjoint.
            MoveOp::Trilu { upper, k } => grads[0] = Some(ctx.emit1("dx", MoveOp::Trilu { upper: *upper, k: *k }, &[dy])?),
            MoveOp::Split { .. } => unreachable!("handled above"),
            // Gradient ops are not differentiated again: pock computes first-order gradients only.
            MoveOp::SliceGrad { .. } | MoveOp::GatherGrad { .. } => return no_gradient(node),
        }
        Ok(grads)
    }

    fn flops(&self, inputs: &[&[usize]], _outputs: &[&[usize]]) -> u64 {
        match self {
            // One add per scattered element.
            MoveOp::GatherGrad { .. } => numel(inputs[0]),
            // Moving, masking and padding compute nothing.
            MoveOp::Transpose { .. }
            | MoveOp::Concat { .. }
            | MoveOp::Split { .. }
            | MoveOp::Slice(_)
            | MoveOp::SliceGrad { .. }
            | MoveOp::Expand { .. }
            | MoveOp::Gather { .. }
            | MoveOp::Pad { .. }
            | MoveOp::Trilu { .. } => 0,
        }
    }
}

/// Zeros shaped like `like`, for the gradient of an output nobody differentiates: one scalar
/// constant expanded, so the zeros exist only while the backward pass needs them.
fn zeros(ctx: &mut GradCtx, node: &Node, i: usize, like: TensorId) -> Result<TensorId> {
    let zero = ctx.graph.constant(format!("{}.grad.zero{i}.value", node.name), vec![], vec![0.0]);
    let shape = ctx.shape(like);
    ctx.emit1(&format!("zero{i}"), MoveOp::Expand { shape }, &[zero])
}
