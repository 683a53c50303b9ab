//! `pock bench`: how fast a plan trains on this machine, and (with `--profile`) where the time of
//! a training step goes, op kind by op kind and (with `--slowest N`) node by node.
//!
//! The batch is synthetic (a fixed pattern of floats, labels cycling through the classes): the
//! kernels' speed does not depend on the values, and benchmarking needs no data file.

use std::fmt::Write as _;
use std::time::Instant;

use pock_engine::ops::{ConvOp, Op};
use pock_engine::plan::{DType, Plan};
use pock_engine::session::{Input, Session, Targets};

use crate::PockError;

/// What to measure.
#[derive(Clone, Copy, Debug)]
pub struct BenchConfig {
    /// Timed training steps (after `warmup` untimed ones).
    pub steps: usize,
    pub warmup: usize,
    /// Time every node of the train program as well.
    pub profile: bool,
    /// With `profile`: also report this many of the slowest nodes, one by one.
    pub slowest: usize,
    /// Read the loss back every N steps ([`Session::train_step_queued`]; the session must have
    /// been opened with the same `SessionOptions::loss_every`).
    pub loss_every: usize,
}

/// One op kind's share of the profiled steps.
#[derive(Clone, Debug, serde::Serialize)]
pub struct OpTime {
    /// The op's name, and for convolutions the kind (`Conv2d depthwise 3x3`, `Conv2d 1x1`).
    pub kind: String,
    /// Nodes of this kind in the train program.
    pub count: usize,
    /// Milliseconds per step.
    pub ms: f64,
    /// Share of the summed node times.
    pub percent: f64,
    /// Achieved GFLOP/s (the compiler's cost model's FLOPs over the measured time).
    pub gflops: f64,
    /// `gflops` as a percentage of the gemm ceiling measured in the same run, for the
    /// matrix-product ops (convolutions and matmuls) when the backend measures one.
    pub ceiling_percent: Option<f64>,
}

/// One node's share of the profiled steps (`--slowest N`).
#[derive(Clone, Debug, serde::Serialize)]
pub struct NodeTime {
    /// The node's name in the plan (`pock inspect` lists them in order).
    pub name: String,
    /// Its op kind, as [`OpTime::kind`].
    pub kind: String,
    /// The shape of its first output.
    pub output_shape: Vec<usize>,
    pub ms: f64,
    /// Share of the summed node times.
    pub percent: f64,
    pub gflops: f64,
    /// As [`OpTime::ceiling_percent`].
    pub ceiling_percent: Option<f64>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchReport {
    pub model: String,
    pub batch: usize,
    pub threads: usize,
    pub steps: usize,
    /// Median, fastest and slowest step.
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub steps_per_s: f64,
    /// FLOPs of the train program (the compiler's per-op cost model).
    pub step_flops: u64,
    pub gflops: f64,
    /// GFLOP/s of the backend's own gemm on a 1024-cubed product with the same threads, measured
    /// right after the timed steps (`None` where the backend has no such measurement).
    pub gemm_ceiling_gflops: Option<f64>,
    pub arena_bytes: u64,
    pub weight_bytes: u64,
    /// Peak resident set size of this process (Linux `VmHWM`), when it can be read.
    pub peak_rss_bytes: Option<u64>,
    /// Per op kind, slowest first (empty without `--profile`).
    pub profile: Vec<OpTime>,
    /// The slowest nodes, slowest first (`--slowest N`; empty without it).
    pub slowest: Vec<NodeTime>,
    /// How the profile was timed: host clocks around each CPU kernel, or (wgpu) each node's
    /// dispatches submitted on their own and waited for.
    pub profile_timing: Option<String>,
    /// The loss was read back every this many steps.
    pub loss_every: usize,
    /// Host-device synchronisations per timed step (0 on the CPU).
    pub syncs_per_step: f64,
}

/// The op kind a profile row groups a node under.
fn op_kind(plan: &Plan, node: &pock_engine::plan::Node) -> String {
    let Op::Conv(conv) = &node.op else { return node.op.name().to_string() };
    let (c, weight) = match conv {
        ConvOp::Conv2d(c)
        | ConvOp::Conv2dGradInput { conv: c, .. }
        | ConvOp::Conv2dBiasAct { conv: c, .. }
        | ConvOp::Conv2dGradInputMasked { conv: c, .. } => (c, node.inputs[1]),
        ConvOp::Conv2dGradWeight { conv: c, .. } | ConvOp::Conv2dGradWeightRows { conv: c, .. } => (c, node.outputs[0]),
    };
    let w = &plan.tensor(weight).shape;
    let kind = if c.groups > 1 && w[1] == 1 { "depthwise " } else { "" };
    format!("{} {kind}{}x{}", node.op.name(), w[2], w[3])
}

fn node_flops(plan: &Plan, node: &pock_engine::plan::Node) -> u64 {
    let ins: Vec<&[usize]> = node.inputs.iter().map(|&t| plan.tensor(t).shape.as_slice()).collect();
    let outs: Vec<&[usize]> = node.outputs.iter().map(|&t| plan.tensor(t).shape.as_slice()).collect();
    pock_compiler::ops::flops(&node.op, &ins, &outs)
}

/// Peak resident set size from `/proc/self/status` (Linux); `None` elsewhere.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.trim_start_matches("VmHWM:").trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

/// Runs `warmup` then `steps` training steps on a synthetic batch and reports their times.
pub fn run(session: &mut Session, threads: usize, cfg: &BenchConfig) -> Result<BenchReport, PockError> {
    if cfg.steps == 0 {
        return Err(PockError::Usage("--steps must be at least 1".into()));
    }
    let plan = session.plan().clone();
    let batch = session.batch();
    // One buffer per data input, in its own dtype.
    let inputs: Vec<(String, DType, usize)> = session.inputs().map(|t| (t.name.clone(), t.dtype, t.numel())).collect();
    let floats: Vec<Vec<f32>> = inputs.iter().map(|(_, _, n)| (0..*n).map(|i| ((i * 7919) % 255) as f32 / 255.0 - 0.5).collect()).collect();
    let ints: Vec<Vec<i64>> = inputs.iter().map(|(_, _, n)| vec![0; *n]).collect();
    let bools: Vec<Vec<bool>> = inputs.iter().map(|(_, _, n)| vec![false; *n]).collect();
    let named: Vec<(&str, Input<'_>)> = inputs
        .iter()
        .enumerate()
        .map(|(i, (name, dtype, _))| {
            let input = match dtype {
                DType::I64 => Input::I64(&ints[i]),
                DType::Bool => Input::Bool(&bools[i]),
                _ => Input::F32(&floats[i]),
            };
            (name.as_str(), input)
        })
        .collect();
    let target_len: usize = session.target_shape().iter().product();
    let classes = *session.output_shape().last().unwrap_or(&1) as i64;
    let labels: Vec<i64> = (0..target_len as i64).map(|i| i % classes.max(1)).collect();
    let values: Vec<f32> = (0..target_len).map(|i| (i % 5) as f32 * 0.1).collect();
    let target_is_labels = plan
        .programs
        .train
        .feeds
        .iter()
        .any(|&t| plan.tensor(t).role == pock_engine::plan::Role::Target && plan.tensor(t).dtype == DType::I64);
    let targets = if target_is_labels { Targets::Labels(&labels) } else { Targets::Values(&values) };

    let every = cfg.loss_every.max(1);
    for _ in 0..cfg.warmup {
        session.train_step_queued(&named, targets)?;
    }
    session.flush_losses()?;
    session.set_profiling(cfg.profile);
    let syncs_before = session.syncs();
    let mut times = Vec::with_capacity(cfg.steps);
    let mut window = Instant::now();
    let mut in_window = 0usize;
    for s in 0..cfg.steps {
        if in_window == 0 {
            window = Instant::now();
        }
        session.train_step_queued(&named, targets)?;
        in_window += 1;
        if s + 1 == cfg.steps {
            session.flush_losses()?;
        }
        if in_window == every || s + 1 == cfg.steps {
            // Each step of a window gets the window's time over its steps: only the last one
            // waits for the device.
            let ms = window.elapsed().as_secs_f64() * 1e3 / in_window as f64;
            times.extend(std::iter::repeat_n(ms, in_window));
            in_window = 0;
        }
    }
    let syncs_per_step = (session.syncs() - syncs_before) as f64 / cfg.steps as f64;
    let node_nanos = session.node_nanos().map(|(n, runs)| (n.to_vec(), runs));
    session.set_profiling(false);
    // After the timed steps, so that its allocations and warm-up do not disturb them.
    let ceiling = session.gemm_ceiling();

    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let median_ms = sorted[sorted.len() / 2];
    let step_flops: u64 = plan.programs.train.nodes.iter().map(|n| node_flops(&plan, n)).sum();
    let mut profile = Vec::new();
    let mut slowest = Vec::new();
    if let Some((nanos, runs)) = node_nanos.filter(|(_, runs)| *runs > 0) {
        let total: u64 = nanos.iter().sum::<u64>().max(1);
        // GFLOP/s, and its share of the ceiling for the matrix-product ops, of `flops` in `ns`
        // summed over the profiled steps.
        let rate = |kind: &str, ns: u64, flops: u64| {
            let seconds = ns as f64 / 1e9 / runs as f64;
            let gflops = if seconds > 0.0 { flops as f64 / seconds / 1e9 } else { 0.0 };
            let is_product = kind.starts_with("Conv2d") || kind.contains("MatMul");
            (seconds * 1e3, gflops, ceiling.filter(|c| is_product && *c > 0.0).map(|c| 100.0 * gflops / c))
        };
        // (kind, flops, nanoseconds) of every node, in program order.
        let nodes: Vec<(String, u64, u64)> =
            plan.programs.train.nodes.iter().zip(&nanos).map(|(n, &ns)| (op_kind(&plan, n), node_flops(&plan, n), ns)).collect();
        // (kind, count, nanoseconds, flops), in order of first appearance.
        let mut rows: Vec<(&str, usize, u64, u64)> = Vec::new();
        for (kind, flops, ns) in &nodes {
            match rows.iter_mut().find(|r| r.0 == kind) {
                Some(r) => (r.1, r.2, r.3) = (r.1 + 1, r.2 + ns, r.3 + flops),
                None => rows.push((kind, 1, *ns, *flops)),
            }
        }
        profile = rows
            .into_iter()
            .map(|(kind, count, ns, flops)| {
                let (ms, gflops, ceiling_percent) = rate(kind, ns, flops);
                OpTime { kind: kind.to_string(), count, ms, percent: 100.0 * ns as f64 / total as f64, gflops, ceiling_percent }
            })
            .collect();
        profile.sort_by(|a, b| b.ms.total_cmp(&a.ms));
        let mut order: Vec<usize> = (0..nodes.len()).collect();
        order.sort_by(|&a, &b| nodes[b].2.cmp(&nodes[a].2));
        slowest = order
            .into_iter()
            .take(cfg.slowest)
            .map(|i| {
                let (node, (kind, flops, ns)) = (&plan.programs.train.nodes[i], &nodes[i]);
                let (ms, gflops, ceiling_percent) = rate(kind, *ns, *flops);
                let output_shape = node.outputs.first().map_or_else(Vec::new, |&t| plan.tensor(t).shape.clone());
                NodeTime {
                    name: node.name.clone(),
                    kind: kind.clone(),
                    output_shape,
                    ms,
                    percent: 100.0 * *ns as f64 / total as f64,
                    gflops,
                    ceiling_percent,
                }
            })
            .collect();
    }
    Ok(BenchReport {
        model: plan.model.clone(),
        batch,
        threads,
        steps: cfg.steps,
        median_ms,
        min_ms: sorted[0],
        max_ms: sorted[sorted.len() - 1],
        steps_per_s: 1e3 / median_ms,
        step_flops,
        gflops: step_flops as f64 / (median_ms / 1e3) / 1e9,
        gemm_ceiling_gflops: ceiling,
        arena_bytes: plan.arena_bytes,
        weight_bytes: plan.weight_bytes,
        peak_rss_bytes: peak_rss_bytes(),
        profile_timing: cfg.profile.then(|| session.profile_timing().to_string()),
        profile,
        slowest,
        loss_every: every,
        syncs_per_step,
    })
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The report as text: a summary, then the profile table when there is one.
pub fn table(r: &BenchReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "model      {} (batch {}, {} thread{})", r.model, r.batch, r.threads, if r.threads == 1 { "" } else { "s" });
    let _ = writeln!(
        s,
        "step       {:.2} ms median of {} (min {:.2}, max {:.2}), {:.2} steps/s",
        r.median_ms, r.steps, r.min_ms, r.max_ms, r.steps_per_s
    );
    let _ = writeln!(s, "compute    {:.3} GFLOP per step, {:.1} GFLOP/s", r.step_flops as f64 / 1e9, r.gflops);
    if let Some(c) = r.gemm_ceiling_gflops {
        let side = pock_engine::kernels::cpu::CEILING_SIDE;
        let _ = writeln!(
            s,
            "ceiling    gemm {c:.1} GFLOP/s ({side}x{side}x{side}, same threads; the step reaches {:.0}% of it)",
            100.0 * r.gflops / c
        );
    }
    let rss = r.peak_rss_bytes.map_or("unknown".to_string(), |b| format!("{:.1} MiB", mib(b)));
    let _ = writeln!(s, "memory     arena {:.1} MiB, weights {:.1} MiB, peak RSS {rss}", mib(r.arena_bytes), mib(r.weight_bytes));
    let _ = writeln!(
        s,
        "reads      loss read back every {} step{}, {:.2} host-device syncs per step",
        r.loss_every,
        if r.loss_every == 1 { "" } else { "s" },
        r.syncs_per_step
    );
    if !r.profile.is_empty() {
        if let Some(how) = &r.profile_timing {
            let _ = writeln!(s, "\nprofile timed by {how}");
        }
        let _ = writeln!(s, "\n{:<32} {:>6} {:>10} {:>7} {:>9} {:>10}", "op", "count", "ms/step", "%", "GFLOP/s", "% ceiling");
        for row in &r.profile {
            let ceiling = row.ceiling_percent.map_or(String::new(), |p| format!("{p:.0}"));
            let _ =
                writeln!(s, "{:<32} {:>6} {:>10.3} {:>7.1} {:>9.1} {:>10}", row.kind, row.count, row.ms, row.percent, row.gflops, ceiling);
        }
    }
    if !r.slowest.is_empty() {
        let _ = writeln!(s, "\nslowest nodes");
        let _ = writeln!(s, "{:<40} {:<28} {:<18} {:>8} {:>6} {:>8} {:>9}", "node", "op", "output", "ms/step", "%", "GFLOP/s", "% ceiling");
        for n in &r.slowest {
            let ceiling = n.ceiling_percent.map_or(String::new(), |p| format!("{p:.0}"));
            let shape = format!("{:?}", n.output_shape);
            let _ = writeln!(
                s,
                "{:<40} {:<28} {:<18} {:>8.3} {:>6.1} {:>8.1} {:>9}",
                n.name, n.kind, shape, n.ms, n.percent, n.gflops, ceiling
            );
        }
    }
    s
}
