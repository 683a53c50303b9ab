//! The fused convolutions (and the fused matmul) equal the ops they replace bit for bit, with the fast CPU kernels (on
//! the instruction set the CPU offers and the portable path, 1 to 3 threads) and with the
//! reference kernels: `Conv2dBiasAct` = `Conv2d`, then `BiasAdd`, then `Relu`/`Clip`;
//! `Conv2dGradInputMasked` = `Conv2dGradInput`, then `MaskGrad`; `MatMulBiasAct` = `MatMul`, then
//! `BiasAdd`, then `Relu`/`Clip`; `BatchNormTrainAct` = `BatchNormTrain`, then `Relu`/`Clip`. Each
//! algorithm of the fast
//! convolution (pointwise gemm, per-sample pointwise, im2col, depthwise, grouped) is reached.

use pock_engine::kernels::cpu::par::{force_isa, Isa};
use pock_engine::kernels::cpu::{execute, scratch_elems, workspace_elems, CpuConfig};
use pock_engine::kernels::{reference, KernelError, NodeArgs, View, ViewMut};
use pock_engine::ops::{packed_shape, Activation, BatchNorm, Clip, Conv2d, ConvOp, DenseOp, MaskKind, MaskOp, MatMul, NormOp, Op};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `(n, c, hw, o, kernel, stride, padding, groups)`.
type Case = (usize, usize, [usize; 2], usize, [usize; 2], usize, [usize; 4], usize);

const CASES: &[Case] = &[
    (2, 8, [9, 7], 6, [1, 1], 1, [0; 4], 1),          // pointwise
    (8, 16, [16, 16], 24, [1, 1], 1, [0; 4], 1),      // pointwise, large enough to split per sample
    (3, 8, [5, 5], 4, [1, 1], 1, [0; 4], 2),          // grouped pointwise
    (2, 5, [11, 13], 7, [3, 3], 2, [1; 4], 1),        // im2col, strided
    (1, 6, [9, 10], 9, [3, 3], 1, [1, 1, 0, 0], 3),   // im2col, grouped
    (2, 6, [9, 11], 6, [3, 3], 1, [1; 4], 6),         // depthwise
    (2, 6, [10, 11], 6, [3, 3], 2, [1; 4], 6),        // depthwise, strided
    (2, 3, [9, 8], 6, [3, 3], 2, [1, 0, 2, 1], 3),    // depthwise, channel multiplier 2
    (4, 20, [8, 8], 20, [3, 3], 1, [1; 4], 20),       // depthwise, channel blocks (the last short), split among threads
    (3, 11, [7, 7], 11, [3, 3], 2, [1, 0, 1, 1], 11), // depthwise, channel blocks, strided
    (1, 3, [40, 38], 3, [3, 3], 1, [1; 4], 3),        // depthwise on planes wide enough for the row path
    (2, 32, [20, 18], 48, [3, 3], 1, [1; 4], 1),      // gemm blocking
    (4, 16, [17, 19], 20, [3, 3], 1, [1; 4], 1),      // Winograd, odd output sizes
    (2, 17, [30, 31], 16, [3, 3], 1, [0; 4], 1),      // Winograd, padding 0 (input gradient padding 2)
];

static ISA: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn random(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// One node: float inputs, packed-mask inputs, one float output; the fast kernels when `fast`.
fn run(
    op: &Op,
    inputs: &[(&[f32], &[usize])],
    bits: Option<&[u8]>,
    out_shape: &[usize],
    fast: Option<CpuConfig>,
) -> Result<Vec<f32>, KernelError> {
    let views: Vec<View<f32>> = inputs.iter().map(|&(data, shape)| View { data, shape }).collect();
    let bits_shape = bits.map(|b| vec![b.len()]).unwrap_or_default();
    let bool_views: Vec<View<u8>> = bits.iter().map(|b| View { data: b, shape: &bits_shape }).collect();
    let mut out = vec![f32::NAN; out_shape.iter().product()];
    let mut outputs = [ViewMut { data: &mut out[..], shape: out_shape }];
    let args = NodeArgs {
        inputs: &views,
        int_inputs: &[],
        bool_inputs: &bool_views,
        outputs: &mut outputs,
        int_outputs: &mut [],
        bool_outputs: &mut [],
    };
    match fast {
        Some(cfg) => {
            let shapes: Vec<&[usize]> = inputs.iter().map(|(_, s)| *s).collect();
            let mut ws = vec![f32::NAN; workspace_elems(op, &shapes, &[out_shape])];
            let mut scratch = vec![f32::NAN; scratch_elems(op, &shapes, &[out_shape], cfg)];
            execute(op, args, &mut ws, &mut scratch, cfg)?;
        }
        None => reference::execute(op, args)?,
    }
    Ok(out)
}

fn bits_of(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

/// Every case, on every code path: the fast kernels on both instruction-set paths and 1 and 2
/// threads, and the reference kernels (`None`).
fn for_each_path(mut f: impl FnMut(Option<CpuConfig>, &str)) {
    let _isa = ISA.lock().unwrap_or_else(|e| e.into_inner());
    for path in [None, Some(Isa::Avx2Fma), Some(Isa::Portable)] {
        force_isa(path);
        for threads in [1, 2, 3] {
            f(Some(CpuConfig { threads }), &format!("fast {path:?} {threads} threads"));
        }
    }
    force_isa(None);
    f(None, "reference");
}

#[test]
fn conv_bias_act_equals_conv_then_bias_then_activation() {
    let mut rng = ChaCha8Rng::seed_from_u64(41);
    for &(n, c, hw, o, k, stride, padding, groups) in CASES {
        let conv = Conv2d { stride: [stride; 2], padding, dilation: [1, 1], groups };
        let xs = [n, c, hw[0], hw[1]];
        let ws = [o, c / groups, k[0], k[1]];
        let ys = Op::Conv(ConvOp::Conv2d(conv)).output_shapes(&[&xs, &ws]).unwrap().remove(0);
        let x = random(&mut rng, xs.iter().product());
        // Weights scaled so that some sums land above 6 and get clipped.
        let w: Vec<f32> = random(&mut rng, ws.iter().product()).iter().map(|v| v * 4.0).collect();
        let b = random(&mut rng, o);
        let acts = [Activation::Identity, Activation::Relu, Activation::Clip(Clip { min: 0.0, max: 6.0 })];
        for_each_path(|cfg, path| {
            let conv_out = run(&ConvOp::Conv2d(conv).into(), &[(&x, &xs), (&w, &ws)], None, &ys, cfg).unwrap();
            let biased = run(&DenseOp::BiasAdd.into(), &[(&conv_out, &ys), (&b, &[o])], None, &ys, cfg).unwrap();
            for act in acts {
                let want = match act {
                    Activation::Identity => biased.clone(),
                    Activation::Relu => run(&DenseOp::Relu.into(), &[(&biased, &ys)], None, &ys, cfg).unwrap(),
                    Activation::Clip(cl) => run(&DenseOp::Clip(cl).into(), &[(&biased, &ys)], None, &ys, cfg).unwrap(),
                };
                let fused: Op = ConvOp::Conv2dBiasAct { conv, act }.into();
                let got = run(&fused, &[(&x, &xs), (&w, &ws), (&b, &[o])], None, &ys, cfg).unwrap();
                assert!(bits_of(&got) == bits_of(&want), "{act:?} {xs:?} {ws:?} {conv:?}: fused differs ({path})");
            }
            // The activations cut something: the comparison above covers both sides of the kinks.
            assert!(biased.iter().any(|&v| v < 0.0) && biased.iter().any(|&v| v > 6.0), "{xs:?} {ws:?}: no value beyond a kink");
        });
    }
}

#[test]
fn grad_input_masked_equals_grad_input_then_mask_grad() {
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    for &(n, c, hw, o, k, stride, padding, groups) in CASES {
        let conv = Conv2d { stride: [stride; 2], padding, dilation: [1, 1], groups };
        let xs = [n, c, hw[0], hw[1]];
        let ws = [o, c / groups, k[0], k[1]];
        let ys = Op::Conv(ConvOp::Conv2d(conv)).output_shapes(&[&xs, &ws]).unwrap().remove(0);
        let dy = random(&mut rng, ys.iter().product());
        let w = random(&mut rng, ws.iter().product());
        // The mask of a ReLU6 over values spread on both sides of 0 and 6.
        let v: Vec<f32> = random(&mut rng, xs.iter().product()).iter().map(|v| v * 8.0).collect();
        let mut bits = vec![0u8; packed_shape(v.len())[0]];
        reference::mask::pack(&MaskKind::Clip(Clip { min: 0.0, max: 6.0 }), &v, &mut bits);
        let grad_input: Op = ConvOp::Conv2dGradInput { conv, input_hw: hw }.into();
        let masked: Op = ConvOp::Conv2dGradInputMasked { conv, input_hw: hw }.into();
        for_each_path(|cfg, path| {
            let d = run(&grad_input, &[(&dy, &ys), (&w, &ws)], None, &xs, cfg).unwrap();
            let want = run(&MaskOp::Grad.into(), &[(&d, &xs)], Some(&bits), &xs, None).unwrap();
            let got = run(&masked, &[(&dy, &ys), (&w, &ws)], Some(&bits), &xs, cfg).unwrap();
            assert!(bits_of(&got) == bits_of(&want), "{xs:?} {ws:?} {conv:?}: masked input gradient differs ({path})");
            assert!(got.contains(&0.0) && got.iter().any(|&g| g != 0.0), "{xs:?}: the mask keeps all or nothing");
        });
    }
}

#[test]
fn shape_and_dtype_rules_name_the_argument() {
    let conv = Conv2d { stride: [1, 1], padding: [1; 4], dilation: [1, 1], groups: 1 };
    let fused: Op = ConvOp::Conv2dBiasAct { conv, act: Activation::Relu }.into();
    assert_eq!(fused.output_shapes(&[&[2, 3, 5, 5], &[4, 3, 3, 3], &[4]]).unwrap(), [[2, 4, 5, 5]]);
    let e = fused.output_shapes(&[&[2, 3, 5, 5], &[4, 3, 3, 3], &[3]]).unwrap_err();
    assert_eq!(e.to_string(), "Conv2dBiasAct: bias vs output channels: shapes [3] and [4] differ");
    let masked: Op = ConvOp::Conv2dGradInputMasked { conv, input_hw: [5, 5] }.into();
    use pock_engine::plan::DType;
    assert_eq!(masked.output_dtypes(&[DType::F32, DType::F32, DType::U8]).unwrap(), [DType::F32]);
    assert!(masked.output_dtypes(&[DType::F32, DType::F32, DType::F32]).is_err());
    // dx is [2, 3, 5, 5]: 150 elements in 19 bytes.
    assert_eq!(masked.output_shapes(&[&[2, 4, 5, 5], &[4, 3, 3, 3], &[19]]).unwrap(), [[2, 3, 5, 5]]);
    let e = masked.output_shapes(&[&[2, 4, 5, 5], &[4, 3, 3, 3], &[18]]).unwrap_err();
    assert_eq!(e.to_string(), "Conv2dGradInputMasked: bits vs the packed shape of dx: shapes [18] and [19] differ");
}

#[test]
fn matmul_bias_act_equals_matmul_then_bias_then_activation() {
    let mut rng = ChaCha8Rng::seed_from_u64(43);
    // (rows, inner, cols): small, and large enough for gemm's blocking and threads.
    for (m, k, n) in [(3, 5, 7), (8, 64, 10), (64, 300, 96)] {
        for (trans_a, trans_b) in [(false, false), (false, true), (true, false)] {
            let mm = MatMul { trans_a, trans_b };
            let a_shape = if trans_a { [k, m] } else { [m, k] };
            let b_shape = if trans_b { [n, k] } else { [k, n] };
            let a: Vec<f32> = random(&mut rng, m * k).iter().map(|v| v * 3.0).collect();
            let b = random(&mut rng, k * n);
            let bias = random(&mut rng, n);
            let ys = [m, n];
            let acts = [Activation::Identity, Activation::Relu, Activation::Clip(Clip { min: 0.0, max: 1.0 })];
            for_each_path(|cfg, path| {
                let product = run(&DenseOp::MatMul(mm).into(), &[(&a, &a_shape), (&b, &b_shape)], None, &ys, cfg).unwrap();
                let biased = run(&DenseOp::BiasAdd.into(), &[(&product, &ys), (&bias, &[n])], None, &ys, cfg).unwrap();
                for act in acts {
                    let want = match act {
                        Activation::Identity => biased.clone(),
                        Activation::Relu => run(&DenseOp::Relu.into(), &[(&biased, &ys)], None, &ys, cfg).unwrap(),
                        Activation::Clip(cl) => run(&DenseOp::Clip(cl).into(), &[(&biased, &ys)], None, &ys, cfg).unwrap(),
                    };
                    let fused: Op = DenseOp::MatMulBiasAct { mm, act }.into();
                    let got = run(&fused, &[(&a, &a_shape), (&b, &b_shape), (&bias, &[n])], None, &ys, cfg).unwrap();
                    assert!(bits_of(&got) == bits_of(&want), "{act:?} {mm:?} {m}x{k}x{n}: fused differs ({path})");
                }
                assert!(biased.iter().any(|&v| v < 0.0) && biased.iter().any(|&v| v > 1.0), "{m}x{k}x{n}: no value beyond a kink");
            });
        }
    }
}

/// A training BatchNorm (`[x, gamma, beta]` -> `[y, mean, invstd, running mean, running var]`,
/// the running statistics starting from `running`), on the fast kernels when `fast`.
fn batch_norm(op: &Op, inputs: [(&[f32], &[usize]); 3], running: &[f32], fast: Option<CpuConfig>) -> Vec<Vec<f32>> {
    let (x, c) = (inputs[0].1, inputs[1].1);
    let views: Vec<View<f32>> = inputs.iter().map(|&(data, shape)| View { data, shape }).collect();
    let mut outs = vec![vec![f32::NAN; x.iter().product()], vec![f32::NAN; c[0]], vec![f32::NAN; c[0]], running.to_vec(), running.to_vec()];
    let shapes = [x, c, c, c, c];
    let mut views_out: Vec<ViewMut<f32>> = outs.iter_mut().zip(shapes).map(|(data, shape)| ViewMut { data, shape }).collect();
    let args = NodeArgs::floats(&views, &mut views_out);
    match fast {
        Some(cfg) => execute(op, args, &mut [], &mut [], cfg).unwrap(),
        None => reference::execute(op, args).unwrap(),
    }
    outs
}

#[test]
fn batch_norm_act_equals_batch_norm_then_activation() {
    let mut rng = ChaCha8Rng::seed_from_u64(43);
    let norm = BatchNorm { eps: 1e-5, momentum: 0.1 };
    // Rank 4 with odd planes, enough channels for blocks on several threads; rank 2.
    for xs in [vec![2, 5, 7, 9], vec![3, 19, 12, 13], vec![6, 11]] {
        let c = [xs[1]];
        let x: Vec<f32> = random(&mut rng, xs.iter().product()).iter().map(|v| 2.0 + 3.0 * v).collect();
        // gamma and beta spread so that outputs land below 0 and above 6.
        let gamma: Vec<f32> = random(&mut rng, c[0]).iter().map(|v| 8.0 * v).collect();
        let beta: Vec<f32> = random(&mut rng, c[0]).iter().map(|v| 3.0 * v).collect();
        let running = random(&mut rng, c[0]).iter().map(|v| v.abs()).collect::<Vec<_>>();
        let inputs = [(&x[..], &xs[..]), (&gamma[..], &c[..]), (&beta[..], &c[..])];
        for_each_path(|cfg, path| {
            let plain = batch_norm(&NormOp::BatchNormTrain(norm).into(), inputs, &running, cfg);
            let y = &plain[0];
            assert!(y.iter().any(|&v| v < 0.0) && y.iter().any(|&v| v > 6.0), "{xs:?}: no value beyond a kink");
            for act in [Activation::Relu, Activation::Clip(Clip { min: 0.0, max: 6.0 })] {
                let activation: Op = match act {
                    Activation::Clip(cl) => DenseOp::Clip(cl).into(),
                    _ => DenseOp::Relu.into(),
                };
                let mut want = plain.clone();
                want[0] = run(&activation, &[(y, &xs)], None, &xs, cfg).unwrap();
                let got = batch_norm(&NormOp::BatchNormTrainAct { norm, act }.into(), inputs, &running, cfg);
                for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(bits_of(g) == bits_of(w), "{act:?} {xs:?}: output {k} of the fused op differs ({path})");
                }
            }
        });
    }
}
