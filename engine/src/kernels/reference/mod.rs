//! Portable reference kernels, generic over [`Float`]. One function per op; [`execute`] dispatches.
//!
//! These kernels are the definition of each op's arithmetic: they favour clarity over speed, never
//! allocate, and accumulate in the element type.

mod conv;
mod dense;
mod loss;
mod norm;
mod optim;
mod pool;

pub use conv::{conv2d, conv2d_grad_input, conv2d_grad_weight};
pub use dense::{add, bias_add, bias_grad, clip, clip_grad, matmul, mul, relu, relu_grad};
pub use loss::{mse, mse_grad, softmax_cross_entropy, softmax_cross_entropy_grad};
pub use norm::{batch_norm_infer, batch_norm_infer_grad, batch_norm_train, batch_norm_train_grad};
pub use optim::{accumulate_grad, adam_update, fill, grad_scale, sgd_update};
pub use pool::{avg_pool2d, avg_pool2d_grad, global_avg_pool, global_avg_pool_grad, max_pool2d, max_pool2d_grad};

use super::{Float, KernelError, NodeArgs};
use crate::ops::Op;

/// Runs one node with the reference kernels. The caller has checked the shapes against
/// [`Op::output_shapes`] and the argument counts against [`Op::input_arity`].
pub fn execute<T: Float>(op: &Op, args: NodeArgs<'_, '_, T>) -> Result<(), KernelError> {
    let NodeArgs { inputs: i, labels, outputs: o } = args;
    let labels = || labels.ok_or(KernelError::Invalid { op: op.name(), message: "missing labels" });
    match op {
        Op::MatMul(m) => matmul(m, i[0], i[1], &mut o[0]),
        Op::BiasAdd => bias_add(i[0], i[1], &mut o[0]),
        Op::Add => add(i[0], i[1], &mut o[0]),
        Op::Mul => mul(i[0], i[1], &mut o[0]),
        Op::Relu => relu(i[0], &mut o[0]),
        Op::Clip(c) => clip(c, i[0], &mut o[0]),
        Op::Reshape { .. } => {
            // Only reached when the planner could not alias the output onto the input.
            o[0].data.copy_from_slice(i[0].data);
        }
        Op::Conv2d(c) => conv2d(c, i[0], i[1], &mut o[0]),
        Op::BatchNormTrain(b) => {
            let [y, mean, invstd, rmean, rvar] = o else { unreachable!("arity checked at load") };
            batch_norm_train(b, i[0], i[1], i[2], y, mean, invstd, rmean, rvar)
        }
        Op::BatchNormInfer(b) => batch_norm_infer(b, i[0], i[1], i[2], i[3], i[4], &mut o[0]),
        Op::GlobalAvgPool => global_avg_pool(i[0], &mut o[0]),
        Op::AvgPool2d(p) => avg_pool2d(p, i[0], &mut o[0]),
        Op::MaxPool2d(p) => max_pool2d(p, i[0], &mut o[0]),
        Op::SoftmaxCrossEntropy(r) => softmax_cross_entropy(*r, i[0], labels()?, &mut o[0])?,
        Op::Mse(r) => mse(*r, i[0], i[1], &mut o[0]),
        Op::BiasGrad => bias_grad(i[0], &mut o[0]),
        Op::ReluGrad => relu_grad(i[0], i[1], &mut o[0]),
        Op::ClipGrad(c) => clip_grad(c, i[0], i[1], &mut o[0]),
        Op::Conv2dGradInput { conv, .. } => conv2d_grad_input(conv, i[0], i[1], &mut o[0]),
        Op::Conv2dGradWeight { conv, .. } => conv2d_grad_weight(conv, i[0], i[1], &mut o[0]),
        Op::BatchNormTrainGrad(b) => {
            let [dx, dgamma, dbeta] = o else { unreachable!("arity checked at load") };
            batch_norm_train_grad(b, i[0], i[1], i[2], i[3], i[4], dx, dgamma, dbeta)
        }
        Op::BatchNormInferGrad(b) => {
            let [dx, dgamma, dbeta] = o else { unreachable!("arity checked at load") };
            batch_norm_infer_grad(b, i[0], i[1], i[2], i[3], i[4], dx, dgamma, dbeta)
        }
        Op::GlobalAvgPoolGrad { .. } => global_avg_pool_grad(i[0], &mut o[0]),
        Op::AvgPool2dGrad { pool, .. } => avg_pool2d_grad(pool, i[0], &mut o[0]),
        Op::MaxPool2dGrad(p) => max_pool2d_grad(p, i[0], i[1], &mut o[0]),
        Op::SoftmaxCrossEntropyGrad(r) => softmax_cross_entropy_grad(*r, i[0], i[1], labels()?, &mut o[0])?,
        Op::MseGrad(r) => mse_grad(*r, i[0], i[1], i[2], &mut o[0]),
        Op::AccumulateGrad => accumulate_grad(i[0], &mut o[0]),
        Op::Fill { value } => fill(*value, &mut o[0]),
        Op::GradScale(g) => grad_scale(g, i, &mut o[0]),
        Op::SgdUpdate(s) => sgd_update(s, i, o),
        Op::AdamUpdate(a) => adam_update(a, i, o),
    }
    Ok(())
}
