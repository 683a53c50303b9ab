//! Convolution as im2col + gemm, with arena workspace for the column matrix.

use crate::kernels::{KernelError, View, ViewMut};
use crate::ops::{Conv2d, Op};

/// f32 elements of scratch each conv op needs.
pub fn conv_workspace_elems(op: &Op, inputs: &[&[usize]], outputs: &[&[usize]]) -> usize {
    todo!()
}
pub fn conv2d(c: &Conv2d, x: View<f32>, w: View<f32>, y: &mut ViewMut<f32>, ws: &mut [f32], par: gemm::Parallelism) -> Result<(), KernelError> {
    todo!()
}
pub fn conv2d_grad_input(c: &Conv2d, dy: View<f32>, w: View<f32>, dx: &mut ViewMut<f32>, ws: &mut [f32], par: gemm::Parallelism) -> Result<(), KernelError> {
    todo!()
}
pub fn conv2d_grad_weight(c: &Conv2d, dy: View<f32>, x: View<f32>, dw: &mut ViewMut<f32>, ws: &mut [f32], par: gemm::Parallelism) -> Result<(), KernelError> {
    todo!()
}
