//! Portable reference kernels, generic over [`Float`], one module per op family and one function
//! per op. Each family's `OpRules::execute` (in `crate::ops::<family>`) dispatches to them.
//!
//! These kernels are the definition of each op's arithmetic: they favour clarity over speed, never
//! allocate, and accumulate in the element type.

pub mod broadcast;
pub mod cast;
pub mod conv;
pub mod dense;
pub mod loss;
pub mod mask;
pub mod matmul;
pub mod movement;
pub mod norm;
pub mod optim;
pub mod pool;
pub mod quant;
pub mod random;
pub mod reduce;
pub mod unary;

pub use conv::{conv2d, conv2d_grad_input, conv2d_grad_weight};
pub use dense::{add, bias_add, bias_grad, clip, clip_grad, matmul, mul, relu, relu_grad};
pub use loss::{mse, mse_grad, softmax_cross_entropy, softmax_cross_entropy_grad};
pub use norm::{batch_norm_infer, batch_norm_infer_grad, batch_norm_train, batch_norm_train_grad};
pub use optim::{accumulate_grad, adam_update, count_non_finite, fill, grad_scale, sgd_update};
pub use pool::{avg_pool2d, avg_pool2d_grad, global_avg_pool, global_avg_pool_grad, max_pool2d, max_pool2d_grad};

use super::{Float, KernelError, NodeArgs};
use crate::ops::Op;

/// Runs one node with the reference kernels. The caller has checked the shapes against
/// [`Op::output_shapes`] and the argument counts against [`Op::input_arity`].
pub fn execute<T: Float>(op: &Op, args: NodeArgs<'_, '_, T>) -> Result<(), KernelError> {
    op.execute(args)
}
