//! Broadcasting arithmetic (`Add`, `Sub`, `Mul`, `Div`), `SumTo` and `Transpose` on f32, for the
//! layouts transformers produce: a bias added along the last axes (`[B, T, N] + [N]`), a
//! per-row statistic (`[B, T, N] / [B, T, 1]`), their gradients summed back (`SumTo`), and
//! attention's head transposes. The reference walks every element through an index odometer;
//! here each case is a loop over rows of a 2-D view, split among the pool's threads.
//!
//! Every element is computed with the reference's arithmetic, and every sum adds the same terms
//! in the same order, so results equal the reference's bit for bit. A layout outside these
//! cases returns `false` and the caller runs the reference kernel.

use super::par::for_each_chunk;
use crate::kernels::{View, ViewMut};
use crate::ops::BroadcastOp;

/// Elements a task handles at least, for elementwise rows.
const BLOCK: usize = 1 << 12;

/// How an operand of shape `shape` lines up with an output of shape `out`, read as `[m, n]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// The same shape as the output.
    Same,
    /// A row of `n` values repeated over the `m` rows (broadcast over leading axes).
    Row { m: usize, n: usize },
    /// One value per row, repeated over the `n` columns (broadcast over trailing axes).
    Col { m: usize, n: usize },
}

/// `shape` right-aligned with `out` (leading axes of size 1 added).
fn aligned(shape: &[usize], out: &[usize]) -> Option<[usize; crate::kernels::reference::broadcast::MAX_RANK]> {
    let mut padded = [1usize; crate::kernels::reference::broadcast::MAX_RANK];
    let lead = out.len().checked_sub(shape.len())?;
    if out.len() > padded.len() {
        return None;
    }
    padded[lead..out.len()].copy_from_slice(shape);
    Some(padded)
}

fn layout(shape: &[usize], out: &[usize]) -> Option<Layout> {
    if shape == out {
        return Some(Layout::Same);
    }
    let s = aligned(shape, out)?;
    let s = &s[..out.len()];
    let product = |dims: &[usize]| dims.iter().product::<usize>();
    // One value per row: equal leading axes, then only 1s (a scalar is one row of everything).
    let p = s.iter().zip(out).take_while(|(a, b)| a == b).count();
    if s[p..].iter().all(|&d| d == 1) {
        return Some(Layout::Col { m: product(&out[..p]), n: product(&out[p..]) });
    }
    // A row: only 1s, then equal trailing axes.
    let q = out.len() - s.iter().rev().zip(out.iter().rev()).take_while(|(a, b)| a == b).count();
    if s[..q].iter().all(|&d| d == 1) {
        return Some(Layout::Row { m: product(&out[..q]), n: product(&out[q..]) });
    }
    None
}

/// `y = a op b` with broadcasting, for the layouts above; `false` when the layout is not one.
pub(super) fn binary(op: &BroadcastOp, a: View<'_, f32>, b: View<'_, f32>, y: &mut ViewMut<'_, f32>, threads: usize) -> bool {
    match op {
        BroadcastOp::Add => binary_with(a, b, y, threads, |p, q| p + q),
        BroadcastOp::Sub => binary_with(a, b, y, threads, |p, q| p - q),
        BroadcastOp::Mul => binary_with(a, b, y, threads, |p, q| p * q),
        BroadcastOp::Div => binary_with(a, b, y, threads, |p, q| p / q),
        _ => false,
    }
}

#[inline(always)]
fn binary_with(
    a: View<'_, f32>,
    b: View<'_, f32>,
    y: &mut ViewMut<'_, f32>,
    threads: usize,
    f: impl Fn(f32, f32) -> f32 + Sync + Copy,
) -> bool {
    let (Some(la), Some(lb)) = (layout(a.shape, y.shape), layout(b.shape, y.shape)) else {
        return false;
    };
    if y.data.len() != y.shape.iter().product::<usize>() {
        return false;
    }
    match (la, lb) {
        (Layout::Same, Layout::Same) => {
            if a.data.len() != y.data.len() || b.data.len() != y.data.len() {
                return false;
            }
            for_each_chunk(threads, y.data, BLOCK, BLOCK, |i, ys| {
                let at = i * BLOCK;
                for ((y, &p), &q) in ys.iter_mut().zip(&a.data[at..]).zip(&b.data[at..]) {
                    *y = f(p, q);
                }
            });
            true
        }
        // The full operand first, the broadcast one second, `f`'s order kept.
        (Layout::Same, other) => rows(a.data, b.data, other, y.data, threads, f),
        (other, Layout::Same) => rows(b.data, a.data, other, y.data, threads, move |full, part| f(part, full)),
        _ => false,
    }
}

/// `y[r, j] = f(full[r, j], part[...])` with `part` a row (`Row`) or a column (`Col`).
#[inline(always)]
fn rows(full: &[f32], part: &[f32], layout: Layout, y: &mut [f32], threads: usize, f: impl Fn(f32, f32) -> f32 + Sync) -> bool {
    let (m, n, row) = match layout {
        Layout::Row { m, n } => (m, n, true),
        Layout::Col { m, n } => (m, n, false),
        Layout::Same => return false,
    };
    if n == 0 || full.len() != m * n || y.len() != m * n || part.len() != if row { n } else { m } {
        return n == 0 && y.is_empty();
    }
    for_each_chunk(threads, y, n, n, |r, ys| {
        let xs = &full[r * n..(r + 1) * n];
        if row {
            for ((y, &x), &p) in ys.iter_mut().zip(xs).zip(part) {
                *y = f(x, p);
            }
        } else {
            let p = part[r];
            for (y, &x) in ys.iter_mut().zip(xs) {
                *y = f(x, p);
            }
        }
    });
    true
}

/// `y` = the sum of `x` over the axes `y` broadcasts along, for a `y` that is a row or a column
/// of `x` (see [`Layout`]); `false` otherwise. Each output adds its terms in `x`'s element order,
/// as the reference does.
pub(super) fn sum_to(x: View<'_, f32>, y: &mut ViewMut<'_, f32>, threads: usize) -> bool {
    if x.data.len() != x.shape.iter().product::<usize>() || y.data.len() != y.shape.iter().product::<usize>() {
        return false;
    }
    match layout(y.shape, x.shape) {
        Some(Layout::Same) => {
            y.data.copy_from_slice(x.data);
            true
        }
        Some(Layout::Row { m, n }) => {
            // Columns in blocks; within a block, rows in order.
            const COLS: usize = 256;
            for_each_chunk(threads, y.data, COLS, m * COLS, |c, ys| {
                ys.fill(0.0);
                for r in 0..m {
                    let xs = &x.data[r * n + c * COLS..][..ys.len()];
                    for (y, &v) in ys.iter_mut().zip(xs) {
                        *y += v;
                    }
                }
            });
            true
        }
        Some(Layout::Col { m: _, n }) => {
            for_each_chunk(threads, y.data, 1, n, |r, ys| {
                let mut s = 0.0f32;
                for &v in &x.data[r * n..(r + 1) * n] {
                    s += v;
                }
                ys[0] = s;
            });
            true
        }
        None => false,
    }
}

/// `y = x` with its axes permuted (`y.shape[k] = x.shape[perm[k]]`): each output row (the last
/// axis) is one contiguous copy when the permutation keeps the last axis, else a strided gather.
pub(super) fn transpose(perm: &[usize], x: View<'_, f32>, y: &mut ViewMut<'_, f32>, threads: usize) -> bool {
    let rank = y.shape.len();
    const MAX: usize = crate::kernels::reference::broadcast::MAX_RANK;
    if rank == 0 || rank > MAX || perm.len() != rank || x.shape.len() != rank || x.data.len() != y.data.len() {
        return false;
    }
    let n = y.shape[rank - 1];
    if n == 0 || y.data.len() != y.shape.iter().product::<usize>() {
        return y.data.is_empty();
    }
    // Element stride in `x` of each output axis.
    let mut x_strides = [0usize; MAX];
    let mut stride = 1;
    for axis in (0..rank).rev() {
        if let Some(k) = perm.iter().position(|&p| p == axis) {
            x_strides[k] = stride;
        } else {
            return false;
        }
        stride *= x.shape[axis];
    }
    let (shape, inner) = (y.shape, x_strides[rank - 1]);
    for_each_chunk(threads, y.data, n, n, |row, ys| {
        // The row's start in `x`: its index on each outer axis times that axis's stride.
        let (mut rest, mut from) = (row, 0);
        for k in (0..rank - 1).rev() {
            from += (rest % shape[k]) * x_strides[k];
            rest /= shape[k];
        }
        if inner == 1 {
            ys.copy_from_slice(&x.data[from..from + n]);
        } else {
            for (j, y) in ys.iter_mut().enumerate() {
                *y = x.data[from + j * inner];
            }
        }
    });
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_of_bias_rows_statistics_columns_and_scalars() {
        assert_eq!(layout(&[4], &[2, 3, 4]), Some(Layout::Row { m: 6, n: 4 }));
        assert_eq!(layout(&[1, 3, 4], &[2, 3, 4]), Some(Layout::Row { m: 2, n: 12 }));
        assert_eq!(layout(&[2, 3, 1], &[2, 3, 4]), Some(Layout::Col { m: 6, n: 4 }));
        assert_eq!(layout(&[], &[2, 3]), Some(Layout::Col { m: 1, n: 6 }));
        assert_eq!(layout(&[2, 3], &[2, 3]), Some(Layout::Same));
        assert_eq!(layout(&[2, 1, 4], &[2, 3, 4]), None);
    }

    /// The transformer layouts take the fast paths (engine/tests/fast_kernels.rs checks their
    /// values against the reference on many shapes).
    #[test]
    fn transformer_layouts_take_the_fast_paths() {
        let v = |data: &'static [f32], shape: &'static [usize]| View { data, shape };
        let mut y = [0.0f32; 6];
        let mut out = ViewMut { data: &mut y, shape: &[2, 3] };
        assert!(binary(&BroadcastOp::Sub, v(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]), v(&[1.0, 2.0, 3.0], &[3]), &mut out, 2));
        assert_eq!(y, [0.0, 0.0, 0.0, 3.0, 3.0, 3.0]);
        let mut out = ViewMut { data: &mut y, shape: &[2, 3] };
        assert!(binary(&BroadcastOp::Div, v(&[2.0, 4.0], &[2, 1]), v(&[1.0, 2.0, 4.0, 1.0, 2.0, 4.0], &[2, 3]), &mut out, 2));
        assert_eq!(y, [2.0, 1.0, 0.5, 4.0, 2.0, 1.0]);
        let mut s = [0.0f32; 3];
        assert!(sum_to(v(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]), &mut ViewMut { data: &mut s, shape: &[3] }, 2));
        assert_eq!(s, [5.0, 7.0, 9.0]);
        let mut t = [0.0f32; 6];
        assert!(transpose(&[1, 0], v(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]), &mut ViewMut { data: &mut t, shape: &[3, 2] }, 2));
        assert_eq!(t, [1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
        let mut out = ViewMut { data: &mut y, shape: &[2, 3] };
        assert!(!binary(&BroadcastOp::Pow, v(&[1.0; 6], &[2, 3]), v(&[1.0; 6], &[2, 3]), &mut out, 2));
    }
}
