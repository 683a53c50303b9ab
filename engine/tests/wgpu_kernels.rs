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
    Activation, Adam, BatchNorm, BroadcastOp, CastOp, Clip, Conv2d, ConvOp, CrossEntropy, DenseOp, Dropout, GradScale, LossOp, MaskKind,
    MaskOp, MatMul, MatMulOp, MoveOp, NormOp, Op, OptimOp, ParamRows, Pool2d, PoolOp, QLinear, QOutput, QParams, QuantOp, RandomOp, Reduce,
    ReduceOp, Reduction, Sgd, Slice, UnaryFn, UnaryOp,
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
    /// Raw bytes of a `u8` argument (a packed mask), or of a bool one.
    bytes: Vec<u8>,
    /// Whether `bytes` are bools (one per element).
    bools: bool,
    /// Whether `bytes` are int8 values (one per element).
    int8: bool,
}

impl Arg {
    fn dtype(&self) -> DType {
        match (self.labels.is_empty(), self.bytes.is_empty()) {
            _ if self.bools => DType::Bool,
            _ if self.int8 => DType::I8,
            (false, _) => DType::I64,
            (_, false) => DType::U8,
            _ => DType::F32,
        }
    }
}

fn floats(rng: &mut ChaCha8Rng, shape: &[usize]) -> Arg {
    let n = shape.iter().product();
    Arg {
        shape: shape.to_vec(),
        values: (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect(),
        labels: vec![],
        bytes: vec![],
        bools: false,
        int8: false,
    }
}

fn scalar(v: f32) -> Arg {
    Arg { shape: vec![], values: vec![v], labels: vec![], bytes: vec![], bools: false, int8: false }
}

fn labels(rng: &mut ChaCha8Rng, n: usize, classes: usize) -> Arg {
    Arg {
        shape: vec![n],
        values: vec![],
        labels: (0..n).map(|_| rng.random_range(0..classes as i64)).collect(),
        bytes: vec![],
        bools: false,
        int8: false,
    }
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

/// The output positions the `inplace` arguments stand for: the op's in-place outputs (outputs
/// `0..count` for ops whose outputs are all in place).
fn inplace_at(op: &Op, count: usize) -> std::ops::Range<usize> {
    let r = op.inplace_outputs();
    if r.is_empty() {
        0..count
    } else {
        r
    }
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
    let states: Vec<TensorId> = inplace
        .iter()
        .enumerate()
        .map(|(k, a)| add(format!("state{k}"), &a.shape, a.dtype(), Role::Parameter { trainable: true }))
        .collect();
    let persistent = states.len();
    let ins: Vec<TensorId> = inputs.iter().enumerate().map(|(k, a)| add(format!("in{k}"), &a.shape, a.dtype(), Role::Input)).collect();
    let in_dtypes: Vec<DType> = inputs.iter().map(Arg::dtype).collect();
    let out_dtypes = op.output_dtypes(&in_dtypes).unwrap();
    let at = inplace_at(op, inplace.len());
    let mut outputs = Vec::new();
    for (k, s) in out_shapes.iter().enumerate() {
        if at.contains(&k) {
            outputs.push(states[k - at.start]);
        } else {
            outputs.push(add(format!("out{k}"), s, out_dtypes[k], Role::Transient));
        }
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
        placement: None,
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
        let at = inplace_at(op, inplace.len());
        for (&t, a) in node.outputs[at.clone()].iter().zip(inplace) {
            b.write(t, &bytes_of(a)).unwrap();
        }
        // Plain float outputs start as garbage, the same on both sides.
        let plain = node.outputs.iter().enumerate().filter(|(k, _)| !at.contains(k)).map(|(_, t)| t);
        for &t in plain.filter(|&&t| plan.tensor(t).dtype == DType::F32) {
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
        // Integer and bool results, and the floats of ops that only convert or select values,
        // must be the reference's bit for bit.
        // So must the int8 family's forward ops (integer sums, then one rounding each).
        let selects = matches!(op, Op::Cast(_) | Op::Broadcast(BroadcastOp::Where) | Op::Move(MoveOp::Gather { .. }))
            || matches!(op, Op::Quant(QuantOp::Quantize(_) | QuantOp::Dequantize(_) | QuantOp::Linear(_)));
        if selects || matches!(plan.tensor(t).dtype, DType::U8 | DType::I8 | DType::I64 | DType::Bool) {
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
            Arg { shape: dy.shape.clone(), values: dy.values.clone(), labels: vec![], bytes: vec![], bools: false, int8: false },
            floats(&mut rng, &[o, c / groups, kh, kw]),
        );
        check(&format!("{what} input gradient"), &Op::Conv(ConvOp::Conv2dGradInput { conv, input_hw: [h, w] }), &[dy2, wt2], &[]);
        let x2 = floats(&mut rng, &[n, c, h, w]);
        check(&format!("{what} weight gradient"), &Op::Conv(ConvOp::Conv2dGradWeight { conv, kernel_hw: [kh, kw] }), &[dy, x2], &[]);
    }
}

/// The implicit-GEMM convolutions (`backend/wgpu/conv_gemm.rs`) on shapes that cross their tile
/// edges: more than 32 GEMM rows and columns and not a multiple of 32, reduction depths that are
/// not a multiple of the 16-deep slice, strides 2, padding, dilation, groups 1 and > 1, batch > 1;
/// and the depthwise case, which keeps the direct kernel. Each case asserts which path it takes.
#[test]
fn implicit_gemm_convolutions_cross_tile_edges() {
    use pock_engine::backend::kernels::{lower, Addresses, Kernel};
    if !gpu_present() {
        return;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    // (n, c, o, kh, kw, h, w, stride, padding, dilation, groups)
    #[allow(clippy::type_complexity)]
    let cases: [(usize, usize, usize, usize, usize, usize, usize, [usize; 2], [usize; 4], [usize; 2], usize); 5] = [
        (2, 7, 37, 3, 3, 9, 9, [2, 2], [1, 1, 1, 1], [1, 1], 1),
        (3, 10, 38, 2, 3, 11, 7, [2, 1], [1, 0, 0, 1], [2, 1], 2),
        (1, 35, 5, 1, 1, 6, 6, [1, 1], [0, 0, 0, 0], [1, 1], 1),
        (2, 36, 6, 3, 3, 10, 10, [1, 2], [2, 2, 2, 2], [2, 2], 3),
        (2, 6, 6, 3, 3, 7, 7, [2, 2], [1, 1, 1, 1], [1, 1], 6),
    ];
    for (n, c, o, kh, kw, h, w, stride, padding, dilation, groups) in cases {
        let conv = Conv2d { stride, padding, dilation, groups };
        let wt = [o, c / groups, kh, kw];
        let y = Op::Conv(ConvOp::Conv2d(conv)).output_shapes(&[&[n, c, h, w], &wt]).unwrap().remove(0);
        let what = format!("conv x[{n}, {c}, {h}, {w}] w{wt:?} {conv:?}");
        let depthwise = c / groups == 1;
        let ops = [
            (
                Op::Conv(ConvOp::Conv2d(conv)),
                vec![floats(&mut rng, &[n, c, h, w]), floats(&mut rng, &wt)],
                Kernel::ConvGemm,
                Kernel::Conv2d,
            ),
            (
                Op::Conv(ConvOp::Conv2dGradInput { conv, input_hw: [h, w] }),
                vec![floats(&mut rng, &y), floats(&mut rng, &wt)],
                Kernel::ConvGemmGradInput,
                Kernel::Conv2dGradInput,
            ),
            (
                Op::Conv(ConvOp::Conv2dGradWeight { conv, kernel_hw: [kh, kw] }),
                vec![floats(&mut rng, &y), floats(&mut rng, &[n, c, h, w])],
                Kernel::ConvGemmGradWeight,
                Kernel::Conv2dGradWeight,
            ),
            (
                Op::Conv(ConvOp::Conv2dGradWeightRows { conv, kernel_hw: [kh, kw], rows: [1, o - 2] }),
                vec![floats(&mut rng, &y), floats(&mut rng, &[n, c, h, w])],
                Kernel::ConvGemmGradWeight,
                Kernel::Conv2dGradWeight,
            ),
            (
                Op::Conv(ConvOp::Conv2dBiasAct { conv, act: Activation::Clip(Clip { min: -0.2, max: 0.7 }) }),
                vec![floats(&mut rng, &[n, c, h, w]), floats(&mut rng, &wt), floats(&mut rng, &[o])],
                Kernel::ConvGemmBiasAct,
                Kernel::Conv2dBiasAct,
            ),
        ];
        for (op, inputs, gemm, direct) in ops {
            let shapes: Vec<&[usize]> = inputs.iter().map(|a| a.shape.as_slice()).collect();
            let out = op.output_shapes(&shapes).unwrap();
            let plan = one_node(&op, &inputs, &[], &out);
            let lowered = lower(
                &plan.programs.train.nodes[0],
                &Addresses { plan: &plan, weights_at: 0, loop_limit: pock_engine::backend::wide::LOOP_LIMIT },
            )
            .unwrap();
            let want = if depthwise { direct } else { gemm };
            assert_eq!(lowered[0].kernel, want, "{what}: {} takes the wrong path", op.name());
            check(&format!("{what} {}", op.name()), &op, &inputs, &[]);
        }
        let numel = n * c * h * w;
        let mut bits: Vec<u8> = (0..numel.div_ceil(8)).map(|_| rng.random_range(0..=255u8)).collect();
        if numel % 8 != 0 {
            *bits.last_mut().unwrap() &= (1u8 << (numel % 8)) - 1;
        }
        let mask = Arg { shape: vec![numel.div_ceil(8)], values: vec![], labels: vec![], bytes: bits, bools: false, int8: false };
        let op = Op::Conv(ConvOp::Conv2dGradInputMasked { conv, input_hw: [h, w] });
        check(&format!("{what} masked input gradient"), &op, &[floats(&mut rng, &y), floats(&mut rng, &wt), mask], &[]);
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
                &[Arg { shape: v.shape.clone(), values: v.values.clone(), labels: vec![], bytes: vec![], bools: false, int8: false }],
                &[],
            );
        }
        let mut bits: Vec<u8> = (0..n.div_ceil(8)).map(|_| rng.random_range(0..=255u8)).collect();
        if n % 8 != 0 {
            *bits.last_mut().unwrap() &= (1u8 << (n % 8)) - 1;
        }
        let mask = Arg { shape: vec![n.div_ceil(8)], values: vec![], labels: vec![], bytes: bits, bools: false, int8: false };
        check(&format!("MaskGrad {n}"), &Op::Mask(MaskOp::Grad), &[floats(&mut rng, &[n]), mask], &[]);
    }
}

#[test]
fn batch_norm_kernels_match_the_reference() {
    if !gpu_present() {
        return;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for case in 0..12 {
        let c = rng.random_range(1..9usize);
        let shape: Vec<usize> = if case >= 10 {
            // Channels of more elements than a workgroup has threads (the per-channel reduction).
            vec![3, c, 13, 11 + case]
        } else if case % 3 == 2 {
            vec![rng.random_range(1..20usize), c]
        } else {
            vec![rng.random_range(1..4usize), c, rng.random_range(1..8), rng.random_range(1..8)]
        };
        let b = BatchNorm { eps: 1e-5, momentum: 0.1 };
        let positive = |rng: &mut ChaCha8Rng| {
            let mut v = floats(rng, &[c]);
            v.values.iter_mut().for_each(|x| *x = x.abs() + 0.1);
            v
        };
        let what = format!("BatchNorm {shape:?}");
        // x offset from zero so that the two-pass variance matters.
        let mut x = floats(&mut rng, &shape);
        x.values.iter_mut().for_each(|v| *v = *v * 2.0 + 3.0);
        let state = [floats(&mut rng, &[c]), positive(&mut rng)];
        let x2 = Arg { shape: x.shape.clone(), values: x.values.clone(), labels: vec![], bytes: vec![], bools: false, int8: false };
        let (gamma, beta) = (floats(&mut rng, &[c]), floats(&mut rng, &[c]));
        for act in [None, Some(Activation::Relu), Some(Activation::Clip(Clip { min: -0.25, max: 0.5 }))] {
            let op = act.map_or(NormOp::BatchNormTrain(b), |act| NormOp::BatchNormTrainAct { norm: b, act });
            let state = [copy(&state[0]), copy(&state[1])];
            check(&format!("{what} train {act:?}"), &Op::Norm(op), &[copy(&x), copy(&gamma), copy(&beta)], &state);
        }
        let infer_inputs = [x2, floats(&mut rng, &[c]), floats(&mut rng, &[c]), floats(&mut rng, &[c]), positive(&mut rng)];
        check(&format!("{what} infer"), &Op::Norm(NormOp::BatchNormInfer(b)), &infer_inputs, &[]);
        for (name, op) in [("train grad", NormOp::BatchNormTrainGrad(b)), ("infer grad", NormOp::BatchNormInferGrad(b))] {
            let inputs =
                [floats(&mut rng, &shape), floats(&mut rng, &shape), floats(&mut rng, &[c]), floats(&mut rng, &[c]), positive(&mut rng)];
            check(&format!("{what} {name}"), &Op::Norm(op), &inputs, &[]);
        }
    }
}

fn copy(a: &Arg) -> Arg {
    Arg { shape: a.shape.clone(), values: a.values.clone(), labels: a.labels.clone(), bytes: a.bytes.clone(), bools: a.bools, int8: a.int8 }
}

fn random_shape(rng: &mut ChaCha8Rng, rank: usize) -> Vec<usize> {
    (0..rank).map(|_| rng.random_range(1..6usize)).collect()
}

#[test]
fn grad_scale_and_loss_kernels_match_the_reference() {
    if !gpu_present() {
        return;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    for case in 0..6 {
        let grads: Vec<Arg> = (0..1 + case % 3)
            .map(|_| {
                let n = rng.random_range(1..900usize);
                floats(&mut rng, &[n])
            })
            .collect();
        for max_norm in [None, Some(0.5), Some(1e6)] {
            let g = GradScale { max_norm, multiplier: 0.25 };
            let mut inputs: Vec<Arg> = grads.iter().map(copy).collect();
            check(&format!("GradScale {g:?} case {case}"), &Op::Optim(OptimOp::GradScale(g)), &inputs, &[]);
            let last = inputs.len() - 1;
            inputs[last].values[0] = if case % 2 == 0 { f32::NAN } else { f32::INFINITY };
            check(&format!("GradScale {g:?} non-finite case {case}"), &Op::Optim(OptimOp::GradScale(g)), &inputs, &[]);
        }
        let shape = [rng.random_range(1..9usize), rng.random_range(1..5), rng.random_range(1..4)];
        for r in [Reduction::Mean, Reduction::PerSample] {
            let what = format!("MSE {shape:?} {r:?}");
            check(&what, &Op::Loss(LossOp::Mse(r)), &[floats(&mut rng, &shape), floats(&mut rng, &shape)], &[]);
            let dloss = if r == Reduction::Mean { floats(&mut rng, &[]) } else { floats(&mut rng, &shape[..1]) };
            let inputs = [dloss, floats(&mut rng, &shape), floats(&mut rng, &shape)];
            check(&format!("{what} gradient"), &Op::Loss(LossOp::MseGrad(r)), &inputs, &[]);
        }
        let (n, t, c) = (rng.random_range(1..5usize), rng.random_range(1..7usize), rng.random_range(2..9usize));
        for r in [Reduction::Mean, Reduction::PerSample] {
            let ce = CrossEntropy { reduction: r, ignore_index: -100 };
            let mut l = labels(&mut rng, n * t, c);
            l.shape = vec![n, t];
            // Some positions ignored; in case 0 every position of the first sample is.
            for (p, v) in l.labels.iter_mut().enumerate() {
                if rng.random_range(0..3) == 0 || (case == 0 && p < t) {
                    *v = -100;
                }
            }
            let what = format!("CrossEntropy [{n}, {t}, {c}] {r:?}");
            check(&what, &Op::Loss(LossOp::CrossEntropy(ce)), &[floats(&mut rng, &[n, t, c]), copy(&l)], &[]);
            let dloss = if r == Reduction::Mean { floats(&mut rng, &[]) } else { floats(&mut rng, &[n]) };
            check(&format!("{what} gradient"), &Op::Loss(LossOp::CrossEntropyGrad(ce)), &[dloss, floats(&mut rng, &[n, t, c]), l], &[]);
        }
    }
}

#[test]
fn unary_kernels_match_the_reference() {
    if !gpu_present() {
        return;
    }
    use pock_engine::kernels::unary::*;
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let functions = [
        UnaryFn::Neg(Neg),
        UnaryFn::Exp(Exp),
        UnaryFn::Log(Log),
        UnaryFn::Sqrt(Sqrt),
        UnaryFn::Reciprocal(Reciprocal),
        UnaryFn::Tanh(Tanh),
        UnaryFn::Sigmoid(Sigmoid),
        UnaryFn::Erf(Erf),
        UnaryFn::Abs(Abs),
        UnaryFn::Sin(Sin),
        UnaryFn::Cos(Cos),
        UnaryFn::Softplus(Softplus),
        UnaryFn::LeakyRelu(LeakyRelu { alpha: 0.1 }),
        UnaryFn::Elu(Elu { alpha: 0.7 }),
        UnaryFn::HardSigmoid(HardSigmoid { alpha: 0.2, beta: 0.5 }),
        UnaryFn::Floor(Floor),
        UnaryFn::Ceil(Ceil),
        UnaryFn::Round(Round),
        UnaryFn::Sign(Sign),
    ];
    // Every function has exactly one generated WGSL case (`unary_formulas!`), and this list
    // covers them all.
    assert_eq!(functions.len(), WGSL_FORMULAS.len(), "a unary function is missing from this test");
    for f in &functions {
        assert_eq!(WGSL_FORMULAS.iter().filter(|w| w.name == f.name()).count(), 1, "{}: no generated WGSL case", f.name());
    }
    for f in functions {
        let shape = random_shape(&mut rng, 3);
        let mut x = floats(&mut rng, &shape);
        // Wider than [-1, 1] so that the branches at 0 and the saturations are taken.
        x.values.iter_mut().for_each(|v| *v *= 4.0);
        if matches!(f, UnaryFn::Log(_) | UnaryFn::Sqrt(_) | UnaryFn::Reciprocal(_)) {
            x.values.iter_mut().for_each(|v| *v = v.abs() + 0.25);
        }
        check(&format!("{} {shape:?}", f.name()), &Op::Unary(UnaryOp::Map(f)), &[copy(&x)], &[]);
        let dy = floats(&mut rng, &shape);
        let inputs = if f.saves() == Saves::Nothing { vec![dy] } else { vec![dy, x] };
        check(&format!("{} gradient {shape:?}", f.name()), &Op::Unary(UnaryOp::Grad(f)), &inputs, &[]);
    }
}

/// The GPU's unary cases are the Rust formulas' own text (`unary_formulas!` in
/// `kernels/unary.rs`), one per function, in a `switch` numbered by position. Needs no device.
#[test]
fn unary_wgsl_is_generated_from_the_rust_formulas() {
    use pock_engine::kernels::unary::{HardSigmoid, UnaryFormula, WGSL_FORMULAS};
    let hard = WGSL_FORMULAS.iter().find(|w| w.name == HardSigmoid::NAME).unwrap();
    assert_eq!(
        hard.apply,
        "let v = alpha * x + beta; let raised = select(v, lit(0.0), v < lit(0.0)); return select(raised, lit(1.0), raised > lit(1.0));"
    );
    assert_eq!(hard.derivative, "return select(lit(0.0), alpha, lit(0.0) < s && s < lit(1.0));");
    let mut names: Vec<&str> = WGSL_FORMULAS.iter().map(|w| w.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), WGSL_FORMULAS.len(), "two formulas share a name");
    // The CPU side computes the same formula (HardSigmoid at a point inside the ramp).
    let f = HardSigmoid { alpha: 0.2, beta: 0.5 };
    assert_eq!(f.apply(1.0f32), 0.7);
    assert_eq!(f.derivative(0.7f32), 0.2);
}

#[test]
fn broadcast_kernels_match_the_reference() {
    if !gpu_present() {
        return;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    for case in 0..8 {
        // y's shape, and each operand's: a suffix of it with some axes set to 1.
        let y = random_shape(&mut rng, 1 + case % 4);
        let operand = |rng: &mut ChaCha8Rng| {
            let skip = rng.random_range(0..=y.len());
            let s: Vec<usize> = y[skip..].iter().map(|&d| if rng.random_range(0..3) == 0 { 1 } else { d }).collect();
            floats(rng, &s)
        };
        let (mut a, mut b, c) = (operand(&mut rng), operand(&mut rng), operand(&mut rng));
        // Make sure the output is y: the first operand has y's shape when case is even.
        if case % 2 == 0 {
            a = floats(&mut rng, &y);
        } else {
            b = floats(&mut rng, &y);
        }
        let positive = |v: &Arg| {
            let mut v = copy(v);
            v.values.iter_mut().for_each(|x| *x = x.abs() + 0.25);
            v
        };
        for op in [BroadcastOp::Add, BroadcastOp::Sub, BroadcastOp::Mul, BroadcastOp::Div, BroadcastOp::Max, BroadcastOp::Min] {
            check(&format!("{op:?} {:?} {:?}", a.shape, b.shape), &Op::Broadcast(op.clone()), &[copy(&a), copy(&b)], &[]);
        }
        let mut ints = copy(&b);
        ints.values.iter_mut().for_each(|x| *x = (*x * 3.0).round());
        let mut negative = copy(&a);
        negative.values.iter_mut().for_each(|x| *x -= 0.5);
        check(&format!("Pow {:?} {:?}", a.shape, b.shape), &Op::Broadcast(BroadcastOp::Pow), &[positive(&a), copy(&b)], &[]);
        check("Pow of negative bases, integer exponents", &Op::Broadcast(BroadcastOp::Pow), &[negative, ints], &[]);
        // The gradients: [dy, a, b] -> [da] of dy's (y's) shape.
        for op in [
            BroadcastOp::DivGradDivisor,
            BroadcastOp::PowGradBase,
            BroadcastOp::PowGradExponent,
            BroadcastOp::MaxGrad,
            BroadcastOp::MinGrad,
        ] {
            let mut a2 = positive(&a);
            // Ties for the max/min split.
            let b2 = positive(&b);
            a2.values[0] = b2.values[0];
            let inputs = [floats(&mut rng, &y), a2, b2];
            check(&format!("{op:?} {:?} {:?}", a.shape, b.shape), &Op::Broadcast(op.clone()), &inputs, &[]);
        }
        let _ = c;
        let to: Vec<usize> = y[rng.random_range(0..=y.len())..].iter().map(|&d| if rng.random_range(0..2) == 0 { 1 } else { d }).collect();
        check(&format!("SumTo {y:?} -> {to:?}"), &Op::Broadcast(BroadcastOp::SumTo { shape: to }), &[floats(&mut rng, &y)], &[]);
    }
}

#[test]
fn reduce_kernels_match_the_reference() {
    if !gpu_present() {
        return;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for case in 0..8 {
        let shape = random_shape(&mut rng, 1 + case % 4);
        let axes: Vec<usize> = (0..shape.len()).filter(|_| rng.random_range(0..2) == 0).collect();
        let reduce = Reduce { axes: axes.clone(), keepdims: case % 2 == 0 };
        let what = format!("{shape:?} axes {axes:?}");
        for op in [ReduceOp::ReduceSum(reduce.clone()), ReduceOp::ReduceMean(reduce.clone()), ReduceOp::ReduceMax(reduce.clone())] {
            check(&format!("{op:?} {what}"), &Op::Reduce(op.clone()), &[floats(&mut rng, &shape)], &[]);
        }
        let y = Op::Reduce(ReduceOp::ReduceSum(reduce.clone())).output_shapes(&[&shape]).unwrap().remove(0);
        for op in [
            ReduceOp::ReduceSumGrad { reduce: reduce.clone(), shape: shape.clone() },
            ReduceOp::ReduceMeanGrad { reduce: reduce.clone(), shape: shape.clone() },
        ] {
            check(&format!("{op:?} {what}"), &Op::Reduce(op.clone()), &[floats(&mut rng, &y)], &[]);
        }
        // Max gradient: x with ties (values on a coarse grid), y its maxima.
        let mut x = floats(&mut rng, &shape);
        x.values.iter_mut().for_each(|v| *v = (*v * 2.0).round());
        let op = Op::Reduce(ReduceOp::ReduceMax(reduce.clone()));
        let ymax = {
            let plan = ValidatedPlan::new(one_node(&op, &[copy(&x)], &[], std::slice::from_ref(&y))).unwrap();
            let mut cpu =
                CpuBackend::new(plan.clone(), PlanBytes::copy_of(&[0; 8]), WeightRange { offset: 0, len: 0 }, CpuKernels::Reference)
                    .unwrap();
            let node = &plan.programs.train.nodes[0];
            cpu.write(node.inputs[0], &bytes_of(&x)).unwrap();
            cpu.run(ProgramKind::Train).unwrap();
            let mut out = vec![0u8; plan.tensor(node.outputs[0]).bytes() as usize];
            cpu.read(node.outputs[0], &mut out).unwrap();
            Arg {
                shape: y.clone(),
                values: out.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
                labels: vec![],
                bytes: vec![],
                bools: false,
                int8: false,
            }
        };
        check(&format!("ReduceMaxGrad {what}"), &Op::Reduce(ReduceOp::ReduceMaxGrad(reduce)), &[floats(&mut rng, &y), x, ymax], &[]);
        let axis = rng.random_range(0..shape.len());
        for op in [ReduceOp::Softmax { axis }, ReduceOp::LogSoftmax { axis }] {
            check(&format!("{op:?} {shape:?}"), &Op::Reduce(op.clone()), &[floats(&mut rng, &shape)], &[]);
        }
        for op in [ReduceOp::SoftmaxGrad { axis }, ReduceOp::LogSoftmaxGrad { axis }] {
            check(&format!("{op:?} {shape:?}"), &Op::Reduce(op.clone()), &[floats(&mut rng, &shape), floats(&mut rng, &shape)], &[]);
        }
    }
}

#[test]
fn movement_and_batch_matmul_kernels_match_the_reference() {
    if !gpu_present() {
        return;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    for case in 0..8 {
        let rank = 1 + case % 4;
        let shape = random_shape(&mut rng, rank);
        let mut perm: Vec<usize> = (0..rank).collect();
        perm.rotate_left(case % rank);
        check(&format!("Transpose {shape:?} {perm:?}"), &Op::Move(MoveOp::Transpose { perm }), &[floats(&mut rng, &shape)], &[]);
        let small: Vec<usize> = shape.iter().map(|&d| if rng.random_range(0..2) == 0 { 1 } else { d }).collect();
        let target: Vec<usize> = [2usize].iter().chain(&shape).copied().collect();
        check(&format!("Expand {small:?} -> {target:?}"), &Op::Move(MoveOp::Expand { shape: target }), &[floats(&mut rng, &small)], &[]);
        let axis = rng.random_range(0..rank);
        let slice = Slice {
            axes: vec![axis],
            starts: vec![if case % 2 == 0 { 0 } else { -1 }],
            ends: vec![if case % 2 == 0 { i64::MAX } else { i64::MIN }],
            steps: vec![if case % 2 == 0 { 2 } else { -1 - (case as i64 % 2) }],
        };
        let x = floats(&mut rng, &shape);
        let y = Op::Move(MoveOp::Slice(slice.clone())).output_shapes(&[&shape]).unwrap().remove(0);
        check(&format!("Slice {shape:?} {slice:?}"), &Op::Move(MoveOp::Slice(slice.clone())), &[x], &[]);
        let grad = MoveOp::SliceGrad { slice: slice.clone(), shape: shape.clone() };
        check(&format!("SliceGrad {shape:?} {slice:?}"), &Op::Move(grad), &[floats(&mut rng, &y)], &[]);
        let parts: Vec<Arg> = (0..3)
            .map(|_| {
                let mut s = shape.clone();
                s[axis] = rng.random_range(1..4);
                floats(&mut rng, &s)
            })
            .collect();
        check(&format!("Concat axis {axis}"), &Op::Move(MoveOp::Concat { axis }), &parts, &[]);
        let sizes: Vec<usize> = parts.iter().map(|p| p.shape[axis]).collect();
        let mut whole = shape.clone();
        whole[axis] = sizes.iter().sum();
        check(&format!("Split {whole:?} {sizes:?}"), &Op::Move(MoveOp::Split { axis, sizes }), &[floats(&mut rng, &whole)], &[]);
        let pads: Vec<usize> = (0..2 * rank).map(|_| rng.random_range(0..3)).collect();
        check(&format!("Pad {shape:?} {pads:?}"), &Op::Move(MoveOp::Pad { pads, value: 0.5 }), &[floats(&mut rng, &shape)], &[]);
        if rank >= 2 {
            for (upper, k) in [(true, 0i64), (false, 1), (true, -2), (false, i64::MIN), (true, i64::MAX)] {
                check(
                    &format!("Trilu {shape:?} upper {upper} k {k}"),
                    &Op::Move(MoveOp::Trilu { upper, k }),
                    &[floats(&mut rng, &shape)],
                    &[],
                );
            }
        }
        // Batched matmul: batch axes broadcast; 1-D operands in some cases.
        let (m, k, n) = (rng.random_range(1..7usize), rng.random_range(1..9usize), rng.random_range(1..7usize));
        let (ta, tb) = (case % 2 == 1, case / 2 % 2 == 1);
        let batch = [rng.random_range(1..4usize), rng.random_range(1..3usize)];
        let a_shape: Vec<usize> =
            if case == 6 { vec![k] } else { [1, batch[1]].iter().copied().chain(if ta { [k, m] } else { [m, k] }).collect() };
        let b_shape: Vec<usize> =
            if case == 7 { vec![k] } else { [batch[0], 1].iter().copied().chain(if tb { [n, k] } else { [k, n] }).collect() };
        let mm = MatMul { trans_a: ta && case != 6, trans_b: tb && case != 7 };
        check(
            &format!("BatchMatMul {a_shape:?} {b_shape:?} {mm:?}"),
            &Op::MatMul(MatMulOp::BatchMatMul(mm)),
            &[floats(&mut rng, &a_shape), floats(&mut rng, &b_shape)],
            &[],
        );
    }
}

/// Partial-channel updates: the weight gradient of some output channels, and SGD and Adam on
/// some rows of a parameter.
#[test]
fn row_kernels_match_the_reference() {
    if !gpu_present() {
        return;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    for case in 0..6 {
        let groups = if case % 2 == 1 { 2 } else { 1 };
        let (n, c, o) = (rng.random_range(1..3usize), groups * rng.random_range(1..3usize), groups * rng.random_range(2..4usize));
        let conv = Conv2d { stride: [1 + case % 2, 1], padding: [1, 0, 1, 0], dilation: [1, 1], groups };
        let (h, w) = (rng.random_range(4..8usize), rng.random_range(4..8usize));
        let x = floats(&mut rng, &[n, c, h, w]);
        let wt = [o, c / groups, 3, 2];
        let y = Op::Conv(ConvOp::Conv2d(conv)).output_shapes(&[&x.shape, &wt]).unwrap().remove(0);
        let start = rng.random_range(0..o - 1);
        let rows = [start, rng.random_range(start + 1..=o)];
        let op = Op::Conv(ConvOp::Conv2dGradWeightRows { conv, kernel_hw: [3, 2], rows });
        check(&format!("Conv2dGradWeightRows {rows:?} of {wt:?} {conv:?}"), &op, &[floats(&mut rng, &y), x], &[]);

        let (param_rows, width) = (rng.random_range(2..9usize), rng.random_range(1..40usize));
        let start = rng.random_range(0..param_rows - 1);
        let k = rng.random_range(1..=param_rows - start);
        let r = ParamRows { start, param_rows };
        let scaled = case >= 3;
        let sgd = Sgd { momentum: 0.9, dampening: 0.0, nesterov: case % 2 == 0, weight_decay: 0.01, scaled };
        let mut inputs = vec![floats(&mut rng, &[k, width]), scalar(0.05), scalar(2.0)];
        if scaled {
            inputs.push(scalar(0.5));
        }
        let state = [floats(&mut rng, &[param_rows, width]), floats(&mut rng, &[k, width])];
        check(&format!("SgdUpdateRows {r:?} k {k}"), &Op::Optim(OptimOp::SgdUpdateRows { sgd, rows: r }), &inputs, &state);
        let adam = Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01, decoupled: case % 2 == 1, scaled };
        let mut v = floats(&mut rng, &[k, width]);
        v.values.iter_mut().for_each(|x| *x = x.abs() * 1e-3);
        let state = [floats(&mut rng, &[param_rows, width]), floats(&mut rng, &[k, width]), v];
        check(&format!("AdamUpdateRows {r:?} k {k}"), &Op::Optim(OptimOp::AdamUpdateRows { adam, rows: r }), &inputs, &state);
    }
}

/// Dropout and RandomUniform draw the CPU's stream bit for bit (splitmix64 on u32 pairs), and
/// Advance adds one to the counter.
#[test]
fn random_kernels_match_the_reference() {
    if !gpu_present() {
        return;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(14);
    let counter = |v: i64| Arg { shape: vec![], values: vec![], labels: vec![v], bytes: vec![], bools: false, int8: false };
    for (case, c) in [0i64, 1, 5, -3, 1 << 20, i32::MAX as i64].into_iter().enumerate() {
        let shape = random_shape(&mut rng, 1 + case % 3);
        let key: u64 = rng.random();
        for ratio in [0.0f32, 0.3, 0.9] {
            let op = Op::Random(RandomOp::Dropout(Dropout { ratio, key }));
            check(&format!("Dropout {shape:?} ratio {ratio} counter {c}"), &op, &[floats(&mut rng, &shape), counter(c)], &[]);
        }
        let op = Op::Random(RandomOp::Uniform { low: -0.5, high: 2.0, key, shape: shape.clone() });
        check(&format!("RandomUniform {shape:?} counter {c}"), &op, &[counter(c)], &[]);
        if c < i32::MAX as i64 {
            check(&format!("Advance {c}"), &Op::Random(RandomOp::Advance), &[], &[counter(c)]);
        }
    }
}

/// Random int8 values (every byte value, the ends included).
fn int8s(rng: &mut ChaCha8Rng, shape: &[usize]) -> Arg {
    let n = shape.iter().product();
    Arg {
        shape: shape.to_vec(),
        values: vec![],
        labels: vec![],
        bytes: (0..n).map(|_| rng.random::<u8>()).collect(),
        bools: false,
        int8: true,
    }
}

/// The int8 family against its reference kernels: forward outputs bit for bit (int8 and f32),
/// gradients within the usual tolerance; odd sizes (no multiple of 4, so int8 outputs end
/// inside a word), frozen int8 and trained f32 weights (master values with halves, past the
/// clamp, NaN), fused ReLU / ReLU6 clamps, QAS on and off.
#[test]
fn int8_kernels_match_the_reference() {
    if !gpu_present() {
        return;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    for case in 0..16 {
        let (n, inner, outs) = (rng.random_range(1..7usize), rng.random_range(1..12usize), rng.random_range(1..10usize));
        let x = QParams { scale: rng.random_range(0.01f32..0.1), zero_point: rng.random_range(-10..10) };
        let q = QParams { scale: rng.random_range(0.05f32..0.5), zero_point: rng.random_range(-128..0) };
        let (lo, hi) = match case % 3 {
            0 => (-128i8, 127i8),
            1 => (q.zero_point as i8, 127),
            _ => (q.zero_point as i8, (q.zero_point + (6.0 / q.scale).round() as i32).min(127) as i8),
        };
        let int8_out = case % 2 == 0;
        let out = if int8_out { QOutput::Int8 { q, lo, hi } } else { QOutput::F32 };
        let l = QLinear { x, out, qas: case % 4 < 2 };
        let frozen = case % 8 < 4;
        let weight = |rng: &mut ChaCha8Rng| {
            if frozen {
                int8s(rng, &[outs, inner])
            } else {
                let mut w = floats(rng, &[outs, inner]);
                for v in &mut w.values {
                    *v = match rng.random_range(0..10) {
                        0 => (rng.random_range(-300..300) as f32) * 0.5,
                        1 => rng.random_range(-400.0..400.0),
                        2 => f32::NAN,
                        _ => rng.random_range(-127.0..127.0),
                    };
                }
                w
            }
        };
        let mut bias = floats(&mut rng, &[outs]);
        bias.values.iter_mut().for_each(|v| *v = (*v * 600.0).round() * 0.5);
        let mut w_scale = floats(&mut rng, &[outs]);
        w_scale.values.iter_mut().for_each(|v| *v = v.abs() * 0.05 + 1e-3);
        let what = format!("x[{n}, {inner}] w[{outs}, {inner}] frozen {frozen} {l:?}");
        let w = weight(&mut rng);
        check(
            &format!("QLinear {what}"),
            &Op::Quant(QuantOp::Linear(l)),
            &[int8s(&mut rng, &[n, inner]), w, copy(&w_scale), copy(&bias)],
            &[],
        );
        // The forward output the gradients read: int8 values on the clamp's ends and inside it.
        let y = if int8_out {
            let mut y = int8s(&mut rng, &[n, outs]);
            y.bytes.iter_mut().for_each(|b| {
                *b = match rng.random_range(0..4) {
                    0 => lo as u8,
                    1 => hi as u8,
                    _ => *b,
                }
            });
            y
        } else {
            floats(&mut rng, &[n, outs])
        };
        let dy = floats(&mut rng, &[n, outs]);
        let w = weight(&mut rng);
        check(&format!("QLinearGradInput {what}"), &Op::Quant(QuantOp::LinearGradInput(l)), &[copy(&dy), copy(&y), w, copy(&w_scale)], &[]);
        let xs = int8s(&mut rng, &[n, inner]);
        check(
            &format!("QLinearGradWeight {what}"),
            &Op::Quant(QuantOp::LinearGradWeight(l)),
            &[copy(&dy), copy(&y), xs, copy(&w_scale)],
            &[],
        );
        check(&format!("QLinearGradBias {what}"), &Op::Quant(QuantOp::LinearGradBias(l)), &[dy, y, w_scale], &[]);

        let shape = random_shape(&mut rng, 1 + case % 3);
        let mut xf = floats(&mut rng, &shape);
        for v in &mut xf.values {
            *v = match rng.random_range(0..12) {
                0 => (rng.random_range(-300..300) as f32) * 0.5 * x.scale,
                1 => f32::NAN,
                2 => [f32::INFINITY, f32::NEG_INFINITY, 1e30, -1e30][rng.random_range(0..4)],
                _ => *v * 8.0,
            };
        }
        check(&format!("Quantize {shape:?} {x:?}"), &Op::Quant(QuantOp::Quantize(x)), &[xf], &[]);
        check(&format!("Dequantize {shape:?} {x:?}"), &Op::Quant(QuantOp::Dequantize(x)), &[int8s(&mut rng, &shape)], &[]);
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
        let mask = Arg { shape: vec![numel.div_ceil(8)], values: vec![], labels: vec![], bytes: bits, bools: false, int8: false };
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

fn ints(rng: &mut ChaCha8Rng, shape: &[usize], lo: i64, hi: i64) -> Arg {
    let n = shape.iter().product();
    Arg {
        shape: shape.to_vec(),
        values: vec![],
        labels: (0..n).map(|_| rng.random_range(lo..hi)).collect(),
        bytes: vec![],
        bools: false,
        int8: false,
    }
}

fn bools(rng: &mut ChaCha8Rng, shape: &[usize]) -> Arg {
    let n = shape.iter().product();
    Arg {
        shape: shape.to_vec(),
        values: vec![],
        labels: vec![],
        bytes: (0..n).map(|_| rng.random_range(0..2u8)).collect(),
        bools: true,
        int8: false,
    }
}

/// Floats drawn from a few values, so that comparisons meet ties, signed zeros and NaN.
fn few_floats(rng: &mut ChaCha8Rng, shape: &[usize]) -> Arg {
    const FEW: [f32; 8] = [-1.5, -0.0, 0.0, 0.5, 1.0, 2.5, f32::NAN, -3.0];
    let n = shape.iter().product();
    Arg {
        shape: shape.to_vec(),
        values: (0..n).map(|_| FEW[rng.random_range(0..FEW.len())]).collect(),
        labels: vec![],
        bytes: vec![],
        bools: false,
        int8: false,
    }
}

/// `shape` with some axes set to 1 (a broadcast operand), and maybe fewer leading axes.
fn broadcast_of(rng: &mut ChaCha8Rng, shape: &[usize]) -> Vec<usize> {
    let drop = rng.random_range(0..shape.len());
    shape[drop..].iter().map(|&d| if rng.random_range(0..3) == 0 { 1 } else { d }).collect()
}

/// The typed kernels (`typed.rs`): comparisons, logic, Where, integer arithmetic, Not, Cast in
/// every direction, movement of `i64` and bool tensors, Gather and its gradient. Integer and
/// bool results must equal the reference's exactly.
#[test]
fn integer_and_bool_kernels_match_the_reference() {
    if !gpu_present() {
        return;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    for case in 0..4 {
        let rank = 1 + case % 4;
        let shape = random_shape(&mut rng, rank);
        let other = broadcast_of(&mut rng, &shape);
        let (a, b) = if case % 2 == 0 { (shape.clone(), other) } else { (other, shape.clone()) };
        let cmp = [BroadcastOp::Equal, BroadcastOp::Less, BroadcastOp::LessOrEqual, BroadcastOp::Greater, BroadcastOp::GreaterOrEqual];
        for op in cmp {
            let what = format!("{op:?} {a:?} {b:?}");
            let f = [few_floats(&mut rng, &a), few_floats(&mut rng, &b)];
            check(&format!("{what} float"), &Op::Broadcast(op.clone()), &f, &[]);
            let i = [ints(&mut rng, &a, -3, 4), ints(&mut rng, &b, -3, 4)];
            check(&format!("{what} int64"), &Op::Broadcast(op.clone()), &i, &[]);
        }
        for op in [BroadcastOp::Equal, BroadcastOp::And, BroadcastOp::Or, BroadcastOp::Xor] {
            check(&format!("{op:?} {a:?} {b:?} bool"), &Op::Broadcast(op), &[bools(&mut rng, &a), bools(&mut rng, &b)], &[]);
        }
        for op in [BroadcastOp::Add, BroadcastOp::Sub, BroadcastOp::Mul] {
            let i = [ints(&mut rng, &a, -40000, 40000), ints(&mut rng, &b, -40000, 40000)];
            check(&format!("{op:?} {a:?} {b:?} int64"), &Op::Broadcast(op), &i, &[]);
        }
        // Division truncates toward zero; divisors are non-zero.
        let mut divisor = ints(&mut rng, &b, 1, 9);
        for (k, d) in divisor.labels.iter_mut().enumerate() {
            if k % 2 == 1 {
                *d = -*d;
            }
        }
        check(&format!("Div {a:?} {b:?} int64"), &Op::Broadcast(BroadcastOp::Div), &[ints(&mut rng, &a, -100, 100), divisor], &[]);
        // Where: the condition broadcasts against values of each dtype.
        let cond = broadcast_of(&mut rng, &shape);
        let w = Op::Broadcast(BroadcastOp::Where);
        check(&format!("Where {cond:?} float"), &w, &[bools(&mut rng, &cond), few_floats(&mut rng, &a), few_floats(&mut rng, &b)], &[]);
        check(&format!("Where {cond:?} int64"), &w, &[bools(&mut rng, &cond), ints(&mut rng, &a, -9, 9), ints(&mut rng, &b, -9, 9)], &[]);
        check(&format!("Where {cond:?} bool"), &w, &[bools(&mut rng, &cond), bools(&mut rng, &a), bools(&mut rng, &b)], &[]);
        check(&format!("Not {shape:?}"), &Op::Unary(UnaryOp::Not), &[bools(&mut rng, &shape)], &[]);
        // Cast in every direction: floats with NaN, signed zeros and fractions; integers past
        // 2^24, where float32 rounds (to nearest even).
        let mut f = few_floats(&mut rng, &shape);
        for (k, v) in f.values.iter_mut().enumerate() {
            if k % 3 == 0 {
                *v = rng.random_range(-3e6f32..3e6);
            }
        }
        let mut i = ints(&mut rng, &shape, -5, 5);
        for (k, v) in i.labels.iter_mut().enumerate() {
            if k % 2 == 0 {
                *v = rng.random_range(i32::MIN as i64..=i32::MAX as i64);
            }
        }
        if case == 0 {
            // Ties between two floats round to the even one; 2^31 - 1 rounds up to 2^31.
            let ties = [16777217i64, 16777219, -16777217, 2147483647, 33554435, -2147483648, 16777216];
            let t = Arg { shape: vec![ties.len()], values: vec![], labels: ties.to_vec(), bytes: vec![], bools: false, int8: false };
            check("Cast int64 -> float32 at ties", &Op::Cast(CastOp::Cast { to: DType::F32 }), &[t], &[]);
        }
        let x = bools(&mut rng, &shape);
        for from in [&f, &i, &x] {
            for to in [DType::F32, DType::I64, DType::Bool] {
                check(&format!("Cast {:?} -> {to:?} {shape:?}", from.dtype()), &Op::Cast(CastOp::Cast { to }), &[copy(from)], &[]);
            }
        }
        // Movement of int64 and bool tensors.
        for (dtype, make) in [("int64", 0), ("bool", 1)] {
            let arg = |rng: &mut ChaCha8Rng, s: &[usize]| if make == 0 { ints(rng, s, -1000, 1000) } else { bools(rng, s) };
            let mut perm: Vec<usize> = (0..rank).collect();
            perm.rotate_left(1);
            check(&format!("Transpose {shape:?} {dtype}"), &Op::Move(MoveOp::Transpose { perm }), &[arg(&mut rng, &shape)], &[]);
            let small: Vec<usize> = shape.iter().map(|&d| if rng.random_range(0..2) == 0 { 1 } else { d }).collect();
            let target: Vec<usize> = [3usize].iter().chain(&shape).copied().collect();
            check(&format!("Expand {small:?} {dtype}"), &Op::Move(MoveOp::Expand { shape: target }), &[arg(&mut rng, &small)], &[]);
            let axis = rng.random_range(0..rank);
            let slice = Slice { axes: vec![axis], starts: vec![-1], ends: vec![i64::MIN], steps: vec![-2] };
            check(&format!("Slice {shape:?} {dtype}"), &Op::Move(MoveOp::Slice(slice)), &[arg(&mut rng, &shape)], &[]);
            let parts: Vec<Arg> = (0..3)
                .map(|_| {
                    let mut s = shape.clone();
                    s[axis] = rng.random_range(1..4);
                    arg(&mut rng, &s)
                })
                .collect();
            let sizes: Vec<usize> = parts.iter().map(|p| p.shape[axis]).collect();
            check(&format!("Concat axis {axis} {dtype}"), &Op::Move(MoveOp::Concat { axis }), &parts, &[]);
            let mut whole = shape.clone();
            whole[axis] = sizes.iter().sum();
            check(&format!("Split {whole:?} {dtype}"), &Op::Move(MoveOp::Split { axis, sizes }), &[arg(&mut rng, &whole)], &[]);
            let n: usize = shape.iter().product();
            check(&format!("Reshape {shape:?} {dtype}"), &Op::Dense(DenseOp::Reshape { shape: vec![n] }), &[arg(&mut rng, &shape)], &[]);
            if rank >= 2 {
                for (upper, k) in [(true, 0i64), (false, -1)] {
                    check(
                        &format!("Trilu {shape:?} {upper} {k} {dtype}"),
                        &Op::Move(MoveOp::Trilu { upper, k }),
                        &[arg(&mut rng, &shape)],
                        &[],
                    );
                }
            }
        }
        // Gather along each axis of float, int64 and bool data, negative indices included; its
        // gradient accumulates repeated indices.
        let axis = case % rank;
        let len = shape[axis] as i64;
        let idx_shape = random_shape(&mut rng, 1 + case % 2);
        let indices = ints(&mut rng, &idx_shape, -len, len);
        for data in [floats(&mut rng, &shape), ints(&mut rng, &shape, -50, 50), bools(&mut rng, &shape)] {
            let what = format!("Gather axis {axis} {shape:?} {:?} {:?}", idx_shape, data.dtype());
            check(&what, &Op::Move(MoveOp::Gather { axis }), &[data, copy(&indices)], &[]);
        }
        let y = Op::Move(MoveOp::Gather { axis }).output_shapes(&[&shape, &idx_shape]).unwrap().remove(0);
        let grad = MoveOp::GatherGrad { axis, shape: shape.clone() };
        check(&format!("GatherGrad axis {axis} {shape:?} {idx_shape:?}"), &Op::Move(grad), &[floats(&mut rng, &y), copy(&indices)], &[]);
    }
}

/// Integers written by the host are checked at the boundary: a Gather index outside its axis
/// (the CPU's error, raised when written) and a value past the 32-bit range the GPU holds.
#[test]
fn integers_out_of_range_are_refused_when_written() {
    if !gpu_present() {
        return;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let op = Op::Move(MoveOp::Gather { axis: 0 });
    let inputs = [floats(&mut rng, &[5, 2]), ints(&mut rng, &[3], 0, 5)];
    let out = op.output_shapes(&[&[5, 2], &[3]]).unwrap();
    let plan = ValidatedPlan::new(one_node(&op, &inputs, &[], &out)).unwrap();
    let mut gpu = WgpuBackend::new(plan.clone(), &[], WeightRange { offset: 0, len: 0 }).unwrap();
    let indices = plan.programs.train.nodes[0].inputs[1];
    for (bad, what) in [(5i64, "index 5"), (-6, "index -6")] {
        let bytes: Vec<u8> = [0i64, bad, 1].iter().flat_map(|v| v.to_le_bytes()).collect();
        let e = gpu.write(indices, &bytes).unwrap_err().to_string();
        assert!(e.contains("in1") && e.contains(&bad.to_string()) && e.contains('5'), "{what}: {e}");
    }
    let op = Op::Broadcast(BroadcastOp::Add);
    let inputs = [ints(&mut rng, &[2], 0, 5), ints(&mut rng, &[2], 0, 5)];
    let plan = ValidatedPlan::new(one_node(&op, &inputs, &[], &[vec![2]])).unwrap();
    let mut gpu = WgpuBackend::new(plan.clone(), &[], WeightRange { offset: 0, len: 0 }).unwrap();
    let a = plan.programs.train.nodes[0].inputs[0];
    let bytes: Vec<u8> = [1i64, 1 << 33].iter().flat_map(|v| v.to_le_bytes()).collect();
    let e = gpu.write(a, &bytes).unwrap_err().to_string();
    assert!(e.contains("in0") && e.contains("8589934592") && e.contains("32-bit") && e.contains("--backend cpu"), "{e}");
}

/// An `i64` constant of the weight section is narrowed to `i32` when uploaded (the GPU's sum
/// reads its values, as the CPU's does), and one past the 32-bit range fails the load naming it.
#[test]
fn integer_constants_are_narrowed_at_upload() {
    if !gpu_present() {
        return;
    }
    let op = Op::Broadcast(BroadcastOp::Add);
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let inputs = [ints(&mut rng, &[3], 0, 5), ints(&mut rng, &[3], 0, 5)];
    let mut plan = one_node(&op, &inputs, &[], &[vec![3]]);
    let node = plan.programs.train.nodes[0].clone();
    let (c, b, y) = (node.inputs[0], node.inputs[1], node.outputs[0]);
    plan.tensors[c.index()].location = Location::Weights { offset: 0 };
    plan.tensors[c.index()].role = Role::Constant;
    plan.weight_bytes = 24;
    let range = WeightRange { offset: 0, len: 24 };
    let le = |v: &[i64]| -> Vec<u8> { v.iter().flat_map(|v| v.to_le_bytes()).collect() };
    let validated = ValidatedPlan::new(plan.clone()).unwrap();
    let e = WgpuBackend::new(validated.clone(), &le(&[1, -(1 << 31) - 1, 0]), range).err().expect("refused").to_string();
    assert!(e.contains("in0") && e.contains("-2147483649") && e.contains("32-bit") && e.contains("--backend cpu"), "{e}");
    let weights = le(&[-7, 1 << 30, 3]);
    let mut cpu = CpuBackend::new(validated.clone(), PlanBytes::copy_of(&weights), range, CpuKernels::Reference).unwrap();
    let mut gpu = WgpuBackend::new(validated, &weights, range).unwrap();
    let mut sums = Vec::new();
    for backend in [&mut cpu as &mut dyn Backend, &mut gpu] {
        backend.write(b, &le(&[1, 2, -3])).unwrap();
        backend.run(ProgramKind::Train).unwrap();
        let mut out = vec![0u8; 24];
        backend.read(y, &mut out).unwrap();
        sums.push(out.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect::<Vec<i64>>());
    }
    assert_eq!(sums[0], [-6, (1 << 30) + 2, 0]);
    assert_eq!(sums[1], sums[0], "the GPU's sum with the uploaded constant");
}

/// Reductions longer than one GPU thread may loop (Mesa's lavapipe silently stops an invocation's
/// loops after about 65535 iterations; `backend/wgpu/wide.rs`): every reduction kernel on
/// shapes beyond that, against the reference. Before the reductions were split across threads,
/// the MSE mean, SumTo, cross-entropy means, the BatchNorm sums, GradScale and the big groups
/// here gave wrong values on lavapipe.
#[test]
fn reductions_longer_than_a_thread_match_the_reference() {
    if !gpu_present() {
        return;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(31);
    // MSE: the mean over 262144 elements (split over blocks, then their partials added), and per
    // sample over 75000 features each (two blocks a sample).
    for (shape, r) in [(vec![4, 16, 64, 64], Reduction::Mean), (vec![3, 5, 100, 150], Reduction::PerSample)] {
        check(&format!("MSE {shape:?} {r:?}"), &Op::Loss(LossOp::Mse(r)), &[floats(&mut rng, &shape), floats(&mut rng, &shape)], &[]);
    }
    // SumTo (a broadcast gradient) into a scalar and per channel.
    for (x, to) in [
        ([2, 16, 64, 64], vec![1]),
        ([2, 16, 64, 64], vec![16, 1, 1]),
        ([2, 16, 64, 64], vec![1, 64, 1]),
        ([4, 2, 160, 160], vec![2, 1, 1]),
    ] {
        check(&format!("SumTo {x:?} -> {to:?}"), &Op::Broadcast(BroadcastOp::SumTo { shape: to }), &[floats(&mut rng, &x)], &[]);
    }
    // Groups: sums, means and maxima of 70000 elements (several blocks a group, then combined),
    // with a NaN in one group of the maximum; the softmax family and the max gradient over a whole
    // group (one workgroup a group).
    let shape = vec![3, 70000];
    let reduce = Reduce { axes: vec![1], keepdims: false };
    for op in [ReduceOp::ReduceSum(reduce.clone()), ReduceOp::ReduceMean(reduce.clone()), ReduceOp::ReduceMax(reduce.clone())] {
        let mut x = floats(&mut rng, &shape);
        if matches!(op, ReduceOp::ReduceMax(_)) {
            x.values[70000 + 12345] = f32::NAN;
        }
        check(&format!("{op:?} {shape:?}"), &Op::Reduce(op.clone()), &[x], &[]);
    }
    let strided = Reduce { axes: vec![0, 2], keepdims: true };
    check("ReduceSum [300, 3, 250] axes [0, 2]", &Op::Reduce(ReduceOp::ReduceSum(strided)), &[floats(&mut rng, &[300, 3, 250])], &[]);
    for op in [ReduceOp::Softmax { axis: 1 }, ReduceOp::LogSoftmax { axis: 1 }] {
        check(&format!("{op:?} {shape:?}"), &Op::Reduce(op.clone()), &[floats(&mut rng, &shape)], &[]);
    }
    for op in [ReduceOp::SoftmaxGrad { axis: 1 }, ReduceOp::LogSoftmaxGrad { axis: 1 }] {
        check(&format!("{op:?} {shape:?}"), &Op::Reduce(op.clone()), &[floats(&mut rng, &shape), floats(&mut rng, &shape)], &[]);
    }
    let mut x = floats(&mut rng, &shape);
    x.values.iter_mut().for_each(|v| *v = (*v * 2.0).round());
    let ymax: Vec<f32> = x.values.chunks(70000).map(|g| g.iter().copied().fold(f32::NEG_INFINITY, f32::max)).collect();
    let ymax = Arg { shape: vec![3], values: ymax, labels: vec![], bytes: vec![], bools: false, int8: false };
    check("ReduceMaxGrad [3, 70000] (ties)", &Op::Reduce(ReduceOp::ReduceMaxGrad(reduce)), &[floats(&mut rng, &[3]), x, ymax], &[]);
    // BiasGrad (one thread a channel, then a group reduction) and GlobalAvgPool (a group
    // reduction) over large channels and planes.
    for shape in [[4, 8, 64, 64], [2, 2, 200, 200]] {
        check(&format!("BiasGrad {shape:?}"), &Op::Dense(DenseOp::BiasGrad), &[floats(&mut rng, &shape)], &[]);
    }
    check("GlobalAvgPool [1, 2, 300, 300]", &Op::Pool(PoolOp::GlobalAvgPool), &[floats(&mut rng, &[1, 2, 300, 300])], &[]);
    // Cross-entropy means over 80000 positions (some ignored) and softmax cross-entropy over
    // 70000 rows, with their gradients (which read the count of kept positions).
    let (n, t, c) = (4, 20000, 3);
    let ce = CrossEntropy { reduction: Reduction::Mean, ignore_index: -100 };
    let mut l = labels(&mut rng, n * t, c);
    l.shape = vec![n, t];
    l.labels.iter_mut().for_each(|v| {
        if rng.random_range(0..4) == 0 {
            *v = -100;
        }
    });
    check("CrossEntropy [4, 20000, 3] mean", &Op::Loss(LossOp::CrossEntropy(ce)), &[floats(&mut rng, &[n, t, c]), copy(&l)], &[]);
    let op = Op::Loss(LossOp::CrossEntropyGrad(ce));
    check("CrossEntropy [4, 20000, 3] mean gradient", &op, &[floats(&mut rng, &[]), floats(&mut rng, &[n, t, c]), l], &[]);
    let rows = 70000;
    let op = Op::Loss(LossOp::SoftmaxCrossEntropy(Reduction::Mean));
    check("softmax cross-entropy 70000x3 mean", &op, &[floats(&mut rng, &[rows, 3]), labels(&mut rng, rows, 3)], &[]);
    // BatchNorm: channels of 16384, 20000 and 80000 elements (one thread sums a channel in the
    // reference's order while its loops fit; the 80000 are strided over a workgroup).
    let b = BatchNorm { eps: 1e-5, momentum: 0.1 };
    for shape in [vec![4, 3, 64, 64], vec![2, 3, 100, 100], vec![2, 3, 200, 200]] {
        let mut x = floats(&mut rng, &shape);
        x.values.iter_mut().for_each(|v| *v = *v * 2.0 + 3.0);
        let positive = |rng: &mut ChaCha8Rng| {
            let mut v = floats(rng, &[3]);
            v.values.iter_mut().for_each(|x| *x = x.abs() + 0.1);
            v
        };
        let state = [floats(&mut rng, &[3]), positive(&mut rng)];
        check(
            &format!("BatchNorm {shape:?} train"),
            &Op::Norm(NormOp::BatchNormTrain(b)),
            &[x, floats(&mut rng, &[3]), floats(&mut rng, &[3])],
            &state,
        );
        for op in [NormOp::BatchNormTrainGrad(b), NormOp::BatchNormInferGrad(b)] {
            let inputs =
                [floats(&mut rng, &shape), floats(&mut rng, &shape), floats(&mut rng, &[3]), floats(&mut rng, &[3]), positive(&mut rng)];
            check(&format!("BatchNorm {shape:?} {op:?}"), &Op::Norm(op), &inputs, &[]);
        }
    }
    // GradScale over a gradient of 300000 elements (and a small one), finite and not.
    for max_norm in [None, Some(0.5)] {
        let g = GradScale { max_norm, multiplier: 0.25 };
        let mut inputs = vec![floats(&mut rng, &[300000]), floats(&mut rng, &[77])];
        check(&format!("GradScale {g:?} 300000 + 77"), &Op::Optim(OptimOp::GradScale(g)), &inputs, &[]);
        inputs[0].values[250000] = f32::INFINITY;
        check(&format!("GradScale {g:?} 300000 + 77, one infinite"), &Op::Optim(OptimOp::GradScale(g)), &inputs, &[]);
    }
    // The direct (depthwise) weight gradient over 2 * 200 * 200 positions.
    let conv = Conv2d { stride: [1, 1], padding: [1, 1, 1, 1], dilation: [1, 1], groups: 2 };
    let y = Op::Conv(ConvOp::Conv2d(conv)).output_shapes(&[&[2, 2, 200, 200], &[2, 1, 3, 3]]).unwrap().remove(0);
    let op = Op::Conv(ConvOp::Conv2dGradWeight { conv, kernel_hw: [3, 3] });
    check("depthwise weight gradient [2, 2, 200, 200]", &op, &[floats(&mut rng, &y), floats(&mut rng, &[2, 2, 200, 200])], &[]);
    // The implicit-GEMM weight gradient over a depth N * OH * OW of 65536 (split-K: two splits'
    // partials, then added in order), one group and, for a row slice, two.
    {
        use pock_engine::backend::kernels::{lower, Addresses, Kernel};
        let conv = Conv2d { stride: [1, 1], padding: [1, 1, 1, 1], dilation: [1, 1], groups: 1 };
        let grouped = Conv2d { groups: 2, ..conv };
        for (conv, c, rows) in [(conv, 3, None), (grouped, 4, Some([1, 4]))] {
            let x = [16, c, 64, 64];
            let wt = [4, c / conv.groups, 3, 3];
            let y = Op::Conv(ConvOp::Conv2d(conv)).output_shapes(&[&x, &wt]).unwrap().remove(0);
            let op = match rows {
                None => Op::Conv(ConvOp::Conv2dGradWeight { conv, kernel_hw: [3, 3] }),
                Some(rows) => Op::Conv(ConvOp::Conv2dGradWeightRows { conv, kernel_hw: [3, 3], rows }),
            };
            let inputs = [floats(&mut rng, &y), floats(&mut rng, &x)];
            let out = op.output_shapes(&[&inputs[0].shape, &inputs[1].shape]).unwrap();
            let plan = one_node(&op, &inputs, &[], &out);
            let lowered = lower(
                &plan.programs.train.nodes[0],
                &Addresses { plan: &plan, weights_at: 0, loop_limit: pock_engine::backend::wide::LOOP_LIMIT },
            )
            .unwrap();
            let kernels: Vec<Kernel> = lowered.iter().map(|l| l.kernel).collect();
            assert_eq!(kernels, [Kernel::ConvGemmGradWeight, Kernel::ConvGemmSplitFinish]);
            check(&format!("split-K {} x{x:?} {conv:?}", op.name()), &op, &inputs, &[]);
        }
    }
    // Matmuls of depth 60000 (split-K, then the bias and activation after the whole sum).
    {
        use pock_engine::backend::kernels::{lower, Addresses, Kernel};
        let k = 60000;
        let relu = DenseOp::MatMulBiasAct { mm: MatMul { trans_a: true, trans_b: false }, act: Activation::Relu };
        let cases = [
            (
                Op::Dense(DenseOp::MatMul(MatMul { trans_a: false, trans_b: true })),
                vec![floats(&mut rng, &[3, k]), floats(&mut rng, &[5, k])],
            ),
            (Op::Dense(relu), vec![floats(&mut rng, &[k, 33]), floats(&mut rng, &[k, 2]), floats(&mut rng, &[2])]),
            (
                Op::MatMul(MatMulOp::BatchMatMul(MatMul { trans_a: false, trans_b: false })),
                vec![floats(&mut rng, &[2, 3, k]), floats(&mut rng, &[k, 4])],
            ),
        ];
        for (op, inputs) in cases {
            let shapes: Vec<&[usize]> = inputs.iter().map(|a| a.shape.as_slice()).collect();
            let out = op.output_shapes(&shapes).unwrap();
            let plan = one_node(&op, &inputs, &[], &out);
            let lowered = lower(
                &plan.programs.train.nodes[0],
                &Addresses { plan: &plan, weights_at: 0, loop_limit: pock_engine::backend::wide::LOOP_LIMIT },
            )
            .unwrap();
            let kernels: Vec<Kernel> = lowered.iter().map(|l| l.kernel).collect();
            assert_eq!(kernels, [Kernel::MatMul, Kernel::MatMulSplitFinish], "{}", op.name());
            check(&format!("split-K {} {shapes:?}", op.name()), &op, &inputs, &[]);
        }
    }
    // Pooling gradients on a large plane (each input walks only the windows that reach it).
    let p = Pool2d { kernel: [3, 3], stride: [2, 2], padding: [1, 1, 1, 1], count_include_pad: false };
    let x = floats(&mut rng, &[1, 2, 301, 301]);
    let y = Op::Pool(PoolOp::MaxPool2d(p)).output_shapes(&[&x.shape]).unwrap().remove(0);
    check("MaxPool2dGrad [1, 2, 301, 301]", &Op::Pool(PoolOp::MaxPool2dGrad(p)), &[floats(&mut rng, &y), x], &[]);
    let g = PoolOp::AvgPool2dGrad { pool: p, input_hw: [301, 301] };
    check("AvgPool2dGrad [1, 2, 301, 301]", &Op::Pool(g), &[floats(&mut rng, &y)], &[]);
}

/// What no split covers is refused at load on a software Vulkan, naming the op and the size,
/// instead of looping past lavapipe's limit: a convolution's GEMM depth, a row of classes, a
/// group of a softmax, a pooling window. A hardware GPU (no loop limit) lowers them.
#[test]
fn reductions_no_thread_can_walk_are_refused() {
    use pock_engine::backend::kernels::{lower, Addresses};
    let mut rng = ChaCha8Rng::seed_from_u64(32);
    let k = 60000;
    let cases = [
        (
            Op::Conv(ConvOp::Conv2d(Conv2d { stride: [1, 1], padding: [0; 4], dilation: [1, 1], groups: 1 })),
            vec![floats(&mut rng, &[1, k / 9 + 1, 3, 3]), floats(&mut rng, &[2, k / 9 + 1, 3, 3])],
            "Conv2d",
        ),
        (
            Op::Loss(LossOp::SoftmaxCrossEntropy(Reduction::Mean)),
            vec![floats(&mut rng, &[2, 20000]), labels(&mut rng, 2, 20000)],
            "SoftmaxCrossEntropy",
        ),
        (Op::Reduce(ReduceOp::Softmax { axis: 0 }), vec![floats(&mut rng, &[5_000_000])], "Softmax"),
        (
            Op::Pool(PoolOp::AvgPool2d(Pool2d { kernel: [300, 300], stride: [1, 1], padding: [0; 4], count_include_pad: false })),
            vec![floats(&mut rng, &[1, 1, 300, 300])],
            "AvgPool2d",
        ),
    ];
    for (op, inputs, name) in cases {
        let shapes: Vec<&[usize]> = inputs.iter().map(|a| a.shape.as_slice()).collect();
        let out = op.output_shapes(&shapes).unwrap();
        let plan = one_node(&op, &inputs, &[], &out);
        let software = Addresses { plan: &plan, weights_at: 0, loop_limit: pock_engine::backend::wide::LOOP_LIMIT };
        let Err(e) = lower(&plan.programs.train.nodes[0], &software) else {
            panic!("{name}: lowered, should be refused");
        };
        assert!(e.contains(name) && e.contains("--backend cpu"), "{name}: {e}");
        // A hardware GPU has no loop limit: the same node lowers there.
        let hardware = Addresses { loop_limit: u64::MAX, ..software };
        assert!(lower(&plan.programs.train.nodes[0], &hardware).is_ok(), "{name}: refused on a hardware GPU");
    }
}
