//! MatMul, bias, elementwise and activation kernels.

use crate::kernels::{Float, View, ViewMut};
use crate::ops::{Clip, MatMul};

pub fn matmul<T: Float>(m: &MatMul, a: View<T>, b: View<T>, y: &mut ViewMut<T>) {
    todo!()
}
pub fn bias_add<T: Float>(x: View<T>, b: View<T>, y: &mut ViewMut<T>) {
    todo!()
}
pub fn bias_grad<T: Float>(dy: View<T>, db: &mut ViewMut<T>) {
    todo!()
}
pub fn add<T: Float>(a: View<T>, b: View<T>, y: &mut ViewMut<T>) {
    todo!()
}
pub fn mul<T: Float>(a: View<T>, b: View<T>, y: &mut ViewMut<T>) {
    todo!()
}
pub fn relu<T: Float>(x: View<T>, y: &mut ViewMut<T>) {
    todo!()
}
pub fn relu_grad<T: Float>(dy: View<T>, x: View<T>, dx: &mut ViewMut<T>) {
    todo!()
}
pub fn clip<T: Float>(c: &Clip, x: View<T>, y: &mut ViewMut<T>) {
    todo!()
}
pub fn clip_grad<T: Float>(c: &Clip, dy: View<T>, x: View<T>, dx: &mut ViewMut<T>) {
    todo!()
}
