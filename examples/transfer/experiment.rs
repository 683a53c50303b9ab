//! The transfer experiment of issue 7, shared by `examples/transfer` and `tests/transfer.rs`:
//! pretrain a zoo model (zoo:cnn in the test, zoo:mobilenetv2 with `--mobilenetv2`) on
//! `synth::shapes` (distribution A) with BatchNorm in training mode, then fine-tune copies of it
//! on `synth::shifted_shapes` (distribution B: four new shapes made of the same strokes, lower
//! contrast, more noise) with the full, bias-only and paper-like update schemes in two
//! configurations sharing that pretraining: "BatchNorm training" (`--batch-norm train`, full at
//! one rate and the sparse schemes at another, as before folding became the default) and the
//! "folded default" (frozen statistics folded into the conv, one rate for all three); and once
//! more from random weights (BatchNorm training) to show what pretraining brings.
//!
//! Fine-tuned plans are compiled from the pretrained checkpoint (`pock::compile_model_from`), so
//! their frozen parameters, which live in the plan's weight section, are the pretrained ones.

use std::path::Path;
use std::time::Instant;

use pock::compiler::stages::BatchNormMode;
use pock::compiler::{ChannelRule, ChannelSelect, CompileOptions, UpdatePreset, UpdateScheme};
use pock::engine::plan::OptimizerKind;
use pock::engine::{Session, SessionOptions};
use pock::schedule::LrSchedule;
use pock::train::{evaluate, train, TrainConfig};
use pock::PockError;

/// The paper-like scheme for MobileNetV2 (PockEngine / TTE): the biases of blocks 7 onward (the
/// folded BatchNorm shifts, as the zoo's convolutions have no bias; the head conv `features.18`
/// included), the classifier, and ([`MOBILENETV2_PAPER_CHANNELS`]) a quarter of the output
/// channels of the first pointwise (expansion) conv of blocks 14 to 17, as
/// `examples/schemes/mobilenetv2-paper.toml`.
pub const MOBILENETV2_PAPER_SCHEME: &[&str] = &["features.[7-9].*.bias", "features.1[0-8].*.bias", "classifier.*"];

/// The partial-channel part of the MobileNetV2 paper-like scheme: (glob, denominator).
pub const MOBILENETV2_PAPER_CHANNELS: &[(&str, usize)] = &[("features.1[4-7].conv.0.0.weight", 4)];

/// The same idea on zoo:cnn's three conv blocks, with BatchNorm folded (the default): the
/// biases of the last two conv blocks (each the folded BatchNorm shift), the classifier, and a
/// quarter of the output channels of the last conv's weight ([`CNN_PAPER_LIKE_CHANNELS`]), as the
/// paper trains a quarter of a few late pointwise convs.
pub const CNN_PAPER_LIKE_SCHEME: &[&str] = &["features.[5-9].bias", "classifier.*"];

/// The partial-channel part of the cnn's paper-like scheme: (glob, denominator of the fraction
/// of output channels).
pub const CNN_PAPER_LIKE_CHANNELS: &[(&str, usize)] = &[("features.8.weight", 4)];

/// The cnn's paper-like scheme with BatchNorm in training mode, as it was before folding became
/// the default (and unchanged since, not re-tuned): the biases (conv and BatchNorm shift) of the
/// last two blocks, the classifier, and the last block's BatchNorm scale; no conv weight.
pub const CNN_PAPER_LIKE_SCHEME_BN_TRAINING: &[&str] = &["features.[4-9].bias", "classifier.*", "features.9.weight"];

/// MobileNetV2's paper-like scheme with BatchNorm in training mode, as it was before folding
/// became the default: [`MOBILENETV2_PAPER_SCHEME`] with the four expansion convs trained whole.
pub const MOBILENETV2_PAPER_SCHEME_BN_TRAINING: &[&str] =
    &["features.[7-9].*.bias", "features.1[0-8].*.bias", "classifier.*", "features.1[4-7].conv.0.0.weight"];

/// The three schemes the issue compares, by display name: `paper` the paper-like globs and
/// `channels` its partial-channel rules (glob, denominator).
pub fn schemes(paper: &[&str], channels: &[(&str, usize)]) -> Vec<(&'static str, UpdateScheme)> {
    let channels = channels
        .iter()
        .map(|&(params, denominator)| ChannelRule { params: params.into(), select: ChannelSelect::Fraction { denominator } })
        .collect();
    vec![
        ("full", UpdateScheme { preset: Some(UpdatePreset::Full), train: vec![], ..Default::default() }),
        ("bias", UpdateScheme { preset: Some(UpdatePreset::Bias), train: vec![], ..Default::default() }),
        ("paper-like", UpdateScheme { preset: None, train: paper.iter().map(|s| s.to_string()).collect(), channels }),
    ]
}

/// The sizes of one run of the experiment.
#[derive(Clone, Debug)]
pub struct Setup {
    /// A zoo spec with one input channel and four classes, e.g. `zoo:cnn:channels=1,classes=4,size=28`.
    pub model: String,
    /// The paper-like scheme's globs for that model, and its partial-channel rules.
    pub paper_scheme: &'static [&'static str],
    pub paper_channels: &'static [(&'static str, usize)],
    pub size: usize,
    pub batch: usize,
    pub pretrain_samples: usize,
    pub pretrain_epochs: u64,
    pub pretrain_lr: f32,
    /// Samples of B to fine-tune on (few, as on a device) and to test on.
    pub finetune_samples: usize,
    pub test_samples: usize,
    pub finetune_epochs: u64,
    /// The learning rate of fine-tuning, the same for every scheme.
    pub finetune_lr: f32,
    /// The learning-rate schedule of fine-tuning (`LrSchedule::parse`), the same for every scheme.
    pub finetune_schedule: &'static str,
    /// How fine-tuning plans treat BatchNorm: the product's default, `Fold` (frozen statistics
    /// folded into the conv, the shift a trainable bias).
    pub finetune_batch_norm: BatchNormMode,
    /// The learning rate of the full runs with BatchNorm in training mode (from scratch on B, and
    /// full fine-tuning in that configuration; cosine schedule, no warm-up): 0.03, chosen for full
    /// fine-tuning in that mode before folding became the default (BENCHMARKS.md, "Transfer").
    pub train_mode_lr: f32,
    /// The learning rate of the sparse schemes with BatchNorm in training mode (cosine, no
    /// warm-up): 0.6 on the cnn, chosen with `train_mode_lr` before folding became the default.
    pub train_mode_sparse_lr: f32,
    /// The paper-like scheme's globs with BatchNorm in training mode (no partial-channel rules).
    pub train_mode_paper_scheme: &'static [&'static str],
    pub threads: usize,
    /// Seeds the models' initial weights, the training order and the data sets: one draw of the
    /// experiment. Accuracies on a few hundred test samples move by a few points between draws.
    pub seed: u64,
}

impl Setup {
    /// How the three schemes fine-tune.
    pub fn finetune(&self) -> How<'static> {
        How { lr: self.finetune_lr, schedule: self.finetune_schedule, batch_norm: self.finetune_batch_norm }
    }

    /// How the full runs with BatchNorm in training mode train (fine-tuning and from scratch).
    pub fn train_mode(&self) -> How<'static> {
        How { lr: self.train_mode_lr, schedule: "cosine", batch_norm: BatchNormMode::Train }
    }

    /// How the sparse schemes train with BatchNorm in training mode.
    pub fn train_mode_sparse(&self) -> How<'static> {
        How { lr: self.train_mode_sparse_lr, schedule: "cosine", batch_norm: BatchNormMode::Train }
    }
}

/// One fine-tuning run.
#[derive(Clone, Debug)]
pub struct Finetuned {
    pub scheme: &'static str,
    pub accuracy: f64,
    pub arena_bytes: u64,
    pub weight_bytes: u64,
    pub trainable_params: usize,
    /// Floating-point operations of one training step (the plan's cost model, `pock inspect`).
    pub step_flops: u64,
    /// Mean wall time of a training step over the whole fine-tuning run (`threads` threads).
    pub ms_per_step: f64,
}

#[derive(Clone, Debug)]
pub struct Report {
    /// The pretrained model's accuracy on A's test set.
    pub pretrained_on_a: f64,
    /// The pretrained model's accuracy on B's test set, before any fine-tuning.
    pub before_finetuning: f64,
    /// Full fine-tuning from random weights with the same data and steps: what pretraining adds.
    pub from_scratch: Finetuned,
    /// The "BatchNorm training" configuration: `schemes(..)` in order (full, bias, paper-like with
    /// `train_mode_paper_scheme`), each fine-tuned from the pretrained weights with BatchNorm in
    /// training mode (`--batch-norm train`), full at `train_mode_lr`, the sparse ones at
    /// `train_mode_sparse_lr`.
    pub batch_norm_training: Vec<Finetuned>,
    /// The "folded default" configuration: `schemes(..)` in order, each fine-tuned from the
    /// pretrained weights with `finetune_batch_norm` at `finetune_lr`.
    pub finetuned: Vec<Finetuned>,
}

fn options(update: UpdateScheme, lr: f32, batch_norm: BatchNormMode) -> CompileOptions {
    CompileOptions {
        optimizer: OptimizerKind::Sgd { momentum: 0.9, dampening: 0.0, nesterov: false, weight_decay: 0.0 },
        learning_rate: lr,
        update,
        batch_norm,
        ..Default::default()
    }
}

fn session_of(plan: &pock::compiler::CompiledPlan, threads: usize) -> Result<Session, PockError> {
    Ok(Session::from_bytes(&plan.to_bytes(), SessionOptions { threads, reference_kernels: false, ..SessionOptions::default() })?)
}

fn config(epochs: u64, lr: f32, seed: u64, schedule: &str) -> Result<TrainConfig, PockError> {
    Ok(TrainConfig::new(epochs, seed, lr, LrSchedule::parse(schedule)?))
}

/// The data sets of one draw: A's training and test sets, B's training and test sets.
pub struct Data {
    pub a_train: pock::data::Dataset,
    pub a_test: pock::data::Dataset,
    pub b_train: pock::data::Dataset,
    pub b_test: pock::data::Dataset,
}

/// The data sets of `setup.seed`'s draw. Seed 7 draws the data sets 1 to 4 (the figures in
/// BENCHMARKS.md); other seeds other sets.
pub fn data(setup: &Setup) -> Data {
    let data = setup.seed.wrapping_sub(7).wrapping_mul(10);
    Data {
        a_train: pock::synth::shapes(setup.pretrain_samples, setup.size, data + 1),
        a_test: pock::synth::shapes(setup.test_samples, setup.size, data + 2),
        b_train: pock::synth::shifted_shapes(setup.finetune_samples, setup.size, data + 3),
        b_test: pock::synth::shifted_shapes(setup.test_samples, setup.size, data + 4),
    }
}

/// Pretrains on A with BatchNorm in training mode (training from random weights needs it:
/// folded initial statistics do not normalise) and saves the checkpoint as `checkpoint`.
/// Returns the accuracies on A's and on B's test sets.
pub fn pretrain(setup: &Setup, data: &Data, checkpoint: &Path, mut progress: impl FnMut(&str)) -> Result<(f64, f64), PockError> {
    let plan = pock::compile_model(
        &setup.model,
        setup.batch,
        setup.seed,
        options(UpdateScheme::default(), setup.pretrain_lr, BatchNormMode::Train),
    )?;
    let mut session = session_of(&plan, setup.threads)?;
    let started = Instant::now();
    let summary = train(&mut session, &data.a_train, &config(setup.pretrain_epochs, setup.pretrain_lr, setup.seed, "cosine")?, |_| {})?;
    let on_a = evaluate(&mut session, &data.a_test)?.accuracy.unwrap_or(0.0);
    let on_b = evaluate(&mut session, &data.b_test)?.accuracy.unwrap_or(0.0);
    session.save(checkpoint)?;
    progress(&format!(
        "pretrained {} on A in {:.1} s (epoch losses {:.3?}): {:.1}% on A, {:.1}% on B before fine-tuning",
        setup.model,
        started.elapsed().as_secs_f64(),
        summary.epoch_losses,
        100.0 * on_a,
        100.0 * on_b
    ));
    Ok((on_a, on_b))
}

/// How a fine-tuning run trains: learning rate, schedule (`LrSchedule::parse`) and BatchNorm mode.
#[derive(Clone, Copy, Debug)]
pub struct How<'a> {
    pub lr: f32,
    pub schedule: &'a str,
    pub batch_norm: BatchNormMode,
}

/// Trains `scheme` on B for `setup.finetune_epochs` as `how` says, from the checkpoint `init` (or
/// from random weights), and tests it on B.
pub fn finetune(
    setup: &Setup,
    data: &Data,
    name: &'static str,
    scheme: UpdateScheme,
    how: How<'_>,
    init: Option<&Path>,
) -> Result<Finetuned, PockError> {
    let How { lr, schedule, batch_norm } = how;
    let plan = pock::compile_model_from(&setup.model, setup.batch, setup.seed + 1, options(scheme, lr, batch_norm), init)?;
    let report = pock::inspect::report(&plan.plan);
    let mut session = session_of(&plan, setup.threads)?;
    let summary = train(&mut session, &data.b_train, &config(setup.finetune_epochs, lr, setup.seed, schedule)?, |_| {})?;
    let accuracy = evaluate(&mut session, &data.b_test)?.accuracy.unwrap_or(0.0);
    Ok(Finetuned {
        scheme: name,
        accuracy,
        arena_bytes: plan.plan.arena_bytes,
        weight_bytes: plan.plan.weight_bytes,
        trainable_params: report.trainable_params,
        step_flops: report.programs.iter().filter(|p| p.name == "train").map(|p| p.flops).sum(),
        ms_per_step: summary.mean_ms,
    })
}

/// Runs the experiment, writing the pretrained checkpoint into `dir`. `progress` receives one
/// line per finished stage.
pub fn run(setup: &Setup, dir: &Path, mut progress: impl FnMut(&str)) -> Result<Report, PockError> {
    let data = data(setup);
    let checkpoint = dir.join("pretrained.safetensors");
    let (pretrained_on_a, before_finetuning) = pretrain(setup, &data, &checkpoint, &mut progress)?;
    let mut finetuned = Vec::new();
    for (name, scheme) in schemes(setup.paper_scheme, setup.paper_channels) {
        let run = finetune(setup, &data, name, scheme, setup.finetune(), Some(&checkpoint))?;
        progress(&format!("fine-tuned {name}: {:.1}% on B, {:.1} ms/step", 100.0 * run.accuracy, run.ms_per_step));
        finetuned.push(run);
    }
    let mut batch_norm_training = Vec::new();
    let names = ["full, BN training", "bias, BN training", "paper-like, BN training"];
    for ((_, scheme), name) in schemes(setup.train_mode_paper_scheme, &[]).into_iter().zip(names) {
        let how = if scheme.is_full() { setup.train_mode() } else { setup.train_mode_sparse() };
        let run = finetune(setup, &data, name, scheme, how, Some(&checkpoint))?;
        progress(&format!("fine-tuned {name}: {:.1}% on B, {:.1} ms/step", 100.0 * run.accuracy, run.ms_per_step));
        batch_norm_training.push(run);
    }
    // From random weights BatchNorm trains, as in pretraining.
    let from_scratch = finetune(setup, &data, "full, from scratch", UpdateScheme::default(), setup.train_mode(), None)?;
    progress(&format!("trained from scratch on B: {:.1}%", 100.0 * from_scratch.accuracy));
    Ok(Report { pretrained_on_a, before_finetuning, from_scratch, batch_norm_training, finetuned })
}

/// The report as a table: accuracy, memory, step time and FLOPs, with ratios to full on the
/// folded default.
pub fn table(r: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "pretrained: {:.1}% on A; {:.1}% on B before fine-tuning", 100.0 * r.pretrained_on_a, 100.0 * r.before_finetuning);
    let _ = writeln!(
        s,
        "{:<24} {:>9} {:>11} {:>10} {:>11} {:>9} {:>10} {:>9} {:>10}",
        "scheme", "accuracy", "trainable", "arena", "weights", "ms/step", "time/full", "MFLOP", "flops/full"
    );
    let full = &r.finetuned[0];
    for f in r.finetuned.iter().chain(&r.batch_norm_training).chain([&r.from_scratch]) {
        let _ = writeln!(
            s,
            "{:<24} {:>8.1}% {:>11} {:>10} {:>11} {:>9.2} {:>10.3} {:>9.1} {:>10.3}",
            f.scheme,
            100.0 * f.accuracy,
            f.trainable_params,
            pock::human_bytes(f.arena_bytes),
            pock::human_bytes(f.weight_bytes),
            f.ms_per_step,
            f.ms_per_step / full.ms_per_step,
            f.step_flops as f64 / 1e6,
            f.step_flops as f64 / full.step_flops as f64
        );
    }
    s
}

/// The setup `tests/transfer.rs` and `--example transfer` run: zoo:cnn, few samples of B.
pub fn quick_setup(threads: usize) -> Setup {
    Setup {
        model: "zoo:cnn:channels=1,classes=4,size=28,width=16".into(),
        paper_scheme: CNN_PAPER_LIKE_SCHEME,
        paper_channels: CNN_PAPER_LIKE_CHANNELS,
        size: 28,
        batch: 32,
        pretrain_samples: 2048,
        pretrain_epochs: 2,
        pretrain_lr: 0.05,
        finetune_samples: 64,
        test_samples: 512,
        finetune_epochs: 48,
        finetune_lr: 0.1,
        finetune_schedule: "cosine:warmup=16",
        finetune_batch_norm: BatchNormMode::Fold,
        train_mode_lr: 0.03,
        train_mode_sparse_lr: 0.6,
        train_mode_paper_scheme: CNN_PAPER_LIKE_SCHEME_BN_TRAINING,
        threads,
        seed: 7,
    }
}
