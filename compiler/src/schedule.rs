//! Operator reordering: the Train program's order is chosen to minimise the planned peak.
//!
//! Autodiff emits the whole forward pass, then the backward pass, then the optimizer, so every
//! parameter gradient would stay alive until the end of the step. [`minimise_peak`] reorders the
//! Train program over its dependency DAG with a list scheduler that, among the nodes whose
//! dependencies have run, takes an optimizer node if there is one, else the one that frees the
//! most bytes net of what it allocates, as long as that is not negative; when every ready node
//! allocates, it takes the one autodiff emitted first. An update frees its gradient, so it runs as soon as the gradient is complete
//! and the gradient dies at once (PockEngine's "gradients are consumed as soon as they exist");
//! a node that only allocates keeps its emitted place, so nothing is computed long before it is
//! needed, and a backward branch that autodiff emitted whole stays whole.
//!
//! The scheduler's own objective is the sum of live bytes; the planner packs buffers with
//! fragmentation. So the packed peaks of three orders are compared and the smallest is kept
//! (ties in this order): the list schedule, the emission order with only the optimizer nodes
//! hoisted to just after their last dependency, and the emission order itself. Every choice is
//! a deterministic function of the graph.
//!
//! Reordering never changes a value: each node still runs after every node it reads from, every
//! node that reads what it overwrites, and every earlier writer of what it writes (the one
//! exception, counts of skipped updates, commutes exactly).

use std::collections::HashMap;

use pock_engine::ops::{Op, OptimOp};

use crate::ir::{Graph, Node, Phase, Program, TensorId};
use crate::memory::{reshape_roots, scratch_peak};

/// Which order [`minimise_peak`] kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    ListScheduled,
    UpdatesHoisted,
    Emission,
}

/// The packed scratch peaks of the Train program before and after [`minimise_peak`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reordering {
    pub emission_peak: u64,
    pub chosen_peak: u64,
    pub chosen: Order,
}

/// The packed scratch peak of the Train program in its current order.
pub fn train_peak(graph: &Graph, feeds: &[TensorId], fetches: &[TensorId]) -> u64 {
    let nodes: Vec<&Node> = graph.program_nodes(Program::Train).collect();
    scratch_peak(graph, &nodes, feeds, fetches)
}

/// Reorders the Train program of `graph` for the smallest packed scratch peak (see the module
/// documentation). `feeds` and `fetches` are the program's host-visible tensors.
pub fn minimise_peak(graph: &mut Graph, feeds: &[TensorId], fetches: &[TensorId]) -> Reordering {
    let (train, rest): (Vec<Node>, Vec<Node>) = graph.nodes.drain(..).partition(|n| n.program == Program::Train);
    let candidates = [
        (Order::ListScheduled, list_schedule(graph, &train, feeds, fetches)),
        (Order::UpdatesHoisted, hoist_updates(&train)),
        (Order::Emission, (0..train.len()).collect()),
    ];
    let peak_of = |order: &[usize]| {
        let nodes: Vec<&Node> = order.iter().map(|&i| &train[i]).collect();
        scratch_peak(graph, &nodes, feeds, fetches)
    };
    let peaks: Vec<u64> = candidates.iter().map(|(_, order)| peak_of(order)).collect();
    let best = (0..candidates.len()).min_by_key(|&i| (peaks[i], i)).expect("three candidates");
    let reordering = Reordering { emission_peak: peaks[2], chosen_peak: peaks[best], chosen: candidates[best].0 };
    log::debug!(
        "train scratch peaks: list schedule {}, updates hoisted {}, emission {}; kept {:?}",
        peaks[0],
        peaks[1],
        peaks[2],
        reordering.chosen
    );
    let mut slots: Vec<Option<Node>> = train.into_iter().map(Some).collect();
    graph.nodes = candidates[best].1.iter().map(|&i| slots[i].take().expect("each node once")).collect();
    graph.nodes.extend(rest);
    reordering
}

/// Skipped-update counts only add 1 to the same counter, which commutes exactly (the counts are
/// small integers). Ordering them would chain every update behind the first parameter's
/// gradient, which is the last to be complete.
fn counts(n: &Node) -> bool {
    matches!(n.op, Op::Optim(OptimOp::CountNonFinite))
}

/// For each node, the earlier nodes it must run after: read after write, write after read, write
/// after write (in-place outputs are the only tensors written twice).
fn predecessors(nodes: &[Node]) -> Vec<Vec<usize>> {
    let mut readers: HashMap<TensorId, Vec<usize>> = HashMap::new();
    let mut writers: HashMap<TensorId, Vec<usize>> = HashMap::new();
    let mut preds = Vec::with_capacity(nodes.len());
    for (j, n) in nodes.iter().enumerate() {
        let mut p: Vec<usize> = Vec::new();
        for t in &n.inputs {
            p.extend(writers.get(t).into_iter().flatten());
        }
        for t in &n.outputs {
            p.extend(readers.get(t).into_iter().flatten());
            p.extend(writers.get(t).into_iter().flatten().filter(|&&w| !(counts(n) && counts(&nodes[w]))));
        }
        p.sort_unstable();
        p.dedup();
        p.retain(|&i| i != j);
        preds.push(p);
        for &t in &n.inputs {
            readers.entry(t).or_default().push(j);
        }
        for &t in &n.outputs {
            writers.entry(t).or_default().push(j);
        }
    }
    preds
}

/// The list schedule described in the module documentation, as indices into `nodes`.
fn list_schedule(graph: &Graph, nodes: &[Node], feeds: &[TensorId], fetches: &[TensorId]) -> Vec<usize> {
    let preds = predecessors(nodes);
    let mut succs: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for (j, p) in preds.iter().enumerate() {
        for &i in p {
            succs[i].push(j);
        }
    }
    let mut waiting: Vec<usize> = preds.iter().map(Vec::len).collect();

    // Scratch buffers by aliasing root, as the planner sees them.
    let root = reshape_roots(graph, nodes);
    let scratch = |t: &TensorId| {
        let r = root[t.index()];
        (!graph.tensor(r).is_persistent()).then_some(r)
    };
    let size = |r: TensorId| graph.tensor(r).bytes() as u64;
    let touches: Vec<Vec<TensorId>> = nodes
        .iter()
        .map(|n| {
            let mut r: Vec<TensorId> = n.inputs.iter().chain(&n.outputs).filter_map(scratch).collect();
            r.sort_unstable_by_key(|t| t.0);
            r.dedup();
            r
        })
        .collect();
    // How many unscheduled nodes still touch each buffer; fetches are never freed.
    let mut remaining: HashMap<TensorId, usize> = HashMap::new();
    for r in touches.iter().flatten().chain(fetches.iter().filter_map(scratch).collect::<Vec<_>>().iter()) {
        *remaining.entry(*r).or_default() += 1;
    }
    let mut live: std::collections::HashSet<TensorId> = feeds.iter().filter_map(scratch).collect();
    let delta = |j: usize, live: &std::collections::HashSet<TensorId>, remaining: &HashMap<TensorId, usize>| -> i128 {
        touches[j]
            .iter()
            .map(|&r| {
                let allocated = if live.contains(&r) { 0 } else { size(r) as i128 };
                let freed = if remaining[&r] == 1 { size(r) as i128 } else { 0 };
                freed - allocated
            })
            .sum()
    };

    let mut ready: Vec<usize> = (0..nodes.len()).filter(|&j| waiting[j] == 0).collect();
    let mut order = Vec::with_capacity(nodes.len());
    while !ready.is_empty() {
        // Optimizer nodes first (they allocate at most a scalar, and the count and the update
        // that read a gradient free it only together), then freeing nodes (most freed, then
        // emitted first), else the first emitted.
        let pick = (0..ready.len())
            .max_by_key(|&k| {
                let j = ready[k];
                if nodes[j].phase == Phase::Optimizer {
                    return (2, 0, std::cmp::Reverse(j));
                }
                let d = delta(j, &live, &remaining);
                if d >= 0 {
                    (1, d, std::cmp::Reverse(j))
                } else {
                    (0, 0, std::cmp::Reverse(j))
                }
            })
            .expect("ready is not empty");
        let j = ready.swap_remove(pick);
        order.push(j);
        for r in &touches[j] {
            live.insert(*r);
            let left = remaining.get_mut(r).expect("counted");
            *left -= 1;
            if *left == 0 {
                live.remove(r);
            }
        }
        for &s in &succs[j] {
            waiting[s] -= 1;
            if waiting[s] == 0 {
                ready.push(s);
            }
        }
    }
    // Every edge points forward in the emission order, so the graph is acyclic and all ran.
    debug_assert_eq!(order.len(), nodes.len());
    order
}

/// The emission order with each optimizer node moved to just after its last dependency.
fn hoist_updates(nodes: &[Node]) -> Vec<usize> {
    let preds = predecessors(nodes);
    let mut order: Vec<usize> = Vec::with_capacity(nodes.len());
    for (j, n) in nodes.iter().enumerate() {
        if n.phase != Phase::Optimizer {
            order.push(j);
            continue;
        }
        let position = order.iter().rposition(|i| preds[j].binary_search(i).is_ok()).map_or(0, |k| k + 1);
        order.insert(position, j);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Graph;
    use pock_engine::ops::{DenseOp, OptimOp, Sgd};

    fn sgd() -> OptimOp {
        OptimOp::SgdUpdate(Sgd { momentum: 0.0, dampening: 0.0, nesterov: false, weight_decay: 0.0, scaled: false })
    }

    fn names(g: &Graph) -> Vec<&str> {
        g.nodes.iter().map(|n| n.name.as_str()).collect()
    }

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
        let other = g.emit("other", DenseOp::Mul, &[dx, x], Phase::Backward, Program::Train).unwrap()[0];
        g.emit_inplace("update", sgd(), &[dw, lr, step], &[w], Phase::Optimizer, Program::Train).unwrap();
        minimise_peak(&mut g, &[], &[other]);
        assert_eq!(names(&g), ["mul", "dw", "dx", "update", "other"]);
    }

    #[test]
    fn list_schedule_finishes_a_gradient_before_computing_the_next() {
        // Two independent layers whose gradients autodiff emitted together, then their updates:
        // the scheduler computes one gradient, updates, then the other.
        let mut g = Graph::new();
        let lr = g.constant("lr", vec![], vec![0.1]);
        let step = g.constant("step", vec![], vec![1.0]);
        let x = g.constant("x", vec![64], vec![1.0; 64]);
        let a = g.parameter("a", vec![64], vec![1.0; 64]);
        let b = g.parameter("b", vec![64], vec![2.0; 64]);
        let ya = g.emit("fa", DenseOp::Mul, &[a, x], Phase::Forward, Program::Train).unwrap()[0];
        let yb = g.emit("fb", DenseOp::Mul, &[b, x], Phase::Forward, Program::Train).unwrap()[0];
        let da = g.emit("da", DenseOp::Mul, &[ya, x], Phase::Backward, Program::Train).unwrap()[0];
        let db = g.emit("db", DenseOp::Mul, &[yb, x], Phase::Backward, Program::Train).unwrap()[0];
        g.emit_inplace("update.a", sgd(), &[da, lr, step], &[a], Phase::Optimizer, Program::Train).unwrap();
        g.emit_inplace("update.b", sgd(), &[db, lr, step], &[b], Phase::Optimizer, Program::Train).unwrap();
        let r = minimise_peak(&mut g, &[], &[]);
        assert_eq!(r.chosen, Order::ListScheduled);
        assert_eq!(names(&g), ["fa", "da", "update.a", "fb", "db", "update.b"]);
        assert!(r.chosen_peak < r.emission_peak, "{r:?}");
    }

    #[test]
    fn predecessors_cover_reads_overwrites_and_commuting_counts() {
        let mut g = Graph::new();
        let w = g.parameter("w", vec![2], vec![1.0, 2.0]);
        let skipped = g.parameter("skipped", vec![], vec![0.0]);
        let lr = g.constant("lr", vec![], vec![0.1]);
        let y = g.emit("read", DenseOp::Mul, &[w, w], Phase::Forward, Program::Train).unwrap()[0];
        g.emit_inplace("count.1", OptimOp::CountNonFinite, &[y], &[skipped], Phase::Optimizer, Program::Train).unwrap();
        g.emit_inplace("count.2", OptimOp::CountNonFinite, &[y], &[skipped], Phase::Optimizer, Program::Train).unwrap();
        g.emit_inplace("update", sgd(), &[y, lr, lr], &[w], Phase::Optimizer, Program::Train).unwrap();
        let p = predecessors(&g.nodes);
        assert_eq!(p, vec![vec![], vec![0], vec![0], vec![0]]);
    }
}
