//! Gradient checks of the movement family: each rule's backward nodes, evaluated in f64, against
//! central finite differences of the forward op, on odd shapes.

use pock_compiler::gradcheck::{assert_close, check_op, CaseInput};
use pock_engine::ops::{MoveOp, Op, Slice};

const TOLERANCE: f64 = 1e-6;

fn float(shape: &[usize]) -> CaseInput {
    CaseInput::Float(shape.to_vec())
}

fn check(what: &str, op: impl Into<Op>, inputs: &[CaseInput], seed: u64) {
    let checks = check_op(op, inputs, seed).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_close(what, &checks, TOLERANCE);
}

#[test]
fn transpose() {
    check("Transpose [2,0,1]", MoveOp::Transpose { perm: vec![2, 0, 1] }, &[float(&[2, 3, 5])], 401);
    check("Transpose attention", MoveOp::Transpose { perm: vec![0, 2, 1, 3] }, &[float(&[2, 3, 4, 5])], 402);
}

#[test]
fn concat_of_three_inputs() {
    for axis in 0..3 {
        // Input i has size i + 1 along `axis` and agrees with the others elsewhere.
        let inputs: Vec<CaseInput> = (0..3)
            .map(|i| {
                let mut s = [2, 3, 4];
                s[axis] = i + 1;
                float(&s)
            })
            .collect();
        let checks = check_op(MoveOp::Concat { axis }, &inputs, 410 + axis as u64).unwrap();
        assert_eq!(checks.len(), 3, "every input is checked");
        assert_close(&format!("Concat axis {axis}"), &checks, TOLERANCE);
    }
}

#[test]
fn split_with_an_undifferentiated_piece() {
    // The checker differentiates output 0 only, so the other pieces take the zeros path.
    check("Split axis 1", MoveOp::Split { axis: 1, sizes: vec![2, 1, 4] }, &[float(&[3, 7, 2])], 421);
    check("Split axis 0", MoveOp::Split { axis: 0, sizes: vec![3, 2] }, &[float(&[5, 3])], 422);
}

#[test]
fn slice_positive_and_negative_steps() {
    let forward = Slice { axes: vec![0, 2], starts: vec![1, 0], ends: vec![i64::MAX, -1], steps: vec![1, 2] };
    check("Slice steps 1 and 2", MoveOp::Slice(forward), &[float(&[4, 3, 6])], 431);
    let backward = Slice { axes: vec![1], starts: vec![-1], ends: vec![i64::MIN], steps: vec![-2] };
    check("Slice step -2", MoveOp::Slice(backward), &[float(&[3, 7])], 432);
}

#[test]
fn expand_sums_back_over_broadcast_axes() {
    check("Expand [3,1] -> [2,3,4]", MoveOp::Expand { shape: vec![2, 3, 4] }, &[float(&[3, 1])], 441);
    check("Expand [1] -> [5]", MoveOp::Expand { shape: vec![5] }, &[float(&[1])], 442);
    check("Expand [2,1,3] with [4,1]", MoveOp::Expand { shape: vec![4, 1] }, &[float(&[2, 1, 3])], 443);
    check("Expand to the same shape", MoveOp::Expand { shape: vec![3, 2] }, &[float(&[3, 2])], 444);
}

#[test]
fn gather_embedding_and_inner_axis() {
    // An embedding lookup with repeated ids: [vocab 5, dim 3] by ids [2, 4] in [0, 5).
    let checks = check_op(MoveOp::Gather { axis: 0 }, &[float(&[5, 3]), CaseInput::Labels(vec![2, 4], 5)], 451).unwrap();
    assert_eq!(checks.len(), 1, "indices are never differentiated");
    assert_close("Gather axis 0", &checks, TOLERANCE);
    check("Gather axis 1", MoveOp::Gather { axis: 1 }, &[float(&[2, 4, 3]), CaseInput::Labels(vec![5], 4)], 452);
}

#[test]
fn pad_and_trilu() {
    check("Pad", MoveOp::Pad { pads: vec![1, 0, 2, 0, 2, 1], value: 0.5 }, &[float(&[2, 3, 2])], 461);
    check("Trilu upper k=1", MoveOp::Trilu { upper: true, k: 1 }, &[float(&[2, 3, 4])], 462);
    check("Trilu lower k=-1", MoveOp::Trilu { upper: false, k: -1 }, &[float(&[4, 3])], 463);
}
