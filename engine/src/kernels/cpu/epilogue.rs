//! The epilogues of the fused convolutions.
//!
//! `ConvOp::Conv2dBiasAct`: the output channel's bias, then the activation, applied to each output
//! plane right after the gemm or depthwise loop that wrote it, while the plane is still in cache,
//! with no buffer of its own. It runs the reference kernel's formula
//! ([`reference::conv::bias_act`]), vectorised for the instruction set chosen at run time, so the
//! fused result equals `Conv2d`, `BiasAdd` and `Relu`/`Clip` run one after another bit for bit.
//!
//! `NormOp::BatchNormTrainAct`: the activation on each normalised run ([`activate`]).
//!
//! `ConvOp::Conv2dGradInputMasked`: the activation mask applied in place ([`mask_at`]) to each
//! part of the input gradient right after it is computed (a depthwise plane, a pointwise sample
//! and group, the planes col2im just wrote), in the same buffer: the unmasked gradient never needs
//! one of its own.

use super::par::multiversion;
use crate::kernels::reference;
use crate::ops::Activation;

/// A fused convolution's bias (one value per output channel) and activation.
#[derive(Clone, Copy)]
pub(super) struct Epilogue<'a> {
    pub act: &'a Activation,
    pub bias: &'a [f32],
}

impl Epilogue<'_> {
    /// Applies the epilogue to consecutive `plane`-element output planes, the first of which
    /// belongs to output channel `first_channel`.
    pub fn planes(&self, first_channel: usize, planes: &mut [f32], plane: usize) {
        if plane == 0 {
            return;
        }
        for (i, run) in planes.chunks_exact_mut(plane).enumerate() {
            bias_act(self.act, self.bias[first_channel + i], run);
        }
    }
}

/// `DenseOp::MatMulBiasAct`'s epilogue on the whole row-major output (a matmul's output is
/// small next to its product, so one pass after gemm).
pub(super) fn rows(act: &Activation, bias: &[f32], y: &mut [f32]) {
    rows_bias_act(act, bias, y);
}

multiversion!(fn rows_bias_act(act: &Activation, bias: &[f32], y: &mut [f32]) => rows_bias_act_body);

#[inline(always)]
fn rows_bias_act_body<const FMA: bool>(act: &Activation, bias: &[f32], y: &mut [f32]) {
    reference::dense::rows_bias_act(act, bias, y);
}

multiversion!(fn bias_act(act: &Activation, bias: f32, run: &mut [f32]) => bias_act_body);

#[inline(always)]
fn bias_act_body<const FMA: bool>(act: &Activation, bias: f32, run: &mut [f32]) {
    reference::conv::bias_act(act, bias, run);
}

/// `v = act(v)` in place ([`reference::dense::activate`]): `NormOp::BatchNormTrainAct`'s
/// activation on each output run right after the normalisation wrote it.
pub(super) fn activate(act: &Activation, run: &mut [f32]) {
    if *act != Activation::Identity {
        activate_run(act, run);
    }
}

multiversion!(fn activate_run(act: &Activation, run: &mut [f32]) => activate_run_body);

#[inline(always)]
fn activate_run_body<const FMA: bool>(act: &Activation, run: &mut [f32]) {
    reference::dense::activate(act, run);
}

/// `dx[k] = 0` where bit `first + k` of `bits` is clear ([`reference::mask::mask_in_place`] on a
/// part of `dx` that starts at element `first`, which need not fall on a mask byte).
pub(super) fn mask_at(bits: &[u8], first: usize, dx: &mut [f32]) {
    let head = ((8 - first % 8) % 8).min(dx.len());
    let (head_part, rest) = dx.split_at_mut(head);
    for (k, d) in head_part.iter_mut().enumerate() {
        let e = first + k;
        if (bits[e / 8] >> (e % 8)) & 1 == 0 {
            *d = 0.0;
        }
    }
    let byte = (first + head) / 8;
    mask_block(&bits[byte..byte + rest.len().div_ceil(8)], rest);
}

multiversion!(fn mask_block(bits: &[u8], dx: &mut [f32]) => mask_block_body);

#[inline(always)]
fn mask_block_body<const FMA: bool>(bits: &[u8], dx: &mut [f32]) {
    reference::mask::mask_in_place(bits, dx);
}
