//! Costs of the optimizer family (gradient bookkeeping and optimizer updates). None of them has a
//! gradient rule: they run after the backward pass and are never differentiated.

use pock_engine::ops::OptimOp;

use super::{no_gradient, numel, CompileRules, GradCtx};
use crate::error::Result;
use crate::ir::{Node, TensorId};

impl CompileRules for OptimOp {
    fn gradient(&self, _ctx: &mut GradCtx, node: &Node, _dy: &[Option<TensorId>], _needs: &[bool]) -> Result<Vec<Option<TensorId>>> {
        match self {
            // They update state in place after the backward pass; no loss depends on them within
            // the step, so there is nothing to differentiate.
            OptimOp::AccumulateGrad
            | OptimOp::Fill { .. }
            | OptimOp::GradScale(_)
            | OptimOp::SgdUpdate(_)
            | OptimOp::AdamUpdate(_)
            | OptimOp::CountNonFinite
            | OptimOp::SgdUpdateRows { .. }
            | OptimOp::AdamUpdateRows { .. } => no_gradient(node),
        }
    }

    fn flops(&self, inputs: &[&[usize]], outputs: &[&[usize]]) -> u64 {
        match self {
            OptimOp::AccumulateGrad => numel(inputs[0]),
            // One finiteness test per element, and the increment.
            OptimOp::CountNonFinite => numel(inputs[0]) + 1,
            // Fill only stores; it computes nothing.
            OptimOp::Fill { .. } => 0,
            // Per gradient element: the multiplier, the square and the sum; then sqrt, the
            // division and the clamp once.
            OptimOp::GradScale(g) => {
                let elements: u64 = inputs.iter().map(|s| numel(s)).sum();
                if g.max_norm.is_some() {
                    3 * elements + 4
                } else {
                    // The finiteness test per element, then the multiplier.
                    elements + 1
                }
            }
            // A row-restricted update does the same work per element of its gradient.
            OptimOp::SgdUpdateRows { sgd, .. } => OptimOp::SgdUpdate(*sgd).flops(inputs, &[inputs[0]]),
            OptimOp::AdamUpdateRows { adam, .. } => OptimOp::AdamUpdate(*adam).flops(inputs, &[inputs[0]]),
            OptimOp::SgdUpdate(s) => {
                // The update `param -= lr * g` is a multiply-add.
                let mut per_element = 2;
                if s.scaled {
                    per_element += 1;
                }
                if s.weight_decay != 0.0 {
                    per_element += 2;
                }
                if s.momentum != 0.0 {
                    per_element += 3;
                    if s.nesterov {
                        per_element += 2;
                    }
                }
                per_element * numel(outputs[0])
            }
            OptimOp::AdamUpdate(a) => {
                // m: 3, v: 4, sqrt, bias-correction division, eps, the quotient and the
                // multiply-add into param: 6 more.
                let mut per_element = 13;
                if a.scaled {
                    per_element += 1;
                }
                if a.weight_decay != 0.0 {
                    per_element += if a.decoupled { 1 } else { 2 };
                }
                per_element * numel(outputs[0])
            }
        }
    }
}
