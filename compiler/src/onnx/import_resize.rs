//! The importer's arms for Resize and ConvTranspose, composed from primitives pock has.
//!
//! Resize is separable: each resized axis is one 1-D interpolation whose weights depend only on
//! the shapes and attributes, so they are computed here, at compile time, as ONNX's reference
//! computes them (`onnx/reference/ops/op_resize.py`: the source coordinate per output position,
//! its neighbours, their coefficients, edge clamping, `exclude_outside`). Mode `nearest` is a
//! Gather with constant indices along the axis; `linear` and `cubic` are a product with a
//! constant `[out, in]` matrix (a dense MatMul for the last axis, a BatchMatMul whose batch is
//! the axes before otherwise). Their gradients are Gather's and MatMul's.
//!
//! ConvTranspose is the input gradient of the convolution with the same attributes
//! (`ConvOp::Conv2dGradInput`: `x` read as the convolution's output gradient, ONNX's
//! `[C_in, C_out / group, kH, kW]` weight read as that convolution's `[O, C / group, kH, kW]`
//! weight); its gradients are a forward convolution (input) and the convolution's weight
//! gradient with the two activations swapped (weight), rules of `compiler/src/ops/conv.rs`.

use pock_engine::ops::{Conv2d, ConvOp, DenseOp, MatMul, MatMulOp, MoveOp};

use super::{Ctx, Importer, Value};
use crate::ir::{TensorId, Values};
use crate::onnx::{Attribute, ImportError};

/// How output positions map to input coordinates (`coordinate_transformation_mode`).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Coordinates {
    HalfPixel,
    HalfPixelSymmetric,
    PytorchHalfPixel,
    AlignCorners,
    Asymmetric,
}

/// The interpolation (`mode`, with `nearest_mode`, `cubic_coeff_a` and `antialias`).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Interpolation {
    Nearest(Rounding),
    Linear { antialias: bool },
    Cubic { a: f64, antialias: bool },
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Rounding {
    RoundPreferFloor,
    RoundPreferCeil,
    Floor,
    Ceil,
}

/// One resized axis: `input` elements to `output`, with the scale factor ONNX's reference uses.
#[derive(Clone, Copy, Debug)]
struct AxisResize {
    input: usize,
    output: usize,
    scale: f64,
}

impl Interpolation {
    /// The coefficients of the neighbours of a source coordinate whose distance past its lower
    /// neighbour is `ratio` (1 on an integer coordinate), as ONNX's reference `get_coeffs`.
    fn coeffs(self, ratio: f64, scale: f64) -> Vec<f64> {
        match self {
            Interpolation::Nearest(mode) => {
                let upper = if ratio.fract() == 0.0 {
                    true
                } else {
                    match mode {
                        Rounding::RoundPreferFloor => ratio > 0.5,
                        Rounding::RoundPreferCeil => ratio >= 0.5,
                        Rounding::Floor => false,
                        Rounding::Ceil => true,
                    }
                };
                if upper {
                    vec![0.0, 1.0]
                } else {
                    vec![1.0, 0.0]
                }
            }
            Interpolation::Linear { antialias: false } => vec![1.0 - ratio, ratio],
            Interpolation::Linear { antialias: true } => {
                let scale = scale.min(1.0);
                let start = (-1.0 / scale).floor() as i64 + 1;
                let footprint = 2 - 2 * start;
                let c: Vec<f64> = (start..start + footprint).map(|i| (1.0 - ((i as f64 - ratio) * scale).abs()).clamp(0.0, 1.0)).collect();
                let sum: f64 = c.iter().sum();
                c.into_iter().map(|v| v / sum).collect()
            }
            Interpolation::Cubic { a, antialias: false } => {
                let r = ratio;
                vec![
                    ((a * (r + 1.0) - 5.0 * a) * (r + 1.0) + 8.0 * a) * (r + 1.0) - 4.0 * a,
                    ((a + 2.0) * r - (a + 3.0)) * r * r + 1.0,
                    ((a + 2.0) * (1.0 - r) - (a + 3.0)) * (1.0 - r) * (1.0 - r) + 1.0,
                    ((a * ((1.0 - r) + 1.0) - 5.0 * a) * ((1.0 - r) + 1.0) + 8.0 * a) * ((1.0 - r) + 1.0) - 4.0 * a,
                ]
            }
            Interpolation::Cubic { a, antialias: true } => {
                let scale = scale.min(1.0);
                let coeff = |x: f64| {
                    let x = x.abs();
                    let (x2, x3) = (x * x, x * x * x);
                    if x <= 1.0 {
                        (a + 2.0) * x3 - (a + 3.0) * x2 + 1.0
                    } else if x < 2.0 {
                        a * x3 - 5.0 * a * x2 + 8.0 * a * x - 4.0 * a
                    } else {
                        0.0
                    }
                };
                let start = (-2.0 / scale).floor() as i64 + 1;
                let end = 2 - start;
                let c: Vec<f64> = (start..end).map(|i| coeff(scale * (i as f64 - ratio))).collect();
                let sum: f64 = c.iter().sum();
                c.into_iter().map(|v| v / sum).collect()
            }
        }
    }
}

impl Coordinates {
    /// The source coordinate of output position `y` (ONNX's `_compute_x_ori`).
    fn source(self, y: f64, axis: AxisResize) -> f64 {
        let (input, scale) = (axis.input as f64, axis.scale);
        let output = scale * input;
        match self {
            Coordinates::HalfPixel => (y + 0.5) / scale - 0.5,
            Coordinates::HalfPixelSymmetric => {
                let adjustment = axis.output as f64 / output;
                let offset = input / 2.0 * (1.0 - adjustment);
                offset + (y + 0.5) / scale - 0.5
            }
            Coordinates::PytorchHalfPixel if output == 1.0 => -0.5,
            Coordinates::PytorchHalfPixel => (y + 0.5) / scale - 0.5,
            Coordinates::AlignCorners if output == 1.0 => 0.0,
            Coordinates::AlignCorners => y * (input - 1.0) / (output - 1.0),
            Coordinates::Asymmetric => y / scale,
        }
    }
}

/// The `[output, input]` interpolation matrix of one axis (row-major), each output position's
/// coefficients added at its neighbours' indices clamped to the axis (ONNX's edge padding).
fn interpolation_matrix(axis: AxisResize, coords: Coordinates, interp: Interpolation, exclude_outside: bool) -> Vec<f64> {
    let (n_in, n_out) = (axis.input, axis.output);
    let mut m = vec![0.0; n_out * n_in];
    for y in 0..n_out {
        let x = coords.source(y as f64, axis);
        let floor = x.floor();
        let ratio = if x == floor { 1.0 } else { x - floor };
        let mut c = interp.coeffs(ratio, axis.scale);
        let n = c.len() as i64;
        // The first neighbour, as the reference's vectorised `start_padded` (edge-padded indices
        // shifted back): for an even count the nearest `n` around x, preferring smaller indices.
        let frac = x - floor;
        let offset = if n % 2 == 0 {
            if frac == 0.0 {
                -(n / 2)
            } else {
                -(n / 2) + 1
            }
        } else {
            let base = -((n - 1) / 2);
            if frac <= 0.5 {
                base
            } else {
                base + 1
            }
        };
        let start = floor as i64 + offset;
        if exclude_outside {
            for (k, v) in c.iter_mut().enumerate() {
                let i = start + k as i64;
                if i < 0 || i >= n_in as i64 {
                    *v = 0.0;
                }
            }
            let sum: f64 = c.iter().sum();
            if sum != 0.0 {
                c.iter_mut().for_each(|v| *v /= sum);
            }
        }
        for (k, v) in c.iter().enumerate() {
            let i = (start + k as i64).clamp(0, n_in as i64 - 1) as usize;
            m[y * n_in + i] += v;
        }
    }
    m
}

impl Importer<'_> {
    /// Resize (opset 13 to 21): `nearest`, `linear` and `cubic` on any axes, scales or sizes
    /// given as constants, every coordinate mode but `tf_crop_and_resize`.
    pub(super) fn resize(&mut self, ctx: &Ctx) -> Result<(), ImportError> {
        let x = self.tensor(ctx, ctx.input(0)?)?;
        let xs = self.graph.shape(x).to_vec();
        let rank = xs.len();
        let refuse = |attr: &str, value: &str, what: &str| ctx.err(format!("attribute '{attr}' = {value} is not supported: {what}"));
        let coords = match ctx.string("coordinate_transformation_mode", "half_pixel")?.as_str() {
            "half_pixel" => Coordinates::HalfPixel,
            "half_pixel_symmetric" => Coordinates::HalfPixelSymmetric,
            "pytorch_half_pixel" => Coordinates::PytorchHalfPixel,
            "align_corners" => Coordinates::AlignCorners,
            "asymmetric" => Coordinates::Asymmetric,
            other => {
                return Err(refuse(
                    "coordinate_transformation_mode",
                    &format!("'{other}'"),
                    "pock resizes with half_pixel, half_pixel_symmetric, pytorch_half_pixel, align_corners or asymmetric \
                     (tf_crop_and_resize's region of interest is not implemented; crop with a Slice before the Resize instead)",
                ))
            }
        };
        let antialias = ctx.int("antialias", 0)? != 0;
        let interp = match ctx.string("mode", "nearest")?.as_str() {
            "nearest" => {
                if antialias {
                    return Err(refuse(
                        "antialias",
                        "1",
                        "ONNX defines antialiasing for linear and cubic modes only; drop it or pick one of those",
                    ));
                }
                Interpolation::Nearest(match ctx.string("nearest_mode", "round_prefer_floor")?.as_str() {
                    "round_prefer_floor" => Rounding::RoundPreferFloor,
                    "round_prefer_ceil" => Rounding::RoundPreferCeil,
                    "floor" => Rounding::Floor,
                    "ceil" => Rounding::Ceil,
                    other => {
                        return Err(refuse(
                            "nearest_mode",
                            &format!("'{other}'"),
                            "ONNX's values are round_prefer_floor, round_prefer_ceil, floor and ceil",
                        ))
                    }
                })
            }
            "linear" => Interpolation::Linear { antialias },
            "cubic" => Interpolation::Cubic { a: f64::from(ctx.float("cubic_coeff_a", -0.75)?), antialias },
            other => return Err(refuse("mode", &format!("'{other}'"), "ONNX's modes are nearest, linear and cubic")),
        };
        let exclude_outside = ctx.int("exclude_outside", 0)? != 0;
        let axes: Vec<usize> = match self.ints_attr(ctx, "axes")? {
            Some(a) => a.iter().map(|&a| crate::onnx::fold::axis(a, rank)).collect::<Result<_, _>>().map_err(|e| ctx.err(e))?,
            None => (0..rank).collect(),
        };
        let resized = self.resize_axes(ctx, &xs, &axes)?;
        let name = ctx.node.name.clone();
        let mut y = x;
        let last = resized.iter().rposition(|r| r.is_some());
        for (k, r) in resized.iter().enumerate() {
            let Some(axis) = *r else { continue };
            let step = if Some(k) == last { name.clone() } else { format!("{name}.axis{k}") };
            y = if let Interpolation::Nearest(_) = interp {
                let m = interpolation_matrix(axis, coords, interp, false);
                let indices: Vec<i64> = m.chunks(axis.input).map(|row| row.iter().position(|&v| v != 0.0).unwrap_or(0) as i64).collect();
                let idx = self.graph.typed_constant(format!("{step}.indices"), vec![axis.output], Values::I64(indices));
                self.emit(ctx, &step, MoveOp::Gather { axis: k }, &[y, idx])?
            } else {
                let m = interpolation_matrix(axis, coords, interp, exclude_outside);
                self.apply_along(ctx, &step, y, k, axis, m)?
            };
        }
        self.set(ctx, 0, Value::Tensor(y))
    }

    /// The axes of `x` a Resize changes (indexed by axis; `None` for unchanged ones), from its
    /// scales or sizes input and `keep_aspect_ratio_policy`, as ONNX's reference decides them.
    fn resize_axes(&self, ctx: &Ctx, xs: &[usize], axes: &[usize]) -> Result<Vec<Option<AxisResize>>, ImportError> {
        let rank = xs.len();
        let nonempty = |i: usize| -> Result<Option<crate::onnx::fold::Const>, ImportError> {
            match ctx.optional_input(i) {
                None => Ok(None),
                Some(name) => {
                    let c = self.constant(ctx, name, if i == 2 { "scales" } else { "sizes" })?;
                    Ok((!c.is_empty()).then_some(c))
                }
            }
        };
        let mut scales = vec![1.0f64; rank];
        let mut sizes = xs.to_vec();
        match (nonempty(2)?, nonempty(3)?) {
            (Some(_), Some(_)) => return Err(ctx.err("it has both scales and sizes; ONNX allows only one of them")),
            (None, None) => return Err(ctx.err("it has neither scales nor sizes (one of the two must be a non-empty constant)")),
            (Some(s), None) => {
                let v = s.as_f32();
                if v.len() != axes.len() {
                    return Err(ctx.err(format!("its scales {v:?} must have one value per resized axis ({} of them)", axes.len())));
                }
                for (&a, &s) in axes.iter().zip(&v) {
                    if !(s > 0.0 && s.is_finite()) {
                        return Err(ctx.err(format!("its scales {v:?} must be positive")));
                    }
                    scales[a] = f64::from(s);
                    sizes[a] = (f64::from(s) * xs[a] as f64).floor() as usize;
                }
            }
            (None, Some(s)) => {
                let v = s.as_i64().map_err(|e| ctx.err(format!("its sizes: {e}")))?;
                if v.len() != axes.len() || v.iter().any(|&d| d <= 0) {
                    return Err(ctx.err(format!("its sizes {v:?} must be one positive size per resized axis ({} of them)", axes.len())));
                }
                for (&a, &d) in axes.iter().zip(&v) {
                    sizes[a] = d as usize;
                    scales[a] = d as f64 / xs[a] as f64;
                }
                let policy = ctx.string("keep_aspect_ratio_policy", "stretch")?;
                let pick = match policy.as_str() {
                    "stretch" => None,
                    "not_larger" => Some(f64::min as fn(f64, f64) -> f64),
                    "not_smaller" => Some(f64::max as fn(f64, f64) -> f64),
                    other => {
                        return Err(ctx.err(format!(
                            "attribute 'keep_aspect_ratio_policy' = '{other}' is not an ONNX value (stretch, not_larger, not_smaller)"
                        )))
                    }
                };
                if let Some(pick) = pick {
                    let scale = axes.iter().map(|&a| scales[a]).reduce(pick).unwrap_or(1.0);
                    for &a in axes {
                        scales[a] = scale;
                        sizes[a] = (scale * xs[a] as f64 + 0.5) as usize;
                    }
                }
            }
        }
        Ok((0..rank)
            .map(|a| {
                let unchanged = sizes[a] == xs[a] && (scales[a] - 1.0).abs() <= 1e-9;
                (!unchanged && sizes[a] > 0 && xs[a] > 0).then_some(AxisResize { input: xs[a], output: sizes[a], scale: scales[a] })
            })
            .collect())
    }

    /// `x` with axis `k` replaced by the product with the constant `[out, in]` matrix `m`.
    fn apply_along(
        &mut self,
        ctx: &Ctx,
        name: &str,
        x: TensorId,
        k: usize,
        axis: AxisResize,
        m: Vec<f64>,
    ) -> Result<TensorId, ImportError> {
        let xs = self.graph.shape(x).to_vec();
        let before: usize = xs[..k].iter().product();
        let after: usize = xs[k + 1..].iter().product();
        let matrix = self.graph.constant(format!("{name}.weights"), vec![axis.output, axis.input], m.iter().map(|&v| v as f32).collect());
        let mut out = xs.clone();
        out[k] = axis.output;
        let reshape = |s: &mut Self, suffix: &str, t: TensorId, shape: Vec<usize>| -> Result<TensorId, ImportError> {
            if s.graph.shape(t) == shape.as_slice() {
                Ok(t)
            } else {
                s.emit(ctx, &format!("{name}.{suffix}"), DenseOp::Reshape { shape }, &[t])
            }
        };
        let y = if after == 1 {
            // The last axis: rows times the transposed matrix, the dense MatMul.
            let rows = reshape(self, "rows", x, vec![before, axis.input])?;
            self.emit(ctx, &format!("{name}.matmul"), DenseOp::MatMul(MatMul { trans_a: false, trans_b: true }), &[rows, matrix])?
        } else if before == 1 {
            let cols = reshape(self, "columns", x, vec![axis.input, after])?;
            self.emit(ctx, &format!("{name}.matmul"), DenseOp::MatMul(MatMul { trans_a: false, trans_b: false }), &[matrix, cols])?
        } else {
            let batch = reshape(self, "batch", x, vec![before, axis.input, after])?;
            self.emit(ctx, &format!("{name}.matmul"), MatMulOp::BatchMatMul(MatMul { trans_a: false, trans_b: false }), &[matrix, batch])?
        };
        reshape(self, "out", y, out)
    }

    /// ConvTranspose (2-D) as `Conv2dGradInput` of the convolution with its strides, pads,
    /// dilations and groups, whose input size is ConvTranspose's output size; the optional bias
    /// is a BiasAdd.
    pub(super) fn conv_transpose(&mut self, ctx: &Ctx) -> Result<(), ImportError> {
        let x = self.tensor(ctx, ctx.input(0)?)?;
        let w = self.tensor(ctx, ctx.input(1)?)?;
        let (xs, ws) = (self.graph.shape(x).to_vec(), self.graph.shape(w).to_vec());
        if xs.len() != 4 || ws.len() != 4 {
            return Err(ctx.err(format!(
                "only 1-D and 2-D transposed convolutions are supported (input {xs:?}, weight {ws:?}); 3-D ones are not implemented"
            )));
        }
        let [stride, dilation, kernel] = ctx.conv_window(&ws)?;
        let groups =
            usize::try_from(ctx.int("group", 1)?).ok().filter(|&g| g > 0).ok_or_else(|| ctx.err("attribute 'group' must be positive"))?;
        let output_padding = ctx.sizes("output_padding", 2, 0)?;
        let auto = ctx.string("auto_pad", "NOTSET")?;
        let output_shape = match ctx.node.attribute("output_shape") {
            None => None,
            Some(Attribute::Ints(v)) => {
                // ONNX allows the whole output shape or its spatial part.
                let spatial = if v.len() == 4 { &v[2..] } else { &v[..] };
                if spatial.len() != 2 || spatial.iter().any(|&d| d <= 0) {
                    return Err(ctx.err(format!("attribute 'output_shape' {v:?} must hold two positive spatial sizes")));
                }
                Some([spatial[0] as usize, spatial[1] as usize])
            }
            Some(_) => return Err(ctx.err("attribute 'output_shape' is not a list of integers")),
        };
        // The full (unpadded) output extent of each axis: stride * (in - 1) + output_padding + kernel.
        let full = |a: usize| stride[a] * (xs[2 + a] - 1) + output_padding[a] + kernel[a];
        let explicit_pads = auto == "NOTSET" || auto == "VALID";
        let (padding, out_hw) = if explicit_pads {
            let p = if auto == "VALID" { vec![0; 4] } else { ctx.sizes("pads", 4, 0)? };
            let mut out = [0usize; 2];
            for a in 0..2 {
                let natural = full(a)
                    .checked_sub(p[a] + p[a + 2])
                    .filter(|&o| o > 0)
                    .ok_or_else(|| ctx.err(format!("its pads {p:?} remove the whole output of axis {a} (extent {})", full(a))))?;
                out[a] = match output_shape {
                    // An explicit output shape past the natural size is extra output padding.
                    Some(o) if o[a] >= natural - output_padding[a] => o[a],
                    Some(o) => {
                        return Err(ctx.err(format!("attribute 'output_shape' {o:?} is smaller than the transposed convolution's output")))
                    }
                    None => natural,
                };
            }
            ([p[0], p[1], p[2], p[3]], out)
        } else if auto == "SAME_UPPER" || auto == "SAME_LOWER" {
            let target = output_shape.unwrap_or([xs[2] * stride[0], xs[3] * stride[1]]);
            let mut pads = [0usize; 4];
            for a in 0..2 {
                let total = full(a).checked_sub(target[a]).ok_or_else(|| {
                    ctx.err(format!("its output shape {target:?} is larger than the transposed convolution's full output on axis {a}"))
                })?;
                let (begin, end) = if auto == "SAME_UPPER" { (total / 2, total - total / 2) } else { (total - total / 2, total / 2) };
                pads[a] = begin;
                pads[a + 2] = end;
            }
            (pads, target)
        } else {
            return Err(ctx.err(format!("attribute 'auto_pad' = '{auto}' is not an ONNX value (NOTSET, VALID, SAME_UPPER, SAME_LOWER)")));
        };
        let conv = Conv2d { stride: [stride[0], stride[1]], padding, dilation: [dilation[0], dilation[1]], groups };
        // The convolution whose input gradient this is must map the output size back to the input's.
        let back = |a: usize| (out_hw[a] + padding[a] + padding[a + 2]).checked_sub(kernel[a]).map(|s| s / stride[a] + 1);
        if back(0) != Some(xs[2]) || back(1) != Some(xs[3]) {
            return Err(ctx.err(format!(
                "its output {out_hw:?} (output_padding {output_padding:?}) is not one that a convolution with strides {stride:?} and \
                 pads {padding:?} maps back to the input's {:?}: output_padding must be smaller than the stride",
                &xs[2..]
            )));
        }
        let name = ctx.node.name.clone();
        let mut y = self.emit(ctx, &name, ConvOp::Conv2dGradInput { conv, input_hw: out_hw }, &[x, w])?;
        if let Some(b) = ctx.optional_input(2) {
            let b = self.tensor(ctx, b)?;
            y = self.emit(ctx, &format!("{name}.bias_add"), DenseOp::BiasAdd, &[y, b])?;
        }
        self.set(ctx, 0, Value::Tensor(y))
    }
}
