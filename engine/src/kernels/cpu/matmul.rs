//! 2-D matmul through [`super::sgemm`].

use super::{sgemm, Mat};
use crate::kernels::{View, ViewMut};
use crate::ops::MatMul;

/// The logical matrix `op(t)` (`rows x cols`) over the row-major storage of a 2-D tensor `t`. A
/// transposed operand is described by swapped strides, so gemm reads it in place without a copy.
fn operand(data: &[f32], rows: usize, cols: usize, transposed: bool) -> Mat<'_> {
    if transposed {
        // Stored `[cols, rows]`: logical element (i, j) is stored at (j, i).
        Mat { data, rows, cols, row_stride: 1, col_stride: rows }
    } else {
        Mat { data, rows, cols, row_stride: cols, col_stride: 1 }
    }
}

/// `(M, K, N)` of `op(a) @ op(b)` for the stored operand shapes (2-D, or 1-D as ONNX MatMul: a
/// row `a`, a column `b`; batch axes, if any, lead and are ignored).
pub fn dims(m: &MatMul, a: &[usize], b: &[usize]) -> (usize, usize, usize) {
    let matrix = |s: &[usize], is_a: bool| match *s {
        [k] if is_a => [1, k],
        [k] => [k, 1],
        [.., r, c] => [r, c],
        [] => [0, 0],
    };
    let (a, b) = (matrix(a, true), matrix(b, false));
    let (rows, inner) = if m.trans_a { (a[1], a[0]) } else { (a[0], a[1]) };
    let cols = if m.trans_b { b[0] } else { b[1] };
    (rows, inner, cols)
}

/// `y = op(a) @ op(b)`, `y` row-major `[M, N]`; `pack` is gemm's packing buffer.
pub fn matmul(m: &MatMul, a: View<f32>, b: View<f32>, y: &mut ViewMut<f32>, threads: usize, pack: &mut [f32]) {
    let (rows, cols) = (y.shape[0], y.shape[1]);
    let inner = if m.trans_a { a.shape[0] } else { a.shape[1] };
    let lhs = operand(a.data, rows, inner, m.trans_a);
    let rhs = operand(b.data, inner, cols, m.trans_b);
    sgemm(lhs, rhs, y.data, cols, false, threads, pack);
}
