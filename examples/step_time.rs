//! Training-step time of zoo models with 1 and 2 gemm threads (no peer framework: this measures
//! pock against itself, to choose defaults). Prints ms/step and the 2-thread/1-thread ratio.
//!
//! Run with `cargo run --release --example step_time`.

use pock::engine::{Session, SessionOptions, Targets};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cases = [("zoo:cnn", 32), ("zoo:mobilenetv2:classes=10,size=96,width=1.0", 8), ("zoo:resnet18:classes=10,size=64", 8)];
    println!("{:<48} {:>6} {:>12} {:>12} {:>8}", "model", "batch", "1 thread ms", "2 threads ms", "ratio");
    for (model, batch) in cases {
        let bytes = pock::compile_model(model, batch, 0, Default::default())?.to_bytes();
        let mut ms = Vec::new();
        for threads in [1, 2] {
            let mut s = Session::from_bytes(&bytes, SessionOptions { threads, reference_kernels: false, ..SessionOptions::default() })?;
            let x: Vec<f32> = (0..s.input_shape().iter().product()).map(|i| (i % 17) as f32 * 0.05).collect();
            let classes = s.output_shape()[1] as i64;
            let y: Vec<i64> = (0..batch as i64).map(|i| i % classes).collect();
            s.train_step(&x, Targets::Labels(&y))?;
            let steps = 5;
            let t = std::time::Instant::now();
            for _ in 0..steps {
                s.train_step(&x, Targets::Labels(&y))?;
            }
            ms.push(t.elapsed().as_secs_f64() * 1e3 / steps as f64);
        }
        println!("{model:<48} {batch:>6} {:>12.1} {:>12.1} {:>8.2}", ms[0], ms[1], ms[1] / ms[0]);
    }
    Ok(())
}
