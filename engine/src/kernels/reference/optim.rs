//! Gradient accumulation, global-norm scaling and optimizer updates.

use crate::kernels::{Float, View, ViewMut};
use crate::ops::{Adam, GradScale, Sgd};

pub fn accumulate_grad<T: Float>(g: View<T>, acc: &mut ViewMut<T>) {
    todo!()
}
pub fn fill<T: Float>(value: f32, t: &mut ViewMut<T>) {
    todo!()
}
pub fn grad_scale<T: Float>(g: &GradScale, grads: &[View<T>], scale: &mut ViewMut<T>) {
    todo!()
}
/// `inputs = [grad, lr, step, (scale)]`, `outputs = [param, (momentum_buffer)]`.
pub fn sgd_update<T: Float>(s: &Sgd, inputs: &[View<T>], outputs: &mut [ViewMut<T>]) {
    todo!()
}
/// `inputs = [grad, lr, step, (scale)]`, `outputs = [param, exp_avg, exp_avg_sq]`.
pub fn adam_update<T: Float>(a: &Adam, inputs: &[View<T>], outputs: &mut [ViewMut<T>]) {
    todo!()
}
