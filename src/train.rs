//! Training, evaluation and prediction over whole datasets, on top of [`Session`].
//!
//! Batching policy: training uses full batches only; the last partial batch of each epoch is
//! dropped (the caller is told how many samples that is). Evaluation and inference pad the last
//! batch by repeating its final row and discard the padded results.

use std::time::Instant;

use pock_engine::plan::Loss;
use pock_engine::{Session, Targets};

use crate::data::{Dataset, TargetKind};
use crate::error::PockError;
use crate::schedule::LrSchedule;

#[derive(Clone, Debug)]
pub struct TrainConfig {
    pub epochs: u64,
    /// Seed of the per-epoch shuffling.
    pub seed: u64,
    pub base_lr: f32,
    pub schedule: LrSchedule,
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
}

#[derive(Clone, Debug)]
pub struct TrainSummary {
    pub steps: u64,
    pub steps_per_epoch: u64,
    pub dropped_per_epoch: usize,
    /// Mean training loss of each epoch of this run.
    pub epoch_losses: Vec<f64>,
    pub mean_ms: f64,
}

/// What a plan expects of a dataset.
pub fn target_kind(session: &Session) -> TargetKind {
    match session.plan().training.loss {
        Loss::SoftmaxCrossEntropy { classes } => TargetKind::Labels { classes },
        Loss::Mse => TargetKind::Values { shape: session.output_shape()[1..].to_vec() },
    }
}

/// Checks a dataset against a session's plan (sample shape; targets when `need_targets`).
pub fn check_data(session: &Session, data: &Dataset, need_targets: bool) -> Result<(), PockError> {
    let kind = target_kind(session);
    data.check(&session.input_shape()[1..], need_targets.then_some(&kind))?;
    Ok(())
}

/// Gathers a batch's inputs and targets into reusable buffers.
struct BatchBuffers {
    x: Vec<f32>,
    labels: Vec<i64>,
    values: Vec<f32>,
}

impl BatchBuffers {
    fn new(session: &Session) -> Self {
        let batch = session.batch();
        let per_sample: usize = session.input_shape()[1..].iter().product();
        let per_target: usize = session.output_shape()[1..].iter().product();
        BatchBuffers { x: vec![0.0; batch * per_sample], labels: vec![0; batch], values: vec![0.0; batch * per_target] }
    }

    fn fill(&mut self, data: &Dataset, idx: &[usize], kind: &TargetKind) {
        data.gather_x(idx, &mut self.x);
        match kind {
            TargetKind::Labels { .. } => data.gather_labels(idx, &mut self.labels),
            TargetKind::Values { .. } => data.gather_values(idx, &mut self.values),
        }
    }

    fn targets(&self, kind: &TargetKind) -> Targets<'_> {
        match kind {
            TargetKind::Labels { .. } => Targets::Labels(&self.labels),
            TargetKind::Values { .. } => Targets::Values(&self.values),
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

/// Trains for `cfg.epochs` epochs, continuing from the session's counters (after a resume, the
/// epoch numbering and the shuffling continue where they stopped).
pub fn train(
    session: &mut Session,
    data: &Dataset,
    cfg: &TrainConfig,
    on_step: impl FnMut(&StepRecord),
) -> Result<TrainSummary, PockError> {
    train_epochs(session, data, cfg, on_step, |_, _| Ok(()))
}

/// [`train`] with a callback after every epoch that is lent the session (to evaluate, say).
pub fn train_epochs(
    session: &mut Session,
    data: &Dataset,
    cfg: &TrainConfig,
    mut on_step: impl FnMut(&StepRecord),
    mut on_epoch: impl FnMut(&mut Session, &EpochRecord) -> Result<(), PockError>,
) -> Result<TrainSummary, PockError> {
    check_data(session, data, true)?;
    let batch = session.batch();
    let steps_per_epoch = data.train_batches(batch) as u64;
    if steps_per_epoch == 0 {
        return Err(PockError::Usage(format!(
            "the dataset has {} samples, fewer than one batch of {batch}; use more data or compile with a smaller --batch",
            data.len()
        )));
    }
    let k = session.plan().training.accumulate as u64;
    let kind = target_kind(session);
    let mut buffers = BatchBuffers::new(session);
    let start_epoch = session.micro_steps() / steps_per_epoch;
    let run_end = session.optimizer_steps() + cfg.epochs * steps_per_epoch / k;
    let mut epoch_losses = Vec::new();
    let (mut total_ms, mut steps) = (0.0, 0u64);
    for epoch in start_epoch..start_epoch + cfg.epochs {
        let order = data.epoch_order(cfg.seed, epoch);
        let (mut sum, mut epoch_ms) = (0.0f64, 0.0f64);
        for b in 0..steps_per_epoch as usize {
            let idx = &order[b * batch..(b + 1) * batch];
            let lr = cfg.schedule.rate(cfg.base_lr, session.optimizer_steps(), run_end);
            session.set_learning_rate(lr);
            let started = Instant::now();
            buffers.fill(data, idx, &kind);
            let loss = session.train_step(&buffers.x, buffers.targets(&kind))?;
            let ms = started.elapsed().as_secs_f64() * 1e3;
            if !loss.is_finite() {
                return Err(PockError::Diverged { step: session.micro_steps(), loss });
            }
            sum += loss as f64;
            epoch_ms += ms;
            steps += 1;
            on_step(&StepRecord { step: session.micro_steps(), optimizer_step: session.optimizer_steps(), epoch, loss, lr, ms });
        }
        total_ms += epoch_ms;
        let record = EpochRecord { epoch, mean_loss: sum / steps_per_epoch as f64, ms_per_step: epoch_ms / steps_per_epoch as f64 };
        epoch_losses.push(record.mean_loss);
        on_epoch(session, &record)?;
    }
    Ok(TrainSummary {
        steps,
        steps_per_epoch,
        dropped_per_epoch: data.len() % batch,
        epoch_losses,
        mean_ms: total_ms / steps.max(1) as f64,
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
    let mut buffers = BatchBuffers::new(session);
    let (mut loss_sum, mut correct) = (0.0f64, 0usize);
    for (idx, valid) in padded_batches(data.len(), batch) {
        buffers.fill(data, &idx, &kind);
        session.eval_batch(&buffers.x, buffers.targets(&kind), &mut outputs, &mut losses)?;
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
    let per_sample: usize = session.input_shape()[1..].iter().product();
    let mut x = vec![0.0f32; batch * per_sample];
    let mut outputs = vec![0.0f32; batch * out_per];
    let mut all = Vec::with_capacity(data.len() * out_per);
    for (idx, valid) in padded_batches(data.len(), batch) {
        data.gather_x(&idx, &mut x);
        session.infer(&x, &mut outputs)?;
        all.extend_from_slice(&outputs[..valid * out_per]);
    }
    let mut shape = out_shape;
    shape[0] = data.len();
    Ok((all, shape))
}
