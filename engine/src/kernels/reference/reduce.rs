//! Reduction and softmax kernels.
//!
//! A reduction over `axes` splits the input's elements into groups: group `r` holds the elements
//! whose kept coordinates, read row-major, number `r`, and its element `j` is the one whose reduced
//! coordinates number `j`. Output element `r` (with or without kept size-1 axes, the layout is the
//! same) folds group `r` in the order of `j`, so sums are deterministic.

use crate::kernels::{Float, View, ViewMut};

/// Flat index, in a row-major tensor of `shape`, of element `j` of reduction group `r`.
pub fn group_index(shape: &[usize], axes: &[usize], mut r: usize, mut j: usize) -> usize {
    let (mut index, mut stride) = (0, 1);
    for (k, &dim) in shape.iter().enumerate().rev() {
        // Groups and their elements are only enumerated when they exist, so `dim` is not 0 here.
        let counter = if axes.contains(&k) { &mut j } else { &mut r };
        let coord = *counter % dim;
        *counter /= dim;
        index += coord * stride;
        stride *= dim;
    }
    index
}

/// Number of elements in each reduction group.
pub fn group_size(shape: &[usize], axes: &[usize]) -> usize {
    axes.iter().map(|&a| shape[a]).product()
}

pub fn reduce_sum<T: Float>(axes: &[usize], x: View<T>, y: &mut ViewMut<T>) {
    let n = group_size(x.shape, axes);
    for (r, yv) in y.data.iter_mut().enumerate() {
        *yv = (0..n).map(|j| x.data[group_index(x.shape, axes, r, j)]).sum();
    }
}

/// The mean of each group; an empty group gives 0 / 0 = NaN, as `torch.mean` does.
pub fn reduce_mean<T: Float>(axes: &[usize], x: View<T>, y: &mut ViewMut<T>) {
    reduce_sum(axes, x, y);
    let n = T::from_usize(group_size(x.shape, axes));
    for yv in y.data.iter_mut() {
        *yv = *yv / n;
    }
}

/// The maximum of each group. A NaN makes its group's maximum NaN (as `torch.amax`); an empty
/// group gives -inf.
pub fn reduce_max<T: Float>(axes: &[usize], x: View<T>, y: &mut ViewMut<T>) {
    let n = group_size(x.shape, axes);
    for (r, yv) in y.data.iter_mut().enumerate() {
        let mut m = T::neg_infinity();
        for j in 0..n {
            let v = x.data[group_index(x.shape, axes, r, j)];
            // Once `m` is NaN every comparison is false, so it stays NaN.
            if v > m || v.is_nan() {
                m = v;
            }
        }
        *yv = m;
    }
}

/// `dx[group r] = dy[r]`, divided by the group size when `mean`.
pub fn reduce_sum_grad<T: Float>(axes: &[usize], dy: View<T>, dx: &mut ViewMut<T>, mean: bool) {
    let n = group_size(dx.shape, axes);
    let scale = if mean { T::one() / T::from_usize(n) } else { T::one() };
    for (r, &g) in dy.data.iter().enumerate() {
        for j in 0..n {
            dx.data[group_index(dx.shape, axes, r, j)] = g * scale;
        }
    }
}

/// `dx = dy[r] / ties` where `x == y[r]` (the group's maximum), else 0: PyTorch's `amax`
/// backward, which splits the gradient evenly among tied maxima. A group whose maximum is NaN
/// has no element equal to it and gets NaN throughout, as in PyTorch (`0 * (dy / 0)`), so that
/// divergence stays visible.
pub fn reduce_max_grad<T: Float>(axes: &[usize], dy: View<T>, x: View<T>, y: View<T>, dx: &mut ViewMut<T>) {
    let n = group_size(x.shape, axes);
    for (r, (&g, &m)) in dy.data.iter().zip(y.data).enumerate() {
        let ties = (0..n).filter(|&j| x.data[group_index(x.shape, axes, r, j)] == m).count();
        let (share, other) = if ties > 0 { (g / T::from_usize(ties), T::zero()) } else { (T::nan(), T::nan()) };
        for j in 0..n {
            let i = group_index(x.shape, axes, r, j);
            dx.data[i] = if x.data[i] == m { share } else { other };
        }
    }
}

/// `(outer, n, inner)`: the sizes before, at and after `axis`. Element `k` of row `(o, i)` along
/// the axis is at `(o * n + k) * inner + i`.
fn rows(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (shape[..axis].iter().product(), shape[axis], shape[axis + 1..].iter().product())
}

/// Calls `f` with the flat index of each row along `axis` and the stride between its elements.
fn for_each_row(shape: &[usize], axis: usize, mut f: impl FnMut(usize, usize, usize)) {
    let (outer, n, inner) = rows(shape, axis);
    for o in 0..outer {
        for i in 0..inner {
            f(o * n * inner + i, inner, n);
        }
    }
}

/// `y = exp(x - max) / sum(exp(x - max))` along `axis`: every exponent is <= 0, so large inputs
/// cannot overflow.
pub fn softmax<T: Float>(axis: usize, x: View<T>, y: &mut ViewMut<T>) {
    for_each_row(x.shape, axis, |start, stride, n| {
        let at = |k: usize| start + k * stride;
        let max = (0..n).map(|k| x.data[at(k)]).fold(T::neg_infinity(), |m, v| if v > m { v } else { m });
        let mut sum = T::zero();
        for k in 0..n {
            let e = (x.data[at(k)] - max).exp();
            y.data[at(k)] = e;
            sum += e;
        }
        for k in 0..n {
            y.data[at(k)] = y.data[at(k)] / sum;
        }
    });
}

/// `y = x - max - log(sum(exp(x - max)))` along `axis`.
pub fn log_softmax<T: Float>(axis: usize, x: View<T>, y: &mut ViewMut<T>) {
    for_each_row(x.shape, axis, |start, stride, n| {
        let at = |k: usize| start + k * stride;
        let max = (0..n).map(|k| x.data[at(k)]).fold(T::neg_infinity(), |m, v| if v > m { v } else { m });
        let sum: T = (0..n).map(|k| (x.data[at(k)] - max).exp()).sum();
        let log_sum = max + sum.ln();
        for k in 0..n {
            y.data[at(k)] = x.data[at(k)] - log_sum;
        }
    });
}

/// `dx = y * (dy - sum(dy * y))` along `axis`, where `y` is the softmax output.
pub fn softmax_grad<T: Float>(axis: usize, dy: View<T>, y: View<T>, dx: &mut ViewMut<T>) {
    for_each_row(y.shape, axis, |start, stride, n| {
        let at = |k: usize| start + k * stride;
        let dot: T = (0..n).map(|k| dy.data[at(k)] * y.data[at(k)]).sum();
        for k in 0..n {
            dx.data[at(k)] = y.data[at(k)] * (dy.data[at(k)] - dot);
        }
    });
}

/// `dx = dy - exp(y) * sum(dy)` along `axis`, where `y` is the log-softmax output (so `exp(y)` is
/// the softmax).
pub fn log_softmax_grad<T: Float>(axis: usize, dy: View<T>, y: View<T>, dx: &mut ViewMut<T>) {
    for_each_row(y.shape, axis, |start, stride, n| {
        let at = |k: usize| start + k * stride;
        let sum: T = (0..n).map(|k| dy.data[at(k)]).sum();
        for k in 0..n {
            dx.data[at(k)] = dy.data[at(k)] - y.data[at(k)].exp() * sum;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view<'a>(data: &'a [f64], shape: &'a [usize]) -> View<'a, f64> {
        View { data, shape }
    }

    // x is [2, 3, 2]: x[a][b][c] = 100a + 10b + c.
    const X: [f64; 12] = [0.0, 1.0, 10.0, 11.0, 20.0, 21.0, 100.0, 101.0, 110.0, 111.0, 120.0, 121.0];
    const SHAPE: [usize; 3] = [2, 3, 2];

    #[test]
    fn sums_over_outer_and_inner_axes() {
        let mut y = [0.0; 3];
        reduce_sum(&[0, 2], view(&X, &SHAPE), &mut ViewMut { data: &mut y, shape: &[3] });
        // b = 0: 0 + 1 + 100 + 101; b = 1: 10 + 11 + 110 + 111; b = 2: 20 + 21 + 120 + 121.
        assert_eq!(y, [202.0, 242.0, 282.0]);
        let mut y = [0.0; 4];
        reduce_mean(&[1], view(&X, &SHAPE), &mut ViewMut { data: &mut y, shape: &[2, 1, 2] });
        assert_eq!(y, [10.0, 11.0, 110.0, 111.0]);
        let mut y = [0.0; 1];
        reduce_max(&[0, 1, 2], view(&X, &SHAPE), &mut ViewMut { data: &mut y, shape: &[] });
        assert_eq!(y, [121.0]);
        // No axes: the identity.
        let mut y = [0.0; 12];
        reduce_sum(&[], view(&X, &SHAPE), &mut ViewMut { data: &mut y, shape: &SHAPE });
        assert_eq!(y, X);
    }

    #[test]
    fn max_propagates_nan_and_its_gradient_splits_ties() {
        let x = [1.0, 3.0, 3.0, f64::NAN, 2.0, 0.0];
        let mut y = [0.0; 2];
        reduce_max(&[1], view(&x, &[2, 3]), &mut ViewMut { data: &mut y, shape: &[2] });
        assert_eq!(y[0], 3.0);
        assert!(y[1].is_nan());
        // Two tied maxima share the gradient; a NaN group gets NaN (both as torch.amax).
        let mut dx = [9.0; 6];
        reduce_max_grad(&[1], view(&[4.0, 5.0], &[2]), view(&x, &[2, 3]), view(&y, &[2]), &mut ViewMut { data: &mut dx, shape: &[2, 3] });
        assert_eq!(dx[..3], [0.0, 2.0, 2.0]);
        assert!(dx[3..].iter().all(|v| v.is_nan()), "{dx:?}");
    }

    #[test]
    fn mean_gradient_spreads_dy_over_each_group() {
        let mut dx = [0.0; 12];
        reduce_sum_grad(&[0, 2], view(&[4.0, 8.0, 12.0], &[3]), &mut ViewMut { data: &mut dx, shape: &SHAPE }, true);
        assert_eq!(dx, [1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0]);
    }

    #[test]
    fn softmax_along_a_middle_axis_is_stable() {
        // [1, 2, 2]: softmax over axis 1 pairs (1000, 1000) and (0, ln 3).
        let x = [1000.0, 0.0, 1000.0, 3f64.ln()];
        let mut y = [0.0; 4];
        softmax(1, view(&x, &[1, 2, 2]), &mut ViewMut { data: &mut y, shape: &[1, 2, 2] });
        let want = [0.5, 0.25, 0.5, 0.75];
        assert!(y.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-12), "{y:?}");
        let mut l = [0.0; 4];
        log_softmax(1, view(&x, &[1, 2, 2]), &mut ViewMut { data: &mut l, shape: &[1, 2, 2] });
        assert!(l.iter().zip(want).all(|(a, b)| (a - b.ln()).abs() < 1e-12), "{l:?}");
        // Gradients of the sum of outputs: softmax sums to 1 per row, so the gradient is 0;
        // log-softmax's is 1 - n * softmax.
        let mut dx = [9.0; 4];
        softmax_grad(1, view(&[1.0; 4], &[1, 2, 2]), view(&y, &[1, 2, 2]), &mut ViewMut { data: &mut dx, shape: &[1, 2, 2] });
        assert!(dx.iter().all(|v| v.abs() < 1e-12), "{dx:?}");
        log_softmax_grad(1, view(&[1.0; 4], &[1, 2, 2]), view(&l, &[1, 2, 2]), &mut ViewMut { data: &mut dx, shape: &[1, 2, 2] });
        let want = [0.0, 0.5, 0.0, -0.5];
        assert!(dx.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-12), "{dx:?}");
    }

    #[test]
    fn masked_entries_of_minus_infinity_get_zero_probability() {
        // An attention row with one masked position: PyTorch gives [0.2689, 0, 0.7311] and
        // log-probabilities [-1.3133, -inf, -0.3133].
        let x = [0.0, f64::NEG_INFINITY, 1.0];
        let (mut y, mut l) = ([9.0; 3], [9.0; 3]);
        softmax(0, view(&x, &[3]), &mut ViewMut { data: &mut y, shape: &[3] });
        log_softmax(0, view(&x, &[3]), &mut ViewMut { data: &mut l, shape: &[3] });
        let e = 1.0f64.exp();
        assert_eq!(y[1], 0.0);
        assert!((y[0] - 1.0 / (1.0 + e)).abs() < 1e-15 && (y[2] - e / (1.0 + e)).abs() < 1e-15, "{y:?}");
        assert_eq!(l[1], f64::NEG_INFINITY);
        assert!((l[0] - y[0].ln()).abs() < 1e-15 && (l[2] - y[2].ln()).abs() < 1e-15, "{l:?}");
    }
}
