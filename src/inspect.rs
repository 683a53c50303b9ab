//! `pock inspect`: what a plan contains, as a readable table or JSON for scripts.

use std::fmt::Write;

use pock_compiler::accounting::{breakdown, MemoryBreakdown};
use pock_engine::plan::{Loss, ModelSource, OptimizerKind, Phase, Plan, Role};
use serde::Serialize;

use crate::human_bytes;

#[derive(Clone, Debug, Serialize)]
pub struct OpCounts {
    pub forward: usize,
    pub backward: usize,
    pub optimizer: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct InputInfo {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: &'static str,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProgramInfo {
    pub name: &'static str,
    pub ops: usize,
    pub flops: u64,
}

/// The loss, for scripts: `{"kind": "softmax_cross_entropy", "classes": 10, "text": "..."}`.
#[derive(Clone, Debug, Serialize)]
pub struct LossInfo {
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub classes: Option<usize>,
    /// The same in words.
    pub text: String,
}

/// The optimizer and its hyperparameters, for scripts; settings that do not apply are left out.
#[derive(Clone, Debug, Serialize)]
pub struct OptimizerInfo {
    /// `sgd`, `adam` or `adamw`.
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub momentum: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dampening: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nesterov: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub beta1: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub beta2: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eps: Option<f32>,
    pub weight_decay: f32,
    /// The same in words.
    pub text: String,
}

impl OptimizerInfo {
    fn of(o: &OptimizerKind) -> Self {
        let text = o.to_string();
        match *o {
            OptimizerKind::Sgd { momentum, dampening, nesterov, weight_decay } => OptimizerInfo {
                kind: "sgd",
                momentum: Some(momentum),
                dampening: Some(dampening),
                nesterov: Some(nesterov),
                beta1: None,
                beta2: None,
                eps: None,
                weight_decay,
                text,
            },
            OptimizerKind::Adam { beta1, beta2, eps, weight_decay } | OptimizerKind::AdamW { beta1, beta2, eps, weight_decay } => {
                OptimizerInfo {
                    kind: if matches!(o, OptimizerKind::Adam { .. }) { "adam" } else { "adamw" },
                    momentum: None,
                    dampening: None,
                    nesterov: None,
                    beta1: Some(beta1),
                    beta2: Some(beta2),
                    eps: Some(eps),
                    weight_decay,
                    text,
                }
            }
        }
    }
}

/// A shape in words: `16x1x28x28` (`scalar` for rank 0).
pub fn shape_text(shape: &[usize]) -> String {
    if shape.is_empty() {
        return "scalar".into();
    }
    shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x")
}

fn phase_text(p: Phase) -> &'static str {
    match p {
        Phase::Forward => "forward",
        Phase::Backward => "backward",
        Phase::Optimizer => "optimizer",
    }
}

/// The fields of `pock inspect --json`; scripts rely on these names.
#[derive(Clone, Debug, Serialize)]
pub struct PlanReport {
    pub model: String,
    /// Where the model came from, in words (`pock export` reads the ONNX file named here).
    pub source: String,
    pub target: String,
    pub batch: usize,
    pub loss: LossInfo,
    pub optimizer: OptimizerInfo,
    pub learning_rate: f32,
    pub accumulate: usize,
    pub clip_grad_norm: Option<f32>,
    pub arena_bytes: u64,
    /// The arena the Train program would need in autodiff's emission order (`--no-reorder`),
    /// recorded at compile time.
    pub arena_bytes_unordered: u64,
    pub persistent_bytes: u64,
    pub weight_bytes: u64,
    pub trainable_params: usize,
    pub frozen_params: usize,
    pub optimizer_state_bytes: u64,
    pub gradient_accumulator_bytes: u64,
    /// Bytes of forward values the backward pass reads (what training keeps beyond inference).
    pub saved_activation_bytes: u64,
    /// Where the memory goes: sections by role, the Train program's peak by kind, each layer's
    /// cost (`pock_compiler::accounting::MemoryBreakdown`; buffer sizes as placed, 64-byte
    /// aligned).
    pub memory: MemoryBreakdown,
    pub ops: OpCounts,
    pub inputs: Vec<InputInfo>,
    pub outputs: Vec<InputInfo>,
    pub programs: Vec<ProgramInfo>,
    /// Estimate of one training step on the plan's target, on all its cores, milliseconds: the
    /// sum over the step's ops of each op's roofline time (`pock_compiler::cost`).
    pub estimated_step_ms: Option<f64>,
    /// How that estimate splits: ops limited by arithmetic and ops limited by memory traffic.
    pub estimate: Option<EstimateInfo>,
    /// Which side runs each node and the copies between them, for a plan placed on a target with
    /// a GPU (`pock compile --placement`); absent when every node runs on the backend chosen at
    /// load.
    pub placement: Option<PlacementInfo>,
}

/// A plan's placement (`pock_engine::placement`), for scripts.
#[derive(Clone, Debug, Serialize)]
pub struct PlacementInfo {
    /// How the sides were chosen (`auto`, `gpu, MaxPool2d forced onto the CPU`).
    pub mode: String,
    /// The target's GPU, in words.
    pub gpu: String,
    /// Host-device copies cost nothing in the model (the board shares its memory).
    pub unified_memory: bool,
    /// The host's mirror of the arena that a run with `--backend wgpu` allocates besides the
    /// device arena when some node is on the CPU.
    pub host_mirror_bytes: u64,
    /// Host waits for the device in one run of the train program (besides the session's reads of
    /// the loss).
    pub train_syncs: usize,
    /// The compiler's estimate of one training step: placed (copies and waits included), all on
    /// the CPU, all on the GPU (absent when some node has no GPU kernel), ms.
    pub estimated_step_ms: f64,
    pub transfer_ms: f64,
    pub all_cpu_step_ms: f64,
    pub all_gpu_step_ms: Option<f64>,
    pub programs: Vec<ProgramPlacementInfo>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProgramPlacementInfo {
    pub name: &'static str,
    /// `cpu` or `gpu` for each node, in program order.
    pub sides: Vec<&'static str>,
    pub syncs: usize,
    pub bytes_to_host: u64,
    pub bytes_to_device: u64,
    pub segments: Vec<SegmentInfo>,
    /// Values written on the CPU that are copied to the device after the last node.
    pub copy_back: Vec<TransferInfo>,
}

/// A run of consecutive nodes on one side, and the values copied onto that side before it.
#[derive(Clone, Debug, Serialize)]
pub struct SegmentInfo {
    pub side: &'static str,
    pub first_node: usize,
    pub last_node: usize,
    pub transfers: Vec<TransferInfo>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TransferInfo {
    pub tensor: String,
    pub bytes: u64,
}

fn placement_info(plan: &Plan) -> Option<PlacementInfo> {
    let placement = plan.placement.as_ref()?;
    let gpu = pock_targets::find(&plan.target).and_then(|t| t.gpu.as_ref());
    let transfers = |ts: &[pock_engine::TensorId]| -> Vec<TransferInfo> {
        ts.iter().map(|&t| TransferInfo { tensor: plan.tensor(t).name.clone(), bytes: plan.tensor(t).bytes() }).collect()
    };
    let mut programs = Vec::new();
    for kind in pock_engine::exec::ProgramKind::ALL {
        let Some(program) = kind.of(plan) else { continue };
        let sides = placement.sides(kind);
        let sched = pock_engine::placement::schedule(plan, program, sides);
        let (bytes_to_host, bytes_to_device) = sched.bytes(plan);
        programs.push(ProgramPlacementInfo {
            name: kind.name(),
            sides: sides.iter().map(|s| s.name()).collect(),
            syncs: sched.syncs(),
            bytes_to_host,
            bytes_to_device,
            segments: sched
                .segments
                .iter()
                .map(|g| SegmentInfo {
                    side: g.side.name(),
                    first_node: g.nodes.start,
                    last_node: g.nodes.end.saturating_sub(1),
                    transfers: transfers(&g.incoming),
                })
                .collect(),
            copy_back: transfers(&sched.copy_back),
        });
    }
    let e = &placement.estimate;
    Some(PlacementInfo {
        mode: placement.mode.clone(),
        gpu: gpu.map_or_else(|| format!("unknown (target {})", plan.target), |g| g.description.to_string()),
        unified_memory: gpu.is_some_and(|g| g.link_gbs.is_none()),
        host_mirror_bytes: if placement.any_cpu() { plan.arena_bytes } else { 0 },
        train_syncs: programs.first().map_or(0, |p| p.syncs),
        estimated_step_ms: e.placed_ms,
        transfer_ms: e.transfer_ms,
        all_cpu_step_ms: e.all_cpu_ms,
        all_gpu_step_ms: e.all_gpu_ms,
        programs,
    })
}

/// The per-op roofline estimate of one training step (`pock_targets::StepEstimate`).
#[derive(Clone, Debug, Serialize)]
pub struct EstimateInfo {
    pub threads: u32,
    pub ms: f64,
    pub compute_bound_ms: f64,
    pub compute_bound_ops: usize,
    pub memory_bound_ms: f64,
    pub memory_bound_ops: usize,
    pub flops: u64,
    pub traffic_bytes: u64,
}

/// Bytes of scratch values that forward nodes produce and backward nodes read.
fn saved_for_backward(plan: &Plan) -> u64 {
    let nodes = &plan.programs.train.nodes;
    let produced: std::collections::HashSet<_> =
        nodes.iter().filter(|n| n.phase == Phase::Forward).flat_map(|n| n.outputs.iter().copied()).collect();
    let read: std::collections::HashSet<_> =
        nodes.iter().filter(|n| n.phase == Phase::Backward).flat_map(|n| n.inputs.iter().copied()).collect();
    produced.intersection(&read).filter(|&&t| plan.tensor(t).role == Role::Transient).map(|&t| plan.tensor(t).bytes()).sum()
}

pub fn report(plan: &Plan) -> PlanReport {
    let sum = |f: &dyn Fn(&Role) -> bool| -> (usize, u64) {
        plan.tensors.iter().filter(|t| f(&t.role)).fold((0, 0), |(n, b), t| (n + t.numel(), b + t.bytes()))
    };
    let (trainable_params, _) = sum(&|r| *r == Role::Parameter { trainable: true });
    let (frozen_params, _) = sum(&|r| *r == Role::Parameter { trainable: false });
    let (_, optimizer_state_bytes) = sum(&|r| matches!(r, Role::OptimizerState { .. }));
    let (_, gradient_accumulator_bytes) = sum(&|r| matches!(r, Role::GradAccumulator { .. }));
    let saved_activation_bytes = saved_for_backward(plan);
    let train_nodes = plan.programs.train.nodes.iter().chain(plan.programs.apply.iter().flat_map(|p| p.nodes.iter()));
    let mut ops = OpCounts { forward: 0, backward: 0, optimizer: 0 };
    for n in train_nodes {
        match n.phase {
            Phase::Forward => ops.forward += 1,
            Phase::Backward => ops.backward += 1,
            Phase::Optimizer => ops.optimizer += 1,
        }
    }
    let io = |ids: &[pock_engine::TensorId]| -> Vec<InputInfo> {
        ids.iter()
            .map(|&t| {
                let i = plan.tensor(t);
                InputInfo { name: i.name.clone(), shape: i.shape.clone(), dtype: i.dtype.name() }
            })
            .collect()
    };
    let programs: Vec<ProgramInfo> = plan
        .all_programs()
        .map(|(name, p)| {
            let flops = p
                .nodes
                .iter()
                .map(|n| {
                    let ins: Vec<&[usize]> = n.inputs.iter().map(|&t| plan.tensor(t).shape.as_slice()).collect();
                    let outs: Vec<&[usize]> = n.outputs.iter().map(|&t| plan.tensor(t).shape.as_slice()).collect();
                    pock_compiler::ops::flops(&n.op, &ins, &outs)
                })
                .sum();
            ProgramInfo { name, ops: p.nodes.len(), flops }
        })
        .collect();
    let estimate = pock_targets::find(&plan.target).map(|t| {
        let e = pock_compiler::cost::estimate_train_step(plan, t, t.cores);
        EstimateInfo {
            threads: e.threads,
            ms: e.ms,
            compute_bound_ms: e.compute_bound_ms,
            compute_bound_ops: e.compute_bound_ops,
            memory_bound_ms: e.memory_bound_ms,
            memory_bound_ops: e.memory_bound_ops,
            flops: e.flops,
            traffic_bytes: e.bytes,
        }
    });
    let estimated_step_ms = estimate.as_ref().map(|e| e.ms);
    PlanReport {
        model: plan.model.clone(),
        source: source_text(&plan.source),
        target: plan.target.clone(),
        batch: plan.training.batch,
        loss: LossInfo {
            kind: match plan.training.loss {
                Loss::SoftmaxCrossEntropy { .. } => "softmax_cross_entropy",
                Loss::Mse => "mse",
            },
            classes: match plan.training.loss {
                Loss::SoftmaxCrossEntropy { classes } => Some(classes),
                Loss::Mse => None,
            },
            text: plan.training.loss.to_string(),
        },
        optimizer: OptimizerInfo::of(&plan.training.optimizer),
        learning_rate: plan.training.learning_rate,
        accumulate: plan.training.accumulate,
        clip_grad_norm: plan.training.clip_grad_norm,
        arena_bytes: plan.arena_bytes,
        arena_bytes_unordered: plan.arena_bytes_unordered,
        persistent_bytes: plan.persistent_bytes,
        weight_bytes: plan.weight_bytes,
        trainable_params,
        frozen_params,
        optimizer_state_bytes,
        gradient_accumulator_bytes,
        saved_activation_bytes,
        memory: breakdown(plan),
        ops,
        inputs: io(&plan.programs.train.feeds),
        outputs: io(&plan.programs.infer.fetches),
        programs,
        estimated_step_ms,
        estimate,
        placement: placement_info(plan),
    }
}

/// Percent of `of` that `part` is, for tables.
fn percent(part: u64, of: u64) -> f64 {
    if of == 0 {
        0.0
    } else {
        100.0 * part as f64 / of as f64
    }
}

/// The memory breakdown lines of the table.
fn memory_table(s: &mut String, r: &PlanReport) {
    let m = &r.memory;
    let h = human_bytes;
    let saved = m.arena_bytes_unordered.saturating_sub(m.arena_bytes);
    let _ = writeln!(
        s,
        "reordering   arena {} as scheduled, {} in emission order (--no-reorder): {} saved ({:.1}%)",
        h(m.arena_bytes),
        h(m.arena_bytes_unordered),
        h(saved),
        percent(saved, m.arena_bytes_unordered)
    );
    let _ = writeln!(
        s,
        "weights      trainable {}, frozen {} and constants {} (weight section, mapped)",
        h(m.trainable_weight_bytes),
        h(m.frozen_weight_bytes),
        h(m.constant_bytes)
    );
    let _ = writeln!(
        s,
        "persistent   optimizer state {}, gradient accumulators {}, statistics and counters {}",
        h(m.optimizer_state_bytes),
        h(m.gradient_accumulator_bytes),
        h(m.other_persistent_bytes)
    );
    let held = if r.accumulate > 1 {
        "each is added to its accumulator as soon as it is complete".to_string()
    } else if r.clip_grad_norm.is_some() {
        format!("clipping reads every gradient's norm, so {} of them live together", h(m.gradients_held_at_once_bytes))
    } else {
        format!("at most {} live at once", h(m.gradients_held_at_once_bytes))
    };
    let _ = writeln!(s, "gradients    {} in all; {held}", h(m.gradient_bytes));
    let _ = writeln!(s, "workspace    {} (the largest kernel workspace)", h(m.workspace_bytes));
    let p = &m.peak;
    let _ = writeln!(
        s,
        "train peak   {} live at node {} ({}): saved activations {}, other forward values {}, inputs {}, parameter gradients {}, \
         activation gradients {}, optimizer values {}, workspace {}; packing and other programs {}",
        h(p.live_bytes),
        p.node,
        p.node_name,
        h(p.saved_activations),
        h(p.forward_values),
        h(p.inputs),
        h(p.parameter_gradients),
        h(p.backward_values),
        h(p.optimizer_values),
        h(p.workspace),
        h(p.packing_overhead)
    );
    if !m.layers.is_empty() {
        let _ = writeln!(
            s,
            "\n{:<40} {:<9} {:>10} {:>11} {:>11} {:>11} {:>11} {:>11}",
            "layer", "trains", "params", "weights", "gradients", "opt state", "saved", "total"
        );
        for l in &m.layers {
            let _ = writeln!(
                s,
                "{:<40} {:<9} {:>10} {:>11} {:>11} {:>11} {:>11} {:>11}",
                l.name,
                if l.trainable { "yes" } else { "frozen" },
                l.parameters,
                h(l.parameter_bytes),
                h(l.gradient_bytes),
                h(l.optimizer_state_bytes),
                h(l.saved_activation_bytes),
                h(l.total_bytes())
            );
        }
    }
}

/// The placement lines of the table: the sides, each segment and its copies, the syncs and the
/// estimates.
fn placement_table(s: &mut String, p: &PlacementInfo) {
    let link = if p.unified_memory { "unified memory: copies are free in the model" } else { "copies over the host-device link" };
    let _ = writeln!(s, "\nplacement    {} on {} ({link})", p.mode, p.gpu);
    let all_gpu = p.all_gpu_step_ms.map_or_else(|| "not possible (some ops have no GPU kernel)".to_string(), |ms| format!("{ms:.3} ms"));
    let _ = writeln!(
        s,
        "             estimated train step {:.3} ms placed ({:.3} ms of it copies and waits), {:.3} ms all on the CPU, all on the GPU {all_gpu}",
        p.estimated_step_ms, p.transfer_ms, p.all_cpu_step_ms
    );
    if p.host_mirror_bytes > 0 {
        let _ = writeln!(
            s,
            "             --backend wgpu keeps a host mirror of the arena ({}) besides the device's, for the nodes on the CPU",
            human_bytes(p.host_mirror_bytes)
        );
    }
    for q in &p.programs {
        let count = |side: &str| q.sides.iter().filter(|&&x| x == side).count();
        let _ = writeln!(
            s,
            "{:<8} {} nodes on the GPU, {} on the CPU; {} segments, {} syncs, {} to the host, {} to the device per run",
            q.name,
            count("gpu"),
            count("cpu"),
            q.segments.len(),
            q.syncs,
            human_bytes(q.bytes_to_host),
            human_bytes(q.bytes_to_device)
        );
        if q.segments.len() < 2 {
            continue;
        }
        for g in &q.segments {
            let copies: Vec<String> = g.transfers.iter().map(|t| format!("{} ({})", t.tensor, human_bytes(t.bytes))).collect();
            let into = if copies.is_empty() { String::new() } else { format!(", after copying to the {}: {}", g.side, copies.join(", ")) };
            let _ = writeln!(s, "  {} nodes {}..={}{into}", g.side, g.first_node, g.last_node);
        }
        if !q.copy_back.is_empty() {
            let copies: Vec<String> = q.copy_back.iter().map(|t| format!("{} ({})", t.tensor, human_bytes(t.bytes))).collect();
            let _ = writeln!(s, "  then to the device: {}", copies.join(", "));
        }
    }
}

/// A plan's model source in words: `zoo:cnn`, `ONNX file m.onnx (12345 bytes, FNV-1a 64 0123abcd...)`.
pub fn source_text(source: &ModelSource) -> String {
    match source {
        ModelSource::Unrecorded => "not recorded (a graph built in code)".into(),
        ModelSource::Zoo { spec } => spec.clone(),
        ModelSource::Onnx { path, fnv1a64, bytes } => format!("ONNX file {path} ({bytes} bytes, FNV-1a 64 {fnv1a64:016x})"),
    }
}

/// The human-readable form; with `ops`, every node of every program is listed.
pub fn table(plan: &Plan, r: &PlanReport, ops: bool) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "model        {}", r.model);
    let _ = writeln!(s, "source       {}", r.source);
    let _ = writeln!(s, "target       {}", r.target);
    let _ = writeln!(s, "batch        {}", r.batch);
    let _ = writeln!(s, "loss         {}", r.loss.text);
    let _ = writeln!(s, "optimizer    {}, learning rate {}", r.optimizer.text, r.learning_rate);
    let clip = r.clip_grad_norm.map(|c| format!("clipped to global norm {c}")).unwrap_or_else(|| "not clipped".into());
    let accumulate = match r.accumulate {
        1 => "one optimizer step per batch".to_string(),
        k => format!("accumulated over {k} batches per optimizer step"),
    };
    let _ = writeln!(s, "gradients    {accumulate}, {clip}");
    let _ = writeln!(s, "parameters   {} trainable, {} frozen", r.trainable_params, r.frozen_params);
    let _ = writeln!(
        s,
        "memory       arena {} (persistent {}), weights {}, optimizer state {}",
        human_bytes(r.arena_bytes),
        human_bytes(r.persistent_bytes),
        human_bytes(r.weight_bytes),
        human_bytes(r.optimizer_state_bytes)
    );
    let _ = writeln!(s, "saved        {} of forward values kept for the backward pass", human_bytes(r.saved_activation_bytes));
    memory_table(&mut s, r);
    let _ = writeln!(s, "train ops    {} forward, {} backward, {} optimizer", r.ops.forward, r.ops.backward, r.ops.optimizer);
    for i in &r.inputs {
        let _ = writeln!(s, "input        {} {} {}", i.name, shape_text(&i.shape), i.dtype);
    }
    for i in &r.outputs {
        let _ = writeln!(s, "output       {} {} {}", i.name, shape_text(&i.shape), i.dtype);
    }
    let _ = writeln!(s, "\n{:<8} {:>6} {:>14}", "program", "ops", "MFLOP");
    for p in &r.programs {
        let _ = writeln!(s, "{:<8} {:>6} {:>14.2}", p.name, p.ops, p.flops as f64 / 1e6);
    }
    if let Some(e) = &r.estimate {
        let _ = writeln!(
            s,
            "\nestimated train step on {} ({} cores): {:.2} ms, the sum of each op's roofline from the board's nominal figures:\n  \
             {:.2} ms in {} ops limited by arithmetic ({:.2} GFLOP), {:.2} ms in {} ops limited by memory traffic ({:.1} MiB moved)",
            r.target,
            e.threads,
            e.ms,
            e.compute_bound_ms,
            e.compute_bound_ops,
            e.flops as f64 / 1e9,
            e.memory_bound_ms,
            e.memory_bound_ops,
            e.traffic_bytes as f64 / (1 << 20) as f64,
        );
    }
    if let Some(p) = &r.placement {
        placement_table(&mut s, p);
    }
    if ops {
        for (name, p) in plan.all_programs() {
            let sides = r.placement.as_ref().and_then(|pl| pl.programs.iter().find(|q| q.name == name)).map(|q| &q.sides);
            let _ = writeln!(s, "\n{name} program");
            let _ = writeln!(s, "{:<4} {:<9} {:<5} {:<22} {:<40} outputs", "#", "phase", "side", "op", "node");
            for (i, n) in p.nodes.iter().enumerate() {
                let outs: Vec<String> = n.outputs.iter().map(|&t| shape_text(&plan.tensor(t).shape)).collect();
                let side = sides.and_then(|v| v.get(i)).copied().unwrap_or("-");
                let _ =
                    writeln!(s, "{:<4} {:<9} {:<5} {:<22} {:<40} {}", i, phase_text(n.phase), side, n.op.name(), n.name, outs.join(" "));
            }
        }
    }
    s
}
