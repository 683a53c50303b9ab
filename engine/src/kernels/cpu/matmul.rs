//! 2-D matmul through [`super::sgemm`].

use crate::kernels::{View, ViewMut};
use crate::ops::MatMul;

pub fn matmul(m: &MatMul, a: View<f32>, b: View<f32>, y: &mut ViewMut<f32>, par: gemm::Parallelism) {
    todo!()
}
