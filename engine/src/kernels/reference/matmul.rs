//! Batched matmul: the 2-D kernel applied to each matrix of the broadcast batch.

use super::dense::matmul;
use crate::kernels::{Float, View, ViewMut};
use crate::ops::MatMul;

/// The stored matrix shape of an operand and its number of batch axes: a 1-D `a` is the row
/// `[1, K]` and a 1-D `b` the column `[K, 1]`, with no batch axes (ONNX MatMul).
fn matrix(shape: &[usize], is_a: bool) -> ([usize; 2], usize) {
    match *shape {
        [k] if is_a => ([1, k], 0),
        [k] => ([k, 1], 0),
        _ => {
            let r = shape.len() - 2;
            ([shape[r], shape[r + 1]], r)
        }
    }
}

/// Calls `f(a_t, b_t, y_t)` for every matrix `t` of `y`'s batch, with the matrices of `a` and `b`
/// that numpy broadcasting pairs with it (a size-1 or missing batch axis repeats). A 1-D operand
/// is one matrix (see [`matrix`]); the output axis it drops is size 1 in `y_t`.
pub fn for_each_matrix<T>(a: View<T>, b: View<T>, y: &mut ViewMut<T>, mut f: impl FnMut(View<T>, View<T>, &mut ViewMut<T>)) {
    let ((a_shape, ra), (b_shape, rb)) = (matrix(a.shape, true), matrix(b.shape, false));
    let (a_vec, b_vec) = (a.shape.len() == 1, b.shape.len() == 1);
    let ry = y.shape.len() + usize::from(a_vec) + usize::from(b_vec) - 2;
    let tail = &y.shape[ry..];
    let y_shape = [if a_vec { 1 } else { tail[0] }, if b_vec { 1 } else { tail[tail.len() - 1] }];
    let (a_mat, b_mat, y_mat) = (a_shape[0] * a_shape[1], b_shape[0] * b_shape[1], y_shape[0] * y_shape[1]);
    let batch: usize = y.shape[..ry].iter().product();
    for t in 0..batch {
        let (mut rest, mut ai, mut bi, mut a_step, mut b_step) = (t, 0, 0, 1, 1);
        for k in (0..ry).rev() {
            let c = rest % y.shape[k];
            rest /= y.shape[k];
            // Batch axis `k` of `y` is axis `k - (ry - ra)` of `a` when `a` has it.
            if let Some(ka) = (k + ra).checked_sub(ry) {
                if a.shape[ka] != 1 {
                    ai += c * a_step;
                }
                a_step *= a.shape[ka];
            }
            if let Some(kb) = (k + rb).checked_sub(ry) {
                if b.shape[kb] != 1 {
                    bi += c * b_step;
                }
                b_step *= b.shape[kb];
            }
        }
        let a_t = View { data: &a.data[ai * a_mat..(ai + 1) * a_mat], shape: &a_shape };
        let b_t = View { data: &b.data[bi * b_mat..(bi + 1) * b_mat], shape: &b_shape };
        let mut y_t = ViewMut { data: &mut y.data[t * y_mat..(t + 1) * y_mat], shape: &y_shape };
        f(a_t, b_t, &mut y_t);
    }
}

/// `y[t] = op(a[t]) @ op(b[t])` for every matrix `t` of the broadcast batch.
pub fn batch_matmul<T: Float>(m: &MatMul, a: View<T>, b: View<T>, y: &mut ViewMut<T>) {
    for_each_matrix(a, b, y, |a, b, y| matmul(m, a, b, y));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_axes_broadcast_and_repeat() {
        // a [2, 1, 2] = two row vectors [1, 2] and [3, 4]; b [3, 2, 1] = three column vectors.
        // y [2, 3, 1, 1]: y[i][j] = a[i] . b[j].
        let a = [1.0, 2.0, 3.0, 4.0];
        let b = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
        let mut y = [0.0f64; 6];
        let m = MatMul { trans_a: false, trans_b: false };
        batch_matmul(
            &m,
            View { data: &a, shape: &[2, 1, 1, 2] },
            View { data: &b, shape: &[3, 2, 1] },
            &mut ViewMut { data: &mut y, shape: &[2, 3, 1, 1] },
        );
        assert_eq!(y, [1.0, 2.0, 3.0, 3.0, 4.0, 7.0]);
        // A 2-D b is shared by every matrix of a; b stored transposed.
        let mut y = [0.0f64; 4];
        let m = MatMul { trans_a: false, trans_b: true };
        batch_matmul(
            &m,
            View { data: &a, shape: &[2, 1, 2] },
            View { data: &[1.0, 1.0, 0.0, 2.0], shape: &[2, 2] },
            &mut ViewMut { data: &mut y, shape: &[2, 1, 2] },
        );
        assert_eq!(y, [3.0, 4.0, 7.0, 8.0]);
        // 1-D operands: a vector times a batch of matrices, and a batch of matrices times a vector.
        let mut y = [0.0f64; 2];
        let m = MatMul { trans_a: false, trans_b: false };
        batch_matmul(
            &m,
            View { data: &[1.0, 2.0], shape: &[2] },
            View { data: &a, shape: &[2, 2, 1] },
            &mut ViewMut { data: &mut y, shape: &[2, 1] },
        );
        assert_eq!(y, [5.0, 11.0]);
        batch_matmul(
            &m,
            View { data: &a, shape: &[2, 1, 2] },
            View { data: &[1.0, 2.0], shape: &[2] },
            &mut ViewMut { data: &mut y, shape: &[2, 1] },
        );
        assert_eq!(y, [5.0, 11.0]);
        let mut y = [0.0f64; 1];
        batch_matmul(
            &m,
            View { data: &[1.0, 2.0], shape: &[2] },
            View { data: &[3.0, 4.0], shape: &[2] },
            &mut ViewMut { data: &mut y, shape: &[] },
        );
        assert_eq!(y, [11.0]);
    }
}
