//! The data of the bare-metal trainer (`examples/mcu/`, issue 9 part 3), written on the host.
//!
//! Sensor-like samples: windows of a 3-axis accelerometer, `WINDOW` readings per axis, in
//! `CLASSES` activities, each a sinusoid of its own frequency and amplitude per axis with a random
//! phase, a gravity offset on z and Gaussian noise. Writes
//! - `DIR/train.npz` (`x`: float32 `[N, 3 * WINDOW]`, `y`: int64 `[N]`), for `pock train`;
//! - `DIR/batches.bin`, the batches in the order `pock train --seed SEED` visits them over
//!   `EPOCHS` epochs (full batches only, as `pock train` does), for the firmware to embed: a
//!   16-byte header (`PKMB`, then u32 little-endian steps, batch and features per sample), then
//!   per step the batch's `x` as f32 and its labels as i64, little-endian.
//!
//! Run with `cargo run --example mcu_data -- DIR BATCH EPOCHS SEED` (scripts/mcu-test.sh does).

use pock::data::{Dataset, Targets};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::f32::consts::PI;

/// Readings per axis in one window.
const WINDOW: usize = 16;
const CLASSES: usize = 4;
const SAMPLES: usize = 256;

/// Per activity and axis: cycles per window and amplitude.
const ACTIVITIES: [[(f32, f32); 3]; CLASSES] = [
    [(0.0, 0.05), (0.0, 0.05), (0.0, 0.05)], // still
    [(2.0, 0.6), (1.0, 0.3), (2.0, 0.4)],    // walking
    [(4.0, 1.2), (2.0, 0.8), (4.0, 1.0)],    // running
    [(1.0, 0.2), (5.0, 0.9), (0.5, 0.3)],    // cycling
];

fn sensor_windows(n: usize, seed: u64) -> Dataset {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let features = 3 * WINDOW;
    let mut x = Vec::with_capacity(n * features);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let class = i % CLASSES;
        for (axis, &(cycles, amplitude)) in ACTIVITIES[class].iter().enumerate() {
            let phase: f32 = rng.random_range(0.0..2.0 * PI);
            let gravity = if axis == 2 { 1.0 } else { 0.0 };
            for t in 0..WINDOW {
                let angle = 2.0 * PI * cycles * t as f32 / WINDOW as f32 + phase;
                // Noise: the sum of three uniforms, roughly normal with standard deviation 0.1.
                let noise: f32 = (0..3).map(|_| rng.random_range(-0.1f32..0.1)).sum();
                x.push(gravity + amplitude * angle.sin() + noise);
            }
        }
        labels.push(class as i64);
    }
    Dataset { x, x_shape: vec![n, features], y: Some(Targets::Labels(labels)), inputs: Vec::new() }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, batch, epochs, seed] = &args[..] else {
        return Err("usage: mcu_data DIR BATCH EPOCHS SEED (the batch of the plan, and the epochs and --seed of pock train)".into());
    };
    let (batch, epochs, seed): (usize, u64, u64) = (batch.parse()?, epochs.parse()?, seed.parse()?);
    if batch == 0 || batch > SAMPLES {
        return Err(format!("BATCH must be 1 to {SAMPLES}").into());
    }
    let dir = std::path::Path::new(dir);
    std::fs::create_dir_all(dir)?;
    let data = sensor_windows(SAMPLES, 7);
    data.save_npz(&dir.join("train.npz"))?;

    let features = 3 * WINDOW;
    let steps = (SAMPLES / batch) as u64 * epochs;
    let mut out = Vec::new();
    out.extend_from_slice(b"PKMB");
    for v in [steps as u32, batch as u32, features as u32] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    let (mut x, mut y) = (vec![0f32; batch * features], vec![0i64; batch]);
    for epoch in 0..epochs {
        for indices in data.epoch_order(seed, epoch).chunks_exact(batch) {
            data.gather_x(indices, &mut x);
            data.gather_labels(indices, &mut y);
            x.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
            y.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        }
    }
    pock::engine::atomic::write_bytes(&dir.join("batches.bin"), &out)?;
    println!(
        "wrote {} ({SAMPLES} samples of {features} features) and {} ({steps} steps of {batch})",
        dir.join("train.npz").display(),
        dir.join("batches.bin").display()
    );
    Ok(())
}
