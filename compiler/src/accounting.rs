//! Where a compiled plan's memory goes, read back from the plan alone (so `pock inspect` can
//! explain any plan file): the persistent and weight sections by role, the Train program's
//! scratch values by kind with their lifetimes, and what each layer costs.
//!
//! Lifetimes come from the plan's node order as the planner computed them: a scratch value lives
//! from its first to its last use. The planner removed `Reshape` nodes and let their output
//! share the input's buffer (except a reshape of a persistent arena value, which stays a node that
//! writes its own scratch output), so a scratch tensor whose first use is a read (not a feed) is such
//! an alias: it joins the buffer most recently used at its offset.

use std::collections::{HashMap, HashSet};

use pock_engine::ops::{Op, OptimOp};
use pock_engine::plan::{Location, Phase, Plan, Program, Role, TensorId, ALIGN};
use serde::Serialize;

use crate::scheme::layer_of;

/// What a scratch buffer holds, for the breakdown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScratchKind {
    /// Data and targets the host writes.
    Input,
    /// A parameter's gradient (what an update or an accumulator reads).
    ParameterGradient,
    /// A forward value the backward pass reads.
    SavedActivation,
    /// Any other forward value.
    ForwardValue,
    /// Any other backward value (activation gradients).
    BackwardValue,
    /// Values of the optimizer phase (the clipping scale).
    OptimizerValue,
    /// A fast kernel's workspace (im2col columns).
    Workspace,
}

/// One scratch buffer of a program: the tensors sharing it (a value and its reshapes), its
/// bytes as placed (aligned) and its lifetime over the program's node indices (the fetches are
/// read at index `nodes.len()`).
#[derive(Clone, Debug)]
pub struct ScratchBuffer {
    pub tensors: Vec<TensorId>,
    pub offset: u64,
    pub bytes: u64,
    pub first: usize,
    pub last: usize,
    pub kind: ScratchKind,
}

impl ScratchBuffer {
    pub fn live_at(&self, node: usize) -> bool {
        self.first <= node && node <= self.last
    }
}

fn aligned(bytes: u64) -> u64 {
    bytes.div_ceil(ALIGN) * ALIGN
}

/// The offset of a scratch tensor (in the arena after the persistent prefix), else `None`.
fn scratch_offset(plan: &Plan, t: TensorId) -> Option<u64> {
    match plan.tensor(t).location {
        Location::Arena { offset } if matches!(plan.tensor(t).role, Role::Transient | Role::Input | Role::Target) => Some(offset),
        _ => None,
    }
}

/// The tensors each update or accumulation node of `program` reads as a parameter gradient, with
/// the parameter it is for.
pub fn parameter_gradients(plan: &Plan, program: &Program) -> Vec<(TensorId, TensorId)> {
    let mut out = Vec::new();
    for n in &program.nodes {
        match n.op {
            Op::Optim(OptimOp::SgdUpdate(_) | OptimOp::AdamUpdate(_)) => out.push((n.inputs[0], n.outputs[0])),
            Op::Optim(OptimOp::AccumulateGrad) => {
                if let Role::GradAccumulator { param } = plan.tensor(n.outputs[0]).role {
                    out.push((n.inputs[0], param));
                }
            }
            _ => {}
        }
    }
    out
}

/// Every scratch buffer of `program` with its lifetime and kind.
pub fn scratch_buffers(plan: &Plan, program: &Program) -> Vec<ScratchBuffer> {
    let mut buffers: Vec<ScratchBuffer> = Vec::new();
    let mut of: HashMap<TensorId, usize> = HashMap::new();
    let mut touch = |t: TensorId, at: usize, written: bool, buffers: &mut Vec<ScratchBuffer>| {
        let Some(offset) = scratch_offset(plan, t) else { return };
        if let Some(&b) = of.get(&t) {
            buffers[b].first = buffers[b].first.min(at);
            buffers[b].last = buffers[b].last.max(at);
            return;
        }
        // First use. A read is a reshape of a value already placed at this offset.
        let alias =
            if written { None } else { (0..buffers.len()).filter(|&b| buffers[b].offset == offset).max_by_key(|&b| (buffers[b].last, b)) };
        let b = alias.unwrap_or_else(|| {
            let bytes = aligned(plan.tensor(t).bytes());
            buffers.push(ScratchBuffer { tensors: Vec::new(), offset, bytes, first: at, last: at, kind: ScratchKind::ForwardValue });
            buffers.len() - 1
        });
        buffers[b].tensors.push(t);
        buffers[b].last = buffers[b].last.max(at);
        of.insert(t, b);
    };
    for &f in &program.feeds {
        touch(f, 0, true, &mut buffers);
    }
    let mut workspaces = Vec::new();
    for (i, n) in program.nodes.iter().enumerate() {
        for &x in &n.inputs {
            touch(x, i, false, &mut buffers);
        }
        for &x in &n.outputs {
            touch(x, i, true, &mut buffers);
        }
        if let Some(w) = n.workspace {
            workspaces.push(ScratchBuffer {
                tensors: Vec::new(),
                offset: w.offset,
                bytes: aligned(w.elems.saturating_mul(4)),
                first: i,
                last: i,
                kind: ScratchKind::Workspace,
            });
        }
    }
    for &f in &program.fetches {
        touch(f, program.nodes.len(), false, &mut buffers);
    }

    // Kinds, from who writes and reads each buffer.
    let gradients: HashSet<TensorId> = parameter_gradients(plan, program).into_iter().map(|(g, _)| g).collect();
    let mut written_in: HashMap<TensorId, Phase> = HashMap::new();
    let mut read_in_backward: HashSet<TensorId> = HashSet::new();
    for n in &program.nodes {
        for &t in &n.outputs {
            written_in.entry(t).or_insert(n.phase);
        }
        if n.phase == Phase::Backward {
            read_in_backward.extend(n.inputs.iter().copied());
        }
    }
    for b in &mut buffers {
        let any = |f: &dyn Fn(&TensorId) -> bool| b.tensors.iter().any(f);
        let phase = b.tensors.iter().find_map(|t| written_in.get(t).copied());
        b.kind = if any(&|t| matches!(plan.tensor(*t).role, Role::Input | Role::Target)) {
            ScratchKind::Input
        } else if any(&|t| gradients.contains(t)) {
            ScratchKind::ParameterGradient
        } else {
            match phase {
                Some(Phase::Forward) if any(&|t| read_in_backward.contains(t)) => ScratchKind::SavedActivation,
                Some(Phase::Forward) | None => ScratchKind::ForwardValue,
                Some(Phase::Backward) => ScratchKind::BackwardValue,
                Some(Phase::Optimizer) => ScratchKind::OptimizerValue,
            }
        };
    }
    buffers.extend(workspaces);
    buffers
}

/// The scratch bytes live at the Train program's fullest node, by kind.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PeakComposition {
    /// Index of the node in the Train program and its name.
    pub node: usize,
    pub node_name: String,
    /// Sum of the live buffers below.
    pub live_bytes: u64,
    pub inputs: u64,
    pub saved_activations: u64,
    pub forward_values: u64,
    pub parameter_gradients: u64,
    pub backward_values: u64,
    pub optimizer_values: u64,
    pub workspace: u64,
    /// What the arena's scratch region holds beyond `live_bytes`: space the packing could not
    /// reuse, or another program's larger peak.
    pub packing_overhead: u64,
}

/// What one layer (parameters sharing a name up to the last `.`) costs.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LayerCost {
    pub name: String,
    pub trainable: bool,
    /// Parameter elements.
    pub parameters: usize,
    pub parameter_bytes: u64,
    pub gradient_bytes: u64,
    /// Optimizer state and gradient accumulators.
    pub optimizer_state_bytes: u64,
    /// Forward values kept for the backward pass whose first backward reader belongs to this
    /// layer's ops (ops without parameters count for the layer last read before them).
    pub saved_activation_bytes: u64,
}

impl LayerCost {
    pub fn total_bytes(&self) -> u64 {
        self.parameter_bytes + self.gradient_bytes + self.optimizer_state_bytes + self.saved_activation_bytes
    }
}

/// A plan's memory, by what it is for.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MemoryBreakdown {
    /// The arena as planned, and as the emission order would have planned it.
    pub arena_bytes: u64,
    pub arena_bytes_unordered: u64,
    pub persistent_bytes: u64,
    pub weight_bytes: u64,
    /// Weight section: frozen parameters, then constants.
    pub frozen_weight_bytes: u64,
    pub constant_bytes: u64,
    /// Persistent prefix: trainable parameters, optimizer state, gradient accumulators, the rest
    /// (running statistics, runtime scalars, counters).
    pub trainable_weight_bytes: u64,
    pub optimizer_state_bytes: u64,
    pub gradient_accumulator_bytes: u64,
    pub other_persistent_bytes: u64,
    /// Forward values the backward pass reads, summed over the Train program.
    pub saved_activation_bytes: u64,
    /// Every parameter gradient, summed.
    pub gradient_bytes: u64,
    /// The most parameter-gradient bytes live at one point of the Train program: one layer's
    /// when updates follow their gradients, all of them when clipping reads their global norm.
    pub gradients_held_at_once_bytes: u64,
    /// The largest kernel workspace (one at a time).
    pub workspace_bytes: u64,
    pub peak: PeakComposition,
    /// Each layer with a cost, in the order the Train program's forward pass first reads it.
    pub layers: Vec<LayerCost>,
}

/// The layer each forward node of the Train program belongs to: that of the first parameter it
/// reads, else that of the last node before it that read one.
fn forward_layers(plan: &Plan) -> HashMap<&str, String> {
    let mut out = HashMap::new();
    let mut current: Option<String> = None;
    for n in plan.programs.train.nodes.iter().filter(|n| n.phase == Phase::Forward) {
        if let Some(p) = n.inputs.iter().find(|&&t| matches!(plan.tensor(t).role, Role::Parameter { .. })) {
            current = Some(layer_of(&plan.tensor(*p).name).to_string());
        }
        if let Some(l) = &current {
            out.insert(n.name.as_str(), l.clone());
        }
    }
    out
}

/// The forward node a backward node was emitted for: gradient nodes are named
/// `<forward node>.grad.<what>`.
fn forward_node_of<'p>(backward: &'p str, forward: &HashMap<&str, String>) -> Option<&'p str> {
    backward.match_indices(".grad.").map(|(i, _)| &backward[..i]).find(|f| forward.contains_key(f))
}

pub fn breakdown(plan: &Plan) -> MemoryBreakdown {
    let mut m = MemoryBreakdown {
        arena_bytes: plan.arena_bytes,
        arena_bytes_unordered: plan.arena_bytes_unordered,
        persistent_bytes: plan.persistent_bytes,
        weight_bytes: plan.weight_bytes,
        ..Default::default()
    };
    let mut layers: Vec<LayerCost> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut layer = |name: &str, layers: &mut Vec<LayerCost>| -> usize {
        *index.entry(name.to_string()).or_insert_with(|| {
            layers.push(LayerCost { name: name.to_string(), ..Default::default() });
            layers.len() - 1
        })
    };
    // Layers in the order the forward pass reads them.
    for n in plan.programs.train.nodes.iter().filter(|n| n.phase == Phase::Forward) {
        for &t in &n.inputs {
            if matches!(plan.tensor(t).role, Role::Parameter { .. }) {
                layer(layer_of(&plan.tensor(t).name), &mut layers);
            }
        }
    }

    for t in &plan.tensors {
        let bytes = t.bytes();
        match &t.role {
            Role::Parameter { trainable } => {
                if *trainable {
                    m.trainable_weight_bytes += bytes;
                } else {
                    m.frozen_weight_bytes += bytes;
                }
                let l = layer(layer_of(&t.name), &mut layers);
                layers[l].trainable |= *trainable;
                layers[l].parameters += t.numel();
                layers[l].parameter_bytes += bytes;
            }
            Role::OptimizerState { param, .. } | Role::GradAccumulator { param } => {
                if matches!(t.role, Role::OptimizerState { .. }) {
                    m.optimizer_state_bytes += bytes;
                } else {
                    m.gradient_accumulator_bytes += bytes;
                }
                let l = layer(layer_of(&plan.tensor(*param).name), &mut layers);
                layers[l].optimizer_state_bytes += bytes;
            }
            Role::Constant => m.constant_bytes += bytes,
            Role::RunningStat | Role::RuntimeScalar(_) | Role::SkippedUpdates | Role::RngCounter => m.other_persistent_bytes += bytes,
            Role::Input | Role::Target | Role::Transient => {}
        }
    }

    let train = &plan.programs.train;
    for (g, p) in parameter_gradients(plan, train) {
        let bytes = plan.tensor(g).bytes();
        m.gradient_bytes += bytes;
        let l = layer(layer_of(&plan.tensor(p).name), &mut layers);
        layers[l].gradient_bytes += bytes;
    }

    let buffers = scratch_buffers(plan, train);
    let forward = forward_layers(plan);
    for b in buffers.iter().filter(|b| b.kind == ScratchKind::SavedActivation) {
        m.saved_activation_bytes += b.bytes;
        let reader = train.nodes.iter().find(|n| n.phase == Phase::Backward && n.inputs.iter().any(|t| b.tensors.contains(t)));
        // A gradient rule emitted for a forward node that fusion removed (crate::fuse) names a node
        // the plan no longer has: the layer of the forward node that wrote the value stands in.
        let writer = || train.nodes.iter().find(|n| n.phase == Phase::Forward && n.outputs.iter().any(|t| b.tensors.contains(t)));
        let layer_name = reader.and_then(|n| forward_node_of(&n.name, &forward)).or_else(|| writer().map(|n| n.name.as_str()));
        if let Some(l) = layer_name.and_then(|f| forward.get(f)) {
            let l = layer(l, &mut layers);
            layers[l].saved_activation_bytes += b.bytes;
        }
    }
    m.workspace_bytes =
        plan.all_programs().flat_map(|(_, p)| p.nodes.iter()).filter_map(|n| n.workspace).map(|w| aligned(w.elems * 4)).max().unwrap_or(0);

    // Live bytes by kind at every node of the Train program.
    let steps = train.nodes.len() + 1;
    // Differences at each buffer's first and one past its last use, then running sums.
    let mut live = vec![0i128; steps + 1];
    let mut gradients = vec![0i128; steps + 1];
    for b in &buffers {
        let end = b.last.min(steps - 1) + 1;
        live[b.first] += b.bytes as i128;
        live[end] -= b.bytes as i128;
        if b.kind == ScratchKind::ParameterGradient {
            gradients[b.first] += b.bytes as i128;
            gradients[end] -= b.bytes as i128;
        }
    }
    let running = |d: &[i128]| -> Vec<u64> {
        d.iter()
            .take(steps)
            .scan(0i128, |acc, x| {
                *acc += x;
                Some(*acc as u64)
            })
            .collect()
    };
    let (live, gradients) = (running(&live), running(&gradients));
    m.gradients_held_at_once_bytes = gradients.iter().copied().max().unwrap_or(0);
    let at = (0..steps).max_by_key(|&i| (live[i], std::cmp::Reverse(i))).unwrap_or(0);
    let mut peak = PeakComposition {
        node: at,
        node_name: train.nodes.get(at).map_or_else(|| "(fetches)".into(), |n| n.name.clone()),
        live_bytes: live[at],
        ..Default::default()
    };
    for b in buffers.iter().filter(|b| b.live_at(at)) {
        let slot = match b.kind {
            ScratchKind::Input => &mut peak.inputs,
            ScratchKind::ParameterGradient => &mut peak.parameter_gradients,
            ScratchKind::SavedActivation => &mut peak.saved_activations,
            ScratchKind::ForwardValue => &mut peak.forward_values,
            ScratchKind::BackwardValue => &mut peak.backward_values,
            ScratchKind::OptimizerValue => &mut peak.optimizer_values,
            ScratchKind::Workspace => &mut peak.workspace,
        };
        *slot += b.bytes;
    }
    peak.packing_overhead = plan.arena_bytes.saturating_sub(plan.persistent_bytes).saturating_sub(peak.live_bytes);
    m.peak = peak;
    m.layers = layers.into_iter().filter(|l| l.total_bytes() > 0 && (l.trainable || l.saved_activation_bytes > 0)).collect();
    m
}

/// One of the largest things a plan holds, for the budget message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Contributor {
    pub name: String,
    /// What it is, in words: `trainable parameter`, `saved activation`, ...
    pub what: String,
    pub bytes: u64,
}

/// The `count` largest contributors to the plan's memory: persistent and weight tensors, and the
/// scratch values live at the Train program's peak, largest first (ties by name).
pub fn largest_contributors(plan: &Plan, count: usize) -> Vec<Contributor> {
    let mut all: Vec<Contributor> = Vec::new();
    for t in &plan.tensors {
        let what = match &t.role {
            Role::Parameter { trainable: true } => "trainable parameter",
            Role::Parameter { trainable: false } => "frozen parameter (weight section)",
            Role::OptimizerState { .. } => "optimizer state",
            Role::GradAccumulator { .. } => "gradient accumulator",
            Role::RunningStat => "running statistic",
            Role::Constant => "constant (weight section)",
            _ => continue,
        };
        all.push(Contributor { name: t.name.clone(), what: what.into(), bytes: t.bytes() });
    }
    let m = breakdown(plan);
    let train = &plan.programs.train;
    for b in scratch_buffers(plan, train).iter().filter(|b| b.live_at(m.peak.node)) {
        let what = match b.kind {
            ScratchKind::Input => "input",
            ScratchKind::ParameterGradient => "parameter gradient",
            ScratchKind::SavedActivation => "saved activation",
            ScratchKind::ForwardValue => "forward value",
            ScratchKind::BackwardValue => "activation gradient",
            ScratchKind::OptimizerValue => "optimizer value",
            ScratchKind::Workspace => "kernel workspace",
        };
        let name = match b.tensors.first() {
            Some(&t) => plan.tensor(t).name.clone(),
            None => format!("workspace of {}", train.nodes.get(b.first).map_or("?", |n| n.name.as_str())),
        };
        all.push(Contributor { name, what: format!("{what} at the peak"), bytes: b.bytes });
    }
    all.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.name.cmp(&b.name)));
    all.truncate(count);
    all
}

/// A byte count for people: `9.27 MiB`.
pub fn human_bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.2} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}
