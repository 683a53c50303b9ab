//! Targets drive compilation: a plan that does not fit its board is refused with the bytes it
//! needs, the engine warns when a plan runs on another ISA, the cost model sums per-op rooflines,
//! and `--kernels reference` runs the portable kernels.

mod common;
use common::{fails, pock, s, workdir};

fn ok(args: &[&str]) -> std::process::Output {
    let out = pock(args);
    assert!(out.status.success(), "pock {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    out
}

fn json(args: &[&str]) -> serde_json::Value {
    serde_json::from_slice(&ok(args).stdout).unwrap()
}

#[test]
fn cortex_m7_refuses_resnet18_naming_the_bytes_it_needs() {
    let d = workdir("m7");
    let plan = d.join("r18.pock");
    let e = fails(&["compile", "zoo:resnet18", "--batch", "1", "--target", "cortex-m7", "-o", s(&plan)]);
    assert!(!plan.exists(), "a refused plan is not written");
    // The bytes named are the plan's: the same plan compiled with the budget lifted says so.
    ok(&["compile", "zoo:resnet18", "--batch", "1", "--target", "cortex-m7", "--memory-budget", "64G", "-o", s(&plan)]);
    let r = json(&["inspect", s(&plan), "--json"]);
    let needed = r["arena_bytes"].as_u64().unwrap() + r["weight_bytes"].as_u64().unwrap();
    assert!(needed > 256 << 10);
    assert!(e.contains(&format!("the plan needs {needed} bytes")), "{e}");
    assert!(e.contains("262144 bytes") && e.contains("cortex-m7"), "names the board and its memory: {e}");
    assert!(e.contains("--memory-budget") && e.contains("--batch"), "says what to do: {e}");
}

#[test]
fn a_plan_that_fits_the_board_compiles_and_records_it() {
    let d = workdir("fits");
    let plan = d.join("mlp.pock");
    ok(&["compile", "zoo:mlp:inputs=16,hidden=32,classes=4", "--batch", "8", "--target", "cortex-m7", "-o", s(&plan)]);
    let r = json(&["inspect", s(&plan), "--json"]);
    assert_eq!(r["target"], "cortex-m7");
    assert!(r["arena_bytes"].as_u64().unwrap() + r["weight_bytes"].as_u64().unwrap() <= 256 << 10);
}

#[test]
fn the_engine_warns_when_a_plan_runs_on_another_isa() {
    let d = workdir("isa");
    let (plan, data) = (d.join("mlp.pock"), d.join("train.npz"));
    pock::synth::blobs(32, 6, 3, 0).save_npz(&data).unwrap();
    let train = |target: &str| {
        ok(&["compile", "zoo:mlp:inputs=6,classes=3", "--batch", "8", "--target", target, "-o", s(&plan)]);
        String::from_utf8(ok(&["train", s(&plan), "--data", s(&data), "--epochs", "1", "-q"]).stderr).unwrap()
    };
    let rpi4 = train("rpi4");
    if std::env::consts::ARCH == "aarch64" {
        assert!(!rpi4.contains("built for"), "an rpi4 plan on aarch64 is at home: {rpi4}");
    } else {
        assert!(rpi4.contains(&format!("built for rpi4 (aarch64), running on {}", std::env::consts::ARCH)), "{rpi4}");
        assert!(rpi4.contains("WARN"), "a warning, not an error: {rpi4}");
    }
    let host = train("host");
    assert!(!host.contains("built for"), "host plans run anywhere: {host}");
}

#[test]
fn compile_help_lists_every_board() {
    let help = String::from_utf8(ok(&["compile", "--help"]).stdout).unwrap();
    for t in pock::targets::TARGETS {
        assert!(help.contains(t.name) && help.contains(t.description), "{} missing from --help:\n{help}", t.name);
    }
}

#[test]
fn step_estimate_sums_per_op_rooflines() {
    use pock::compiler::CompileOptions;
    let compile = |target: &str| {
        pock::compile_model("zoo:cnn:size=16,width=8", 16, 0, CompileOptions { target: target.into(), ..Default::default() }).unwrap().plan
    };
    let plan = compile("rpi4");
    let rpi4 = pock::targets::find("rpi4").unwrap();
    let work: Vec<_> = pock::compiler::cost::program_work(&plan, &plan.programs.train).collect();
    assert_eq!(work.len(), plan.programs.train.nodes.len());
    let e = pock::compiler::cost::estimate_train_step(&plan, rpi4, 1);
    // The same FLOP count as `pock inspect`'s train program.
    let inspected = pock::inspect::report(&plan).programs.iter().find(|p| p.name == "train").unwrap().flops;
    assert_eq!(e.flops, inspected);
    // Every op reads or writes something, and the traffic is at least the parameters read once.
    assert!(work.iter().all(|w| w.bytes > 0));
    assert!(e.bytes >= plan.weight_bytes);
    assert_eq!(e.compute_bound_ops + e.memory_bound_ops, work.len());
    assert!(e.compute_bound_ops > 0 && e.memory_bound_ops > 0, "a CNN step has both kinds: {e:?}");
    // Ops run one after another: the sum of their rooflines is at least the roofline of the
    // totals, and equals the sum of its compute- and memory-bound parts.
    assert!(e.ms >= rpi4.op_ms(pock::targets::OpWork { flops: e.flops, bytes: e.bytes }, 1) * (1.0 - 1e-12));
    assert!((e.ms - (e.compute_bound_ms + e.memory_bound_ms)).abs() <= 1e-9 * e.ms);
    // More cores only speed up the compute-bound part.
    let e4 = pock::compiler::cost::estimate_train_step(&plan, rpi4, 4);
    assert!(e4.ms < e.ms && e4.ms >= e.memory_bound_ms * (1.0 - 1e-12), "{e4:?} vs {e:?}");
    // The board matters: the microcontroller is far slower than the Raspberry Pi.
    let m7 = pock::compiler::cost::estimate_train_step(&plan, pock::targets::find("cortex-m7").unwrap(), 1);
    assert!(m7.ms > 10.0 * e.ms, "{m7:?} vs {e:?}");
    // `pock inspect` shows this per-op estimate on all the board's cores, not one from the
    // arena's size.
    let full = pock::compiler::cost::estimate_train_step(&plan, rpi4, rpi4.cores);
    let shown = pock::inspect::report(&plan).estimate.unwrap();
    assert_eq!((shown.threads, shown.flops, shown.traffic_bytes), (rpi4.cores, full.flops, full.bytes));
    assert_eq!((shown.ms, shown.compute_bound_ops, shown.memory_bound_ops), (full.ms, full.compute_bound_ops, full.memory_bound_ops));
    let text = pock::inspect::table(&plan, &pock::inspect::report(&plan), false);
    assert!(text.contains(&format!("{:.2} ms", full.ms)) && text.contains("limited by memory traffic"), "{text}");
}

#[test]
fn reference_kernels_train_like_the_fast_ones() {
    let d = workdir("kernels");
    let (plan, data) = (d.join("cnn.pock"), d.join("train.npz"));
    pock::synth::shapes(64, 16, 1).save_npz(&data).unwrap();
    ok(&["compile", "zoo:cnn:size=16,width=8", "--batch", "16", "--optimizer", "sgd", "--lr", "0.05", "-o", s(&plan)]);
    let losses = |kernels: &str| -> Vec<f64> {
        let log = d.join(format!("{kernels}.jsonl"));
        ok(&["train", s(&plan), "--data", s(&data), "--epochs", "2", "--kernels", kernels, "--log-json", s(&log), "-q"]);
        std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64().unwrap())
            .collect()
    };
    let (fast, reference) = (losses("fast"), losses("reference"));
    assert_eq!(fast.len(), 8);
    assert_eq!(reference.len(), 8);
    for (f, r) in fast.iter().zip(&reference) {
        assert!((f - r).abs() <= 1e-4 * f.abs().max(1.0), "fast {fast:?}\nreference {reference:?}");
    }
    let out = pock(&["train", s(&plan), "--data", s(&data), "--kernels", "gpu"]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("fast") && e.contains("reference"), "lists the choices: {e}");
}
