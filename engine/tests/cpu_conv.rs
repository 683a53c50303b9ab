//! The fast f32 convolution kernels (`kernels::cpu`) against the reference kernels run in f64, on
//! random inputs over a table of configurations that reaches every algorithm (pointwise gemm,
//! depthwise loops, im2col + gemm) and every border case of the index arithmetic.

use pock_engine::kernels::cpu::{self, CpuConfig};
use pock_engine::kernels::{reference, KernelError, NodeArgs, View, ViewMut};
use pock_engine::ops::{Conv2d, ConvOp, Op};
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
