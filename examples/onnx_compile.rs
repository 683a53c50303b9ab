//! Compiles each torchvision model of issue 5 from its ONNX export (TorchScript and dynamo) at
//! batch 8 and trains it for a few steps: compile time split into import and planning, the plan's
//! memory, the first and last training losses on one fixed batch, and the evaluation loss on that
//! batch (no dropout, BatchNorm on running statistics) before and after training, which must fall.
//!
//! Run with `cargo run --release --example onnx_compile` (the figures in BENCHMARKS.md). The
//! fixtures' weights are regenerated into a temporary directory first; that is not timed.
//! `-- --keep DIR` writes them into DIR and leaves them there, to time `pock compile` on them.

use std::time::Instant;

use pock::compiler::onnx::{import_file, ImportOptions, ShapeOverrides};
use pock::compiler::CompileOptions;
use pock::engine::{Session, SessionOptions, Targets};

#[path = "../tests/common/onnx_fixture.rs"]
mod fixture;

const MODELS: &[&str] = &["mobilenet_v2", "resnet18", "mobilenet_v3_small", "efficientnet_b0", "squeezenet1_1", "shufflenet_v2_x1_0"];
const BATCH: usize = 8;
const STEPS: usize = 10;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let keep = match args.get(1).map(String::as_str) {
        Some("--keep") => Some(std::path::PathBuf::from(args.get(2).ok_or("--keep needs a directory")?)),
        Some(other) => return Err(format!("unknown argument '{other}' (the only option is --keep DIR)").into()),
        None => None,
    };
    let dir = keep.clone().unwrap_or_else(|| std::env::temp_dir().join(format!("pock-onnx-compile-{}", std::process::id())));
    std::fs::create_dir_all(&dir)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("batch {BATCH}, {threads} threads, SGD lr 0.01 momentum 0.9, {STEPS} steps on one fixed batch");
    println!(
        "{:<20} {:>4} {:>9} {:>9} {:>9} {:>10} {:>11} {:>8}  {:<17}  eval loss",
        "model", "exp", "import ms", "plan ms", "total ms", "arena MiB", "scratch MiB", "step ms", "train loss"
    );
    let mut failures = 0;
    for model in MODELS {
        for (exporter, tag) in [("ts", "ts"), ("dynamo", "dy")] {
            let path = fixture::materialise(&format!("{model}.{exporter}"), &dir);
            let import = ImportOptions { shapes: ShapeOverrides::parse(Some(BATCH), &[] as &[&str])?, ..Default::default() };
            let options = CompileOptions {
                optimizer: pock::engine::plan::OptimizerKind::Sgd { momentum: 0.9, dampening: 0.0, nesterov: false, weight_decay: 0.0 },
                learning_rate: 0.01,
                ..CompileOptions::default()
            };
            let t0 = Instant::now();
            let imported = match import_file(&path, &import) {
                Ok(i) => i,
                Err(e) => {
                    println!("{model:<20} {tag:>4}  does not import: {e}");
                    failures += 1;
                    continue;
                }
            };
            let t1 = Instant::now();
            let plan = imported.forward.into_training(options).and_then(|t| t.into_plan());
            let plan = match plan {
                Ok(p) => p,
                Err(e) => {
                    println!("{model:<20} {tag:>4}  does not compile: {e}");
                    failures += 1;
                    continue;
                }
            };
            let bytes = plan.to_bytes();
            let t2 = Instant::now();
            let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
            let scratch = plan.plan.arena_bytes - plan.plan.persistent_bytes;
            let mut s = Session::from_bytes(&bytes, SessionOptions { threads, reference_kernels: false, ..SessionOptions::default() })?;
            let x: Vec<f32> = (0..s.input_shape().iter().product::<usize>()).map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0).collect();
            let classes = s.output_shape()[1] as i64;
            let y: Vec<i64> = (0..BATCH as i64).map(|i| (i * 3) % classes).collect();
            let n = BATCH * classes as usize;
            let (mut outputs, mut per_sample) = (vec![0.0f32; n], vec![0.0f32; BATCH]);
            let mut eval = |s: &mut Session| -> Result<f32, Box<dyn std::error::Error>> {
                s.eval_batch(&x, Targets::Labels(&y), &mut outputs, &mut per_sample)?;
                Ok(per_sample.iter().sum::<f32>() / BATCH as f32)
            };
            let before = eval(&mut s)?;
            let mut losses = Vec::with_capacity(STEPS);
            let t3 = Instant::now();
            for _ in 0..STEPS {
                losses.push(s.train_step(&x, Targets::Labels(&y))?);
            }
            let step_ms = t3.elapsed().as_secs_f64() * 1e3 / STEPS as f64;
            let after = eval(&mut s)?;
            let falls = after < before;
            failures += usize::from(!falls);
            println!(
                "{model:<20} {tag:>4} {:>9.0} {:>9.0} {:>9.0} {:>10.1} {:>11.1} {:>8.0}  {:.4} -> {:.4}  {before:.4} -> {after:.4}{}",
                (t1 - t0).as_secs_f64() * 1e3,
                (t2 - t1).as_secs_f64() * 1e3,
                (t2 - t0).as_secs_f64() * 1e3,
                mib(plan.plan.arena_bytes),
                mib(scratch),
                step_ms,
                losses[0],
                losses[STEPS - 1],
                if falls { "" } else { "  (evaluation loss did not fall)" }
            );
        }
    }
    if keep.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    if failures > 0 {
        return Err(format!("{failures} model(s) did not import, compile or learn").into());
    }
    Ok(())
}
