//! Gradient rules and costs of the unary family. The rule of every function is the same, driven
//! by its formula: one backward op `dx = dy * f'(saved)` that reads the forward value the formula
//! names (`UnaryFn::saves`: the output for exp, sigmoid, tanh, sqrt, reciprocal, softplus and
//! hard sigmoid; the input for log, erf, abs, sin, cos, leaky ReLU and ELU; nothing for Neg).

use pock_engine::kernels::unary::Saves;
use pock_engine::ops::UnaryOp;

use super::{no_gradient, numel, CompileRules, GradCtx};
use crate::error::Result;
use crate::ir::{Node, TensorId};

impl CompileRules for UnaryOp {
    fn gradient(&self, ctx: &mut GradCtx, node: &Node, dy: &[Option<TensorId>], needs: &[bool]) -> Result<Vec<Option<TensorId>>> {
        let mut grads = vec![None; node.inputs.len()];
        let Some(dy) = dy[0] else { return Ok(grads) };
        match self {
            UnaryOp::Map(f) => {
                if needs[0] {
                    let (x, y) = (node.inputs[0], node.outputs[0]);
                    let inputs = match f.saves() {
                        Saves::Nothing => vec![dy],
                        Saves::Input => vec![dy, x],
                        Saves::Output => vec![dy, y],
                    };
                    grads[0] = Some(ctx.emit1("dx", UnaryOp::Grad(*f), &inputs)?);
                }
            }
            // Bool values are never differentiated (the early return has handled Not's output).
            UnaryOp::Not => {}
            UnaryOp::Grad(_) => return no_gradient(node),
        }
        Ok(grads)
    }

    fn flops(&self, _inputs: &[&[usize]], outputs: &[&[usize]]) -> u64 {
        match self {
            // One function evaluation per element (transcendentals counted as one).
            UnaryOp::Map(_) | UnaryOp::Not => numel(outputs[0]),
            // The derivative and the multiplication by dy.
            UnaryOp::Grad(_) => 2 * numel(outputs[0]),
        }
    }
}
