//! Fusion in the training graph (issue 7 part 4): each convolution with the bias and ReLU/ReLU6
//! after it is one `Conv2dBiasAct` node, each training-mode BatchNorm with the ReLU/ReLU6 after it
//! one `BatchNormTrainAct` node, and each ReLU/ReLU6 mask gradient joins the conv input
//! gradient before it (`Conv2dGradInputMasked`). Training computes the same bits with fusion on
//! and off, and the forward floor of sparse plans falls: `--update bias` on zoo:mobilenetv2 fits a
//! quarter of the full plan's arena.

mod common;

use common::{pock, workdir};
use pock::compiler::stages::BatchNormMode;
use pock::compiler::{CompileOptions, UpdatePreset, UpdateScheme};
use pock::engine::ops::{ConvOp, DenseOp, MaskOp, NormOp, Op};
use pock::engine::plan::{DType, OptimizerKind, Plan};
use pock::engine::{Session, SessionOptions, Targets};

fn options(update: UpdateScheme, fuse: bool) -> CompileOptions {
    options_with(update, fuse, BatchNormMode::Fold)
}

fn options_with(update: UpdateScheme, fuse: bool, batch_norm: BatchNormMode) -> CompileOptions {
    CompileOptions {
        batch_norm,
        optimizer: OptimizerKind::Sgd { momentum: 0.9, dampening: 0.0, nesterov: false, weight_decay: 1e-4 },
        learning_rate: 0.05,
        update,
        fuse,
        ..Default::default()
    }
}

fn preset(p: UpdatePreset) -> UpdateScheme {
    UpdateScheme { preset: Some(p), ..Default::default() }
}

fn count(plan: &Plan, what: fn(&Op) -> bool) -> usize {
    plan.programs.train.nodes.iter().filter(|n| what(&n.op)).count()
}

const CNN: &str = "zoo:cnn:channels=3,size=16,classes=4,width=8";
const MLP: &str = "zoo:mlp:inputs=12,hidden=16,classes=4";
const MOBILENET: &str = "zoo:mobilenetv2:classes=4,size=32,width=0.25";

/// Trains `steps` batches with fusion on and off, with the fast and with the reference kernels:
/// losses, every checkpointed tensor and the inference outputs are bit-identical, and the fused
/// plan does hold fused convolutions (and fused mask gradients when `masked_gradients`: where a
/// weight gradient reads an activation, a full update, it keeps the float and has no mask).
///
/// With BatchNorm in training mode (`batch_norm`), the fused plan holds `BatchNormTrainAct` nodes,
/// one for every ReLU/ReLU6 it lost.
fn same_training(model: &str, batch: usize, update: UpdateScheme, steps: usize, masked_gradients: bool) {
    same_training_with(model, batch, update, steps, masked_gradients, BatchNormMode::Fold)
}

fn same_training_with(model: &str, batch: usize, update: UpdateScheme, steps: usize, masked_gradients: bool, batch_norm: BatchNormMode) {
    for reference_kernels in [false, true] {
        let run = |fuse: bool| {
            let compiled = pock::compile_model(model, batch, 7, options_with(update.clone(), fuse, batch_norm)).unwrap();
            let opts = SessionOptions { reference_kernels, ..SessionOptions::default() };
            let mut session = Session::from_bytes(&compiled.to_bytes(), opts).unwrap();
            let plan = session.plan().clone();
            let x_len: usize = plan.tensor(plan.programs.train.feeds[0]).numel();
            let x_at =
                |step: usize| -> Vec<f32> { (0..x_len).map(|i| (((i * 7919 + step * 131) % 1009) as f32 / 1009.0) * 2.0 - 1.0).collect() };
            let losses: Vec<u32> = (0..steps)
                .map(|step| {
                    let y: Vec<i64> = (0..batch).map(|i| ((i + step) % 4) as i64).collect();
                    session.train_step(&x_at(step), Targets::Labels(&y)).unwrap().to_bits()
                })
                .collect();
            let state: Vec<(String, Vec<u32>)> = plan
                .tensors
                .iter()
                .filter(|t| t.role.is_checkpointed() && t.dtype == DType::F32)
                .map(|t| (t.name.clone(), session.read_tensor(&t.name).unwrap().iter().map(|v| v.to_bits()).collect()))
                .collect();
            let out_len: usize = plan.tensor(plan.programs.infer.fetches[0]).numel();
            let mut out = vec![0f32; out_len];
            session.infer(&x_at(99), &mut out).unwrap();
            let out: Vec<u32> = out.iter().map(|v| v.to_bits()).collect();
            (plan, losses, state, out)
        };
        let (fused, losses, state, out) = run(true);
        let (plain, plain_losses, plain_state, plain_out) = run(false);
        let what = format!("{model} {update:?} (reference kernels: {reference_kernels})");
        let forward = count(&fused, |op| matches!(op, Op::Conv(ConvOp::Conv2dBiasAct { .. }) | Op::Dense(DenseOp::MatMulBiasAct { .. })));
        let backward = count(&fused, |op| matches!(op, Op::Conv(ConvOp::Conv2dGradInputMasked { .. })));
        assert!(forward > 0 && (backward > 0) == masked_gradients, "{what}: {forward} fused convolutions, {backward} fused mask gradients");
        let any_fused = |op: &Op| {
            matches!(
                op,
                Op::Conv(ConvOp::Conv2dBiasAct { .. } | ConvOp::Conv2dGradInputMasked { .. })
                    | Op::Dense(DenseOp::MatMulBiasAct { .. })
                    | Op::Norm(NormOp::BatchNormTrainAct { .. })
            )
        };
        assert_eq!(count(&plain, any_fused), 0);
        // Every fused forward node replaced a conv or matmul and a BiasAdd, and every fused
        // gradient a conv input gradient and a MaskGrad.
        let bias_adds = |p: &Plan| count(p, |op| matches!(op, Op::Dense(DenseOp::BiasAdd)));
        assert_eq!(bias_adds(&plain) - bias_adds(&fused), forward, "{what}");
        let mask_grads = |p: &Plan| count(p, |op| matches!(op, Op::Mask(MaskOp::Grad)));
        assert_eq!(mask_grads(&plain) - mask_grads(&fused), backward, "{what}");
        let norm_acts = count(&fused, |op| matches!(op, Op::Norm(NormOp::BatchNormTrainAct { .. })));
        assert_eq!(norm_acts > 0, batch_norm == BatchNormMode::Train, "{what}: {norm_acts} fused BatchNorms");
        let activations = |p: &Plan| count(p, |op| matches!(op, Op::Dense(DenseOp::Relu | DenseOp::Clip(_))));
        let norms = |p: &Plan| count(p, |op| matches!(op, Op::Norm(NormOp::BatchNormTrain(_) | NormOp::BatchNormTrainAct { .. })));
        // Activations lost: the conv/matmul chains' and the BatchNorms'.
        let chain_acts = count(&fused, |op| match op {
            Op::Conv(ConvOp::Conv2dBiasAct { act, .. }) | Op::Dense(DenseOp::MatMulBiasAct { act, .. }) => {
                *act != pock::engine::ops::Activation::Identity
            }
            _ => false,
        });
        assert_eq!(activations(&plain) - activations(&fused), chain_acts + norm_acts, "{what}");
        assert_eq!(norms(&plain), norms(&fused), "{what}");
        assert_eq!(losses, plain_losses, "{what}: losses differ with fusion");
        assert!(losses.iter().all(|l| f32::from_bits(*l).is_finite()));
        assert_eq!(state.len(), plain_state.len());
        for ((name, a), (_, b)) in state.iter().zip(&plain_state) {
            assert!(a == b, "{what}: {name} differs with fusion");
        }
        assert_eq!(out, plain_out, "{what}: inference outputs differ with fusion");
    }
}

#[test]
fn fusion_keeps_training_bit_exact() {
    // ReLU (the CNN, whose ReLUs feed max pools: no mask gradient follows a conv input gradient)
    // and ReLU6 (MobileNetV2), every parameter and biases only.
    same_training(CNN, 4, UpdateScheme::default(), 4, false);
    // Linear layers: MatMul + bias + ReLU.
    same_training(MLP, 4, UpdateScheme::default(), 4, false);
    same_training(CNN, 4, preset(UpdatePreset::Bias), 4, false);
    same_training(MOBILENET, 2, UpdateScheme::default(), 3, false);
    same_training(MOBILENET, 2, preset(UpdatePreset::Bias), 3, true);
    // BatchNorm in training mode: BatchNorm + ReLU (the CNN) and + ReLU6 (MobileNetV2).
    same_training_with(CNN, 4, UpdateScheme::default(), 4, false, BatchNormMode::Train);
    same_training_with(MOBILENET, 2, UpdateScheme::default(), 3, false, BatchNormMode::Train);
    same_training_with(MOBILENET, 2, preset(UpdatePreset::Bias), 3, true, BatchNormMode::Train);
}

/// zoo:mobilenetv2 (10 classes, batch 8, 3x128x128, SGD momentum), the memory case: with
/// fusion the forward floor (a conv output and its biased copy, 12 MiB each) and the backward one
/// (an input gradient and its masked copy) are gone, and `--update bias` needs at most a quarter
/// of the full plan's arena. Compile only.
#[test]
fn mobilenetv2_bias_update_fits_a_quarter_of_full() {
    let model = "zoo:mobilenetv2:classes=10,size=128";
    let arena = |update: UpdateScheme, fuse: bool| pock::compile_model(model, 8, 0, options(update, fuse)).unwrap().plan.arena_bytes;
    let full = arena(UpdateScheme::default(), true);
    let bias = arena(preset(UpdatePreset::Bias), true);
    let bias_unfused = arena(preset(UpdatePreset::Bias), false);
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    eprintln!(
        "full {:.2} MiB, bias {:.2} MiB (unfused {:.2} MiB): {:.3} of full",
        mib(full),
        mib(bias),
        mib(bias_unfused),
        bias as f64 / full as f64
    );
    assert!(bias * 4 <= full, "--update bias: {bias} B is {:.3} of full ({full} B)", bias as f64 / full as f64);
    assert!(bias < bias_unfused);
}

#[test]
fn no_fuse_is_a_documented_compile_flag() {
    let help = pock(&["compile", "--help"]);
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(help.status.success() && text.contains("--no-fuse"), "{text}");
    let dir = workdir("fuse_flag");
    let inspect_nodes = |flag: Option<&str>, name: &str| {
        let out = dir.join(name);
        let mut args = vec!["compile", CNN, "--batch", "2", "-o", out.to_str().unwrap()];
        args.extend(flag);
        let compiled = pock(&args);
        assert!(compiled.status.success(), "{}", String::from_utf8_lossy(&compiled.stderr));
        let plan = Session::load(&out, SessionOptions::default()).unwrap().plan().clone();
        count(&plan, |op| matches!(op, Op::Conv(ConvOp::Conv2dBiasAct { .. })))
    };
    assert!(inspect_nodes(None, "fused.pock") > 0);
    assert_eq!(inspect_nodes(Some("--no-fuse"), "plain.pock"), 0);
}
