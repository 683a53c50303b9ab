//! The fast f32 convolution kernels (`kernels::cpu`) against the reference kernels run in f64, on
//! random inputs over a table of configurations that reaches every algorithm (pointwise gemm,
//! depthwise loops, im2col + gemm) and every border case of the index arithmetic.

use pock_engine::kernels::cpu::{self, CpuConfig};
use pock_engine::kernels::reference::mask;
use pock_engine::kernels::{reference, KernelError, NodeArgs, View, ViewMut};
use pock_engine::ops::{packed_shape, Activation, Clip, Conv2d, ConvOp, MaskKind, Op};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Allowed error of each element: `1e-4 * (|reference| + rms(reference))`. The rms term keeps
/// elements that are near zero through cancellation from demanding more than f32 can give, while
/// still being four orders of magnitude below the typical value.
const TOLERANCE: f64 = 1e-4;

#[derive(Clone, Copy, Debug)]
struct Case {
    n: usize,
    c: usize,
    hw: [usize; 2],
    o: usize,
    kernel: [usize; 2],
    conv: Conv2d,
}

/// One row of the table; positional arguments keep each row on one readable line.
#[allow(clippy::too_many_arguments)]
const fn case(
    n: usize,
    c: usize,
    hw: [usize; 2],
    o: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 4],
    dilation: [usize; 2],
    groups: usize,
) -> Case {
    Case { n, c, hw, o, kernel, conv: Conv2d { stride, padding, dilation, groups } }
}

const CASES: &[Case] = &[
    // Pointwise: direct gemm, plain and grouped.
    case(2, 8, [9, 7], 6, [1, 1], [1, 1], [0; 4], [1, 1], 1),
    case(3, 8, [5, 5], 4, [1, 1], [1, 1], [0; 4], [1, 1], 2),
    // 1x1 that is not pointwise: strided, padded.
    case(2, 5, [9, 8], 3, [1, 1], [2, 2], [0; 4], [1, 1], 1),
    case(1, 4, [5, 6], 3, [1, 1], [1, 1], [1, 0, 0, 1], [1, 1], 1),
    // 3x3 im2col: plain, strided, asymmetric padding, dilated, grouped, non-square kernel.
    case(2, 5, [11, 13], 7, [3, 3], [1, 1], [1; 4], [1, 1], 1),
    case(2, 5, [11, 13], 7, [3, 3], [2, 2], [1; 4], [1, 1], 1),
    case(2, 3, [10, 9], 4, [3, 3], [1, 1], [0, 2, 1, 1], [1, 1], 1),
    case(2, 3, [10, 9], 4, [3, 3], [2, 1], [2, 0, 0, 3], [1, 1], 1),
    case(2, 4, [12, 11], 6, [3, 3], [1, 1], [2; 4], [2, 2], 1),
    case(2, 4, [12, 11], 6, [3, 3], [1, 1], [1; 4], [1, 1], 2),
    case(1, 6, [9, 10], 9, [3, 3], [2, 2], [1, 1, 0, 0], [2, 1], 3),
    case(2, 3, [9, 12], 5, [3, 5], [2, 1], [1, 2, 1, 2], [1, 2], 1),
    // A single input channel with groups 1 is not depthwise: it goes through im2col.
    case(3, 1, [13, 13], 8, [5, 5], [1, 1], [2; 4], [1, 1], 1),
    // 5x5 and 7x7 (a ResNet stem) with odd sizes.
    case(2, 3, [15, 17], 4, [5, 5], [2, 2], [2; 4], [1, 1], 1),
    case(2, 3, [23, 21], 8, [7, 7], [2, 2], [3; 4], [1, 1], 1),
    case(1, 2, [16, 15], 3, [7, 7], [1, 1], [0; 4], [2, 1], 1),
    // Depthwise: plain, strided, channel multiplier 2, dilated with asymmetric padding, 1x1, 5x5.
    case(2, 6, [9, 11], 6, [3, 3], [1, 1], [1; 4], [1, 1], 6),
    case(2, 6, [10, 11], 6, [3, 3], [2, 2], [1; 4], [1, 1], 6),
    case(2, 3, [9, 8], 6, [3, 3], [2, 1], [1, 0, 2, 1], [1, 1], 3),
    case(2, 4, [13, 12], 4, [5, 5], [1, 2], [3, 1, 2, 4], [2, 2], 4),
    case(2, 5, [7, 7], 5, [1, 1], [1, 1], [0; 4], [1, 1], 5),
    case(1, 3, [17, 19], 3, [5, 5], [2, 2], [2; 4], [1, 1], 3),
    // Stride 3 takes the runtime-stride loops rather than the stride-1 and stride-2 ones.
    case(2, 4, [14, 13], 5, [3, 3], [3, 3], [1; 4], [1, 1], 1),
    case(2, 4, [14, 13], 4, [5, 3], [3, 3], [2, 1, 2, 1], [1, 1], 4),
    // The kernel covers the whole padded input: one output element.
    case(2, 3, [5, 4], 2, [7, 6], [1, 1], [1; 4], [1, 1], 1),
    // 7x7 at stride 2 with 31 output columns: a 16-wide column sliver holds the last 15 of one
    // output row (within 32 input values) and the first of the next, the case where the AVX2
    // packing must not take the whole sliver from one input row.
    case(1, 2, [9, 61], 3, [7, 7], [2, 2], [3; 4], [1, 1], 1),
    // Large enough for gemm's blocking to matter.
    case(2, 32, [20, 18], 48, [3, 3], [1, 1], [1; 4], [1, 1], 1),
];

/// The four ops of one case (the last, the weight gradient of some output channels, starts past
/// the first one and stops before the last where there are enough), with their input and output
/// shapes.
fn ops(case: &Case) -> [(Op, [Vec<usize>; 2], Vec<usize>); 4] {
    let c = case.conv;
    let x = vec![case.n, case.c, case.hw[0], case.hw[1]];
    let w = vec![case.o, case.c / c.groups, case.kernel[0], case.kernel[1]];
    let y = Op::Conv(ConvOp::Conv2d(c)).output_shapes(&[&x, &w]).unwrap_or_else(|e| panic!("{case:?}: {e}")).remove(0);
    let start = case.o / 3;
    let rows = [start, (case.o - case.o / 4).max(start + 1)];
    let rows_w = vec![rows[1] - rows[0], w[1], w[2], w[3]];
    [
        (Op::Conv(ConvOp::Conv2d(c)), [x.clone(), w.clone()], y.clone()),
        (Op::Conv(ConvOp::Conv2dGradInput { conv: c, input_hw: case.hw }), [y.clone(), w.clone()], x.clone()),
        (Op::Conv(ConvOp::Conv2dGradWeight { conv: c, kernel_hw: case.kernel }), [y.clone(), x.clone()], w.clone()),
        (Op::Conv(ConvOp::Conv2dGradWeightRows { conv: c, kernel_hw: case.kernel, rows }), [y, x], rows_w),
    ]
}

fn random(rng: &mut ChaCha8Rng, shape: &[usize]) -> Vec<f32> {
    (0..shape.iter().product::<usize>()).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// Runs the fast kernel, with the output and the workspace filled with NaN first: the arena is
/// not cleared between steps, so a kernel that reads either before writing it must fail.
fn run_fast(
    op: &Op,
    inputs: &[Vec<f32>; 2],
    shapes: &[Vec<usize>; 2],
    out_shape: &[usize],
    workspace: usize,
    cfg: CpuConfig,
) -> Result<Vec<f32>, KernelError> {
    let views = [View { data: &inputs[0][..], shape: &shapes[0][..] }, View { data: &inputs[1][..], shape: &shapes[1][..] }];
    let mut out = vec![f32::NAN; out_shape.iter().product()];
    let mut ws = vec![f32::NAN; workspace];
    let mut outputs = [ViewMut { data: &mut out[..], shape: out_shape }];
    let mut scratch = vec![f32::NAN; cpu::scratch_elems(op, &[&shapes[0][..], &shapes[1][..]], &[out_shape], cfg)];
    cpu::execute(op, NodeArgs::floats(&views, &mut outputs), &mut ws, &mut scratch, cfg)?;
    Ok(out)
}

fn run_reference(op: &Op, inputs: &[Vec<f32>; 2], shapes: &[Vec<usize>; 2], out_shape: &[usize]) -> Vec<f64> {
    let wide: Vec<Vec<f64>> = inputs.iter().map(|v| v.iter().map(|&e| e as f64).collect()).collect();
    let views = [View { data: &wide[0][..], shape: &shapes[0][..] }, View { data: &wide[1][..], shape: &shapes[1][..] }];
    let mut out = vec![0.0; out_shape.iter().product()];
    let mut outputs = [ViewMut { data: &mut out[..], shape: out_shape }];
    reference::execute(op, NodeArgs::floats(&views, &mut outputs)).unwrap();
    out
}

fn assert_matches(what: &str, fast: &[f32], reference: &[f64]) {
    assert_eq!(fast.len(), reference.len(), "{what}: output length");
    let rms = (reference.iter().map(|v| v * v).sum::<f64>() / reference.len() as f64).sqrt();
    assert!(rms > 0.0, "{what}: the reference output is all zeros, so the comparison proves nothing");
    for (i, (&f, &r)) in fast.iter().zip(reference).enumerate() {
        let allowed = TOLERANCE * (r.abs() + rms);
        assert!((f as f64 - r).abs() <= allowed, "{what}: element {i} is {f}, reference {r} (allowed error {allowed:.2e})");
    }
}

fn check_cases(cfg: CpuConfig, cases: &[Case]) {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for case in cases {
        for (op, shapes, out_shape) in ops(case) {
            let what = format!("{} {case:?}", op.name());
            let inputs = [random(&mut rng, &shapes[0]), random(&mut rng, &shapes[1])];
            let in_shapes: Vec<&[usize]> = shapes.iter().map(Vec::as_slice).collect();
            let workspace = cpu::workspace_elems(&op, &in_shapes, &[&out_shape]);
            let fast = run_fast(&op, &inputs, &shapes, &out_shape, workspace, cfg).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_matches(&what, &fast, &run_reference(&op, &inputs, &shapes, &out_shape));
        }
    }
}

#[test]
fn fast_conv_kernels_match_the_reference() {
    check_cases(CpuConfig::default(), CASES);
}

#[test]
fn fast_conv_kernels_match_the_reference_with_threads() {
    // gemm parallelises internally when asked; the result must not depend on it.
    check_cases(CpuConfig { threads: 4 }, &CASES[CASES.len() - 3..]);
}

#[test]
fn only_strided_input_gradients_need_a_workspace() {
    let sizes = |case: &Case| -> Vec<usize> {
        ops(case)
            .iter()
            .map(|(op, shapes, out)| {
                let in_shapes: Vec<&[usize]> = shapes.iter().map(Vec::as_slice).collect();
                cpu::workspace_elems(op, &in_shapes, &[out])
            })
            .collect()
    };
    assert_eq!(sizes(&CASES[0]), [0; 4], "pointwise");
    assert_eq!(sizes(&CASES[1]), [0; 4], "grouped pointwise");
    assert_eq!(sizes(&CASES[16]), [0; 4], "depthwise");
    // im2col convolutions pack gemm's slivers straight from the tensors, and a stride-1 input
    // gradient is a forward pass with flipped weights: no workspace at stride 1.
    assert_eq!(sizes(&CASES[4]), [0; 4], "3x3 im2col, stride 1");
    // A strided input gradient scatters column matrices (col2im): ungrouped, every sample's
    // (C * KH * KW) x (HO * WO) at once (2 samples, 6 x 7 outputs); grouped, one sample and
    // group's (1 sample, 2 input channels per group, 3 x 5 outputs).
    assert_eq!(sizes(&CASES[5]), [0, 2 * 5 * 3 * 3 * 6 * 7, 0, 0], "3x3 im2col, stride 2");
    assert_eq!(sizes(&CASES[10]), [0, 2 * 3 * 3 * 3 * 5, 0, 0], "grouped 3x3 im2col, stride 2");
}

#[test]
fn a_too_small_workspace_is_an_error() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    for (op, shapes, out_shape) in ops(&CASES[5]) {
        let inputs = [random(&mut rng, &shapes[0]), random(&mut rng, &shapes[1])];
        let in_shapes: Vec<&[usize]> = shapes.iter().map(Vec::as_slice).collect();
        let workspace = cpu::workspace_elems(&op, &in_shapes, &[&out_shape]);
        // Only the strided input gradient has one (`only_strided_input_gradients_need_a_workspace`).
        let is_grad_input = matches!(op, Op::Conv(ConvOp::Conv2dGradInput { .. }));
        assert_eq!(workspace > 0, is_grad_input, "{}: workspace {workspace}", op.name());
        if workspace == 0 {
            continue;
        }
        let result = run_fast(&op, &inputs, &shapes, &out_shape, workspace - 1, CpuConfig::default());
        assert!(matches!(result, Err(KernelError::Invalid { .. })), "{}: {result:?}", op.name());
    }
}

#[test]
fn a_too_small_scratch_is_an_error() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for (op, shapes, out_shape) in ops(&CASES[5]) {
        let inputs = [random(&mut rng, &shapes[0]), random(&mut rng, &shapes[1])];
        let in_shapes: Vec<&[usize]> = shapes.iter().map(Vec::as_slice).collect();
        let cfg = CpuConfig::default();
        let (workspace, scratch) =
            (cpu::workspace_elems(&op, &in_shapes, &[&out_shape]), cpu::scratch_elems(&op, &in_shapes, &[&out_shape], cfg));
        assert!(scratch > 0, "{}: this case runs gemm", op.name());
        let views = [View { data: &inputs[0][..], shape: &shapes[0][..] }, View { data: &inputs[1][..], shape: &shapes[1][..] }];
        let mut out = vec![0.0; out_shape.iter().product()];
        let (mut ws, mut pack) = (vec![0.0; workspace], vec![0.0; scratch - 1]);
        let mut outputs = [ViewMut { data: &mut out[..], shape: &out_shape[..] }];
        let result = cpu::execute(&op, NodeArgs::floats(&views, &mut outputs), &mut ws, &mut pack, cfg);
        assert!(matches!(result, Err(KernelError::Invalid { .. })), "{}: {result:?}", op.name());
    }
}

/// Convolutions that take Winograd (ungrouped 3x3, stride 1, at least 16 input and output
/// channels, at least 256 2x2 output tiles): F(4x4, 3x3) where the output plane is 16x16 or
/// more, else F(2x2, 3x3) (the 15-row and 13x12 ones): odd
/// output sizes (partial tiles at the right and bottom edges), padding 0 (whose input gradient
/// has padding 2) and asymmetric padding, channel counts that are not multiples of gemm's
/// register tile, and a batch whose tile rows take several blocks, one of them starting and
/// ending in the middle of a sample.
const WINOGRAD_CASES: &[Case] = &[
    case(4, 17, [23, 25], 19, [3, 3], [1, 1], [1; 4], [1, 1], 1),
    case(8, 17, [13, 12], 19, [3, 3], [1, 1], [1; 4], [1, 1], 1),
    case(2, 16, [33, 34], 20, [3, 3], [1, 1], [0; 4], [1, 1], 1),
    case(4, 24, [16, 15], 16, [3, 3], [1, 1], [0, 2, 1, 1], [1, 1], 1),
    case(3, 32, [30, 30], 32, [3, 3], [1, 1], [1; 4], [1, 1], 1),
];

/// Winograd's own bound, tighter than [`TOLERANCE`]: every element within `1e-5 * rms(reference)`
/// of the f64 reference. Its transforms add and subtract inputs and weights (and halve the
/// weights) before the products, so an element's rounding error is a few ulps of terms of the
/// size of the inputs and weights summed over `9 * C` products: measured at most 1.7e-6 of the
/// RMS on these cases (the im2col weight gradient's, checked the same way, is up to 2.2e-6). A
/// wrong tap or tile moves elements by about the RMS, a wrong transform coefficient in its
/// fourth digit by about 1e-4 of it.
const WINOGRAD_TOLERANCE: f64 = 1e-5;

/// F(4x4, 3x3)'s bound: every element within `5e-5 * rms(reference)`. Its transforms multiply
/// by up to 8 (and the weights' divide by 6 and 24), so the rounding of one element reaches
/// 3.7e-5 of the RMS on these cases (about 20x F(2x2)'s; its RMS error, 4-7x im2col's, is
/// bounded in `winograd_forward_rounding` in `engine/tests/fast_kernels.rs`, which a wrong
/// coefficient moves far past its bound).
const WINOGRAD4_TOLERANCE: f64 = 5e-5;

fn assert_close_to_rms(what: &str, fast: &[f32], reference: &[f64], tolerance: f64) {
    let rms = (reference.iter().map(|v| v * v).sum::<f64>() / reference.len() as f64).sqrt();
    let worst = fast.iter().zip(reference).map(|(&f, &r)| (f as f64 - r).abs()).fold(0.0, f64::max);
    assert!(worst <= tolerance * rms, "{what}: error {worst:.3e} is {:.3e} of the RMS", worst / rms);
}

/// One node to check: the op, its float inputs with their shapes, its packed mask, its output shape.
type Run<'a> = (&'a Op, Vec<(&'a [f32], &'a [usize])>, Option<&'a [u8]>, &'a [usize]);

#[test]
fn winograd_convolutions_match_the_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    for case in WINOGRAD_CASES {
        let c = case.conv;
        let [forward, grad_input, grad_weight, grad_weight_rows] = ops(case);
        // Only Winograd gives a stride-1 forward pass or input gradient a workspace.
        for (op, shapes, out) in [&forward, &grad_input] {
            let in_shapes: Vec<&[usize]> = shapes.iter().map(Vec::as_slice).collect();
            assert!(cpu::workspace_elems(op, &in_shapes, &[out]) > 0, "{} {case:?} does not take Winograd", op.name());
        }
        let (xs, ws, ys) = (forward.1[0].clone(), forward.1[1].clone(), forward.2.clone());
        let (x, w, dy, b) = (random(&mut rng, &xs), random(&mut rng, &ws), random(&mut rng, &ys), random(&mut rng, &[case.o]));
        // A ReLU6 mask over values on both sides of its kinks.
        let v: Vec<f32> = random(&mut rng, &xs).iter().map(|v| v * 8.0).collect();
        let mut bits = vec![0u8; packed_shape(v.len())[0]];
        mask::pack(&MaskKind::Clip(Clip { min: 0.0, max: 6.0 }), &v, &mut bits);
        let fused: Op = ConvOp::Conv2dBiasAct { conv: c, act: Activation::Relu }.into();
        let masked: Op = ConvOp::Conv2dGradInputMasked { conv: c, input_hw: case.hw }.into();
        let bias_shape = vec![case.o];
        let runs: [Run; 6] = [
            (&forward.0, vec![(&x, &xs), (&w, &ws)], None, &ys),
            (&fused, vec![(&x, &xs), (&w, &ws), (&b, &bias_shape)], None, &ys),
            (&grad_input.0, vec![(&dy, &ys), (&w, &ws)], None, &xs),
            (&masked, vec![(&dy, &ys), (&w, &ws)], Some(&bits), &xs),
            (&grad_weight.0, vec![(&dy, &ys), (&x, &xs)], None, &ws),
            (&grad_weight_rows.0, vec![(&dy, &ys), (&x, &xs)], None, &grad_weight_rows.2),
        ];
        for (op, inputs, mask, out_shape) in runs {
            // F(4x4) computes the convolutions whose output (of the forward pass, of the input
            // gradient's convolution, or whose gradient the weight gradient takes) is 16x16 or
            // more.
            let weight_gradient = matches!(op, Op::Conv(ConvOp::Conv2dGradWeight { .. } | ConvOp::Conv2dGradWeightRows { .. }));
            let plane = if weight_gradient { &ys } else { out_shape };
            let f4 = plane[2] >= 16 && plane[3] >= 16;
            let tolerance = if f4 { WINOGRAD4_TOLERANCE } else { WINOGRAD_TOLERANCE };
            let want = run_with_mask(op, &inputs, mask, out_shape, None);
            for threads in [1, 3] {
                let what = format!("{} {case:?}, {threads} threads", op.name());
                let got = run_with_mask(op, &inputs, mask, out_shape, Some(CpuConfig { threads }));
                let got: Vec<f32> = got.iter().map(|&v| v as f32).collect();
                assert_matches(&what, &got, &want);
                assert_close_to_rms(&what, &got, &want, tolerance);
            }
        }
    }
}

/// One node with float inputs and an optional packed mask, on the fast kernels (`Some`, in f32,
/// output and workspace filled with NaN first) or the reference kernels in f64 (`None`).
fn run_with_mask(op: &Op, inputs: &[(&[f32], &[usize])], bits: Option<&[u8]>, out_shape: &[usize], fast: Option<CpuConfig>) -> Vec<f64> {
    let bits_shape = bits.map(|b| vec![b.len()]).unwrap_or_default();
    let bool_views: Vec<View<u8>> = bits.iter().map(|b| View { data: b, shape: &bits_shape }).collect();
    let shapes: Vec<&[usize]> = inputs.iter().map(|(_, s)| *s).collect();
    match fast {
        Some(cfg) => {
            let views: Vec<View<f32>> = inputs.iter().map(|&(data, shape)| View { data, shape }).collect();
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
            let mut ws = vec![f32::NAN; cpu::workspace_elems(op, &shapes, &[out_shape])];
            let mut scratch = vec![f32::NAN; cpu::scratch_elems(op, &shapes, &[out_shape], cfg)];
            cpu::execute(op, args, &mut ws, &mut scratch, cfg).unwrap_or_else(|e| panic!("{}: {e}", op.name()));
            out.iter().map(|&v| v as f64).collect()
        }
        None => {
            let wide: Vec<Vec<f64>> = inputs.iter().map(|(d, _)| d.iter().map(|&e| e as f64).collect()).collect();
            let views: Vec<View<f64>> = wide.iter().zip(&shapes).map(|(data, &shape)| View { data, shape }).collect();
            let mut out = vec![0.0; out_shape.iter().product()];
            let mut outputs = [ViewMut { data: &mut out[..], shape: out_shape }];
            let args = NodeArgs {
                inputs: &views,
                int_inputs: &[],
                bool_inputs: &bool_views,
                outputs: &mut outputs,
                int_outputs: &mut [],
                bool_outputs: &mut [],
            };
            reference::execute(op, args).unwrap();
            out
        }
    }
}
