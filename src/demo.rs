//! `pock demo`: the whole pipeline on built-in defaults, with no files from the user. It draws a
//! dataset of shapes in code, compiles `zoo:cnn`, trains it and reports what happened.

use std::io::Write;
use std::time::Instant;

use pock_compiler::CompileOptions;
use pock_engine::plan::OptimizerKind;
use pock_engine::{Session, SessionOptions};

use crate::error::PockError;
use crate::human_bytes;
use crate::schedule::LrSchedule;
use crate::train::{evaluate, train_epochs, TrainConfig};

#[derive(Clone, Debug)]
pub struct DemoConfig {
    pub train_samples: usize,
    pub test_samples: usize,
    pub epochs: u64,
    pub batch: usize,
    pub threads: usize,
    /// Run the portable reference kernels only (`--kernels reference`).
    pub reference_kernels: bool,
    pub seed: u64,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            train_samples: 2048,
            test_samples: 512,
            epochs: 4,
            batch: 32,
            threads: SessionOptions::default().threads,
            reference_kernels: false,
            seed: 7,
        }
    }
}

#[derive(Clone, Debug)]
pub struct DemoReport {
    pub accuracy_before: f64,
    pub accuracy_after: f64,
    pub epoch_losses: Vec<f64>,
    pub arena_bytes: u64,
    pub ms_per_step: f64,
}

pub fn run(cfg: &DemoConfig, out: &mut dyn Write) -> Result<DemoReport, PockError> {
    let w = |out: &mut dyn Write, s: String| -> Result<(), PockError> {
        writeln!(out, "{s}").map_err(|source| PockError::Io { path: "stdout".into(), source })
    };
    let size = SIZE;
    w(
        out,
        format!(
            "pock demo: {} training and {} test images of 4 shapes (circle, square, triangle, cross), 1x{size}x{size}",
            cfg.train_samples, cfg.test_samples
        ),
    )?;
    let (train_set, test_set) = datasets(cfg);

    let model = format!("zoo:cnn:channels=1,size={size},classes=4");
    let options = CompileOptions {
        optimizer: OptimizerKind::Sgd { momentum: 0.9, dampening: 0.0, nesterov: false, weight_decay: 0.0 },
        learning_rate: 0.05,
        // The demo trains from scratch, so BatchNorm uses batch statistics.
        batch_norm: pock_compiler::stages::BatchNormMode::Train,
        ..CompileOptions::default()
    };
    let started = Instant::now();
    let compiled = crate::compile_model(&model, cfg.batch, cfg.seed, options)?;
    let bytes = compiled.to_bytes();
    let plan = &compiled.plan;
    let count = |phase| plan.programs.train.nodes.iter().filter(|n| n.phase == phase).count();
    w(
        out,
        format!(
            "compiled {model} (batch {}, SGD momentum 0.9, lr 0.05) in {:.0} ms: {} forward + {} backward + {} optimizer ops, arena {}, weights {}",
            cfg.batch,
            started.elapsed().as_secs_f64() * 1e3,
            count(pock_engine::plan::Phase::Forward),
            count(pock_engine::plan::Phase::Backward),
            count(pock_engine::plan::Phase::Optimizer),
            human_bytes(plan.arena_bytes),
            human_bytes(plan.weight_bytes),
        ),
    )?;
    let mut session = Session::from_bytes(
        &bytes,
        SessionOptions { threads: cfg.threads, reference_kernels: cfg.reference_kernels, ..SessionOptions::default() },
    )?;
    let before = evaluate(&mut session, &test_set)?;
    let accuracy_before = before.accuracy.unwrap_or(0.0);
    w(out, format!("before training: test loss {:.4}, accuracy {:.1}%", before.loss, 100.0 * accuracy_before))?;
    let config = TrainConfig::new(cfg.epochs, cfg.seed, 0.05, LrSchedule::parse("cosine").expect("valid schedule"));
    let mut epoch_start = Instant::now();
    let summary = train_epochs(
        &mut session,
        &train_set,
        &config,
        |_, _| Ok(()),
        |_, e| {
            let seconds = epoch_start.elapsed().as_secs_f64();
            epoch_start = Instant::now();
            w(out, format!("epoch {}: mean loss {:.4}, {:.1} ms/step, {seconds:.1} s", e.epoch + 1, e.mean_loss, e.ms_per_step))
        },
    )?;
    let after = evaluate(&mut session, &test_set)?;
    let accuracy_after = after.accuracy.unwrap_or(0.0);
    w(out, format!("after training:  test loss {:.4}, accuracy {:.1}%", after.loss, 100.0 * accuracy_after))?;
    w(
        out,
        format!(
            "arena {} ({} bytes), {:.2} ms/step on {} thread(s) with the {} backend",
            human_bytes(plan.arena_bytes),
            plan.arena_bytes,
            summary.mean_ms,
            cfg.threads,
            session.backend_name()
        ),
    )?;
    Ok(DemoReport {
        accuracy_before,
        accuracy_after,
        epoch_losses: summary.epoch_losses,
        arena_bytes: plan.arena_bytes,
        ms_per_step: summary.mean_ms,
    })
}

/// The demo's training and test sets: 1x28x28 shapes, drawn from different seeds.
pub fn datasets(cfg: &DemoConfig) -> (crate::data::Dataset, crate::data::Dataset) {
    (crate::synth::shapes(cfg.train_samples, SIZE, cfg.seed), crate::synth::shapes(cfg.test_samples, SIZE, cfg.seed + 1))
}

const SIZE: usize = 28;
