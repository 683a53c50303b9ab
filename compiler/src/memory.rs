//! Static memory planning and plan emission.
//!
//! Every value a step touches gets a fixed place at compile time:
//! - frozen parameters and constants stay in the plan's weight section (mapped, never copied);
//! - values that survive between steps (trainable parameters, optimizer state, running
//!   statistics, accumulators, runtime scalars) get the arena's persistent prefix;
//! - everything else (inputs, activations, gradients, kernel workspace) is scratch: each program's
//!   scratch values get intervals of liveness over that program's node order and are packed
//!   greedily: greedy-by-size best-fit (as TFLite's and the Tiny Training Engine's planners do)
//!   and a few other greedy orders, keeping the smallest peak (see [`pack`]). Programs never run
//!   at the same time, so they all share the scratch region after the prefix.
//!
//! `Reshape` outputs alias their input: they share one buffer whose lifetime is the union, and
//! the node disappears from the emitted program. The reshape of a value in the persistent prefix
//! (a trainable parameter) is the exception: it stays a node that copies into a scratch buffer.

use std::collections::HashMap;

use pock_engine::kernels::cpu::workspace_elems;
use pock_engine::ops::{DenseOp, Op};
use pock_engine::plan::{
    self, Init, Location, Loss, Node as PlanNode, Plan, Program as PlanProgram, Programs, TensorInfo, TrainingInfo, Workspace, ALIGN,
};

use crate::error::{CompileError, Result};
use crate::ir::{Graph, Node, Program, Role, TensorId, Values};
use crate::stages::{Task, TrainingGraph};

fn align(n: u64) -> u64 {
    n.div_ceil(ALIGN) * ALIGN
}

/// A buffer to place: `[first, last]` are node indices (inclusive) of its lifetime.
#[derive(Clone, Debug)]
pub struct Interval {
    pub size: u64,
    pub first: usize,
    pub last: usize,
}

/// The orders in which [`pack`] tries to place buffers, each a greedy pass; the first is
/// TFLite's greedy-by-size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PackOrder {
    /// Largest first, earlier first among equal sizes.
    Size,
    /// Largest `size x lifetime` first (the buffers that cover most of the memory-time plane).
    Area,
    /// Longest lifetime first, then largest.
    Duration,
    /// Earliest first, then largest: an allocator's view, one buffer after the other in time.
    Start,
}

/// Where a buffer goes among the gaps left by the placed buffers whose lifetimes overlap its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fit {
    /// The smallest gap that fits.
    Best,
    /// The lowest gap that fits.
    First,
}

/// The largest sum of the sizes of buffers live at one node: no packing can be smaller.
pub fn live_peak(buffers: &[Interval]) -> u64 {
    let mut events: Vec<(usize, bool, u64)> = Vec::with_capacity(2 * buffers.len());
    for b in buffers {
        events.push((b.first, true, b.size));
        events.push((b.last + 1, false, b.size));
    }
    // At the same node, frees (false) before allocations (true).
    events.sort_unstable();
    let (mut live, mut peak) = (0u64, 0u64);
    for (_, alloc, size) in events {
        if alloc {
            live += size;
            peak = peak.max(live);
        } else {
            live -= size;
        }
    }
    peak
}

/// Greedy placement of the scratch buffers. Returns each buffer's offset and the peak size;
/// buffers whose lifetimes overlap never overlap in memory.
///
/// One greedy pass places the buffers one by one in some order, each in a gap among the placed
/// buffers whose lifetimes overlap its own, else above them all. Which order leaves the fewest
/// gaps depends on the lifetimes (fusion, for one, shortens some and the greedy-by-size pass
/// then left 0.8 MiB of gaps in zoo:mobilenetv2's full plan), so `pack` runs greedy-by-size
/// with best fit first, then the other orders (`PackOrder`) and fits (`Fit`), and keeps the
/// smallest peak (the earliest pass on ties, so where greedy-by-size does as well as any other
/// pass the plan is unchanged). It stops as soon as a pass reaches [`live_peak`], the bound no
/// packing beats.
pub fn pack(buffers: &[Interval]) -> (Vec<u64>, u64) {
    let bound = live_peak(buffers);
    let mut best: Option<(Vec<u64>, u64)> = None;
    for order in [PackOrder::Size, PackOrder::Area, PackOrder::Duration, PackOrder::Start] {
        for fit in [Fit::Best, Fit::First] {
            let (offsets, peak) = pack_greedy(buffers, order, fit);
            if best.as_ref().is_none_or(|(_, p)| peak < *p) {
                best = Some((offsets, peak));
            }
            if peak <= bound {
                return best.expect("just set");
            }
        }
    }
    best.expect("at least one pass")
}

/// One greedy pass of [`pack`].
fn pack_greedy(buffers: &[Interval], order_by: PackOrder, fit: Fit) -> (Vec<u64>, u64) {
    let mut order: Vec<usize> = (0..buffers.len()).collect();
    let len = |b: &Interval| (b.last - b.first + 1) as u64;
    match order_by {
        PackOrder::Size => order.sort_by(|&a, &b| buffers[b].size.cmp(&buffers[a].size).then(buffers[a].first.cmp(&buffers[b].first))),
        PackOrder::Area => order.sort_by(|&a, &b| {
            let area = |i: usize| buffers[i].size as u128 * len(&buffers[i]) as u128;
            area(b).cmp(&area(a)).then(buffers[b].size.cmp(&buffers[a].size)).then(buffers[a].first.cmp(&buffers[b].first))
        }),
        PackOrder::Duration => order.sort_by(|&a, &b| {
            len(&buffers[b])
                .cmp(&len(&buffers[a]))
                .then(buffers[b].size.cmp(&buffers[a].size))
                .then(buffers[a].first.cmp(&buffers[b].first))
        }),
        PackOrder::Start => order.sort_by(|&a, &b| buffers[a].first.cmp(&buffers[b].first).then(buffers[b].size.cmp(&buffers[a].size))),
    }
    let mut offsets = vec![u64::MAX; buffers.len()];
    let mut placed: Vec<usize> = Vec::new();
    let mut busy: Vec<(u64, u64)> = Vec::new();
    let mut peak = 0;
    for i in order {
        let b = &buffers[i];
        busy.clear();
        busy.extend(
            placed
                .iter()
                .filter(|&&j| buffers[j].first <= b.last && b.first <= buffers[j].last)
                .map(|&j| (offsets[j], offsets[j] + buffers[j].size)),
        );
        busy.sort_unstable();
        // The chosen gap that fits, else the end of the busy ranges.
        let (mut chosen, mut chosen_gap, mut cursor) = (None::<u64>, u64::MAX, 0u64);
        for &(start, end) in &busy {
            if start >= cursor {
                let gap = start - cursor;
                if gap >= b.size && gap < chosen_gap {
                    chosen = Some(cursor);
                    chosen_gap = gap;
                    if fit == Fit::First {
                        break;
                    }
                }
            }
            cursor = cursor.max(end);
        }
        let offset = chosen.unwrap_or(cursor);
        offsets[i] = offset;
        peak = peak.max(offset + b.size);
        placed.push(i);
    }
    (offsets, peak)
}

/// The nodes and host-visible tensors of one program, before placement.
struct ProgramSpec<'g> {
    name: &'static str,
    nodes: Vec<&'g Node>,
    feeds: Vec<TensorId>,
    fetches: Vec<TensorId>,
}

/// A plan and its weight section, ready to be written with [`CompiledPlan::to_bytes`].
#[derive(Clone, Debug)]
pub struct CompiledPlan {
    pub plan: Plan,
    pub weights: Vec<u8>,
}

impl CompiledPlan {
    /// The plan file's bytes (see `pock_engine::format`).
    pub fn to_bytes(&self) -> Vec<u8> {
        pock_engine::format::encode_plan(&self.plan, &self.weights)
    }
}

pub fn build_plan(training: TrainingGraph) -> Result<CompiledPlan> {
    let t = &training;
    let g = &t.graph;
    let collect = |p: Program| -> Vec<&Node> { g.program_nodes(p).collect() };
    let eval = collect(Program::Eval);
    let infer = needed_for(&eval, t.eval_output);
    let mut specs = vec![
        ProgramSpec {
            name: "train",
            nodes: collect(Program::Train),
            feeds: t.train_inputs.iter().copied().chain([t.train_target]).collect(),
            fetches: vec![t.train_loss],
        },
        ProgramSpec {
            name: "eval",
            nodes: eval,
            feeds: t.eval_inputs.iter().copied().chain([t.eval_target]).collect(),
            fetches: vec![t.eval_output, t.eval_loss],
        },
    ];
    let apply = collect(Program::Apply);
    let has_apply = !apply.is_empty();
    if has_apply {
        specs.push(ProgramSpec { name: "apply", nodes: apply, feeds: vec![], fetches: vec![] });
    }

    // Reshape outputs alias their input's buffer (but those of persistent arena values).
    let root = reshape_roots(g, specs.iter().flat_map(|s| s.nodes.iter().copied()));

    // Which tensors any program touches; which program owns each scratch buffer.
    let mut used = vec![false; g.tensors.len()];
    let mut owner: Vec<Option<&'static str>> = vec![None; g.tensors.len()];
    for spec in &specs {
        let all = spec.nodes.iter().flat_map(|n| n.inputs.iter().chain(&n.outputs)).chain(&spec.feeds).chain(&spec.fetches);
        for &x in all {
            used[x.index()] = true;
            let r = root[x.index()];
            if !g.tensor(r).is_persistent() {
                match owner[r.index()] {
                    Some(o) if o != spec.name => {
                        return Err(CompileError::Node {
                            node: g.tensor(r).name.clone(),
                            op: "plan",
                            message: format!("scratch value used by both the {o} and {} programs", spec.name),
                        })
                    }
                    _ => owner[r.index()] = Some(spec.name),
                }
            }
        }
    }

    // Persistent prefix and weight section.
    let mut location: Vec<Option<Location>> = vec![None; g.tensors.len()];
    let mut init = vec![Init::None; g.tensors.len()];
    let mut weights: Vec<u8> = Vec::new();
    let mut persistent = 0u64;
    for (i, def) in g.tensors.iter().enumerate() {
        if !used[i] || root[i].index() != i || !def.is_persistent() {
            continue;
        }
        let values = def.init.as_ref();
        if let Some(v) = values {
            if v.dtype() != def.dtype || v.len() != def.numel() {
                return Err(CompileError::Node {
                    node: def.name.clone(),
                    op: "plan",
                    message: format!(
                        "its initial value is {} {} values, but the tensor is {} with {} elements",
                        v.len(),
                        v.dtype().name(),
                        def.dtype.name(),
                        def.numel()
                    ),
                });
            }
        }
        let mut to_weights = |values: &Values| -> u64 {
            let off = weights.len() as u64;
            weights.extend(values.to_le_bytes());
            weights.resize(align(weights.len() as u64) as usize, 0);
            off
        };
        match def.role {
            Role::Parameter { trainable: false } | Role::Constant => {
                let values = values.ok_or_else(|| missing_init(def))?;
                location[i] = Some(Location::Weights { offset: to_weights(values) });
            }
            _ => {
                location[i] = Some(Location::Arena { offset: persistent });
                persistent = align(persistent + def.bytes() as u64);
                init[i] = match values {
                    Some(Values::F32(v)) if !v.is_empty() && v.iter().all(|&x| x.to_bits() == v[0].to_bits()) => Init::Fill(v[0]),
                    Some(v) => Init::FromWeights { offset: to_weights(v) },
                    None if matches!(def.role, Role::RuntimeScalar(_)) => Init::Fill(0.0),
                    None => return Err(missing_init(def)),
                };
            }
        }
    }

    // Scratch, program by program.
    let mut scratch_peak = 0u64;
    let mut programs: HashMap<&'static str, PlanProgram> = HashMap::new();
    let mut workspace_of: HashMap<(&'static str, usize), Workspace> = HashMap::new();
    let mut peak_of: HashMap<&'static str, u64> = HashMap::new();
    for spec in &specs {
        let scratch = scratch_buffers(g, &spec.nodes, &spec.feeds, &spec.fetches, &root);
        let (offsets, peak) = pack(&scratch.buffers);
        scratch_peak = scratch_peak.max(peak);
        peak_of.insert(spec.name, peak);
        for (&r, &b) in &scratch.index {
            location[r.index()] = Some(Location::Arena { offset: persistent + offsets[b] });
        }
        for (node, b, elems) in scratch.workspaces {
            workspace_of.insert((spec.name, node), Workspace { offset: persistent + offsets[b], elems });
        }
    }
    // The arena the emission order would need: the Train program's peak as autodiff emitted it
    // (recorded before reordering), the other programs' as planned.
    let others = peak_of.iter().filter(|(name, _)| **name != "train").map(|(_, &p)| p).max().unwrap_or(0);
    let unordered_scratch = t.train_scratch_unordered.max(others);
    for i in 0..g.tensors.len() {
        if used[i] && location[i].is_none() {
            location[i] = location[root[i].index()];
        }
    }

    // Compact tensor table.
    let mut new_id: Vec<Option<plan::TensorId>> = vec![None; g.tensors.len()];
    let mut tensors = Vec::new();
    for (i, def) in g.tensors.iter().enumerate() {
        if !used[i] {
            continue;
        }
        new_id[i] = Some(plan::TensorId(tensors.len() as u32));
        tensors.push(TensorInfo {
            name: def.name.clone(),
            shape: def.shape.clone(),
            dtype: def.dtype,
            role: def.role.clone(),
            location: location[i].expect("every used tensor is placed"),
            init: init[i],
        });
    }
    let remap = |x: TensorId| new_id[x.index()].expect("used tensor");
    for t in &mut tensors {
        match &mut t.role {
            Role::OptimizerState { param, .. } | Role::GradAccumulator { param } => *param = remap(*param),
            _ => {}
        }
    }
    let emit = |spec_name: &'static str, nodes: &[&Node], feeds: &[TensorId], fetches: &[TensorId]| PlanProgram {
        nodes: nodes
            .iter()
            .enumerate()
            // Aliasing reshapes are no nodes: their output is their input's buffer.
            .filter(|(_, n)| !(matches!(n.op, Op::Dense(DenseOp::Reshape { .. })) && root[n.outputs[0].index()] != n.outputs[0]))
            .map(|(i, n)| PlanNode {
                name: n.name.clone(),
                op: n.op.clone(),
                inputs: n.inputs.iter().map(|&x| remap(x)).collect(),
                outputs: n.outputs.iter().map(|&x| remap(x)).collect(),
                phase: n.phase,
                workspace: workspace_of.get(&(spec_name, i)).copied(),
            })
            .collect(),
        feeds: feeds.iter().map(|&x| remap(x)).collect(),
        fetches: fetches.iter().map(|&x| remap(x)).collect(),
    };
    for spec in &specs {
        programs.insert(spec.name, emit(spec.name, &spec.nodes, &spec.feeds, &spec.fetches));
    }
    // Infer is a subset of eval's nodes, so eval's placement serves it unchanged.
    let infer_program = {
        let keep: std::collections::HashSet<&str> = infer.iter().map(|n| n.name.as_str()).collect();
        let mut p = programs["eval"].clone();
        p.nodes.retain(|n| keep.contains(n.name.as_str()));
        p.feeds = t.eval_inputs.iter().map(|&i| remap(i)).collect();
        p.fetches = vec![remap(t.eval_output)];
        p
    };

    let loss = match t.task {
        Task::Classification { classes } | Task::CrossEntropy { classes, .. } => Loss::SoftmaxCrossEntropy { classes },
        Task::Regression => Loss::Mse,
    };
    Ok(Plan {
        model: t.name.clone(),
        target: t.options.target.clone(),
        producer: format!("pock-compiler {}", env!("CARGO_PKG_VERSION")),
        tensors,
        programs: Programs {
            train: programs.remove("train").expect("train program"),
            apply: if has_apply { programs.remove("apply") } else { None },
            eval: programs.remove("eval").expect("eval program"),
            infer: infer_program,
        },
        training: TrainingInfo {
            batch: t.batch,
            loss,
            optimizer: t.options.optimizer.clone(),
            learning_rate: t.options.learning_rate,
            accumulate: t.options.accumulate,
            clip_grad_norm: t.options.clip_grad_norm,
        },
        arena_bytes: persistent + scratch_peak,
        arena_bytes_unordered: persistent + unordered_scratch,
        placement: None,
        persistent_bytes: persistent,
        weight_bytes: weights.len() as u64,
        // The facade records where the model came from; a graph built in code has no file.
        source: Default::default(),
        folded_norms: t.folded_norms.clone(),
    })
    .map(|plan| CompiledPlan { plan, weights })
}

/// The scratch buffers of one program: one per aliasing root (see [`reshape_roots`]) with its
/// lifetime over the program's node indices, plus one per kernel workspace.
struct ScratchBuffers {
    buffers: Vec<Interval>,
    /// Root tensor -> its buffer.
    index: HashMap<TensorId, usize>,
    /// `(node index, buffer, f32 elements)` of each kernel workspace.
    workspaces: Vec<(usize, usize, u64)>,
}

/// Each tensor's buffer owner: a `Reshape` output shares its input's buffer, except the reshape
/// of a value in the arena's persistent prefix (a trainable parameter read in another shape, as
/// an ONNX `Unsqueeze` of a PReLU slope or a norm scale): a step's values never live in that
/// prefix, so such a Reshape stays a node of its program and copies into a scratch buffer.
pub(crate) fn reshape_roots<'g>(g: &Graph, nodes: impl IntoIterator<Item = &'g Node>) -> Vec<TensorId> {
    let mut root: Vec<TensorId> = (0..g.tensors.len() as u32).map(TensorId).collect();
    for n in nodes {
        if matches!(n.op, Op::Dense(DenseOp::Reshape { .. })) {
            let r = root[n.inputs[0].index()];
            let def = g.tensor(r);
            let in_persistent_arena = def.is_persistent() && !matches!(def.role, Role::Constant | Role::Parameter { trainable: false });
            if !in_persistent_arena {
                root[n.outputs[0].index()] = r;
            }
        }
    }
    root
}

/// Liveness of a program's scratch values: feeds are live from the first node, fetches to the
/// end, everything else from its first to its last use.
fn scratch_buffers(g: &Graph, nodes: &[&Node], feeds: &[TensorId], fetches: &[TensorId], root: &[TensorId]) -> ScratchBuffers {
    let mut index: HashMap<TensorId, usize> = HashMap::new();
    let mut buffers: Vec<Interval> = Vec::new();
    let mut touch = |t: TensorId, at: usize, buffers: &mut Vec<Interval>| {
        let r = root[t.index()];
        if g.tensor(r).is_persistent() {
            return;
        }
        let b = *index.entry(r).or_insert_with(|| {
            buffers.push(Interval { size: align(g.tensor(r).bytes() as u64), first: at, last: at });
            buffers.len() - 1
        });
        buffers[b].first = buffers[b].first.min(at);
        buffers[b].last = buffers[b].last.max(at);
    };
    for &f in feeds {
        touch(f, 0, &mut buffers);
    }
    let mut workspaces = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        for &x in n.inputs.iter().chain(&n.outputs) {
            touch(x, i, &mut buffers);
        }
        let ins: Vec<&[usize]> = n.inputs.iter().map(|&x| g.shape(x)).collect();
        let outs: Vec<&[usize]> = n.outputs.iter().map(|&x| g.shape(x)).collect();
        let elems = workspace_elems(&n.op, &ins, &outs);
        if elems > 0 {
            buffers.push(Interval { size: align(elems as u64 * 4), first: i, last: i });
            workspaces.push((i, buffers.len() - 1, elems as u64));
        }
    }
    for &f in fetches {
        touch(f, nodes.len(), &mut buffers);
    }
    ScratchBuffers { buffers, index, workspaces }
}

/// The packed scratch peak of one program run in the order of `nodes` (what [`build_plan`] would
/// place after the persistent prefix for it). The scheduler compares orders with this.
pub fn scratch_peak(g: &Graph, nodes: &[&Node], feeds: &[TensorId], fetches: &[TensorId]) -> u64 {
    let root = reshape_roots(g, nodes.iter().copied());
    pack(&scratch_buffers(g, nodes, feeds, fetches, &root).buffers).1
}

/// Refuses a plan whose arena and weight section together exceed `budget` bytes. `source` says
/// where the budget came from (`--memory-budget`, `the rpi4's 2 GiB`). The error names the bytes
/// the plan needs and its five largest contributors (tensors and the scratch values live at the
/// Train program's peak, see [`crate::accounting::largest_contributors`]).
pub fn check_budget(plan: &Plan, budget: u64, source: &str) -> Result<()> {
    use crate::accounting::{human_bytes, largest_contributors};
    let needed = plan.arena_bytes.saturating_add(plan.weight_bytes);
    if needed <= budget {
        return Ok(());
    }
    let contributors: Vec<String> = largest_contributors(plan, 5)
        .iter()
        .map(|c| format!("{} ({}) {} bytes ({})", c.name, c.what, c.bytes, human_bytes(c.bytes)))
        .collect();
    let message = format!(
        "the plan needs {needed} bytes ({}: arena {}, weights {}), more than {source} of {budget} bytes ({}); largest contributors: {}. \
         Train fewer parameters (--update bias, --update last:K, --train GLOB), use a smaller --batch or model, or raise --memory-budget",
        human_bytes(needed),
        human_bytes(plan.arena_bytes),
        human_bytes(plan.weight_bytes),
        human_bytes(budget),
        contributors.join("; ")
    );
    Err(CompileError::OverBudget { needed, budget, message })
}

fn missing_init(def: &crate::ir::TensorDef) -> CompileError {
    CompileError::Node { node: def.name.clone(), op: "plan", message: "persistent tensor has no initial value".into() }
}

/// The nodes of `nodes` that `output` depends on, in order.
fn needed_for<'g>(nodes: &[&'g Node], output: TensorId) -> Vec<&'g Node> {
    let mut needed = std::collections::HashSet::from([output]);
    let mut keep = vec![false; nodes.len()];
    for (i, n) in nodes.iter().enumerate().rev() {
        if n.outputs.iter().any(|t| needed.contains(t)) {
            keep[i] = true;
            needed.extend(n.inputs.iter().copied());
        }
    }
    nodes.iter().zip(keep).filter(|(_, k)| *k).map(|(n, _)| *n).collect()
}
