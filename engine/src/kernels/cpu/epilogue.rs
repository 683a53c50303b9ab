//! The epilogue of a fused convolution (`ConvOp::Conv2dBiasAct`): the output channel's bias, then
//! the activation, applied to each output plane right after the gemm or depthwise loop that wrote
//! it, while the plane is still in cache, with no buffer of its own. It runs the reference
//! kernel's formula ([`reference::conv::bias_act`]), vectorised for the instruction set chosen at
//! run time, so the fused result equals `Conv2d`, `BiasAdd` and `Relu`/`Clip` run one after another
//! bit for bit.

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

multiversion!(fn bias_act(act: &Activation, bias: f32, run: &mut [f32]) => bias_act_body);

#[inline(always)]
fn bias_act_body<const FMA: bool>(act: &Activation, bias: f32, run: &mut [f32]) {
    reference::conv::bias_act(act, bias, run);
}
