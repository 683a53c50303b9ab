//! `pock scheme` (issue 7 part 5): an update scheme chosen under a memory budget by contribution
//! analysis. The written file compiles unchanged with `pock compile --scheme`, plans exactly the
//! memory its comment states, within the budget; a larger budget trains more; a budget below the
//! smallest trainable plan is refused with that plan's size; and on a fine-tuning task the chosen
//! scheme trains within the memory of the `bias` and `last:1` presets (its loss drop against
//! theirs is printed, not asserted: see the quality test).

mod common;

use std::path::Path;

use common::{fails, pock, s, workdir};
use pock::compiler::stages::BatchNormMode;
use pock::compiler::{CompileOptions, UpdateScheme};
use pock::engine::plan::OptimizerKind;
use pock::engine::{Session, SessionOptions};
use pock::schedule::LrSchedule;
use pock::train::{train, TrainConfig};

const MODEL: &str = "zoo:cnn:channels=1,classes=4,size=28,width=16";

fn ok(args: &[&str]) -> String {
    let out = pock(args);
    assert!(out.status.success(), "pock {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// `(arena, weights, trainable values)` of a plan, from `pock inspect --json`.
fn inspect(plan: &Path) -> (u64, u64, u64) {
    let v: serde_json::Value = serde_json::from_str(&ok(&["inspect", s(plan), "--json"])).unwrap();
    (v["arena_bytes"].as_u64().unwrap(), v["weight_bytes"].as_u64().unwrap(), v["trainable_params"].as_u64().unwrap())
}

/// The number after `key` in the scheme file's header comment.
fn stated(text: &str, key: &str) -> f64 {
    let header: String = text.lines().filter(|l| l.starts_with('#')).collect::<Vec<_>>().join(" ");
    let at = header.find(key).unwrap_or_else(|| panic!("'{key}' not in the header:\n{header}")) + key.len();
    header[at..].split_whitespace().next().unwrap().trim_end_matches([',', ';', ')']).parse().unwrap()
}

fn write_data(path: &Path, data: pock::data::Dataset) {
    data.save_npz(path).unwrap();
}

/// Writes a scheme for `budget` and returns the file's text.
fn scheme(dir: &Path, flags: &[&str], extra: &[&str], data: &Path, budget: u64, name: &str) -> String {
    let out = dir.join(name);
    let budget = budget.to_string();
    let mut args = vec!["scheme"];
    args.extend_from_slice(flags);
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--data", s(data), "--memory-budget", &budget, "-o", s(&out), "-q"]);
    ok(&args);
    std::fs::read_to_string(&out).unwrap()
}

fn compile(flags: &[&str], extra: &[&str], plan: &Path) -> (u64, u64, u64) {
    let mut args = vec!["compile"];
    args.extend_from_slice(flags);
    args.extend_from_slice(extra);
    args.extend_from_slice(&["-o", s(plan), "-q"]);
    ok(&args);
    inspect(plan)
}

#[test]
fn written_schemes_fit_their_budget_round_trip_and_grow_with_it() {
    let dir = workdir("fit");
    let data = dir.join("calib.npz");
    write_data(&data, pock::synth::shapes(128, 28, 5));
    let flags = [MODEL, "--batch", "16", "--momentum", "0.9", "--batch-norm", "train"];
    let (fa, fw, _) = compile(&flags, &[], &dir.join("full.pock"));
    let (ba, bw, _) = compile(&flags, &["--update", "bias"], &dir.join("bias.pock"));
    let (full, bias) = (fa + fw, ba + bw);
    assert!(bias < full);
    let budgets = [bias, (bias + full) / 2, full + full / 8];
    let mut last: Option<(u64, f64)> = None;
    for (i, &budget) in budgets.iter().enumerate() {
        let text = scheme(&dir, &flags, &[], &data, budget, &format!("s{i}.toml"));
        let (arena, weights) = (stated(&text, "planned arena") as u64, stated(&text, "+ weights") as u64);
        assert!(arena + weights <= budget, "budget {budget}: planned {arena} + {weights}\n{text}");
        // The file compiles unchanged, under the same budget, to exactly the memory it states.
        let budget_flag = budget.to_string();
        let scheme_path = dir.join(format!("s{i}.toml"));
        let plan = dir.join(format!("s{i}.pock"));
        let (a, w, trainable) = compile(&flags, &["--scheme", s(&scheme_path), "--memory-budget", &budget_flag], &plan);
        assert_eq!((a, w), (arena, weights), "budget {budget}:\n{text}");
        let drop = stated(&text, "predicted loss drop (sum over the chosen)");
        eprintln!("budget {budget}: arena {a} + weights {w}, {trainable} trainable values, predicted drop {drop:.4e}");
        if let Some((t, d)) = last {
            assert!(trainable >= t && drop >= d, "budget {budget}: {trainable} values, drop {drop} after {t}, {d}");
        }
        last = Some((trainable, drop));
        // The plan trains.
        ok(&["train", s(&plan), "--data", s(&data), "--epochs", "1", "-q"]);
    }
    // The largest budget holds full training: the choice approaches full backpropagation's benefit.
    let text = std::fs::read_to_string(dir.join("s2.toml")).unwrap();
    let (drop, full_drop) = (stated(&text, "predicted loss drop (sum over the chosen)"), stated(&text, "every parameter whole"));
    assert!(drop >= 0.99 * full_drop, "{drop} of {full_drop}\n{text}");
    let smallest = std::fs::read_to_string(dir.join("s0.toml")).unwrap();
    assert!(stated(&smallest, "predicted loss drop (sum over the chosen)") < drop, "a larger budget should buy more:\n{smallest}\n{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_budget_below_the_smallest_plan_is_refused_with_its_size() {
    let dir = workdir("floor");
    let data = dir.join("calib.npz");
    write_data(&data, pock::synth::shapes(64, 28, 5));
    let out = dir.join("s.toml");
    let base = [MODEL, "--batch", "16", "--data", s(&data), "-o", s(&out)];
    let mut args = vec!["scheme"];
    args.extend_from_slice(&base);
    args.extend_from_slice(&["--memory-budget", "64K"]);
    let err = fails(&args);
    assert!(err.contains("below the smallest plan that trains anything") && err.contains("give --memory-budget"), "{err}");
    assert!(!out.exists());
    // The floor it states is exact: that budget is enough.
    let floor: u64 = err.split("give --memory-budget ").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    let mut args = vec!["scheme"];
    args.extend_from_slice(&base);
    let floor_flag = floor.to_string();
    args.extend_from_slice(&["--memory-budget", &floor_flag, "-q"]);
    ok(&args);
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(stated(&text, "planned arena") as u64 + stated(&text, "+ weights") as u64 <= floor);
    // Too few calibration samples for one batch.
    let small = dir.join("small.npz");
    write_data(&small, pock::synth::shapes(8, 28, 5));
    let err = fails(&["scheme", MODEL, "--batch", "16", "--data", s(&small), "--memory-budget", "64M", "-o", s(&out)]);
    assert!(err.contains("fewer than one batch"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Pretrains the cnn on `synth::shapes` (every parameter, BatchNorm in training mode) and saves
/// the checkpoint, the starting point of a fine-tuning.
fn pretrain(path: &Path) {
    let options = CompileOptions {
        optimizer: OptimizerKind::Sgd { momentum: 0.9, dampening: 0.0, nesterov: false, weight_decay: 0.0 },
        learning_rate: 0.05,
        batch_norm: BatchNormMode::Train,
        update: UpdateScheme::default(),
        ..Default::default()
    };
    let plan = pock::compile_model(MODEL, 32, 7, options).unwrap();
    let mut session = Session::from_bytes(&plan.to_bytes(), SessionOptions::default()).unwrap();
    let cfg = TrainConfig::new(2, 7, 0.05, LrSchedule::parse("cosine").unwrap());
    train(&mut session, &pock::synth::shapes(2048, 28, 1), &cfg, |_| {}).unwrap();
    session.save(path).unwrap();
}

fn eval_loss(plan: &Path, weights: Option<&Path>, data: &Path) -> f64 {
    let mut args = vec!["eval", s(plan), "--data", s(data), "--json"];
    if let Some(w) = weights {
        args.extend_from_slice(&["--weights", s(w)]);
    }
    let v: serde_json::Value = serde_json::from_str(&ok(&args)).unwrap();
    v["loss"].as_f64().unwrap()
}

/// The loss drop on the calibration data after `epochs` epochs of fine-tuning `plan` on it.
fn loss_drop(plan: &Path, data: &Path, epochs: u64) -> f64 {
    let ckpt = plan.with_extension("ckpt");
    let before = eval_loss(plan, None, data);
    ok(&["train", s(plan), "--data", s(data), "--epochs", &epochs.to_string(), "--save", s(&ckpt), "-q"]);
    before - eval_loss(plan, Some(&ckpt), data)
}

#[test]
fn the_chosen_scheme_trains_within_same_budget_presets_memory() {
    let dir = workdir("quality");
    let ckpt = dir.join("pretrained.safetensors");
    pretrain(&ckpt);
    // Fine-tuning data: the shifted task (new classes made of the same strokes).
    let data = dir.join("calib.npz");
    write_data(&data, pock::synth::shifted_shapes(256, 28, 3));
    let flags = [MODEL, "--batch", "32", "--momentum", "0.9", "--lr", "0.05", "--init-weights", s(&ckpt)];
    let epochs = 4;
    // 256 samples, 8 batches of 32 per epoch: the horizon is the steps trained.
    let horizon = (epochs * 8).to_string();
    for preset in ["bias", "last:1"] {
        let base_plan = dir.join(format!("{}.pock", preset.replace(':', "")));
        let (a, w, t) = compile(&flags, &["--update", preset], &base_plan);
        let budget = a + w;
        let name = format!("auto-{}.toml", preset.replace(':', ""));
        let text = scheme(&dir, &flags, &["--horizon", &horizon], &data, budget, &name);
        let auto_plan = dir.join(format!("auto-{}.pock", preset.replace(':', "")));
        let (aa, aw, at) = compile(&flags, &["--scheme", s(&dir.join(&name))], &auto_plan);
        assert!(aa + aw <= budget);
        let (base_drop, auto_drop) = (loss_drop(&base_plan, &data, epochs), loss_drop(&auto_plan, &data, epochs));
        eprintln!(
            "--update {preset}: {} bytes, {t} values, loss drop {base_drop:.4}; chosen: {} bytes, {at} values, loss drop {auto_drop:.4}\n{text}",
            budget,
            aa + aw
        );
        // Whether the choice beats a preset of the same memory is not asserted: it does not hold
        // robustly. Against `last:1` it loses (the per-candidate benefits add the biases' shares
        // of one logit shift as if independent); against `bias` it won with the `gemm` crate's
        // rounding (2.56 vs 2.16) and loses with pock's own sgemm (2.53 vs 2.72), the
        // pretrained weights differing only by rounding. BENCHMARKS.md "Memory" has the figures.
        // What is asserted: the chosen scheme fits and trains.
        assert!(auto_drop > 0.0, "--update {preset} budget: the chosen scheme does not lower the loss ({auto_drop})");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// An ONNX model: the scheme names its initializers and compiles with the same import flags.
#[test]
fn an_onnx_model_gets_a_scheme_that_compiles() {
    let dir = workdir("onnx");
    let model = common::onnx_fixture::materialise("resnet18.ts", &dir);
    // Random images and labels of resnet18's 10 classes: the gradients are real, their use is not.
    let n = 8;
    let mut state = 1u64;
    let mut next = || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) as f32 / (1u64 << 31) as f32 - 0.5
    };
    let x: Vec<f32> = (0..n * 3 * 64 * 64).map(|_| next()).collect();
    let y: Vec<i64> = (0..n as i64).map(|i| i % 10).collect();
    let data = dir.join("calib.npz");
    let set = pock::data::Dataset { x, x_shape: vec![n, 3, 64, 64], y: Some(pock::data::Targets::Labels(y)), inputs: vec![] };
    write_data(&data, set);
    let flags = [s(&model), "--batch", "2", "--input-shape", "x=2x3x64x64", "--momentum", "0.9"];
    let (fa, fw, _) = compile(&flags, &[], &dir.join("full.pock"));
    let (ba, bw, _) = compile(&flags, &["--update", "bias"], &dir.join("bias.pock"));
    let budget = (fa + fw + ba + bw) / 2;
    let text = scheme(&dir, &flags, &[], &data, budget, "s.toml");
    assert!(text.contains("\"fc.bias\"") || text.contains("\"fc.weight\""), "{text}");
    let (a, w, _) = compile(&flags, &["--scheme", s(&dir.join("s.toml"))], &dir.join("s.pock"));
    assert_eq!((a, w), (stated(&text, "planned arena") as u64, stated(&text, "+ weights") as u64));
    assert!(a + w <= budget);
    let _ = std::fs::remove_dir_all(&dir);
}
