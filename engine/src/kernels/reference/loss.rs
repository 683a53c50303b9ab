//! Softmax cross-entropy with integer labels, mean squared error, and their gradients.

use crate::kernels::{Float, KernelError, View, ViewMut};
use crate::ops::Reduction;

pub fn softmax_cross_entropy<T: Float>(r: Reduction, logits: View<T>, labels: View<i64>, loss: &mut ViewMut<T>) -> Result<(), KernelError> {
    todo!()
}
pub fn softmax_cross_entropy_grad<T: Float>(r: Reduction, dloss: View<T>, logits: View<T>, labels: View<i64>, dlogits: &mut ViewMut<T>) -> Result<(), KernelError> {
    todo!()
}
pub fn mse<T: Float>(r: Reduction, pred: View<T>, target: View<T>, loss: &mut ViewMut<T>) {
    todo!()
}
pub fn mse_grad<T: Float>(r: Reduction, dloss: View<T>, pred: View<T>, target: View<T>, dpred: &mut ViewMut<T>) {
    todo!()
}
