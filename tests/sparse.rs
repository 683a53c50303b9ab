//! Sparse updates (issue 7): an update scheme trains only the parameters it selects, the backward
//! pass is pruned to what they need, and what it computes for them is what full backpropagation
//! computes.

mod common;

use common::onnx_fixture as fixture;
use common::{pock, s, workdir};
use pock::compiler::interp::Interpreter;
use pock::compiler::ir::{Phase, Program, Role};
use pock::compiler::{CompileOptions, TrainingGraph, UpdatePreset, UpdateScheme};
use pock::engine::plan::OptimizerKind;
use pock::engine::session::Targets;
use pock::engine::{Session, SessionOptions};

fn options(update: UpdateScheme) -> CompileOptions {
    CompileOptions {
        optimizer: OptimizerKind::Sgd { momentum: 0.9, dampening: 0.0, nesterov: false, weight_decay: 0.0 },
        learning_rate: 0.01,
        update,
        // The names and counts below are those of training-mode BatchNorm (folding: tests/fold.rs).
        batch_norm: pock::compiler::stages::BatchNormMode::Train,
        ..Default::default()
    }
}

fn preset(p: UpdatePreset) -> UpdateScheme {
    UpdateScheme { preset: Some(p), ..Default::default() }
}

fn globs(g: &[&str]) -> UpdateScheme {
    UpdateScheme { train: g.iter().map(|s| s.to_string()).collect(), ..Default::default() }
}

fn training(model: &str, batch: usize, update: UpdateScheme) -> TrainingGraph {
    pock::models::build(model, batch, 3).unwrap().into_training(options(update)).unwrap()
}

/// The resnet18 ONNX fixture (TorchScript export, weights regenerated) at its 64x64 input size.
fn onnx_training(batch: usize, update: UpdateScheme) -> TrainingGraph {
    use pock::compiler::onnx::{import_file, ImportOptions, ShapeOverrides};
    let dir = workdir("onnx");
    let path = fixture::materialise("resnet18.ts", &dir);
    let spec = format!("x={batch}x3x64x64");
    let import = ImportOptions { shapes: ShapeOverrides::parse(None, &[spec]).unwrap(), ..Default::default() };
    let t = import_file(&path, &import).unwrap().forward.into_training(options(update)).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    t
}

/// The gradient of every trainable parameter on one fixed batch, by name, evaluated in f64 by the
/// compiler's interpreter over the Train program's forward and backward nodes.
fn gradients(t: &TrainingGraph) -> Vec<(String, Vec<f64>)> {
    let g = &t.graph;
    let mut it = Interpreter::<f64>::new(g);
    let n: usize = g.shape(t.train_input).iter().product();
    it.set(t.train_input, (0..n).map(|i| ((i * 7919 % 1000) as f64 / 500.0 - 1.0) * 0.8).collect());
    let classes = *g.shape(t.eval_output).last().unwrap() as i64;
    it.set_int(t.train_target, (0..t.batch as i64).map(|i| (i * 5 + 1) % classes).collect());
    it.run(g.nodes.iter().filter(|n| n.program == Program::Train && n.phase != Phase::Optimizer)).unwrap();
    t.param_grads.iter().map(|&(p, d)| (g.tensor(p).name.clone(), it.get(d).unwrap().to_vec())).collect()
}

fn backward_ops(t: &TrainingGraph) -> usize {
    t.graph.nodes.iter().filter(|n| n.phase == Phase::Backward).count()
}

/// Each sparse scheme's gradients equal the full plan's for the parameters it trains (relative
/// 1e-6 of the tensor's largest gradient), and the sparse plan has strictly fewer backward ops.
fn sparse_gradients_match_full(build: &dyn Fn(UpdateScheme) -> TrainingGraph, schemes: &[UpdateScheme]) {
    let full = build(UpdateScheme::default());
    let full_grads = gradients(&full);
    for scheme in schemes {
        let sparse = build(scheme.clone());
        let grads = gradients(&sparse);
        assert!(!grads.is_empty() && grads.len() < full_grads.len(), "{scheme:?}: {} of {} parameters", grads.len(), full_grads.len());
        assert!(
            backward_ops(&sparse) < backward_ops(&full),
            "{scheme:?}: {} vs {} backward ops",
            backward_ops(&sparse),
            backward_ops(&full)
        );
        for (name, g) in &grads {
            let (_, reference) = full_grads.iter().find(|(n, _)| n == name).unwrap();
            let scale = reference.iter().fold(0.0f64, |m, x| m.max(x.abs()));
            let worst = g.iter().zip(reference).fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
            if scale < 1e-12 {
                // A shift that a training-mode BatchNorm downstream removes has a gradient that is
                // exactly zero in exact arithmetic (rounding noise here): both plans must agree
                // that it vanishes, since a relative comparison of noise means nothing.
                let sparse_scale = g.iter().fold(0.0f64, |m, x| m.max(x.abs()));
                assert!(sparse_scale < 1e-12, "{scheme:?}: {name} is {sparse_scale} in the sparse plan, ~0 in the full one");
                continue;
            }
            assert!(worst <= 1e-6 * scale, "{scheme:?}: {name} differs by {worst} (largest gradient {scale})");
        }
    }
}

#[test]
fn mobilenetv2_sparse_gradients_equal_full_ones() {
    sparse_gradients_match_full(
        &|u| training("zoo:mobilenetv2:classes=4,size=32", 2, u),
        &[
            preset(UpdatePreset::Bias),
            preset(UpdatePreset::Last(2)),
            globs(&["features.1[6-8].*", "classifier.*"]),
            // Only early layers: backpropagation must still reach them through frozen layers.
            globs(&["features.1.*"]),
        ],
    );
}

#[test]
fn resnet18_sparse_gradients_equal_full_ones() {
    sparse_gradients_match_full(
        &|u| training("zoo:resnet18:classes=4,size=32", 2, u),
        &[preset(UpdatePreset::Bias), preset(UpdatePreset::Last(3)), globs(&["layer4.*", "fc.*"])],
    );
}

/// The same on an imported model: the scheme sees the ONNX initializer names.
#[test]
fn onnx_resnet18_sparse_gradients_equal_full_ones() {
    sparse_gradients_match_full(&|u| onnx_training(1, u), &[preset(UpdatePreset::Bias), globs(&["layer3.1.*", "fc.*"])]);
}

#[test]
fn schemes_select_what_they_name() {
    let names = |t: &TrainingGraph| -> Vec<String> { t.param_grads.iter().map(|&(p, _)| t.graph.tensor(p).name.clone()).collect() };
    let model = "zoo:mobilenetv2:classes=4,size=32";
    let bias = names(&training(model, 1, preset(UpdatePreset::Bias)));
    assert!(bias.iter().all(|n| n.ends_with(".bias") || n == "classifier.1.weight"), "{bias:?}");
    assert!(bias.contains(&"classifier.1.weight".to_string()) && bias.contains(&"features.0.1.bias".to_string()));
    // The last two layers: the classifier and the BatchNorm of the last conv.
    let last2 = names(&training(model, 1, preset(UpdatePreset::Last(2))));
    assert_eq!(last2, ["features.18.1.weight", "features.18.1.bias", "classifier.1.weight", "classifier.1.bias"]);
    let union = names(&training(
        model,
        1,
        UpdateScheme { preset: Some(UpdatePreset::Last(1)), train: vec!["features.0.?.*".into()], channels: vec![] },
    ));
    assert_eq!(union, ["features.0.0.weight", "features.0.1.weight", "features.0.1.bias", "classifier.1.weight", "classifier.1.bias"]);
    let e = pock::models::build(model, 1, 0).unwrap().into_training(options(globs(&["nothing.*"]))).unwrap_err().to_string();
    assert!(e.contains("selects none") && e.contains("features.0.0.weight"), "{e}");
}

/// A frozen parameter keeps its exact bits through several steps; every trainable one moves.
#[test]
fn frozen_parameters_are_bit_identical_after_training() {
    let plan = pock::compile_model("zoo:mobilenetv2:classes=4,size=32", 4, 1, options(globs(&["features.1[5-8].*", "*.bias"]))).unwrap();
    let mut session =
        Session::from_bytes(&plan.to_bytes(), SessionOptions { threads: 1, reference_kernels: false, ..SessionOptions::default() })
            .unwrap();
    let params: Vec<(String, bool)> = session
        .plan()
        .tensors
        .iter()
        .filter_map(|t| match t.role {
            Role::Parameter { trainable } => Some((t.name.clone(), trainable)),
            _ => None,
        })
        .collect();
    assert!(params.iter().any(|p| p.1) && params.iter().any(|p| !p.1));
    let before: Vec<Vec<f32>> = params.iter().map(|(n, _)| session.read_tensor(n).unwrap()).collect();
    let data = pock::synth::shapes(16, 32, 4);
    // synth::shapes makes one-channel images; the model takes three channels.
    let x: Vec<f32> = data.x.iter().flat_map(|&v| [v, v, v]).collect();
    let sample = 3 * 32 * 32;
    for step in 0..4 {
        let b = &x[step * 4 * sample..(step + 1) * 4 * sample];
        let labels: Vec<i64> = (0..4).map(|i| ((step * 4 + i) % 4) as i64).collect();
        session.train_step(b, Targets::Labels(&labels)).unwrap();
    }
    for ((name, trainable), old) in params.iter().zip(&before) {
        let new = session.read_tensor(name).unwrap();
        let same = old.iter().zip(&new).all(|(a, b)| a.to_bits() == b.to_bits());
        assert_eq!(same, !trainable, "{name} (trainable: {trainable})");
    }
}

/// Pruning shows in the plan: fewer backward ops and a smaller arena than full backpropagation.
#[test]
fn a_pruned_plan_is_smaller() {
    let model = "zoo:mobilenetv2:classes=10,size=64";
    let report = |u: UpdateScheme| pock::inspect::report(&pock::compile_model(model, 2, 0, options(u)).unwrap().plan);
    let full = report(UpdateScheme::default());
    for scheme in [preset(UpdatePreset::Bias), preset(UpdatePreset::Last(4)), globs(&["features.1[4-8].*"])] {
        let r = report(scheme.clone());
        assert!(r.ops.backward < full.ops.backward, "{scheme:?}: {} vs {} backward ops", r.ops.backward, full.ops.backward);
        assert!(r.arena_bytes < full.arena_bytes, "{scheme:?}: arena {} vs {}", r.arena_bytes, full.arena_bytes);
        assert!(r.trainable_params < full.trainable_params && r.frozen_params > 0);
    }
}

/// `--update bias`, `--update last:2` and a glob scheme all train through the CLI: the loss falls.
#[test]
fn cli_schemes_train() {
    let d = workdir("schemes");
    let data = d.join("train.npz");
    pock::synth::shapes(256, 16, 1).save_npz(&data).unwrap();
    for (i, scheme) in
        [&["--update", "bias"][..], &["--update", "last:2"], &["--train", "features.[4-5].*", "--train", "classifier.*"]].iter().enumerate()
    {
        let plan = d.join(format!("p{i}.pock"));
        let log = d.join(format!("p{i}.jsonl"));
        let mut args = vec![
            "compile",
            "zoo:cnn:size=16,width=8",
            "--batch",
            "16",
            "--lr",
            "0.05",
            "--momentum",
            "0.9",
            "--batch-norm",
            "train",
            "-o",
            s(&plan),
        ];
        args.extend_from_slice(scheme);
        let out = pock(&args);
        assert!(out.status.success(), "{scheme:?}: {}", String::from_utf8_lossy(&out.stderr));
        let out = pock(&["train", s(&plan), "--data", s(&data), "--epochs", "6", "--log-json", s(&log), "--threads", "1"]);
        assert!(out.status.success(), "{scheme:?}: {}", String::from_utf8_lossy(&out.stderr));
        let losses: Vec<f64> = std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64().unwrap())
            .collect();
        let per_epoch = 256 / 16;
        let mean = |r: &[f64]| r.iter().sum::<f64>() / r.len() as f64;
        let (first, last) = (mean(&losses[..per_epoch]), mean(&losses[losses.len() - per_epoch..]));
        eprintln!("{scheme:?}: mean loss of the first epoch {first:.4}, of the last {last:.4}");
        assert!(last < 0.95 * first, "{scheme:?}: loss {first} -> {last}");
    }
    let e = common::fails(&["compile", "zoo:cnn:size=16,width=8", "--update", "last:0", "-o", s(&d.join("x.pock"))]);
    assert!(e.contains("last:K"), "{e}");
}
