//! Frozen BatchNorm folded into the convolution before it (`--batch-norm fold`, the default): the
//! folded plan computes what the frozen plan computes, costs less memory, keeps names that update
//! schemes select, and exports the model in its original form.

mod common;

use common::onnx_fixture::materialise;
use common::{pock, s, workdir};
use pock::compiler::onnx::{import_file, ImportOptions, ShapeOverrides};
use pock::compiler::stages::BatchNormMode;
use pock::compiler::{CompileOptions, ForwardGraph, UpdatePreset, UpdateScheme};
use pock::engine::plan::{OptimizerKind, Role};
use pock::engine::{Session, SessionOptions, Targets};

fn options(batch_norm: BatchNormMode, update: Option<UpdatePreset>) -> CompileOptions {
    CompileOptions {
        optimizer: OptimizerKind::Sgd { momentum: 0.9, dampening: 0.0, nesterov: false, weight_decay: 0.0 },
        learning_rate: 0.05,
        batch_norm,
        update: UpdateScheme { preset: update, train: vec![], ..Default::default() },
        ..Default::default()
    }
}

fn session(forward: ForwardGraph, options: CompileOptions) -> Session {
    let plan = forward.into_training(options).unwrap().into_plan().unwrap();
    Session::from_bytes(&plan.to_bytes(), SessionOptions { threads: 1, reference_kernels: false, ..SessionOptions::default() }).unwrap()
}

/// A deterministic batch for a session: inputs in [-1, 1), labels cycling over the classes.
fn batch(session: &Session, step: usize) -> (Vec<f32>, Vec<i64>) {
    let n: usize = session.input_shape().iter().product();
    let x = (0..n).map(|i| (((i + 31 * step) * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.8).collect();
    let classes = *session.output_shape().last().unwrap() as i64;
    let labels = (0..session.batch() as i64).map(|i| (i * 5 + 1 + step as i64) % classes).collect();
    (x, labels)
}

fn eval_outputs(session: &mut Session, x: &[f32], labels: &[i64]) -> Vec<f32> {
    let mut out = vec![0f32; session.output_shape().iter().product()];
    let mut losses = vec![0f32; session.batch()];
    session.eval_batch(x, Targets::Labels(labels), &mut out, &mut losses).unwrap();
    out
}

/// Largest difference relative to the larger of the two tensors' largest magnitude.
fn relative_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = a.iter().chain(b).fold(0f32, |m, v| m.max(v.abs())).max(f32::MIN_POSITIVE);
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max) / scale
}

/// The folded and the frozen plan of one model, from the same initial values: the same eval
/// outputs before training, the same first loss with every parameter trained, and with
/// `--update bias` (where the folded bias receives exactly beta's gradient) the same losses over
/// several steps, all within 1e-5 relative.
fn folded_matches_frozen(build: &dyn Fn() -> ForwardGraph, expect_folds: usize) {
    let mut folded = session(build(), options(BatchNormMode::Fold, None));
    let mut frozen = session(build(), options(BatchNormMode::Frozen, None));
    assert_eq!(folded.plan().folded_norms.len(), expect_folds);
    assert!(frozen.plan().folded_norms.is_empty());
    let (x, labels) = batch(&folded, 0);
    let d = relative_difference(&eval_outputs(&mut folded, &x, &labels), &eval_outputs(&mut frozen, &x, &labels));
    assert!(d < 1e-5, "eval outputs differ by {d:e} relative");
    let (a, b) = (folded.train_step(&x, Targets::Labels(&labels)).unwrap(), frozen.train_step(&x, Targets::Labels(&labels)).unwrap());
    assert!((a - b).abs() <= 1e-5 * b.abs(), "first loss: folded {a} vs frozen {b}");

    let mut folded = session(build(), options(BatchNormMode::Fold, Some(UpdatePreset::Bias)));
    let mut frozen = session(build(), options(BatchNormMode::Frozen, Some(UpdatePreset::Bias)));
    let mut losses = Vec::new();
    for step in 0..5 {
        let (x, labels) = batch(&folded, step);
        let a = folded.train_step(&x, Targets::Labels(&labels)).unwrap();
        let b = frozen.train_step(&x, Targets::Labels(&labels)).unwrap();
        assert!((a - b).abs() <= 1e-5 * b.abs(), "--update bias, step {step}: folded {a} vs frozen {b}");
        losses.push(b);
    }
    assert!(losses.windows(2).any(|w| w[0] != w[1]), "training changed nothing: {losses:?}");
    let (x, labels) = batch(&folded, 9);
    let d = relative_difference(&eval_outputs(&mut folded, &x, &labels), &eval_outputs(&mut frozen, &x, &labels));
    assert!(d < 1e-5, "eval outputs after training differ by {d:e} relative");
}

#[test]
fn folded_cnn_and_mobilenetv2_match_frozen_ones() {
    // zoo:cnn: three conv + BatchNorm pairs; mobilenetv2: every one of its 52 BatchNorms follows a conv.
    folded_matches_frozen(&|| pock::models::build("zoo:cnn:size=16,width=8", 4, 3).unwrap(), 3);
    folded_matches_frozen(&|| pock::models::build("zoo:mobilenetv2:classes=4,size=32", 2, 3).unwrap(), 52);
}

#[test]
fn folded_onnx_resnet18_matches_the_frozen_one() {
    let dir = workdir("fold-onnx");
    let path = materialise("resnet18.ts", &dir);
    let import = ImportOptions { shapes: ShapeOverrides::parse(None, &["x=2x3x64x64".to_string()]).unwrap(), ..Default::default() };
    // resnet18: 20 BatchNorms, each after a conv (the downsample ones included).
    folded_matches_frozen(&|| import_file(&path, &import).unwrap().forward, 20);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The folded conv bias takes the BatchNorm's bias name, so `--update bias` selects it; gamma and
/// the running statistics are gone from the plan, and a BatchNorm not after a conv stays.
#[test]
fn folded_names_are_the_batch_norms_bias_names() {
    let forward = pock::models::build("zoo:mobilenetv2:classes=4,size=32", 1, 0).unwrap();
    let t = forward.into_training(options(BatchNormMode::Fold, Some(UpdatePreset::Bias))).unwrap();
    let trained: Vec<String> = t.param_grads.iter().map(|&(p, _)| t.graph.tensor(p).name.clone()).collect();
    assert!(trained.contains(&"features.0.1.bias".to_string()) && trained.contains(&"features.18.1.bias".to_string()), "{trained:?}");
    assert!(trained.iter().all(|n| n.ends_with(".bias") || n == "classifier.1.weight"), "{trained:?}");
    let plan = t.into_plan().unwrap().plan;
    for gone in ["features.0.1.weight", "features.0.1.running_mean", "features.0.1.running_var"] {
        assert!(plan.find(gone).is_none(), "{gone} is still in the folded plan");
    }
    assert!(plan.tensors.iter().all(|t| t.role != Role::RunningStat));
    assert_eq!(plan.folded_norms[0].conv_weight, "features.0.0.weight");
    assert_eq!(plan.folded_norms[0].beta, "features.0.1.bias");

    // zoo:mlp has no conv, so nothing folds.
    let mlp = pock::compile_model("zoo:mlp:inputs=4,classes=3", 2, 0, options(BatchNormMode::Fold, None)).unwrap();
    assert!(mlp.plan.folded_norms.is_empty());
}

/// The memory target: zoo:mobilenetv2 (10 classes, batch 8, 3x128x128, SGD momentum),
/// every parameter trained, fits 125 MiB with BatchNorm folded (153.7 MiB with training-mode
/// BatchNorm). Compile only.
#[test]
fn mobilenetv2_full_update_arena_fits_125_mib() {
    let arena = |mode| pock::compile_model("zoo:mobilenetv2:classes=10,size=128", 8, 0, options(mode, None)).unwrap().plan.arena_bytes;
    let (folded, train) = (arena(BatchNormMode::Fold), arena(BatchNormMode::Train));
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    eprintln!("arena: folded {:.2} MiB, training-mode BatchNorm {:.2} MiB", mib(folded), mib(train));
    assert!(folded <= 125 << 20, "folded arena {:.2} MiB", mib(folded));
    assert!(folded < train);
}

/// `pock export --safetensors` of a trained folded plan writes the original layers (conv weight,
/// BatchNorm gamma, beta and statistics), and a frozen plan of the same model loaded with them
/// computes what the trained folded plan computes.
#[test]
fn folded_export_writes_the_original_layers() {
    let d = workdir("fold-export");
    let (plan, ckpt, weights, data) = (d.join("f.pock"), d.join("f.ckpt.safetensors"), d.join("w.safetensors"), d.join("x.npz"));
    let model = "zoo:cnn:size=16,width=8";
    let o = pock(&["compile", model, "--batch", "4", "--lr", "0.05", "--momentum", "0.9", "-o", s(&plan)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    pock::synth::shapes(64, 16, 1).save_npz(&data).unwrap();
    let o = pock(&["train", s(&plan), "--data", s(&data), "--epochs", "1", "--save", s(&ckpt), "--threads", "1"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = pock(&["export", s(&plan), "--weights", s(&ckpt), "--safetensors", s(&weights)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let mut folded = Session::load(&plan, SessionOptions::default()).unwrap();
    folded.load_weights(&ckpt).unwrap();
    assert_eq!(folded.plan().folded_norms.len(), 3);
    // The same model with frozen BatchNorm, its initial values replaced by the exported ones.
    let bytes = std::fs::read(&weights).unwrap();
    let exported = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names = exported.names();
    names.sort();
    let want_names = ["features.0.weight", "features.1.bias", "features.1.running_mean", "features.1.running_var", "features.1.weight"];
    assert!(want_names.iter().all(|n| names.contains(n)), "{names:?}");
    let mut forward = pock::models::build(model, 4, 0).unwrap();
    let untrained_forward = forward.clone();
    for t in &mut forward.graph.tensors {
        if let Ok(view) = exported.tensor(&t.name) {
            assert_eq!(view.shape(), t.shape.as_slice(), "{}", t.name);
            t.init = Some(view.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect::<Vec<f32>>().into());
        }
    }
    let replaced = forward.graph.tensors.iter().zip(&untrained_forward.graph.tensors).filter(|(a, b)| a.init != b.init).count();
    assert!(replaced > 0);
    let mut frozen = session(forward, options(BatchNormMode::Frozen, None));
    let (x, labels) = batch(&frozen, 3);
    let untrained = eval_outputs(&mut session(untrained_forward, options(BatchNormMode::Frozen, None)), &x, &labels);
    let (want, got) = (eval_outputs(&mut folded, &x, &labels), eval_outputs(&mut frozen, &x, &labels));
    assert!(relative_difference(&want, &untrained) > 1e-3, "training changed nothing, so the test could not tell");
    let diff = relative_difference(&want, &got);
    assert!(diff < 1e-5, "the exported weights compute outputs {diff:e} (relative) away from the folded plan's");
    let _ = std::fs::remove_dir_all(&d);
}
