//! Direct 2-D convolution and its two gradients.
//!
//! Every kernel walks the same index relation: output position `(oh, ow)` reads input position
//! `(oh * stride + kh * dilation - pad_top, ow * stride + kw * dilation - pad_left)` through kernel
//! tap `(kh, kw)`, and taps that land in the padding contribute nothing. The forward pass and the
//! weight gradient gather along that relation; the input gradient scatters along it.

use crate::kernels::{Float, View, ViewMut};
use crate::ops::{Activation, Conv2d};

use crate::kernels::conv_geometry::ConvGeometry as Dims;

/// The input coordinate that output coordinate `out` reads through kernel tap `tap` along one
/// axis, or `None` when it falls in the padding.
fn input_coord(out: usize, tap: usize, stride: usize, dilation: usize, pad_before: usize, len: usize) -> Option<usize> {
    (out * stride + tap * dilation).checked_sub(pad_before).filter(|&i| i < len)
}

/// `y = conv(x, w)`.
pub fn conv2d<T: Float>(c: &Conv2d, x: View<T>, w: View<T>, y: &mut ViewMut<T>) {
    let d = Dims::new(c, x.shape, w.shape, y.shape).expect("convolution shapes are validated before kernels run");
    for n in 0..d.n {
        for o in 0..d.o {
            let first_channel = (o / d.og) * d.cg;
            for oh in 0..d.ho {
                for ow in 0..d.wo {
                    let mut acc = T::zero();
                    for ci in 0..d.cg {
                        for kh in 0..d.kh {
                            let Some(ih) = input_coord(oh, kh, c.stride[0], c.dilation[0], c.padding[0], d.h) else { continue };
                            for kw in 0..d.kw {
                                let Some(iw) = input_coord(ow, kw, c.stride[1], c.dilation[1], c.padding[1], d.w) else { continue };
                                acc += x.data[d.input_index(n, first_channel + ci, ih, iw)] * w.data[d.weight_index(o, ci, kh, kw)];
                            }
                        }
                    }
                    y.data[d.output_index(n, o, oh, ow)] = acc;
                }
            }
        }
    }
}

/// `dx = d conv(x, w) / dx` applied to `dy`: every `dy` element is scattered back through the
/// weights onto the input positions it was computed from.
pub fn conv2d_grad_input<T: Float>(c: &Conv2d, dy: View<T>, w: View<T>, dx: &mut ViewMut<T>) {
    let d = Dims::new(c, dx.shape, w.shape, dy.shape).expect("convolution shapes are validated before kernels run");
    dx.data.fill(T::zero());
    for n in 0..d.n {
        for o in 0..d.o {
            let first_channel = (o / d.og) * d.cg;
            for oh in 0..d.ho {
                for ow in 0..d.wo {
                    let g = dy.data[d.output_index(n, o, oh, ow)];
                    for ci in 0..d.cg {
                        for kh in 0..d.kh {
                            let Some(ih) = input_coord(oh, kh, c.stride[0], c.dilation[0], c.padding[0], d.h) else { continue };
                            for kw in 0..d.kw {
                                let Some(iw) = input_coord(ow, kw, c.stride[1], c.dilation[1], c.padding[1], d.w) else { continue };
                                dx.data[d.input_index(n, first_channel + ci, ih, iw)] += g * w.data[d.weight_index(o, ci, kh, kw)];
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `dw = d conv(x, w) / dw` applied to `dy`, summed over the batch.
pub fn conv2d_grad_weight<T: Float>(c: &Conv2d, dy: View<T>, x: View<T>, dw: &mut ViewMut<T>) {
    let rows = 0..dw.shape.first().copied().unwrap_or(0);
    conv2d_grad_weight_rows(c, rows, dy, x, dw);
}

/// Rows `rows` (output channels) of the weight gradient, from those channels of `dy`: `dw` is
/// `[rows.len(), C/groups, KH, KW]`. Each row reads the input channels of its own group only.
pub fn conv2d_grad_weight_rows<T: Float>(c: &Conv2d, rows: core::ops::Range<usize>, dy: View<T>, x: View<T>, dw: &mut ViewMut<T>) {
    let &[_, cg, kh, kw] = dw.shape else { unreachable!("the weight gradient is 4-D (shape rule)") };
    let full = [dy.shape[1], cg, kh, kw];
    let d = Dims::new(c, x.shape, &full, dy.shape).expect("convolution shapes are validated before kernels run");
    // Row `o` of the full gradient lands at row `o - rows.start` of `dw`.
    let offset = d.weight_index(rows.start, 0, 0, 0);
    for o in rows {
        let first_channel = (o / d.og) * d.cg;
        for ci in 0..d.cg {
            for kh in 0..d.kh {
                for kw in 0..d.kw {
                    let mut acc = T::zero();
                    for n in 0..d.n {
                        for oh in 0..d.ho {
                            let Some(ih) = input_coord(oh, kh, c.stride[0], c.dilation[0], c.padding[0], d.h) else { continue };
                            for ow in 0..d.wo {
                                let Some(iw) = input_coord(ow, kw, c.stride[1], c.dilation[1], c.padding[1], d.w) else { continue };
                                acc += dy.data[d.output_index(n, o, oh, ow)] * x.data[d.input_index(n, first_channel + ci, ih, iw)];
                            }
                        }
                    }
                    dw.data[d.weight_index(o, ci, kh, kw) - offset] = acc;
                }
            }
        }
    }
}

/// `y = act(conv(x, w) + b)`: the convolution's whole sum, then the bias of the output channel,
/// then the activation, each with the formula of its own op (`conv2d`, `dense::bias_add`,
/// `dense::relu`/`dense::clip`), so the result equals the three ops run one after another bit for
/// bit.
pub fn conv2d_bias_act<T: Float>(c: &Conv2d, act: &Activation, x: View<T>, w: View<T>, b: View<T>, y: &mut ViewMut<T>) {
    conv2d(c, x, w, y);
    let plane = y.shape[2..].iter().product::<usize>();
    if plane == 0 || b.data.is_empty() {
        return;
    }
    // Planes are ordered (n, o): plane `p` belongs to output channel `p % O`.
    for (p, y_plane) in y.data.chunks_exact_mut(plane).enumerate() {
        bias_act(act, b.data[p % b.data.len()], y_plane);
    }
}

/// The epilogue of a fused convolution on a run of one output channel: `v = act(v + bias)`, with
/// `bias_add`'s, `relu`'s and `clip`'s formulas. The fast CPU kernel runs this same function.
#[inline(always)]
pub fn bias_act<T: Float>(act: &Activation, bias: T, run: &mut [T]) {
    match *act {
        Activation::Identity => run.iter_mut().for_each(|v| *v += bias),
        Activation::Relu => run.iter_mut().for_each(|v| *v = super::dense::relu_value(*v + bias)),
        Activation::Clip(c) => {
            let (lo, hi) = (T::from_f32(c.min), T::from_f32(c.max));
            run.iter_mut().for_each(|v| *v = super::dense::clip_value(*v + bias, lo, hi))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(stride: usize, padding: [usize; 4], dilation: usize, groups: usize) -> Conv2d {
        Conv2d { stride: [stride; 2], padding, dilation: [dilation; 2], groups }
    }

    #[test]
    fn conv2d_matches_hand_computed_values() {
        // x is one 3x3 channel holding 1..9, w a 2x2 kernel [[1, 0], [0, -1]]: each output is the
        // top-left element of its window minus the bottom-right one, which is always -4.
        let x: [f64; 9] = [1., 2., 3., 4., 5., 6., 7., 8., 9.];
        let w = [1., 0., 0., -1.];
        let mut y = [0.0; 4];
        let c = conv(1, [0; 4], 1, 1);
        conv2d(
            &c,
            View { data: &x, shape: &[1, 1, 3, 3] },
            View { data: &w, shape: &[1, 1, 2, 2] },
            &mut ViewMut { data: &mut y, shape: &[1, 1, 2, 2] },
        );
        assert_eq!(y, [-4.0; 4]);

        // Padding one on the top and left only (asymmetric), stride 2: windows start at padded
        // (0,0) and (0,2), (2,0), (2,2). The top-left tap lands in the padding for the first row
        // and column of windows.
        let mut y = [0.0; 4];
        let c = conv(2, [1, 1, 0, 0], 1, 1);
        conv2d(
            &c,
            View { data: &x, shape: &[1, 1, 3, 3] },
            View { data: &w, shape: &[1, 1, 2, 2] },
            &mut ViewMut { data: &mut y, shape: &[1, 1, 2, 2] },
        );
        // Window (0,0): 0 - x[0][0] = -1; (0,1): 0 - x[0][2] = -3; (1,0): 0 - x[2][0] = -7;
        // (1,1): x[1][1] - x[2][2] = 5 - 9 = -4.
        assert_eq!(y, [-1.0, -3.0, -7.0, -4.0]);
    }

    #[test]
    fn dilated_grouped_conv2d_matches_hand_computed_values() {
        // Two groups of one channel each; dilation 2 makes a 2x2 kernel read the corners of a 3x3
        // input. Group 0 sums the corners, group 1 takes top-left minus bottom-right.
        let x: [f64; 18] = [1., 2., 3., 4., 5., 6., 7., 8., 9., 10., 20., 30., 40., 50., 60., 70., 80., 90.];
        let w = [1., 1., 1., 1., 1., 0., 0., -1.];
        let mut y = [0.0; 2];
        let c = conv(1, [0; 4], 2, 2);
        conv2d(
            &c,
            View { data: &x, shape: &[1, 2, 3, 3] },
            View { data: &w, shape: &[2, 1, 2, 2] },
            &mut ViewMut { data: &mut y, shape: &[1, 2, 1, 1] },
        );
        assert_eq!(y, [1. + 3. + 7. + 9., 10. - 90.]);
    }

    #[test]
    fn gradients_are_adjoint_to_the_forward_pass() {
        // <conv(x, w), dy> = <x, grad_input(dy, w)> = <w, grad_weight(dy, x)> for any x, w, dy,
        // because the convolution is bilinear. Values are small integers so the sums are exact.
        let c = conv(2, [1, 0, 2, 1], 1, 2);
        let (xs, ws, ys) = ([2, 4, 5, 4], [6, 2, 3, 2], [2, 6, 3, 2]);
        let fill = |len: usize, k: usize| (0..len).map(|i| ((i * k + 3) % 7) as f64 - 3.0).collect::<alloc::vec::Vec<f64>>();
        let (x, w, dy) = (fill(160, 5), fill(72, 3), fill(72, 2));
        let mut y = alloc::vec![0.0; 72];
        conv2d(&c, View { data: &x, shape: &xs }, View { data: &w, shape: &ws }, &mut ViewMut { data: &mut y, shape: &ys });
        let mut dx = alloc::vec![0.0; 160];
        conv2d_grad_input(&c, View { data: &dy, shape: &ys }, View { data: &w, shape: &ws }, &mut ViewMut { data: &mut dx, shape: &xs });
        let mut dw = alloc::vec![0.0; 72];
        conv2d_grad_weight(&c, View { data: &dy, shape: &ys }, View { data: &x, shape: &xs }, &mut ViewMut { data: &mut dw, shape: &ws });
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(p, q)| p * q).sum::<f64>();
        let forward = dot(&y, &dy);
        assert_ne!(forward, 0.0);
        assert_eq!(forward, dot(&x, &dx));
        assert_eq!(forward, dot(&w, &dw));
    }

    #[test]
    fn weight_gradient_rows_are_rows_of_the_full_gradient() {
        // Grouped (3 groups of 2 output channels), strided and padded, so that the rows 1..4
        // straddle two groups and read two different input-channel slices.
        let c = conv(2, [1, 0, 1, 1], 1, 3);
        let (n, ch, h, w, o) = (2, 6, 5, 4, 6);
        let x: Vec<f64> = (0..n * ch * h * w).map(|i| ((i * 37 % 101) as f64 - 50.0) / 25.0).collect();
        let y_shape = [n, o, 3, 2];
        let dy: Vec<f64> = (0..y_shape.iter().product::<usize>()).map(|i| ((i * 53 % 89) as f64 - 44.0) / 30.0).collect();
        let w_shape = [o, ch / 3, 2, 2];
        let mut full = vec![0.0; w_shape.iter().product()];
        let (xv, dyv) = (View { data: &x, shape: &[n, ch, h, w] }, View { data: &dy, shape: &y_shape });
        conv2d_grad_weight(&c, dyv, xv, &mut ViewMut { data: &mut full, shape: &w_shape });
        let rows_shape = [3, ch / 3, 2, 2];
        let mut rows = vec![f64::NAN; rows_shape.iter().product()];
        conv2d_grad_weight_rows(&c, 1..4, dyv, xv, &mut ViewMut { data: &mut rows, shape: &rows_shape });
        let per_row = (ch / 3) * 4;
        assert_eq!(rows, full[per_row..4 * per_row]);
    }

    /// The fused op equals Conv2d, then BiasAdd, then the activation, bit for bit, on values that
    /// land on the kinks (0 and 6), below, between and above them, and on NaN and infinities.
    #[test]
    fn fused_conv_equals_conv_then_bias_then_activation_bit_for_bit() {
        use crate::kernels::reference::dense::{bias_add, clip, relu};
        use crate::ops::Clip;
        let c = conv(2, [1, 0, 1, 1], 1, 2);
        let (xs, ws, ys) = ([2usize, 4, 5, 4], [6usize, 2, 3, 2], [2usize, 6, 3, 2]);
        let mut x: Vec<f32> = (0..160).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
        x[3] = f32::NAN;
        x[90] = f32::INFINITY;
        let w: Vec<f32> = (0..72).map(|i| ((i * 53 % 89) as f32 - 44.0) / 13.0).collect();
        // Biases that cancel some sums exactly (0 after the add) and push others onto 6.
        let b = [0.5f32, -1.25, 6.0, 0.0, -6.0, 3.0];
        let clip6 = Clip { min: 0.0, max: 6.0 };
        for act in [Activation::Identity, Activation::Relu, Activation::Clip(clip6), Activation::Clip(Clip { min: -1.0, max: 0.5 })] {
            let mut conv_out = vec![0f32; 72];
            conv2d(&c, View { data: &x, shape: &xs }, View { data: &w, shape: &ws }, &mut ViewMut { data: &mut conv_out, shape: &ys });
            let mut biased = vec![0f32; 72];
            bias_add(View { data: &conv_out, shape: &ys }, View { data: &b, shape: &[6] }, &mut ViewMut { data: &mut biased, shape: &ys });
            let mut want = vec![0f32; 72];
            let mut out = ViewMut { data: &mut want, shape: &ys };
            match act {
                Activation::Identity => out.data.copy_from_slice(&biased),
                Activation::Relu => relu(View { data: &biased, shape: &ys }, &mut out),
                Activation::Clip(k) => clip(&k, View { data: &biased, shape: &ys }, &mut out),
            }
            let mut got = vec![f32::NAN; 72];
            let (xv, wv, bv) = (View { data: &x, shape: &xs }, View { data: &w, shape: &ws }, View { data: &b, shape: &[6] });
            conv2d_bias_act(&c, &act, xv, wv, bv, &mut ViewMut { data: &mut got, shape: &ys });
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<u32>>();
            assert_eq!(bits(&got), bits(&want), "{act:?}");
        }
    }
}
