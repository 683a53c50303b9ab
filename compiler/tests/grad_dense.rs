//! Gradient checks of the dense, activation, reshape and loss gradient rules: each rule's
//! backward nodes, evaluated in f64, against central finite differences of the forward op.

use pock_compiler::gradcheck::{assert_close, check_op, CaseInput};
use pock_engine::ops::{Clip, CrossEntropy, DenseOp, LossOp, MatMul, Op, Reduction};

const TOLERANCE: f64 = 1e-6;

fn float(shape: &[usize]) -> CaseInput {
    CaseInput::Float(shape.to_vec())
}

fn check(what: &str, op: impl Into<Op>, inputs: &[CaseInput], seed: u64) {
    let checks = check_op(op, inputs, seed).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_close(what, &checks, TOLERANCE);
}

#[test]
fn matmul_all_transpose_combinations() {
    // op(a) is [M, K] = [3, 4] and op(b) is [K, N] = [4, 5]; the stored shapes follow the flags.
    let (m, k, n) = (3, 4, 5);
    for (trans_a, trans_b) in [(false, false), (true, false), (false, true), (true, true)] {
        let a = if trans_a { [k, m] } else { [m, k] };
        let b = if trans_b { [n, k] } else { [k, n] };
        let what = format!("MatMul trans_a={trans_a} trans_b={trans_b}");
        let checks =
            check_op(DenseOp::MatMul(MatMul { trans_a, trans_b }), &[float(&a), float(&b)], 11).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(checks.len(), 2, "{what}: both operands are checked");
        assert_close(&what, &checks, TOLERANCE);
    }
}

#[test]
fn matmul_vector_shapes() {
    // Degenerate sizes (a row vector times a matrix, an outer product) catch swapped strides
    // that square shapes would hide.
    check("MatMul [1,6]x[6,2]", DenseOp::MatMul(MatMul { trans_a: false, trans_b: false }), &[float(&[1, 6]), float(&[6, 2])], 12);
    check("MatMul outer", DenseOp::MatMul(MatMul { trans_a: true, trans_b: false }), &[float(&[1, 4]), float(&[1, 3])], 13);
    check("MatMul Linear", DenseOp::MatMul(MatMul { trans_a: false, trans_b: true }), &[float(&[2, 7]), float(&[3, 7])], 14);
}

#[test]
fn bias_add_rank_2_and_rank_4() {
    check("BiasAdd rank 2", DenseOp::BiasAdd, &[float(&[4, 3]), float(&[3])], 21);
    check("BiasAdd rank 4", DenseOp::BiasAdd, &[float(&[2, 3, 4, 5]), float(&[3])], 22);
}

#[test]
fn add_and_mul() {
    check("Add", DenseOp::Add, &[float(&[3, 4]), float(&[3, 4])], 31);
    check("Mul", DenseOp::Mul, &[float(&[2, 3, 2]), float(&[2, 3, 2])], 32);
}

#[test]
fn relu_and_clip() {
    check("Relu", DenseOp::Relu, &[float(&[5, 7])], 41);
    // Inputs are uniform in [-1, 1], so this clip has elements in all three regions.
    check("Clip", DenseOp::Clip(Clip { min: -0.5, max: 0.5 }), &[float(&[6, 7])], 42);
}

#[test]
fn reshape() {
    check("Reshape", DenseOp::Reshape { shape: vec![6, 4] }, &[float(&[2, 3, 4])], 51);
}

#[test]
fn softmax_cross_entropy_mean_and_per_sample() {
    let inputs = [float(&[5, 4]), CaseInput::Labels(vec![5], 4)];
    check("SoftmaxCrossEntropy Mean", LossOp::SoftmaxCrossEntropy(Reduction::Mean), &inputs, 61);
    check("SoftmaxCrossEntropy PerSample", LossOp::SoftmaxCrossEntropy(Reduction::PerSample), &inputs, 62);
}

#[test]
fn cross_entropy_over_the_last_axis_with_ignored_positions() {
    // Logits [3, 5, 4] with labels [3, 5] in [0, 4). With ignore_index 0 about a quarter of the
    // positions are ignored (seeds chosen so that some are, and no sample has all of them), which
    // checks that ignored positions get no gradient and are left out of the mean; with -100 none is.
    let inputs = [float(&[3, 5, 4]), CaseInput::Labels(vec![3, 5], 4)];
    for (ignore_index, seed) in [(0, 81), (-100, 82)] {
        for reduction in [Reduction::Mean, Reduction::PerSample] {
            let what = format!("CrossEntropy {reduction:?} ignore_index {ignore_index}");
            check(&what, LossOp::CrossEntropy(CrossEntropy { reduction, ignore_index }), &inputs, seed);
        }
    }
    // Rank 2, as the zoo's classifiers.
    let inputs = [float(&[5, 4]), CaseInput::Labels(vec![5], 4)];
    check("CrossEntropy rank 2", LossOp::CrossEntropy(CrossEntropy { reduction: Reduction::Mean, ignore_index: 2 }), &inputs, 83);
}

#[test]
fn mse_mean_and_per_sample() {
    let target: Vec<f32> = (0..12).map(|i| (i as f32 - 6.0) / 5.0).collect();
    let inputs = [float(&[3, 4]), CaseInput::Fixed(vec![3, 4], target)];
    check("Mse Mean", LossOp::Mse(Reduction::Mean), &inputs, 71);
    check("Mse PerSample", LossOp::Mse(Reduction::PerSample), &inputs, 72);
    // A 3-D prediction: PerSample averages over both trailing axes.
    let target: Vec<f32> = (0..12).map(|i| (i as f32) / 12.0).collect();
    check("Mse PerSample rank 3", LossOp::Mse(Reduction::PerSample), &[float(&[2, 3, 2]), CaseInput::Fixed(vec![2, 3, 2], target)], 73);
}

#[test]
fn mse_gradient_with_respect_to_the_target() {
    for (r, seed) in [(Reduction::Mean, 81), (Reduction::PerSample, 82)] {
        let checks = check_op(LossOp::Mse(r), &[float(&[3, 4]), float(&[3, 4])], seed).unwrap();
        assert_eq!(checks.len(), 2);
        assert_close(&format!("Mse {r:?} wrt pred and target"), &checks, TOLERANCE);
    }
}
