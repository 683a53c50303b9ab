//! Gradient checks of the convolution, pooling and batch-norm gradient rules: each rule's
//! backward nodes, evaluated in f64, against central finite differences of the forward op. Also
//! checks that the rules emit only the gradients asked for, and the ops' flop counts.

use pock_compiler::gradcheck::{assert_close, check_op, CaseInput};
use pock_compiler::ir::{DType, Graph, Phase, Program, Role};
use pock_compiler::ops::{flops, gradient, GradCtx};
use pock_engine::ops::{BatchNorm, Conv2d, ConvOp, NormOp, Op, Pool2d, PoolOp};

const TOLERANCE: f64 = 1e-6;

fn float(shape: &[usize]) -> CaseInput {
    CaseInput::Float(shape.to_vec())
}

fn check(what: &str, op: impl Into<Op>, inputs: &[CaseInput], seed: u64) {
    let checks = check_op(op, inputs, seed).unwrap_or_else(|e| panic!("{what}: {e}"));
    let differentiated = inputs.iter().filter(|i| matches!(i, CaseInput::Float(_) | CaseInput::Positive(_))).count();
    assert_eq!(checks.len(), differentiated, "{what}: every differentiated input is checked");
    assert_close(what, &checks, TOLERANCE);
}

fn conv(stride: [usize; 2], padding: [usize; 4], dilation: [usize; 2], groups: usize) -> Conv2d {
    Conv2d { stride, padding, dilation, groups }
}

/// Checks dx and dw of a convolution of `x` (NCHW) with `w` (`[O, C/groups, KH, KW]`).
fn check_conv(what: &str, c: Conv2d, x: [usize; 4], w: [usize; 4], seed: u64) {
    check(what, ConvOp::Conv2d(c), &[float(&x), float(&w)], seed);
}

#[test]
fn conv2d_plain_3x3_padded() {
    check_conv("Conv2d 3x3 pad 1", conv([1, 1], [1; 4], [1, 1], 1), [2, 3, 5, 5], [4, 3, 3, 3], 101);
}

#[test]
fn conv2d_strided() {
    // 6 is even, so with stride 2 the last input row and column are read by no window of a 3x3
    // kernel without padding; their gradient must be exactly zero.
    check_conv("Conv2d stride 2", conv([2, 2], [0; 4], [1, 1], 1), [2, 3, 6, 6], [4, 3, 3, 3], 102);
    check_conv("Conv2d stride (2, 1) pad 1", conv([2, 1], [1; 4], [1, 1], 1), [2, 2, 5, 6], [3, 2, 3, 3], 103);
}

#[test]
fn conv2d_dilated() {
    check_conv("Conv2d dilation 2", conv([1, 1], [1; 4], [2, 2], 1), [2, 3, 7, 7], [2, 3, 3, 3], 104);
    check_conv("Conv2d dilation (2, 1) stride 2", conv([2, 2], [2, 1, 2, 1], [2, 1], 1), [1, 2, 6, 5], [3, 2, 3, 2], 105);
}

#[test]
fn conv2d_asymmetric_padding() {
    // [top, left, bottom, right] all different, with a non-square kernel.
    check_conv("Conv2d asymmetric pad", conv([1, 1], [0, 2, 1, 1], [1, 1], 1), [2, 3, 5, 6], [2, 3, 3, 2], 106);
    check_conv("Conv2d asymmetric pad stride 2", conv([2, 2], [2, 0, 1, 3], [1, 1], 1), [1, 2, 6, 5], [3, 2, 3, 3], 107);
}

#[test]
fn conv2d_grouped() {
    check_conv("Conv2d groups 2", conv([1, 1], [1; 4], [1, 1], 2), [2, 4, 5, 5], [6, 2, 3, 3], 108);
}

#[test]
fn conv2d_depthwise() {
    check_conv("Conv2d depthwise", conv([1, 1], [1; 4], [1, 1], 4), [2, 4, 5, 5], [4, 1, 3, 3], 109);
    // A channel multiplier of 2: two output channels per input channel.
    check_conv("Conv2d depthwise x2 stride 2", conv([2, 2], [1; 4], [1, 1], 3), [2, 3, 6, 6], [6, 1, 3, 3], 110);
}

#[test]
fn conv2d_pointwise() {
    check_conv("Conv2d 1x1", conv([1, 1], [0; 4], [1, 1], 1), [2, 4, 5, 5], [3, 4, 1, 1], 111);
    check_conv("Conv2d 1x1 stride 2", conv([2, 2], [0; 4], [1, 1], 1), [2, 4, 5, 5], [3, 4, 1, 1], 112);
}

#[test]
fn batch_norm_train_rank_4_and_rank_2() {
    let b = BatchNorm { eps: 1e-5, momentum: 0.1 };
    check("BatchNormTrain rank 4", NormOp::BatchNormTrain(b), &[float(&[2, 3, 4, 5]), float(&[3]), float(&[3])], 201);
    check("BatchNormTrain rank 2", NormOp::BatchNormTrain(b), &[float(&[6, 4]), float(&[4]), float(&[4])], 202);
}

#[test]
fn batch_norm_infer() {
    let b = BatchNorm { eps: 1e-3, momentum: 0.1 };
    let running_mean = CaseInput::Fixed(vec![3], vec![0.2, -0.5, 0.0]);
    let running_var = CaseInput::Fixed(vec![3], vec![0.5, 1.5, 0.8]);
    check(
        "BatchNormInfer rank 4",
        NormOp::BatchNormInfer(b),
        &[float(&[2, 3, 4, 4]), float(&[3]), float(&[3]), running_mean.clone(), running_var.clone()],
        203,
    );
    check("BatchNormInfer rank 2", NormOp::BatchNormInfer(b), &[float(&[5, 3]), float(&[3]), float(&[3]), running_mean, running_var], 204);
}

#[test]
fn global_avg_pool() {
    check("GlobalAvgPool", PoolOp::GlobalAvgPool, &[float(&[2, 3, 5, 6])], 301);
}

#[test]
fn avg_pool2d_padding_and_divisor() {
    for count_include_pad in [true, false] {
        let unpadded = Pool2d { kernel: [2, 2], stride: [2, 2], padding: [0; 4], count_include_pad };
        check(&format!("AvgPool2d 2x2/2 count_include_pad={count_include_pad}"), PoolOp::AvgPool2d(unpadded), &[float(&[2, 3, 6, 6])], 302);
        let padded = Pool2d { kernel: [3, 3], stride: [2, 2], padding: [1, 1, 1, 1], count_include_pad };
        check(
            &format!("AvgPool2d 3x3/2 pad 1 count_include_pad={count_include_pad}"),
            PoolOp::AvgPool2d(padded),
            &[float(&[2, 3, 5, 6])],
            303,
        );
        // Asymmetric padding: border windows of the two sides hold different numbers of padded
        // elements, which only matters when count_include_pad is off.
        let asymmetric = Pool2d { kernel: [3, 2], stride: [1, 2], padding: [2, 0, 0, 1], count_include_pad };
        check(
            &format!("AvgPool2d asymmetric pad count_include_pad={count_include_pad}"),
            PoolOp::AvgPool2d(asymmetric),
            &[float(&[2, 2, 5, 5])],
            304,
        );
    }
}

#[test]
fn max_pool2d_overlapping_and_disjoint_windows() {
    let overlapping = Pool2d { kernel: [3, 3], stride: [2, 2], padding: [1; 4], count_include_pad: true };
    check("MaxPool2d 3x3/2 pad 1", PoolOp::MaxPool2d(overlapping), &[float(&[2, 3, 6, 6])], 401);
    let disjoint = Pool2d { kernel: [2, 2], stride: [2, 2], padding: [0; 4], count_include_pad: true };
    check("MaxPool2d 2x2/2", PoolOp::MaxPool2d(disjoint), &[float(&[2, 3, 6, 5])], 402);
}

/// Runs `op`'s gradient rule on fresh inputs of the given shapes with `needs`, and returns the
/// gradients and the ops of the backward nodes it emitted.
fn rule(op: impl Into<Op>, shapes: &[&[usize]], needs: &[bool]) -> (Vec<bool>, Vec<&'static str>) {
    let op = op.into();
    let mut g = Graph::new();
    let inputs: Vec<_> =
        shapes.iter().enumerate().map(|(i, s)| g.parameter(format!("in{i}"), s.to_vec(), vec![0.5; s.iter().product()])).collect();
    let in_shapes: Vec<&[usize]> = inputs.iter().map(|&t| g.shape(t)).collect();
    let out_shapes = op.output_shapes(&in_shapes).unwrap();
    let inplace: Vec<_> =
        op.inplace_outputs().map(|i| g.input(format!("state{i}"), out_shapes[i].clone(), DType::F32, Role::RunningStat)).collect();
    let outputs = g.emit_inplace("fwd", op, &inputs, &inplace, Phase::Forward, Program::Train).unwrap();
    let dy = g.input("dy", g.shape(outputs[0]).to_vec(), DType::F32, Role::Input);
    let forward = g.nodes[0].clone();
    let mut dys = vec![None; forward.outputs.len()];
    dys[0] = Some(dy);
    let grads = gradient(&mut GradCtx::new(&mut g, "fwd"), &forward, &dys, needs).unwrap();
    g.validate().unwrap();
    (grads.iter().map(Option::is_some).collect(), g.nodes[1..].iter().map(|n| n.op.name()).collect())
}

#[test]
fn rules_emit_only_the_gradients_asked_for() {
    let c = ConvOp::Conv2d(conv([1, 1], [1; 4], [1, 1], 1));
    let (x, w): (&[usize], &[usize]) = (&[2, 3, 5, 5], &[4, 3, 3, 3]);
    assert_eq!(rule(c.clone(), &[x, w], &[true, true]), (vec![true, true], vec!["Conv2dGradInput", "Conv2dGradWeight"]));
    // A first layer: the image needs no gradient, so no Conv2dGradInput is computed.
    assert_eq!(rule(c.clone(), &[x, w], &[false, true]), (vec![false, true], vec!["Conv2dGradWeight"]));
    // A frozen layer below trainable ones.
    assert_eq!(rule(c.clone(), &[x, w], &[true, false]), (vec![true, false], vec!["Conv2dGradInput"]));
    assert_eq!(rule(c, &[x, w], &[false, false]), (vec![false, false], vec![]));

    let b = BatchNorm { eps: 1e-5, momentum: 0.1 };
    let (x, ch): (&[usize], &[usize]) = (&[2, 3, 4, 4], &[3]);
    assert_eq!(
        rule(NormOp::BatchNormTrain(b), &[x, ch, ch], &[false, true, false]),
        (vec![false, true, false], vec!["BatchNormTrainGrad"])
    );
    assert_eq!(rule(NormOp::BatchNormTrain(b), &[x, ch, ch], &[false, false, false]), (vec![false, false, false], vec![]));
    // Running statistics never get a gradient, even if asked.
    assert_eq!(
        rule(NormOp::BatchNormInfer(b), &[x, ch, ch, ch, ch], &[true; 5]),
        (vec![true, true, true, false, false], vec!["BatchNormInferGrad"])
    );

    let p = Pool2d { kernel: [2, 2], stride: [2, 2], padding: [0; 4], count_include_pad: true };
    assert_eq!(rule(PoolOp::MaxPool2d(p), &[x], &[true]), (vec![true], vec!["MaxPool2dGrad"]));
    assert_eq!(rule(PoolOp::AvgPool2d(p), &[x], &[false]), (vec![false], vec![]));
}

#[test]
fn conv_flops_count_one_multiply_add_per_tap_as_two() {
    // y is [2, 6, 4, 4]; each output element sums over C/groups * KH * KW = 2 * 3 * 3 taps.
    let c = conv([1, 1], [1; 4], [1, 1], 2);
    let (x, w, y): (&[usize], &[usize], &[usize]) = (&[2, 4, 4, 4], &[6, 2, 3, 3], &[2, 6, 4, 4]);
    let expected = 2 * (2 * 6 * 4 * 4) * (2 * 3 * 3);
    assert_eq!(flops(&ConvOp::Conv2d(c).into(), &[x, w], &[y]), expected);
    assert_eq!(flops(&ConvOp::Conv2dGradInput { conv: c, input_hw: [4, 4] }.into(), &[y, w], &[x]), expected);
    assert_eq!(flops(&ConvOp::Conv2dGradWeight { conv: c, kernel_hw: [3, 3] }.into(), &[y, x], &[w]), expected);
}
