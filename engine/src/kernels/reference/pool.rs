//! Global average, average and max pooling and their gradients.
//!
//! Windows are laid over the input padded by `Pool2d::padding`; output position `(oh, ow)` covers
//! padded rows `oh * stride .. oh * stride + kernel`. Since the output size rounds down, a window
//! never extends past the padded input, so "kernel area" and "window area" are the same thing.

use crate::kernels::{Float, View, ViewMut};
use crate::ops::Pool2d;

/// `[N, C, H, W] -> [N, C, 1, 1]`: the mean of each channel plane.
pub fn global_avg_pool<T: Float>(x: View<T>, y: &mut ViewMut<T>) {
    let plane = x.shape[2] * x.shape[3];
    let divisor = T::from_usize(plane);
    for (i, yv) in y.data.iter_mut().enumerate() {
        *yv = x.data[i * plane..(i + 1) * plane].iter().copied().sum::<T>() / divisor;
    }
}

/// Spreads each `dy` value evenly over its channel plane.
pub fn global_avg_pool_grad<T: Float>(dy: View<T>, dx: &mut ViewMut<T>) {
    let plane = dx.shape[2] * dx.shape[3];
    let divisor = T::from_usize(plane);
    for (i, &g) in dy.data.iter().enumerate() {
        dx.data[i * plane..(i + 1) * plane].fill(g / divisor);
    }
}

/// The in-bounds part of one pooling window: input rows `rows`, columns `cols`.
struct Window {
    rows: core::ops::Range<usize>,
    cols: core::ops::Range<usize>,
}

impl Window {
    fn new(p: &Pool2d, oh: usize, ow: usize, h: usize, w: usize) -> Self {
        let clip = |start: usize, kernel: usize, pad: usize, len: usize| {
            // Window start and end in padded coordinates, shifted back to input coordinates and
            // clipped to the input.
            let lo = start.saturating_sub(pad).min(len);
            let hi = (start + kernel).saturating_sub(pad).min(len);
            lo..hi.max(lo)
        };
        Window { rows: clip(oh * p.stride[0], p.kernel[0], p.padding[0], h), cols: clip(ow * p.stride[1], p.kernel[1], p.padding[1], w) }
    }

    fn count(&self) -> usize {
        self.rows.len() * self.cols.len()
    }

    /// Flat indices (within one channel plane of width `w`) of the in-bounds elements, in
    /// row-major window order.
    fn indices(&self, w: usize) -> impl Iterator<Item = usize> + '_ {
        self.rows.clone().flat_map(move |r| self.cols.clone().map(move |c| r * w + c))
    }
}

/// The divisor of an average-pooling window: the kernel area, or with `count_include_pad` off,
/// the number of in-bounds elements. A window lying entirely in the padding has divisor 0 then;
/// callers treat its average as 0 rather than 0/0.
fn avg_divisor(p: &Pool2d, window: &Window) -> usize {
    if p.count_include_pad {
        p.kernel[0] * p.kernel[1]
    } else {
        window.count()
    }
}

/// `(number of channel planes, input plane size, output plane size)` of an NCHW pooling op.
fn planes(input: &[usize], output: &[usize]) -> (usize, usize, usize) {
    (input[0] * input[1], input[2] * input[3], output[2] * output[3])
}

pub fn avg_pool2d<T: Float>(p: &Pool2d, x: View<T>, y: &mut ViewMut<T>) {
    let (count, in_plane, out_plane) = planes(x.shape, y.shape);
    let (h, w, wo) = (x.shape[2], x.shape[3], y.shape[3]);
    for plane in 0..count {
        let xs = &x.data[plane * in_plane..(plane + 1) * in_plane];
        let ys = &mut y.data[plane * out_plane..(plane + 1) * out_plane];
        for (i, yv) in ys.iter_mut().enumerate() {
            let window = Window::new(p, i / wo, i % wo, h, w);
            let divisor = avg_divisor(p, &window);
            *yv = if divisor == 0 { T::zero() } else { window.indices(w).map(|j| xs[j]).sum::<T>() / T::from_usize(divisor) };
        }
    }
}

pub fn avg_pool2d_grad<T: Float>(p: &Pool2d, dy: View<T>, dx: &mut ViewMut<T>) {
    let (count, in_plane, out_plane) = planes(dx.shape, dy.shape);
    let (h, w, wo) = (dx.shape[2], dx.shape[3], dy.shape[3]);
    dx.data.fill(T::zero());
    for plane in 0..count {
        let dys = &dy.data[plane * out_plane..(plane + 1) * out_plane];
        let dxs = &mut dx.data[plane * in_plane..(plane + 1) * in_plane];
        for (i, &g) in dys.iter().enumerate() {
            let window = Window::new(p, i / wo, i % wo, h, w);
            let divisor = avg_divisor(p, &window);
            if divisor == 0 {
                continue;
            }
            let share = g / T::from_usize(divisor);
            for j in window.indices(w) {
                dxs[j] += share;
            }
        }
    }
}

/// The maximum of one window and the index of the element it comes from, chosen as PyTorch's CPU
/// kernel chooses: the first maximum in row-major window order, except that a NaN always wins (so
/// it propagates). Padding counts as -inf; a window entirely in the padding has no index.
fn window_max<T: Float>(xs: &[T], window: &Window, w: usize) -> (T, Option<usize>) {
    let mut best = T::neg_infinity();
    let mut arg = None;
    for j in window.indices(w) {
        let v = xs[j];
        if arg.is_none() || v > best || v.is_nan() {
            best = v;
            arg = Some(j);
        }
    }
    (best, arg)
}

pub fn max_pool2d<T: Float>(p: &Pool2d, x: View<T>, y: &mut ViewMut<T>) {
    let (count, in_plane, out_plane) = planes(x.shape, y.shape);
    let (h, w, wo) = (x.shape[2], x.shape[3], y.shape[3]);
    for plane in 0..count {
        let xs = &x.data[plane * in_plane..(plane + 1) * in_plane];
        let ys = &mut y.data[plane * out_plane..(plane + 1) * out_plane];
        for (i, yv) in ys.iter_mut().enumerate() {
            *yv = window_max(xs, &Window::new(p, i / wo, i % wo, h, w), w).0;
        }
    }
}

/// Routes each `dy` value to the element its window's maximum came from; overlapping windows
/// that pick the same element add up.
pub fn max_pool2d_grad<T: Float>(p: &Pool2d, dy: View<T>, x: View<T>, dx: &mut ViewMut<T>) {
    let (count, in_plane, out_plane) = planes(x.shape, dy.shape);
    let (h, w, wo) = (x.shape[2], x.shape[3], dy.shape[3]);
    dx.data.fill(T::zero());
    for plane in 0..count {
        let xs = &x.data[plane * in_plane..(plane + 1) * in_plane];
        let dys = &dy.data[plane * out_plane..(plane + 1) * out_plane];
        let dxs = &mut dx.data[plane * in_plane..(plane + 1) * in_plane];
        for (i, &g) in dys.iter().enumerate() {
            if let (_, Some(j)) = window_max(xs, &Window::new(p, i / wo, i % wo, h, w), w) {
                dxs[j] += g;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(kernel: usize, stride: usize, padding: [usize; 4], count_include_pad: bool) -> Pool2d {
        Pool2d { kernel: [kernel; 2], stride: [stride; 2], padding, count_include_pad }
    }

    /// One 3x3 plane holding 1..9.
    const X: [f64; 9] = [1., 2., 3., 4., 5., 6., 7., 8., 9.];
    const XS: [usize; 4] = [1, 1, 3, 3];

    #[test]
    fn avg_pool_divisor_follows_count_include_pad() {
        // Kernel 2, stride 2, one row/column of padding at the top and left: the output is 2x2 and
        // its windows cover {pad}, {pad, pad, 2, 3}, {pad, 4, pad, 7}, {5, 6, 8, 9}.
        let mut y = [0.0; 4];
        avg_pool2d(&pool(2, 2, [1, 1, 0, 0], true), View { data: &X, shape: &XS }, &mut ViewMut { data: &mut y, shape: &[1, 1, 2, 2] });
        assert_eq!(y, [1. / 4., 5. / 4., 11. / 4., 28. / 4.]);
        avg_pool2d(&pool(2, 2, [1, 1, 0, 0], false), View { data: &X, shape: &XS }, &mut ViewMut { data: &mut y, shape: &[1, 1, 2, 2] });
        assert_eq!(y, [1., 5. / 2., 11. / 2., 28. / 4.]);

        let mut dx = [0.0; 9];
        let dy = [4.0, 8.0, 12.0, 16.0];
        avg_pool2d_grad(
            &pool(2, 2, [1, 1, 0, 0], false),
            View { data: &dy, shape: &[1, 1, 2, 2] },
            &mut ViewMut { data: &mut dx, shape: &XS },
        );
        assert_eq!(dx, [4., 4., 4., 6., 4., 4., 6., 4., 4.]);
    }

    #[test]
    fn max_pool_picks_the_first_maximum_and_accumulates_overlaps() {
        // Kernel 2, stride 1: four overlapping windows. The centre 9 is the maximum of all of them,
        // so its gradient is the sum of all four dy values; the other 9s are later in their
        // windows' row-major order and get nothing.
        let x: [f64; 9] = [1., 2., 3., 4., 9., 9., 7., 9., 9.];
        let mut y = [0.0; 4];
        let p = pool(2, 1, [0; 4], true);
        max_pool2d(&p, View { data: &x, shape: &XS }, &mut ViewMut { data: &mut y, shape: &[1, 1, 2, 2] });
        assert_eq!(y, [9.0; 4]);
        let mut dx = [7.0; 9];
        max_pool2d_grad(
            &p,
            View { data: &[1., 2., 3., 4.], shape: &[1, 1, 2, 2] },
            View { data: &x, shape: &XS },
            &mut ViewMut { data: &mut dx, shape: &XS },
        );
        assert_eq!(dx, [0., 0., 0., 0., 10., 0., 0., 0., 0.]);

        // Kernel 3, stride 2, padding 1: windows are clipped at the borders and padding never wins,
        // even over negative values.
        let neg: [f64; 9] = X.map(|v| -v);
        let p = pool(3, 2, [1; 4], true);
        max_pool2d(&p, View { data: &neg, shape: &XS }, &mut ViewMut { data: &mut y, shape: &[1, 1, 2, 2] });
        assert_eq!(y, [-1., -2., -4., -5.]);
    }

    #[test]
    fn global_avg_pool_and_grad() {
        let mut y = [0.0; 2];
        let x: [f64; 8] = [1., 2., 3., 6., 0., 0., 0., -4.];
        global_avg_pool(View { data: &x, shape: &[1, 2, 2, 2] }, &mut ViewMut { data: &mut y, shape: &[1, 2, 1, 1] });
        assert_eq!(y, [3., -1.]);
        let mut dx = [0.0; 8];
        global_avg_pool_grad(View { data: &[4., 8.], shape: &[1, 2, 1, 1] }, &mut ViewMut { data: &mut dx, shape: &[1, 2, 2, 2] });
        assert_eq!(dx, [1., 1., 1., 1., 2., 2., 2., 2.]);
    }
}
