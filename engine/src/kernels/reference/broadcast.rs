//! Broadcasting elementwise kernels (numpy / ONNX multidirectional broadcasting): one walker over
//! the output's elements that yields each input's offset, and the kernels of the broadcasting
//! family written on top of it. Every function writes all of its output.

use crate::kernels::{Float, View, ViewMut};

/// The most axes a broadcasting op takes. The walker keeps its per-axis state in fixed arrays so
/// that it allocates nothing; shape rules refuse higher ranks before a kernel runs.
pub const MAX_RANK: usize = 8;

/// Element strides of `input` read as a tensor of shape `out` (its axes right-aligned with the
/// output's), 0 along every axis it broadcasts over.
fn broadcast_strides(input: &[usize], out: &[usize]) -> [usize; MAX_RANK] {
    let mut strides = [0; MAX_RANK];
    let lead = out.len() - input.len();
    let mut stride = 1;
    for axis in (0..input.len()).rev() {
        if input[axis] != 1 {
            strides[lead + axis] = stride;
        }
        stride *= input[axis];
    }
    strides
}

/// Calls `f(index, offsets)` for every element of a tensor of shape `out`, in row-major order,
/// where `offsets[k]` is the offset of the element of input `k` (shape `inputs[k]`, broadcast to
/// `out`) that lines up with it. The shape rule has checked that every input broadcasts to `out`
/// and that `out` has at most [`MAX_RANK`] axes.
pub fn for_each_element<const N: usize>(out: &[usize], inputs: [&[usize]; N], mut f: impl FnMut(usize, [usize; N])) {
    if out.contains(&0) {
        return;
    }
    let Some(last) = out.len().checked_sub(1) else {
        // A scalar output has one element, and every input is a scalar too.
        f(0, [0; N]);
        return;
    };
    let strides = inputs.map(|shape| broadcast_strides(shape, out));
    let mut index = [0usize; MAX_RANK];
    let mut base = [0usize; N];
    let mut element = 0;
    loop {
        // The innermost axis runs as a plain loop; the outer axes advance like an odometer.
        for i in 0..out[last] {
            let mut offsets = base;
            for (offset, s) in offsets.iter_mut().zip(&strides) {
                *offset += i * s[last];
            }
            f(element, offsets);
            element += 1;
        }
        let mut axis = last;
        loop {
            if axis == 0 {
                return;
            }
            axis -= 1;
            index[axis] += 1;
            for (b, s) in base.iter_mut().zip(&strides) {
                *b += s[axis];
            }
            if index[axis] < out[axis] {
                break;
            }
            for (b, s) in base.iter_mut().zip(&strides) {
                *b -= s[axis] * out[axis];
            }
            index[axis] = 0;
        }
    }
}

/// `y = f(a, b)` with `a` and `b` broadcast to `y`'s shape.
pub fn binary<A: Copy, B: Copy, Y>(a: View<A>, b: View<B>, y: &mut ViewMut<Y>, mut f: impl FnMut(A, B) -> Y) {
    if a.shape == y.shape && b.shape == y.shape {
        // Same shapes, the common case: a plain zip.
        for ((y, &a), &b) in y.data.iter_mut().zip(a.data).zip(b.data) {
            *y = f(a, b);
        }
        return;
    }
    let data = &mut *y.data;
    for_each_element(y.shape, [a.shape, b.shape], |i, [oa, ob]| data[i] = f(a.data[oa], b.data[ob]));
}

/// `y = f(a, b, c)` with all three broadcast to `y`'s shape.
pub fn ternary<A: Copy, B: Copy, C: Copy, Y>(a: View<A>, b: View<B>, c: View<C>, y: &mut ViewMut<Y>, mut f: impl FnMut(A, B, C) -> Y) {
    let data = &mut *y.data;
    for_each_element(y.shape, [a.shape, b.shape, c.shape], |i, [oa, ob, oc]| data[i] = f(a.data[oa], b.data[ob], c.data[oc]));
}

/// `y` = the sum of `x` over the axes along which `y`'s shape broadcasts to `x`'s: the adjoint of
/// broadcasting, which turns the gradient of a broadcast output into that of its input.
pub fn sum_to<T: Float>(x: View<T>, y: &mut ViewMut<T>) {
    y.data.fill(T::zero());
    let data = &mut *y.data;
    for_each_element(x.shape, [y.shape], |i, [oy]| data[oy] += x.data[i]);
}

/// `max(a, b)` that propagates NaN from either side, as `torch.maximum` does.
pub fn max<T: Float>(a: T, b: T) -> T {
    if a.is_nan() || b.is_nan() {
        T::nan()
    } else if a >= b {
        a
    } else {
        b
    }
}

/// `min(a, b)` that propagates NaN from either side, as `torch.minimum` does.
pub fn min<T: Float>(a: T, b: T) -> T {
    if a.is_nan() || b.is_nan() {
        T::nan()
    } else if a <= b {
        a
    } else {
        b
    }
}

/// The share of `dy` that `max(a, b)` (with `select = Greater`) or `min(a, b)` (`Less`) passes to
/// `a`: all of it where `a` is the selected operand, half where `a == b` (PyTorch's rule for
/// `maximum`/`minimum`, so that the two halves add up to `dy`), none otherwise.
pub fn select_grad<T: Float>(dy: T, a: T, b: T, a_wins: impl Fn(T, T) -> bool) -> T {
    if a == b {
        dy * T::from_f32(0.5)
    } else if a_wins(a, b) {
        dy
    } else {
        T::zero()
    }
}

/// `dy * d(a^b)/da = dy * b * a^(b-1)`, and 0 where `b == 0` (PyTorch's `pow_backward`, which
/// avoids `0 * inf` at `a == 0`).
pub fn pow_grad_base<T: Float>(dy: T, a: T, b: T) -> T {
    if b == T::zero() {
        T::zero()
    } else {
        dy * b * a.powf(b - T::one())
    }
}

/// `dy * d(a^b)/db = dy * a^b * ln(a)`, and 0 where `a == 0` and `b >= 0` (PyTorch's
/// `pow_backward_exponent`); a negative base gives NaN, as `ln` does.
pub fn pow_grad_exponent<T: Float>(dy: T, a: T, b: T) -> T {
    if a == T::zero() && b >= T::zero() {
        T::zero()
    } else {
        dy * a.powf(b) * a.ln()
    }
}

/// `dy * d(a/b)/db = -dy * a / b^2`.
pub fn div_grad_divisor<T: Float>(dy: T, a: T, b: T) -> T {
    -(dy * a) / (b * b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    fn view<'a, T>(data: &'a [T], shape: &'a [usize]) -> View<'a, T> {
        View { data, shape }
    }

    fn offsets<const N: usize>(out: &[usize], inputs: [&[usize]; N]) -> Vec<[usize; N]> {
        let mut seen = Vec::new();
        for_each_element(out, inputs, |i, o| {
            assert_eq!(i, seen.len(), "elements come in row-major order");
            seen.push(o);
        });
        seen
    }

    #[test]
    fn walker_yields_broadcast_offsets() {
        // [2, 3] against [3] (a row repeated) and [2, 1] (a column repeated).
        assert_eq!(offsets(&[2, 3], [&[3], &[2, 1]]), [[0, 0], [1, 0], [2, 0], [0, 1], [1, 1], [2, 1]]);
        // A scalar input is read at offset 0 everywhere; a scalar output is one element.
        assert_eq!(offsets(&[2, 2], [&[]]), [[0]; 4]);
        assert_eq!(offsets(&[], [&[], &[]]), [[0, 0]]);
        // An empty output has no elements.
        assert!(offsets(&[2, 0, 3], [&[3]]).is_empty());
        // Broadcasting a middle axis: [2, 1, 2] to [2, 3, 2].
        assert_eq!(offsets(&[2, 3, 2], [&[2, 1, 2]]).iter().map(|o| o[0]).collect::<Vec<_>>(), [0, 1, 0, 1, 0, 1, 2, 3, 2, 3, 2, 3]);
    }

    #[test]
    fn binary_broadcasts_both_operands() {
        // a is a column [2, 1], b a row [3]: y[i][j] = a[i] - b[j].
        let mut y = [0.0; 6];
        binary(view(&[10.0, 20.0], &[2, 1]), view(&[1.0, 2.0, 3.0], &[3]), &mut ViewMut { data: &mut y, shape: &[2, 3] }, |a, b| a - b);
        assert_eq!(y, [9.0, 8.0, 7.0, 19.0, 18.0, 17.0]);
        // A comparison writes bools; a scalar operand is read everywhere.
        let mut m = [9u8; 4];
        binary(view(&[1i64, 5, 3, 7], &[2, 2]), view(&[4i64], &[]), &mut ViewMut { data: &mut m, shape: &[2, 2] }, |a, b| u8::from(a < b));
        assert_eq!(m, [1, 0, 1, 0]);
    }

    #[test]
    fn ternary_broadcasts_condition_and_values() {
        // cond [2, 1] picks a whole row of a [3] or of the scalar b.
        let mut y = [0.0; 6];
        let cond = view(&[1u8, 0], &[2, 1]);
        ternary(cond, view(&[1.0, 2.0, 3.0], &[3]), view(&[-1.0], &[]), &mut ViewMut { data: &mut y, shape: &[2, 3] }, |c, a, b| {
            if c != 0 {
                a
            } else {
                b
            }
        });
        assert_eq!(y, [1.0, 2.0, 3.0, -1.0, -1.0, -1.0]);
    }

    #[test]
    fn sum_to_adds_over_broadcast_axes() {
        // x [2, 3] = [[1, 2, 3], [4, 5, 6]].
        let x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let mut cols = [99.0; 3];
        sum_to(view(&x, &[2, 3]), &mut ViewMut { data: &mut cols, shape: &[3] });
        assert_eq!(cols, [5.0, 7.0, 9.0]);
        let mut rows = [99.0; 2];
        sum_to(view(&x, &[2, 3]), &mut ViewMut { data: &mut rows, shape: &[2, 1] });
        assert_eq!(rows, [6.0, 15.0]);
        let mut all = [99.0];
        sum_to(view(&x, &[2, 3]), &mut ViewMut { data: &mut all, shape: &[] });
        assert_eq!(all, [21.0]);
    }

    #[test]
    fn max_min_propagate_nan_and_split_ties() {
        assert_eq!(max(1.0, 2.0), 2.0);
        assert_eq!(min(1.0, 2.0), 1.0);
        assert!(max(f64::NAN, 2.0).is_nan() && max(2.0, f64::NAN).is_nan() && min(f64::NAN, 1.0).is_nan());
        let greater = |a: f64, b: f64| a > b;
        assert_eq!(
            [select_grad(4.0, 2.0, 1.0, greater), select_grad(4.0, 1.0, 2.0, greater), select_grad(4.0, 3.0, 3.0, greater)],
            [4.0, 0.0, 2.0]
        );
    }

    #[test]
    fn pow_gradients_follow_pytorch_at_zero() {
        // d(a^3)/da at a = 2 is 3 * 4 = 12; d(2^b)/db at b = 3 is 8 ln 2.
        assert_eq!(pow_grad_base(1.0, 2.0, 3.0), 12.0);
        assert!((pow_grad_exponent(1.0, 2.0, 3.0) - 8.0 * 2f64.ln()).abs() < 1e-12);
        // A zero exponent has no base gradient even at a == 0 (no 0 * inf); a zero base with a
        // non-negative exponent has no exponent gradient (no 0 * -inf).
        assert_eq!(pow_grad_base(1.0, 0.0, 0.0), 0.0);
        assert_eq!(pow_grad_exponent(1.0, 0.0, 2.0), 0.0);
        assert_eq!(div_grad_divisor(1.0, 3.0, 2.0), -0.75);
    }
}
