//! 1-bit ReLU/ReLU6 masks (issue 7): a ReLU or ReLU6 gradient that alone reads its activation
//! keeps a packed mask instead of the float tensor, and computes exactly what the float rule
//! computes.

use pock::compiler::interp::Interpreter;
use pock::compiler::ir::{Phase, Program};
use pock::compiler::{CompileOptions, TrainingGraph, UpdatePreset, UpdateScheme};
use pock::engine::ops::{Activation, ConvOp, DenseOp, MaskOp, Op};
use pock::engine::plan::{DType, OptimizerKind, Plan, Role};
use pock::engine::session::Targets;
use pock::engine::{Session, SessionOptions};

fn options(update: UpdateScheme, activation_masks: bool) -> CompileOptions {
    CompileOptions {
        optimizer: OptimizerKind::Sgd { momentum: 0.9, dampening: 0.0, nesterov: false, weight_decay: 0.0 },
        learning_rate: 0.01,
        update,
        activation_masks,
        ..Default::default()
    }
}

fn bias() -> UpdateScheme {
    UpdateScheme { preset: Some(UpdatePreset::Bias), train: vec![], ..Default::default() }
}

fn training(model: &str, batch: usize, update: UpdateScheme, masks: bool) -> TrainingGraph {
    pock::models::build(model, batch, 3).unwrap().into_training(options(update, masks)).unwrap()
}

fn count(nodes: impl IntoIterator<Item = Op>, want: fn(&Op) -> bool) -> usize {
    nodes.into_iter().filter(want).count()
}

/// The gradient of every trainable parameter on one fixed batch, evaluated in f32 by the
/// compiler's interpreter over the engine's reference kernels.
fn gradients(t: &TrainingGraph) -> Vec<(String, Vec<f32>)> {
    let g = &t.graph;
    let mut it = Interpreter::<f32>::new(g);
    let n: usize = g.shape(t.train_input).iter().product();
    it.set(t.train_input, (0..n).map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 2.5).collect());
    let classes = *g.shape(t.eval_output).last().unwrap() as i64;
    it.set_int(t.train_target, (0..t.batch as i64).map(|i| (i * 5 + 1) % classes).collect());
    it.run(g.nodes.iter().filter(|n| n.program == Program::Train && n.phase != Phase::Optimizer)).unwrap();
    t.param_grads.iter().map(|&(p, d)| (g.tensor(p).name.clone(), it.get(d).unwrap().to_vec())).collect()
}

/// With and without the pass, every gradient is the same bit for bit, on models whose ReLU and
/// ReLU6 gradients the pass rewrites (all of them, or some where the float is kept anyway).
#[test]
fn masks_change_no_gradient_bit() {
    let full = UpdateScheme::default();
    let cases = [
        ("zoo:mobilenetv2:classes=4,size=32", bias()),
        ("zoo:mobilenetv2:classes=4,size=32", full.clone()),
        ("zoo:cnn:size=12,width=4", bias()),
        ("zoo:resnet18:classes=3,size=16", bias()),
        ("zoo:mlp:inputs=6,hidden=5,classes=3", UpdateScheme { preset: None, train: vec!["layers.0.*".into()], ..Default::default() }),
    ];
    for (model, scheme) in cases {
        let masked = training(model, 2, scheme.clone(), true);
        let plain = training(model, 2, scheme.clone(), false);
        let mask_grads = count(masked.graph.nodes.iter().map(|n| n.op.clone()), |op| matches!(op, Op::Mask(MaskOp::Grad)));
        assert!(mask_grads > 0, "{model} {scheme:?}: the pass rewrote no gradient, so this compares nothing");
        let (a, b) = (gradients(&masked), gradients(&plain));
        assert_eq!(a.len(), b.len());
        for ((name, x), (_, y)) in a.iter().zip(&b) {
            let same = x.len() == y.len() && x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits());
            assert!(same, "{model} {scheme:?}: the gradient of {name} differs with the masks");
        }
        // The earliest trainable parameter's gradient passes through every mask: all zeros there
        // would mean the masks block everything (some later shifts' gradients are zero by nature,
        // when a training-mode BatchNorm downstream removes them).
        let (name, first) = &a[0];
        assert!(first.iter().any(|&v| v != 0.0), "{model} {scheme:?}: {name} has a zero gradient, which would hide a broken mask");
    }
}

/// The engine (fast kernels) trains the two plans to the same losses and parameters, bit for bit.
#[test]
fn masked_plans_train_exactly_as_float_ones() {
    let model = "zoo:mobilenetv2:classes=4,size=32";
    let run = |masks: bool| -> (Vec<f32>, Vec<Vec<f32>>) {
        let plan = pock::compile_model(model, 4, 1, options(bias(), masks)).unwrap();
        let mut session =
            Session::from_bytes(&plan.to_bytes(), SessionOptions { threads: 1, reference_kernels: false, ..SessionOptions::default() })
                .unwrap();
        let sample = 3 * 32 * 32;
        let losses = (0..3)
            .map(|step| {
                let x: Vec<f32> = (0..4 * sample).map(|i| (((i + step * 131) * 7919 % 1000) as f32 / 500.0 - 1.0) * 2.0).collect();
                let labels: Vec<i64> = (0..4).map(|i| ((step + i) % 4) as i64).collect();
                session.train_step(&x, Targets::Labels(&labels)).unwrap()
            })
            .collect();
        let params = session
            .plan()
            .tensors
            .iter()
            .filter(|t| t.role == Role::Parameter { trainable: true })
            .map(|t| session.read_tensor(&t.name).unwrap())
            .collect();
        (losses, params)
    };
    let (masked, plain) = (run(true), run(false));
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&masked.0), bits(&plain.0), "losses");
    assert!(masked.0[2] != masked.0[0], "training moved nothing");
    assert_eq!(masked.1.len(), plain.1.len());
    for (a, b) in masked.1.iter().zip(&plain.1) {
        assert_eq!(bits(a), bits(b), "a trained parameter differs");
    }
}

/// The forward values the backward pass reads: `(tensor, the op of the forward node that wrote
/// it)` for every transient a forward node writes and a backward node reads.
fn saved(plan: &Plan) -> Vec<(usize, &'static str)> {
    let nodes = &plan.programs.train.nodes;
    let mut out = Vec::new();
    for n in nodes.iter().filter(|n| n.phase == Phase::Forward) {
        for &t in &n.outputs {
            let read = nodes.iter().any(|b| b.phase == Phase::Backward && b.inputs.contains(&t));
            if read && plan.tensor(t).role == Role::Transient {
                out.push((t.index(), n.op.name()));
            }
        }
    }
    out
}

/// zoo:mobilenetv2 (10 classes, batch 8, 128x128, SGD momentum) with `--update bias`: no f32
/// activation is kept for a ReLU6 gradient (each reads a mask), no conv input is kept (the convs'
/// weights are frozen, so no weight gradient reads one), and the arena shrinks.
#[test]
fn mobilenetv2_bias_update_keeps_masks_not_activations() {
    let model = "zoo:mobilenetv2:classes=10,size=128";
    let compile = |u: UpdateScheme, masks: bool| pock::compile_model(model, 8, 0, options(u, masks)).unwrap().plan;
    let plan = compile(bias(), true);
    let train = &plan.programs.train.nodes;
    // A ReLU6 is a Clip node or the activation of a fused convolution (compiler/src/fuse.rs).
    let clips = count(train.iter().map(|n| n.op.clone()), |op| {
        matches!(op, Op::Dense(DenseOp::Clip(_)) | Op::Conv(ConvOp::Conv2dBiasAct { act: Activation::Clip(_), .. }))
    });
    let packs = count(train.iter().map(|n| n.op.clone()), |op| matches!(op, Op::Mask(MaskOp::Pack(_))));
    assert!(clips >= 30, "mobilenetv2 has {clips} ReLU6");
    assert_eq!(packs, clips, "every ReLU6 gradient reads a mask");
    assert!(!train.iter().any(|n| matches!(n.op, Op::Dense(DenseOp::ClipGrad(_) | DenseOp::ReluGrad))));
    for (t, op) in saved(&plan) {
        let info = &plan.tensors[t];
        assert!(op != "Clip" && op != "Relu" && op != "Conv2dBiasAct", "the backward pass keeps the float activation '{}'", info.name);
        if info.dtype == DType::U8 {
            assert_eq!(op, "MaskPack");
        }
    }
    // A conv input is never read backward: every conv's weight is frozen.
    for n in train.iter().filter(|n| matches!(n.op, Op::Conv(_)) && n.phase == Phase::Forward) {
        let x = n.inputs[0];
        let kept = train.iter().any(|b| b.phase == Phase::Backward && b.inputs.contains(&x));
        assert!(!kept, "the input of '{}' is kept for the backward pass", n.name);
    }

    let unmasked = compile(bias(), false);
    let full = compile(UpdateScheme::default(), true);
    let report = |p: &Plan| pock::inspect::report(p);
    let (r, u, f) = (report(&plan), report(&unmasked), report(&full));
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "mobilenetv2 b8 128^2 momentum: bias arena {:.1} MiB (saved {:.1} MiB), without masks {:.1} MiB (saved {:.1} MiB), full {:.1} MiB: bias/full {:.3}",
        mib(r.arena_bytes),
        mib(r.saved_activation_bytes),
        mib(u.arena_bytes),
        mib(u.saved_activation_bytes),
        mib(f.arena_bytes),
        r.arena_bytes as f64 / f.arena_bytes as f64
    );
    assert!(r.saved_activation_bytes < u.saved_activation_bytes && r.arena_bytes < u.arena_bytes);
}
