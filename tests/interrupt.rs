//! Never lose progress (issue 6, part 3): SIGINT finishes the step, saves and says how to
//! resume, and the resumed run is the uninterrupted one; `kill -9` at any moment leaves the last
//! completed checkpoint loadable.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pock::engine::{Session, SessionOptions};

mod common;
use common::{s, workdir};

fn spawn(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_pock")).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("pock starts")
}

fn run_ok(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_pock")).args(args).output().unwrap();
    assert!(out.status.success(), "pock {args:?}:\n{}", String::from_utf8_lossy(&out.stderr));
}

fn setup(d: &Path) -> (PathBuf, PathBuf) {
    let (plan, data) = (d.join("mlp.pock"), d.join("train.npz"));
    pock::synth::blobs(100, 6, 3, 4).save_npz(&data).unwrap();
    run_ok(&["compile", "zoo:mlp:inputs=6,hidden=16,classes=3", "--batch", "8", "--optimizer", "adam", "-o", s(&plan)]);
    (plan, data)
}

fn log_lines(p: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("incomplete log line {l:?}: {e}")))
        .collect()
}

/// Lines a running trainer has finished writing to its log: the one being written is not one yet.
fn finished_lines(p: &Path) -> usize {
    std::fs::read_to_string(p).unwrap_or_default().matches('\n').count()
}

/// A small deterministic generator for kill moments (xorshift).
struct Moments(u64);

impl Moments {
    fn next_below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn sigint_saves_and_the_resumed_run_equals_the_uninterrupted_one() {
    let d = workdir("sigint");
    let (plan, data) = setup(&d);
    // 12 steps per epoch; enough epochs that the signal lands inside the run.
    let common = ["--lr", "0.002", "--lr-schedule", "cosine:warmup=5", "--seed", "3", "--epochs", "400"];
    let whole_log = d.join("whole.jsonl");
    let mut args = vec!["train", s(&plan), "--data", s(&data), "--log-json", s(&whole_log)];
    args.extend_from_slice(&common);
    run_ok(&args);
    let whole = log_lines(&whole_log);
    assert_eq!(whole.len(), 400 * 12);

    let (ckpt, first_log) = (d.join("c.safetensors"), d.join("a.jsonl"));
    let mut args = vec!["train", s(&plan), "--data", s(&data), "--log-json", s(&first_log), "--save", s(&ckpt)];
    args.extend_from_slice(&common);
    let mut child = spawn(&args);
    let started = Instant::now();
    while finished_lines(&first_log) < 30 {
        assert!(started.elapsed() < Duration::from_secs(30), "no progress");
        assert!(child.try_wait().unwrap().is_none(), "the run ended before the signal");
        std::thread::sleep(Duration::from_millis(2));
    }
    let kill = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted by a signal after step") && err.contains("--resume"), "{err}");
    let first = log_lines(&first_log);
    assert!(first.len() < whole.len(), "the signal did not stop the run");
    let stopped_at = first.last().unwrap()["step"].as_u64().unwrap();
    assert!(err.contains(&format!("after step {stopped_at};")), "the checkpoint is at the last logged step: {err}");

    // The message's command, as given, continues the run to where it was meant to end.
    let epochs = err.split("--epochs ").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
    let second_log = d.join("b.jsonl");
    run_ok(&[
        "train",
        s(&plan),
        "--data",
        s(&data),
        "--resume",
        s(&ckpt),
        "--save",
        s(&ckpt),
        "--epochs",
        &epochs,
        "--log-json",
        s(&second_log),
    ]);
    let mut parts = first;
    parts.extend(log_lines(&second_log));
    let key = |v: &[serde_json::Value]| {
        v.iter().map(|l| (l["step"].as_u64(), l["epoch"].as_u64(), l["loss"].as_f64(), l["lr"].as_f64())).collect::<Vec<_>>()
    };
    // The learning rate, the schedule's position and horizon, the shuffling seed and the place
    // inside the epoch all come from the checkpoint: the losses are the uninterrupted run's.
    assert_eq!(key(&parts), key(&whole));
}

#[test]
fn sigkill_at_random_moments_never_leaves_a_broken_checkpoint() {
    let d = workdir("sigkill");
    let (plan, data) = setup(&d);
    let ckpt = d.join("c.safetensors");
    let bytes = std::fs::read(&plan).unwrap();
    let mut moments = Moments(0x9e37_79b9_7f4a_7c15);
    let (mut last_step, mut advanced, mut loaded) = (0u64, 0, 0);
    let started = Instant::now();
    for _ in 0..200 {
        let resume = ckpt.exists();
        let mut args = vec!["train", s(&plan), "--data", s(&data), "--epochs", "100000", "--save", s(&ckpt), "--save-every", "1", "-q"];
        if resume {
            args.extend_from_slice(&["--resume", s(&ckpt)]);
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_pock")).args(&args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(Duration::from_micros(moments.next_below(25_000)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        if ckpt.exists() {
            let mut session =
                Session::from_bytes(&bytes, SessionOptions { threads: 1, reference_kernels: false, ..SessionOptions::default() }).unwrap();
            let meta = session.resume(&ckpt).unwrap_or_else(|e| panic!("the last checkpoint does not resume: {e}"));
            assert!(session.micro_steps() >= last_step, "the checkpoint went back from step {last_step}");
            assert_eq!(meta.get("micro_steps").unwrap(), &session.micro_steps().to_string());
            advanced += (session.micro_steps() > last_step) as u32;
            last_step = session.micro_steps();
            loaded += 1;
        }
    }
    assert!(loaded > 150 && advanced > 50, "only {loaded} checkpoints loaded and {advanced} advanced in 200 kills");
    // And the CLI continues from the last one, clearing what killed writers left behind.
    run_ok(&["train", s(&plan), "--data", s(&data), "--resume", s(&ckpt), "--save", s(&ckpt), "-q"]);
    let left: Vec<_> = std::fs::read_dir(&d).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".tmp")).collect();
    assert!(left.is_empty(), "temporary files of killed writers remain: {left:?}");
    eprintln!("200 kills in {:?}; last checkpoint at step {last_step}", started.elapsed());
}

#[test]
fn sigterm_also_finishes_the_step_and_saves() {
    let d = workdir("sigterm");
    let (plan, data) = setup(&d);
    let (ckpt, log) = (d.join("c.safetensors"), d.join("log.jsonl"));
    let mut child = spawn(&["train", s(&plan), "--data", s(&data), "--epochs", "100000", "--save", s(&ckpt), "--log-json", s(&log)]);
    let started = Instant::now();
    while finished_lines(&log) < 5 {
        assert!(started.elapsed() < Duration::from_secs(30), "no progress");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let last = log_lines(&log).last().unwrap()["step"].as_u64().unwrap();
    let mut session = Session::load(&plan, SessionOptions::default()).unwrap();
    session.resume(&ckpt).unwrap();
    assert_eq!(session.micro_steps(), last, "the checkpoint holds the last logged step");
}
