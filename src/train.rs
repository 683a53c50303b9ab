//! Training, evaluation and prediction over whole datasets, on top of [`Session`].
//!
//! Batching policy: training uses full batches only; the last partial batch of each epoch is
//! dropped (the caller is told how many samples that is). Evaluation and inference pad the last
//! batch by repeating its final row and discard the padded results.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use pock_engine::plan::Loss;
use pock_engine::{Input, Session, Targets};

use crate::data::{ColumnValues, Dataset, InputSpec, TargetKind};
use crate::error::PockError;
use crate::schedule::LrSchedule;

#[derive(Clone, Debug)]
pub struct TrainConfig {
    pub epochs: u64,
    /// Seed of the per-epoch shuffling.
    pub seed: u64,
    pub base_lr: f32,
    pub schedule: LrSchedule,
    /// The optimizer step at which the schedule's run ends (the cosine horizon when the schedule
    /// names no `total`); `None`: the end of this run. A resumed run that was interrupted passes
    /// the original run's end so the schedule continues exactly.
    pub schedule_end: Option<u64>,
    pub divergence: DivergenceGuard,
    /// Set (by a signal handler, say) to stop after the current step; the run then returns
    /// normally with [`TrainSummary::interrupted`] set.
    pub stop: Option<Arc<AtomicBool>>,
}

impl TrainConfig {
    pub fn new(epochs: u64, seed: u64, base_lr: f32, schedule: LrSchedule) -> Self {
        TrainConfig { epochs, seed, base_lr, schedule, schedule_end: None, divergence: DivergenceGuard::default(), stop: None }
    }
}

/// When a run counts as diverged and stops.
#[derive(Clone, Copy, Debug)]
pub struct DivergenceGuard {
    /// Stop when a loss exceeds this multiple of the median loss of the first epoch of the run
    /// (of its first [`REFERENCE_STEPS`] steps at most). Until that epoch ends, the median of its
    /// steps so far is used, from the second step on: a run that explodes does so in its first
    /// steps, and a median taken after the explosion would excuse it. `None` turns the check off.
    pub growth: Option<f64>,
    /// Stop after this many consecutive non-finite losses.
    pub nonfinite_steps: u32,
}

/// Losses of the first epoch that form the divergence reference, at most.
pub const REFERENCE_STEPS: usize = 1000;

impl Default for DivergenceGuard {
    fn default() -> Self {
        // The plan skips the updates of a non-finite gradient, so a single bad batch leaves the
        // parameters intact; three non-finite losses in a row mean a dead run, not a bad batch.
        DivergenceGuard { growth: Some(100.0), nonfinite_steps: 3 }
    }
}

/// Tracks the losses of a run against [`DivergenceGuard`].
struct DivergenceWatch {
    guard: DivergenceGuard,
    reference: Vec<f32>,
    reference_complete: bool,
    median: Option<f32>,
    nonfinite_streak: u32,
}

impl DivergenceWatch {
    fn new(guard: DivergenceGuard, steps_per_epoch: u64) -> Self {
        let cap = REFERENCE_STEPS.min(steps_per_epoch as usize);
        DivergenceWatch { guard, reference: Vec::with_capacity(cap), reference_complete: false, median: None, nonfinite_streak: 0 }
    }

    /// Freezes the reference at the end of the run's first epoch.
    fn end_first_epoch(&mut self) {
        self.reference_complete = true;
    }

    /// Returns why the run diverged, if it did.
    fn check(&mut self, loss: f32) -> Option<String> {
        if !loss.is_finite() {
            self.nonfinite_streak += 1;
            return (self.nonfinite_streak >= self.guard.nonfinite_steps.max(1))
                .then(|| format!("the loss has not been a finite number for {} consecutive steps", self.nonfinite_streak));
        }
        self.nonfinite_streak = 0;
        let growth = self.guard.growth?;
        if let Some(median) = self.median {
            if median > 0.0 && loss as f64 > growth * median as f64 {
                return Some(format!("the loss grew past {growth} times the first epoch's median loss {median:.4}"));
            }
        }
        if !self.reference_complete && self.reference.len() < self.reference.capacity() {
            self.reference.push(loss);
            let mut sorted = self.reference.clone();
            sorted.sort_by(f32::total_cmp);
            self.median = Some(sorted[sorted.len() / 2]);
        }
        None
    }
}

/// One training step, as reported to the caller (and written by `--log-json`).
#[derive(Clone, Debug, serde::Serialize)]
pub struct StepRecord {
    /// Micro-batches trained so far, this one included.
    pub step: u64,
    /// Optimizer steps taken so far.
    pub optimizer_step: u64,
    pub epoch: u64,
    pub loss: f32,
    pub lr: f32,
    pub ms: f64,
    /// Parameter updates this step skipped because a gradient was not finite (see
    /// `Session::skipped_updates`), and the total skipped so far, checkpointed runs included.
    pub skipped: u64,
    pub skipped_updates: u64,
    /// This step's loss ends the run as diverged (the step is still reported, to be logged).
    #[serde(skip)]
    pub diverging: bool,
}

#[derive(Clone, Debug)]
pub struct TrainSummary {
    pub steps: u64,
    pub steps_per_epoch: u64,
    pub dropped_per_epoch: usize,
    /// Mean training loss of each epoch of this run.
    pub epoch_losses: Vec<f64>,
    pub mean_ms: f64,
    /// The run stopped early because [`TrainConfig::stop`] was set.
    pub interrupted: bool,
    /// Micro-batches trained before this run, and the micro-batch at which it was to end.
    pub start_step: u64,
    pub end_step: u64,
    /// The optimizer step at which the schedule's run ends (see [`TrainConfig::schedule_end`]).
    pub schedule_end: u64,
    /// Parameter updates skipped on non-finite gradients, over the whole training (resumed runs
    /// included, as the counter is checkpointed).
    pub skipped_updates: u64,
}

/// What a plan expects of a dataset.
pub fn target_kind(session: &Session) -> TargetKind {
    match session.plan().training.loss {
        Loss::SoftmaxCrossEntropy { classes } if session.target_shape().len() >= 2 => TargetKind::PositionLabels {
            classes,
            shape: session.target_shape()[1..].to_vec(),
            ignore_index: session.ignore_index().unwrap_or(pock_engine::ops::CrossEntropy::DEFAULT_IGNORE_INDEX),
        },
        Loss::SoftmaxCrossEntropy { classes } => TargetKind::Labels { classes },
        Loss::Mse => TargetKind::Values { shape: session.output_shape()[1..].to_vec() },
    }
}

/// Whether the plan reads a zoo-style file's one float array `x` (one float input, one label or
/// target row per sample); otherwise it reads one array per input ([`input_specs`]).
pub fn reads_x(session: &Session) -> bool {
    let mut inputs = session.inputs();
    let one_float = inputs.len() == 1 && inputs.next().is_some_and(|t| t.dtype == pock_engine::plan::DType::F32);
    one_float && !matches!(target_kind(session), TargetKind::PositionLabels { .. })
}

/// The data inputs a plan expects, in its order.
pub fn input_specs(session: &Session) -> Vec<InputSpec> {
    session.inputs().map(|t| InputSpec { name: t.name.clone(), dtype: t.dtype, sample_shape: t.shape[1..].to_vec() }).collect()
}

/// Loads an `.npz` as the plan reads it: `x` ([`Dataset::load_npz`]) or one array per input
/// ([`Dataset::load_npz_inputs`]).
pub fn load_for(session: &Session, path: &std::path::Path) -> Result<Dataset, PockError> {
    Ok(if reads_x(session) { Dataset::load_npz(path)? } else { Dataset::load_npz_inputs(path, &input_specs(session))? })
}

/// Checks a dataset against a session's plan (sample shape; targets when `need_targets`).
pub fn check_data(session: &Session, data: &Dataset, need_targets: bool) -> Result<(), PockError> {
    let kind = target_kind(session);
    if !data.inputs.is_empty() {
        data.check_inputs(&input_specs(session))?;
    } else if !reads_x(session) {
        let names: Vec<String> = input_specs(session).into_iter().map(|s| s.name).collect();
        return Err(PockError::Usage(format!(
            "the plan reads the arrays {} (one per input), but the dataset holds only x; load it with Dataset::load_npz_inputs",
            names.join(", ")
        )));
    }
    data.check(&session.input_shape()[1..], need_targets.then_some(&kind))?;
    Ok(())
}

/// Gathers a batch's inputs and targets into reusable buffers.
struct BatchBuffers {
    x: Vec<f32>,
    /// One buffer per named input (a plan read through [`Dataset::load_npz_inputs`]).
    columns: Vec<ColumnValues>,
    names: Vec<String>,
    labels: Vec<i64>,
    values: Vec<f32>,
}

impl BatchBuffers {
    fn new(session: &Session, data: &Dataset) -> Self {
        let batch = session.batch();
        let per_target: usize = session.output_shape()[1..].iter().product();
        let per_label: usize = session.target_shape()[1..].iter().product();
        let (mut x, mut columns, mut names) = (Vec::new(), Vec::new(), Vec::new());
        if data.inputs.is_empty() {
            x = vec![0.0; session.inputs().next().map_or(0, |t| t.numel())];
        } else {
            for t in session.inputs() {
                // Dtypes are checked when the session loads the plan: f32, i64 or bool.
                columns.push(ColumnValues::zeros(t.dtype, t.numel()).expect("plan inputs are float32, int64 or bool"));
                names.push(t.name.clone());
            }
        }
        BatchBuffers { x, columns, names, labels: vec![0; batch * per_label.max(1)], values: vec![0.0; batch * per_target] }
    }

    fn fill(&mut self, data: &Dataset, idx: &[usize], kind: Option<&TargetKind>) {
        if self.columns.is_empty() {
            data.gather_x(idx, &mut self.x);
        }
        // Every array is gathered with the same indices, so a shuffled batch keeps ids, masks
        // and labels of one sample together.
        for (i, column) in self.columns.iter_mut().enumerate() {
            data.gather_column(i, idx, column);
        }
        match kind {
            Some(TargetKind::Labels { .. } | TargetKind::PositionLabels { .. }) => data.gather_labels(idx, &mut self.labels),
            Some(TargetKind::Values { .. }) => data.gather_values(idx, &mut self.values),
            None => {}
        }
    }

    fn targets(&self, kind: &TargetKind) -> Targets<'_> {
        match kind {
            TargetKind::Labels { .. } | TargetKind::PositionLabels { .. } => Targets::Labels(&self.labels),
            TargetKind::Values { .. } => Targets::Values(&self.values),
        }
    }

    /// The named inputs for the Session (a small list per step, outside the Session's
    /// allocation-free step).
    fn inputs(&self) -> Vec<(&str, Input<'_>)> {
        self.names.iter().map(String::as_str).zip(self.columns.iter().map(ColumnValues::as_input)).collect()
    }

    fn train(&self, session: &mut Session, kind: &TargetKind) -> Result<f32, pock_engine::SessionError> {
        if self.columns.is_empty() {
            session.train_step(&self.x, self.targets(kind))
        } else {
            session.train_step_inputs(&self.inputs(), self.targets(kind))
        }
    }

    /// [`Session::train_step_queued`]: `true` when the losses of the queued steps came back (then
    /// in `losses`).
    fn train_queued(&self, session: &mut Session, kind: &TargetKind, losses: &mut Vec<f32>) -> Result<bool, pock_engine::SessionError> {
        let name = session.inputs().next().map(|t| t.name.clone()).unwrap_or_default();
        let inputs = if self.columns.is_empty() { vec![(name.as_str(), Input::F32(&self.x))] } else { self.inputs() };
        match session.train_step_queued(&inputs, self.targets(kind))? {
            Some(l) => {
                losses.clear();
                losses.extend_from_slice(l);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn eval(
        &self,
        session: &mut Session,
        kind: &TargetKind,
        outputs: &mut [f32],
        losses: &mut [f32],
    ) -> Result<(), pock_engine::SessionError> {
        if self.columns.is_empty() {
            session.eval_batch(&self.x, self.targets(kind), outputs, losses)
        } else {
            session.eval_batch_inputs(&self.inputs(), self.targets(kind), outputs, losses)
        }
    }

    fn infer(&self, session: &mut Session, outputs: &mut [f32]) -> Result<(), pock_engine::SessionError> {
        if self.columns.is_empty() {
            session.infer(&self.x, outputs)
        } else {
            session.infer_inputs(&self.inputs(), outputs)
        }
    }
}

/// The end of one epoch, as reported to [`train_epochs`]' callback.
#[derive(Clone, Debug)]
pub struct EpochRecord {
    pub epoch: u64,
    pub mean_loss: f64,
    pub ms_per_step: f64,
}

/// Where a run starts and ends, in micro-batches, and how many optimizer steps it takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunSpan {
    pub steps_per_epoch: u64,
    pub start_step: u64,
    pub end_step: u64,
    pub optimizer_steps: u64,
}

/// The span of a run of `epochs` epochs from the session's counters: a run that resumes in the
/// middle of an epoch finishes that epoch as the first of its `epochs`, so the same command with
/// `--resume` ends where the interrupted run would have. Errors when the run would take no
/// optimizer step.
pub fn run_span(session: &Session, data_len: usize, epochs: u64) -> Result<RunSpan, PockError> {
    let batch = session.batch();
    let steps_per_epoch = (data_len / batch) as u64;
    if steps_per_epoch == 0 {
        return Err(PockError::Usage(format!(
            "the dataset has {data_len} samples, fewer than one batch of {batch}; use more data or compile with a smaller --batch"
        )));
    }
    if epochs == 0 {
        return Err(PockError::Usage("--epochs 0 trains nothing; give at least 1".into()));
    }
    let start_step = session.micro_steps();
    let end_step = (start_step / steps_per_epoch)
        .checked_add(epochs)
        .and_then(|e| e.checked_mul(steps_per_epoch))
        .ok_or_else(|| PockError::Usage(format!("--epochs {epochs} is too large to count steps for")))?;
    let k = session.plan().training.accumulate.max(1) as u64;
    let optimizer_steps = end_step / k - start_step / k;
    if optimizer_steps == 0 {
        return Err(PockError::Usage(format!(
            "this run would take no optimizer step: {} micro-batches of {batch} ({epochs} epoch(s) of {steps_per_epoch}) is fewer than the {k} the plan accumulates per step; train for more epochs, use more data, or compile with a smaller --accumulate",
            end_step - start_step
        )));
    }
    Ok(RunSpan { steps_per_epoch, start_step, end_step, optimizer_steps })
}

/// Runs the Train program on the first `batches` full batches of `data` in file order (no
/// shuffling), calling `after` with the session after each, and returns their losses: the
/// calibration pass of `pock scheme`, which compiles its analysis plan with gradient accumulation
/// so that these steps only sum gradients.
pub fn run_batches(
    session: &mut Session,
    data: &Dataset,
    batches: usize,
    mut after: impl FnMut(&Session) -> Result<(), PockError>,
) -> Result<Vec<f32>, PockError> {
    check_data(session, data, true)?;
    let batch = session.batch();
    if batches == 0 || data.len() / batch < batches {
        return Err(PockError::Usage(format!(
            "the data has {} samples, {} full batches of {batch}; {batches} are needed (give more data or fewer batches)",
            data.len(),
            data.len() / batch
        )));
    }
    let kind = target_kind(session);
    let mut buffers = BatchBuffers::new(session, data);
    let mut losses = Vec::with_capacity(batches);
    for b in 0..batches {
        let idx: Vec<usize> = (b * batch..(b + 1) * batch).collect();
        buffers.fill(data, &idx, Some(&kind));
        losses.push(buffers.train(session, &kind)?);
        after(session)?;
    }
    Ok(losses)
}

/// Trains for `cfg.epochs` epochs, continuing from the session's counters (after a resume, the
/// epoch numbering and the shuffling continue where they stopped).
pub fn train(
    session: &mut Session,
    data: &Dataset,
    cfg: &TrainConfig,
    mut on_step: impl FnMut(&StepRecord),
) -> Result<TrainSummary, PockError> {
    train_epochs(
        session,
        data,
        cfg,
        |_, r| {
            on_step(r);
            Ok(())
        },
        |_, _| Ok(()),
    )
}

/// [`train`] with callbacks lent the session after every step (to checkpoint, say) and after
/// every epoch (to evaluate).
pub fn train_epochs(
    session: &mut Session,
    data: &Dataset,
    cfg: &TrainConfig,
    mut on_step: impl FnMut(&mut Session, &StepRecord) -> Result<(), PockError>,
    mut on_epoch: impl FnMut(&mut Session, &EpochRecord) -> Result<(), PockError>,
) -> Result<TrainSummary, PockError> {
    check_data(session, data, true)?;
    let span = run_span(session, data.len(), cfg.epochs)?;
    let batch = session.batch();
    let steps_per_epoch = span.steps_per_epoch;
    let k = session.plan().training.accumulate.max(1) as u64;
    let schedule_end = cfg.schedule_end.unwrap_or(span.end_step / k);
    let kind = target_kind(session);
    let mut buffers = BatchBuffers::new(session, data);
    let mut watch = DivergenceWatch::new(cfg.divergence, steps_per_epoch);
    let mut epoch_losses = Vec::new();
    let (mut total_ms, mut steps, mut interrupted) = (0.0, 0u64, false);
    let mut step = span.start_step;
    let every = session.loss_every();
    let (mut window, mut arrived_losses) = (Vec::with_capacity(every), Vec::with_capacity(every));
    'epochs: while step < span.end_step {
        let epoch = step / steps_per_epoch;
        let order = data.epoch_order(cfg.seed, epoch);
        let (mut sum, mut epoch_ms, mut epoch_steps) = (0.0f64, 0.0f64, 0u64);
        for b in (step % steps_per_epoch) as usize..steps_per_epoch as usize {
            let idx = &order[b * batch..(b + 1) * batch];
            let lr = cfg.schedule.rate(cfg.base_lr, session.optimizer_steps(), schedule_end);
            if !lr.is_finite() || lr < 0.0 {
                return Err(PockError::LearningRate {
                    step: session.micro_steps() + 1,
                    lr,
                    detail: format!("from base rate {} and schedule {}", cfg.base_lr, cfg.schedule),
                });
            }
            session.set_learning_rate(lr);
            let started = Instant::now();
            buffers.fill(data, idx, Some(&kind));
            if every > 1 {
                // Batched loss reads: the losses come back every `every` steps, at the end of an
                // epoch and of the run; each is then accounted for as below.
                let mut arrived = buffers.train_queued(session, &kind, &mut arrived_losses)?;
                let ms = started.elapsed().as_secs_f64() * 1e3;
                step += 1;
                window.push((lr, ms));
                let stopping = cfg.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst));
                if !arrived && (b + 1 == steps_per_epoch as usize || step == span.end_step || stopping) {
                    arrived_losses.clear();
                    arrived_losses.extend_from_slice(session.flush_losses()?);
                    arrived = true;
                }
                if arrived {
                    let n = window.len() as u64;
                    let window_ms: f64 = window.iter().map(|w| w.1).sum();
                    for (j, &(lr, _)) in window.iter().enumerate() {
                        let loss = arrived_losses[j];
                        let (skipped, skipped_updates) = session.queued_step_skips(j);
                        let mut record = StepRecord {
                            step: session.micro_steps() + 1 + j as u64 - n,
                            optimizer_step: session.optimizer_steps(),
                            epoch,
                            loss,
                            lr,
                            ms: window_ms / n as f64,
                            skipped,
                            skipped_updates,
                            diverging: false,
                        };
                        if let Some(reason) = watch.check(loss) {
                            record.diverging = true;
                            on_step(session, &record)?;
                            return Err(PockError::Diverged { step: record.step, loss, lr, reason });
                        }
                        sum += loss as f64;
                        epoch_ms += record.ms;
                        epoch_steps += 1;
                        steps += 1;
                        on_step(session, &record)?;
                    }
                    window.clear();
                    if stopping {
                        total_ms += epoch_ms;
                        interrupted = true;
                        break 'epochs;
                    }
                }
                continue;
            }
            let loss = buffers.train(session, &kind)?;
            let ms = started.elapsed().as_secs_f64() * 1e3;
            step += 1;
            let mut record = StepRecord {
                step: session.micro_steps(),
                optimizer_step: session.optimizer_steps(),
                epoch,
                loss,
                lr,
                ms,
                skipped: session.last_step_skipped(),
                skipped_updates: session.skipped_updates()?,
                diverging: false,
            };
            if let Some(reason) = watch.check(loss) {
                record.diverging = true;
                on_step(session, &record)?;
                return Err(PockError::Diverged { step: session.micro_steps(), loss, lr, reason });
            }
            sum += loss as f64;
            epoch_ms += ms;
            epoch_steps += 1;
            steps += 1;
            on_step(session, &record)?;
            if cfg.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst)) {
                total_ms += epoch_ms;
                interrupted = true;
                break 'epochs;
            }
        }
        watch.end_first_epoch();
        total_ms += epoch_ms;
        let record = EpochRecord { epoch, mean_loss: sum / epoch_steps as f64, ms_per_step: epoch_ms / epoch_steps as f64 };
        epoch_losses.push(record.mean_loss);
        on_epoch(session, &record)?;
    }
    Ok(TrainSummary {
        steps,
        steps_per_epoch,
        dropped_per_epoch: data.len() % batch,
        epoch_losses,
        mean_ms: total_ms / steps.max(1) as f64,
        interrupted,
        start_step: span.start_step,
        end_step: span.end_step,
        schedule_end,
        skipped_updates: session.skipped_updates()?,
    })
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct EvalReport {
    /// Mean loss over all samples.
    pub loss: f64,
    /// Fraction of correctly classified samples (classifiers only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    pub samples: usize,
}

/// Batches `0..n` in order, the last one padded (see [`crate::data::eval_batch`]).
fn padded_batches(n: usize, batch: usize) -> impl Iterator<Item = (Vec<usize>, usize)> {
    (0..crate::data::eval_batches(n, batch)).map(move |b| crate::data::eval_batch(n, batch, b))
}

/// Loss (and accuracy for classifiers) over a whole dataset, with frozen statistics.
pub fn evaluate(session: &mut Session, data: &Dataset) -> Result<EvalReport, PockError> {
    check_data(session, data, true)?;
    if data.is_empty() {
        return Err(PockError::Usage("the dataset is empty".into()));
    }
    let kind = target_kind(session);
    let batch = session.batch();
    let out_per: usize = session.output_shape()[1..].iter().product();
    let mut outputs = vec![0.0f32; batch * out_per];
    let mut losses = vec![0.0f32; batch];
    let mut buffers = BatchBuffers::new(session, data);
    let (mut loss_sum, mut correct) = (0.0f64, 0usize);
    for (idx, valid) in padded_batches(data.len(), batch) {
        buffers.fill(data, &idx, Some(&kind));
        buffers.eval(session, &kind, &mut outputs, &mut losses)?;
        loss_sum += losses[..valid].iter().map(|&l| l as f64).sum::<f64>();
        if let TargetKind::Labels { .. } = kind {
            for (row, &label) in buffers.labels[..valid].iter().enumerate() {
                let logits = &outputs[row * out_per..(row + 1) * out_per];
                let best = logits.iter().enumerate().fold(0, |b, (i, &v)| if v > logits[b] { i } else { b });
                correct += (best as i64 == label) as usize;
            }
        }
    }
    let n = data.len();
    let accuracy = matches!(kind, TargetKind::Labels { .. }).then(|| correct as f64 / n as f64);
    Ok(EvalReport { loss: loss_sum / n as f64, accuracy, samples: n })
}

/// The model's outputs for every sample: `(values, shape)` with shape `[N, ...]`.
pub fn predict(session: &mut Session, data: &Dataset) -> Result<(Vec<f32>, Vec<usize>), PockError> {
    check_data(session, data, false)?;
    let batch = session.batch();
    let out_shape = session.output_shape().to_vec();
    let out_per: usize = out_shape[1..].iter().product();
    let mut buffers = BatchBuffers::new(session, data);
    let mut outputs = vec![0.0f32; batch * out_per];
    let mut all = Vec::with_capacity(data.len() * out_per);
    for (idx, valid) in padded_batches(data.len(), batch) {
        buffers.fill(data, &idx, None);
        buffers.infer(session, &mut outputs)?;
        all.extend_from_slice(&outputs[..valid * out_per]);
    }
    let mut shape = out_shape;
    shape[0] = data.len();
    Ok((all, shape))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first_stop(guard: DivergenceGuard, steps_per_epoch: u64, losses: &[f32]) -> Option<(usize, String)> {
        let mut w = DivergenceWatch::new(guard, steps_per_epoch);
        for (i, &l) in losses.iter().enumerate() {
            if i as u64 == steps_per_epoch {
                w.end_first_epoch();
            }
            if let Some(reason) = w.check(l) {
                return Some((i, reason));
            }
        }
        None
    }

    #[test]
    fn an_exploding_loss_stops_at_its_first_jump() {
        // zoo:cnn at --lr 1e6: 1.43, then 1.9e9.
        let (i, reason) = first_stop(DivergenceGuard::default(), 16, &[1.43, 1.9e9, 3.5e18]).unwrap();
        assert_eq!(i, 1);
        assert!(reason.contains("100 times the first epoch's median loss 1.43"), "{reason}");
    }

    #[test]
    fn ordinary_training_does_not_stop() {
        // Decreasing with noise, and later epochs far below the first epoch's median.
        let losses: Vec<f32> = (0..200).map(|i| 2.3 / (1.0 + i as f32 * 0.1) * if i % 7 == 0 { 3.0 } else { 1.0 }).collect();
        assert_eq!(first_stop(DivergenceGuard::default(), 20, &losses), None);
    }

    #[test]
    fn growth_after_the_first_epoch_is_judged_against_its_median() {
        let mut losses = vec![1.0f32; 10];
        losses.extend([50.0, 99.0, 101.0]);
        let (i, _) = first_stop(DivergenceGuard::default(), 10, &losses).unwrap();
        assert_eq!(i, 12);
        assert_eq!(first_stop(DivergenceGuard { growth: None, ..Default::default() }, 10, &losses), None);
    }

    #[test]
    fn non_finite_losses_stop_after_k_in_a_row() {
        let g = DivergenceGuard { growth: None, nonfinite_steps: 3 };
        assert_eq!(first_stop(g, 10, &[1.0, f32::NAN, f32::NAN, 1.0, f32::NAN, f32::NAN]), None);
        let (i, reason) = first_stop(g, 10, &[1.0, f32::NAN, f32::INFINITY, f32::NAN]).unwrap();
        assert_eq!(i, 3);
        assert!(reason.contains("3 consecutive steps"), "{reason}");
    }
}
