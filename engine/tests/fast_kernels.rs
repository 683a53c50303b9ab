//! Every fast CPU kernel against the reference kernel, on random shapes (odd sizes, strides,
//! padding, dilation, channel multipliers), with 1 and 2 threads, on the instruction set the CPU
//! offers and on the portable code path.

use pock_engine::kernels::cpu::par::{force_isa, isa, Isa};
use pock_engine::kernels::cpu::{execute, gemm_ceiling_gflops, scratch_elems, workspace_elems, CpuConfig};
use pock_engine::kernels::{reference, NodeArgs, View, ViewMut};
use pock_engine::ops::{
    Activation, Adam, BatchNorm, Clip, Conv2d, ConvOp, DenseOp, MaskKind, MaskOp, MatMul, NormOp, Op, OptimOp, ParamRows, Pool2d, PoolOp,
    Sgd,
};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

static ISA: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn random(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// Runs `op` with the reference and with the fast kernels on the same inputs and initial outputs
/// (in-place outputs hold state), and checks every output: the same bits when `exact`, else
/// within 1e-4 of the output's RMS (float sums in another order). On each instruction-set path,
/// the 2- and 3-thread outputs must equal the 1-thread outputs bit for bit (every fast kernel
/// computes a chunk the same way on any thread).
fn check(what: &str, op: &Op, inputs: &[(Vec<f32>, Vec<usize>)], outputs: &[Vec<usize>], rng: &mut ChaCha8Rng, exact: bool) {
    let initial: Vec<Vec<f32>> = outputs.iter().map(|s| random(rng, s.iter().product())).collect();
    check_from(what, op, inputs, outputs, &initial, exact);
}

/// [`check`] with the outputs' initial values given (optimizer state that must be realistic).
fn check_from(what: &str, op: &Op, inputs: &[(Vec<f32>, Vec<usize>)], outputs: &[Vec<usize>], initial: &[Vec<f32>], exact: bool) {
    // `force_isa` is process-wide: one check at a time, so that no other test switches the
    // instruction set in the middle of this one.
    let _isa = ISA.lock().unwrap_or_else(|e| e.into_inner());
    let in_views: Vec<View<f32>> = inputs.iter().map(|(d, s)| View { data: d, shape: s }).collect();
    let initial = initial.to_vec();
    let mut want = initial.clone();
    {
        let mut outs: Vec<ViewMut<f32>> = want.iter_mut().zip(outputs).map(|(d, s)| ViewMut { data: d, shape: s }).collect();
        reference::execute(op, NodeArgs::floats(&in_views, &mut outs)).unwrap();
    }
    let in_shapes: Vec<&[usize]> = inputs.iter().map(|(_, s)| s.as_slice()).collect();
    let out_shapes: Vec<&[usize]> = outputs.iter().map(|s| s.as_slice()).collect();
    let mut workspace = vec![f32::NAN; workspace_elems(op, &in_shapes, &out_shapes)];
    for path in [None, Some(Isa::Avx2Fma), Some(Isa::Portable)] {
        force_isa(path);
        let mut one_thread: Option<Vec<Vec<f32>>> = None;
        for threads in [1, 2, 3] {
            let mut got = initial.clone();
            {
                let mut outs: Vec<ViewMut<f32>> = got.iter_mut().zip(outputs).map(|(d, s)| ViewMut { data: d, shape: s }).collect();
                let cfg = CpuConfig { threads };
                let mut scratch = vec![f32::NAN; scratch_elems(op, &in_shapes, &out_shapes, cfg)];
                execute(op, NodeArgs::floats(&in_views, &mut outs), &mut workspace, &mut scratch, cfg).unwrap();
            }
            for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                let rms = (w.iter().map(|v| v * v).sum::<f32>() / w.len().max(1) as f32).sqrt();
                let tol = if exact { 0.0 } else { 1e-4 * rms.max(1e-3) };
                for (i, (a, b)) in g.iter().zip(w).enumerate() {
                    // Exact means the same bits: +0 and -0 differ, NaN equals NaN of the same bits.
                    let ok = if exact { a.to_bits() == b.to_bits() } else { (a - b).abs() <= tol };
                    assert!(ok, "{what}: output {k}[{i}] = {a}, reference {b} (tolerance {tol}; {:?}, {threads} threads)", isa());
                }
            }
            match &one_thread {
                None => one_thread = Some(got),
                Some(first) => {
                    for (k, (g, f)) in got.iter().zip(first).enumerate() {
                        let same = g.iter().zip(f).all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(same, "{what}: output {k} differs between 1 and {threads} threads ({:?})", isa());
                    }
                }
            }
        }
    }
    force_isa(None);
}

/// A convolution case: the output shape, a label (`kind`, the shapes, the convolution) and random
/// `x`, weights and `dy`, drawn in that order.
fn conv_case(
    rng: &mut ChaCha8Rng,
    kind: &str,
    conv: Conv2d,
    x_shape: &[usize],
    w_shape: &[usize],
) -> (Vec<usize>, String, Vec<f32>, Vec<f32>, Vec<f32>) {
    let y_shape = Op::from(ConvOp::Conv2d(conv)).output_shapes(&[x_shape, w_shape]).unwrap().remove(0);
    let what = format!("{kind} {x_shape:?} * {w_shape:?} -> {y_shape:?}, {conv:?}");
    let x = random(rng, x_shape.iter().product());
    let wt = random(rng, w_shape.iter().product());
    let dy = random(rng, y_shape.iter().product());
    (y_shape, what, x, wt, dy)
}

#[test]
fn convolutions_match_the_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    for case in 0..80 {
        // Depthwise (multiplier 1 or 2), pointwise, and general grouped/dense convolutions.
        let kind = case % 4;
        let n = rng.random_range(1..4usize);
        let (groups, cg, og) = match kind {
            0 => {
                let c = rng.random_range(2..9usize);
                (c, 1, 1)
            }
            1 => {
                let c = rng.random_range(2..6usize);
                (c, 1, 2)
            }
            2 => (1, rng.random_range(1..9usize), rng.random_range(1..9usize)),
            _ => {
                let g = rng.random_range(1..3usize);
                (g, rng.random_range(1..4usize), rng.random_range(1..4usize))
            }
        };
        let (c, o) = (groups * cg, groups * og);
        let pointwise = kind == 2 && case % 8 == 2;
        let (kh, kw) = if pointwise { (1, 1) } else { (rng.random_range(1..6usize), rng.random_range(1..6usize)) };
        // Half the depthwise cases at stride 1, where the input gradient is a flipped forward pass.
        let stride =
            if pointwise || (kind == 0 && case % 8 < 4) { [1, 1] } else { [rng.random_range(1..4usize), rng.random_range(1..4usize)] };
        let dilation = if pointwise || case % 3 != 0 { [1, 1] } else { [rng.random_range(1..3usize), rng.random_range(1..3usize)] };
        let padding = if pointwise {
            [0; 4]
        } else {
            [rng.random_range(0..3usize), rng.random_range(0..3usize), rng.random_range(0..3usize), rng.random_range(0..3usize)]
        };
        let h = dilation[0] * (kh - 1) + 1 + rng.random_range(0..12usize);
        let w = dilation[1] * (kw - 1) + 1 + rng.random_range(0..12usize);
        let conv = Conv2d { stride, padding, dilation, groups };
        let x_shape = vec![n, c, h, w];
        let w_shape = vec![o, cg, kh, kw];
        let (y_shape, what, x, wt, dy) = conv_case(&mut rng, "conv", conv, &x_shape, &w_shape);
        let forward = Op::from(ConvOp::Conv2d(conv));
        check(
            &format!("forward {what}"),
            &forward,
            &[(x.clone(), x_shape.clone()), (wt.clone(), w_shape.clone())],
            std::slice::from_ref(&y_shape),
            &mut rng,
            false,
        );
        let grad_input = Op::from(ConvOp::Conv2dGradInput { conv, input_hw: [h, w] });
        check(
            &format!("grad input {what}"),
            &grad_input,
            &[(dy.clone(), y_shape.clone()), (wt, w_shape.clone())],
            std::slice::from_ref(&x_shape),
            &mut rng,
            false,
        );
        let grad_weight = Op::from(ConvOp::Conv2dGradWeight { conv, kernel_hw: [kh, kw] });
        check(&format!("grad weight {what}"), &grad_weight, &[(dy, y_shape), (x, x_shape)], &[w_shape], &mut rng, false);
    }
}

/// Convolutions that take Winograd F(2x2, 3x3) (ungrouped 3x3, stride 1, 16 or more channels on
/// each side, 256 or more output tiles): odd and even output sizes, padding 0 to 2 (asymmetric too), channel counts off
/// gemm's register tile, and a batch whose tile rows take several blocks (the 30x30 one, a block
/// ending in the middle of a sample), on both instruction-set paths and 1 to 3 threads.
#[test]
fn winograd_convolutions_match_the_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(14);
    for (n, c, o, hw, padding) in [
        (8, 16, 16, [12, 12], [1; 4]),
        (4, 19, 17, [17, 19], [1; 4]),
        (2, 16, 23, [30, 27], [0; 4]),
        (4, 18, 16, [20, 17], [2, 0, 1, 2]),
        (3, 32, 32, [30, 30], [1; 4]),
        (2, 40, 24, [24, 40], [1, 1, 0, 0]),
    ] {
        let conv = Conv2d { stride: [1, 1], padding, dilation: [1, 1], groups: 1 };
        let (x_shape, w_shape) = (vec![n, c, hw[0], hw[1]], vec![o, c, 3, 3]);
        let y_shape = Op::from(ConvOp::Conv2d(conv)).output_shapes(&[&x_shape, &w_shape]).unwrap().remove(0);
        let what = format!("winograd {x_shape:?} * {w_shape:?} -> {y_shape:?}, {conv:?}");
        let forward = Op::from(ConvOp::Conv2d(conv));
        let grad_input = Op::from(ConvOp::Conv2dGradInput { conv, input_hw: hw });
        // Only Winograd gives a stride-1 forward pass or input gradient a workspace.
        assert!(workspace_elems(&forward, &[&x_shape, &w_shape], &[&y_shape]) > 0, "{what}: forward is not Winograd");
        assert!(workspace_elems(&grad_input, &[&y_shape, &w_shape], &[&x_shape]) > 0, "{what}: grad input is not Winograd");
        let (x, wt, dy) = (
            random(&mut rng, x_shape.iter().product()),
            random(&mut rng, w_shape.iter().product()),
            random(&mut rng, y_shape.iter().product()),
        );
        let inputs = [(x, x_shape.clone()), (wt.clone(), w_shape.clone())];
        check(&format!("forward {what}"), &forward, &inputs, std::slice::from_ref(&y_shape), &mut rng, false);
        let inputs = [(dy, y_shape), (wt, w_shape)];
        check(&format!("grad input {what}"), &grad_input, &inputs, &[x_shape], &mut rng, false);
    }
}

/// The Winograd weight gradient (`dw = sum of G^T [(A dY A^T) . (B^T X B)] G` over the tiles)
/// against the reference: the fixed shapes of `winograd_convolutions_match_the_reference` (odd
/// planes, padding 0 to 2 and asymmetric, channel counts off gemm's register tile, a batch whose
/// tile rows take several blocks) and random ones that Winograd takes, on both instruction-set
/// paths and 1 to 3 threads (bit-equal across the thread counts).
#[test]
fn winograd_weight_gradients_match_the_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(16);
    let fixed = [
        (8, 16, 16, [12, 12], [1; 4]),
        (4, 19, 17, [17, 19], [1; 4]),
        (2, 16, 23, [30, 27], [0; 4]),
        (4, 18, 16, [20, 17], [2, 0, 1, 2]),
        (3, 32, 32, [30, 30], [1; 4]),
        (2, 40, 24, [24, 40], [1, 1, 0, 0]),
        (1, 64, 48, [64, 33], [2; 4]),
    ];
    let random_cases = (0..8).map(|_| {
        let padding: [usize; 4] = core::array::from_fn(|_| rng.random_range(0..3usize));
        let (n, c, o) = (rng.random_range(1..5usize), rng.random_range(16..41usize), rng.random_range(16..41usize));
        let hw = [rng.random_range(10..34usize), rng.random_range(10..34usize)];
        (n, c, o, hw, padding)
    });
    let cases: Vec<_> = fixed.into_iter().chain(random_cases.collect::<Vec<_>>()).collect();
    let mut taken = 0;
    for (n, c, o, hw, padding) in cases {
        let conv = Conv2d { stride: [1, 1], padding, dilation: [1, 1], groups: 1 };
        let (x_shape, w_shape) = (vec![n, c, hw[0], hw[1]], vec![o, c, 3, 3]);
        let y_shape = Op::from(ConvOp::Conv2d(conv)).output_shapes(&[&x_shape, &w_shape]).unwrap().remove(0);
        let what = format!("winograd grad weight {x_shape:?} * {w_shape:?} -> {y_shape:?}, {conv:?}");
        let grad_weight = Op::from(ConvOp::Conv2dGradWeight { conv, kernel_hw: [3, 3] });
        // Only Winograd gives a weight gradient a workspace; small random cases may stay on im2col.
        let tiles = n * y_shape[2].div_ceil(2) * y_shape[3].div_ceil(2);
        let winograd = workspace_elems(&grad_weight, &[&y_shape, &x_shape], &[&w_shape]) > 0;
        assert_eq!(winograd, tiles >= 256, "{what}: Winograd taken or not against its tile threshold");
        taken += usize::from(winograd);
        let (x, dy) = (random(&mut rng, x_shape.iter().product()), random(&mut rng, y_shape.iter().product()));
        check(&what, &grad_weight, &[(dy, y_shape), (x, x_shape)], &[w_shape], &mut rng, false);
    }
    assert!(taken >= 10, "only {taken} cases took Winograd");
}

/// The RMS errors of `op` (a 3x3 convolution Winograd takes; inputs `ins`, output shape `out`)
/// against `exact`, relative to its RMS: with im2col, F(2x2, 3x3) and F(4x4, 3x3), switched with
/// `set_winograd` and `set_winograd_f4` while holding the instruction-set lock (so that no other
/// check runs meanwhile), on two threads.
fn winograd_errors(op: &Op, ins: [(&[f32], &[usize]); 2], out: &[usize], exact: &[f64]) -> [f64; 3] {
    use pock_engine::kernels::cpu::{set_winograd, set_winograd_f4};
    let _isa = ISA.lock().unwrap_or_else(|e| e.into_inner());
    let shapes = ins.map(|(_, s)| s);
    assert!(workspace_elems(op, &shapes, &[out]) > 0, "{shapes:?}: not Winograd");
    let mut workspace = vec![f32::NAN; workspace_elems(op, &shapes, &[out])];
    let cfg = CpuConfig { threads: 2 };
    let mut scratch = vec![f32::NAN; scratch_elems(op, &shapes, &[out], cfg)];
    let rms = (exact.iter().map(|v| v * v).sum::<f64>() / exact.len() as f64).sqrt();
    let mut errors = [0.0f64; 3];
    for (error, (winograd, f4)) in errors.iter_mut().zip([(false, false), (true, false), (true, true)]) {
        set_winograd(winograd);
        set_winograd_f4(f4);
        let mut got = vec![f32::NAN; exact.len()];
        let views = ins.map(|(data, shape)| View { data, shape });
        let mut outs = [ViewMut { data: &mut got, shape: out }];
        execute(op, NodeArgs::floats(&views, &mut outs), &mut workspace, &mut scratch, cfg).unwrap();
        *error = (got.iter().zip(exact).map(|(&a, &b)| (a as f64 - b).powi(2)).sum::<f64>() / exact.len() as f64).sqrt() / rms;
    }
    set_winograd(true);
    set_winograd_f4(true);
    errors
}

/// The rounding of the Winograd weight gradient against an f64 direct sum, next to im2col's (the
/// algorithms switched with `set_winograd` and `set_winograd_f4`, holding the instruction-set
/// lock so that no other check runs meanwhile): its RMS error relative to the gradient's RMS
/// stays within 2.5x im2col's and under 1e-6 with F(2x2) (measured: 3.9e-7 to 6.6e-7, 1.1x to
/// 1.8x im2col's 3.2e-7 to 3.8e-7), within 8x im2col's and under 4e-6 with F(4x4), on the
/// 16x16 and 17x17 outputs it takes (measured 2.0e-6 and 2.3e-6, 5.8x and 6.2x).
#[test]
fn winograd_weight_gradient_rounding() {
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    for (n, c, o, hw, pad) in [(8, 16, 16, 16, 1), (4, 64, 32, 17, 1), (8, 64, 96, 14, 0), (8, 32, 24, 9, 2)] {
        let conv = Conv2d { stride: [1, 1], padding: [pad; 4], dilation: [1, 1], groups: 1 };
        let (x_shape, w_shape) = (vec![n, c, hw, hw], vec![o, c, 3, 3]);
        let y_shape = Op::from(ConvOp::Conv2d(conv)).output_shapes(&[&x_shape, &w_shape]).unwrap().remove(0);
        let (ho, wo) = (y_shape[2], y_shape[3]);
        let (x, dy) = (random(&mut rng, x_shape.iter().product()), random(&mut rng, y_shape.iter().product()));
        let mut exact = vec![0.0f64; w_shape.iter().product()];
        for (i, e) in exact.iter_mut().enumerate() {
            let (k, ci, a, b) = (i / (c * 9), i / 9 % c, i / 3 % 3, i % 3);
            for s in 0..n {
                for oh in 0..ho {
                    let Some(ih) = (oh + a).checked_sub(pad).filter(|&ih| ih < hw) else { continue };
                    for ow in 0..wo {
                        let Some(iw) = (ow + b).checked_sub(pad).filter(|&iw| iw < hw) else { continue };
                        *e += dy[((s * o + k) * ho + oh) * wo + ow] as f64 * x[((s * c + ci) * hw + ih) * hw + iw] as f64;
                    }
                }
            }
        }
        let op = Op::from(ConvOp::Conv2dGradWeight { conv, kernel_hw: [3, 3] });
        // F(4x4) only takes 16x16 or larger outputs; on the others the third run is F(2x2) again.
        let [im2col, f2, f4] = winograd_errors(&op, [(&dy, &y_shape), (&x, &x_shape)], &w_shape, &exact);
        let what = format!("{x_shape:?} * {w_shape:?}: RMS error / RMS, im2col {im2col:.2e}, F(2x2) {f2:.2e}, F(4x4) {f4:.2e}");
        println!("{what}");
        assert!(f2 <= 2.5 * im2col && f2 < 1e-6 && f4 <= 8.0 * im2col && f4 < 4e-6, "{what}");
    }
}

/// The rounding of the Winograd forward pass against an f64 direct sum, next to im2col's, with
/// F(2x2, 3x3) and F(4x4, 3x3) (switched with `set_winograd` and `set_winograd_f4`, holding the
/// instruction-set lock so that no other check runs meanwhile), on planes F(4x4) takes (16x16
/// or more): RMS error relative to the output's RMS. F(4x4)'s transforms multiply by up to 8
/// and its weight transform divides by 6 and 24, so its error is larger than F(2x2)'s; it must
/// stay within 8x im2col's and under 4e-6 (measured: F(4x4) 1.1e-6 to 2.3e-6, 3.7x to 6.8x
/// im2col's 2.6e-7 to 3.4e-7; F(2x2) 1.6e-7 to 3.5e-7).
#[test]
fn winograd_forward_rounding() {
    let mut rng = ChaCha8Rng::seed_from_u64(18);
    for (n, c, o, hw, pad) in [(4, 64, 64, 32, 1), (4, 128, 128, 16, 1), (4, 32, 48, 20, 0), (2, 24, 40, 33, 2)] {
        let conv = Conv2d { stride: [1, 1], padding: [pad; 4], dilation: [1, 1], groups: 1 };
        let (x_shape, w_shape) = (vec![n, c, hw, hw], vec![o, c, 3, 3]);
        let y_shape = Op::from(ConvOp::Conv2d(conv)).output_shapes(&[&x_shape, &w_shape]).unwrap().remove(0);
        let (ho, wo) = (y_shape[2], y_shape[3]);
        let (x, wt) = (random(&mut rng, x_shape.iter().product()), random(&mut rng, w_shape.iter().product()));
        let mut exact = vec![0.0f64; y_shape.iter().product()];
        for (i, e) in exact.iter_mut().enumerate() {
            let (s, k, oh, ow) = (i / (o * ho * wo), i / (ho * wo) % o, i / wo % ho, i % wo);
            for ci in 0..c {
                for a in 0..3 {
                    let Some(ih) = (oh + a).checked_sub(pad).filter(|&ih| ih < hw) else { continue };
                    for b in 0..3 {
                        let Some(iw) = (ow + b).checked_sub(pad).filter(|&iw| iw < hw) else { continue };
                        *e += wt[((k * c + ci) * 3 + a) * 3 + b] as f64 * x[((s * c + ci) * hw + ih) * hw + iw] as f64;
                    }
                }
            }
        }
        let op = Op::from(ConvOp::Conv2d(conv));
        let [im2col, f2, f4] = winograd_errors(&op, [(&x, &x_shape), (&wt, &w_shape)], &y_shape, &exact);
        let what = format!("{x_shape:?} * {w_shape:?}: RMS error / RMS, im2col {im2col:.2e}, F(2x2) {f2:.2e}, F(4x4) {f4:.2e}");
        println!("{what}");
        assert!(f2 <= 2.5 * im2col && f4 <= 8.0 * im2col && f4 < 4e-6, "{what}");
    }
}

/// Depthwise convolutions (one output channel per input channel) on the planes where the
/// channel-blocked kernel takes over from the row loops (1x1 to 16x16, odd and even), and on wide
/// planes that stay on the row path; channel counts around the eight-channel block (a last block
/// with fewer channels), strides 1 and 2, uneven padding and dilation; enough work in some cases
/// for the blocks to be split among the threads.
#[test]
fn depthwise_blocks_match_the_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let planes: [[usize; 2]; 8] = [[1, 1], [3, 5], [7, 7], [8, 8], [4, 4], [16, 16], [13, 6], [40, 36]];
    for (case, hw) in planes.iter().cycle().take(32).enumerate() {
        let c = [3, 8, 13, 20, 24, 9][case % 6];
        let n = if case % 5 == 0 { 4 } else { rng.random_range(1..3usize) };
        let (kh, kw) = if case % 7 == 3 { (5, 3) } else { (3, 3) };
        let stride = [1 + case % 2, 1 + (case / 2) % 2];
        let dilation = if case % 4 == 3 { [2, 1] } else { [1, 1] };
        // Padding at least the dilated kernel's reach less the plane, so that a 1x1 plane has an output.
        let reach: [usize; 2] = [dilation[0] * (kh - 1), dilation[1] * (kw - 1)];
        let pad = |i: usize, lo: usize| (reach[i % 2].saturating_sub(hw[i % 2] - 1)).div_ceil(2).max(lo);
        let padding = [pad(0, case % 3), pad(1, 1), pad(2, (case + 1) % 3), pad(3, case % 2)];
        let conv = Conv2d { stride, padding, dilation, groups: c };
        let (x_shape, w_shape) = (vec![n, c, hw[0], hw[1]], vec![c, 1, kh, kw]);
        let (y_shape, what, x, wt, dy) = conv_case(&mut rng, "depthwise", conv, &x_shape, &w_shape);
        let inputs = [(x.clone(), x_shape.clone()), (wt.clone(), w_shape.clone())];
        check(&format!("forward {what}"), &Op::from(ConvOp::Conv2d(conv)), &inputs, std::slice::from_ref(&y_shape), &mut rng, false);
        let grad_input = Op::from(ConvOp::Conv2dGradInput { conv, input_hw: *hw });
        let inputs = [(dy.clone(), y_shape.clone()), (wt, w_shape.clone())];
        check(&format!("grad input {what}"), &grad_input, &inputs, std::slice::from_ref(&x_shape), &mut rng, false);
        let grad_weight = Op::from(ConvOp::Conv2dGradWeight { conv, kernel_hw: [kh, kw] });
        check(&format!("grad weight {what}"), &grad_weight, &[(dy, y_shape), (x, x_shape)], &[w_shape], &mut rng, false);
    }
}

/// The row path's 3x3 kernels of stride 1 and 2 (`depthwise.rs`, nine taps summed in registers
/// eight output pixels at a time, the row's edges one by one) against the reference: planes too
/// large for the channel-blocked path, narrower and wider than a group of eight pixels, uneven
/// padding of 0 to 2 on each side; the forward pass, and the stride-1 input gradient (the same
/// code with the flipped kernel).
#[test]
fn depthwise_3x3_rows_match_the_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let planes: [[usize; 2]; 6] = [[120, 4], [40, 9], [30, 17], [20, 33], [19, 64], [26, 23]];
    for (case, hw) in planes.iter().cycle().take(24).enumerate() {
        let (c, n) = (1 + case % 3, 1 + case % 2);
        let s = 1 + (case / 6) % 2;
        let padding = [rng.random_range(0..3usize), rng.random_range(0..3usize), rng.random_range(0..3usize), rng.random_range(0..3usize)];
        let conv = Conv2d { stride: [s, s], padding, dilation: [1, 1], groups: c };
        let (x_shape, w_shape) = (vec![n, c, hw[0], hw[1]], vec![c, 1, 3, 3]);
        let (y_shape, what, x, wt, dy) = conv_case(&mut rng, "depthwise", conv, &x_shape, &w_shape);
        let inputs = [(x, x_shape.clone()), (wt.clone(), w_shape.clone())];
        check(&format!("forward {what}"), &Op::from(ConvOp::Conv2d(conv)), &inputs, std::slice::from_ref(&y_shape), &mut rng, false);
        if s == 1 {
            let grad_input = Op::from(ConvOp::Conv2dGradInput { conv, input_hw: *hw });
            let inputs = [(dy, y_shape.clone()), (wt, w_shape)];
            check(&format!("grad input {what}"), &grad_input, &inputs, std::slice::from_ref(&x_shape), &mut rng, false);
        }
    }
}

/// Convolutions and a matmul large enough that gemm, im2col and col2im split their work among
/// the threads (products above `PARALLEL_MIN_MACS`, more than one task of rows or planes).
#[test]
fn large_products_split_among_threads_match() {
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    for (n, c, o, hw, k, stride, pad) in
        // The 64- and 72-channel cases have more taps than gemm's 512-deep blocks (the input
        // gradient of the first also more than 512 output-channel taps), and the 4x4 and 3x3 ones
        // fewer output positions per sample than a 16-column sliver (deep ResNet layers). The
        // 61-channel one's input gradient has 549 taps, in two 275-deep blocks: the second
        // starts inside an output channel's 9 taps (whole 3x3 channels are packed apart). In the
        // 80-channel one, forward and input gradient, `A` (96 or 80 rows, two depth blocks) has
        // more than twice the rows of all columns together (2 samples of 16), so the threads
        // split its rows (`sgemm::split_rows`), at an even row sliver, a partial one last.
        [
            (2, 80, 96, 4, 3, 1, 1),
            (2, 16, 32, 40, 3, 1, 1),
            (2, 12, 40, 41, 3, 2, 1),
            (3, 8, 24, 33, 5, 1, 2),
            (8, 32, 48, 24, 1, 1, 0),
            (3, 64, 70, 9, 3, 1, 1),
            (8, 72, 40, 4, 3, 1, 1),
            (5, 24, 33, 6, 3, 2, 1),
            (2, 12, 61, 7, 3, 1, 1),
        ]
    {
        let conv = Conv2d { stride: [stride; 2], padding: [pad; 4], dilation: [1, 1], groups: 1 };
        let (x_shape, w_shape) = (vec![n, c, hw, hw], vec![o, c, k, k]);
        let (y_shape, what, x, wt, dy) = conv_case(&mut rng, "conv", conv, &x_shape, &w_shape);
        let forward = Op::from(ConvOp::Conv2d(conv));
        let inputs = [(x.clone(), x_shape.clone()), (wt.clone(), w_shape.clone())];
        check(&format!("forward {what}"), &forward, &inputs, std::slice::from_ref(&y_shape), &mut rng, false);
        let grad_input = Op::from(ConvOp::Conv2dGradInput { conv, input_hw: [hw, hw] });
        let inputs = [(dy.clone(), y_shape.clone()), (wt, w_shape.clone())];
        check(&format!("grad input {what}"), &grad_input, &inputs, std::slice::from_ref(&x_shape), &mut rng, false);
        let grad_weight = Op::from(ConvOp::Conv2dGradWeight { conv, kernel_hw: [k, k] });
        check(&format!("grad weight {what}"), &grad_weight, &[(dy, y_shape), (x, x_shape)], &[w_shape], &mut rng, false);
    }
    // Grouped 1x1 convolutions: one product per group for all samples, the samples' column
    // slivers (4x4 planes: less than one sliver each) shared by the threads.
    // The last case's forward product splits the rows of `A` (160 output channels against 2
    // samples of 16 positions).
    for (n, c, o, hw, groups) in [(3, 24, 40, 20, 2), (5, 64, 96, 4, 2), (2, 12, 18, 9, 3), (2, 32, 160, 4, 1)] {
        let conv = Conv2d { stride: [1, 1], padding: [0; 4], dilation: [1, 1], groups };
        let (x_shape, w_shape) = (vec![n, c, hw, hw], vec![o, c / groups, 1, 1]);
        let y_shape = vec![n, o, hw, hw];
        let what = format!("pointwise {x_shape:?} * {w_shape:?}, {groups} groups");
        let (x, wt, dy) = (random(&mut rng, n * c * hw * hw), random(&mut rng, o * c / groups), random(&mut rng, n * o * hw * hw));
        let inputs = [(x.clone(), x_shape.clone()), (wt.clone(), w_shape.clone())];
        check(&format!("forward {what}"), &Op::from(ConvOp::Conv2d(conv)), &inputs, std::slice::from_ref(&y_shape), &mut rng, false);
        let grad_input = Op::from(ConvOp::Conv2dGradInput { conv, input_hw: [hw, hw] });
        let inputs = [(dy.clone(), y_shape.clone()), (wt, w_shape.clone())];
        check(&format!("grad input {what}"), &grad_input, &inputs, std::slice::from_ref(&x_shape), &mut rng, false);
        let grad_weight = Op::from(ConvOp::Conv2dGradWeight { conv, kernel_hw: [1, 1] });
        check(&format!("grad weight {what}"), &grad_weight, &[(dy, y_shape), (x, x_shape)], &[w_shape], &mut rng, false);
    }
    // The threads pack their own column slivers in groups of 4 to 32 (a multiple of the thread
    // count), a task's groups in its own part of the buffer: the third (17 slivers) and the
    // fourth, which has more column slivers than the buffer holds; with fewer (the others: 2 to
    // 6 slivers) and on one thread they share one packed block. Sizes are not
    // multiples of the 6x16 tile, and some depths are more than one 512-deep block. The first,
    // fifth and sixth have more than twice as many rows as columns: the threads split the rows.
    for (m, k, n, trans_a, trans_b) in [
        (301, 203, 91, false, false),
        (130, 517, 77, true, false),
        (97, 300, 260, false, true),
        (13, 1100, 2100, false, false),
        (701, 300, 20, false, false),
        (333, 1030, 47, true, true),
    ] {
        let a_shape = if trans_a { vec![k, m] } else { vec![m, k] };
        let b_shape = if trans_b { vec![n, k] } else { vec![k, n] };
        let op = Op::Dense(DenseOp::MatMul(MatMul { trans_a, trans_b }));
        let inputs = [(random(&mut rng, m * k), a_shape), (random(&mut rng, k * n), b_shape)];
        check(&format!("matmul {m}x{k}x{n} trans {trans_a} {trans_b}"), &op, &inputs, &[vec![m, n]], &mut rng, false);
    }
}

/// Max pooling and its gradient equal the reference bit for bit (same window order, same sums),
/// overlapping windows and padding included, on planes enough to split among threads.
#[test]
fn max_pooling_equals_the_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for case in 0..16 {
        let (n, c) = (rng.random_range(1..4usize), if case < 4 { 40 } else { rng.random_range(1..6usize) });
        let kernel = [rng.random_range(1..4usize), rng.random_range(1..4usize)];
        let stride = [rng.random_range(1..3usize), rng.random_range(1..3usize)];
        let padding = [0, 1, 2, 3].map(|i| rng.random_range(0..kernel[i % 2].min(2)));
        let (h, w) = (kernel[0] + rng.random_range(0..30usize), kernel[1] + rng.random_range(0..30usize));
        let pool = Pool2d { kernel, stride, padding, count_include_pad: false };
        let x_shape = vec![n, c, h, w];
        let forward = Op::Pool(PoolOp::MaxPool2d(pool));
        let y_shape = forward.output_shapes(&[&x_shape]).unwrap().remove(0);
        let mut x = random(&mut rng, x_shape.iter().product());
        // Ties (the first maximum wins) and a NaN (it always wins).
        for i in (0..x.len()).step_by(7) {
            x[i] = 0.5;
        }
        let middle = x.len() / 2;
        x[middle] = f32::NAN;
        let what = format!("max pool {x_shape:?} -> {y_shape:?}, {pool:?}");
        check(&what, &forward, &[(x.clone(), x_shape.clone())], std::slice::from_ref(&y_shape), &mut rng, true);
        let dy = random(&mut rng, y_shape.iter().product());
        let grad = Op::Pool(PoolOp::MaxPool2dGrad(pool));
        check(&format!("grad {what}"), &grad, &[(dy, y_shape), (x, x_shape.clone())], &[x_shape], &mut rng, true);
    }
}

/// The vectorised interior of max pooling (planes without NaN) against the reference: kernels 2
/// and 3 (and 1, 4), strides 1, 2 and 3 (the last with a stride known at run time only), padding
/// 0 to 2, planes wider than one block of 64 gradient windows, odd sizes; values drawn from a few
/// levels so that ties are everywhere, with +0 and -0 (equal, but the first one must win) and
/// -inf (a window of only -inf still routes its gradient to its first element); a few planes
/// with a NaN keep the exact path next to the fast one.
#[test]
fn max_pooling_fast_path_equals_the_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let levels = [0.0f32, -0.0, 1.0, -1.0, f32::NEG_INFINITY, 0.5];
    for case in 0..24 {
        let k = [2, 3, 1, 4][case % 4];
        let kernel = [k, if case % 5 == 0 { rng.random_range(1..5usize) } else { k }];
        let s = [1, 2, 3][case % 3];
        let stride = [s, if case % 7 == 0 { rng.random_range(1..4usize) } else { s }];
        let padding = [0, 1, 2, 3].map(|i| rng.random_range(0..=(kernel[i % 2] / 2)));
        let (h, w) = (kernel[0] + rng.random_range(0..20usize), kernel[1] + rng.random_range(0..160usize));
        let (n, c) = (rng.random_range(1..3usize), rng.random_range(1..5usize));
        let pool = Pool2d { kernel, stride, padding, count_include_pad: false };
        let x_shape = vec![n, c, h, w];
        let forward = Op::Pool(PoolOp::MaxPool2d(pool));
        let y_shape = forward.output_shapes(&[&x_shape]).unwrap().remove(0);
        let mut x: Vec<f32> = (0..x_shape.iter().product()).map(|_| levels[rng.random_range(0..levels.len())]).collect();
        if case % 6 == 5 {
            let at = rng.random_range(0..x.len());
            x[at] = f32::NAN;
        }
        let what = format!("max pool {x_shape:?} -> {y_shape:?}, {pool:?}");
        check(&what, &forward, &[(x.clone(), x_shape.clone())], std::slice::from_ref(&y_shape), &mut rng, true);
        let dy = random(&mut rng, y_shape.iter().product());
        let grad = Op::Pool(PoolOp::MaxPool2dGrad(pool));
        check(&format!("grad {what}"), &grad, &[(dy, y_shape), (x, x_shape.clone())], &[x_shape], &mut rng, true);
    }
}

/// The SGD and Adam/AdamW updates (whole and row-restricted) and CountNonFinite equal the
/// reference bit for bit: lengths odd and below and above the sizes split among threads; SGD
/// with and without momentum, dampening, Nesterov and weight decay; Adam and AdamW with and
/// without weight decay; first and later steps; with a scale input (finite or not); and a
/// gradient holding a NaN or an infinity at a random position, which must leave every output
/// untouched (the reference writes nothing) and be counted.
#[test]
fn optimizer_updates_equal_the_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let sgds = [
        Sgd { momentum: 0.0, dampening: 0.0, nesterov: false, weight_decay: 0.0, scaled: false },
        Sgd { momentum: 0.0, dampening: 0.0, nesterov: false, weight_decay: 1e-2, scaled: true },
        Sgd { momentum: 0.9, dampening: 0.0, nesterov: false, weight_decay: 5e-4, scaled: false },
        Sgd { momentum: 0.9, dampening: 0.1, nesterov: false, weight_decay: 0.0, scaled: true },
        Sgd { momentum: 0.8, dampening: 0.0, nesterov: true, weight_decay: 1e-3, scaled: false },
        Sgd { momentum: 0.7, dampening: 0.0, nesterov: true, weight_decay: 0.0, scaled: true },
    ];
    let adams = [
        Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, decoupled: false, scaled: false },
        Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 1e-2, decoupled: false, scaled: true },
        Adam { beta1: 0.8, beta2: 0.99, eps: 1e-6, weight_decay: 1e-2, decoupled: true, scaled: false },
        Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, decoupled: true, scaled: true },
    ];
    // 16_385: just over one update block; 70_001 and 200_003: split among threads (the scan
    // too, in blocks of 65_536).
    for len in [1usize, 7, 1000, 16_385, 70_001, 200_003] {
        for step in [1.0f32, 3.0] {
            for poison in [None, Some(f32::NAN), Some(f32::INFINITY), Some(f32::NEG_INFINITY)] {
                let mut grad = random(&mut rng, len);
                if let Some(bad) = poison {
                    let at = rng.random_range(0..len);
                    grad[at] = bad;
                }
                // The scale: 0.5, or (once per length) infinite with a finite gradient.
                let scale = if poison.is_none() && step > 1.0 { f32::INFINITY } else { 0.5 };
                let shape = vec![len];
                let scalar = |v: f32| (vec![v], vec![]);
                let inputs = |scaled: bool| {
                    let mut i = vec![(grad.clone(), shape.clone()), scalar(0.05), scalar(step)];
                    if scaled {
                        i.push(scalar(scale));
                    }
                    i
                };
                let param = random(&mut rng, len);
                let moment = random(&mut rng, len);
                // The second moment is a running mean of squares: never negative.
                let square: Vec<f32> = random(&mut rng, len).iter().map(|v| v * v).collect();
                let what = format!("len {len} step {step} poison {poison:?} scale {scale}");

                let count = Op::Optim(OptimOp::CountNonFinite);
                check_from(&format!("count {what}"), &count, &[(grad.clone(), shape.clone())], &[vec![]], &[vec![2.0]], true);
                if poison.is_some() {
                    // The reference itself must count it (and the check above saw the same).
                    let mut c = [2.0f32];
                    let g = View { data: &grad, shape: &shape };
                    reference::execute(&count, NodeArgs::floats(&[g], &mut [ViewMut { data: &mut c, shape: &[] }])).unwrap();
                    assert_eq!(c, [3.0], "{what}: the reference did not count the non-finite gradient");
                }

                for s in sgds {
                    let op = Op::Optim(OptimOp::SgdUpdate(s));
                    let mut outs = vec![shape.clone()];
                    let mut initial = vec![param.clone()];
                    if s.momentum != 0.0 {
                        outs.push(shape.clone());
                        initial.push(moment.clone());
                    }
                    check_from(&format!("sgd {s:?} {what}"), &op, &inputs(s.scaled), &outs, &initial, true);
                    // The row-restricted update of rows 1.. of a parameter one row taller.
                    let rows = Op::Optim(OptimOp::SgdUpdateRows { sgd: s, rows: ParamRows { start: 1, param_rows: len + 1 } });
                    let mut initial_rows = initial.clone();
                    initial_rows[0].insert(0, 0.25);
                    outs[0] = vec![len + 1];
                    check_from(&format!("sgd rows {s:?} {what}"), &rows, &inputs(s.scaled), &outs, &initial_rows, true);
                }
                for a in adams {
                    let op = Op::Optim(OptimOp::AdamUpdate(a));
                    let initial = vec![param.clone(), moment.clone(), square.clone()];
                    let outs = vec![shape.clone(); 3];
                    check_from(&format!("adam {a:?} {what}"), &op, &inputs(a.scaled), &outs, &initial, true);
                    let rows = Op::Optim(OptimOp::AdamUpdateRows { adam: a, rows: ParamRows { start: 1, param_rows: len + 1 } });
                    let mut initial_rows = initial.clone();
                    initial_rows[0].push(-0.75);
                    let mut outs_rows = outs.clone();
                    outs_rows[0] = vec![len + 1];
                    check_from(&format!("adam rows {a:?} {what}"), &rows, &inputs(a.scaled), &outs_rows, &initial_rows, true);
                }
                if poison.is_some() {
                    // Skipped: the fast kernel must leave the outputs exactly as they were.
                    let s = sgds[2];
                    let (mut p, mut b) = (param.clone(), moment.clone());
                    let in_views: Vec<(Vec<f32>, Vec<usize>)> = inputs(false);
                    let views: Vec<View<f32>> = in_views.iter().map(|(d, sh)| View { data: d, shape: sh }).collect();
                    let mut outs = [ViewMut { data: &mut p, shape: &shape }, ViewMut { data: &mut b, shape: &shape }];
                    let cfg = CpuConfig { threads: 2 };
                    execute(&Op::Optim(OptimOp::SgdUpdate(s)), NodeArgs::floats(&views, &mut outs), &mut [], &mut [], cfg).unwrap();
                    assert!(p == param && b == moment, "{what}: a skipped update wrote its outputs");
                }
            }
        }
    }
}

#[test]
fn batch_norm_equals_the_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    // Channel counts below, at and above the eight channels summed side by side; the last cases
    // are large enough for the blocks of channels to be split among the threads.
    for case in 0..16 {
        let shape: Vec<usize> = if case % 4 == 3 {
            vec![rng.random_range(1..9), rng.random_range(1..20)]
        } else if case >= 13 {
            vec![rng.random_range(2..4), [24, 19, 40][case - 13], rng.random_range(12..20), rng.random_range(12..20)]
        } else {
            vec![rng.random_range(1..4), rng.random_range(1..20), rng.random_range(1..20), rng.random_range(1..20)]
        };
        let (numel, c) = (shape.iter().product::<usize>(), shape[1]);
        let b = BatchNorm { eps: 1e-5, momentum: 0.1 };
        // Inputs off centre, so the two-pass variance matters.
        let x: Vec<f32> = random(&mut rng, numel).iter().map(|v| 3.0 + v).collect();
        let (gamma, beta) = (random(&mut rng, c), random(&mut rng, c));
        let train = Op::from(NormOp::BatchNormTrain(b));
        let stats = vec![c];
        let bn_inputs = [(x.clone(), shape.clone()), (gamma.clone(), stats.clone()), (beta, stats.clone())];
        let bn_outputs = [shape.clone(), stats.clone(), stats.clone(), stats.clone(), stats.clone()];
        check(&format!("batch norm {shape:?}"), &train, &bn_inputs, &bn_outputs, &mut rng, true);
        // With the activation fused (both sides of the clip reached: the outputs are about
        // N(beta, gamma^2)).
        for act in [Activation::Relu, Activation::Clip(Clip { min: -0.25, max: 0.5 })] {
            let fused = Op::from(NormOp::BatchNormTrainAct { norm: b, act });
            check(&format!("batch norm {act:?} {shape:?}"), &fused, &bn_inputs, &bn_outputs, &mut rng, true);
        }
        let mean: Vec<f32> = random(&mut rng, c).iter().map(|v| 3.0 + 0.1 * v).collect();
        let invstd: Vec<f32> = random(&mut rng, c).iter().map(|v| 1.5 + v).collect();
        let grad = Op::from(NormOp::BatchNormTrainGrad(b));
        check(
            &format!("batch norm grad {shape:?}"),
            &grad,
            &[
                (random(&mut rng, numel), shape.clone()),
                (x, shape.clone()),
                (gamma, stats.clone()),
                (mean, stats.clone()),
                (invstd, stats.clone()),
            ],
            &[shape.clone(), stats.clone(), stats],
            &mut rng,
            true,
        );
    }
}

#[test]
fn bias_gradients_equal_the_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(15);
    // Rank 2 (a Linear layer's), rank 4 with channel counts below, at and past the eight summed
    // side by side, runs shorter and longer than a vector, and one large enough to split among
    // the threads; a row of -0.0 (its sum from -0.0, then onto 0, must give 0, not -0).
    let shapes: [&[usize]; 7] = [&[5, 3], &[9, 20], &[2, 7, 3, 5], &[3, 8, 4, 4], &[2, 19, 9, 11], &[8, 64, 32, 32], &[1, 1, 1, 1]];
    for shape in shapes {
        let mut dy = random(&mut rng, shape.iter().product());
        if shape == [1, 1, 1, 1] {
            dy[0] = -0.0;
        }
        let op = Op::from(DenseOp::BiasGrad);
        check(&format!("bias grad {shape:?}"), &op, &[(dy, shape.to_vec())], &[vec![shape[1]]], &mut rng, true);
    }
}

#[test]
fn elementwise_ops_equal_the_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    // Odd lengths, and one longer than a task block so the split among threads is exercised.
    for len in [1usize, 7, 33, 1000, 70_001] {
        let shape = vec![len];
        let mut x = random(&mut rng, len);
        // Values at the kinks, and a NaN, which must stay NaN.
        x[0] = f32::NAN;
        if len > 3 {
            (x[1], x[2], x[3]) = (0.0, 0.5, -0.0);
        }
        let x: Vec<f32> = x.iter().map(|v| v * 8.0).collect();
        let dy = random(&mut rng, len);
        let clip = Clip { min: 0.0, max: 6.0 };
        let one = |op: DenseOp| Op::from(op);
        let unary = [(one(DenseOp::Clip(clip)), "clip"), (one(DenseOp::Relu), "relu")];
        for (op, name) in unary {
            check(name, &op, &[(x.clone(), shape.clone())], std::slice::from_ref(&shape), &mut rng, true);
        }
        let binary = [(one(DenseOp::ClipGrad(clip)), "clip grad"), (one(DenseOp::ReluGrad), "relu grad"), (one(DenseOp::Add), "add")];
        for (op, name) in binary {
            check(name, &op, &[(dy.clone(), shape.clone()), (x.clone(), shape.clone())], std::slice::from_ref(&shape), &mut rng, true);
        }
    }
}

/// Broadcasting Add/Sub/Mul/Div, SumTo and Transpose (`kernels/cpu/broadcast.rs`) equal the
/// reference bit for bit: row (bias) and column (statistic) operands on either side, scalars,
/// layouts left to the reference, keep-dims and dropped-axis SumTo targets, and permutations
/// that keep or move the last axis; shapes small and odd, and large enough to split.
#[test]
fn broadcasting_sums_and_transposes_equal_the_reference() {
    use pock_engine::ops::{BroadcastOp, MoveOp};
    let mut rng = ChaCha8Rng::seed_from_u64(41);
    let outs: [&[usize]; 5] = [&[7], &[3, 5], &[2, 3, 17], &[8, 37, 129], &[2, 1, 3, 5]];
    for out in outs {
        let rank = out.len();
        // Operand shapes: the same, every suffix (a row), every prefix with trailing 1s (a
        // column), a scalar, and one with a 1 in the middle (not a fast layout).
        let mut shapes: Vec<Vec<usize>> = vec![out.to_vec(), vec![]];
        for p in 0..rank {
            shapes.push(out[p..].to_vec());
            shapes.push(out[..p].iter().copied().chain(std::iter::repeat_n(1, rank - p)).collect());
        }
        if rank >= 3 {
            let mut middle = out.to_vec();
            middle[1] = 1;
            shapes.push(middle);
        }
        for shape in &shapes {
            let other: usize = shape.iter().product();
            let full = random(&mut rng, out.iter().product());
            let part: Vec<f32> = random(&mut rng, other).into_iter().map(|v| v + 1.5).collect();
            for op in [BroadcastOp::Add, BroadcastOp::Sub, BroadcastOp::Mul, BroadcastOp::Div] {
                let what = format!("{op:?} {out:?} with {shape:?}");
                let op = Op::Broadcast(op);
                check(&what, &op, &[(full.clone(), out.to_vec()), (part.clone(), shape.clone())], &[out.to_vec()], &mut rng, true);
                check(&what, &op, &[(part.clone(), shape.clone()), (full.clone(), out.to_vec())], &[out.to_vec()], &mut rng, true);
            }
            // SumTo takes the gradient of the broadcast output back to `shape` (same rank or fewer axes).
            let op = Op::Broadcast(BroadcastOp::SumTo { shape: shape.clone() });
            check(
                &format!("SumTo {out:?} -> {shape:?}"),
                &op,
                &[(full.clone(), out.to_vec())],
                std::slice::from_ref(shape),
                &mut rng,
                true,
            );
        }
        // Every permutation of up to 4 axes (rank 4 has 24).
        let mut perms: Vec<Vec<usize>> = vec![(0..rank).collect()];
        for _ in 1..rank {
            perms = perms
                .into_iter()
                .flat_map(|p| {
                    (0..rank).map(move |k| {
                        let mut q = p.clone();
                        q.swap(k, (k + 1) % rank);
                        q
                    })
                })
                .collect();
            perms.sort();
            perms.dedup();
        }
        let x = random(&mut rng, out.iter().product());
        for perm in perms {
            let y_shape: Vec<usize> = perm.iter().map(|&a| out[a]).collect();
            let op = Op::Move(MoveOp::Transpose { perm: perm.clone() });
            check(&format!("Transpose {out:?} by {perm:?}"), &op, &[(x.clone(), out.to_vec())], &[y_shape], &mut rng, true);
        }
    }
}

/// Reductions over trailing axes and their gradients (`kernels/cpu/rows.rs`) equal the reference
/// bit for bit; other axes fall back to it.
#[test]
fn trailing_reductions_equal_the_reference() {
    use pock_engine::ops::{Reduce, ReduceOp};
    let mut rng = ChaCha8Rng::seed_from_u64(43);
    for shape in [vec![5usize], vec![3, 7], vec![2, 3, 17], vec![8, 128, 33], vec![2, 1, 3, 5]] {
        let rank = shape.len();
        let x = random(&mut rng, shape.iter().product());
        for first in 0..rank {
            for axes in [(first..rank).collect::<Vec<_>>(), vec![first]] {
                for keepdims in [true, false] {
                    let reduce = Reduce { axes: axes.clone(), keepdims };
                    let y_shape: Vec<usize> = shape
                        .iter()
                        .enumerate()
                        .filter_map(|(k, &d)| if axes.contains(&k) { keepdims.then_some(1) } else { Some(d) })
                        .collect();
                    let dy = random(&mut rng, y_shape.iter().product());
                    let what = format!("{shape:?} over {axes:?}");
                    for op in [ReduceOp::ReduceSum(reduce.clone()), ReduceOp::ReduceMean(reduce.clone())] {
                        check(&what, &Op::Reduce(op), &[(x.clone(), shape.clone())], std::slice::from_ref(&y_shape), &mut rng, true);
                    }
                    for op in [
                        ReduceOp::ReduceSumGrad { reduce: reduce.clone(), shape: shape.clone() },
                        ReduceOp::ReduceMeanGrad { reduce: reduce.clone(), shape: shape.clone() },
                    ] {
                        check(&what, &Op::Reduce(op), &[(dy.clone(), y_shape.clone())], std::slice::from_ref(&shape), &mut rng, true);
                    }
                }
            }
        }
    }
}

/// Cross-entropy over the last axis and its gradient (`kernels/cpu/rows.rs`) equal the reference
/// bit for bit, with ignored positions, both reductions, 1 and 2 threads; a bad label is the
/// reference's error.
#[test]
fn cross_entropy_equals_the_reference() {
    use pock_engine::ops::{CrossEntropy, LossOp, Reduction};
    let mut rng = ChaCha8Rng::seed_from_u64(47);
    for (batch, positions, classes) in [(1usize, 1usize, 2usize), (3, 5, 7), (8, 128, 515)] {
        let logits_shape = [batch, positions, classes];
        let logits: Vec<f32> = random(&mut rng, batch * positions * classes).into_iter().map(|v| v * 8.0).collect();
        let labels: Vec<i64> =
            (0..batch * positions).map(|p| if p % 5 == 3 { -100 } else { rng.random_range(0..classes as i64) }).collect();
        let label_shape = [batch, positions];
        for reduction in [Reduction::Mean, Reduction::PerSample] {
            let ce = CrossEntropy { reduction, ignore_index: -100 };
            let loss_shape: Vec<usize> = if reduction == Reduction::Mean { vec![] } else { vec![batch] };
            let dloss = random(&mut rng, loss_shape.iter().product());
            let int_views = [View { data: labels.as_slice(), shape: &label_shape[..] }];
            let run = |op: &Op, inputs: &[View<f32>], out_shape: &[usize], fast: Option<usize>| -> Vec<f32> {
                let mut out = vec![f32::NAN; out_shape.iter().product()];
                let mut outs = [ViewMut { data: &mut out, shape: out_shape }];
                let args = NodeArgs {
                    inputs,
                    int_inputs: &int_views,
                    bool_inputs: &[],
                    outputs: &mut outs,
                    int_outputs: &mut [],
                    bool_outputs: &mut [],
                };
                match fast {
                    None => reference::execute(op, args).unwrap(),
                    Some(threads) => {
                        let shapes: Vec<&[usize]> = inputs.iter().map(|v| v.shape).collect();
                        let cfg = CpuConfig { threads };
                        let mut scratch = vec![f32::NAN; scratch_elems(op, &shapes, &[out_shape], cfg)];
                        execute(op, args, &mut [], &mut scratch, cfg).unwrap()
                    }
                }
                out
            };
            let forward = Op::Loss(LossOp::CrossEntropy(ce));
            let f_in = [View { data: logits.as_slice(), shape: &logits_shape[..] }];
            let grad = Op::Loss(LossOp::CrossEntropyGrad(ce));
            let g_in = [View { data: dloss.as_slice(), shape: loss_shape.as_slice() }, f_in[0]];
            for (op, inputs, out_shape) in [(&forward, &f_in[..], loss_shape.as_slice()), (&grad, &g_in[..], &logits_shape[..])] {
                let want = run(op, inputs, out_shape, None);
                for threads in [1, 2] {
                    let got = run(op, inputs, out_shape, Some(threads));
                    assert!(
                        got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{op:?} [{batch}, {positions}, {classes}], {threads} threads: differs from the reference"
                    );
                }
            }
        }
        // A label outside [0, classes) is the reference's error.
        let mut bad = labels.clone();
        bad[0] = classes as i64;
        let int_views = [View { data: bad.as_slice(), shape: &label_shape[..] }];
        let op = Op::Loss(LossOp::CrossEntropy(CrossEntropy { reduction: Reduction::Mean, ignore_index: -100 }));
        let inputs = [View { data: logits.as_slice(), shape: &logits_shape[..] }];
        let mut out = [0.0f32];
        let mut outs = [ViewMut { data: &mut out, shape: &[] }];
        let args = NodeArgs {
            inputs: &inputs,
            int_inputs: &int_views,
            bool_inputs: &[],
            outputs: &mut outs,
            int_outputs: &mut [],
            bool_outputs: &mut [],
        };
        let mut scratch = vec![0.0; batch * positions];
        assert!(execute(&op, args, &mut [], &mut scratch, CpuConfig { threads: 2 }).is_err());
    }
}

/// Thread CPU time in seconds (Linux `CLOCK_THREAD_CPUTIME_ID`): unlike the wall clock it does
/// not count the time other processes hold the core, so figures taken on a loaded machine stay
/// comparable.
#[cfg(target_os = "linux")]
fn thread_seconds() -> f64 {
    #[repr(C)]
    struct Timespec {
        secs: i64,
        nanos: i64,
    }
    extern "C" {
        fn clock_gettime(clock: i32, tp: *mut Timespec) -> i32;
    }
    const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
    let mut t = Timespec { secs: 0, nanos: 0 };
    // SAFETY: `t` is a valid, writable timespec.
    assert_eq!(unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut t) }, 0);
    t.secs as f64 + t.nanos as f64 * 1e-9
}

/// Not a check: GFLOP/s of the fast kernels on ResNet-18's 7x7 stem and 3x3 convolutions (batch 8, 3x128x128
/// input) next to gemm's 1024-cubed ceiling measured the same way (BENCHMARKS.md "ResNet-18
/// convolutions against the GEMM ceiling"): on one thread in thread CPU time, or with
/// `POCK_SPEED_THREADS=2` on two threads in wall-clock time, the best of 12 runs (on a loaded
/// machine the best runs are those where both threads held a core); `POCK_SPEED_WINOGRAD=0` runs
/// every layer on im2col; `POCK_SPEED_COLD=1` writes 256 MiB between runs and takes the median,
/// so that weights and inputs come from memory as inside a training step; `POCK_SPEED_LAYERS=0,7`
/// runs only those layers of its list. Run with
/// `cargo test --workspace --test fast_kernels -- --ignored --nocapture resnet18_conv_speed`.
#[cfg(target_os = "linux")]
#[test]
#[ignore]
fn resnet18_conv_speed() {
    let threads: usize = std::env::var("POCK_SPEED_THREADS").ok().and_then(|t| t.parse().ok()).unwrap_or(1);
    // `POCK_SPEED_WINOGRAD=0`: every layer on im2col, to compare the algorithms.
    let winograd = std::env::var("POCK_SPEED_WINOGRAD").map_or(true, |v| v != "0");
    pock_engine::kernels::cpu::set_winograd(winograd);
    // One thread: thread CPU time (not disturbed by the load); more: the wall clock.
    let start = std::time::Instant::now();
    let now = || if threads == 1 { thread_seconds() } else { start.elapsed().as_secs_f64() };
    // `POCK_SPEED_COLD=1`: 256 MiB are written between calls, so that the operands come from
    // memory as they do inside a training step, and the median is taken instead of the best.
    let cold = std::env::var("POCK_SPEED_COLD").is_ok_and(|v| v == "1");
    let mut flush = vec![0u8; if cold { 256 << 20 } else { 0 }];
    let mut best_of = |f: &mut dyn FnMut()| {
        f();
        let mut times: Vec<f64> = (0..if threads == 1 { 4 } else { 12 })
            .map(|round| {
                flush.fill(round as u8);
                let t = now();
                f();
                now() - t
            })
            .collect();
        times.sort_by(f64::total_cmp);
        if cold {
            times[times.len() / 2]
        } else {
            times[0]
        }
    };
    let side = 1024usize;
    let cfg = CpuConfig { threads };
    let (a, b) = ((vec![0.5f32; side * side], vec![side, side]), (vec![0.25f32; side * side], vec![side, side]));
    let matmul = Op::Dense(DenseOp::MatMul(MatMul { trans_a: false, trans_b: false }));
    let mut c = vec![0.0f32; side * side];
    let mut scratch = vec![0.0f32; scratch_elems(&matmul, &[&a.1, &b.1], &[&[side, side]], cfg)];
    let seconds = best_of(&mut || {
        let ins = [View { data: &a.0, shape: &a.1 }, View { data: &b.0, shape: &b.1 }];
        let mut outs = [ViewMut { data: &mut c, shape: &[side, side] }];
        execute(&matmul, NodeArgs::floats(&ins, &mut outs), &mut [], &mut scratch, cfg).unwrap();
    });
    let ceiling = 2.0 * (side * side * side) as f64 / seconds / 1e9;
    println!(
        "ceiling: gemm {side}^3, {threads} threads: {ceiling:.1} GFLOP/s (wall clock, gemm_ceiling_gflops: {:.1})",
        gemm_ceiling_gflops(threads, 3)
    );
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    // (channels, outputs, plane, stride, kernel): the 7x7 stem, then the 3x3 layers.
    let layers = [
        (3, 64, 128, 2, 7),
        (64, 64, 32, 1, 3),
        (64, 128, 32, 2, 3),
        (128, 128, 16, 1, 3),
        (128, 256, 16, 2, 3),
        (256, 256, 8, 1, 3),
        (256, 512, 8, 2, 3),
        (512, 512, 4, 1, 3),
    ];
    // `POCK_SPEED_LAYERS=0,7`: only those layers (indices into the list above).
    let only: Option<Vec<usize>> =
        std::env::var("POCK_SPEED_LAYERS").ok().map(|v| v.split(',').filter_map(|i| i.trim().parse().ok()).collect());
    for (index, (c, o, hw, stride, k)) in layers.into_iter().enumerate() {
        if only.as_ref().is_some_and(|only| !only.contains(&index)) {
            continue;
        }
        let conv = Conv2d { stride: [stride; 2], padding: [k / 2; 4], dilation: [1, 1], groups: 1 };
        let (x_shape, w_shape) = (vec![8, c, hw, hw], vec![o, c, k, k]);
        let y_shape = Op::from(ConvOp::Conv2d(conv)).output_shapes(&[&x_shape, &w_shape]).unwrap().remove(0);
        let flops = 2.0 * (y_shape.iter().product::<usize>() * c * k * k) as f64;
        let (x, wt, dy) = (
            random(&mut rng, x_shape.iter().product()),
            random(&mut rng, w_shape.iter().product()),
            random(&mut rng, y_shape.iter().product()),
        );
        let cases = [
            ("forward", Op::from(ConvOp::Conv2d(conv)), [(&x, &x_shape), (&wt, &w_shape)], &y_shape),
            ("grad input", Op::from(ConvOp::Conv2dGradInput { conv, input_hw: [hw, hw] }), [(&dy, &y_shape), (&wt, &w_shape)], &x_shape),
            ("grad weight", Op::from(ConvOp::Conv2dGradWeight { conv, kernel_hw: [k, k] }), [(&dy, &y_shape), (&x, &x_shape)], &w_shape),
        ];
        for (what, op, inputs, out_shape) in cases {
            let in_shapes: Vec<&[usize]> = inputs.iter().map(|(_, s)| s.as_slice()).collect();
            let mut workspace = vec![0.0f32; workspace_elems(&op, &in_shapes, &[out_shape])];
            let mut scratch = vec![0.0f32; scratch_elems(&op, &in_shapes, &[out_shape], cfg)];
            let mut out = vec![0.0f32; out_shape.iter().product()];
            let seconds = best_of(&mut || {
                let ins: Vec<View<f32>> = inputs.iter().map(|(d, s)| View { data: d, shape: s }).collect();
                let mut outs = [ViewMut { data: &mut out, shape: out_shape }];
                execute(&op, NodeArgs::floats(&ins, &mut outs), &mut workspace, &mut scratch, cfg).unwrap();
            });
            let gflops = flops / seconds / 1e9;
            println!(
                "{what:<11} {x_shape:?} * {w_shape:?} stride {stride}: {:7.2} ms {gflops:6.1} GFLOP/s {:4.0}% of ceiling",
                seconds * 1e3,
                100.0 * gflops / ceiling
            );
        }
    }
}

/// Not a check: milliseconds of the fast kernels that dominate MobileNetV2's sparse training step
/// with BatchNorm in training mode (batch 8, 3x128x128 input): BatchNorm forward and gradient,
/// ReLU6 (Clip), depthwise 3x3 forward and input gradient, on the model's own shapes, one thread,
/// thread CPU time, the best of 5 runs. Run with
/// `cargo test --workspace --test fast_kernels -- --ignored --nocapture mobilenetv2_kernel_speed`.
#[cfg(target_os = "linux")]
#[test]
#[ignore]
fn mobilenetv2_kernel_speed() {
    let cfg = CpuConfig { threads: 1 };
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let time = |op: &Op, inputs: &[(Vec<f32>, Vec<usize>)], outputs: &[Vec<usize>]| -> f64 {
        let in_shapes: Vec<&[usize]> = inputs.iter().map(|(_, s)| s.as_slice()).collect();
        let out_shapes: Vec<&[usize]> = outputs.iter().map(|s| s.as_slice()).collect();
        let mut workspace = vec![0.0f32; workspace_elems(op, &in_shapes, &out_shapes)];
        let mut scratch = vec![0.0f32; scratch_elems(op, &in_shapes, &out_shapes, cfg)];
        // Outputs start at 1 (BatchNorm's running statistics are in-place outputs).
        let mut outs: Vec<Vec<f32>> = outputs.iter().map(|s| vec![1.0; s.iter().product()]).collect();
        let mut run = || {
            let ins: Vec<View<f32>> = inputs.iter().map(|(d, s)| View { data: d, shape: s }).collect();
            let mut views: Vec<ViewMut<f32>> = outs.iter_mut().zip(outputs).map(|(d, s)| ViewMut { data: d, shape: s }).collect();
            execute(op, NodeArgs::floats(&ins, &mut views), &mut workspace, &mut scratch, cfg).unwrap();
        };
        run();
        (0..5)
            .map(|_| {
                let t = thread_seconds();
                run();
                thread_seconds() - t
            })
            .fold(f64::INFINITY, f64::min)
            * 1e3
    };
    let b = BatchNorm { eps: 1e-5, momentum: 0.1 };
    let (mut norm, mut norm_grad, mut clip) = (0.0, 0.0, 0.0);
    for (c, hw) in [(32, 64), (96, 64), (96, 32), (144, 32), (24, 32), (144, 16), (192, 16), (32, 16), (384, 8), (576, 8), (960, 4)] {
        let (shape, stats) = (vec![8, c, hw, hw], vec![c]);
        let numel = shape.iter().product();
        let x = (random(&mut rng, numel), shape.clone());
        let (gamma, beta) = ((random(&mut rng, c), stats.clone()), (random(&mut rng, c), stats.clone()));
        let outs = [shape.clone(), stats.clone(), stats.clone(), stats.clone(), stats.clone()];
        let ms = time(&Op::from(NormOp::BatchNormTrain(b)), &[x.clone(), gamma.clone(), beta], &outs);
        let invstd = (random(&mut rng, c).iter().map(|v| 1.5 + v).collect(), stats.clone());
        let grad_inputs = [(random(&mut rng, numel), shape.clone()), x.clone(), gamma, (random(&mut rng, c), stats.clone()), invstd];
        let grad_ms = time(&Op::from(NormOp::BatchNormTrainGrad(b)), &grad_inputs, &[shape.clone(), stats.clone(), stats]);
        let clip_ms = time(&Op::from(DenseOp::Clip(Clip { min: 0.0, max: 6.0 })), &[x], std::slice::from_ref(&shape));
        println!("batch norm {shape:?}: forward {ms:6.3} ms, gradient {grad_ms:6.3} ms, clip {clip_ms:6.3} ms");
        (norm, norm_grad, clip) = (norm + ms, norm_grad + grad_ms, clip + clip_ms);
    }
    println!("batch norm total: forward {norm:.2} ms, gradient {norm_grad:.2} ms, clip {clip:.2} ms");
    // MaskPack of ReLU6's output, the fast kernel and the reference (which ran it before).
    let pack = Op::from(MaskOp::Pack(MaskKind::Clip(Clip { min: 0.0, max: 6.0 })));
    let (shape, v) = ([8usize * 96 * 64 * 64], random(&mut rng, 8 * 96 * 64 * 64));
    let packed = [shape[0].div_ceil(8)];
    let mut bits = vec![0u8; packed[0]];
    let mut best = [f64::INFINITY; 2];
    for _ in 0..5 {
        for (k, best) in best.iter_mut().enumerate() {
            let inputs = [View { data: &v[..], shape: &shape[..] }];
            let mut bool_outs = [ViewMut { data: &mut bits[..], shape: &packed[..] }];
            let args = NodeArgs {
                inputs: &inputs,
                int_inputs: &[],
                bool_inputs: &[],
                outputs: &mut [],
                int_outputs: &mut [],
                bool_outputs: &mut bool_outs,
            };
            let t = thread_seconds();
            if k == 0 {
                execute(&pack, args, &mut [], &mut [], cfg).unwrap();
            } else {
                reference::execute(&pack, args).unwrap();
            }
            *best = best.min((thread_seconds() - t) * 1e3);
        }
    }
    println!("mask pack [8, 96, 64, 64]: fast {:6.3} ms, reference {:6.3} ms", best[0], best[1]);
    let (mut forward, mut grad_input) = (0.0, 0.0);
    for (c, hw, stride) in [(32, 64, 1), (96, 64, 2), (144, 32, 1), (144, 32, 2), (192, 16, 1), (192, 16, 2), (384, 8, 1), (960, 4, 1)] {
        let conv = Conv2d { stride: [stride; 2], padding: [1; 4], dilation: [1, 1], groups: c };
        let (x_shape, w_shape) = (vec![8, c, hw, hw], vec![c, 1, 3, 3]);
        let y_shape = Op::from(ConvOp::Conv2d(conv)).output_shapes(&[&x_shape, &w_shape]).unwrap().remove(0);
        let x = (random(&mut rng, x_shape.iter().product()), x_shape.clone());
        let w = (random(&mut rng, 9 * c), w_shape.clone());
        let dy = (random(&mut rng, y_shape.iter().product()), y_shape.clone());
        let ms = time(&Op::from(ConvOp::Conv2d(conv)), &[x, w.clone()], std::slice::from_ref(&y_shape));
        let grad_op = Op::from(ConvOp::Conv2dGradInput { conv, input_hw: [hw, hw] });
        let grad_ms = time(&grad_op, &[dy, w], std::slice::from_ref(&x_shape));
        println!("depthwise {x_shape:?} stride {stride}: forward {ms:6.3} ms, input gradient {grad_ms:6.3} ms");
        (forward, grad_input) = (forward + ms, grad_input + grad_ms);
    }
    println!("depthwise total: forward {forward:.2} ms, input gradient {grad_input:.2} ms");
}

/// `MaskPack` (ReLU and ReLU6 predicates) against the reference, bit for bit: values around the
/// kinks with signed zeros, NaN and infinities, lengths with a partial last byte, and lengths
/// over several task blocks so the bytes are split among the threads; both code paths.
#[test]
fn mask_pack_equals_the_reference() {
    let _isa = ISA.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = ChaCha8Rng::seed_from_u64(14);
    let specials = [0.0f32, -0.0, 6.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1e-38, -1e-38, 5.999_999_5, 6.000_001];
    for len in [1usize, 7, 8, 9, 63, 1000, 16_384, 16_391, 70_001] {
        let v: Vec<f32> =
            (0..len).map(|i| if i % 13 == 0 { specials[i / 13 % specials.len()] } else { rng.random_range(-2.0f32..8.0) }).collect();
        for kind in [MaskKind::Relu, MaskKind::Clip(Clip { min: 0.0, max: 6.0 })] {
            let op = Op::from(MaskOp::Pack(kind));
            let shape = [len];
            let packed = [len.div_ceil(8)];
            let inputs = [View { data: &v[..], shape: &shape[..] }];
            let mut want = vec![0u8; len.div_ceil(8)];
            {
                let mut bool_outs = [ViewMut { data: &mut want[..], shape: &packed[..] }];
                let args = NodeArgs {
                    inputs: &inputs,
                    int_inputs: &[],
                    bool_inputs: &[],
                    outputs: &mut [],
                    int_outputs: &mut [],
                    bool_outputs: &mut bool_outs,
                };
                reference::execute(&op, args).unwrap();
            }
            for path in [None, Some(Isa::Avx2Fma), Some(Isa::Portable)] {
                force_isa(path);
                for threads in [1, 2, 3] {
                    let mut got = vec![0xA5u8; len.div_ceil(8)];
                    {
                        let mut bool_outs = [ViewMut { data: &mut got[..], shape: &packed[..] }];
                        let args = NodeArgs {
                            inputs: &inputs,
                            int_inputs: &[],
                            bool_inputs: &[],
                            outputs: &mut [],
                            int_outputs: &mut [],
                            bool_outputs: &mut bool_outs,
                        };
                        execute(&op, args, &mut [], &mut [], CpuConfig { threads }).unwrap();
                    }
                    assert_eq!(got, want, "MaskPack {kind:?}, {len} elements, {threads} threads ({:?})", isa());
                }
            }
            force_isa(None);
        }
    }
}

/// Not a check: Winograd F(2x2, 3x3) and F(4x4, 3x3) against im2col on ResNet-18-like stride-1
/// 3x3 layers (batch 8), forward pass, input gradient and weight gradient (which has no F(4x4)),
/// interleaved in one process (`set_winograd` and `set_winograd_f4` switch the algorithm
/// process-wide, so run this test alone): ms, the best of 10 rounds (on one thread in thread CPU
/// time, which other processes on a loaded machine do not disturb; on more, wall clock), and
/// GFLOP/s counting a direct convolution's FLOPs. Threads from `POCK_SPEED_THREADS` (default 1).
/// F(4x4) is only taken on planes of 16x16 or more. Run with
/// `cargo test --workspace --test fast_kernels -- --ignored --nocapture winograd_speed`.
#[cfg(target_os = "linux")]
#[test]
#[ignore]
fn winograd_speed() {
    use pock_engine::kernels::cpu::{set_winograd, set_winograd_f4};
    let threads: usize = std::env::var("POCK_SPEED_THREADS").ok().and_then(|t| t.parse().ok()).unwrap_or(1);
    let cfg = CpuConfig { threads };
    let start = std::time::Instant::now();
    let now = || if threads == 1 { thread_seconds() } else { start.elapsed().as_secs_f64() };
    let mut rng = ChaCha8Rng::seed_from_u64(15);
    for (c, hw) in [(64, 32), (128, 16), (256, 8), (512, 4)] {
        let conv = Conv2d { stride: [1, 1], padding: [1; 4], dilation: [1, 1], groups: 1 };
        let (x_shape, w_shape) = (vec![8, c, hw, hw], vec![c, c, 3, 3]);
        let flops = 2.0 * (x_shape.iter().product::<usize>() * c * 9) as f64;
        let (x, wt) = (random(&mut rng, x_shape.iter().product()), random(&mut rng, w_shape.iter().product()));
        // With padding 1 the output has the input's shape, so `x` also serves as the weight
        // gradient's `dy` (its operands are `dy` and `x`, its output has `w`'s shape).
        let cases = [
            ("forward", Op::from(ConvOp::Conv2d(conv))),
            ("grad input", Op::from(ConvOp::Conv2dGradInput { conv, input_hw: [hw, hw] })),
            ("grad weight", Op::from(ConvOp::Conv2dGradWeight { conv, kernel_hw: [3, 3] })),
        ];
        for (what, op) in cases {
            let grad_weight = matches!(op, Op::Conv(ConvOp::Conv2dGradWeight { .. }));
            let (second, out_shape) = if grad_weight { (&x, &w_shape) } else { (&wt, &x_shape) };
            let in_shapes: [&[usize]; 2] = [&x_shape, if grad_weight { &x_shape } else { &w_shape }];
            let mut workspace = vec![0.0f32; workspace_elems(&op, &in_shapes, &[out_shape])];
            let mut scratch = vec![0.0f32; scratch_elems(&op, &in_shapes, &[out_shape], cfg)];
            let mut out = vec![0.0f32; out_shape.iter().product()];
            let mut best = [f64::INFINITY; 3];
            for round in 0..11 {
                for (i, (winograd, f4)) in [(false, false), (true, false), (true, true)].into_iter().enumerate() {
                    set_winograd(winograd);
                    set_winograd_f4(f4);
                    let ins = [View { data: &x, shape: &x_shape }, View { data: second, shape: in_shapes[1] }];
                    let mut outs = [ViewMut { data: &mut out, shape: out_shape }];
                    let t = now();
                    execute(&op, NodeArgs::floats(&ins, &mut outs), &mut workspace, &mut scratch, cfg).unwrap();
                    if round > 0 {
                        best[i] = best[i].min(now() - t);
                    }
                }
            }
            set_winograd(true);
            set_winograd_f4(true);
            let gflops = |s: f64| flops / s / 1e9;
            println!(
                "{what:<10} {x_shape:?} {threads} threads: im2col {:7.2} ms {:6.1} GFLOP/s, F(2x2) {:7.2} ms {:6.1} GFLOP/s ({:.2}x), F(4x4) {:7.2} ms {:6.1} GFLOP/s ({:.2}x)",
                best[0] * 1e3,
                gflops(best[0]),
                best[1] * 1e3,
                gflops(best[1]),
                best[0] / best[1],
                best[2] * 1e3,
                gflops(best[2]),
                best[0] / best[2]
            );
        }
    }
}

/// Not a check: milliseconds of the reference and the fast kernel, on one thread in thread CPU
/// time (best of 5), for ResNet-18's max pooling (batch 8, 64x64x64, kernel 3, stride 2,
/// padding 1) and its gradient, and the optimizer updates and CountNonFinite on its largest
/// weight (512x512x3x3). Run with
/// `cargo test --workspace --test fast_kernels -- --ignored --nocapture optimizer_and_pooling_speed`.
#[cfg(target_os = "linux")]
#[test]
#[ignore]
fn optimizer_and_pooling_speed() {
    let mut rng = ChaCha8Rng::seed_from_u64(14);
    let best_of = |f: &mut dyn FnMut()| {
        f();
        (0..5)
            .map(|_| {
                let t = thread_seconds();
                f();
                thread_seconds() - t
            })
            .fold(f64::INFINITY, f64::min)
    };
    let pool = Pool2d { kernel: [3, 3], stride: [2, 2], padding: [1; 4], count_include_pad: false };
    let x_shape = vec![8, 64, 64, 64];
    let y_shape = vec![8, 64, 32, 32];
    let len = 512 * 512 * 9;
    let (x, dy) = (random(&mut rng, x_shape.iter().product()), random(&mut rng, y_shape.iter().product()));
    let (grad, param) = (random(&mut rng, len), random(&mut rng, len));
    let square: Vec<f32> = random(&mut rng, len).iter().map(|v| v * v).collect();
    let scalar = |v: f32| (vec![v], vec![]);
    let sgd = Sgd { momentum: 0.9, dampening: 0.0, nesterov: false, weight_decay: 5e-4, scaled: false };
    let adam = Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 1e-2, decoupled: true, scaled: false };
    let update_inputs = vec![(grad.clone(), vec![len]), scalar(0.01), scalar(3.0)];
    type Tensors = Vec<(Vec<f32>, Vec<usize>)>;
    let cases: Vec<(&str, Op, Tensors, Vec<Vec<f32>>)> = vec![
        ("MaxPool2d", Op::Pool(PoolOp::MaxPool2d(pool)), vec![(x.clone(), x_shape.clone())], vec![vec![0.0; dy.len()]]),
        ("MaxPool2dGrad", Op::Pool(PoolOp::MaxPool2dGrad(pool)), vec![(dy, y_shape), (x.clone(), x_shape)], vec![vec![0.0; x.len()]]),
        ("SgdUpdate", Op::Optim(OptimOp::SgdUpdate(sgd)), update_inputs.clone(), vec![param.clone(), grad.clone()]),
        ("AdamUpdate", Op::Optim(OptimOp::AdamUpdate(adam)), update_inputs, vec![param, grad.clone(), square]),
        ("CountNonFinite", Op::Optim(OptimOp::CountNonFinite), vec![(grad, vec![len])], vec![vec![0.0]]),
    ];
    for (what, op, inputs, mut outputs) in cases {
        let ins: Vec<View<f32>> = inputs.iter().map(|(d, s)| View { data: d, shape: s }).collect();
        let shapes: Vec<Vec<usize>> = op.output_shapes(&ins.iter().map(|v| v.shape).collect::<Vec<_>>()).unwrap();
        let mut run = |fast: bool| {
            best_of(&mut || {
                let mut outs: Vec<ViewMut<f32>> = outputs.iter_mut().zip(&shapes).map(|(d, s)| ViewMut { data: d, shape: s }).collect();
                let args = NodeArgs::floats(&ins, &mut outs);
                if fast {
                    execute(&op, args, &mut [], &mut [], CpuConfig { threads: 1 }).unwrap();
                } else {
                    reference::execute(&op, args).unwrap();
                }
            })
        };
        let (slow, fast) = (run(false), run(true));
        println!("{what:<15} reference {:8.3} ms  fast {:8.3} ms  ({:.1}x)", slow * 1e3, fast * 1e3, slow / fast);
    }
}
