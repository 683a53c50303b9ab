//! `pock scheme`: an update scheme chosen under a memory budget by contribution analysis.
//!
//! - **Candidates.** Every parameter of the model as `pock compile` would train it (after
//!   BatchNorm folding): whole, and for a convolution weight (the weights partial-channel updates
//!   apply to, `pock_compiler::scheme`) also its first ceil(C/8), ceil(C/4) and ceil(C/2) output
//!   channels, by the scheme module's one rule. The channel options of one weight are exclusive:
//!   choosing a larger one replaces the smaller.
//! - **Benefit.** The loss drop predicted for the candidate trained alone over `--horizon` steps
//!   T, from the calibration batches: g is the candidate's mean gradient over them, the
//!   direction d is g for SGD and sign(g) for Adam, A = g.d the slope along it, and c the
//!   curvature along it, estimated as the per-sample second moment of the gradient's component
//!   along d (the empirical Fisher, from the spread of the batches' components: a batch mean of B
//!   samples has variance sigma^2 / B). On that quadratic, SGD with the long-run step
//!   `lr (1 - dampening) / (1 - momentum)` gains `A^2 / (2c) (1 - (1 - step c / A)^(2T))`: at
//!   first the first-order `step * |g|^2` per step, then saturating at what the direction holds;
//!   a candidate whose curvature makes `lr` diverge (`lr c / A >= 2 (1 + momentum)`) gains 0.
//!   Adam moves each value by about `lr` per step: `t A - c t^2 / 2` with `t = min(T lr, A / c)`.
//!   Why this and not the plain first-order `lr |g|^2`: that measure grows without bound with the
//!   steps and ignores that a large, steep tensor diverges at a learning rate its bias takes
//!   well; a per-value version (each value its own quadratic, summed) grows with a tensor's size
//!   and lost to `--update bias` on mobilenetv2 (BENCHMARKS.md "Memory", automatic scheme).
//!   Candidates' benefits are added as if independent, which overcounts
//!   candidates that move the same outputs (several biases shifting one logit): see
//!   BENCHMARKS.md "Memory". The gradients come from one full-backpropagation plan run by the
//!   engine on the calibration batches, compiled with gradient accumulation over more
//!   micro-batches than are run, so the steps only sum every gradient into its accumulator;
//!   each batch's gradient is the accumulator's growth over its step.
//! - **Cost.** Bytes of memory (arena and weights, what `--memory-budget` bounds), from compiled
//!   plans: each parameter is compiled alone once. Memory is persistent state, which adds up
//!   (optimizer state, scaled by the channel fraction), plus the scratch peak, which is a maximum
//!   over the step: at batch 32 a small CNN's peak is in the forward pass, and a saved input added
//!   after it costs nothing. So a candidate's cost given the chosen set is estimated from below,
//!   as the larger of the chosen plan plus the candidate's optimizer state and the candidate's
//!   plan alone plus the chosen optimizer state, and every step of the choice is compiled.
//! - **Choice.** Greedy by benefit per estimated byte: the best candidate that the estimate says
//!   fits is compiled with the chosen set, kept if the plan fits the budget, else dropped (with
//!   its larger channel options). A candidate is skipped uncompiled only when even the estimate
//!   from below exceeds the budget; what it underestimates costs one compile. As for any
//!   knapsack, the greedy runs again from the most beneficial option that fits alone if the first
//!   run left it out, and the larger sum of benefits wins. The final scheme is written as TOML,
//!   parsed back and compiled once more, and must fit and plan exactly the memory its comment
//!   states.

use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use pock_compiler::accounting::human_bytes;
use pock_compiler::{ChannelRule, ChannelSelect, CompileOptions, CompiledPlan, ForwardGraph, UpdateScheme};
use pock_engine::ops::{ConvOp, Op};
use pock_engine::plan::{ModelSource, OptimizerKind, Phase, Plan, Role, ALIGN};
use pock_engine::{Session, SessionOptions};

use crate::PockError;

/// The channel fractions (their denominators) a convolution weight is offered at.
pub const DENOMINATORS: [usize; 4] = [8, 4, 2, 1];

/// Calibration batches used when `--calibration-batches` is not given (or all the data holds,
/// if fewer).
pub const DEFAULT_BATCHES: usize = 8;

/// How to search.
#[derive(Clone, Debug)]
pub struct SearchConfig {
    /// Arena plus weights, in bytes (`--memory-budget`).
    pub budget: u64,
    /// Calibration batches: exactly this many, or `None` for up to [`DEFAULT_BATCHES`].
    pub batches: Option<usize>,
    /// How the analysis plan runs (threads, kernels).
    pub session: SessionOptions,
    /// Progress bars on stderr.
    pub progress: bool,
    /// Steps of fine-tuning the benefit is predicted over (`--horizon`).
    pub horizon: u64,
}

/// Steps the benefit is predicted over when `--horizon` is not given.
pub const DEFAULT_HORIZON: u64 = 100;

/// One way to train a parameter: its first `rows` output channels (all of them for `whole`).
#[derive(Clone, Debug, PartialEq)]
pub struct UpdateOption {
    pub rows: usize,
    /// The channel fraction's denominator (1 for whole).
    pub denominator: usize,
    /// Predicted loss drop of this option trained alone (see the module documentation).
    pub benefit: f64,
}

/// A parameter the search may train, with its options and costs.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub name: String,
    /// Output channels (rows along axis 0) of a convolution weight; 1 for a parameter that
    /// trains whole only.
    pub channels: usize,
    /// Whether it can train in part (a convolution weight).
    pub partial: bool,
    /// By increasing rows; the last trains the whole parameter.
    pub options: Vec<UpdateOption>,
    /// Arena plus weights of the plan that trains this parameter alone (compiled).
    pub alone_bytes: u64,
    /// Optimizer state of the whole parameter in that plan.
    pub optimizer_bytes: u64,
}

impl Candidate {
    /// The plan alone, training `rows` of the parameter (its optimizer state scaled).
    fn alone_at(&self, rows: usize) -> u64 {
        self.alone_bytes - self.optimizer_bytes + self.optimizer_bytes_at(rows)
    }

    fn optimizer_bytes_at(&self, rows: usize) -> u64 {
        (self.optimizer_bytes as u128 * rows as u128 / self.channels.max(1) as u128) as u64
    }
}

/// A chosen parameter and how much of it trains.
#[derive(Clone, Debug, PartialEq)]
pub struct Choice {
    pub param: String,
    pub rows: usize,
    pub channels: usize,
    pub partial: bool,
    pub denominator: usize,
    pub benefit: f64,
}

impl Choice {
    pub fn whole(&self) -> bool {
        self.rows == self.channels
    }
}

/// What the search found.
#[derive(Clone, Debug)]
pub struct SchemeSearch {
    /// In the order the forward pass reads them.
    pub chosen: Vec<Choice>,
    pub budget: u64,
    /// The final scheme's compiled plan.
    pub arena_bytes: u64,
    pub weight_bytes: u64,
    pub trainable_params: usize,
    /// Sum of the chosen benefits, and of every parameter's whole benefit (full backpropagation).
    pub predicted_drop: f64,
    pub full_drop: f64,
    /// How the benefit was measured, in words (for the file's comment).
    pub measure: String,
    pub calibration_losses: Vec<f32>,
    pub batch: usize,
    /// Plans compiled by the search (costs alone, greedy steps, the final check).
    pub compiles: usize,
    pub seconds: f64,
    pub candidates: Vec<Candidate>,
    /// The scheme file's body (without the header comment), as [`SchemeSearch::toml`] writes it.
    body: String,
}

/// Escapes a parameter name for a glob (`*`, `?` and `[` as one-character classes), so that it
/// matches that name alone.
pub fn glob_literal(name: &str) -> String {
    let mut s = String::with_capacity(name.len());
    for c in name.chars() {
        match c {
            '*' | '?' | '[' => {
                s.push('[');
                s.push(c);
                s.push(']');
            }
            c => s.push(c),
        }
    }
    s
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn fraction_text(denominator: usize) -> String {
    if denominator == 1 {
        "1".into()
    } else {
        format!("1/{denominator}")
    }
}

/// The scheme file body (TOML) for a choice.
fn scheme_body(chosen: &[Choice]) -> String {
    let mut s = String::from("train = [\n");
    for c in chosen.iter().filter(|c| c.whole()) {
        s += &format!("  {},  # whole; alone, predicted drop {:.3e}\n", toml_string(&glob_literal(&c.param)), c.benefit);
    }
    s += "]\n";
    for c in chosen.iter().filter(|c| !c.whole()) {
        s += &format!(
            "\n[[channels]]  # {} of {} output channels; alone, predicted drop {:.3e}\nparams = {}\nfraction = {}\n",
            c.rows,
            c.channels,
            c.benefit,
            toml_string(&glob_literal(&c.param)),
            toml_string(&fraction_text(c.denominator))
        );
    }
    s
}

fn scheme_of(chosen: &[Choice]) -> UpdateScheme {
    UpdateScheme {
        preset: None,
        train: chosen.iter().filter(|c| c.whole()).map(|c| glob_literal(&c.param)).collect(),
        channels: chosen
            .iter()
            .filter(|c| !c.whole())
            .map(|c| ChannelRule { params: glob_literal(&c.param), select: ChannelSelect::Fraction { denominator: c.denominator } })
            .collect(),
    }
}

fn plan_bytes(plan: &Plan) -> u64 {
    plan.arena_bytes.saturating_add(plan.weight_bytes)
}

/// Compiles `forward` with `scheme`, counting the compile.
struct Compiler<'a> {
    forward: &'a ForwardGraph,
    options: &'a CompileOptions,
    source: &'a ModelSource,
    compiles: usize,
}

impl Compiler<'_> {
    fn compile(&mut self, scheme: UpdateScheme) -> Result<CompiledPlan, PockError> {
        self.compiles += 1;
        let options = CompileOptions { update: scheme, ..self.options.clone() };
        crate::compile_forward(self.forward.clone(), options, self.source.clone())
    }
}

fn bar(show: bool, len: u64, what: &str) -> ProgressBar {
    let b = if show { ProgressBar::new(len) } else { ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::hidden()) };
    b.set_style(ProgressStyle::with_template("{prefix:<28} {bar:30} {pos}/{len}  {msg}  [{elapsed_precise}]").expect("valid template"));
    b.set_prefix(what.to_string());
    b
}

/// The trainable parameters of `plan` in the order its Train program's forward pass first reads
/// them, each with whether only convolutions read it, as their weight (input 1), and it is 4-D.
fn parameters_in_order(plan: &Plan) -> Vec<(pock_engine::plan::TensorId, bool)> {
    let mut order: Vec<(pock_engine::plan::TensorId, bool)> = Vec::new();
    for n in plan.programs.train.nodes.iter().filter(|n| n.phase == Phase::Forward) {
        for (pos, &t) in n.inputs.iter().enumerate() {
            if plan.tensor(t).role != (Role::Parameter { trainable: true }) {
                continue;
            }
            let conv = matches!(n.op, Op::Conv(ConvOp::Conv2d(_))) && pos == 1 && plan.tensor(t).shape.len() == 4;
            match order.iter_mut().find(|(p, _)| *p == t) {
                Some((_, c)) => *c &= conv,
                None => order.push((t, conv)),
            }
        }
    }
    order
}

/// Chooses an update scheme for `forward` under `cfg.budget` (see the module documentation).
/// `options` are the compile options the scheme is for (its `update` is ignored); `data` is the
/// calibration `.npz`.
pub fn search(
    forward: &ForwardGraph,
    source: &ModelSource,
    options: &CompileOptions,
    data: &std::path::Path,
    cfg: &SearchConfig,
) -> Result<SchemeSearch, PockError> {
    let started = Instant::now();
    let mut compiler = Compiler { forward, options, source, compiles: 0 };

    // 1. Gradients of every parameter on the calibration batches, from a full-backpropagation plan
    //    that accumulates over more micro-batches than it runs (so no update happens).
    let most = cfg.batches.unwrap_or(DEFAULT_BATCHES);
    let analysis = crate::compile_forward(
        forward.clone(),
        CompileOptions { update: UpdateScheme::default(), accumulate: most + 1, clip_grad_norm: None, ..options.clone() },
        source.clone(),
    )?;
    let batch = analysis.plan.training.batch;
    let mut session = Session::from_bytes(&analysis.to_bytes(), cfg.session)?;
    let dataset = crate::train::load_for(&session, data)?;
    crate::train::check_data(&session, &dataset, true).map_err(|e| match e {
        PockError::Data(d) => PockError::Data(d.in_file(data)),
        e => e,
    })?;
    let available = dataset.len() / batch;
    let batches = match cfg.batches {
        Some(0) => return Err(PockError::Usage("--calibration-batches 0 measures nothing; give at least 1".into())),
        Some(n) if n > available => {
            return Err(PockError::Usage(format!(
                "--calibration-batches {n}: {} holds {} samples, {available} full batches of {batch}; give more data or fewer batches",
                data.display(),
                dataset.len()
            )))
        }
        Some(n) => n,
        None if available == 0 => {
            return Err(PockError::Usage(format!(
                "{} holds {} samples, fewer than one batch of {batch}; give more calibration data or a smaller --batch",
                data.display(),
                dataset.len()
            )))
        }
        None => available.min(DEFAULT_BATCHES),
    };
    // Per value: the sum over batches of each batch's mean gradient, and of its square.
    let plan = &analysis.plan;
    let params = parameters_in_order(plan);
    // Each batch's gradient of every parameter: the accumulators' growth over the step.
    let mut previous: Vec<Vec<f32>> = params.iter().map(|&(p, _)| vec![0.0; plan.tensor(p).numel()]).collect();
    let mut per_batch: Vec<Vec<Vec<f32>>> = vec![Vec::with_capacity(batches); params.len()];
    let calib = bar(cfg.progress, batches as u64, "calibration gradients");
    let calibration_losses = crate::train::run_batches(&mut session, &dataset, batches, |session| {
        for (j, &(p, _)) in params.iter().enumerate() {
            let accumulated = session.read_tensor(&format!("grad_accumulator.{}", plan.tensor(p).name))?;
            per_batch[j].push(accumulated.iter().zip(&previous[j]).map(|(&now, &before)| now - before).collect());
            previous[j] = accumulated;
        }
        calib.inc(1);
        Ok(())
    })?;
    calib.finish_and_clear();
    drop(previous);

    let measure = Measure::new(options, cfg.horizon, batch, batches);
    let mut candidates = Vec::with_capacity(params.len());
    for (&(p, conv), grads) in params.iter().zip(&per_batch) {
        let info = plan.tensor(p);
        let rows = if conv { info.shape[0] } else { 1 };
        let len = info.numel() / rows.max(1);
        let mean: Vec<f64> = (0..info.numel()).map(|i| grads.iter().map(|g| g[i] as f64).sum::<f64>() / batches as f64).collect();
        let direction: Vec<f64> = mean.iter().map(|&g| if measure.sgd { g } else { g.signum() * (g != 0.0) as u8 as f64 }).collect();
        // Per row: the mean gradient along the direction, and each batch's.
        let along: Vec<f64> = (0..rows).map(|r| (r * len..(r + 1) * len).map(|i| mean[i] * direction[i]).sum()).collect();
        let batch_along: Vec<Vec<f64>> =
            (0..rows).map(|r| grads.iter().map(|g| (r * len..(r + 1) * len).map(|i| g[i] as f64 * direction[i]).sum()).collect()).collect();
        let option = |rows: usize, denominator: usize| {
            let a: f64 = along[..rows].iter().sum();
            let per: Vec<f64> = (0..batches).map(|b| batch_along[..rows].iter().map(|row| row[b]).sum()).collect();
            UpdateOption { rows, denominator, benefit: measure.group(a, &per) }
        };
        let channels = rows;
        let mut offered: Vec<UpdateOption> = Vec::new();
        for d in if conv { &DENOMINATORS[..] } else { &DENOMINATORS[3..] } {
            let rows = channels.div_ceil(*d);
            if offered.last().is_some_and(|o| o.rows == rows) {
                offered.pop();
            }
            offered.push(option(rows, *d));
        }
        candidates.push(Candidate {
            name: info.name.clone(),
            channels,
            partial: conv && channels > 1,
            options: offered,
            alone_bytes: 0,
            optimizer_bytes: 0,
        });
    }
    drop(session);
    drop(per_batch);
    let full_drop: f64 = candidates.iter().map(|c| c.options.last().map_or(0.0, |o| o.benefit)).sum();

    // 2. Each parameter alone, compiled.
    let alone = bar(cfg.progress, candidates.len() as u64, "cost of each parameter alone");
    for c in &mut candidates {
        alone.set_message(c.name.clone());
        let compiled = compiler.compile(UpdateScheme { train: vec![glob_literal(&c.name)], ..Default::default() })?;
        c.alone_bytes = plan_bytes(&compiled.plan);
        c.optimizer_bytes = compiled.plan.tensors.iter().filter(|t| matches!(t.role, Role::OptimizerState { .. })).map(|t| t.bytes()).sum();
        alone.inc(1);
    }
    alone.finish_and_clear();
    let Some(cheapest) = candidates.iter().min_by_key(|c| c.alone_bytes) else {
        return Err(PockError::Usage("the model has no trainable parameter; there is nothing to choose".into()));
    };
    if cfg.budget < cheapest.alone_bytes {
        return Err(PockError::Usage(format!(
            "--memory-budget {} bytes ({}) is below the smallest plan that trains anything: training only '{}' needs {} bytes ({}), \
             the frozen model's weights and forward pass included; give --memory-budget {} ({}) or more, or a smaller --batch \
             (activations scale with it)",
            cfg.budget,
            human_bytes(cfg.budget),
            cheapest.name,
            cheapest.alone_bytes,
            human_bytes(cheapest.alone_bytes),
            cheapest.alone_bytes,
            human_bytes(cheapest.alone_bytes)
        )));
    }

    // 3. Greedy by benefit per estimated byte, every step compiled; then, as for any knapsack, the
    //    same greedy started from the most beneficial option that fits alone, if the first run left
    //    it out (small cheap candidates can fill a budget that one large one would use better).
    let total_options: usize = candidates.iter().map(|c| c.options.len()).sum();
    let progress = bar(cfg.progress, total_options as u64, "greedy choice (compiled)");
    let floor = cheapest.alone_bytes;
    let mut result = greedy(&candidates, &mut compiler, cfg.budget, floor, None, &progress)?;
    let seed = candidates
        .iter()
        .enumerate()
        .flat_map(|(i, c)| c.options.iter().enumerate().map(move |(o, u)| (i, o, u, c)))
        .filter(|(_, _, u, c)| c.alone_at(u.rows) <= cfg.budget)
        .max_by(|a, b| a.2.benefit.total_cmp(&b.2.benefit))
        .map(|(i, o, _, _)| (i, o));
    if let Some((i, o)) = seed.filter(|&(i, o)| result.current[i].is_none_or(|c| c < o)) {
        progress.set_prefix("greedy from the best single");
        let seeded = greedy(&candidates, &mut compiler, cfg.budget, floor, Some((i, o)), &progress)?;
        if seeded.benefit(&candidates) > result.benefit(&candidates) {
            result = seeded;
        }
    }
    progress.finish_and_clear();
    let chosen = choices(&candidates, &result.current);
    let Some(planned) = result.planned.filter(|_| !chosen.is_empty()) else {
        return Err(PockError::Usage(format!(
            "no parameter has a gradient on the calibration data ({} batches), so none is predicted to lower the loss; check the data's labels, or give more calibration data",
            batches
        )));
    };

    // 4. The file as written, parsed back and compiled: it must fit and plan what was measured.
    let body = scheme_body(&chosen);
    let parsed = UpdateScheme::from_toml(&body, "the chosen scheme")?;
    let compiled = compiler.compile(parsed)?;
    let Planned { total, arena, weights, trainable } = planned;
    if plan_bytes(&compiled.plan) != total || compiled.plan.arena_bytes != arena {
        return Err(PockError::Usage(format!(
            "internal error: the written scheme plans {} bytes but the search measured {total}; please report this",
            plan_bytes(&compiled.plan)
        )));
    }
    crate::check_memory(&compiled.plan, Some(cfg.budget))?;
    Ok(SchemeSearch {
        predicted_drop: result.benefit(&candidates),
        chosen,
        budget: cfg.budget,
        arena_bytes: arena,
        weight_bytes: weights,
        trainable_params: trainable,
        full_drop,
        measure: measure.text,
        calibration_losses,
        batch,
        compiles: compiler.compiles,
        seconds: started.elapsed().as_secs_f64(),
        candidates,
        body,
    })
}

/// How a candidate's benefit is measured (see the module documentation).
struct Measure {
    sgd: bool,
    lr: f64,
    momentum: f64,
    /// The step size: SGD's long-run step `lr * (1 - dampening) / (1 - momentum)`, Adam's `lr`.
    step: f64,
    horizon: f64,
    batch: f64,
    text: String,
}

impl Measure {
    fn new(options: &CompileOptions, horizon: u64, batch: usize, batches: usize) -> Self {
        let lr = options.learning_rate as f64;
        let (sgd, momentum, step, rule) = match options.optimizer {
            OptimizerKind::Sgd { momentum, dampening, .. } => {
                let step = lr * (1.0 - dampening as f64) / (1.0 - momentum as f64);
                (true, momentum as f64, step, format!("SGD along g with step lr (1 - dampening) / (1 - momentum) = {step:.4e}: A^2 / (2 c) (1 - (1 - step c / A)^(2 T)), 0 where lr c / A >= 2 (1 + momentum) diverges"))
            }
            OptimizerKind::Adam { .. } | OptimizerKind::AdamW { .. } => (
                false,
                0.0,
                lr,
                format!("Adam along sign(g), each value moving lr = {lr:.4e} per step: t A - c t^2 / 2 with t = min(T lr, A / c)"),
            ),
        };
        let text = format!(
            "loss drop over T = {horizon} steps of the candidate alone on a quadratic along its mean gradient g over {batches} \
             calibration batches: {rule}; A is g's slope along the direction, c the curvature along it (per-sample second moment \
             of the gradient's component, empirical Fisher)"
        );
        Measure { sgd, lr, momentum, step, horizon: horizon as f64, batch: batch as f64, text }
    }

    /// The predicted drop of a candidate from `a`, the mean gradient's component along the
    /// direction (`|g|^2` for SGD, `|g|_1` for Adam), and each batch's component along it.
    fn group(&self, a: f64, per_batch: &[f64]) -> f64 {
        if !(a > 0.0 && a.is_finite()) {
            return 0.0;
        }
        let k = per_batch.len() as f64;
        let mean = per_batch.iter().sum::<f64>() / k;
        let variance = if k > 1.0 { per_batch.iter().map(|p| (p - mean).powi(2)).sum::<f64>() / (k - 1.0) } else { 0.0 };
        // Per-sample second moment: a batch mean of B samples has variance sigma^2 / B.
        let c = self.batch * variance + a * a;
        if self.sgd {
            let h = c / a;
            if self.lr * h >= 2.0 * (1.0 + self.momentum) {
                return 0.0;
            }
            let x = (self.step * h).min(1.0);
            a * a / (2.0 * c) * -(2.0 * self.horizon * (-x).ln_1p()).exp_m1()
        } else {
            let t = (self.horizon * self.step).min(a / c);
            t * a - 0.5 * t * t * c
        }
    }
}

/// A compiled plan's memory and trainable values.
#[derive(Clone, Copy, Debug)]
struct Planned {
    total: u64,
    arena: u64,
    weights: u64,
    trainable: usize,
}

/// A choice: the option each candidate trains at (if any), and its compiled plan.
struct Chosen {
    current: Vec<Option<usize>>,
    planned: Option<Planned>,
}

impl Chosen {
    /// The sum of the chosen options' benefits (each measured alone).
    fn benefit(&self, candidates: &[Candidate]) -> f64 {
        candidates.iter().zip(&self.current).filter_map(|(c, o)| o.map(|o| c.options[o].benefit)).sum()
    }
}

/// Greedy by benefit per estimated byte (see the module documentation), from `seed` if given;
/// every step is compiled, and kept only if the plan fits `budget`.
fn greedy(
    candidates: &[Candidate],
    compiler: &mut Compiler<'_>,
    budget: u64,
    floor: u64,
    seed: Option<(usize, usize)>,
    progress: &ProgressBar,
) -> Result<Chosen, PockError> {
    let mut current: Vec<Option<usize>> = vec![None; candidates.len()];
    let mut blocked: Vec<usize> = candidates.iter().map(|c| c.options.len()).collect();
    let mut planned: Option<Planned> = None;
    let mut chosen_optimizer = 0u64;
    let mut next = seed;
    progress.set_position(0);
    loop {
        let now = planned.map_or(floor, |p| p.total);
        let forced = next.take();
        let mut best: Option<(f64, usize, usize)> = forced.map(|(i, o)| (f64::INFINITY, i, o));
        for (i, c) in candidates.iter().enumerate().filter(|_| forced.is_none()) {
            let start = current[i].map_or(0, |o| o + 1);
            let (had_rows, had_benefit) = current[i].map_or((0, 0.0), |o| (c.options[o].rows, c.options[o].benefit));
            for o in start..blocked[i] {
                let gain = c.options[o].benefit - had_benefit;
                if gain <= 0.0 || !gain.is_finite() {
                    continue;
                }
                let rows = c.options[o].rows;
                let state = c.optimizer_bytes_at(rows) - c.optimizer_bytes_at(had_rows);
                let estimate = match planned {
                    None => c.alone_at(rows),
                    Some(p) if current[i].is_some() => p.total + state,
                    Some(p) => (p.total + state).max(c.alone_at(rows) + chosen_optimizer),
                };
                if estimate > budget {
                    continue;
                }
                let ratio = gain / estimate.saturating_sub(now).max(ALIGN) as f64;
                if best.is_none_or(|(r, _, _)| ratio > r) {
                    best = Some((ratio, i, o));
                }
            }
        }
        let Some((_, i, o)) = best else { break };
        let before = current[i];
        current[i] = Some(o);
        let chosen = choices(candidates, &current);
        progress.set_message(format!("{} at {}", candidates[i].name, fraction_text(candidates[i].options[o].denominator)));
        let compiled = compiler.compile(scheme_of(&chosen))?;
        let total = plan_bytes(&compiled.plan);
        progress.inc(1);
        if total <= budget {
            let c = &candidates[i];
            chosen_optimizer += c.optimizer_bytes_at(c.options[o].rows) - before.map_or(0, |b| c.optimizer_bytes_at(c.options[b].rows));
            let trainable = compiled.plan.tensors.iter().filter(|t| t.role == Role::Parameter { trainable: true }).map(|t| t.numel()).sum();
            planned = Some(Planned { total, arena: compiled.plan.arena_bytes, weights: compiled.plan.weight_bytes, trainable });
        } else {
            current[i] = before;
            blocked[i] = o;
        }
    }
    Ok(Chosen { current, planned })
}

fn choices(candidates: &[Candidate], current: &[Option<usize>]) -> Vec<Choice> {
    candidates
        .iter()
        .zip(current)
        .filter_map(|(c, o)| {
            o.map(|o| Choice {
                param: c.name.clone(),
                rows: c.options[o].rows,
                channels: c.channels,
                partial: c.partial,
                denominator: c.options[o].denominator,
                benefit: c.options[o].benefit,
            })
        })
        .collect()
}

impl SchemeSearch {
    /// The scheme file: a header comment (how it was chosen, the budget, the planned arena and
    /// weights; `command` is how to compile it), then the scheme.
    pub fn toml(&self, command: &str) -> String {
        let mut s = String::new();
        s += "# Update scheme chosen by `pock scheme` (contribution analysis on calibration data, greedy by benefit per byte).\n";
        s += &format!("# Written by: {command}\n");
        s += &format!(
            "# Budget {} bytes ({}); planned arena {} bytes ({}) + weights {} bytes ({}) = {} bytes ({}).\n",
            self.budget,
            human_bytes(self.budget),
            self.arena_bytes,
            human_bytes(self.arena_bytes),
            self.weight_bytes,
            human_bytes(self.weight_bytes),
            self.arena_bytes + self.weight_bytes,
            human_bytes(self.arena_bytes + self.weight_bytes)
        );
        s += &format!(
            "# {} parameters of {} trained, {} values; predicted loss drop (sum over the chosen) {:.4e}, every parameter whole {:.4e}\n",
            self.chosen.len(),
            self.candidates.len(),
            self.trainable_params,
            self.predicted_drop,
            self.full_drop
        );
        s += &format!("# (benefit = {}; {} calibration batches of {}).\n", self.measure, self.calibration_losses.len(), self.batch);
        s += "# Compile it with the same model, --batch, optimizer, BatchNorm and --init-weights flags and --scheme THIS_FILE.\n";
        s += &self.body;
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_written_as_globs_that_match_them_alone() {
        for name in ["features.1.conv.0.0.weight", "onnx::Conv_12", "a*b", "x?y", "w[0]", "q\"uote\\"] {
            let glob = glob_literal(name);
            assert!(pock_compiler::scheme::glob_matches(&glob, name), "{glob} vs {name}");
            let text = format!("train = [{}]", toml_string(&glob));
            let parsed = UpdateScheme::from_toml(&text, "t.toml").unwrap();
            assert_eq!(parsed.train, std::slice::from_ref(&glob), "{text}");
        }
        assert!(!pock_compiler::scheme::glob_matches(&glob_literal("a*b"), "axxb"));
        assert!(!pock_compiler::scheme::glob_matches(&glob_literal("x?y"), "xzy"));
        assert!(!pock_compiler::scheme::glob_matches(&glob_literal("w[0]"), "w0"));
    }

    fn sgd(lr: f32, momentum: f32, horizon: u64) -> Measure {
        let options = CompileOptions {
            optimizer: OptimizerKind::Sgd { momentum, dampening: 0.0, nesterov: false, weight_decay: 0.0 },
            learning_rate: lr,
            ..Default::default()
        };
        Measure::new(&options, horizon, 8, 4)
    }

    #[test]
    fn the_benefit_is_first_order_at_first_then_saturates_and_is_zero_where_lr_diverges() {
        // Four batches agreeing exactly: no spread, curvature c = A^2.
        let (a, per) = (0.5, [0.5; 4]);
        let one = sgd(1e-4, 0.0, 1).group(a, &per);
        // One small step: lr |g|^2 = lr A, up to the quadratic's second-order term.
        assert!((one - 1e-4 * a).abs() < 1e-4 * a * 1e-2, "{one}");
        let long = sgd(1e-4, 0.0, 1_000_000).group(a, &per);
        assert!((long - a * a / (2.0 * a * a)).abs() < 1e-9, "saturates at A^2 / (2c): {long}");
        assert!(sgd(1e-4, 0.0, 10).group(a, &per) < sgd(1e-4, 0.0, 100).group(a, &per));
        // Spread between batches is curvature: the same slope saturates lower.
        let noisy = sgd(1e-4, 0.0, 1_000_000).group(a, &[0.0, 1.0, 0.0, 1.0]);
        assert!(noisy < long, "{noisy} vs {long}");
        // lr c / A = lr A >= 2 (1 + momentum): this candidate alone diverges.
        assert_eq!(sgd(5.0, 0.0, 10).group(a, &per), 0.0);
        assert!(sgd(3.0, 0.9, 10).group(a, &per) > 0.0, "momentum widens the stable range");
        assert_eq!(sgd(0.1, 0.0, 10).group(0.0, &[0.0; 4]), 0.0);
    }
}
