//! 2-D convolution, its two gradient ops, the weight gradient restricted to a range of output
//! channels (partial-channel updates, `compiler/src/scheme.rs`), and the convolution fused with
//! its bias and activation (`compiler/src/fuse.rs`).

use alloc::vec;
use alloc::vec::Vec;
use core::ops::Range;
use serde::{Deserialize, Serialize};

use super::{window_out, Check, Clip, OpRules, ShapeError};
use crate::kernels::reference::conv as kernel;
use crate::kernels::{Float, KernelError, NodeArgs};
use crate::plan::DType;

/// 2-D convolution attributes, NCHW layout, weights `[O, C/groups, KH, KW]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conv2d {
    pub stride: [usize; 2],
    /// `[top, left, bottom, right]`, as ONNX `pads` orders them for 2-D.
    pub padding: [usize; 4],
    pub dilation: [usize; 2],
    pub groups: usize,
}

/// The activation a fused convolution applies after its bias: the formulas of `DenseOp::Relu` and
/// `DenseOp::Clip`, so that the fused op equals the three ops it replaces bit for bit.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Activation {
    /// No activation: `y = conv(x, w) + b`.
    Identity,
    /// `DenseOp::Relu`.
    Relu,
    /// `DenseOp::Clip` (ReLU6 is `Clip { 0, 6 }`).
    Clip(Clip),
}

/// The convolution family. Append new ops at the end (the variant index is the plan encoding).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ConvOp {
    /// `[x, w] -> [y]`.
    Conv2d(Conv2d),
    /// `[dy, w] -> [dx]`; `input_hw` is the forward input's spatial size.
    Conv2dGradInput { conv: Conv2d, input_hw: [usize; 2] },
    /// `[dy, x] -> [dw]`; `kernel_hw` is the weight's spatial size.
    Conv2dGradWeight { conv: Conv2d, kernel_hw: [usize; 2] },
    /// `[dy, x] -> [dw_rows]`: the rows `rows[0]..rows[1]` (output channels, axis 0) of
    /// `Conv2dGradWeight`'s result, `[rows[1] - rows[0], C/groups, KH, KW]`, computed from those
    /// channels of `dy` alone. With `groups > 1` only the input channels of the groups those rows
    /// belong to are read from `x`.
    Conv2dGradWeightRows { conv: Conv2d, kernel_hw: [usize; 2], rows: [usize; 2] },
    /// `[x, w, b] -> [y]`: `y = act(conv(x, w) + b)`, `b` `[O]` added to each output channel after
    /// the whole sum, then the activation: `Conv2d`, `BiasAdd` and `Relu`/`Clip` (or none) in one
    /// op, with no intermediate tensor. Made by the compiler's fusion pass after autodiff
    /// (`compiler/src/fuse.rs`), so it has no gradient rule of its own.
    Conv2dBiasAct { conv: Conv2d, act: Activation },
    /// `[dy, w, bits] -> [dx]`: `Conv2dGradInput`'s `dx`, then `MaskGrad` with the packed
    /// activation mask `bits` (`u8` `[ceil(n / 8)]` for the `n` elements of `dx`, the mask family's
    /// layout): element `i` keeps its value where bit `i` is set and is 0 elsewhere. The input
    /// gradient of the layer after a ReLU/ReLU6 and that activation's gradient in one op, with no
    /// unmasked intermediate. Made by the fusion pass (`compiler/src/fuse.rs`).
    Conv2dGradInputMasked { conv: Conv2d, input_hw: [usize; 2] },
}

impl OpRules for ConvOp {
    fn name(&self) -> &'static str {
        match self {
            ConvOp::Conv2d(_) => "Conv2d",
            ConvOp::Conv2dGradInput { .. } => "Conv2dGradInput",
            ConvOp::Conv2dGradWeight { .. } => "Conv2dGradWeight",
            ConvOp::Conv2dGradWeightRows { .. } => "Conv2dGradWeightRows",
            ConvOp::Conv2dBiasAct { .. } => "Conv2dBiasAct",
            ConvOp::Conv2dGradInputMasked { .. } => "Conv2dGradInputMasked",
        }
    }

    fn input_arity(&self) -> Option<usize> {
        Some(match self {
            ConvOp::Conv2dBiasAct { .. } | ConvOp::Conv2dGradInputMasked { .. } => 3,
            _ => 2,
        })
    }

    fn dtype_rule(&self, check: Check, inputs: &[DType]) -> Result<Vec<DType>, ShapeError> {
        match self {
            ConvOp::Conv2dGradInputMasked { .. } => {
                check.dtypes(inputs, &[DType::F32, DType::F32, DType::U8])?;
                Ok(vec![DType::F32])
            }
            _ => check.floats(inputs, 1),
        }
    }

    fn inplace_outputs(&self) -> Range<usize> {
        0..0
    }

    fn shape_rule(&self, check: Check, inputs: &[&[usize]]) -> Result<Vec<Vec<usize>>, ShapeError> {
        Ok(match self {
            ConvOp::Conv2d(c) => {
                let (x, w) = (inputs[0], inputs[1]);
                check.rank(x, 4, "x")?;
                check.rank(w, 4, "weight")?;
                check_channels(check, c, x[1], w)?;
                let (ho, wo) = conv_out(check, c, [x[2], x[3]], [w[2], w[3]])?;
                vec![vec![x[0], w[0], ho, wo]]
            }
            ConvOp::Conv2dGradInput { conv, input_hw } => {
                let (dy, w) = (inputs[0], inputs[1]);
                check.rank(dy, 4, "dy")?;
                check.rank(w, 4, "weight")?;
                let c = check.mul(w[1], conv.groups, "weight channels times groups")?;
                check_channels(check, conv, c, w)?;
                let (ho, wo) = conv_out(check, conv, *input_hw, [w[2], w[3]])?;
                check.same(dy, &[dy[0], w[0], ho, wo], "dy vs forward output")?;
                vec![vec![dy[0], c, input_hw[0], input_hw[1]]]
            }
            ConvOp::Conv2dGradWeight { conv, kernel_hw } => {
                let (dy, x) = (inputs[0], inputs[1]);
                check.rank(dy, 4, "dy")?;
                check.rank(x, 4, "x")?;
                if conv.groups == 0 || !x[1].is_multiple_of(conv.groups) || !dy[1].is_multiple_of(conv.groups) {
                    return Err(check.err(alloc::format!("channels {} / {} not divisible by groups {}", x[1], dy[1], conv.groups)));
                }
                let w = [dy[1], x[1] / conv.groups, kernel_hw[0], kernel_hw[1]];
                let (ho, wo) = conv_out(check, conv, [x[2], x[3]], *kernel_hw)?;
                check.same(dy, &[x[0], w[0], ho, wo], "dy vs forward output")?;
                vec![w.to_vec()]
            }
            ConvOp::Conv2dGradWeightRows { conv, kernel_hw, rows } => {
                let full = ConvOp::Conv2dGradWeight { conv: *conv, kernel_hw: *kernel_hw }.shape_rule(check, inputs)?;
                let mut w = full.into_iter().next().unwrap_or_default();
                if !(rows[0] < rows[1] && rows[1] <= w[0]) {
                    return Err(check.err(alloc::format!(
                        "rows {}..{} are not a non-empty range of the {} output channels",
                        rows[0],
                        rows[1],
                        w[0]
                    )));
                }
                w[0] = rows[1] - rows[0];
                vec![w]
            }
            ConvOp::Conv2dBiasAct { conv, .. } => {
                let y = ConvOp::Conv2d(*conv).shape_rule(check, &inputs[..2])?;
                check.same(inputs[2], &[inputs[1][0]], "bias vs output channels")?;
                y
            }
            ConvOp::Conv2dGradInputMasked { conv, input_hw } => {
                let dx = ConvOp::Conv2dGradInput { conv: *conv, input_hw: *input_hw }.shape_rule(check, &inputs[..2])?;
                let n = check.numel(&dx[0])?;
                check.same(inputs[2], &super::packed_shape(n), "bits vs the packed shape of dx")?;
                dx
            }
        })
    }

    fn execute<T: Float>(&self, args: NodeArgs<'_, '_, T>) -> Result<(), KernelError> {
        let NodeArgs { inputs: i, outputs: o, bool_inputs, .. } = args;
        match self {
            ConvOp::Conv2d(c) => kernel::conv2d(c, i[0], i[1], &mut o[0]),
            ConvOp::Conv2dGradInput { conv, .. } => kernel::conv2d_grad_input(conv, i[0], i[1], &mut o[0]),
            ConvOp::Conv2dGradWeight { conv, .. } => kernel::conv2d_grad_weight(conv, i[0], i[1], &mut o[0]),
            ConvOp::Conv2dGradWeightRows { conv, rows, .. } => {
                kernel::conv2d_grad_weight_rows(conv, rows[0]..rows[1], i[0], i[1], &mut o[0])
            }
            ConvOp::Conv2dBiasAct { conv, act } => kernel::conv2d_bias_act(conv, act, i[0], i[1], i[2], &mut o[0]),
            ConvOp::Conv2dGradInputMasked { conv, .. } => {
                kernel::conv2d_grad_input(conv, i[0], i[1], &mut o[0]);
                crate::kernels::reference::mask::mask_in_place(bool_inputs[0].data, o[0].data);
            }
        }
        Ok(())
    }
}

fn check_channels(check: Check, c: &Conv2d, in_channels: usize, w: &[usize]) -> Result<(), ShapeError> {
    if c.groups == 0 || !in_channels.is_multiple_of(c.groups) || !w[0].is_multiple_of(c.groups) {
        return Err(check.err(alloc::format!("channels in {in_channels} / out {} not divisible by groups {}", w[0], c.groups)));
    }
    let expected = check.mul(w[1], c.groups, "weight channels times groups")?;
    if expected != in_channels {
        return Err(check.err(alloc::format!("weight {w:?} expects {expected} input channels, input has {in_channels}")));
    }
    Ok(())
}

fn conv_out(check: Check, c: &Conv2d, hw: [usize; 2], k: [usize; 2]) -> Result<(usize, usize), ShapeError> {
    let h = window_out(hw[0], c.padding[0], c.padding[2], k[0], c.stride[0], c.dilation[0]);
    let w = window_out(hw[1], c.padding[1], c.padding[3], k[1], c.stride[1], c.dilation[1]);
    match (h, w) {
        (Some(h), Some(w)) if h > 0 && w > 0 => Ok((h, w)),
        _ => Err(check.err(alloc::format!("kernel {k:?} does not fit input {hw:?} with {c:?}"))),
    }
}
