//! Every GPU kernel against the reference kernel, on random shapes with odd sizes: each op runs as
//! a one-node plan on the `wgpu` backend and on the CPU backend's reference kernels, from the same
//! inputs and initial outputs (in-place outputs hold state), and every output must agree within
//! 1e-4 of its RMS (sums run in another order on the GPU).
//!
//! Without a GPU adapter (on CI: Mesa's lavapipe, a software Vulkan) each test prints a SKIP line
//! and returns.
#![cfg(feature = "wgpu")]

use pock_engine::backend::wgpu::{adapter_description, WgpuBackend};
use pock_engine::exec::{Backend, CpuBackend, CpuKernels, ProgramKind, ValidatedPlan};
use pock_engine::format::WeightRange;
use pock_engine::ops::{
    Activation, Adam, Clip, Conv2d, ConvOp, DenseOp, LossOp, MaskKind, MaskOp, MatMul, Op, OptimOp, Pool2d, PoolOp, Reduction, Sgd,
};
use pock_engine::plan::{
    DType, Init, Location, Loss, ModelSource, Node, OptimizerKind, Phase, Plan, Program, Programs, Role, TensorId, TensorInfo, TrainingInfo,
};
use pock_engine::session::PlanBytes;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn gpu_present() -> bool {
    match adapter_description() {
        Ok(_) => true,
        Err(e) => {
            println!("SKIP: no Vulkan adapter (install mesa-vulkan-drivers libvulkan1): {e}");
            false
        }
    }
}

/// An argument of the node: its shape, dtype and value (f32 values, or labels for i64).
struct Arg {
    shape: Vec<usize>,
    values: Vec<f32>,
    labels: Vec<i64>,
    /// Raw bytes of a `u8` argument (a packed mask).
    bytes: Vec<u8>,
}

impl Arg {
    fn dtype(&self) -> DType {
        match (self.labels.is_empty(), self.bytes.is_empty()) {
            (false, _) => DType::I64,
            (_, false) => DType::U8,
            _ => DType::F32,
        }
    }
}

fn floats(rng: &mut ChaCha8Rng, shape: &[usize]) -> Arg {
    let n = shape.iter().product();
    Arg { shape: shape.to_vec(), values: (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect(), labels: vec![], bytes: vec![] }
}

fn scalar(v: f32) -> Arg {
    Arg { shape: vec![], values: vec![v], labels: vec![], bytes: vec![] }
}

fn labels(rng: &mut ChaCha8Rng, n: usize, classes: usize) -> Arg {
    Arg { shape: vec![n], values: vec![], labels: (0..n).map(|_| rng.random_range(0..classes as i64)).collect(), bytes: vec![] }
}

fn bytes_of(a: &Arg) -> Vec<u8> {
    if !a.bytes.is_empty() {
        a.bytes.clone()
    } else if a.labels.is_empty() {
        a.values.iter().flat_map(|v| v.to_le_bytes()).collect()
    } else {
        a.labels.iter().flat_map(|v| v.to_le_bytes()).collect()
    }
}

/// Where the next tensor after `t` starts (8-byte aligned).
fn end_of(t: &TensorInfo) -> u64 {
    let Location::Arena { offset } = t.location else { unreachable!() };
    offset + t.bytes().div_ceil(8) * 8
}

/// A plan whose train program is the one node: in-place outputs first (the persistent region),
/// then the inputs and the other outputs, each at an 8-byte boundary.
fn one_node(op: &Op, inputs: &[Arg], inplace: &[Arg], out_shapes: &[Vec<usize>]) -> Plan {
    let mut tensors: Vec<TensorInfo> = Vec::new();
    let mut add = |name: String, shape: &[usize], dtype: DType, role: Role| {
        let offset = tensors.last().map_or(0, end_of);
        tensors.push(TensorInfo { name, shape: shape.to_vec(), dtype, role, location: Location::Arena { offset }, init: Init::None });
        TensorId(tensors.len() as u32 - 1)
    };
    let mut outputs: Vec<TensorId> = inplace
        .iter()
        .enumerate()
        .map(|(k, a)| add(format!("state{k}"), &a.shape, DType::F32, Role::Parameter { trainable: true }))
        .collect();
    let persistent = outputs.len();
    let ins: Vec<TensorId> = inputs.iter().enumerate().map(|(k, a)| add(format!("in{k}"), &a.shape, a.dtype(), Role::Input)).collect();
    let in_dtypes: Vec<DType> = inputs.iter().map(Arg::dtype).collect();
    let out_dtypes = op.output_dtypes(&in_dtypes).unwrap();
    for (k, s) in out_shapes.iter().enumerate().skip(inplace.len()) {
        outputs.push(add(format!("out{k}"), s, out_dtypes[k], Role::Transient));
    }
    let persistent = if persistent == 0 { 0 } else { end_of(&tensors[persistent - 1]) };
    let offset = tensors.last().map_or(0, end_of);
    let node = Node { name: "node".into(), op: op.clone(), inputs: ins, outputs, phase: Phase::Forward, workspace: None };
    Plan {
        model: "one node".into(),
        target: "host".into(),
        producer: "wgpu_kernels".into(),
        tensors,
        programs: Programs { train: Program { nodes: vec![node], feeds: vec![], fetches: vec![] }, ..Programs::default() },
        training: TrainingInfo {
            batch: 1,
            loss: Loss::Mse,
            optimizer: OptimizerKind::Sgd { momentum: 0.0, dampening: 0.0, nesterov: false, weight_decay: 0.0 },
            learning_rate: 0.1,
            accumulate: 1,
            clip_grad_norm: None,
        },
        arena_bytes: offset.max(8),
        persistent_bytes: persistent,
        weight_bytes: 0,
        source: ModelSource::default(),
        folded_norms: vec![],
        arena_bytes_unordered: offset.max(8),
    }
}

/// Runs `op` on both backends and compares every output.
fn check(what: &str, op: &Op, inputs: &[Arg], inplace: &[Arg]) {
    let in_shapes: Vec<&[usize]> = inputs.iter().map(|a| a.shape.as_slice()).collect();
    let mut out_shapes = op.output_shapes(&in_shapes).unwrap_or_else(|e| panic!("{what}: {e}"));
    if out_shapes.is_empty() {
        out_shapes = inplace.iter().map(|a| a.shape.clone()).collect();
    }
    let plan = ValidatedPlan::new(one_node(op, inputs, inplace, &out_shapes)).unwrap_or_else(|e| panic!("{what}: {e}"));
    let range = WeightRange { offset: 0, len: 0 };
    let mut cpu = CpuBackend::new(plan.clone(), PlanBytes::copy_of(&[0; 8]), range, CpuKernels::Reference).unwrap();
    let mut gpu = WgpuBackend::new(plan.clone(), &[], range).unwrap_or_else(|e| panic!("{what}: {e}"));
    let node = &plan.programs.train.nodes[0];
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    for b in [&mut cpu as &mut dyn Backend, &mut gpu] {
        for (&t, a) in node.inputs.iter().zip(inputs) {
            b.write(t, &bytes_of(a)).unwrap();
        }
        for (&t, a) in node.outputs.iter().zip(inplace) {
            b.write(t, &bytes_of(a)).unwrap();
        }
        // Plain float outputs start as garbage, the same on both sides.
        for &t in node.outputs[inplace.len()..].iter().filter(|&&t| plan.tensor(t).dtype == DType::F32) {
            let n = plan.tensor(t).numel();
            let junk: Vec<u8> = (0..n).flat_map(|_| rng.random_range(-9.0f32..9.0).to_le_bytes()).collect();
            b.write(t, &junk).unwrap();
        }
        rng = ChaCha8Rng::seed_from_u64(99);
        b.run(ProgramKind::Train).unwrap_or_else(|e| panic!("{what}: {e}"));
    }
    for (k, &t) in node.outputs.iter().enumerate() {
        let bytes = plan.tensor(t).bytes() as usize;
        let (mut want, mut got) = (vec![0u8; bytes], vec![0u8; bytes]);
        cpu.read(t, &mut want).unwrap();
        gpu.read(t, &mut got).unwrap();
        if plan.tensor(t).dtype == DType::U8 {
            assert_eq!(got, want, "{what}: output {k} (bytes)");
            continue;
        }
        let want: Vec<f32> = want.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        let got: Vec<f32> = got.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        let rms = (want.iter().map(|v| v * v).sum::<f32>() / want.len().max(1) as f32).sqrt();
        let tol = 1e-4 * rms.max(1e-3);
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!(
                (a - b).abs() <= tol || a.to_bits() == b.to_bits(),
                "{what}: output {k}[{i}] = {a} on the GPU, reference {b} (tolerance {tol})"
            );
        }
    }
}

#[test]
fn dense_kernels_match_the_reference() {
    if !gpu_present() {
        return;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for case in 0..12 {
        let (m, n, k) = (rng.random_range(1..40usize), rng.random_range(1..40usize), rng.random_range(1..70usize));
        let (ta, tb) = (case % 2 == 1, case / 2 % 2 == 1);
        let a = floats(&mut rng, &if ta { [k, m] } else { [m, k] });
        let b = floats(&mut rng, &if tb { [n, k] } else { [k, n] });
        check(
            &format!("MatMul {m}x{k}x{n} ta={ta} tb={tb}"),
            &Op::Dense(DenseOp::MatMul(MatMul { trans_a: ta, trans_b: tb })),
            &[a, b],
            &[],
        );
    }
    for _ in 0..4 {
        let shape = [rng.random_range(1..5usize), rng.random_range(1..9), rng.random_range(1..7), rng.random_range(1..7)];
        let x = floats(&mut rng, &shape);
        let c = floats(&mut rng, &shape[1..2]);
        check(&format!("BiasAdd {shape:?}"), &Op::Dense(DenseOp::BiasAdd), &[x, c], &[]);
        check(&format!("BiasGrad {shape:?}"), &Op::Dense(DenseOp::BiasGrad), &[floats(&mut rng, &shape)], &[]);
        let clip = Clip { min: -0.3, max: 0.6 };
        for op in [DenseOp::Relu, DenseOp::Clip(clip), DenseOp::Reshape { shape: vec![shape.iter().product()] }] {
            check(&format!("{op:?} {shape:?}"), &Op::Dense(op.clone()), &[floats(&mut rng, &shape)], &[]);
        }
        for op in [DenseOp::ReluGrad, DenseOp::ClipGrad(clip), DenseOp::Add, DenseOp::Mul] {
            check(&format!("{op:?} {shape:?}"), &Op::Dense(op.clone()), &[floats(&mut rng, &shape), floats(&mut rng, &shape)], &[]);
        }
    }
}

#[test]
fn convolution_kernels_match_the_reference() {
    if !gpu_present() {
        return;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    for case in 0..16 {
        let groups = if case % 4 == 3 { rng.random_range(1..4usize) } else { 1 };
        let (n, c, o) = (rng.random_range(1..4usize), groups * rng.random_range(1..4usize), groups * rng.random_range(1..5usize));
        let (kh, kw) = (rng.random_range(1..4usize), rng.random_range(1..4usize));
        let conv = Conv2d {
            stride: [rng.random_range(1..3), rng.random_range(1..3)],
            padding: [rng.random_range(0..2), rng.random_range(0..2), rng.random_range(0..2), rng.random_range(0..2)],
            dilation: [rng.random_range(1..3), 1],
            groups,
        };
        let (h, w) = (rng.random_range(5..12usize), rng.random_range(5..12usize));
        let x = floats(&mut rng, &[n, c, h, w]);
        let wt = floats(&mut rng, &[o, c / groups, kh, kw]);
        let y = Op::Conv(ConvOp::Conv2d(conv)).output_shapes(&[&x.shape, &wt.shape]).unwrap().remove(0);
        let what = format!("conv x{:?} w{:?} {conv:?}", x.shape, wt.shape);
        let dy = floats(&mut rng, &y);
        check(&format!("{what} forward"), &Op::Conv(ConvOp::Conv2d(conv)), &[x, wt], &[]);
        let (dy2, wt2) = (
            Arg { shape: dy.shape.clone(), values: dy.values.clone(), labels: vec![], bytes: vec![] },
            floats(&mut rng, &[o, c / groups, kh, kw]),
        );
        check(&format!("{what} input gradient"), &Op::Conv(ConvOp::Conv2dGradInput { conv, input_hw: [h, w] }), &[dy2, wt2], &[]);
        let x2 = floats(&mut rng, &[n, c, h, w]);
        check(&format!("{what} weight gradient"), &Op::Conv(ConvOp::Conv2dGradWeight { conv, kernel_hw: [kh, kw] }), &[dy, x2], &[]);
    }
}

#[test]
fn pooling_kernels_match_the_reference() {
    if !gpu_present() {
        return;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for case in 0..12 {
        let k = rng.random_range(1..4usize);
        let p = Pool2d {
            kernel: [k, rng.random_range(1..4)],
            stride: [rng.random_range(1..3), rng.random_range(1..3)],
            padding: if case % 2 == 0 { [0; 4] } else { [k / 2, 0, k / 2, 1] },
            count_include_pad: case % 3 == 0,
        };
        let shape = [rng.random_range(1..3usize), rng.random_range(1..4), rng.random_range(4..10), rng.random_range(4..10)];
        let x = floats(&mut rng, &shape);
        let Ok(y) = Op::Pool(PoolOp::MaxPool2d(p)).output_shapes(&[&shape]) else { continue };
        let y = y[0].clone();
        check(&format!("MaxPool2d {shape:?} {p:?}"), &Op::Pool(PoolOp::MaxPool2d(p)), &[floats(&mut rng, &shape)], &[]);
        check(&format!("AvgPool2d {shape:?} {p:?}"), &Op::Pool(PoolOp::AvgPool2d(p)), &[floats(&mut rng, &shape)], &[]);
        check(&format!("MaxPool2dGrad {shape:?} {p:?}"), &Op::Pool(PoolOp::MaxPool2dGrad(p)), &[floats(&mut rng, &y), x], &[]);
        let g = PoolOp::AvgPool2dGrad { pool: p, input_hw: [shape[2], shape[3]] };
        check(&format!("AvgPool2dGrad {shape:?} {p:?}"), &Op::Pool(g), &[floats(&mut rng, &y)], &[]);
        check(&format!("GlobalAvgPool {shape:?}"), &Op::Pool(PoolOp::GlobalAvgPool), &[floats(&mut rng, &shape)], &[]);
        let g = PoolOp::GlobalAvgPoolGrad { input_hw: [shape[2], shape[3]] };
        check(&format!("GlobalAvgPoolGrad {shape:?}"), &Op::Pool(g), &[floats(&mut rng, &[shape[0], shape[1], 1, 1])], &[]);
    }
}

#[test]
fn loss_and_optimizer_kernels_match_the_reference() {
    if !gpu_present() {
        return;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    for _ in 0..4 {
        let (n, c) = (rng.random_range(1..40usize), rng.random_range(2..12usize));
        for r in [Reduction::Mean, Reduction::PerSample] {
            let what = format!("softmax cross-entropy {n}x{c} {r:?}");
            check(&what, &Op::Loss(LossOp::SoftmaxCrossEntropy(r)), &[floats(&mut rng, &[n, c]), labels(&mut rng, n, c)], &[]);
            let dloss = if r == Reduction::Mean { floats(&mut rng, &[]) } else { floats(&mut rng, &[n]) };
            let op = Op::Loss(LossOp::SoftmaxCrossEntropyGrad(r));
            check(&format!("{what} gradient"), &op, &[dloss, floats(&mut rng, &[n, c]), labels(&mut rng, n, c)], &[]);
        }
    }
    for case in 0..8 {
        let shape = [rng.random_range(1..700usize)];
        let momentum = if case % 2 == 0 { 0.9 } else { 0.0 };
        let sgd = Sgd {
            momentum,
            dampening: 0.1 * (case % 3) as f32,
            nesterov: case % 4 == 2,
            weight_decay: 0.01 * (case % 2) as f32,
            scaled: case >= 4,
        };
        for step in [1.0, 3.0] {
            let mut inputs = vec![floats(&mut rng, &shape), scalar(0.05), scalar(step)];
            if sgd.scaled {
                inputs.push(scalar(0.5));
            }
            let mut state = vec![floats(&mut rng, &shape)];
            if momentum != 0.0 {
                state.push(floats(&mut rng, &shape));
            }
            check(&format!("SGD {sgd:?} step {step}"), &Op::Optim(OptimOp::SgdUpdate(sgd)), &inputs, &state);
        }
        let adam = Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01 * (case % 2) as f32,
            decoupled: case % 4 >= 2,
            scaled: case >= 4,
        };
        for step in [1.0, 2.0, 7.0] {
            let mut inputs = vec![floats(&mut rng, &shape), scalar(0.001), scalar(step)];
            if adam.scaled {
                inputs.push(scalar(0.5));
            }
            let mut v = floats(&mut rng, &shape);
            v.values.iter_mut().for_each(|x| *x = x.abs() * 1e-3);
            let state = vec![floats(&mut rng, &shape), floats(&mut rng, &shape), v];
            check(&format!("Adam {adam:?} step {step}"), &Op::Optim(OptimOp::AdamUpdate(adam)), &inputs, &state);
        }
        // A non-finite gradient skips the update, and CountNonFinite counts it.
        let mut g = floats(&mut rng, &shape);
        g.values[shape[0] / 2] = if case % 2 == 0 { f32::NAN } else { f32::INFINITY };
        let state = vec![floats(&mut rng, &shape), floats(&mut rng, &shape)];
        let sgd = Sgd { momentum: 0.9, scaled: false, ..sgd };
        check("SGD skipping a non-finite gradient", &Op::Optim(OptimOp::SgdUpdate(sgd)), &[g, scalar(0.05), scalar(2.0)], &state);
        let mut x = floats(&mut rng, &shape);
        if case % 2 == 0 {
            x.values[0] = f32::NEG_INFINITY;
        }
        check(&format!("CountNonFinite case {case}"), &Op::Optim(OptimOp::CountNonFinite), &[x], &[scalar(3.0)]);
    }
}

#[test]
fn mask_kernels_match_the_reference() {
    if !gpu_present() {
        return;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    for _ in 0..10 {
        let n = rng.random_range(1..300usize);
        let mut v = floats(&mut rng, &[n]);
        v.values[0] = f32::NAN;
        for kind in [MaskKind::Relu, MaskKind::Clip(Clip { min: -0.2, max: 0.5 })] {
            check(
                &format!("MaskPack {kind:?} {n}"),
                &Op::Mask(MaskOp::Pack(kind)),
                &[Arg { shape: v.shape.clone(), values: v.values.clone(), labels: vec![], bytes: vec![] }],
                &[],
            );
        }
        let mut bits: Vec<u8> = (0..n.div_ceil(8)).map(|_| rng.random_range(0..=255u8)).collect();
        if n % 8 != 0 {
            *bits.last_mut().unwrap() &= (1u8 << (n % 8)) - 1;
        }
        let mask = Arg { shape: vec![n.div_ceil(8)], values: vec![], labels: vec![], bytes: bits };
        check(&format!("MaskGrad {n}"), &Op::Mask(MaskOp::Grad), &[floats(&mut rng, &[n]), mask], &[]);
    }
}

/// The fused ops (`compiler/src/fuse.rs`): conv + bias + activation, the input gradient masked
/// by a packed activation mask, and matmul + bias + activation.
#[test]
fn fused_convolution_kernels_match_the_reference() {
    if !gpu_present() {
        return;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let acts = [Activation::Identity, Activation::Relu, Activation::Clip(Clip { min: 0.0, max: 0.6 })];
    for case in 0..9 {
        let groups = if case % 3 == 2 { rng.random_range(2..4usize) } else { 1 };
        let (n, c, o) = (rng.random_range(1..3usize), groups * rng.random_range(1..4usize), groups * rng.random_range(1..5usize));
        let (kh, kw) = (rng.random_range(1..4usize), rng.random_range(1..4usize));
        let conv = Conv2d { stride: [rng.random_range(1..3), 1], padding: [1, 0, rng.random_range(0..2), 1], dilation: [1, 1], groups };
        let (h, w) = (rng.random_range(5..10usize), rng.random_range(5..10usize));
        let y = Op::Conv(ConvOp::Conv2d(conv)).output_shapes(&[&[n, c, h, w], &[o, c / groups, kh, kw]]).unwrap().remove(0);
        let what = format!("fused conv x[{n}, {c}, {h}, {w}] w[{o}, {}, {kh}, {kw}] {conv:?}", c / groups);
        let act = acts[case % 3];
        let (x, wt, b) = (floats(&mut rng, &[n, c, h, w]), floats(&mut rng, &[o, c / groups, kh, kw]), floats(&mut rng, &[o]));
        check(&format!("{what} {act:?}"), &Op::Conv(ConvOp::Conv2dBiasAct { conv, act }), &[x, wt, b], &[]);
        let numel = n * c * h * w;
        let mut bits: Vec<u8> = (0..numel.div_ceil(8)).map(|_| rng.random_range(0..=255u8)).collect();
        if numel % 8 != 0 {
            *bits.last_mut().unwrap() &= (1u8 << (numel % 8)) - 1;
        }
        let mask = Arg { shape: vec![numel.div_ceil(8)], values: vec![], labels: vec![], bytes: bits };
        let (dy, wt) = (floats(&mut rng, &y), floats(&mut rng, &[o, c / groups, kh, kw]));
        check(
            &format!("{what} masked input gradient"),
            &Op::Conv(ConvOp::Conv2dGradInputMasked { conv, input_hw: [h, w] }),
            &[dy, wt, mask],
            &[],
        );
        let (rows, inner, cols) = (rng.random_range(1..9usize), rng.random_range(1..20usize), rng.random_range(1..12usize));
        let mm = MatMul { trans_a: case % 2 == 1, trans_b: case % 3 == 1 };
        let a = floats(&mut rng, &if mm.trans_a { [inner, rows] } else { [rows, inner] });
        let b_mat = floats(&mut rng, &if mm.trans_b { [cols, inner] } else { [inner, cols] });
        let bias = floats(&mut rng, &[cols]);
        let op = Op::Dense(DenseOp::MatMulBiasAct { mm, act });
        check(&format!("MatMulBiasAct {rows}x{inner}x{cols} {mm:?} {act:?}"), &op, &[a, b_mat, bias], &[]);
    }
}

/// An op without a GPU kernel makes the load fail, naming the op.
#[test]
fn an_op_without_a_gpu_kernel_is_refused_at_load() {
    if !gpu_present() {
        return;
    }
    let op = Op::Loss(LossOp::Mse(Reduction::Mean));
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let inputs = [floats(&mut rng, &[4, 3]), floats(&mut rng, &[4, 3])];
    let shapes: Vec<&[usize]> = inputs.iter().map(|a| a.shape.as_slice()).collect();
    let out = op.output_shapes(&shapes).unwrap();
    let plan = ValidatedPlan::new(one_node(&op, &inputs, &[], &out)).unwrap();
    let e = WgpuBackend::new(plan, &[], WeightRange { offset: 0, len: 0 }).err().expect("refused").to_string();
    assert!(e.contains("Mse") && e.contains("no GPU kernel") && e.contains("--backend cpu"), "{e}");
}
