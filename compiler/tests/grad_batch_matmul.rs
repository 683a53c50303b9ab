//! Gradient checks of BatchMatMul: every transpose combination, with batch axes that broadcast
//! (size 1, missing) on either side, so the sums over broadcast axes are exercised.

use pock_compiler::gradcheck::{assert_close, check_op, CaseInput};
use pock_engine::ops::{MatMul, MatMulOp};

const TOLERANCE: f64 = 1e-6;

/// `(a batch, b batch)` pairs: equal, a broadcast over b's size-1 and missing axes, the reverse,
/// and both plain matrices.
const BATCHES: &[(&[usize], &[usize])] = &[(&[2, 3], &[2, 3]), (&[2, 1], &[3]), (&[], &[2, 3]), (&[3, 1], &[1, 2]), (&[], &[])];

#[test]
fn batch_matmul_broadcasts_and_transposes() {
    let (m, k, n) = (3, 4, 2);
    let mut seed = 500;
    for (a_batch, b_batch) in BATCHES {
        for (trans_a, trans_b) in [(false, false), (true, false), (false, true), (true, true)] {
            let mut a = a_batch.to_vec();
            a.extend(if trans_a { [k, m] } else { [m, k] });
            let mut b = b_batch.to_vec();
            b.extend(if trans_b { [n, k] } else { [k, n] });
            let what = format!("BatchMatMul {a:?} x {b:?} trans_a={trans_a} trans_b={trans_b}");
            seed += 1;
            let op = MatMulOp::BatchMatMul(MatMul { trans_a, trans_b });
            let checks = check_op(op, &[CaseInput::Float(a), CaseInput::Float(b)], seed).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(checks.len(), 2, "{what}: both operands are checked");
            assert_close(&what, &checks, TOLERANCE);
        }
    }
}

#[test]
fn batch_matmul_with_1d_operands() {
    let op = |trans_a, trans_b| MatMulOp::BatchMatMul(MatMul { trans_a, trans_b });
    let cases: &[(&[usize], &[usize], bool, bool)] = &[
        (&[4], &[2, 4, 3], false, false),
        (&[4], &[3, 4], false, true),
        (&[2, 3, 4], &[4], false, false),
        (&[2, 4, 3], &[4], true, false),
        (&[5], &[5], false, false),
    ];
    for (i, &(a, b, trans_a, trans_b)) in cases.iter().enumerate() {
        let what = format!("BatchMatMul {a:?} x {b:?} trans_a={trans_a} trans_b={trans_b}");
        let inputs = [CaseInput::Float(a.to_vec()), CaseInput::Float(b.to_vec())];
        let checks = check_op(op(trans_a, trans_b), &inputs, 560 + i as u64).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(checks.len(), 2, "{what}: both operands are checked");
        assert_close(&what, &checks, TOLERANCE);
    }
}
