//! MatMul, bias, elementwise and activation kernels.

use crate::kernels::{Float, View, ViewMut};
use crate::ops::{Activation, Clip, MatMul};

/// Row and column strides of the logical matrix `op(t)` inside the row-major storage of a 2-D
/// tensor `t`. A transposed operand is read with its strides swapped instead of being copied.
fn logical_strides(stored_shape: &[usize], transposed: bool) -> (usize, usize) {
    let stored_cols = stored_shape[1];
    if transposed {
        (1, stored_cols)
    } else {
        (stored_cols, 1)
    }
}

/// `y = op(a) @ op(b)`, with `y` of shape `[M, N]` and the inner size `K` taken from `a`.
pub fn matmul<T: Float>(m: &MatMul, a: View<T>, b: View<T>, y: &mut ViewMut<T>) {
    let (rows, cols) = (y.shape[0], y.shape[1]);
    let inner = if m.trans_a { a.shape[0] } else { a.shape[1] };
    let (a_rs, a_cs) = logical_strides(a.shape, m.trans_a);
    let (b_rs, b_cs) = logical_strides(b.shape, m.trans_b);
    for i in 0..rows {
        for j in 0..cols {
            let mut acc = T::zero();
            for p in 0..inner {
                acc += a.data[i * a_rs + p * a_cs] * b.data[p * b_rs + j * b_cs];
            }
            y.data[i * cols + j] = acc;
        }
    }
}

/// `y = act(op(a) @ op(b) + bias)`: `matmul`, then `bias_add`'s and the activation's formulas per
/// element (`conv::bias_act` on each one), so the result equals the three ops bit for bit.
pub fn matmul_bias_act<T: Float>(m: &MatMul, act: &Activation, a: View<T>, b: View<T>, bias: View<T>, y: &mut ViewMut<T>) {
    matmul(m, a, b, y);
    rows_bias_act(act, bias.data, y.data);
}

/// The epilogue of a fused matmul on row-major rows of `bias.len()` columns: column `c` gets
/// `bias[c]`, then the activation.
#[inline(always)]
pub fn rows_bias_act<T: Float>(act: &Activation, bias: &[T], y: &mut [T]) {
    if bias.is_empty() {
        return;
    }
    for row in y.chunks_exact_mut(bias.len()) {
        for (v, &b) in row.iter_mut().zip(bias) {
            super::conv::bias_act(act, b, core::slice::from_mut(v));
        }
    }
}

/// Number of contiguous elements that share one channel of a tensor whose axis 1 is the channel
/// axis (1 for `[N, C]`, `H * W` for `[N, C, H, W]`).
fn channel_run(shape: &[usize]) -> usize {
    shape[2..].iter().product()
}

/// `y = x + b`, with `b[c]` added to every element of channel `c` (axis 1).
pub fn bias_add<T: Float>(x: View<T>, b: View<T>, y: &mut ViewMut<T>) {
    let run = channel_run(x.shape);
    let channels = b.data.len();
    // An empty tensor has nothing to add, and `chunks_exact` refuses a zero chunk size.
    if run == 0 || y.data.is_empty() {
        return;
    }
    // Memory is a sequence of runs ordered (n, c): run number `r` belongs to channel `r % C`.
    for (r, (y_run, x_run)) in y.data.chunks_exact_mut(run).zip(x.data.chunks_exact(run)).enumerate() {
        let bias = b.data[r % channels];
        for (yv, &xv) in y_run.iter_mut().zip(x_run) {
            *yv = xv + bias;
        }
    }
}

/// `db[c]` = sum of `dy` over every axis but the channel axis 1.
pub fn bias_grad<T: Float>(dy: View<T>, db: &mut ViewMut<T>) {
    let run = channel_run(dy.shape);
    let channels = db.data.len();
    db.data.fill(T::zero());
    if run == 0 || dy.data.is_empty() {
        return;
    }
    for (r, dy_run) in dy.data.chunks_exact(run).enumerate() {
        db.data[r % channels] += dy_run.iter().copied().sum::<T>();
    }
}

pub fn add<T: Float>(a: View<T>, b: View<T>, y: &mut ViewMut<T>) {
    for ((yv, &av), &bv) in y.data.iter_mut().zip(a.data).zip(b.data) {
        *yv = av + bv;
    }
}

pub fn mul<T: Float>(a: View<T>, b: View<T>, y: &mut ViewMut<T>) {
    for ((yv, &av), &bv) in y.data.iter_mut().zip(a.data).zip(b.data) {
        *yv = av * bv;
    }
}

/// `y = max(x, 0)`. A NaN input stays NaN, as in PyTorch, so that divergence remains visible.
pub fn relu<T: Float>(x: View<T>, y: &mut ViewMut<T>) {
    for (yv, &xv) in y.data.iter_mut().zip(x.data) {
        *yv = relu_value(xv);
    }
}

/// ReLU's formula on one value: 0 below 0, else the value (NaN stays NaN, -0.0 stays -0.0).
/// Every kernel that applies a ReLU (fused or not, on every CPU path) uses this, so their bits
/// agree.
#[inline(always)]
pub fn relu_value<T: Float>(v: T) -> T {
    if v < T::zero() {
        T::zero()
    } else {
        v
    }
}

/// Clip's formula on one value: raised to `lo` first, then lowered to `hi` (NaN stays NaN). As
/// [`relu_value`], the one formula of every kernel that clips.
#[inline(always)]
pub fn clip_value<T: Float>(v: T, lo: T, hi: T) -> T {
    let raised = if v < lo { lo } else { v };
    if raised > hi {
        hi
    } else {
        raised
    }
}

/// `v = act(v)` in place, with `relu`'s or `clip`'s formula (`Identity` leaves `v` as it is).
/// The fast CPU kernel of `NormOp::BatchNormTrainAct` runs this same function.
#[inline(always)]
pub fn activate<T: Float>(act: &Activation, run: &mut [T]) {
    match *act {
        Activation::Identity => {}
        Activation::Relu => run.iter_mut().for_each(|v| *v = relu_value(*v)),
        Activation::Clip(c) => {
            let (lo, hi) = (T::from_f32(c.min), T::from_f32(c.max));
            run.iter_mut().for_each(|v| *v = clip_value(*v, lo, hi))
        }
    }
}

/// `dx = dy` where `x > 0`, else 0 (PyTorch's `threshold_backward`: the gradient at 0 is 0).
pub fn relu_grad<T: Float>(dy: View<T>, x: View<T>, dx: &mut ViewMut<T>) {
    for ((dxv, &dyv), &xv) in dx.data.iter_mut().zip(dy.data).zip(x.data) {
        *dxv = if xv > T::zero() { dyv } else { T::zero() };
    }
}

/// `y = min(max(x, min), max)`, in that order, so that `min > max` gives `max` everywhere as
/// `torch.clamp` does; a NaN input stays NaN.
pub fn clip<T: Float>(c: &Clip, x: View<T>, y: &mut ViewMut<T>) {
    let (lo, hi) = (T::from_f32(c.min), T::from_f32(c.max));
    for (yv, &xv) in y.data.iter_mut().zip(x.data) {
        *yv = clip_value(xv, lo, hi);
    }
}

/// `dx = dy` where `min < x < max` strictly, else 0: the subgradient PyTorch's `hardtanh` (and so
/// ReLU6) uses at the two kinks.
pub fn clip_grad<T: Float>(c: &Clip, dy: View<T>, x: View<T>, dx: &mut ViewMut<T>) {
    let (lo, hi) = (T::from_f32(c.min), T::from_f32(c.max));
    for ((dxv, &dyv), &xv) in dx.data.iter_mut().zip(dy.data).zip(x.data) {
        *dxv = if lo < xv && xv < hi { dyv } else { T::zero() };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view<'a>(data: &'a [f64], shape: &'a [usize]) -> View<'a, f64> {
        View { data, shape }
    }

    #[test]
    fn matmul_reads_transposed_operands_through_strides() {
        // a = [[1, 2, 3], [4, 5, 6]] (2x3), b = [[1, 0], [0, 1], [1, 1]] (3x2):
        // a @ b = [[1 + 3, 2 + 3], [4 + 6, 5 + 6]] = [[4, 5], [10, 11]].
        let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let a_t = [1.0, 4.0, 2.0, 5.0, 3.0, 6.0];
        let b = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
        let b_t = [1.0, 0.0, 1.0, 0.0, 1.0, 1.0];
        for (trans_a, trans_b) in [(false, false), (true, false), (false, true), (true, true)] {
            let (ad, ash): (&[f64], &[usize]) = if trans_a { (&a_t, &[3, 2]) } else { (&a, &[2, 3]) };
            let (bd, bsh): (&[f64], &[usize]) = if trans_b { (&b_t, &[2, 3]) } else { (&b, &[3, 2]) };
            let mut y = [0.0; 4];
            matmul(&MatMul { trans_a, trans_b }, view(ad, ash), view(bd, bsh), &mut ViewMut { data: &mut y, shape: &[2, 2] });
            assert_eq!(y, [4.0, 5.0, 10.0, 11.0], "trans_a {trans_a}, trans_b {trans_b}");
        }
    }

    #[test]
    fn bias_add_and_bias_grad_use_axis_one() {
        // x is [2, 2, 2] (N, C, L): channel 0 gets +10, channel 1 gets +20.
        let x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        let shape = [2, 2, 2];
        let mut y = [0.0; 8];
        bias_add(view(&x, &shape), view(&[10.0, 20.0], &[2]), &mut ViewMut { data: &mut y, shape: &shape });
        assert_eq!(y, [11.0, 12.0, 23.0, 24.0, 15.0, 16.0, 27.0, 28.0]);
        let mut db = [99.0; 2];
        bias_grad(view(&x, &shape), &mut ViewMut { data: &mut db, shape: &[2] });
        // Channel 0 holds 1, 2, 5, 6 and channel 1 holds 3, 4, 7, 8.
        assert_eq!(db, [14.0, 22.0]);
    }

    #[test]
    fn clip_and_its_gradient_exclude_the_bounds() {
        let c = Clip { min: 0.0, max: 6.0 };
        let x = [-1.0, 0.0, 3.0, 6.0, 7.0, f64::NAN];
        let mut y = [0.0; 6];
        clip(&c, view(&x, &[6]), &mut ViewMut { data: &mut y, shape: &[6] });
        assert_eq!(y[..5], [0.0, 0.0, 3.0, 6.0, 6.0]);
        assert!(y[5].is_nan());
        let mut dx = [0.0; 6];
        clip_grad(&c, view(&[1.0; 6], &[6]), view(&x, &[6]), &mut ViewMut { data: &mut dx, shape: &[6] });
        assert_eq!(dx, [0.0, 0.0, 1.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn relu_gradient_is_zero_at_zero() {
        let x = [-2.0, 0.0, 0.5];
        let mut y = [9.0; 3];
        relu(view(&x, &[3]), &mut ViewMut { data: &mut y, shape: &[3] });
        assert_eq!(y, [0.0, 0.0, 0.5]);
        let mut dx = [9.0; 3];
        relu_grad(view(&[3.0; 3], &[3]), view(&x, &[3]), &mut ViewMut { data: &mut dx, shape: &[3] });
        assert_eq!(dx, [0.0, 0.0, 3.0]);
    }
}
