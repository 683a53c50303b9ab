//! Direct 2-D convolution and its two gradients.

use crate::kernels::{Float, View, ViewMut};
use crate::ops::Conv2d;

pub fn conv2d<T: Float>(c: &Conv2d, x: View<T>, w: View<T>, y: &mut ViewMut<T>) {
    todo!()
}
pub fn conv2d_grad_input<T: Float>(c: &Conv2d, dy: View<T>, w: View<T>, dx: &mut ViewMut<T>) {
    todo!()
}
pub fn conv2d_grad_weight<T: Float>(c: &Conv2d, dy: View<T>, x: View<T>, dw: &mut ViewMut<T>) {
    todo!()
}
