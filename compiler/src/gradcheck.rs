//! Gradient checks in f64: analytic gradients (the backward nodes that gradient rules emit,
//! evaluated by the [`Interpreter`]) against central finite differences of the forward nodes.
//!
//! The error of one tensor's gradient is norm-wise: `|analytic - numeric| / max(|analytic|,
//! |numeric|)`, over the checked elements (all of them, or a seeded sample for large tensors).

use pock_engine::ops::{LossOp, Op};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::Result;
use crate::interp::Interpreter;
use crate::ir::{DType, Graph, Node, Phase, Program, Role, TensorDef, TensorId};
use crate::ops::{gradient, GradCtx};

/// Step of the central difference. Values are O(1), so truncation (~h^2) and rounding
/// (~1e-16 / h) errors both stay near 1e-10.
pub const STEP: f64 = 1e-6;
/// Elements checked per tensor at most (a seeded sample beyond that).
pub const MAX_ELEMENTS: usize = 64;

/// One input of an op under test.
#[derive(Clone, Debug)]
pub enum CaseInput {
    /// Uniform in [-1, 1], differentiated.
    Float(Vec<usize>),
    /// Uniform in [0.5, 1.5], differentiated (for inputs that must be positive).
    Positive(Vec<usize>),
    /// A fixed value, not differentiated (for example a variance or a target).
    Fixed(Vec<usize>, Vec<f32>),
    /// Integer labels in [0, classes).
    Labels(Vec<usize>, usize),
    /// A random bool mask (for a condition), not differentiated.
    Mask(Vec<usize>),
}

/// The check of one differentiated tensor.
#[derive(Clone, Debug)]
pub struct TensorCheck {
    pub name: String,
    pub checked: usize,
    pub relative_error: f64,
    pub analytic_norm: f64,
}

/// Checks `op`'s gradient rule on random inputs: `L = sum(r * y)` for the op's first output `y`
/// and a random `r`, differentiated with respect to every `Float`/`Positive` input.
pub fn check_op(op: impl Into<Op>, inputs: &[CaseInput], seed: u64) -> Result<Vec<TensorCheck>> {
    let op = op.into();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut g = Graph::new();
    let mut ids = Vec::new();
    let mut labels = Vec::new();
    let mut masks = Vec::new();
    let mut wrt = Vec::new();
    for (i, input) in inputs.iter().enumerate() {
        let name = format!("in{i}");
        let id = match input {
            CaseInput::Float(s) | CaseInput::Positive(s) => {
                let (lo, hi) = if matches!(input, CaseInput::Float(_)) { (-1.0, 1.0) } else { (0.5, 1.5) };
                let v = (0..s.iter().product::<usize>()).map(|_| rng.random_range(lo..hi)).collect();
                let t = g.parameter(name, s.clone(), v);
                wrt.push(t);
                t
            }
            CaseInput::Fixed(s, v) => g.constant(name, s.clone(), v.clone()),
            CaseInput::Labels(s, classes) => {
                let t = g.input(name, s.clone(), DType::I64, Role::Target);
                labels.push((t, (0..s.iter().product::<usize>()).map(|_| rng.random_range(0..*classes as i64)).collect::<Vec<_>>()));
                t
            }
            CaseInput::Mask(s) => {
                let t = g.input(name, s.clone(), DType::Bool, Role::Input);
                masks.push((t, (0..s.iter().product::<usize>()).map(|_| rng.random_range(0..2u8)).collect::<Vec<_>>()));
                t
            }
        };
        ids.push(id);
    }
    // Persistent tensors for in-place outputs (BatchNorm's running statistics).
    let in_shapes: Vec<&[usize]> = ids.iter().map(|&t| g.shape(t)).collect();
    let out_shapes = op.output_shapes(&in_shapes).map_err(|source| crate::error::CompileError::Shape { node: "op".into(), source })?;
    let inplace: Vec<TensorId> = op
        .inplace_outputs()
        .map(|i| {
            let shape = out_shapes[i].clone();
            let init = vec![0.5; shape.iter().product()];
            g.add_tensor(TensorDef {
                name: format!("state{i}"),
                shape,
                dtype: DType::F32,
                role: Role::RunningStat,
                init: Some(init.into()),
            })
        })
        .collect();
    let outputs = g.emit_inplace("op", op, &ids, &inplace, Phase::Forward, Program::Train)?;
    let y = outputs[0];
    let r: Vec<f32> = (0..g.tensor(y).numel()).map(|_| rng.random_range(-1.0..1.0)).collect();
    let r_id = g.constant("r", g.shape(y).to_vec(), r.clone());
    let forward = g.nodes[0].clone();
    let mut dy = vec![None; forward.outputs.len()];
    dy[0] = Some(r_id);
    let needs: Vec<bool> = ids.iter().map(|t| wrt.contains(t)).collect();
    let grads = gradient(&mut GradCtx::new(&mut g, "op"), &forward, &dy, &needs)?;

    let r64: Vec<f64> = r.iter().map(|&v| v as f64).collect();
    let objective = |interp: &Interpreter| -> f64 { interp.get(y).expect("forward ran").iter().zip(&r64).map(|(a, b)| a * b).sum() };
    let fresh = || {
        let mut interp = Interpreter::new(&g);
        for (t, v) in &labels {
            interp.set_int(*t, v.clone());
        }
        for (t, v) in &masks {
            interp.set_bool(*t, v.clone());
        }
        interp
    };
    let mut interp = fresh();
    interp.run(g.nodes.iter())?;
    let mut checks = Vec::new();
    for (pos, &x) in ids.iter().enumerate() {
        if !needs[pos] {
            continue;
        }
        let gid =
            grads[pos].unwrap_or_else(|| panic!("gradient rule of {} returned no gradient for needed input {pos}", g.nodes[0].op.name()));
        let analytic = interp.get(gid).expect("backward ran").to_vec();
        let base: Vec<f64> = interp.get(x).unwrap().to_vec();
        let forward_only = [forward.clone()];
        checks.push(compare(&g.tensor(x).name, &analytic, &base, &mut rng, |values| {
            let mut it = fresh();
            it.set(x, values.to_vec());
            it.run(forward_only.iter())?;
            Ok(objective(&it))
        })?);
    }
    Ok(checks)
}

/// Compares `analytic` with central differences of `objective` around `base`.
pub fn compare(
    name: &str,
    analytic: &[f64],
    base: &[f64],
    rng: &mut ChaCha8Rng,
    objective: impl FnMut(&[f64]) -> Result<f64>,
) -> Result<TensorCheck> {
    compare_with_step(name, analytic, base, rng, STEP, objective)
}

/// [`compare`] with an explicit finite-difference step.
pub fn compare_with_step(
    name: &str,
    analytic: &[f64],
    base: &[f64],
    rng: &mut ChaCha8Rng,
    step: f64,
    mut objective: impl FnMut(&[f64]) -> Result<f64>,
) -> Result<TensorCheck> {
    assert_eq!(analytic.len(), base.len(), "gradient of '{name}' has the wrong length");
    let mut idx: Vec<usize> = (0..base.len()).collect();
    if idx.len() > MAX_ELEMENTS {
        for i in 0..MAX_ELEMENTS {
            let j = rng.random_range(i..idx.len());
            idx.swap(i, j);
        }
        idx.truncate(MAX_ELEMENTS);
    }
    let mut values = base.to_vec();
    let (mut diff, mut na, mut nn) = (0.0f64, 0.0f64, 0.0f64);
    for &e in &idx {
        values[e] = base[e] + step;
        let plus = objective(&values)?;
        values[e] = base[e] - step;
        let minus = objective(&values)?;
        values[e] = base[e];
        let numeric = (plus - minus) / (2.0 * step);
        diff += (analytic[e] - numeric).powi(2);
        na += analytic[e].powi(2);
        nn += numeric.powi(2);
    }
    let denom = na.sqrt().max(nn.sqrt()).max(1e-300);
    let relative_error = if na == 0.0 && nn == 0.0 { 0.0 } else { diff.sqrt() / denom };
    Ok(TensorCheck { name: name.to_string(), checked: idx.len(), relative_error, analytic_norm: na.sqrt() })
}

/// Panics with a readable report unless every check is below `tolerance` and at least one
/// gradient is non-zero (a rule that returns zeros everywhere must not pass by accident).
pub fn assert_close(what: &str, checks: &[TensorCheck], tolerance: f64) {
    assert!(!checks.is_empty(), "{what}: nothing was checked");
    let report: Vec<String> = checks
        .iter()
        .map(|c| format!("  {}: rel err {:.3e} over {} elements (|grad| {:.3e})", c.name, c.relative_error, c.checked, c.analytic_norm))
        .collect();
    let report = report.join("\n");
    assert!(checks.iter().all(|c| c.relative_error < tolerance), "{what}: gradient check failed (tolerance {tolerance:e})\n{report}");
    assert!(checks.iter().any(|c| c.analytic_norm > 0.0), "{what}: every gradient is zero\n{report}");
}

/// Whole-model gradient check: attaches the task's loss (mean) to `forward`, differentiates it
/// with [`crate::autodiff::differentiate`], and compares the gradients of up to `max_tensors`
/// trainable parameters (spread evenly over the model) against central differences of the loss
/// with step `step`, `elements` entries each.
///
/// Deep ReLU networks have many kinks: with tens of thousands of units some pre-activation lies
/// within 1e-6 of zero, and a step that crosses it makes the difference quotient wrong while the
/// gradient is right. Such models are checked with a smaller step (1e-8) in a configuration whose
/// gradients are large enough (batch statistics over several elements) that rounding, about
/// 1e-16 |loss| / step, stays far below the tolerance.
pub fn check_model(
    forward: crate::stages::ForwardGraph,
    seed: u64,
    max_tensors: usize,
    elements: usize,
    step: f64,
) -> Result<Vec<TensorCheck>> {
    use crate::stages::Task;
    use pock_engine::ops::Reduction;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let input = forward.single_input()?;
    let crate::stages::ForwardGraph { mut graph, output, task, .. } = forward;
    let batch = graph.shape(input)[0];
    let (target, loss_op) = match task {
        Task::Classification { .. } => {
            (graph.input("target", vec![batch], DType::I64, Role::Target), LossOp::SoftmaxCrossEntropy(Reduction::Mean))
        }
        Task::Regression => (graph.input("target", graph.shape(output).to_vec(), DType::F32, Role::Target), LossOp::Mse(Reduction::Mean)),
        Task::CrossEntropy { ignore_index, .. } => {
            let out = graph.shape(output);
            let labels = out[..out.len() - 1].to_vec();
            let ce = pock_engine::ops::CrossEntropy { reduction: Reduction::Mean, ignore_index };
            (graph.input("target", labels, DType::I64, Role::Target), LossOp::CrossEntropy(ce))
        }
    };
    let loss_op: Op = loss_op.into();
    let loss = graph.emit("loss", loss_op, &[output, target], Phase::Forward, Program::Train)?[0];
    let forward_nodes: Vec<Node> = graph.nodes.clone();
    let grads = crate::autodiff::differentiate(&mut graph, loss)?;

    let x: Vec<f64> = (0..graph.tensor(input).numel()).map(|_| rng.random_range(-1.0..1.0)).collect();
    let classes = *graph.shape(output).last().expect("logits have a class axis");
    let labels: Vec<i64> = (0..graph.tensor(target).numel()).map(|_| rng.random_range(0..classes as i64)).collect();
    let targets: Vec<f64> = (0..graph.tensor(target).numel()).map(|_| rng.random_range(-1.0..1.0)).collect();
    fn fresh_with<'g>(graph: &'g Graph, input: TensorId, x: &[f64], target: TensorId, labels: &[i64], targets: &[f64]) -> Interpreter<'g> {
        let mut it = Interpreter::new(graph);
        it.set(input, x.to_vec());
        if graph.tensor(target).dtype == DType::I64 {
            it.set_int(target, labels.to_vec());
        } else {
            it.set(target, targets.to_vec());
        }
        it
    }
    let fresh = |graph| fresh_with(graph, input, &x, target, &labels, &targets);
    let mut it = fresh(&graph);
    it.run(graph.nodes.iter())?;
    let stride = grads.len().div_ceil(max_tensors.max(1)).max(1);
    let mut checks = Vec::new();
    for &(p, gid) in grads.iter().step_by(stride) {
        let analytic_full = it.get(gid).expect("gradient computed").to_vec();
        let base_full = it.get(p).expect("parameter value").to_vec();
        // Check `elements` entries: pick them, then compare on those entries only.
        let mut idx: Vec<usize> = (0..base_full.len()).collect();
        for i in 0..elements.min(idx.len()) {
            let j = rng.random_range(i..idx.len());
            idx.swap(i, j);
        }
        idx.truncate(elements.min(base_full.len()));
        let analytic: Vec<f64> = idx.iter().map(|&i| analytic_full[i]).collect();
        let base: Vec<f64> = idx.iter().map(|&i| base_full[i]).collect();
        let name = graph.tensor(p).name.clone();
        checks.push(compare_with_step(&name, &analytic, &base, &mut rng, step, |sub| {
            let mut values = base_full.clone();
            for (k, &i) in idx.iter().enumerate() {
                values[i] = sub[k];
            }
            let mut run = fresh(&graph);
            run.set(p, values);
            run.run(forward_nodes.iter())?;
            Ok(run.get(loss).expect("loss computed")[0])
        })?);
    }
    Ok(checks)
}
