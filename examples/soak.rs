//! Soak run: many training steps with a checkpoint every 1,000, to show that memory stays flat
//! and the step time does not drift (issue 6, part 8). Prints the resident set size and the mean
//! step time over the first, middle and last 1,000 steps.
//!
//! Run with `cargo run --release --example soak [-- MODEL STEPS]` (default: `zoo:mlp:inputs=16,hidden=128,classes=5`,
//! 100000 steps, batch 32). The checkpoint goes to the system's temporary directory.

use std::time::Instant;

use pock::engine::{Session, SessionOptions};
use pock::schedule::LrSchedule;
use pock::train::{train_epochs, TrainConfig};

/// Resident set size of this process in KiB (`VmRSS` of `/proc/self/status`), where Linux says.
fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

/// The 1-minute load average (`/proc/loadavg`): other processes on the machine move step times.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let model = args.next().unwrap_or_else(|| "zoo:mlp:inputs=16,hidden=128,classes=5".into());
    let total: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(100_000);
    let (batch, every, window) = (32usize, 1000u64, 1000u64);
    let plan = pock::compile_model(&model, batch, 0, Default::default())?;
    let mut session = Session::from_bytes(&plan.to_bytes(), SessionOptions::default())?;
    let features = session.input_shape()[1..].to_vec();
    let classes = session.output_shape()[1];
    let data = if features.len() == 1 {
        pock::synth::blobs(64 * batch, features[0], classes, 1)
    } else {
        pock::synth::shapes(64 * batch, features[1], 1)
    };
    let steps_per_epoch = (data.len() / batch) as u64;
    let epochs = total.div_ceil(steps_per_epoch);
    let ckpt = std::env::temp_dir().join(format!("pock-soak-{}.safetensors", std::process::id()));
    println!("soak: {model}, batch {batch}, {} steps, checkpoint every {every} steps to {}", epochs * steps_per_epoch, ckpt.display());
    println!("{:>8} {:>12} {:>14} {:>10}", "step", "RSS KiB", "mean ms/step", "load avg");

    let middle = (epochs * steps_per_epoch / 2 / window) * window;
    let last = (epochs * steps_per_epoch / window - 1) * window;
    let mut window_ms = 0.0;
    let mut rows = Vec::new();
    let mut save_error = None;
    let started = Instant::now();
    let cfg = TrainConfig::new(epochs, 0, 0.01, LrSchedule::parse("constant")?);
    train_epochs(
        &mut session,
        &data,
        &cfg,
        |s, r| {
            window_ms += r.ms;
            if r.step.is_multiple_of(every) {
                if let Err(e) = s.save(&ckpt) {
                    save_error.get_or_insert(e);
                }
            }
            if r.step.is_multiple_of(window) {
                let start = r.step - window;
                if start == 0 || start == middle || start == last {
                    let row = (r.step, rss_kib().unwrap_or(0), window_ms / window as f64);
                    println!("{:>8} {:>12} {:>14.4} {:>10.2}", row.0, row.1, row.2, load_average().unwrap_or(f64::NAN));
                    rows.push(row);
                }
                window_ms = 0.0;
            }
            Ok(())
        },
        |_, _| Ok(()),
    )?;
    if let Some(e) = save_error {
        return Err(e.into());
    }
    let _ = std::fs::remove_file(&ckpt);
    let (first, end) = (rows.first().ok_or("no rows")?, rows.last().ok_or("no rows")?);
    println!(
        "{} steps in {:.1} s; RSS {} -> {} KiB ({:+} KiB); step time {:.4} -> {:.4} ms ({:.2}x)",
        session.micro_steps(),
        started.elapsed().as_secs_f64(),
        first.1,
        end.1,
        end.1 as i64 - first.1 as i64,
        first.2,
        end.2,
        end.2 / first.2
    );
    Ok(())
}
