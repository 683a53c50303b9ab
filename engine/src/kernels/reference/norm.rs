//! Batch normalisation: training (batch statistics) and frozen (running statistics) forms.

use crate::kernels::{Float, View, ViewMut};
use crate::ops::BatchNorm;

#[allow(clippy::too_many_arguments)]
pub fn batch_norm_train<T: Float>(
    b: &BatchNorm,
    x: View<T>,
    gamma: View<T>,
    beta: View<T>,
    y: &mut ViewMut<T>,
    saved_mean: &mut ViewMut<T>,
    saved_invstd: &mut ViewMut<T>,
    running_mean: &mut ViewMut<T>,
    running_var: &mut ViewMut<T>,
) {
    todo!()
}
pub fn batch_norm_infer<T: Float>(b: &BatchNorm, x: View<T>, gamma: View<T>, beta: View<T>, running_mean: View<T>, running_var: View<T>, y: &mut ViewMut<T>) {
    todo!()
}
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_train_grad<T: Float>(
    b: &BatchNorm,
    dy: View<T>,
    x: View<T>,
    gamma: View<T>,
    saved_mean: View<T>,
    saved_invstd: View<T>,
    dx: &mut ViewMut<T>,
    dgamma: &mut ViewMut<T>,
    dbeta: &mut ViewMut<T>,
) {
    todo!()
}
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_infer_grad<T: Float>(
    b: &BatchNorm,
    dy: View<T>,
    x: View<T>,
    gamma: View<T>,
    running_mean: View<T>,
    running_var: View<T>,
    dx: &mut ViewMut<T>,
    dgamma: &mut ViewMut<T>,
    dbeta: &mut ViewMut<T>,
) {
    todo!()
}
