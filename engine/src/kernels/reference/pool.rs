//! Global average, average and max pooling and their gradients.

use crate::kernels::{Float, View, ViewMut};
use crate::ops::Pool2d;

pub fn global_avg_pool<T: Float>(x: View<T>, y: &mut ViewMut<T>) {
    todo!()
}
pub fn global_avg_pool_grad<T: Float>(dy: View<T>, dx: &mut ViewMut<T>) {
    todo!()
}
pub fn avg_pool2d<T: Float>(p: &Pool2d, x: View<T>, y: &mut ViewMut<T>) {
    todo!()
}
pub fn avg_pool2d_grad<T: Float>(p: &Pool2d, dy: View<T>, dx: &mut ViewMut<T>) {
    todo!()
}
pub fn max_pool2d<T: Float>(p: &Pool2d, x: View<T>, y: &mut ViewMut<T>) {
    todo!()
}
pub fn max_pool2d_grad<T: Float>(p: &Pool2d, dy: View<T>, x: View<T>, dx: &mut ViewMut<T>) {
    todo!()
}
