//! The command line driven as a user would: compile -> inspect -> train -> eval -> infer, on
//! files the test writes itself, plus the errors a user meets.

use std::path::Path;

mod common;
use common::{fails, pock, s, workdir};

fn ok(args: &[&str]) -> String {
    let out = pock(args);
    assert!(out.status.success(), "pock {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn compile_inspect_train_eval_infer() {
    let d = workdir("flow");
    let (plan, train, test, ckpt, ckpt2, log, pred) = (
        d.join("cnn.pock"),
        d.join("train.npz"),
        d.join("test.npz"),
        d.join("cnn.ckpt.safetensors"),
        d.join("cnn2.safetensors"),
        d.join("log.jsonl"),
        d.join("pred.npz"),
    );
    pock::synth::shapes(320, 16, 1).save_npz(&train).unwrap();
    pock::synth::shapes(70, 16, 2).save_npz(&test).unwrap();

    // From scratch, so BatchNorm trains with batch statistics.
    let args = ["--batch", "16", "--optimizer", "sgd", "--lr", "0.05", "--momentum", "0.9", "--batch-norm", "train"];
    ok(&[&["compile", "zoo:cnn:size=16,width=8", "-o", s(&plan)][..], &args].concat());

    let json: serde_json::Value = serde_json::from_str(&ok(&["inspect", s(&plan), "--json"])).unwrap();
    for key in ["arena_bytes", "weight_bytes", "trainable_params", "optimizer_state_bytes", "saved_activation_bytes"] {
        assert!(json[key].as_u64().unwrap() > 0, "{key}: {json}");
    }
    assert!(json["saved_activation_bytes"].as_u64() < json["arena_bytes"].as_u64());
    let ops = &json["ops"];
    assert!(
        ops["forward"].as_u64().unwrap() > 0 && ops["backward"].as_u64().unwrap() > 0 && ops["optimizer"].as_u64().unwrap() > 0,
        "{ops}"
    );
    let inputs = json["inputs"].as_array().unwrap();
    assert_eq!(inputs[0]["shape"], serde_json::json!([16, 1, 16, 16]));
    assert_eq!(inputs[0]["dtype"], "float32");
    assert_eq!(inputs[1]["dtype"], "int64");
    // SGD with momentum keeps one buffer per trainable parameter.
    assert_eq!(json["optimizer_state_bytes"].as_u64().unwrap(), 4 * json["trainable_params"].as_u64().unwrap());
    let table = ok(&["inspect", s(&plan)]);
    assert!(table.contains("arena") && table.contains("train"), "{table}");

    ok(&["train", s(&plan), "--data", s(&train), "--epochs", "4", "--save", s(&ckpt), "--log-json", s(&log), "--threads", "1"]);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 4 * (320 / 16));
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["step"].as_u64().unwrap(), i as u64 + 1);
        assert!(l["loss"].as_f64().unwrap().is_finite() && l["lr"].as_f64().unwrap() > 0.0 && l["ms"].as_f64().unwrap() > 0.0, "{l}");
    }

    let eval: serde_json::Value =
        serde_json::from_str(&ok(&["eval", s(&plan), "--weights", s(&ckpt), "--data", s(&test), "--json"])).unwrap();
    let acc = eval["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc) && eval["loss"].as_f64().unwrap() > 0.0, "{eval}");
    assert_eq!(eval["samples"], 70);
    let untrained: serde_json::Value = serde_json::from_str(&ok(&["eval", s(&plan), "--data", s(&test), "--json"])).unwrap();
    assert!(acc > untrained["accuracy"].as_f64().unwrap() + 0.2, "trained {eval} vs untrained {untrained}");

    ok(&["train", s(&plan), "--data", s(&train), "--epochs", "1", "--resume", s(&ckpt), "--save", s(&ckpt2)]);
    ok(&["infer", s(&plan), "--weights", s(&ckpt2), "--data", s(&test), "--out", s(&pred)]);
    let p = pock::data::Dataset::load_npz(&pred);
    // `pred.npz` holds y only; read it back as a dataset's targets via the npz reader.
    let file = std::fs::File::open(&pred).unwrap();
    let mut npz = ndarray_npy::NpzReader::new(file).unwrap();
    let y: ndarray::ArrayD<f32> = npz.by_name("y").unwrap();
    assert_eq!(y.shape(), &[70, 4]);
    drop(p);
}

#[test]
fn errors_are_one_line_and_actionable() {
    let d = workdir("errors");
    let plan = d.join("mlp.pock");
    let e = fails(&["compile", "zoo:nosuch", "-o", s(&plan)]);
    assert!(e.contains("mlp") && e.contains("cnn"), "lists known models: {e}");
    let e = fails(&["compile", "model.onnx", "-o", s(&plan)]);
    assert!(e.contains("ONNX"), "{e}");
    let e = fails(&["compile", "zoo:mlp:widht=3", "-o", s(&plan)]);
    assert!(e.contains("widht"), "{e}");
    fails(&["compile", "zoo:mlp", "--target", "toaster", "-o", s(&plan)]);

    ok(&["compile", "zoo:mlp:inputs=3,classes=2", "--batch", "4", "-o", s(&plan)]);
    let e = fails(&["train", s(&d.join("missing.pock")), "--data", "x.npz"]);
    assert!(e.contains("missing.pock"), "{e}");
    let bad_shape = d.join("bad.npz");
    pock::synth::blobs(20, 5, 2, 0).save_npz(&bad_shape).unwrap();
    let e = fails(&["train", s(&plan), "--data", s(&bad_shape)]);
    assert!(e.contains("[5]") && e.contains("[3]") && e.contains("bad.npz"), "names the file, expected and actual sample shapes: {e}");
    let not_npz = d.join("junk.npz");
    std::fs::write(&not_npz, b"not a zip").unwrap();
    fails(&["eval", s(&plan), "--data", s(&not_npz)]);
    let junk_plan = d.join("junk.pock");
    std::fs::write(&junk_plan, b"POCKPLAN").unwrap();
    let e = fails(&["inspect", s(&junk_plan)]);
    assert!(e.contains("truncated"), "{e}");
    let e = fails(&["train", s(&plan), "--data", s(&bad_shape), "--lr-schedule", "wiggle"]);
    assert!(e.contains("wiggle") || e.contains("[5]"), "{e}");
}

#[test]
fn help_lists_models_and_keys() {
    let h = ok(&["compile", "--help"]);
    for needle in ["mlp", "cnn", "mobilenetv2", "resnet18", "width", "classes", "--accumulate", "--clip-grad-norm"] {
        assert!(h.contains(needle), "compile --help lacks {needle}");
    }
}

#[test]
fn resumed_training_matches_uninterrupted_training() {
    let d = workdir("resume");
    let (plan, train) = (d.join("mlp.pock"), d.join("train.npz"));
    pock::synth::blobs(100, 6, 3, 4).save_npz(&train).unwrap();
    ok(&[
        "compile",
        "zoo:mlp:inputs=6,classes=3",
        "--batch",
        "16",
        "--optimizer",
        "adam",
        "--lr",
        "0.01",
        "--accumulate",
        "2",
        "-o",
        s(&plan),
    ]);
    let run = |args: &[&str], log: &Path| {
        let mut a = vec![
            "train",
            s(&plan),
            "--data",
            s(&train),
            "--threads",
            "1",
            "--seed",
            "9",
            "--lr-schedule",
            "step:every=5,gamma=0.5",
            "--log-json",
            s(log),
        ];
        a.extend_from_slice(args);
        ok(&a);
        std::fs::read_to_string(log).unwrap().lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).collect::<Vec<_>>()
    };
    let whole = run(&["--epochs", "3"], &d.join("whole.jsonl"));
    let ckpt = d.join("one.safetensors");
    let mut parts = run(&["--epochs", "1", "--save", s(&ckpt)], &d.join("a.jsonl"));
    parts.extend(run(&["--epochs", "2", "--resume", s(&ckpt)], &d.join("b.jsonl")));
    assert_eq!(whole.len(), 3 * (100 / 16));
    let key = |v: &[serde_json::Value]| {
        v.iter().map(|l| (l["step"].as_u64(), l["epoch"].as_u64(), l["loss"].as_f64(), l["lr"].as_f64())).collect::<Vec<_>>()
    };
    assert_eq!(key(&parts), key(&whole));
}

#[test]
fn inspect_lists_every_node_with_ops() {
    let d = workdir("ops");
    let plan = d.join("cnn.pock");
    ok(&[
        "compile",
        "zoo:cnn:size=12,width=4",
        "--batch",
        "2",
        "--optimizer",
        "sgd",
        "--momentum",
        "0.9",
        "--batch-norm",
        "train",
        "-o",
        s(&plan),
    ]);
    let t = ok(&["inspect", s(&plan), "--ops"]);
    for needle in ["Conv2dGradWeight", "BatchNormTrainGrad", "SgdUpdate", "MaxPool2d", "eval program", "infer program"] {
        assert!(t.contains(needle), "missing {needle}:\n{t}");
    }
}

#[test]
fn cosine_schedule_spans_the_whole_run() {
    let d = workdir("cosine");
    let (plan, train, log) = (d.join("mlp.pock"), d.join("train.npz"), d.join("log.jsonl"));
    pock::synth::blobs(64, 4, 2, 1).save_npz(&train).unwrap();
    ok(&["compile", "zoo:mlp:inputs=4", "--batch", "16", "--lr", "0.1", "-o", s(&plan)]);
    ok(&[
        "train",
        s(&plan),
        "--data",
        s(&train),
        "--epochs",
        "3",
        "--lr-schedule",
        "cosine",
        "--eval-data",
        s(&train),
        "--log-json",
        s(&log),
    ]);
    let lrs: Vec<f64> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["lr"].as_f64().unwrap())
        .collect();
    assert_eq!(lrs.len(), 12);
    assert!((lrs[0] - 0.1).abs() < 1e-6, "{lrs:?}");
    // One decay over all 12 steps, not one per epoch.
    assert!(lrs.windows(2).all(|w| w[1] < w[0]), "{lrs:?}");
    assert!(lrs[11] < 0.01, "{lrs:?}");
}

#[test]
fn a_non_finite_gradient_is_skipped_warned_and_reported() {
    let d = workdir("skip");
    let (plan, data, log) = (d.join("mlp.pock"), d.join("train.npz"), d.join("log.jsonl"));
    // Data files must hold finite numbers, but one this large overflows the global gradient norm
    // that clipping computes: its batch's step is skipped, and the other batches train as usual.
    let mut set = pock::synth::blobs(64, 6, 3, 1);
    set.x[0] = 3.0e38;
    set.save_npz(&data).unwrap();
    ok(&[
        "compile",
        "zoo:mlp:inputs=6,hidden=16,classes=3",
        "--batch",
        "8",
        "--optimizer",
        "adam",
        "--lr",
        "0.01",
        "--clip-grad-norm",
        "1",
        "-o",
        s(&plan),
    ]);
    let out = pock(&["train", s(&plan), "--data", s(&data), "--epochs", "1", "--max-loss-growth", "0", "--log-json", s(&log)]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let skipping: Vec<&serde_json::Value> = lines.iter().filter(|l| l["skipped"].as_u64().unwrap() > 0).collect();
    assert_eq!(skipping.len(), 1, "one batch holds the huge value: {lines:?}");
    let (step, skipped) = (skipping[0]["step"].as_u64().unwrap(), skipping[0]["skipped"].as_u64().unwrap());
    // With clipping the whole step is skipped and counted once.
    assert_eq!(skipped, 1);
    assert_eq!(lines.last().unwrap()["skipped_updates"].as_u64().unwrap(), 1);
    assert_eq!(lines.last().unwrap()["optimizer_step"].as_u64().unwrap(), lines.len() as u64 - 1, "the skipped step is not counted");
    assert!(
        stderr.contains(&format!("warning: step {step}: {skipped} parameter update(s) skipped because a gradient was not finite")),
        "{stderr}"
    );
    assert!(stdout.contains(&format!("{skipped} parameter update(s) skipped on non-finite gradients")), "{stdout}");
}
