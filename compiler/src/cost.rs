//! The work of a plan's ops (arithmetic and memory traffic), which the targets' roofline turns
//! into a step-time estimate (`pock inspect`).
//!
//! An op's traffic is the bytes of every tensor it reads and writes, plus its im2col workspace
//! written once and read once: the least it can move, as if nothing stayed in cache between ops.
//! Its arithmetic is [`crate::ops::flops`].

use pock_engine::plan::{Node, Program};
use pock_engine::Plan;
use pock_targets::{OpWork, StepEstimate, Target};

/// The work of one node of `plan`.
pub fn node_work(plan: &Plan, node: &Node) -> OpWork {
    let shape = |&t: &pock_engine::TensorId| plan.tensor(t).shape.as_slice();
    let ins: Vec<&[usize]> = node.inputs.iter().map(shape).collect();
    let outs: Vec<&[usize]> = node.outputs.iter().map(shape).collect();
    let tensor_bytes = |&t: &pock_engine::TensorId| {
        let info = plan.tensor(t);
        info.shape.iter().fold(info.dtype.size() as u64, |acc, &d| acc.saturating_mul(d as u64))
    };
    let workspace = node.workspace.map_or(0, |w| w.elems.saturating_mul(4 * 2));
    let bytes = node.inputs.iter().chain(&node.outputs).map(tensor_bytes).fold(workspace, u64::saturating_add);
    OpWork { flops: crate::ops::flops(&node.op, &ins, &outs), bytes }
}

/// The work of every node of `program`, in order.
pub fn program_work<'a>(plan: &'a Plan, program: &'a Program) -> impl Iterator<Item = OpWork> + 'a {
    program.nodes.iter().map(move |n| node_work(plan, n))
}

/// The estimated time of one training step (the `train` program, and the `apply` program when
/// gradients are accumulated over K micro-batches, counted once per K steps) on `target` with
/// `threads` cores.
pub fn estimate_train_step(plan: &Plan, target: &Target, threads: u32) -> StepEstimate {
    let mut e = target.estimate_step(program_work(plan, &plan.programs.train), threads);
    if let Some(apply) = &plan.programs.apply {
        let k = plan.training.accumulate.max(1) as f64;
        let a = target.estimate_step(program_work(plan, apply), threads);
        e.ms += a.ms / k;
        e.compute_bound_ms += a.compute_bound_ms / k;
        e.memory_bound_ms += a.memory_bound_ms / k;
    }
    e
}
