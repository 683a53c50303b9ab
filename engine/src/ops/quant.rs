//! The quant family: int8 inference and training in the manner of the Tiny Training Engine (Lin
//! et al., "On-Device Training Under 256KB Memory", NeurIPS 2022). The compiler's
//! `--quantize int8` pass (`compiler/src/quantize.rs`) rewrites a float model into these ops.
//!
//! Conventions:
//! - An int8 activation `q` stands for the real value `scale * (q - zero_point)` (per tensor,
//!   [`QParams`], from calibration).
//! - A quantized linear layer's weight `w` is int8 per output channel: the real weight is
//!   `w_scale[o] * w[o, i]`. A frozen weight is an `int8` tensor; a trained one is an `f32`
//!   master copy of the integer-domain values, rounded to the nearest integer and clamped to
//!   [-127, 127] wherever it is read, so that updates smaller than one step accumulate.
//! - The bias is `f32` holding int32-domain values (`b[o] = real bias / (x.scale * w_scale[o])`),
//!   rounded to an integer when read; the dot product accumulates in `i32`, and the output is
//!   requantized to int8 (or, for the logits, dequantized to `f32`).
//! - Gradients are real-valued (`f32`, with respect to the real value a tensor stands for):
//!   rounding passes them straight through, and an element the output clamp saturated (the fused
//!   ReLU/ReLU6 or the int8 range) passes none.
//! - QAS (quantization-aware scaling, section 2.2 of the paper): the gradient of an integer-domain
//!   weight is `G_w = w_scale * G_W` and that of the bias `G_b = x.scale * w_scale * G_B` (`G_W`,
//!   `G_B`: the real weight's and bias's gradients); with `qas` the ops return
//!   `G_w * w_scale^-2` and `G_b * w_scale^-2 * x.scale^-2`, so that SGD on the integer-domain
//!   values moves the real ones as SGD on a float model would.

use alloc::vec;
use alloc::vec::Vec;
use core::ops::Range;
use serde::{Deserialize, Serialize};

use super::{Check, OpRules, ShapeError};
use crate::kernels::reference::quant as kernel;
use crate::kernels::{Float, KernelError, NodeArgs};
use crate::plan::DType;

/// Per-tensor int8 quantization: real value = `scale * (q - zero_point)`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct QParams {
    pub scale: f32,
    pub zero_point: i32,
}

/// The output of a quantized linear layer.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum QOutput {
    /// Requantized to int8 with `q`, then clamped to `[lo, hi]` (the int8 range, narrowed by a
    /// fused ReLU to `lo = q.zero_point` and by ReLU6 to `hi = q.zero_point + round(6 / q.scale)`).
    Int8 { q: QParams, lo: i8, hi: i8 },
    /// The real value as `f32` (a classifier's logits, read by the loss).
    F32,
}

/// A quantized linear layer `y = x W^T + b` (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct QLinear {
    /// The input's quantization.
    pub x: QParams,
    pub out: QOutput,
    /// Scale the weight and bias gradients as QAS does (read by the gradient ops only).
    pub qas: bool,
}

impl QLinear {
    fn out_dtype(&self) -> DType {
        match self.out {
            QOutput::Int8 { .. } => DType::I8,
            QOutput::F32 => DType::F32,
        }
    }
}

/// The quant family. Append new ops at the end (the variant index is the plan encoding).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum QuantOp {
    /// `[x] -> [q]`: `x` f32, `q` int8 of the same shape, `q = clamp(round(x / scale) +
    /// zero_point, -128, 127)`.
    Quantize(QParams),
    /// `[q] -> [x]`: `x = scale * (q - zero_point)`.
    Dequantize(QParams),
    /// `[x, w, w_scale, bias] -> [y]`: `x` int8 `[N, I]`, `w` int8 or f32 `[O, I]`, `w_scale` and
    /// `bias` f32 `[O]`, `y` `[N, O]` int8 or f32 (as `out` says).
    Linear(QLinear),
    /// `[dy, y, w, w_scale] -> [dx]`: `dy` f32 and `y` (the forward output) `[N, O]`; `dx` f32
    /// `[N, I]`, the gradient of the real input.
    LinearGradInput(QLinear),
    /// `[dy, y, x, w_scale] -> [dw]`: `dw` f32 `[O, I]`, the gradient of the integer-domain
    /// weight (QAS-scaled when `qas`).
    LinearGradWeight(QLinear),
    /// `[dy, y, w_scale] -> [db]`: `db` f32 `[O]`, the gradient of the integer-domain bias
    /// (QAS-scaled when `qas`).
    LinearGradBias(QLinear),
}

impl OpRules for QuantOp {
    fn name(&self) -> &'static str {
        match self {
            QuantOp::Quantize(_) => "Quantize",
            QuantOp::Dequantize(_) => "Dequantize",
            QuantOp::Linear(_) => "QLinear",
            QuantOp::LinearGradInput(_) => "QLinearGradInput",
            QuantOp::LinearGradWeight(_) => "QLinearGradWeight",
            QuantOp::LinearGradBias(_) => "QLinearGradBias",
        }
    }

    fn input_arity(&self) -> Option<usize> {
        Some(match self {
            QuantOp::Quantize(_) | QuantOp::Dequantize(_) => 1,
            QuantOp::LinearGradBias(_) => 3,
            QuantOp::Linear(_) | QuantOp::LinearGradInput(_) | QuantOp::LinearGradWeight(_) => 4,
        })
    }

    fn dtype_rule(&self, check: Check, inputs: &[DType]) -> Result<Vec<DType>, ShapeError> {
        let weight = |pos: usize| {
            if matches!(inputs[pos], DType::I8 | DType::F32) {
                Ok(())
            } else {
                Err(check.err(alloc::format!("input {pos} (the weight) is {}, expected int8 or float32", inputs[pos].name())))
            }
        };
        match self {
            QuantOp::Quantize(_) => {
                check.dtypes(inputs, &[DType::F32])?;
                Ok(vec![DType::I8])
            }
            QuantOp::Dequantize(_) => {
                check.dtypes(inputs, &[DType::I8])?;
                Ok(vec![DType::F32])
            }
            QuantOp::Linear(l) => {
                check.dtypes(&inputs[..1], &[DType::I8])?;
                weight(1)?;
                check.dtypes(&inputs[2..], &[DType::F32, DType::F32]).map_err(|_| check.err("w_scale and bias must be float32"))?;
                Ok(vec![l.out_dtype()])
            }
            QuantOp::LinearGradInput(l) => {
                check.dtypes(inputs, &[DType::F32, l.out_dtype()])?;
                weight(2)?;
                check.dtypes(&inputs[3..], &[DType::F32]).map_err(|_| check.err("w_scale must be float32"))?;
                Ok(vec![DType::F32])
            }
            QuantOp::LinearGradWeight(l) => {
                check.dtypes(inputs, &[DType::F32, l.out_dtype(), DType::I8, DType::F32])?;
                Ok(vec![DType::F32])
            }
            QuantOp::LinearGradBias(l) => {
                check.dtypes(inputs, &[DType::F32, l.out_dtype(), DType::F32])?;
                Ok(vec![DType::F32])
            }
        }
    }

    fn inplace_outputs(&self) -> Range<usize> {
        0..0
    }

    fn shape_rule(&self, check: Check, inputs: &[&[usize]]) -> Result<Vec<Vec<usize>>, ShapeError> {
        let matrix = |s: &[usize], what: &str| -> Result<[usize; 2], ShapeError> {
            check.rank(s, 2, what)?;
            Ok([s[0], s[1]])
        };
        let vector = |s: &[usize], len: usize, what: &str| check.same(s, &[len], what);
        match self {
            QuantOp::Quantize(_) | QuantOp::Dequantize(_) => Ok(vec![inputs[0].to_vec()]),
            QuantOp::Linear(_) => {
                let [n, i] = matrix(inputs[0], "x")?;
                let [o, wi] = matrix(inputs[1], "w")?;
                if wi != i {
                    return Err(check.err(alloc::format!("x is [{n}, {i}] but w is [{o}, {wi}]: w must be [out, {i}]")));
                }
                vector(inputs[2], o, "w_scale vs [out]")?;
                vector(inputs[3], o, "bias vs [out]")?;
                Ok(vec![vec![n, o]])
            }
            QuantOp::LinearGradInput(_) => {
                let [n, o] = matrix(inputs[0], "dy")?;
                check.same(inputs[1], inputs[0], "y vs dy")?;
                let [wo, i] = matrix(inputs[2], "w")?;
                check.same(&[wo], &[o], "w's rows vs dy's columns")?;
                vector(inputs[3], o, "w_scale vs [out]")?;
                Ok(vec![vec![n, i]])
            }
            QuantOp::LinearGradWeight(_) => {
                let [n, o] = matrix(inputs[0], "dy")?;
                check.same(inputs[1], inputs[0], "y vs dy")?;
                let [xn, i] = matrix(inputs[2], "x")?;
                check.same(&[xn], &[n], "x's rows vs dy's rows")?;
                vector(inputs[3], o, "w_scale vs [out]")?;
                Ok(vec![vec![o, i]])
            }
            QuantOp::LinearGradBias(_) => {
                let [_, o] = matrix(inputs[0], "dy")?;
                check.same(inputs[1], inputs[0], "y vs dy")?;
                vector(inputs[2], o, "w_scale vs [out]")?;
                Ok(vec![vec![o]])
            }
        }
    }

    fn execute<T: Float>(&self, args: NodeArgs<'_, '_, T>) -> Result<(), KernelError> {
        match self {
            QuantOp::Quantize(q) => kernel::quantize(q, args.inputs[0].data, args.bool_outputs[0].data),
            QuantOp::Dequantize(q) => kernel::dequantize(q, args.bool_inputs[0].data, args.outputs[0].data),
            QuantOp::Linear(l) => {
                // Floats: [w if f32, w_scale, bias]; bytes: [x, w if int8].
                let (f, b) = (args.inputs, args.bool_inputs);
                let w = if b.len() == 2 { kernel::Weights::Int8(b[1].data) } else { kernel::Weights::Master(f[0].data) };
                let k = f.len();
                let (ws, bias) = (f[k - 2].data, f[k - 1].data);
                let x = b[0];
                match l.out {
                    QOutput::Int8 { .. } => kernel::linear(l, x, &w, ws, bias, kernel::Out::Int8(args.bool_outputs[0].data)),
                    QOutput::F32 => kernel::linear(l, x, &w, ws, bias, kernel::Out::Real(args.outputs[0].data)),
                }
            }
            QuantOp::LinearGradInput(l) => {
                // Floats: [dy, y if f32, w if f32, w_scale]; bytes: [y if int8, w if int8].
                let (f, b) = (args.inputs, args.bool_inputs);
                let (y, rest_f, rest_b) = match l.out {
                    QOutput::Int8 { .. } => (kernel::Seen::Int8(b[0].data), &f[1..], &b[1..]),
                    QOutput::F32 => (kernel::Seen::Real, &f[2..], b),
                };
                let w = if rest_b.len() == 1 { kernel::Weights::Int8(rest_b[0].data) } else { kernel::Weights::Master(rest_f[0].data) };
                let ws = rest_f[rest_f.len() - 1].data;
                kernel::linear_grad_input(l, f[0], &y, &w, ws, args.outputs[0].data);
            }
            QuantOp::LinearGradWeight(l) => {
                // Floats: [dy, y if f32, w_scale]; bytes: [y if int8, x].
                let (f, b) = (args.inputs, args.bool_inputs);
                let y = match l.out {
                    QOutput::Int8 { .. } => kernel::Seen::Int8(b[0].data),
                    QOutput::F32 => kernel::Seen::Real,
                };
                let x = b[b.len() - 1];
                kernel::linear_grad_weight(l, f[0], &y, x, f[f.len() - 1].data, args.outputs[0].data);
            }
            QuantOp::LinearGradBias(l) => {
                let (f, b) = (args.inputs, args.bool_inputs);
                let y = match l.out {
                    QOutput::Int8 { .. } => kernel::Seen::Int8(b[0].data),
                    QOutput::F32 => kernel::Seen::Real,
                };
                kernel::linear_grad_bias(l, f[0], &y, f[f.len() - 1].data, args.outputs[0].data);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::Op;

    fn linear(out: QOutput) -> QLinear {
        QLinear { x: QParams { scale: 0.1, zero_point: -3 }, out, qas: true }
    }

    #[test]
    fn shapes_and_dtypes() {
        let int8 = QOutput::Int8 { q: QParams { scale: 0.5, zero_point: -128 }, lo: -128, hi: 127 };
        let op: Op = QuantOp::Linear(linear(int8)).into();
        assert_eq!(op.output_shapes(&[&[2, 3], &[4, 3], &[4], &[4]]).unwrap(), [[2, 4]]);
        let e = op.output_shapes(&[&[2, 3], &[4, 2], &[4], &[4]]).unwrap_err();
        assert_eq!(e.to_string(), "QLinear: x is [2, 3] but w is [4, 2]: w must be [out, 3]");
        assert_eq!(op.output_dtypes(&[DType::I8, DType::I8, DType::F32, DType::F32]).unwrap(), [DType::I8]);
        assert_eq!(op.output_dtypes(&[DType::I8, DType::F32, DType::F32, DType::F32]).unwrap(), [DType::I8]);
        let e = op.output_dtypes(&[DType::I8, DType::I64, DType::F32, DType::F32]).unwrap_err();
        assert_eq!(e.to_string(), "QLinear: input 1 (the weight) is int64, expected int8 or float32");
        let real: Op = QuantOp::Linear(linear(QOutput::F32)).into();
        assert_eq!(real.output_dtypes(&[DType::I8, DType::I8, DType::F32, DType::F32]).unwrap(), [DType::F32]);
        let gi: Op = QuantOp::LinearGradInput(linear(int8)).into();
        assert_eq!(gi.output_shapes(&[&[2, 4], &[2, 4], &[4, 3], &[4]]).unwrap(), [[2, 3]]);
        assert!(gi.output_dtypes(&[DType::F32, DType::F32, DType::I8, DType::F32]).is_err(), "y must be int8 for an int8 output");
        let gw: Op = QuantOp::LinearGradWeight(linear(int8)).into();
        assert_eq!(gw.output_shapes(&[&[2, 4], &[2, 4], &[2, 3], &[4]]).unwrap(), [[4, 3]]);
        let gb: Op = QuantOp::LinearGradBias(linear(int8)).into();
        assert_eq!(gb.output_shapes(&[&[2, 4], &[2, 4], &[4]]).unwrap(), [[4]]);
        let q: Op = QuantOp::Quantize(QParams { scale: 1.0, zero_point: 0 }).into();
        assert_eq!(q.output_dtypes(&[DType::F32]).unwrap(), [DType::I8]);
    }
}
