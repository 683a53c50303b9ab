//! A non-finite gradient skips the optimizer update inside the plan (as PyTorch's GradScaler
//! does): parameters and optimizer state stay bit-identical, the skip is counted, the count
//! survives save/resume, and the finite steps that follow train exactly as if the bad batch had
//! never been seen.

use pock::compiler::CompileOptions;
use pock::engine::plan::OptimizerKind;
use pock::engine::{Session, SessionOptions, Targets};

const MODEL: &str = "zoo:mlp:inputs=6,hidden=16,classes=3";
const BATCH: usize = 8;

type Batch = (Vec<f32>, Vec<i64>);

fn batches(n: usize, features: usize) -> Vec<Batch> {
    let data = pock::synth::blobs(n * BATCH, features, 3, 11);
    (0..n)
        .map(|b| {
            let idx: Vec<usize> = (b * BATCH..(b + 1) * BATCH).collect();
            let (mut x, mut y) = (vec![0.0; BATCH * features], vec![0; BATCH]);
            data.gather_x(&idx, &mut x);
            data.gather_labels(&idx, &mut y);
            (x, y)
        })
        .collect()
}

/// A copy of `b` whose first input element is `value` (inf or NaN), which makes every gradient
/// of the batch non-finite.
fn poisoned(b: &Batch, value: f32) -> Batch {
    let mut b = b.clone();
    b.0[0] = value;
    b
}

/// The bits of every tensor a checkpoint holds except the skip counter: parameters, optimizer
/// state, gradient accumulators.
fn state(s: &Session) -> Vec<(String, Vec<u32>)> {
    let names: Vec<String> = s
        .plan()
        .tensors
        .iter()
        .filter(|t| t.role.is_checkpointed() && t.role != pock::engine::plan::Role::SkippedUpdates)
        .map(|t| t.name.clone())
        .collect();
    assert!(names.len() >= 4, "the plan has parameters and state: {names:?}");
    names.into_iter().map(|n| (n.clone(), s.read_tensor(&n).unwrap().iter().map(|v| v.to_bits()).collect())).collect()
}

fn train(s: &mut Session, data: &[Batch]) -> Vec<u32> {
    data.iter().map(|(x, y)| s.train_step(x, Targets::Labels(y)).unwrap().to_bits()).collect()
}

/// Trains `good[..2]`, then `bad` (a whole optimizer step of micro-batches containing a
/// non-finite value), checks nothing changed and the counter grew by `per_skip`, saves, resumes
/// in a new session and trains `good[2..]`; the losses and the final state must equal those of a
/// session that only ever saw `good`.
fn skip_case(options: CompileOptions, bad: &[Batch], per_skip: u64) {
    let bytes = pock::compile_model(MODEL, BATCH, 1, options).unwrap().to_bytes();
    let opts = SessionOptions { threads: 1, reference_kernels: false, ..SessionOptions::default() };
    let k = Session::from_bytes(&bytes, opts).unwrap().plan().training.accumulate.max(1) as usize;
    let good = batches(4 * k, 6);

    let mut clean = Session::from_bytes(&bytes, opts).unwrap();
    let want_losses = train(&mut clean, &good);

    let mut s = Session::from_bytes(&bytes, opts).unwrap();
    let mut losses = train(&mut s, &good[..2 * k]);
    let (before, steps_before) = (state(&s), s.optimizer_steps());
    assert_eq!(s.skipped_updates().unwrap(), 0);
    train(&mut s, bad);
    assert_eq!(s.skipped_updates().unwrap(), per_skip, "one skipped step adds {per_skip}");
    assert_eq!(s.last_step_skipped(), per_skip);
    assert_eq!(s.optimizer_steps(), steps_before, "a wholly skipped step is not counted");
    assert!(state(&s) == before, "parameters and optimizer state are bit-identical after the skipped step");

    let dir = std::env::temp_dir().join(format!("pock-skip-{}-{:?}", std::process::id(), std::thread::current().id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ckpt = dir.join("ckpt.safetensors");
    s.save(&ckpt).unwrap();
    let mut resumed = Session::from_bytes(&bytes, opts).unwrap();
    resumed.resume(&ckpt).unwrap();
    assert_eq!(resumed.skipped_updates().unwrap(), per_skip, "the counter survives save/resume");

    losses.extend(train(&mut resumed, &good[2 * k..]));
    assert_eq!(losses, want_losses, "the finite steps after the skip train as if the bad batch was never seen");
    assert!(state(&resumed) == state(&clean));
    assert_eq!(resumed.last_step_skipped(), 0);
    assert_eq!(resumed.skipped_updates().unwrap(), per_skip);
    // Training did move the parameters.
    assert_ne!(want_losses.first(), want_losses.last());
    std::fs::remove_dir_all(&dir).ok();
}

fn sgd() -> OptimizerKind {
    // Dampening makes SGD's first step differ from the others, so counting the skipped step
    // would show.
    OptimizerKind::Sgd { momentum: 0.9, dampening: 0.1, nesterov: false, weight_decay: 1e-3 }
}

fn adam() -> OptimizerKind {
    OptimizerKind::Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 1e-3 }
}

fn poisoned_steps(k: usize, value: f32) -> Vec<Batch> {
    // One optimizer step of `k` micro-batches; only the last micro-batch is poisoned.
    let fine = batches(1, 6).remove(0);
    let mut out = vec![fine.clone(); k - 1];
    out.push(poisoned(&fine, value));
    out
}

fn trainable_parameters(options: CompileOptions) -> u64 {
    let plan = pock::compile_model(MODEL, BATCH, 1, options).unwrap();
    let s = Session::from_bytes(&plan.to_bytes(), SessionOptions::default()).unwrap();
    s.plan().tensors.iter().filter(|t| t.role == pock::engine::plan::Role::Parameter { trainable: true }).count() as u64
}

/// Without a gradient scale each update checks its own gradient and counts its own skip; an
/// infinite input makes every gradient non-finite, so all of them skip.
#[test]
fn per_parameter_skip_with_sgd() {
    let options = CompileOptions { optimizer: sgd(), learning_rate: 0.05, ..Default::default() };
    let n = trainable_parameters(options.clone());
    skip_case(options, &poisoned_steps(1, f32::INFINITY), n);
}

#[test]
fn per_parameter_skip_with_adam() {
    let options = CompileOptions { optimizer: adam(), learning_rate: 0.01, ..Default::default() };
    let n = trainable_parameters(options.clone());
    skip_case(options, &poisoned_steps(1, f32::INFINITY), n);
}

/// A NaN input is zeroed by the first ReLU, so only some gradients are non-finite: without a
/// gradient scale exactly those parameters keep their values (and their optimizer state), the
/// others are updated, and the step counts.
#[test]
fn partial_skip_leaves_only_the_non_finite_parameters_alone() {
    let options = CompileOptions { optimizer: adam(), learning_rate: 0.01, ..Default::default() };
    let n = trainable_parameters(options.clone());
    let bytes = pock::compile_model(MODEL, BATCH, 1, options).unwrap().to_bytes();
    let mut s = Session::from_bytes(&bytes, SessionOptions::default()).unwrap();
    let good = batches(2, 6);
    train(&mut s, &good);
    let before = state(&s);
    train(&mut s, &poisoned_steps(1, f32::NAN));
    let after = state(&s);
    let skipped = s.last_step_skipped();
    assert!(skipped > 0 && skipped < n, "{skipped} of {n} updates skipped");
    assert_eq!(s.optimizer_steps(), 3, "a partly skipped step counts");
    let params: Vec<String> = s
        .plan()
        .tensors
        .iter()
        .filter(|t| t.role == pock::engine::plan::Role::Parameter { trainable: true })
        .map(|t| t.name.clone())
        .collect();
    let unchanged = params.iter().filter(|p| before.iter().zip(&after).any(|(b, a)| &b.0 == *p && b == a)).count() as u64;
    assert_eq!(unchanged, skipped, "exactly the skipped parameters kept their values");
    assert!(after.iter().all(|(_, v)| v.iter().all(|&b| f32::from_bits(b).is_finite())), "nothing became non-finite");
}

/// With `--clip-grad-norm` the global norm decides for the whole step: one skip per step.
#[test]
fn clipped_step_is_skipped_as_a_whole_with_adam() {
    let options = CompileOptions { optimizer: adam(), learning_rate: 0.01, clip_grad_norm: Some(0.5), ..Default::default() };
    skip_case(options, &poisoned_steps(1, f32::INFINITY), 1);
}

#[test]
fn clipped_step_is_skipped_as_a_whole_with_sgd() {
    let options = CompileOptions { optimizer: sgd(), learning_rate: 0.05, clip_grad_norm: Some(0.5), ..Default::default() };
    skip_case(options, &poisoned_steps(1, f32::NAN), 1);
}

/// With accumulation one poisoned micro-batch skips its whole window, and the accumulators are
/// still zeroed for the next one.
#[test]
fn accumulated_window_is_skipped_as_a_whole() {
    let options = CompileOptions { optimizer: adam(), learning_rate: 0.01, accumulate: 2, ..Default::default() };
    skip_case(options, &poisoned_steps(2, f32::INFINITY), 1);
}

/// The plan still consumes each gradient as soon as it is complete: the skip counters do not
/// chain the updates behind one another.
#[test]
fn updates_still_follow_their_gradients() {
    let options = CompileOptions { optimizer: adam(), learning_rate: 0.01, ..Default::default() };
    let plan = pock::compile_model(MODEL, BATCH, 1, options).unwrap().to_bytes();
    let s = Session::from_bytes(&plan, SessionOptions::default()).unwrap();
    let names: Vec<&str> = s.plan().programs.train.nodes.iter().map(|n| n.name.as_str()).collect();
    let last_backward = names.iter().rposition(|n| !n.starts_with("update.") && !n.starts_with("count_skipped.")).unwrap();
    for kind in ["update.", "count_skipped."] {
        let first = names.iter().position(|n| n.starts_with(kind)).unwrap();
        assert!(first < last_backward, "a {kind} node runs before the backward pass ends: {names:?}");
    }
}
