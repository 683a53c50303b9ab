//! Faster f32 kernels for the CPU backend: matmul through pock's own packed gemm (`sgemm.rs`),
//! convolution as im2col + gemm (1x1 convolutions skip im2col), SIMD depthwise convolution,
//! max pooling and its gradient, BatchNorm (training), the elementwise activations, the SGD and
//! Adam updates and `CountNonFinite` (`optim.rs`), vectorised for the instruction set
//! chosen at run time (`par.rs`) and split among the backend's persistent thread pool. Every
//! other op runs its reference kernel.
//!
//! Nothing here allocates: column matrices live in the plan's workspace
//! ([`workspace_elems`], sized by the compiler), and gemm's packing buffers in scratch the
//! backend allocates once at load ([`scratch_elems`]).

mod broadcast;
mod conv;
mod depthwise;
mod depthwise_blocked;
mod elementwise;
mod epilogue;
mod matmul;
mod norm;
mod optim;
pub mod par;
pub mod pool;
mod pooling;
mod rows;
mod sgemm;
mod winograd;
mod winograd4;

use super::{reference, KernelError, NodeArgs};
use crate::ops::{BroadcastOp, ConvOp, DenseOp, LossOp, MaskOp, MatMulOp, MoveOp, NormOp, Op, OptimOp, PoolOp, ReduceOp};

pub use conv::{conv_workspace_elems, set_winograd};
pub use sgemm::pack_elems;
pub use winograd4::set_winograd_f4;

/// How many threads the fast kernels may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuConfig {
    pub threads: usize,
}

impl Default for CpuConfig {
    fn default() -> Self {
        CpuConfig { threads: 1 }
    }
}

/// f32 elements of arena scratch the fast kernel of `op` needs (0 when none).
pub fn workspace_elems(op: &Op, inputs: &[&[usize]], outputs: &[&[usize]]) -> usize {
    match op {
        Op::Conv(conv) => conv_workspace_elems(conv, inputs, outputs),
        _ => 0,
    }
}

/// f32 elements of scratch, outside the plan, that the fast kernel of `op` needs with `cfg`
/// (gemm's packing buffers; 0 when none). The backend allocates the largest over a plan's nodes
/// once, at load.
pub fn scratch_elems(op: &Op, inputs: &[&[usize]], outputs: &[&[usize]], cfg: CpuConfig) -> usize {
    match (op, inputs, outputs) {
        (Op::Dense(DenseOp::MatMul(m) | DenseOp::MatMulBiasAct { mm: m, .. }) | Op::MatMul(MatMulOp::BatchMatMul(m)), [a, b, ..], [_]) => {
            let (rows, inner, cols) = matmul::dims(m, a, b);
            pack_elems(rows, cols, inner)
        }
        (Op::Conv(c), _, _) => conv::conv_scratch_elems(c, inputs, outputs, cfg.threads),
        (Op::Loss(LossOp::CrossEntropy(_)), [logits, ..], _) => rows::cross_entropy_scratch(logits),
        _ => 0,
    }
}

/// Runs a node with its fast kernel where one exists, else with the reference kernel. The match
/// names only the ops this module accelerates; every other op falls back to the reference.
/// `workspace` is the node's plan workspace ([`workspace_elems`]), `scratch` at least
/// [`scratch_elems`] elements.
pub fn execute(
    op: &Op,
    args: NodeArgs<'_, '_, f32>,
    workspace: &mut [f32],
    scratch: &mut [f32],
    cfg: CpuConfig,
) -> Result<(), KernelError> {
    // Elementwise kernels compute the reference's formula per element; the others match it to
    // rounding (engine/tests/fast_kernels.rs).
    let threads = cfg.threads;
    // The products pack into `scratch`: refuse one too small before any kernel runs.
    if let (Op::Conv(_) | Op::Dense(DenseOp::MatMul(_) | DenseOp::MatMulBiasAct { .. }) | Op::MatMul(_), [a, b, ..], [y]) =
        (op, args.inputs, &*args.outputs)
    {
        if scratch.len() < scratch_elems(op, &[a.shape, b.shape], &[y.shape], cfg) {
            return Err(KernelError::Invalid { op: op.name(), message: "scratch is smaller than scratch_elems requires" });
        }
    }
    match op {
        Op::Dense(DenseOp::MatMul(m)) => {
            matmul::matmul(m, args.inputs[0], args.inputs[1], &mut args.outputs[0], threads, scratch);
            Ok(())
        }
        Op::Dense(DenseOp::MatMulBiasAct { mm, act }) => {
            let (a, b, bias) = (args.inputs[0], args.inputs[1], args.inputs[2]);
            let y = &mut args.outputs[0];
            if bias.data.len() != y.shape.get(1).copied().unwrap_or(0) {
                return Err(KernelError::Invalid { op: op.name(), message: "bias length differs from the output columns" });
            }
            matmul::matmul(mm, a, b, y, threads, scratch);
            epilogue::rows(act, bias.data, y.data);
            Ok(())
        }
        // Each matrix of a batch goes through the same 2-D gemm path.
        Op::MatMul(MatMulOp::BatchMatMul(m)) => {
            let NodeArgs { inputs, outputs, .. } = args;
            reference::matmul::for_each_matrix(inputs[0], inputs[1], &mut outputs[0], |a, b, y| {
                matmul::matmul(m, a, b, y, threads, scratch)
            });
            Ok(())
        }
        Op::Conv(ConvOp::Conv2d(c)) => {
            conv::conv2d(c, args.inputs[0], args.inputs[1], &mut args.outputs[0], workspace, scratch, threads, None)
        }
        Op::Conv(ConvOp::Conv2dBiasAct { conv, act }) => {
            let (x, w, b) = (args.inputs[0], args.inputs[1], args.inputs[2]);
            if b.data.len() != w.shape.first().copied().unwrap_or(0) {
                return Err(KernelError::Invalid { op: op.name(), message: "bias length differs from the output channels" });
            }
            let epilogue = epilogue::Epilogue { act, bias: b.data };
            conv::conv2d(conv, x, w, &mut args.outputs[0], workspace, scratch, threads, Some(epilogue))
        }
        Op::Conv(ConvOp::Conv2dGradInput { conv, .. }) => {
            conv::conv2d_grad_input(conv, args.inputs[0], args.inputs[1], &mut args.outputs[0], workspace, scratch, threads, None)
        }
        Op::Conv(ConvOp::Conv2dGradInputMasked { conv, .. }) => {
            let mask = Some(args.bool_inputs[0].data);
            conv::conv2d_grad_input(conv, args.inputs[0], args.inputs[1], &mut args.outputs[0], workspace, scratch, threads, mask)
        }
        Op::Conv(ConvOp::Conv2dGradWeight { conv, .. }) => {
            conv::conv2d_grad_weight(conv, args.inputs[0], args.inputs[1], &mut args.outputs[0], workspace, scratch, threads)
        }
        Op::Pool(PoolOp::MaxPool2d(p)) => pooling::max_pool2d(p, args.inputs[0], &mut args.outputs[0], threads),
        Op::Pool(PoolOp::MaxPool2dGrad(p)) => pooling::max_pool2d_grad(p, args.inputs[0], args.inputs[1], &mut args.outputs[0], threads),
        Op::Optim(
            o @ (OptimOp::SgdUpdate(_)
            | OptimOp::SgdUpdateRows { .. }
            | OptimOp::AdamUpdate(_)
            | OptimOp::AdamUpdateRows { .. }
            | OptimOp::CountNonFinite),
        ) => optim::execute(o, args, threads),
        Op::Dense(DenseOp::Clip(c)) => {
            elementwise::clip(c, args.inputs[0].data, args.outputs[0].data, cfg.threads);
            Ok(())
        }
        Op::Dense(DenseOp::ClipGrad(c)) => {
            elementwise::clip_grad(c, args.inputs[0].data, args.inputs[1].data, args.outputs[0].data, cfg.threads);
            Ok(())
        }
        Op::Dense(DenseOp::Relu) => {
            elementwise::relu(args.inputs[0].data, args.outputs[0].data, cfg.threads);
            Ok(())
        }
        Op::Dense(DenseOp::ReluGrad) => {
            elementwise::relu_grad(args.inputs[0].data, args.inputs[1].data, args.outputs[0].data, cfg.threads);
            Ok(())
        }
        Op::Dense(DenseOp::BiasGrad) if args.inputs.len() == 1 && args.outputs.len() == 1 => {
            if norm::bias_grad(args.inputs[0], &mut args.outputs[0], cfg.threads) {
                return Ok(());
            }
            reference::execute(op, args)
        }
        Op::Dense(DenseOp::Add) => {
            elementwise::add(args.inputs[0].data, args.inputs[1].data, args.outputs[0].data, cfg.threads);
            Ok(())
        }
        Op::Mask(MaskOp::Pack(kind)) if args.inputs.len() == 1 && args.bool_outputs.len() == 1 => {
            if elementwise::mask_pack(kind, args.inputs[0].data, args.bool_outputs[0].data, threads) {
                return Ok(());
            }
            reference::execute(op, args)
        }
        Op::Norm(n @ (NormOp::BatchNormTrain(b) | NormOp::BatchNormTrainAct { norm: b, .. })) => {
            let act = &n.activation();
            let NodeArgs { inputs: i, outputs: o, .. } = args;
            let [y, mean, invstd, rmean, rvar] = o else {
                return Err(KernelError::Invalid { op: op.name(), message: "wrong number of outputs" });
            };
            norm::batch_norm_train(b, act, i[0], i[1], i[2], y, mean, invstd, rmean, rvar, cfg.threads);
            Ok(())
        }
        Op::Norm(NormOp::BatchNormTrainGrad(_)) => {
            let NodeArgs { inputs: i, outputs: o, .. } = args;
            let [dx, dgamma, dbeta] = o else {
                return Err(KernelError::Invalid { op: "BatchNormTrainGrad", message: "wrong number of outputs" });
            };
            norm::batch_norm_train_grad(i[0], i[1], i[2], i[3], i[4], dx, dgamma, dbeta, cfg.threads);
            Ok(())
        }
        Op::Conv(ConvOp::Conv2dGradWeightRows { conv, rows, .. }) if conv.groups == 1 => conv::conv2d_grad_weight_rows(
            conv,
            rows[0]..rows[1],
            args.inputs[0],
            args.inputs[1],
            &mut args.outputs[0],
            workspace,
            scratch,
            cfg.threads,
        ),
        Op::Broadcast(b @ (BroadcastOp::Add | BroadcastOp::Sub | BroadcastOp::Mul | BroadcastOp::Div))
            if args.inputs.len() == 2 && args.outputs.len() == 1 =>
        {
            if broadcast::binary(b, args.inputs[0], args.inputs[1], &mut args.outputs[0], threads) {
                return Ok(());
            }
            reference::execute(op, args)
        }
        Op::Broadcast(BroadcastOp::SumTo { .. }) if args.inputs.len() == 1 && args.outputs.len() == 1 => {
            if broadcast::sum_to(args.inputs[0], &mut args.outputs[0], threads) {
                return Ok(());
            }
            reference::execute(op, args)
        }
        Op::Move(MoveOp::Transpose { perm }) if args.inputs.len() == 1 && args.outputs.len() == 1 => {
            if broadcast::transpose(perm, args.inputs[0], &mut args.outputs[0], threads) {
                return Ok(());
            }
            reference::execute(op, args)
        }
        Op::Loss(LossOp::CrossEntropy(ce)) if args.inputs.len() == 1 && args.int_inputs.len() == 1 && args.outputs.len() == 1 => {
            if rows::cross_entropy(*ce, args.inputs[0], args.int_inputs[0], &mut args.outputs[0], scratch, threads)? {
                return Ok(());
            }
            reference::execute(op, args)
        }
        Op::Loss(LossOp::CrossEntropyGrad(ce)) if args.inputs.len() == 2 && args.int_inputs.len() == 1 && args.outputs.len() == 1 => {
            if rows::cross_entropy_grad(*ce, args.inputs[0], args.inputs[1], args.int_inputs[0], &mut args.outputs[0], threads)? {
                return Ok(());
            }
            reference::execute(op, args)
        }
        Op::Reduce(r @ (ReduceOp::ReduceSum(reduce) | ReduceOp::ReduceMean(reduce)))
            if args.inputs.len() == 1 && args.outputs.len() == 1 =>
        {
            if rows::reduce(reduce, matches!(r, ReduceOp::ReduceMean(_)), args.inputs[0], &mut args.outputs[0], threads) {
                return Ok(());
            }
            reference::execute(op, args)
        }
        Op::Reduce(r @ (ReduceOp::ReduceSumGrad { reduce, .. } | ReduceOp::ReduceMeanGrad { reduce, .. }))
            if args.inputs.len() == 1 && args.outputs.len() == 1 =>
        {
            let mean = matches!(r, ReduceOp::ReduceMeanGrad { .. });
            if rows::reduce_grad(reduce, mean, args.inputs[0], &mut args.outputs[0], threads) {
                return Ok(());
            }
            reference::execute(op, args)
        }
        _ => reference::execute(op, args),
    }
}

/// Side of the square product [`gemm_ceiling_gflops`] times: large enough that packing is a
/// small share and every thread has many tiles, small enough (12 MiB of operands) to time in
/// about a tenth of a second.
pub const CEILING_SIDE: usize = 1024;

/// GFLOP/s of this gemm on a `CEILING_SIDE`-cubed product with `threads` threads, the best of
/// `runs` timed products after one untimed: the ceiling `pock bench` measures the kernels against.
/// Call it inside the pool the kernels run in (the CPU backend's `gemm_ceiling`). Allocates its
/// operands, so never call it inside a training step.
pub fn gemm_ceiling_gflops(threads: usize, runs: usize) -> f64 {
    let s = CEILING_SIDE;
    let a: alloc::vec::Vec<f32> = (0..s * s).map(|i| ((i * 7919) % 255) as f32 / 255.0 - 0.5).collect();
    let b: alloc::vec::Vec<f32> = (0..s * s).map(|i| ((i * 104_729) % 251) as f32 / 251.0 - 0.5).collect();
    let mut c = alloc::vec![0.0f32; s * s];
    let mut pack = alloc::vec![0.0f32; pack_elems(s, s, s)];
    let mat = |data| Mat { data, rows: s, cols: s, row_stride: s, col_stride: 1 };
    let mut best = f64::INFINITY;
    for run in 0..=runs.max(1) {
        let started = std::time::Instant::now();
        sgemm(mat(&a), mat(&b), &mut c, s, false, threads, &mut pack);
        let seconds = started.elapsed().as_secs_f64();
        if run > 0 {
            best = best.min(seconds);
        }
    }
    2.0 * (s * s * s) as f64 / best / 1e9
}

/// Products with fewer multiply-adds than this run on one thread whatever the configuration.
pub const PARALLEL_MIN_MACS: usize = 1 << 22;

/// A strided matrix operand: element `(i, j)` is `data[i * row_stride + j * col_stride]`.
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

/// `c = a @ b` (or `c += a @ b` when `accumulate`), `c` row-major with row stride `c_row_stride`.
///
/// Checks that every addressed element is inside its slice, then runs pock's packed gemm
/// (`sgemm.rs`) on up to `threads` threads, packing into `pack` (at least [`pack_elems`]`(m, n, k)`
/// elements). Panics (in every build profile) when an element or the packing buffer is out of
/// bounds: the bounds arithmetic is checked, so huge strides or sizes cannot wrap around into a
/// small, passing bound.
#[allow(clippy::too_many_arguments)]
pub fn sgemm(a: Mat<'_>, b: Mat<'_>, c: &mut [f32], c_row_stride: usize, accumulate: bool, threads: usize, pack: &mut [f32]) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "sgemm: inner dimensions differ");
    // One past the largest index an operand addresses, or None when that does not fit a usize.
    let end = |rows: usize, cols: usize, rs: usize, cs: usize| -> Option<usize> {
        if rows == 0 || cols == 0 {
            return Some(0);
        }
        (rows - 1).checked_mul(rs)?.checked_add((cols - 1).checked_mul(cs)?)?.checked_add(1)
    };
    let fits = |end: Option<usize>, len: usize| end.is_some_and(|e| e <= len);
    let strides = [a.row_stride, a.col_stride, b.row_stride, b.col_stride, c_row_stride];
    assert!(strides.iter().all(|&s| s <= isize::MAX as usize), "sgemm: stride larger than isize::MAX");
    assert!(fits(end(m, k, a.row_stride, a.col_stride), a.data.len()), "sgemm: lhs out of bounds");
    assert!(fits(end(k, n, b.row_stride, b.col_stride), b.data.len()), "sgemm: rhs out of bounds");
    assert!(fits(end(m, n, c_row_stride, 1), c.len()), "sgemm: dst out of bounds");
    // Rows of `c` that overlapped would be written by different threads at once.
    assert!(m <= 1 || c_row_stride >= n, "sgemm: dst rows overlap (row stride {c_row_stride} < {n} columns)");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                c[i * c_row_stride..i * c_row_stride + n].fill(0.0);
            }
        }
        return;
    }
    // Splitting a small product across threads costs more than it saves.
    let macs = m.checked_mul(n).and_then(|mn| mn.checked_mul(k)).unwrap_or(usize::MAX);
    let threads = if macs < PARALLEL_MIN_MACS { 1 } else { threads };
    sgemm::product(a, b, c, c_row_stride, accumulate, threads, pack);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mat(data: &[f32], rows: usize, cols: usize, row_stride: usize, col_stride: usize) -> Mat<'_> {
        Mat { data, rows, cols, row_stride, col_stride }
    }

    /// Strides chosen so that the unchecked bound `(rows-1)*rs + (cols-1)*cs + 1` wraps to 0: in
    /// a release build the old check passed and gemm read far outside `a`.
    #[test]
    #[should_panic(expected = "sgemm: lhs out of bounds")]
    fn wrapping_bounds_are_caught() {
        let (a, b, mut c) = ([0f32; 4], [0f32; 2], [0f32; 3]);
        let (rs, cs) = (1 << (usize::BITS - 2), (1 << (usize::BITS - 1)) - 1);
        sgemm(mat(&a, 3, 2, rs, cs), mat(&b, 2, 1, 1, 1), &mut c, 1, false, 1, &mut [0.0; 64]);
    }

    #[test]
    #[should_panic(expected = "sgemm: dst rows overlap")]
    fn overlapping_destination_rows_are_refused() {
        let (a, b, mut c) = ([1f32; 4], [1f32; 4], [0f32; 4]);
        sgemm(mat(&a, 2, 2, 2, 1), mat(&b, 2, 2, 2, 1), &mut c, 1, false, 1, &mut [0.0; 64]);
    }

    #[test]
    fn in_bounds_product_is_computed() {
        let (a, b, mut c) = ([1f32, 2., 3., 4.], [5f32, 6., 7., 8.], [0f32; 4]);
        sgemm(mat(&a, 2, 2, 2, 1), mat(&b, 2, 2, 2, 1), &mut c, 2, false, 1, &mut [0.0; 64]);
        assert_eq!(c, [19., 22., 43., 50.]);
    }
}
