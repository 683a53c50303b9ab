//! Measured memory against the plan's accounting (issue 7, "Memory"): the peak resident set
//! size of `pock train` on zoo:mobilenetv2 (10 classes, batch 8, 3x128x128, SGD momentum) is
//! within 10% of the plan's arena and weights plus the data it holds plus the binary's own
//! baseline, measured as the same command on a tiny plan.

mod common;

use common::{pock, s, workdir};
use pock::data::{Dataset, Targets};

/// What `pock train --report-rss` printed: peak RSS and the accounted bytes (arena + weights +
/// data), in bytes.
struct Measured {
    peak: u64,
    accounted: u64,
}

fn train_and_measure(dir: &std::path::Path, name: &str, compile: &[&str], data: &Dataset) -> Measured {
    let plan = dir.join(format!("{name}.pock"));
    let npz = dir.join(format!("{name}.npz"));
    data.save_npz(&npz).unwrap();
    let mut args = vec!["compile"];
    args.extend_from_slice(compile);
    args.extend_from_slice(&["-o", s(&plan)]);
    let out = pock(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = pock(&["train", s(&plan), "--data", s(&npz), "--report-rss", "--quiet"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let line = stdout.lines().find(|l| l.starts_with("peak RSS ")).unwrap_or_else(|| panic!("no peak RSS line in:\n{stdout}"));
    eprintln!("{name}: {line}");
    // "peak RSS N bytes (...); plan: arena A bytes + weights W bytes (...); data in memory D bytes (...)"
    let numbers: Vec<u64> = line.split(' ').filter_map(|w| w.parse().ok()).collect();
    assert_eq!(numbers.len(), 4, "{line}");
    Measured { peak: numbers[0], accounted: numbers[1] + numbers[2] + numbers[3] }
}

#[test]
fn peak_rss_of_training_is_the_plans_accounting_plus_the_baseline() {
    let dir = workdir("rss");
    let tiny = train_and_measure(&dir, "tiny", &["zoo:mlp:inputs=4,classes=3", "--batch", "4"], &pock::synth::blobs(16, 4, 3, 1));
    let baseline = tiny.peak.saturating_sub(tiny.accounted);

    let (n, pixels) = (16, 3 * 128 * 128);
    let images = Dataset {
        x: (0..n * pixels).map(|i| ((i * 7919) % 1000) as f32 / 1000.0).collect(),
        x_shape: vec![n, 3, 128, 128],
        y: Some(Targets::Labels((0..n as i64).map(|i| i % 10).collect())),
        inputs: Vec::new(),
    };
    let mid =
        train_and_measure(&dir, "mobilenetv2", &["zoo:mobilenetv2:classes=10,size=128", "--batch", "8", "--momentum", "0.9"], &images);
    let expected = baseline + mid.accounted;
    let error = mid.peak.abs_diff(expected) as f64 / expected as f64;
    eprintln!(
        "baseline {baseline} bytes; mobilenetv2 peak {} bytes, expected {expected} bytes (accounted {}): {:+.1}%",
        mid.peak,
        mid.accounted,
        100.0 * (mid.peak as f64 - expected as f64) / expected as f64
    );
    assert!(
        error <= 0.10,
        "peak RSS {} bytes is {:.1}% away from baseline {baseline} + accounted {}",
        mid.peak,
        100.0 * error,
        mid.accounted
    );
    let _ = std::fs::remove_dir_all(&dir);
}
