//! The command line refuses nonsense before it starts, never destroys an input, and never loses
//! progress (issue 6, parts 3 to 7), driven as a user would.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

mod common;
use common::{fails, pock, s, workdir};

fn ok(args: &[&str]) -> Output {
    let out = pock(args);
    assert!(out.status.success(), "pock {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    out
}

/// A small classifier plan and a dataset for it in `d`.
fn mlp_setup(d: &Path, extra: &[&str]) -> (PathBuf, PathBuf) {
    let (plan, data) = (d.join("mlp.pock"), d.join("train.npz"));
    pock::synth::blobs(64, 4, 3, 1).save_npz(&data).unwrap();
    let mut args = vec!["compile", "zoo:mlp:inputs=4,hidden=8,classes=3", "--batch", "8", "-o", s(&plan)];
    args.extend_from_slice(extra);
    ok(&args);
    (plan, data)
}

fn temporaries(d: &Path) -> Vec<String> {
    std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| n.ends_with(".tmp")).collect()
}

#[test]
fn optimizer_settings_are_checked_with_their_range() {
    let d = workdir("hyper");
    let o = d.join("x.pock");
    for (args, needle) in [
        (vec!["--lr", "nan"], "--lr NaN is out of range: it must be a finite number > 0"),
        (vec!["--lr=-1"], "--lr -1 is out of range"),
        // Without `=`, a negative number is a value, not clap's "unexpected argument" tip.
        (vec!["--lr", "-1"], "--lr -1 is out of range"),
        (vec!["--lr", "0"], "--lr 0 is out of range"),
        (vec!["--momentum", "2"], "--momentum 2 is out of range: it must be in [0, 1)"),
        (vec!["--momentum", "-0.5"], "--momentum -0.5 is out of range"),
        (vec!["--weight-decay", "-1"], "--weight-decay -1 is out of range: it must be a finite number >= 0"),
        (vec!["--optimizer", "adam", "--beta2", "1"], "--beta2 1 is out of range: it must be in [0, 1)"),
        (vec!["--optimizer", "adam", "--beta1", "-0.1"], "--beta1 -0.1 is out of range"),
        (vec!["--optimizer", "adamw", "--eps=-1"], "--eps -1 is out of range: it must be a finite number > 0"),
        (vec!["--clip-grad-norm", "0"], "--clip-grad-norm 0 is out of range"),
        (vec!["--accumulate", "0"], "--accumulate 0 is out of range"),
    ] {
        let mut a = vec!["compile", "zoo:mlp", "-o", s(&o)];
        a.extend_from_slice(&args);
        let e = fails(&a);
        assert!(e.contains(needle), "{args:?}: {e}");
        assert!(!o.exists(), "{args:?} wrote a plan");
    }
    let (plan, data) = mlp_setup(&d, &[]);
    let e = fails(&["train", s(&plan), "--data", s(&data), "--lr", "-0.1"]);
    assert!(e.contains("--lr -0.1 is out of range"), "{e}");
    let e = fails(&["train", s(&plan), "--data", s(&data), "--lr", "nan"]);
    assert!(e.contains("--lr NaN"), "{e}");
}

#[test]
fn impossible_sizes_are_refused_before_allocating() {
    let d = workdir("sizes");
    let o = d.join("x.pock");
    let started = Instant::now();
    let e = fails(&["compile", "zoo:mlp", "--batch", "18446744073709551615", "-o", s(&o)]);
    assert!(e.contains("--batch 18446744073709551615 is out of range"), "{e}");
    let e = fails(&["compile", "zoo:mobilenetv2:width=100", "-o", s(&o)]);
    assert!(e.contains("width") && e.contains("up to 4"), "{e}");
    // The largest batch accepted compiles, and is refused by the memory check with the bytes it needs.
    let e = fails(&["compile", "zoo:cnn", "--batch", "1048576", "-o", s(&o)]);
    assert!(e.contains("the plan needs") && e.contains("bytes") && e.contains("physical memory"), "{e}");
    let e = fails(&["compile", "zoo:cnn", "--batch", "4", "--memory-budget", "64K", "-o", s(&o)]);
    assert!(e.contains("more than --memory-budget of 65536 bytes"), "{e}");
    for (spec, needle) in [
        ("zoo:mlp:hidden=1000000", "an integer in [1, 65536]"),
        ("zoo:cnn:size=4294967296", "an integer in [4, 65536]"),
        ("zoo:mlp:inputs=65536,hidden=65536", "past 1073741824"),
    ] {
        let e = fails(&["compile", spec, "--batch", "1", "-o", s(&o)]);
        assert!(e.contains(needle), "{spec}: {e}");
    }
    assert!(started.elapsed() < Duration::from_secs(60), "refusing took {:?}", started.elapsed());
    assert!(!o.exists());
    // A plan that fits compiles, and a session on it is refused under a smaller budget.
    ok(&["compile", "zoo:cnn", "--batch", "4", "-o", s(&o)]);
    let data = d.join("d.npz");
    pock::synth::shapes(8, 28, 0).save_npz(&data).unwrap();
    let e = fails(&["eval", s(&o), "--data", s(&data), "--memory-budget", "64K"]);
    assert!(e.contains("arena needs") && e.contains("65536 bytes"), "{e}");
}

#[test]
fn runs_that_would_train_nothing_are_refused() {
    let d = workdir("nothing");
    let (plan, data) = mlp_setup(&d, &["--accumulate", "1000"]);
    let ckpt = d.join("c.safetensors");
    let e = fails(&["train", s(&plan), "--data", s(&data), "--save", s(&ckpt)]);
    assert!(e.contains("no optimizer step") && e.contains("1000"), "{e}");
    let (plan, data) = mlp_setup(&d, &[]);
    let e = fails(&["train", s(&plan), "--data", s(&data), "--epochs", "0", "--save", s(&ckpt)]);
    assert!(e.contains("--epochs 0 trains nothing"), "{e}");
    assert!(!ckpt.exists(), "a checkpoint of nothing was written");
    let e = fails(&["train", s(&plan), "--data", s(&data), "--lr-schedule", "cosine:total=0"]);
    assert!(e.contains("total must be at least 1"), "{e}");
    let e = fails(&["train", s(&plan), "--data", s(&data), "--save-every", "0", "--save", s(&ckpt)]);
    assert!(e.contains("--save-every 0"), "{e}");
    // A schedule that decays to 0 inside the run trains, with a warning.
    let out = ok(&["train", s(&plan), "--data", s(&data), "--epochs", "3", "--lr-schedule", "cosine:total=4"]);
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("warning") && err.contains("learning rate 0"), "{err}");
}

#[test]
fn threads_outside_the_cores_say_what_is_used() {
    let d = workdir("threads");
    let (plan, data) = mlp_setup(&d, &[]);
    let cores = std::thread::available_parallelism().unwrap().get();
    for (t, used) in [("0", 1), ("100000", cores)] {
        let out = ok(&["eval", s(&plan), "--data", s(&data), "--threads", t]);
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.contains(&format!("--threads {t} is outside 1..={cores}")) && err.contains(&format!("using {used}")), "{err}");
    }
    let out = ok(&["eval", s(&plan), "--data", s(&data), "--threads", "1"]);
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn outputs_are_checked_before_training() {
    let d = workdir("outputs");
    let (plan, data) = mlp_setup(&d, &[]);
    let plan_bytes = std::fs::read(&plan).unwrap();
    let data_bytes = std::fs::read(&data).unwrap();
    let log = d.join("log.jsonl");
    let t = |extra: &[&str]| {
        let mut a = vec!["train", s(&plan), "--data", s(&data), "--epochs", "50"];
        a.extend_from_slice(extra);
        let started = Instant::now();
        let e = fails(&a);
        (e, started.elapsed())
    };
    // A missing directory fails at once, not after the training.
    let (e, took) = t(&["--save", s(&d.join("no/such/dir/c.safetensors")), "--log-json", s(&log)]);
    assert!(e.contains("does not exist"), "{e}");
    assert!(!log.exists(), "training started: {took:?}");

    let link = d.join("link.npz");
    std::os::unix::fs::symlink(&data, &link).unwrap();
    let hard = d.join("hard.pock");
    std::fs::hard_link(&plan, &hard).unwrap();
    for (flag, path, needle) in [
        ("--save", plan.clone(), "is the plan file"),
        ("--log-json", data.clone(), "is the data file"),
        ("--save", link.clone(), "is the data file"),
        ("--log-json", hard.clone(), "is the plan file"),
    ] {
        let (e, _) = t(&[flag, s(&path)]);
        assert!(e.contains(needle) && e.contains("destroy an input"), "{flag} {}: {e}", path.display());
    }
    let (e, _) = t(&["--save", s(&log), "--log-json", s(&log)]);
    assert!(e.contains("name the same file"), "{e}");
    for special in ["/dev/full", "/dev/null"] {
        let (e, _) = t(&["--save", special]);
        assert!(e.contains("not a regular file"), "{e}");
    }
    let (e, _) = t(&["--log-json", s(&d)]);
    assert!(e.contains("is a directory"), "{e}");
    let e = fails(&["infer", s(&plan), "--data", s(&data), "--out", s(&data)]);
    assert!(e.contains("--out") && e.contains("data file"), "{e}");
    let e = fails(&["compile", "zoo:mlp", "-o", "/dev/full"]);
    assert!(e.contains("not a regular file"), "{e}");
    assert_eq!(std::fs::read(&plan).unwrap(), plan_bytes);
    assert_eq!(std::fs::read(&data).unwrap(), data_bytes);
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(&std::fs::metadata("/dev/full").unwrap().file_type()));

    // Saving through a symlink writes its target and keeps the link; no temporary is left.
    let real = d.join("real.safetensors");
    std::fs::write(&real, b"old").unwrap();
    let ckpt_link = d.join("ckpt-link.safetensors");
    std::os::unix::fs::symlink(&real, &ckpt_link).unwrap();
    ok(&["train", s(&plan), "--data", s(&data), "--save", s(&ckpt_link)]);
    assert!(std::fs::symlink_metadata(&ckpt_link).unwrap().file_type().is_symlink());
    assert!(std::fs::read(&real).unwrap().len() > 100);
    assert!(temporaries(&d).is_empty(), "{:?}", temporaries(&d));
    // Saving over the checkpoint resumed from is fine: it is read whole first.
    ok(&["train", s(&plan), "--data", s(&data), "--resume", s(&real), "--save", s(&real)]);
}

#[test]
fn stdout_that_cannot_be_written_fails_loudly() {
    let d = workdir("stdout");
    let (plan, data) = mlp_setup(&d, &[]);
    for args in [vec!["inspect", s(&plan)], vec!["inspect", s(&plan), "--json"], vec!["eval", s(&plan), "--data", s(&data)]] {
        let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_pock")).args(&args).stdout(full).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.starts_with("error: standard output") && err.contains("No space left"), "{args:?}: {err}");
    }
    // Progress that cannot be shown does not stop a run (the result still comes out).
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pock"))
        .args(["train", s(&plan), "--data", s(&data), "--epochs", "2", "--threads", "0"])
        .stderr(full)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8(out.stdout).unwrap().contains("trained 2 epoch(s)"));
}

#[test]
fn inspect_speaks_in_words_and_numbers() {
    let d = workdir("inspect");
    let plan = d.join("p.pock");
    ok(&["compile", "zoo:cnn:size=12,width=4", "--batch", "2", "--optimizer", "adamw", "--weight-decay", "0.01", "-o", s(&plan)]);
    let t = String::from_utf8(ok(&["inspect", s(&plan), "--ops"]).stdout).unwrap();
    for debug in ["{", "}", "Some(", "None", "AdamW {", "SoftmaxCrossEntropy {", "Forward ", "[2, "] {
        assert!(!t.contains(debug), "Rust debug text '{debug}' in:\n{t}");
    }
    for words in [
        "AdamW (beta1 0.9, beta2 0.999, eps 1e-8, weight decay 0.01)",
        "softmax cross-entropy over 4 classes",
        "not clipped",
        "2x1x12x12",
        "forward",
    ] {
        assert!(t.contains(words), "missing '{words}' in:\n{t}");
    }
    let j: serde_json::Value = serde_json::from_slice(&ok(&["inspect", s(&plan), "--json"]).stdout).unwrap();
    assert_eq!(j["optimizer"]["kind"], "adamw");
    assert_eq!(j["optimizer"]["weight_decay"].as_f64().unwrap() as f32, 0.01);
    assert!(j["optimizer"].get("momentum").is_none(), "{}", j["optimizer"]);
    assert_eq!(j["loss"]["kind"], "softmax_cross_entropy");
    assert_eq!(j["loss"]["classes"], 4);
    assert!(!j.to_string().contains(" {"), "{j}");
}

#[test]
fn quiet_hides_progress_not_results() {
    let d = workdir("quiet");
    let plan = d.join("p.pock");
    let out = ok(&["compile", "zoo:mlp:inputs=4,classes=3", "--batch", "8", "-o", s(&plan), "-q"]);
    assert!(String::from_utf8(out.stdout).unwrap().starts_with("wrote "));
    assert!(out.stderr.is_empty());
    let data = d.join("train.npz");
    pock::synth::blobs(70, 4, 3, 1).save_npz(&data).unwrap();
    let pred = d.join("pred.npz");
    for (args, result) in [
        (vec!["train", s(&plan), "--data", s(&data), "--epochs", "2", "--threads", "0"], "trained 2 epoch(s)"),
        (vec!["eval", s(&plan), "--data", s(&data)], "70 samples"),
        (vec!["infer", s(&plan), "--data", s(&data), "--out", s(&pred)], "wrote 70 outputs of shape 3"),
    ] {
        let loud = ok(&args);
        assert!(String::from_utf8(loud.stdout).unwrap().contains(result), "{args:?}");
        let mut q = args.clone();
        q.push("-q");
        let quiet = ok(&q);
        assert!(String::from_utf8(quiet.stdout).unwrap().contains(result), "{args:?}");
        assert!(quiet.stderr.is_empty(), "{args:?}: {}", String::from_utf8_lossy(&quiet.stderr));
    }
    // Progress (epoch lines, notes) goes to stderr.
    let out = ok(&["train", s(&plan), "--data", s(&data), "--epochs", "2"]);
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("epoch 2: train loss") && err.contains("samples per epoch are dropped"), "{err}");
}

#[test]
fn divergence_stops_with_step_loss_and_learning_rate() {
    let d = workdir("diverge");
    let (plan, train) = (d.join("cnn.pock"), d.join("train.npz"));
    pock::synth::shapes(256, 16, 1).save_npz(&train).unwrap();
    ok(&["compile", "zoo:cnn:size=16,width=4", "--batch", "16", "-o", s(&plan)]);
    let ckpt = d.join("c.safetensors");
    let out = pock(&["train", s(&plan), "--data", s(&train), "--epochs", "20", "--lr", "1e6", "--save", s(&ckpt), "--save-every", "1"]);
    assert_eq!(out.status.code(), Some(1));
    let e = String::from_utf8(out.stderr).unwrap();
    assert!(e.contains("training diverged at step") && e.contains("(loss ") && e.contains("learning rate 1e6"), "{e}");
    // What was saved is from before the divergence, and resumes.
    if ckpt.exists() {
        assert!(e.contains("is from before the divergence"), "{e}");
        let mut session = pock::engine::Session::load(&plan, Default::default()).unwrap();
        session.resume(&ckpt).unwrap();
    }
    // A schedule that overflows the learning rate is named as such, not as a divergence.
    let e = fails(&["train", s(&plan), "--data", s(&train), "--lr-schedule", "step:every=1,gamma=1e30"]);
    assert!(e.contains("the learning rate is inf at step"), "{e}");
}
