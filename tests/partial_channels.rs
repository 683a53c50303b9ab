//! Partial-channel updates (issue 7): a scheme file's `[[channels]]` entries train some output
//! channels of convolution weights. Those rows get exactly the full plan's gradient, only they
//! move, and the partial plan computes and keeps less than training the whole weights.

mod common;

use common::{pock, s, workdir};
use pock::compiler::interp::Interpreter;
use pock::compiler::ir::{Phase, Program, Role};
use pock::compiler::{CompileOptions, TrainingGraph, UpdateScheme};
use pock::engine::plan::OptimizerKind;
use pock::engine::session::Targets;
use pock::engine::{Session, SessionOptions};

const SGD: OptimizerKind = OptimizerKind::Sgd { momentum: 0.9, dampening: 0.0, nesterov: false, weight_decay: 0.0 };

fn options(update: UpdateScheme, optimizer: OptimizerKind) -> CompileOptions {
    // Trained from scratch: BatchNorm in training mode (folded initial statistics do not
    // normalise, and a channel that ReLU6 clips for the whole batch gets no gradient).
    CompileOptions {
        optimizer,
        learning_rate: 0.05,
        update,
        batch_norm: pock::compiler::stages::BatchNormMode::Train,
        ..Default::default()
    }
}

fn scheme(toml: &str) -> UpdateScheme {
    UpdateScheme::from_toml(toml, "test.toml").unwrap()
}

/// Quarter channels of two pointwise convs, a contiguous run of explicit channels of a third, and
/// half of a depthwise (grouped) conv, plus the classifier whole.
const MIXED: &str = r#"
train = ["classifier.*"]
[[channels]]
params = "features.1[4-5].conv.0.0.weight"
fraction = "1/4"
[[channels]]
params = "features.2.conv.0.0.weight"
indices = [7, 5, 6, 4]
[[channels]]
params = "features.3.conv.1.0.weight"
fraction = "1/2"
"#;

fn training(model: &str, batch: usize, update: UpdateScheme) -> TrainingGraph {
    pock::models::build(model, batch, 3).unwrap().into_training(options(update, SGD)).unwrap()
}

/// The gradient of every trainable parameter on one fixed batch, by name, in f64.
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

#[test]
fn partial_gradients_equal_the_full_plans_rows() {
    let model = "zoo:mobilenetv2:classes=4,size=32";
    let full = training(model, 2, UpdateScheme::default());
    let partial = training(model, 2, scheme(MIXED));
    let full_grads = gradients(&full);
    // name -> (rows, per-row elements) of each partial weight.
    let expected_rows = [
        ("features.14.conv.0.0.weight", 0..144, 96),
        ("features.15.conv.0.0.weight", 0..240, 160),
        ("features.2.conv.0.0.weight", 4..8, 16),
        ("features.3.conv.1.0.weight", 0..72, 9),
    ];
    let mut seen = 0;
    for (name, grad) in gradients(&partial) {
        let whole = &full_grads.iter().find(|(n, _)| *n == name).unwrap().1;
        let (want, what) = match expected_rows.iter().find(|(n, _, _)| *n == name) {
            Some((_, rows, per_row)) => {
                seen += 1;
                let c = full.graph.shape(full.graph.find(&name).unwrap())[0];
                assert_eq!(whole.len(), c * per_row, "{name}: per-row size");
                (&whole[rows.start * per_row..rows.end * per_row], format!("rows {rows:?} of {c}"))
            }
            None => (&whole[..], "whole".into()),
        };
        assert_eq!(grad.len(), want.len(), "{name} ({what}): gradient size");
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(scale > 0.0, "{name}: the full gradient of these rows is zero, so the comparison proves nothing");
        let worst = grad.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(worst <= 1e-6 * scale, "{name} ({what}): differs by {worst} (largest gradient {scale})");
    }
    assert_eq!(seen, expected_rows.len(), "every partial weight has a gradient");
    // The partial weights' gradients come from the row-restricted op; nothing computes the whole.
    let row_ops = partial.graph.nodes.iter().filter(|n| n.op.name() == "Conv2dGradWeightRows").count();
    assert_eq!(row_ops, expected_rows.len());
}

/// The selected rows move, every other row of a partial weight and every frozen parameter keeps
/// its exact bits, with SGD momentum and with Adam over accumulated, clipped gradients.
#[test]
fn unselected_rows_and_frozen_parameters_are_bit_identical_after_training() {
    let adam = OptimizerKind::Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 };
    for (optimizer, accumulate, clip) in [(SGD, 1, None), (adam, 2, Some(1.0))] {
        let o = CompileOptions { accumulate, clip_grad_norm: clip, ..options(scheme(MIXED), optimizer.clone()) };
        let plan = pock::compile_model("zoo:mobilenetv2:classes=4,size=32", 4, 1, o).unwrap();
        let mut session =
            Session::from_bytes(&plan.to_bytes(), SessionOptions { threads: 1, reference_kernels: false, ..Default::default() }).unwrap();
        let params: Vec<(String, bool, Vec<usize>)> = session
            .plan()
            .tensors
            .iter()
            .filter_map(|t| match t.role {
                Role::Parameter { trainable } => Some((t.name.clone(), trainable, t.shape.clone())),
                _ => None,
            })
            .collect();
        let before: Vec<Vec<f32>> = params.iter().map(|(n, ..)| session.read_tensor(n).unwrap()).collect();
        let data = pock::synth::shapes(16, 32, 4);
        let x: Vec<f32> = data.x.iter().flat_map(|&v| [v, v, v]).collect();
        let sample = 3 * 32 * 32;
        for step in 0..4 {
            let b = &x[step * 4 * sample..(step + 1) * 4 * sample];
            let labels: Vec<i64> = (0..4).map(|i| ((step * 4 + i) % 4) as i64).collect();
            session.train_step(b, Targets::Labels(&labels)).unwrap();
        }
        let rows_of = |name: &str, c: usize| match name {
            "features.14.conv.0.0.weight" | "features.15.conv.0.0.weight" => Some(0..c.div_ceil(4)),
            "features.2.conv.0.0.weight" => Some(4..8),
            "features.3.conv.1.0.weight" => Some(0..c.div_ceil(2)),
            _ => None,
        };
        let mut partial = 0;
        for ((name, trainable, shape), old) in params.iter().zip(&before) {
            let new = session.read_tensor(name).unwrap();
            let per_row = old.len() / shape[0];
            let row_same =
                |r: usize| old[r * per_row..(r + 1) * per_row].iter().zip(&new[r * per_row..]).all(|(a, b)| a.to_bits() == b.to_bits());
            match rows_of(name, shape[0]) {
                Some(rows) => {
                    partial += 1;
                    assert!(trainable, "{name} is trainable (in part)");
                    for r in 0..shape[0] {
                        let moved = !row_same(r);
                        // A selected row whose gradient happens to be zero every step would not
                        // move; with these data every selected row does.
                        assert_eq!(moved, rows.contains(&r), "{optimizer:?}: {name} row {r} (selected {rows:?}) moved: {moved}");
                    }
                }
                None => {
                    let same = (0..shape[0]).all(row_same);
                    assert_eq!(same, !trainable, "{optimizer:?}: {name} (trainable: {trainable})");
                }
            }
        }
        assert_eq!(partial, 4);
        // Optimizer state exists for the selected rows only.
        for t in &session.plan().tensors {
            if let Role::OptimizerState { param, .. } | Role::GradAccumulator { param } = t.role {
                let p = &session.plan().tensors[param.index()];
                if let Some(rows) = rows_of(&p.name, p.shape[0]) {
                    assert_eq!(t.shape[0], rows.len(), "{}: state of {} rows", t.name, rows.len());
                    assert_eq!(t.shape[1..], p.shape[1..]);
                }
            }
        }
    }
}

/// Training a quarter of the channels computes and keeps less than training the same weights
/// whole: fewer train-program flops, less optimizer state, no larger arena.
#[test]
fn a_partial_plan_costs_less_than_whole_weights() {
    let model = "zoo:mobilenetv2:classes=10,size=64";
    let report = |u: UpdateScheme| pock::inspect::report(&pock::compile_model(model, 2, 0, options(u, SGD)).unwrap().plan);
    let whole = report(scheme("train = [\"classifier.*\", \"features.1[4-7].conv.0.0.weight\"]"));
    let quarter =
        report(scheme("train = [\"classifier.*\"]\n[[channels]]\nparams = \"features.1[4-7].conv.0.0.weight\"\nfraction = \"1/4\"\n"));
    let flops = |r: &pock::inspect::PlanReport| r.programs.iter().find(|p| p.name == "train").unwrap().flops;
    assert_eq!(quarter.ops.backward, whole.ops.backward, "the same backward ops, each on fewer rows");
    assert!(flops(&quarter) < flops(&whole), "train flops {} vs {}", flops(&quarter), flops(&whole));
    assert!(
        quarter.optimizer_state_bytes * 2 < whole.optimizer_state_bytes,
        "optimizer state {} vs {}",
        quarter.optimizer_state_bytes,
        whole.optimizer_state_bytes
    );
    assert!(quarter.arena_bytes < whole.arena_bytes, "arena {} vs {}", quarter.arena_bytes, whole.arena_bytes);
    eprintln!(
        "whole: train {} MFLOP, optimizer state {} B, arena {} B; quarter: {} MFLOP, {} B, {} B",
        flops(&whole) / 1_000_000,
        whole.optimizer_state_bytes,
        whole.arena_bytes,
        flops(&quarter) / 1_000_000,
        quarter.optimizer_state_bytes,
        quarter.arena_bytes
    );
}

/// Schemes that cannot be honoured are refused with a message naming the parameter and what to do.
#[test]
fn unsupported_selections_are_refused() {
    let model = "zoo:mobilenetv2:classes=4,size=32";
    let err =
        |toml: &str| pock::models::build(model, 1, 0).unwrap().into_training(options(scheme(toml), SGD)).map(drop).unwrap_err().to_string();
    let e = err("[[channels]]\nparams = \"classifier.1.weight\"\nfraction = \"1/2\"\n");
    assert!(e.contains("classifier.1.weight") && e.contains("convolution weights only"), "{e}");
    let e = err("[[channels]]\nparams = \"features.14.conv.0.0.weight\"\nindices = [0, 3, 17]\n");
    assert!(e.contains("contiguous"), "{e}");
    let e = err("[[channels]]\nparams = \"features.99.*\"\nfraction = \"1/2\"\n");
    assert!(e.contains("matches no parameter"), "{e}");
    let e = err("[[channels]]\nparams = \"features.14.conv.0.0.weight\"\nfraction = \"1/2\"\n[[channels]]\nparams = \"features.1[4-5].*.weight\"\nfraction = \"1/4\"\n");
    assert!(e.contains("two [[channels]] entries"), "{e}");
}

/// The paper-like scheme of issue 7 (biases of blocks 7 onward, the classifier, a quarter of the
/// channels of the first pointwise conv of blocks 14-17), from the checked-in scheme file through
/// the CLI: at most a third of the full plan's arena on zoo:mobilenetv2 (10 classes, batch 8,
/// 128x128, SGD momentum). The figures are in BENCHMARKS.md "Memory".
#[test]
fn paper_scheme_fits_a_third_of_full_on_mobilenetv2() {
    let d = workdir("paper_scheme");
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/schemes/mobilenetv2-paper.toml");
    let arena = |name: &str, scheme: &[&str]| -> u64 {
        let plan = d.join(name);
        let mut args = vec!["compile", "zoo:mobilenetv2:classes=10,size=128", "--batch", "8", "--momentum", "0.9", "-o", s(&plan)];
        args.extend_from_slice(scheme);
        let out = pock(&args);
        assert!(out.status.success(), "{scheme:?}: {}", String::from_utf8_lossy(&out.stderr));
        let out = pock(&["inspect", s(&plan), "--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        json["arena_bytes"].as_u64().unwrap()
    };
    let full = arena("full.pock", &["--update", "full"]);
    let paper = arena("paper.pock", &["--scheme", s(&file)]);
    let ratio = paper as f64 / full as f64;
    eprintln!("full {full} B, paper-like with quarter channels {paper} B, ratio {ratio:.3}");
    assert!(ratio <= 1.0 / 3.0, "paper-like scheme: {paper} B is {ratio:.3} of full ({full} B)");
    let _ = std::fs::remove_dir_all(&d);
}

/// `--scheme` combines with `--train` as a union, trains through the CLI (the loss falls), and a
/// malformed file is refused with its name and what the format expects.
#[test]
fn cli_scheme_file_trains_and_bad_files_are_refused() {
    let d = workdir("scheme_cli");
    let data = d.join("train.npz");
    pock::synth::shapes(256, 16, 1).save_npz(&data).unwrap();
    let file = d.join("scheme.toml");
    let text = "update = \"bias\"\n[[channels]]\nparams = \"features.[48].weight\"\nfraction = \"1/2\"\n";
    std::fs::write(&file, text).unwrap();
    let (plan, log) = (d.join("p.pock"), d.join("p.jsonl"));
    let model = "zoo:cnn:size=16,width=8";
    let args = [
        "compile",
        model,
        "--batch",
        "16",
        "--lr",
        "0.05",
        "--momentum",
        "0.9",
        "--batch-norm",
        "train",
        "--scheme",
        s(&file),
        "--train",
        "features.0.*",
        "-o",
        s(&plan),
    ];
    let out = pock(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = pock(&["train", s(&plan), "--data", s(&data), "--epochs", "6", "--log-json", s(&log), "--threads", "1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let losses: Vec<f64> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64().unwrap())
        .collect();
    let per_epoch = 256 / 16;
    let mean = |r: &[f64]| r.iter().sum::<f64>() / r.len() as f64;
    let (first, last) = (mean(&losses[..per_epoch]), mean(&losses[losses.len() - per_epoch..]));
    eprintln!("bias + half of features.4 and features.8 + features.0: mean loss of the first epoch {first:.4}, of the last {last:.4}");
    assert!(last < 0.95 * first, "loss {first} -> {last}");
    // The plan says which weights train in part: features.4 and .8 have state for half their rows.
    let out = pock(&["inspect", s(&plan), "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Momentum buffers: features.0 whole (8x1x3x3), features.4 half (8 of 16 rows x 8x3x3), features.8
    // half (16 of 32 rows x 16x3x3), every BatchNorm bias (8 + 16 + 32) and the classifier (32x4 + 4).
    let expected = 4 * (8 * 9 + 8 * 8 * 9 + 16 * 16 * 9 + 8 + 16 + 32 + 32 * 4 + 4);
    assert_eq!(json["optimizer_state_bytes"].as_u64(), Some(expected as u64), "{json}");

    for (bad, says) in [
        ("[[channels]]\nparams = \"features.4.weight\"\nfraction = \"1/3\"\n", "1/8"),
        // A BatchNorm scale (the bias preset trains the classifier whole, which a [[channels]] entry
        // cannot then narrow).
        ("[[channels]]\nparams = \"features.1.weight\"\nfraction = \"1/2\"\n", "convolution weights only"),
        ("update = \"last:2\"\n", "two update presets"),
        ("[channels]\nparams = 1\n", "scheme.toml"),
    ] {
        std::fs::write(&file, bad).unwrap();
        // Training-mode BatchNorm, so that its scale is a parameter (folding merges it into the conv).
        let e = common::fails(&["compile", model, "--batch-norm", "train", "--scheme", s(&file), "--update", "bias", "-o", s(&plan)]);
        assert!(e.contains(says), "{bad}: {e}");
    }
    let e = common::fails(&["compile", model, "--scheme", s(&d.join("missing.toml")), "-o", s(&plan)]);
    assert!(e.contains("missing.toml"), "{e}");
    let _ = std::fs::remove_dir_all(&d);
}
