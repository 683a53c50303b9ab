//! The plan encoding of ops stays stable: every op is encoded and its leading tag bytes (family
//! index, op index inside the family) are compared with a checked-in table. Reordering or
//! removing a variant changes some op's tag and fails here; the rule is in `engine/src/format.rs`.

use pock_engine::ops::{
    Adam, BatchNorm, CastOp, Clip, Conv2d, ConvOp, DenseOp, GradScale, LossOp, MatMul, NormOp, Op, OptimOp, Pool2d, PoolOp, Reduction, Sgd,
};
use pock_engine::plan::DType;

/// `(op name, encoded tag bytes)`. Append a row for each new op; never edit or reorder a row
/// (that would change what existing plan files mean: bump `FORMAT_VERSION` instead).
const TAGS: &[(&str, [u8; 2])] = &[
    ("MatMul", [0, 0]),
    ("BiasAdd", [0, 1]),
    ("Add", [0, 2]),
    ("Mul", [0, 3]),
    ("Relu", [0, 4]),
    ("Clip", [0, 5]),
    ("Reshape", [0, 6]),
    ("BiasGrad", [0, 7]),
    ("ReluGrad", [0, 8]),
    ("ClipGrad", [0, 9]),
    ("Conv2d", [1, 0]),
    ("Conv2dGradInput", [1, 1]),
    ("Conv2dGradWeight", [1, 2]),
    ("BatchNormTrain", [2, 0]),
    ("BatchNormInfer", [2, 1]),
    ("BatchNormTrainGrad", [2, 2]),
    ("BatchNormInferGrad", [2, 3]),
    ("GlobalAvgPool", [3, 0]),
    ("AvgPool2d", [3, 1]),
    ("MaxPool2d", [3, 2]),
    ("GlobalAvgPoolGrad", [3, 3]),
    ("AvgPool2dGrad", [3, 4]),
    ("MaxPool2dGrad", [3, 5]),
    ("SoftmaxCrossEntropy", [4, 0]),
    ("Mse", [4, 1]),
    ("SoftmaxCrossEntropyGrad", [4, 2]),
    ("MseGrad", [4, 3]),
    ("AccumulateGrad", [5, 0]),
    ("Fill", [5, 1]),
    ("GradScale", [5, 2]),
    ("SgdUpdate", [5, 3]),
    ("AdamUpdate", [5, 4]),
    ("Cast", [6, 0]),
    ("CountNonFinite", [5, 5]),
];

/// The row of `op` in [`TAGS`]. The match is exhaustive on purpose: a new op does not compile
/// here until it has a row.
fn row(op: &Op) -> usize {
    match op {
        Op::Dense(op) => match op {
            DenseOp::MatMul(_) => 0,
            DenseOp::BiasAdd => 1,
            DenseOp::Add => 2,
            DenseOp::Mul => 3,
            DenseOp::Relu => 4,
            DenseOp::Clip(_) => 5,
            DenseOp::Reshape { .. } => 6,
            DenseOp::BiasGrad => 7,
            DenseOp::ReluGrad => 8,
            DenseOp::ClipGrad(_) => 9,
        },
        Op::Conv(op) => match op {
            ConvOp::Conv2d(_) => 10,
            ConvOp::Conv2dGradInput { .. } => 11,
            ConvOp::Conv2dGradWeight { .. } => 12,
        },
        Op::Norm(op) => match op {
            NormOp::BatchNormTrain(_) => 13,
            NormOp::BatchNormInfer(_) => 14,
            NormOp::BatchNormTrainGrad(_) => 15,
            NormOp::BatchNormInferGrad(_) => 16,
        },
        Op::Pool(op) => match op {
            PoolOp::GlobalAvgPool => 17,
            PoolOp::AvgPool2d(_) => 18,
            PoolOp::MaxPool2d(_) => 19,
            PoolOp::GlobalAvgPoolGrad { .. } => 20,
            PoolOp::AvgPool2dGrad { .. } => 21,
            PoolOp::MaxPool2dGrad(_) => 22,
        },
        Op::Loss(op) => match op {
            LossOp::SoftmaxCrossEntropy(_) => 23,
            LossOp::Mse(_) => 24,
            LossOp::SoftmaxCrossEntropyGrad(_) => 25,
            LossOp::MseGrad(_) => 26,
        },
        Op::Optim(op) => match op {
            OptimOp::AccumulateGrad => 27,
            OptimOp::Fill { .. } => 28,
            OptimOp::GradScale(_) => 29,
            OptimOp::SgdUpdate(_) => 30,
            OptimOp::AdamUpdate(_) => 31,
            OptimOp::CountNonFinite => 33,
        },
        Op::Cast(op) => match op {
            CastOp::Cast { .. } => 32,
        },
    }
}

/// One instance of every op, with attributes that are not all zero so the round trip means
/// something.
fn every_op() -> Vec<Op> {
    let conv = Conv2d { stride: [2, 1], padding: [1, 0, 1, 2], dilation: [1, 2], groups: 3 };
    let pool = Pool2d { kernel: [3, 2], stride: [2, 2], padding: [1, 0, 0, 1], count_include_pad: false };
    let bn = BatchNorm { eps: 1e-3, momentum: 0.2 };
    let clip = Clip { min: -1.0, max: 6.0 };
    let sgd = Sgd { momentum: 0.9, dampening: 0.1, nesterov: false, weight_decay: 1e-4, scaled: true };
    let adam = Adam { beta1: 0.8, beta2: 0.99, eps: 1e-7, weight_decay: 0.01, decoupled: true, scaled: false };
    vec![
        DenseOp::MatMul(MatMul { trans_a: true, trans_b: false }).into(),
        DenseOp::BiasAdd.into(),
        DenseOp::Add.into(),
        DenseOp::Mul.into(),
        DenseOp::Relu.into(),
        DenseOp::Clip(clip).into(),
        DenseOp::Reshape { shape: vec![2, 300] }.into(),
        DenseOp::BiasGrad.into(),
        DenseOp::ReluGrad.into(),
        DenseOp::ClipGrad(clip).into(),
        ConvOp::Conv2d(conv).into(),
        ConvOp::Conv2dGradInput { conv, input_hw: [7, 9] }.into(),
        ConvOp::Conv2dGradWeight { conv, kernel_hw: [3, 3] }.into(),
        NormOp::BatchNormTrain(bn).into(),
        NormOp::BatchNormInfer(bn).into(),
        NormOp::BatchNormTrainGrad(bn).into(),
        NormOp::BatchNormInferGrad(bn).into(),
        PoolOp::GlobalAvgPool.into(),
        PoolOp::AvgPool2d(pool).into(),
        PoolOp::MaxPool2d(pool).into(),
        PoolOp::GlobalAvgPoolGrad { input_hw: [5, 4] }.into(),
        PoolOp::AvgPool2dGrad { pool, input_hw: [8, 8] }.into(),
        PoolOp::MaxPool2dGrad(pool).into(),
        LossOp::SoftmaxCrossEntropy(Reduction::PerSample).into(),
        LossOp::Mse(Reduction::Mean).into(),
        LossOp::SoftmaxCrossEntropyGrad(Reduction::Mean).into(),
        LossOp::MseGrad(Reduction::PerSample).into(),
        OptimOp::AccumulateGrad.into(),
        OptimOp::Fill { value: 0.5 }.into(),
        OptimOp::GradScale(GradScale { max_norm: Some(1.0), multiplier: 0.25 }).into(),
        OptimOp::SgdUpdate(sgd).into(),
        OptimOp::AdamUpdate(adam).into(),
        CastOp::Cast { to: DType::Bool }.into(),
        OptimOp::CountNonFinite.into(),
    ]
}

#[test]
fn every_op_encodes_with_its_checked_in_tag() {
    let mut seen = vec![false; TAGS.len()];
    for op in every_op() {
        let i = row(&op);
        let (name, tag) = TAGS[i];
        assert_eq!(op.name(), name, "row {i} of TAGS names a different op");
        let bytes = postcard::to_allocvec(&op).unwrap();
        assert_eq!(
            bytes[..2],
            tag,
            "{name} now encodes as {:?}: an op or family was reordered or removed, which changes what existing plans mean; \
             append instead, or bump FORMAT_VERSION and update TAGS",
            &bytes[..2]
        );
        let back: Op = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, op, "{name} does not survive an encode/decode round trip");
        assert!(!seen[i], "{name} appears twice in every_op()");
        seen[i] = true;
    }
    let missing: Vec<&str> = TAGS.iter().zip(&seen).filter(|(_, &s)| !s).map(|((n, _), _)| *n).collect();
    assert!(missing.is_empty(), "every_op() has no instance of {missing:?}");
}

#[test]
fn op_names_are_unique() {
    let mut names: Vec<&str> = TAGS.iter().map(|(n, _)| *n).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), TAGS.len(), "two ops share a name; pock inspect and error messages could not tell them apart");
}

/// Tensor dtypes are encoded by index too (in every tensor of a plan and in `Cast`'s attribute),
/// so they follow the same append-only rule.
#[test]
fn dtype_tags_are_stable() {
    let table = [(DType::F32, 0u8), (DType::I64, 1), (DType::F16, 2), (DType::I8, 3), (DType::Bool, 4)];
    for (dtype, tag) in table {
        assert_eq!(postcard::to_allocvec(&dtype).unwrap(), [tag], "{} changed its encoding", dtype.name());
    }
    // The exhaustive match makes a new dtype a compile error here until the table has it.
    for (dtype, _) in table {
        match dtype {
            DType::F32 | DType::I64 | DType::F16 | DType::I8 | DType::Bool => {}
        }
    }
}
