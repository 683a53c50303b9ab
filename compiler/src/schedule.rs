//! Operator reordering.
//!
//! Autodiff emits the whole backward pass and then the optimizer, so every parameter gradient
//! would stay alive until the end of the step. [`consume_gradients_early`] moves each optimizer
//! node to the earliest position its dependencies allow, which puts a layer's update right after
//! its gradient is complete (PockEngine's "gradients are consumed as soon as they exist") and lets
//! the memory planner reuse that gradient's memory for the rest of the backward pass.

use pock_engine::ops::{Op, OptimOp};

use crate::ir::{Graph, Node, Phase, Program, TensorId};

/// Whether `later` must run after `earlier` (both in one program, `earlier` first originally).
fn depends(later: &Node, earlier: &Node) -> bool {
    let writes = |n: &Node, t: &TensorId| n.outputs.contains(t);
    let reads = |n: &Node, t: &TensorId| n.inputs.contains(t);
    // Two counts of skipped updates only add 1 to the same counter, which commutes (exactly: the
    // counts are small integers). Ordering them would chain every update behind the first
    // parameter's gradient, which is the last to be complete.
    let counts = |n: &Node| matches!(n.op, Op::Optim(OptimOp::CountNonFinite));
    let write_after_write = |t: &TensorId| writes(earlier, t) && !(counts(later) && counts(earlier));
    // Read after write, write after read, write after write.
    later.inputs.iter().any(|t| writes(earlier, t)) || later.outputs.iter().any(|t| reads(earlier, t) || write_after_write(t))
}

/// Hoists every optimizer-phase node of the Train program to just after its last dependency.
pub fn consume_gradients_early(graph: &mut Graph) {
    let (train, rest): (Vec<Node>, Vec<Node>) = graph.nodes.drain(..).partition(|n| n.program == Program::Train);
    let mut order: Vec<Node> = Vec::with_capacity(train.len());
    for node in train {
        if node.phase != Phase::Optimizer {
            order.push(node);
            continue;
        }
        let position = order.iter().rposition(|earlier| depends(&node, earlier)).map_or(0, |i| i + 1);
        order.insert(position, node);
    }
    graph.nodes = order;
    graph.nodes.extend(rest);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Graph;
    use pock_engine::ops::{DenseOp, OptimOp, Sgd};

    #[test]
    fn update_moves_before_unrelated_backward_nodes_but_after_readers() {
        let mut g = Graph::new();
        let w = g.parameter("w", vec![2], vec![1.0, 2.0]);
        let x = g.constant("x", vec![2], vec![3.0, 4.0]);
        let lr = g.constant("lr", vec![], vec![0.1]);
        let step = g.constant("step", vec![], vec![1.0]);
        let y = g.emit("mul", DenseOp::Mul, &[w, x], Phase::Forward, Program::Train).unwrap()[0];
        // A backward node that reads w, one that does not, then the update.
        let dw = g.emit("dw", DenseOp::Mul, &[y, x], Phase::Backward, Program::Train).unwrap()[0];
        let dx = g.emit("dx", DenseOp::Mul, &[y, w], Phase::Backward, Program::Train).unwrap()[0];
        let _other = g.emit("other", DenseOp::Mul, &[dx, x], Phase::Backward, Program::Train).unwrap();
        let sgd = OptimOp::SgdUpdate(Sgd { momentum: 0.0, dampening: 0.0, nesterov: false, weight_decay: 0.0, scaled: false });
        g.emit_inplace("update", sgd, &[dw, lr, step], &[w], Phase::Optimizer, Program::Train).unwrap();
        consume_gradients_early(&mut g);
        let names: Vec<&str> = g.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["mul", "dw", "dx", "update", "other"]);
    }
}
