//! The data of the bare-metal trainer (`examples/mcu/`, issue 9 part 3), written on the host.
//!
//! Sensor-like samples ([`pock::synth::sensor_windows`]: windows of a 3-axis accelerometer in four
//! activities). Writes
//! - `DIR/train.npz` (`x`: float32 `[N, 3 * WINDOW]`, `y`: int64 `[N]`), for `pock train`;
//! - `DIR/batches.bin`, the batches in the order `pock train --seed SEED` visits them over
//!   `EPOCHS` epochs (full batches only, as `pock train` does), for the firmware to embed: a
//!   16-byte header (`PKMB`, then u32 little-endian steps, batch and features per sample), then
//!   per step the batch's `x` as f32 and its labels as i64, little-endian.
//!
//! Run with `cargo run --example mcu_data -- DIR BATCH EPOCHS SEED` (scripts/mcu-test.sh does).

/// Readings per axis in one window.
const WINDOW: usize = pock::synth::SENSOR_WINDOW;
const SAMPLES: usize = 256;

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
    let data = pock::synth::sensor_windows(SAMPLES, 7);
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
