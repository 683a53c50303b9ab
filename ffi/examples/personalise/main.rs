//! On-device personalisation, the way a phone app would run it through `pock_ffi::Trainer`:
//! the app predicts for the user's events as they come (a group of `batch` events, say one
//! session of use), the user's reaction gives the true label, and between sessions (when the
//! phone is idle) the app trains a short burst over the events it remembers and saves a
//! checkpoint atomically. A restart of the app resumes from that checkpoint.
//!
//! The user's events: 8 sensor-like features in [-1, 1]; the label this user gives is their own
//! permutation of the largest of the first 4 features, which the model does not know at first.
//!
//!   cargo run --release -p pock-ffi --example personalise [PLAN]
//!
//! Without PLAN it compiles the plan it needs (as `pock compile zoo:mlp:inputs=8,hidden=32,classes=4
//! --batch 16 --optimizer adam --lr 0.01` would, ahead of time, on a workstation).

use std::path::{Path, PathBuf};

use pock_ffi::{PockError, Trainer};

/// How one run went: the accuracy of the app's predictions in each session, before the burst
/// that learned from that session.
pub struct Report {
    pub accuracy: Vec<f32>,
    pub checkpoint: PathBuf,
    pub optimizer_steps: u64,
}

/// The user's hidden preference: which label they give when feature `c` is the largest.
const USER_LABELS: [i64; 4] = [2, 0, 3, 1];
/// Steps in each burst between sessions, and sessions of events the app remembers.
const BURST_STEPS: usize = 8;
const REMEMBERED_SESSIONS: usize = 4;

struct Events(u64);

impl Events {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 40) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
    }

    /// One session: `x` gets the events, `labels` what the user says each one was.
    fn session(&mut self, x: &mut [f32], labels: &mut [i64], features: usize) {
        for (row, label) in x.chunks_exact_mut(features).zip(labels.iter_mut()) {
            row.iter_mut().for_each(|v| *v = self.next());
            let largest = (0..USER_LABELS.len()).fold(0, |best, c| if row[c] > row[best] { c } else { best });
            *label = USER_LABELS[largest];
        }
    }
}

/// Runs `sessions` sessions of user events on `plan`, saving into `dir`, with an app restart
/// (a new trainer resumed from the checkpoint) halfway through.
pub fn run(plan: &Path, dir: &Path, sessions: usize) -> Result<Report, PockError> {
    let path = |p: &Path| p.to_string_lossy().into_owned();
    let checkpoint = dir.join("personal.safetensors");
    let mut trainer = Trainer::open(path(plan), 1)?;
    let (batch, features) = (trainer.batch() as usize, (trainer.input_len() / trainer.batch()) as usize);
    let classes = (trainer.output_len() / trainer.batch()) as usize;
    // Every buffer is allocated once, as on a phone: the remembered sessions are a ring.
    let mut remembered_x = vec![0f32; REMEMBERED_SESSIONS * batch * features];
    let mut remembered_y = vec![0i64; REMEMBERED_SESSIONS * batch];
    let mut logits = vec![0f32; batch * classes];
    let mut events = Events(7);
    let mut accuracy = Vec::with_capacity(sessions);
    for session in 0..sessions {
        if session == sessions / 2 {
            // The app was killed and started again: all it has is the plan and the checkpoint.
            trainer = Trainer::open(path(plan), 1)?;
            trainer.resume(path(&checkpoint))?;
            println!("app restarted: resumed at optimizer step {}", trainer.optimizer_steps()?);
        }
        let slot = session % REMEMBERED_SESSIONS;
        let x = &mut remembered_x[slot * batch * features..][..batch * features];
        let y = &mut remembered_y[slot * batch..][..batch];
        events.session(x, y, features);
        trainer.infer_into(x, &mut logits)?;
        let right = logits
            .chunks_exact(classes)
            .zip(y.iter())
            .filter(|(row, &label)| (0..classes).fold(0, |b, c| if row[c] > row[b] { c } else { b }) == label as usize)
            .count();
        accuracy.push(right as f32 / batch as f32);

        // Idle time: a burst over the remembered sessions, then an atomic checkpoint.
        let known = (session + 1).min(REMEMBERED_SESSIONS);
        let mut loss = 0.0;
        for step in 0..BURST_STEPS {
            let k = step % known;
            loss = trainer.train_labels(&remembered_x[k * batch * features..][..batch * features], &remembered_y[k * batch..][..batch])?;
        }
        trainer.save(path(&checkpoint))?;
        println!("session {session:2}: {right:2}/{batch} predictions right, burst loss {loss:.4}, checkpoint saved");
    }
    Ok(Report { accuracy, checkpoint, optimizer_steps: trainer.optimizer_steps()? })
}

#[allow(dead_code)]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("pock-personalise-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let plan = match std::env::args_os().nth(1) {
        Some(p) => PathBuf::from(p),
        None => {
            use pock::compiler::CompileOptions;
            use pock::engine::plan::OptimizerKind;
            let options = CompileOptions {
                optimizer: OptimizerKind::Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 },
                learning_rate: 1e-2,
                ..Default::default()
            };
            let compiled = pock::compile_model("zoo:mlp:inputs=8,hidden=32,classes=4", 16, 0, options)?;
            let p = dir.join("personal.plan");
            std::fs::write(&p, compiled.to_bytes())?;
            p
        }
    };
    let report = run(&plan, &dir, 24)?;
    let mean = |v: &[f32]| 100.0 * v.iter().sum::<f32>() / v.len() as f32;
    let n = report.accuracy.len() / 4;
    println!(
        "predictions right: {:.0}% in the first 2 sessions, {:.0}% in the last {n}; {} optimizer steps; checkpoint {}",
        mean(&report.accuracy[..2]),
        mean(&report.accuracy[report.accuracy.len() - n..]),
        report.optimizer_steps,
        report.checkpoint.display()
    );
    Ok(())
}
