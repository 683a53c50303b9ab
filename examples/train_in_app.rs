//! Using pock as a library, the way an app embeds it: compile a model in memory (normally done
//! ahead of time with `pock compile`), then train, evaluate, checkpoint and resume through
//! `Session`.
//!
//! Run with `cargo run --release --example train_in_app`.

use pock::compiler::CompileOptions;
use pock::engine::plan::OptimizerKind;
use pock::engine::{Session, SessionOptions, Targets};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let batch = 32;
    let options = CompileOptions {
        optimizer: OptimizerKind::AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 },
        learning_rate: 3e-3,
        ..Default::default()
    };
    let plan = pock::compile_model("zoo:mlp:inputs=16,hidden=64,classes=5", batch, 0, options)?;
    let mut session = Session::from_bytes(&plan.to_bytes(), SessionOptions::default())?;
    println!("plan: arena {} bytes, {} trainable parameters", plan.plan.arena_bytes, pock::inspect::report(&plan.plan).trainable_params);

    // The app's data: here a synthetic problem; on a device, samples collected locally.
    let data = pock::synth::blobs(2048, 16, 5, 1);
    let mut x = vec![0.0f32; batch * 16];
    let mut y = vec![0i64; batch];
    for epoch in 0..3u64 {
        let order = data.epoch_order(0, epoch);
        let mut sum = 0.0;
        for idx in order.chunks_exact(batch) {
            data.gather_x(idx, &mut x);
            data.gather_labels(idx, &mut y);
            sum += session.train_step(&x, Targets::Labels(&y))?;
        }
        println!("epoch {epoch}: mean loss {:.4}", sum / (data.len() / batch) as f32);
    }
    let report = pock::train::evaluate(&mut session, &data)?;
    println!("accuracy {:.1}%", 100.0 * report.accuracy.unwrap_or(0.0));

    let ckpt = std::env::temp_dir().join("pock-example.safetensors");
    session.save(&ckpt)?;
    let mut again = Session::from_bytes(&plan.to_bytes(), SessionOptions::default())?;
    again.resume(&ckpt)?;
    println!("resumed at optimizer step {}", again.optimizer_steps());
    Ok(())
}
