//! Models learn: zoo:mlp separates a synthetic problem, zoo:cnn learns the demo's shapes.

use pock::compiler::CompileOptions;
use pock::engine::plan::OptimizerKind;
use pock::engine::{Session, SessionOptions};
use pock::schedule::LrSchedule;
use pock::train::{evaluate, train, TrainConfig};

fn sgd(lr: f32) -> CompileOptions {
    CompileOptions {
        optimizer: OptimizerKind::Sgd { momentum: 0.9, dampening: 0.0, nesterov: false, weight_decay: 0.0 },
        learning_rate: lr,
        // These models learn from scratch, so BatchNorm uses batch statistics.
        batch_norm: pock::compiler::stages::BatchNormMode::Train,
        ..Default::default()
    }
}

#[test]
fn mlp_separates_blobs() {
    let bytes = pock::compile_model("zoo:mlp:inputs=8,hidden=32,classes=4", 32, 0, sgd(0.05)).unwrap().to_bytes();
    let mut s = Session::from_bytes(&bytes, SessionOptions { threads: 1, reference_kernels: false, ..SessionOptions::default() }).unwrap();
    let train_set = pock::synth::blobs(1024, 8, 4, 1);
    let test_set = pock::synth::blobs(512, 8, 4, 2);
    let before = evaluate(&mut s, &test_set).unwrap();
    let cfg = TrainConfig::new(5, 0, 0.05, LrSchedule::parse("constant").unwrap());
    let summary = train(&mut s, &train_set, &cfg, |_| {}).unwrap();
    let after = evaluate(&mut s, &test_set).unwrap();
    let acc = after.accuracy.unwrap();
    assert!(acc > 0.95, "accuracy {acc} (before {:?}), epoch losses {:?}", before.accuracy, summary.epoch_losses);
    assert!(after.loss < before.loss);
}

#[test]
fn mlp_regression_fits_a_linear_map() {
    let options = CompileOptions {
        optimizer: OptimizerKind::Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 },
        learning_rate: 0.01,
        ..Default::default()
    };
    let bytes = pock::compile_model("zoo:mlp:inputs=6,hidden=32,depth=1,task=regression,outputs=2", 16, 0, options).unwrap().to_bytes();
    let mut s = Session::from_bytes(&bytes, SessionOptions { threads: 1, reference_kernels: false, ..SessionOptions::default() }).unwrap();
    let data = pock::synth::regression(512, 6, 2, 3);
    let before = evaluate(&mut s, &data).unwrap();
    let cfg = TrainConfig::new(20, 0, 0.01, LrSchedule::parse("constant").unwrap());
    train(&mut s, &data, &cfg, |_| {}).unwrap();
    let after = evaluate(&mut s, &data).unwrap();
    assert!(after.accuracy.is_none());
    assert!(after.loss < 0.1 * before.loss, "MSE {} -> {}", before.loss, after.loss);
}

#[test]
fn cnn_learns_the_demo_shapes() {
    let bytes = pock::compile_model("zoo:cnn:channels=1,size=28,classes=4", 32, 7, sgd(0.05)).unwrap().to_bytes();
    let mut s = Session::from_bytes(&bytes, SessionOptions { threads: 2, reference_kernels: false, ..SessionOptions::default() }).unwrap();
    let train_set = pock::synth::shapes(1024, 28, 7);
    let test_set = pock::synth::shapes(256, 28, 8);
    let before = evaluate(&mut s, &test_set).unwrap();
    let cfg = TrainConfig::new(3, 7, 0.05, LrSchedule::parse("cosine").unwrap());
    let summary = train(&mut s, &train_set, &cfg, |_| {}).unwrap();
    let after = evaluate(&mut s, &test_set).unwrap();
    let (b, a) = (before.accuracy.unwrap(), after.accuracy.unwrap());
    // Four balanced classes: chance is 25%.
    assert!(a > 0.6 && a > b + 0.2, "accuracy {b} -> {a}, epoch losses {:?}", summary.epoch_losses);
    assert!(summary.epoch_losses.last() < summary.epoch_losses.first(), "{:?}", summary.epoch_losses);
}

#[test]
fn demo_runs_and_learns() {
    let cfg = pock::demo::DemoConfig { train_samples: 512, test_samples: 128, epochs: 2, threads: 2, ..Default::default() };
    let mut out = Vec::new();
    let report = pock::demo::run(&cfg, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("before training") && text.contains("after training") && text.contains("arena"), "{text}");
    assert!(report.arena_bytes > 0 && report.ms_per_step > 0.0);
    assert!(report.epoch_losses[1] < report.epoch_losses[0], "{:?}", report.epoch_losses);
}

#[test]
fn frozen_batch_norm_fine_tunes_with_fixed_running_statistics() {
    use pock::compiler::stages::BatchNormMode;
    let model = "zoo:cnn:channels=1,size=16,classes=4,width=8";
    let data = pock::synth::shapes(256, 16, 3);
    let opts = SessionOptions { threads: 1, reference_kernels: false, ..SessionOptions::default() };
    let constant = |epochs| TrainConfig::new(epochs, 0, 0.05, LrSchedule::parse("constant").unwrap());
    // Pre-train with batch statistics, as a model arrives on a device.
    let pre = pock::compile_model(model, 16, 7, sgd(0.05)).unwrap().to_bytes();
    let mut s = Session::from_bytes(&pre, opts).unwrap();
    train(&mut s, &data, &constant(2), |_| {}).unwrap();
    let ckpt = std::env::temp_dir().join(format!("pock-frozen-{}.safetensors", std::process::id()));
    s.save(&ckpt).unwrap();

    // Fine-tune with BatchNorm frozen: running statistics are inputs, never updated.
    let frozen = pock::compile_model(model, 16, 7, CompileOptions { batch_norm: BatchNormMode::Frozen, ..sgd(0.001) }).unwrap().to_bytes();
    let mut f = Session::from_bytes(&frozen, opts).unwrap();
    let nodes = &f.plan().programs.train.nodes;
    assert!(nodes.iter().all(|n| n.op.name() != "BatchNormTrain"));
    assert!(nodes.iter().any(|n| n.op.name() == "BatchNormInferGrad"));
    f.load_weights(&ckpt).unwrap();
    let var = f.read_tensor("features.1.running_var").unwrap();
    assert_eq!(var, s.read_tensor("features.1.running_var").unwrap());
    let gamma = f.read_tensor("features.1.weight").unwrap();
    let before = evaluate(&mut f, &data).unwrap();
    // Frozen statistics do not renormalise: a channel whose running variance is near zero
    // amplifies its gradient by up to 1/sqrt(eps), so fine-tuning uses a small learning rate
    // (0.005 with momentum diverges here, exactly as it would in PyTorch).
    let tune = TrainConfig { base_lr: 0.001, ..constant(3) };
    train(&mut f, &data, &tune, |_| {}).unwrap();
    let after = evaluate(&mut f, &data).unwrap();
    assert_eq!(f.read_tensor("features.1.running_var").unwrap(), var, "running statistics must not move");
    assert_ne!(f.read_tensor("features.1.weight").unwrap(), gamma, "gamma still learns");
    assert!(after.loss < before.loss, "fine-tuning lowers the loss: {} -> {}", before.loss, after.loss);
}
