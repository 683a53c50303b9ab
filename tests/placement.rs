//! Per-node placement (issue 10 part 3): the compiler's sides survive the plan file, `pock
//! inspect` shows them with the copies and syncs, and a plan with CPU nodes between GPU nodes
//! trains on `--backend wgpu` (the hybrid backend) to the CPU backend's losses and parameters,
//! with the planned number of syncs.
//!
//! The GPU tests print a SKIP line and return without a GPU adapter (on CI: lavapipe).

mod common;

use common::{fails, pock, s, workdir};
use pock::compiler::placement::{PlacementMode, PlacementOptions};
use pock::compiler::CompileOptions;
use pock::engine::exec::ProgramKind;
use pock::engine::placement::{schedule, Side};
use pock::engine::plan::OptimizerKind;

fn placed(mode: PlacementMode, force_cpu: &[&str]) -> CompileOptions {
    CompileOptions {
        optimizer: OptimizerKind::Sgd { momentum: 0.9, dampening: 0.0, nesterov: false, weight_decay: 1e-4 },
        learning_rate: 0.05,
        target: "gpu".into(),
        placement: PlacementOptions { mode, force_cpu: force_cpu.iter().map(|s| s.to_string()).collect() },
        ..Default::default()
    }
}

#[test]
fn the_placement_survives_the_plan_file_and_a_wrong_one_is_refused() {
    let compiled = pock::compile_model("zoo:cnn", 4, 0, placed(PlacementMode::Gpu, &["MaxPool2d"])).unwrap();
    let placement = compiled.plan.placement.clone().expect("placed for a target with a GPU");
    for (node, side) in compiled.plan.programs.train.nodes.iter().zip(&placement.train) {
        assert_eq!(*side == Side::Cpu, node.op.name() == "MaxPool2d", "{}: {side:?}", node.name);
    }
    let (decoded, _) = pock::engine::decode_plan(&compiled.to_bytes()).unwrap();
    assert_eq!(decoded.placement.as_ref(), Some(&placement));
    // A plan for a target without a GPU carries none, and its file is what it was before
    // placement existed (nothing after the description).
    let host = pock::compile_model("zoo:cnn", 4, 0, CompileOptions::default()).unwrap();
    assert!(host.plan.placement.is_none());
    assert!(pock::engine::decode_plan(&host.to_bytes()).unwrap().0.placement.is_none());
    // A side missing for a node is refused at load, not run.
    let mut wrong = compiled.plan.clone();
    wrong.placement.as_mut().unwrap().eval.pop();
    let e = pock::engine::decode_plan(&pock::engine::encode_plan(&wrong, &compiled.weights)).unwrap_err().to_string();
    assert!(e.contains("placement") && e.contains("eval"), "{e}");
}

/// Every op the compiler emits now has a GPU kernel (the int8 family included), so no node lands
/// on the CPU for want of one: `--placement gpu` puts all of int8 training on the GPU. The other
/// path to the CPU is cost: on a unified-memory board the cost model moves nodes that have a GPU
/// kernel to the CPU where they are cheaper there.
#[test]
fn nodes_go_to_the_cpu_when_cheaper_and_int8_training_stays_on_the_gpu() {
    let (inputs, batch) = (7, 9);
    let calibration: Vec<f32> = (0..batch * inputs).map(|i| ((i * 37 % 17) as f32 - 8.0) / 8.0).collect();
    let options = CompileOptions {
        quantize: Some(pock::compiler::quantize::Int8Options { calibration, sample_shape: vec![inputs], qas: true }),
        ..placed(PlacementMode::Gpu, &[])
    };
    let plan = pock::compile_model("zoo:mlp:inputs=7,hidden=33,classes=3", batch, 0, options).unwrap().plan;
    let sides = &plan.placement.as_ref().unwrap().train;
    assert!(plan.programs.train.nodes.iter().any(|n| n.op.name() == "QLinearGradWeight"), "an int8 plan");
    for (node, side) in plan.programs.train.nodes.iter().zip(sides) {
        pock::engine::backend::gpu_supports(&plan, node).unwrap_or_else(|e| panic!("{}: {e}", node.name));
        assert_eq!(*side, Side::Gpu, "{} ({})", node.name, node.op.name());
    }
    let board = CompileOptions { target: "jetson-orin-nano".into(), ..placed(PlacementMode::Auto, &[]) };
    let plan = pock::compile_model("zoo:cnn", 8, 0, board).unwrap().plan;
    let sides = &plan.placement.as_ref().unwrap().train;
    assert!(sides.contains(&Side::Cpu) && sides.contains(&Side::Gpu), "{sides:?}");
    for (node, side) in plan.programs.train.nodes.iter().zip(sides) {
        assert!(pock::engine::backend::gpu_supports(&plan, node).is_ok(), "{} ({}) on the {side:?}", node.name, node.op.name());
    }
}

#[test]
fn inspect_shows_the_sides_the_copies_and_the_syncs() {
    let dir = workdir("inspect");
    let plan = dir.join("cnn.pock");
    let out =
        pock(&["compile", "zoo:cnn", "--batch", "4", "--target", "gpu", "--placement", "gpu", "--place-cpu", "MaxPool2d", "-o", s(&plan)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("on the CPU (MaxPool2d)"), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(pock(&["inspect", s(&plan), "--ops"]).stdout).unwrap();
    assert!(text.contains("placement    gpu, MaxPool2d forced onto the CPU"), "{text}");
    assert!(text.contains("after copying to the cpu: features.2"), "{text}");
    assert!(text.lines().any(|l| l.contains(" cpu ") && l.contains("MaxPool2d")), "{text}");
    let json: serde_json::Value = serde_json::from_slice(&pock(&["inspect", s(&plan), "--json"]).stdout).unwrap();
    let p = &json["placement"];
    let train = &p["programs"][0];
    assert_eq!(train["name"], "train");
    let cpu = train["sides"].as_array().unwrap().iter().filter(|s| *s == "cpu").count();
    assert_eq!(cpu, 2, "two MaxPool2d nodes: {train}");
    // Each MaxPool2d sits between GPU nodes: two switches to the CPU, one wait each.
    assert_eq!(p["train_syncs"], 2);
    assert!(train["bytes_to_host"].as_u64().unwrap() > 0 && train["bytes_to_device"].as_u64().unwrap() > 0);
    assert!(p["estimated_step_ms"].as_f64().unwrap() > p["transfer_ms"].as_f64().unwrap());
    assert!(p["all_gpu_step_ms"].as_f64().is_some(), "every cnn op has a GPU kernel");

    let host = dir.join("host.pock");
    assert!(pock(&["compile", "zoo:cnn", "--batch", "4", "-o", s(&host)]).status.success());
    let json: serde_json::Value = serde_json::from_slice(&pock(&["inspect", s(&host), "--json"]).stdout).unwrap();
    assert!(json["placement"].is_null());
    let e = fails(&["compile", "zoo:cnn", "--placement", "gpu", "-o", s(&dir.join("x.pock"))]);
    assert!(e.contains("--target host has none") && e.contains("jetson-orin-nano"), "{e}");
    let e = fails(&["compile", "zoo:cnn", "--target", "gpu", "--place-cpu", "Gather", "-o", s(&dir.join("x.pock"))]);
    assert!(e.contains("--place-cpu Gather") && e.contains("MaxPool2d"), "{e}");
}

#[cfg(feature = "wgpu")]
mod gpu {
    use super::common::gpu_present;
    use super::*;
    use pock::engine::session::BackendChoice;
    use pock::engine::{Session, SessionOptions, Targets};
    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn rms(v: &[f32]) -> f32 {
        (v.iter().map(|v| v * v).sum::<f32>() / v.len() as f32).sqrt()
    }

    fn wgpu() -> SessionOptions {
        SessionOptions { backend: BackendChoice::Wgpu, ..SessionOptions::default() }
    }

    /// The host waits of one `train_step` on the GPU backend outside the program itself (the
    /// session's reads of the loss and counters), measured on a plan without placement.
    fn reads_per_step(model: &str, batch: usize) -> u64 {
        let bytes = pock::compile_model(model, batch, 0, CompileOptions::default()).unwrap().to_bytes();
        let mut gpu = Session::from_bytes(&bytes, wgpu()).unwrap();
        assert_eq!(gpu.backend_name(), "wgpu");
        let n: usize = gpu.input_shape().iter().product();
        let before = gpu.syncs();
        gpu.train_step(&vec![0.5; n], Targets::Labels(&vec![0; batch])).unwrap();
        gpu.syncs() - before
    }

    /// Trains the placed plan 3 steps on `--backend wgpu` (CPU and GPU together) and on the CPU
    /// backend from the same batches: losses within 1e-4 relative, parameters within 1e-4 of
    /// their RMS, and exactly the planned syncs.
    fn matches_cpu(model: &str, batch: usize, options: CompileOptions, reads: u64) {
        let compiled = pock::compile_model(model, batch, 0, options).unwrap();
        let placement = compiled.plan.placement.clone().unwrap();
        assert!(placement.train.contains(&Side::Cpu) && placement.train.contains(&Side::Gpu), "{model}: {:?}", placement.train);
        let planned = schedule(&compiled.plan, &compiled.plan.programs.train, placement.sides(ProgramKind::Train)).syncs() as u64;
        assert!(planned >= 1);
        let bytes = compiled.to_bytes();
        let mut cpu = Session::from_bytes(&bytes, SessionOptions::default()).unwrap();
        let mut both = Session::from_bytes(&bytes, wgpu()).unwrap();
        assert_eq!(cpu.backend_name(), "cpu", "--backend cpu runs a placed plan on the CPU alone");
        assert_eq!(both.backend_name(), "wgpu+cpu");
        let classes = match cpu.plan().training.loss {
            pock::engine::plan::Loss::SoftmaxCrossEntropy { classes } => classes,
            _ => panic!("{model}: a classifier"),
        };
        let n: usize = cpu.input_shape().iter().product();
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let before = both.syncs();
        for step in 0..3 {
            let x: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let y: Vec<i64> = (0..batch).map(|_| rng.random_range(0..classes as i64)).collect();
            let want = cpu.train_step(&x, Targets::Labels(&y)).unwrap();
            let got = both.train_step(&x, Targets::Labels(&y)).unwrap();
            assert!((got - want).abs() <= 1e-4 * want.abs(), "{model} step {step}: loss {got} placed, {want} on the CPU");
        }
        assert_eq!(both.syncs() - before, 3 * (planned + reads), "{model}: {planned} planned syncs and {reads} reads per step");
        let params = super::common::trainable_names(&cpu);
        for name in params {
            let (want, got) = (cpu.read_tensor(&name).unwrap(), both.read_tensor(&name).unwrap());
            let tol = 1e-4 * rms(&want);
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!((a - b).abs() <= tol, "{model}: {name}[{i}] = {a} placed, {b} on the CPU (tolerance {tol})");
            }
        }
        // Evaluation runs its own placed program.
        let x: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let outputs: usize = cpu.output_shape().iter().product();
        let (mut a, mut b) = (vec![0.0; outputs], vec![0.0; outputs]);
        cpu.infer(&x, &mut a).unwrap();
        both.infer(&x, &mut b).unwrap();
        for (p, q) in a.iter().zip(&b) {
            assert!((p - q).abs() <= 1e-4 * rms(&a).max(1e-6), "{model}: inferred {q} placed, {p} on the CPU");
        }
    }

    #[test]
    fn cpu_nodes_between_gpu_nodes_train_as_on_the_cpu() {
        if !gpu_present() {
            return;
        }
        let reads = reads_per_step("zoo:cnn", 8);
        matches_cpu("zoo:cnn", 8, placed(PlacementMode::Gpu, &["MaxPool2d"]), reads);
        // The losses and the optimizer on the CPU: parameters cross back to the device at the end.
        matches_cpu("zoo:cnn:size=13,width=3,classes=5", 5, placed(PlacementMode::Gpu, &["SoftmaxCrossEntropyGrad", "SgdUpdate"]), reads);
        // The cost model's own choice on a unified-memory board: small ops (the masks' u8
        // packing, pooling, the classifier, the updates) on the CPU, many switches.
        matches_cpu("zoo:cnn", 8, CompileOptions { target: "jetson-orin-nano".into(), ..placed(PlacementMode::Auto, &[]) }, reads);
        // Int8 training with its weight gradients on the CPU: int8 activations cross both ways.
        let (inputs, batch) = (7, 9);
        let calibration: Vec<f32> = (0..batch * inputs).map(|i| ((i * 37 % 17) as f32 - 8.0) / 8.0).collect();
        let options = CompileOptions {
            quantize: Some(pock::compiler::quantize::Int8Options { calibration, sample_shape: vec![inputs], qas: true }),
            ..placed(PlacementMode::Gpu, &["QLinearGradWeight"])
        };
        matches_cpu("zoo:mlp:inputs=7,hidden=33,classes=3", batch, options, reads);
    }
}
