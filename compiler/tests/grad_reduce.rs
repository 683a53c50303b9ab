//! Gradient checks of the reduce family (reductions, Softmax, LogSoftmax): each rule's backward
//! nodes, evaluated in f64, against central finite differences of the forward op, on odd shapes.

use pock_compiler::gradcheck::{assert_close, check_op, CaseInput};
use pock_engine::ops::{Op, Reduce, ReduceOp};

const TOLERANCE: f64 = 1e-6;

fn float(shape: &[usize]) -> CaseInput {
    CaseInput::Float(shape.to_vec())
}

fn check(what: &str, op: impl Into<Op>, inputs: &[CaseInput], seed: u64) {
    let checks = check_op(op, inputs, seed).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_close(what, &checks, TOLERANCE);
}

fn reduce(axes: &[usize], keepdims: bool) -> Reduce {
    Reduce { axes: axes.to_vec(), keepdims }
}

/// Axis sets that reduce the first, a middle, the last, non-adjacent and all axes of a rank-3
/// input, each with and without keepdims.
const AXES: &[&[usize]] = &[&[0], &[1], &[2], &[0, 2], &[0, 1, 2]];

#[test]
fn reduce_sum_and_mean() {
    for (i, axes) in AXES.iter().enumerate() {
        for keepdims in [false, true] {
            let seed = 100 + 2 * i as u64 + keepdims as u64;
            check(
                &format!("ReduceSum {axes:?} keepdims={keepdims}"),
                ReduceOp::ReduceSum(reduce(axes, keepdims)),
                &[float(&[3, 5, 2])],
                seed,
            );
            check(
                &format!("ReduceMean {axes:?} keepdims={keepdims}"),
                ReduceOp::ReduceMean(reduce(axes, keepdims)),
                &[float(&[3, 5, 2])],
                seed + 50,
            );
        }
    }
}

#[test]
fn reduce_max_without_ties() {
    // Random inputs have no ties, so the maximum is differentiable and the check is exact.
    for (i, axes) in AXES.iter().enumerate() {
        for keepdims in [false, true] {
            let seed = 200 + 2 * i as u64 + keepdims as u64;
            check(
                &format!("ReduceMax {axes:?} keepdims={keepdims}"),
                ReduceOp::ReduceMax(reduce(axes, keepdims)),
                &[float(&[3, 5, 2])],
                seed,
            );
        }
    }
}

#[test]
fn softmax_and_log_softmax_over_every_axis() {
    for axis in 0..3 {
        let seed = 300 + axis as u64;
        check(&format!("Softmax axis {axis}"), ReduceOp::Softmax { axis }, &[float(&[3, 4, 5])], seed);
        check(&format!("LogSoftmax axis {axis}"), ReduceOp::LogSoftmax { axis }, &[float(&[3, 4, 5])], seed + 10);
    }
    // Rank 1 and rank 4 (attention scores [B, H, T, T] over the last axis).
    check("Softmax rank 1", ReduceOp::Softmax { axis: 0 }, &[float(&[7])], 320);
    check("Softmax rank 4", ReduceOp::Softmax { axis: 3 }, &[float(&[2, 3, 3, 5])], 321);
    check("LogSoftmax rank 4", ReduceOp::LogSoftmax { axis: 3 }, &[float(&[2, 1, 3, 5])], 322);
}
