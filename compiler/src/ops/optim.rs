//! Costs of gradient bookkeeping and optimizer ops (they have no gradient rules).

use pock_engine::ops::Op;

use super::numel;

pub fn flops(op: &Op, inputs: &[&[usize]], outputs: &[&[usize]]) -> u64 {
    match op {
        Op::AccumulateGrad => numel(inputs[0]),
        // Fill only stores; it computes nothing.
        Op::Fill { .. } => 0,
        // Per gradient element: the multiplier, the square and the sum; then sqrt, the division
        // and the clamp once.
        Op::GradScale(g) => {
            let elements: u64 = inputs.iter().map(|s| numel(s)).sum();
            if g.max_norm.is_some() {
                3 * elements + 4
            } else {
                1
            }
        }
        Op::SgdUpdate(s) => {
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
        Op::AdamUpdate(a) => {
            // m: 3, v: 4, sqrt, bias-correction division, eps, the quotient and the multiply-add
            // into param: 6 more.
            let mut per_element = 13;
            if a.scaled {
                per_element += 1;
            }
            if a.weight_decay != 0.0 {
                per_element += if a.decoupled { 1 } else { 2 };
            }
            per_element * numel(outputs[0])
        }
        other => unreachable!("optim::flops dispatched for {}", other.name()),
    }
}
