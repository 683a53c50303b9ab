//! The epilogues of the fused convolutions.
//!
//! `ConvOp::Conv2dBiasAct`: the output channel's bias, then the activation, applied to each output
//! plane right after the gemm or depthwise loop that wrote it, while the plane is still in cache,
//! with no buffer of its own. It runs the reference kernel's formula
//! ([`reference::conv::bias_act`]), vectorised for the instruction set chosen at run time, so the
//! fused result equals `Conv2d`, `BiasAdd` and `Relu`/`Clip` run one after another bit for bit.
//!
//! `ConvOp::Conv2dGradInputMasked`: the activation mask applied in place to the finished input
//! gradient ([`mask`]), in blocks split among the threads. This is a second pass over `dx` (not yet
//! per plane inside col2im), but on the same buffer: the unmasked gradient never needs one of its
//! own.

use super::par::{for_each_chunk, multiversion};
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

multiversion!(fn bias_act(act: &Activation, bias: f32, run: &mut [f32]) => bias_act_body);

#[inline(always)]
fn bias_act_body<const FMA: bool>(act: &Activation, bias: f32, run: &mut [f32]) {
    reference::conv::bias_act(act, bias, run);
}

/// Elements per task of [`mask`]: a multiple of 8, so each block starts on a mask byte.
const MASK_BLOCK: usize = 1 << 14;

/// `dx[i] = 0` where bit `i` of `bits` is clear ([`reference::mask::mask_in_place`]).
pub(super) fn mask(bits: &[u8], dx: &mut [f32], threads: usize) {
    for_each_chunk(threads, dx, MASK_BLOCK, MASK_BLOCK, |i, block| {
        let first = i * MASK_BLOCK / 8;
        mask_block(&bits[first..first + block.len().div_ceil(8)], block)
    });
}

multiversion!(fn mask_block(bits: &[u8], dx: &mut [f32]) => mask_block_body);

#[inline(always)]
fn mask_block_body<const FMA: bool>(bits: &[u8], dx: &mut [f32]) {
    reference::mask::mask_in_place(bits, dx);
}
