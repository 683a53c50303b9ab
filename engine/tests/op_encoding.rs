//! The plan encoding of ops stays stable: every op is encoded and its leading tag bytes (family
//! index, op index inside the family) are compared with a checked-in table. Reordering or
//! removing a variant changes some op's tag and fails here; the rule is in `engine/src/format.rs`.

use pock_engine::kernels::unary::{
    Abs, Ceil, Cos, Elu, Erf, Exp, Floor, HardSigmoid, LeakyRelu, Log, Neg, Reciprocal, Round, Sigmoid, Sign, Sin, Softplus, Sqrt, Tanh,
};
use pock_engine::ops::{
    Activation, Adam, BatchNorm, CastOp, Clip, Conv2d, ConvOp, CrossEntropy, DenseOp, GradScale, LossOp, MatMul, MatMulOp, MoveOp, NormOp,
    Op, OptimOp, ParamRows, Pool2d, PoolOp, Reduce, ReduceOp, Reduction, Sgd, Slice,
};
use pock_engine::ops::{BroadcastOp, Dropout, MaskKind, MaskOp, QLinear, QOutput, QParams, QuantOp, RandomOp, UnaryFn, UnaryOp};
use pock_engine::plan::DType;

/// `(op name, encoded tag bytes)`. Append a row for each new op; never edit or reorder a row
/// (that would change what existing plan files mean: bump `FORMAT_VERSION` instead).
const TAGS: &[(&str, [u8; 2])] = &[
    ("MatMul", [0, 0]),
    ("BiasAdd", [0, 1]),
    ("AddSameShape", [0, 2]),
    ("MulSameShape", [0, 3]),
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
    ("Add", [7, 0]),
    ("Sub", [7, 1]),
    ("Mul", [7, 2]),
    ("Div", [7, 3]),
    ("Pow", [7, 4]),
    ("Max", [7, 5]),
    ("Min", [7, 6]),
    ("Equal", [7, 7]),
    ("Less", [7, 8]),
    ("LessOrEqual", [7, 9]),
    ("Greater", [7, 10]),
    ("GreaterOrEqual", [7, 11]),
    ("And", [7, 12]),
    ("Or", [7, 13]),
    ("Xor", [7, 14]),
    ("Where", [7, 15]),
    ("SumTo", [7, 16]),
    ("DivGradDivisor", [7, 17]),
    ("PowGradBase", [7, 18]),
    ("PowGradExponent", [7, 19]),
    ("MaxGrad", [7, 20]),
    ("MinGrad", [7, 21]),
    ("Neg", [8, 0]),
    ("Exp", [8, 0]),
    ("Log", [8, 0]),
    ("Sqrt", [8, 0]),
    ("Reciprocal", [8, 0]),
    ("Tanh", [8, 0]),
    ("Sigmoid", [8, 0]),
    ("Erf", [8, 0]),
    ("Abs", [8, 0]),
    ("Sin", [8, 0]),
    ("Cos", [8, 0]),
    ("Softplus", [8, 0]),
    ("LeakyRelu", [8, 0]),
    ("Elu", [8, 0]),
    ("HardSigmoid", [8, 0]),
    ("NegGrad", [8, 1]),
    ("ExpGrad", [8, 1]),
    ("LogGrad", [8, 1]),
    ("SqrtGrad", [8, 1]),
    ("ReciprocalGrad", [8, 1]),
    ("TanhGrad", [8, 1]),
    ("SigmoidGrad", [8, 1]),
    ("ErfGrad", [8, 1]),
    ("AbsGrad", [8, 1]),
    ("SinGrad", [8, 1]),
    ("CosGrad", [8, 1]),
    ("SoftplusGrad", [8, 1]),
    ("LeakyReluGrad", [8, 1]),
    ("EluGrad", [8, 1]),
    ("HardSigmoidGrad", [8, 1]),
    ("Not", [8, 2]),
    ("ReduceSum", [9, 0]),
    ("ReduceMean", [9, 1]),
    ("ReduceMax", [9, 2]),
    ("ReduceSumGrad", [9, 3]),
    ("ReduceMeanGrad", [9, 4]),
    ("ReduceMaxGrad", [9, 5]),
    ("Softmax", [9, 6]),
    ("LogSoftmax", [9, 7]),
    ("SoftmaxGrad", [9, 8]),
    ("LogSoftmaxGrad", [9, 9]),
    ("Transpose", [10, 0]),
    ("Concat", [10, 1]),
    ("Split", [10, 2]),
    ("Slice", [10, 3]),
    ("SliceGrad", [10, 4]),
    ("Expand", [10, 5]),
    ("Gather", [10, 6]),
    ("GatherGrad", [10, 7]),
    ("Pad", [10, 8]),
    ("Trilu", [10, 9]),
    ("BatchMatMul", [11, 0]),
    ("CountNonFinite", [5, 5]),
    ("Dropout", [12, 0]),
    ("AdvanceCounter", [12, 1]),
    ("RandomUniform", [12, 2]),
    ("CrossEntropy", [4, 4]),
    ("CrossEntropyGrad", [4, 5]),
    ("MaskPack", [13, 0]),
    ("MaskGrad", [13, 1]),
    ("Conv2dGradWeightRows", [1, 3]),
    ("SgdUpdateRows", [5, 6]),
    ("AdamUpdateRows", [5, 7]),
    ("Quantize", [14, 0]),
    ("Dequantize", [14, 1]),
    ("QLinear", [14, 2]),
    ("QLinearGradInput", [14, 3]),
    ("QLinearGradWeight", [14, 4]),
    ("QLinearGradBias", [14, 5]),
    ("Conv2dBiasAct", [1, 4]),
    ("Conv2dGradInputMasked", [1, 5]),
    ("MatMulBiasAct", [0, 10]),
    ("Floor", [8, 0]),
    ("Ceil", [8, 0]),
    ("Round", [8, 0]),
    ("Sign", [8, 0]),
    ("FloorGrad", [8, 1]),
    ("CeilGrad", [8, 1]),
    ("RoundGrad", [8, 1]),
    ("SignGrad", [8, 1]),
    ("BatchNormTrainAct", [2, 4]),
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
            DenseOp::MatMulBiasAct { .. } => 126,
        },
        Op::Conv(op) => match op {
            ConvOp::Conv2d(_) => 10,
            ConvOp::Conv2dGradInput { .. } => 11,
            ConvOp::Conv2dGradWeight { .. } => 12,
            ConvOp::Conv2dGradWeightRows { .. } => 115,
            ConvOp::Conv2dBiasAct { .. } => 124,
            ConvOp::Conv2dGradInputMasked { .. } => 125,
        },
        Op::Norm(op) => match op {
            NormOp::BatchNormTrain(_) => 13,
            NormOp::BatchNormInfer(_) => 14,
            NormOp::BatchNormTrainGrad(_) => 15,
            NormOp::BatchNormInferGrad(_) => 16,
            NormOp::BatchNormTrainAct { .. } => 135,
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
            LossOp::CrossEntropy(_) => 111,
            LossOp::CrossEntropyGrad(_) => 112,
        },
        Op::Optim(op) => match op {
            OptimOp::AccumulateGrad => 27,
            OptimOp::Fill { .. } => 28,
            OptimOp::GradScale(_) => 29,
            OptimOp::SgdUpdate(_) => 30,
            OptimOp::AdamUpdate(_) => 31,
            OptimOp::CountNonFinite => 107,
            OptimOp::SgdUpdateRows { .. } => 116,
            OptimOp::AdamUpdateRows { .. } => 117,
        },
        Op::Cast(op) => match op {
            CastOp::Cast { .. } => 32,
        },
        Op::Broadcast(op) => match op {
            BroadcastOp::Add => 33,
            BroadcastOp::Sub => 34,
            BroadcastOp::Mul => 35,
            BroadcastOp::Div => 36,
            BroadcastOp::Pow => 37,
            BroadcastOp::Max => 38,
            BroadcastOp::Min => 39,
            BroadcastOp::Equal => 40,
            BroadcastOp::Less => 41,
            BroadcastOp::LessOrEqual => 42,
            BroadcastOp::Greater => 43,
            BroadcastOp::GreaterOrEqual => 44,
            BroadcastOp::And => 45,
            BroadcastOp::Or => 46,
            BroadcastOp::Xor => 47,
            BroadcastOp::Where => 48,
            BroadcastOp::SumTo { .. } => 49,
            BroadcastOp::DivGradDivisor => 50,
            BroadcastOp::PowGradBase => 51,
            BroadcastOp::PowGradExponent => 52,
            BroadcastOp::MaxGrad => 53,
            BroadcastOp::MinGrad => 54,
        },
        // The first 15 functions have rows 55.. and 70..; later ones were appended at the end.
        Op::Unary(UnaryOp::Map(f)) if unary_fn_index(f) < 15 => 55 + unary_fn_index(f),
        Op::Unary(UnaryOp::Grad(f)) if unary_fn_index(f) < 15 => 70 + unary_fn_index(f),
        Op::Unary(UnaryOp::Map(f)) => 127 + unary_fn_index(f) - 15,
        Op::Unary(UnaryOp::Grad(f)) => 131 + unary_fn_index(f) - 15,
        Op::Unary(UnaryOp::Not) => 85,
        Op::Reduce(op) => match op {
            ReduceOp::ReduceSum(_) => 86,
            ReduceOp::ReduceMean(_) => 87,
            ReduceOp::ReduceMax(_) => 88,
            ReduceOp::ReduceSumGrad { .. } => 89,
            ReduceOp::ReduceMeanGrad { .. } => 90,
            ReduceOp::ReduceMaxGrad(_) => 91,
            ReduceOp::Softmax { .. } => 92,
            ReduceOp::LogSoftmax { .. } => 93,
            ReduceOp::SoftmaxGrad { .. } => 94,
            ReduceOp::LogSoftmaxGrad { .. } => 95,
        },
        Op::Move(op) => match op {
            MoveOp::Transpose { .. } => 96,
            MoveOp::Concat { .. } => 97,
            MoveOp::Split { .. } => 98,
            MoveOp::Slice(_) => 99,
            MoveOp::SliceGrad { .. } => 100,
            MoveOp::Expand { .. } => 101,
            MoveOp::Gather { .. } => 102,
            MoveOp::GatherGrad { .. } => 103,
            MoveOp::Pad { .. } => 104,
            MoveOp::Trilu { .. } => 105,
        },
        Op::MatMul(op) => match op {
            MatMulOp::BatchMatMul(_) => 106,
        },
        Op::Random(op) => match op {
            RandomOp::Dropout(_) => 108,
            RandomOp::Advance => 109,
            RandomOp::Uniform { .. } => 110,
        },
        Op::Mask(op) => match op {
            MaskOp::Pack(_) => 113,
            MaskOp::Grad => 114,
        },
        Op::Quant(op) => match op {
            QuantOp::Quantize(_) => 118,
            QuantOp::Dequantize(_) => 119,
            QuantOp::Linear(_) => 120,
            QuantOp::LinearGradInput(_) => 121,
            QuantOp::LinearGradWeight(_) => 122,
            QuantOp::LinearGradBias(_) => 123,
        },
    }
}

/// The index of a unary function inside `UnaryFn`, which `Map` and `Grad` encode after their own
/// tag. The match is exhaustive: a new function does not compile here until it has an index.
fn unary_fn_index(f: &UnaryFn) -> usize {
    match f {
        UnaryFn::Neg(_) => 0,
        UnaryFn::Exp(_) => 1,
        UnaryFn::Log(_) => 2,
        UnaryFn::Sqrt(_) => 3,
        UnaryFn::Reciprocal(_) => 4,
        UnaryFn::Tanh(_) => 5,
        UnaryFn::Sigmoid(_) => 6,
        UnaryFn::Erf(_) => 7,
        UnaryFn::Abs(_) => 8,
        UnaryFn::Sin(_) => 9,
        UnaryFn::Cos(_) => 10,
        UnaryFn::Softplus(_) => 11,
        UnaryFn::LeakyRelu(_) => 12,
        UnaryFn::Elu(_) => 13,
        UnaryFn::HardSigmoid(_) => 14,
        UnaryFn::Floor(_) => 15,
        UnaryFn::Ceil(_) => 16,
        UnaryFn::Round(_) => 17,
        UnaryFn::Sign(_) => 18,
    }
}

/// Every unary function, with attributes that are not all zero.
fn every_unary_fn() -> Vec<UnaryFn> {
    vec![
        UnaryFn::Neg(Neg),
        UnaryFn::Exp(Exp),
        UnaryFn::Log(Log),
        UnaryFn::Sqrt(Sqrt),
        UnaryFn::Reciprocal(Reciprocal),
        UnaryFn::Tanh(Tanh),
        UnaryFn::Sigmoid(Sigmoid),
        UnaryFn::Erf(Erf),
        UnaryFn::Abs(Abs),
        UnaryFn::Sin(Sin),
        UnaryFn::Cos(Cos),
        UnaryFn::Softplus(Softplus),
        UnaryFn::LeakyRelu(LeakyRelu { alpha: 0.01 }),
        UnaryFn::Elu(Elu { alpha: 1.5 }),
        UnaryFn::HardSigmoid(HardSigmoid { alpha: 0.2, beta: 0.5 }),
        UnaryFn::Floor(Floor),
        UnaryFn::Ceil(Ceil),
        UnaryFn::Round(Round),
        UnaryFn::Sign(Sign),
    ]
}

/// One instance of every op, with attributes that are not all zero so the round trip means
/// something.
fn every_op() -> Vec<Op> {
    let qlinear = QLinear {
        x: QParams { scale: 0.1, zero_point: -128 },
        out: QOutput::Int8 { q: QParams { scale: 0.05, zero_point: -100 }, lo: -100, hi: 120 },
        qas: true,
    };
    let conv = Conv2d { stride: [2, 1], padding: [1, 0, 1, 2], dilation: [1, 2], groups: 3 };
    let pool = Pool2d { kernel: [3, 2], stride: [2, 2], padding: [1, 0, 0, 1], count_include_pad: false };
    let bn = BatchNorm { eps: 1e-3, momentum: 0.2 };
    let clip = Clip { min: -1.0, max: 6.0 };
    let sgd = Sgd { momentum: 0.9, dampening: 0.1, nesterov: false, weight_decay: 1e-4, scaled: true };
    let reduce = Reduce { axes: vec![0, 2], keepdims: true };
    let slice = Slice { axes: vec![1], starts: vec![-1], ends: vec![i64::MIN], steps: vec![-2] };
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
        BroadcastOp::Add.into(),
        BroadcastOp::Sub.into(),
        BroadcastOp::Mul.into(),
        BroadcastOp::Div.into(),
        BroadcastOp::Pow.into(),
        BroadcastOp::Max.into(),
        BroadcastOp::Min.into(),
        BroadcastOp::Equal.into(),
        BroadcastOp::Less.into(),
        BroadcastOp::LessOrEqual.into(),
        BroadcastOp::Greater.into(),
        BroadcastOp::GreaterOrEqual.into(),
        BroadcastOp::And.into(),
        BroadcastOp::Or.into(),
        BroadcastOp::Xor.into(),
        BroadcastOp::Where.into(),
        BroadcastOp::SumTo { shape: vec![3, 1] }.into(),
        BroadcastOp::DivGradDivisor.into(),
        BroadcastOp::PowGradBase.into(),
        BroadcastOp::PowGradExponent.into(),
        BroadcastOp::MaxGrad.into(),
        BroadcastOp::MinGrad.into(),
        ReduceOp::ReduceSum(reduce.clone()).into(),
        ReduceOp::ReduceMean(reduce.clone()).into(),
        ReduceOp::ReduceMax(reduce.clone()).into(),
        ReduceOp::ReduceSumGrad { reduce: reduce.clone(), shape: vec![2, 3, 4] }.into(),
        ReduceOp::ReduceMeanGrad { reduce: reduce.clone(), shape: vec![5, 3, 4] }.into(),
        ReduceOp::ReduceMaxGrad(reduce).into(),
        ReduceOp::Softmax { axis: 1 }.into(),
        ReduceOp::LogSoftmax { axis: 2 }.into(),
        ReduceOp::SoftmaxGrad { axis: 3 }.into(),
        ReduceOp::LogSoftmaxGrad { axis: 1 }.into(),
        MoveOp::Transpose { perm: vec![1, 0, 2] }.into(),
        MoveOp::Concat { axis: 1 }.into(),
        MoveOp::Split { axis: 2, sizes: vec![3, 1] }.into(),
        MoveOp::Slice(slice.clone()).into(),
        MoveOp::SliceGrad { slice, shape: vec![4, 6] }.into(),
        MoveOp::Expand { shape: vec![2, 1, 5] }.into(),
        MoveOp::Gather { axis: 1 }.into(),
        MoveOp::GatherGrad { axis: 0, shape: vec![10, 3] }.into(),
        MoveOp::Pad { pads: vec![0, 1, 2, 0], value: -1.5 }.into(),
        MoveOp::Trilu { upper: false, k: -1 }.into(),
        MatMulOp::BatchMatMul(MatMul { trans_a: false, trans_b: true }).into(),
        OptimOp::CountNonFinite.into(),
        RandomOp::Dropout(Dropout { ratio: 0.1, key: 42 }).into(),
        RandomOp::Advance.into(),
        LossOp::CrossEntropy(CrossEntropy { reduction: Reduction::PerSample, ignore_index: -100 }).into(),
        LossOp::CrossEntropyGrad(CrossEntropy { reduction: Reduction::Mean, ignore_index: 3 }).into(),
        RandomOp::Uniform { low: -1.0, high: 2.0, key: 7, shape: vec![3, 1] }.into(),
        MaskOp::Pack(MaskKind::Clip(Clip { min: 0.0, max: 6.0 })).into(),
        MaskOp::Grad.into(),
        ConvOp::Conv2dGradWeightRows { conv, kernel_hw: [3, 3], rows: [2, 6] }.into(),
        OptimOp::SgdUpdateRows { sgd, rows: ParamRows { start: 1, param_rows: 8 } }.into(),
        OptimOp::AdamUpdateRows { adam, rows: ParamRows { start: 0, param_rows: 4 } }.into(),
        QuantOp::Quantize(QParams { scale: 0.5, zero_point: -3 }).into(),
        QuantOp::Dequantize(QParams { scale: 0.25, zero_point: 7 }).into(),
        QuantOp::Linear(qlinear).into(),
        QuantOp::LinearGradInput(qlinear).into(),
        QuantOp::LinearGradWeight(QLinear { out: QOutput::F32, ..qlinear }).into(),
        QuantOp::LinearGradBias(QLinear { qas: false, ..qlinear }).into(),
        ConvOp::Conv2dBiasAct { conv, act: Activation::Clip(clip) }.into(),
        ConvOp::Conv2dGradInputMasked { conv, input_hw: [7, 9] }.into(),
        DenseOp::MatMulBiasAct { mm: MatMul { trans_a: false, trans_b: true }, act: Activation::Relu }.into(),
        NormOp::BatchNormTrainAct { norm: bn, act: Activation::Clip(clip) }.into(),
    ]
    .into_iter()
    .chain(every_unary_fn().into_iter().flat_map(|f| [UnaryOp::Map(f).into(), UnaryOp::Grad(f).into()]))
    .chain([UnaryOp::Not.into()])
    .collect()
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

/// `Map` and `Grad` encode their function's index after the op tag; that index follows the same
/// append-only rule.
#[test]
fn unary_functions_encode_with_their_index() {
    for f in every_unary_fn() {
        for (op, tag) in [(UnaryOp::Map(f), 0u8), (UnaryOp::Grad(f), 1)] {
            let bytes = postcard::to_allocvec(&Op::from(op.clone())).unwrap();
            assert_eq!(bytes[..3], [8, tag, unary_fn_index(&f) as u8], "{op:?} changed its encoding");
        }
    }
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
    let table = [(DType::F32, 0u8), (DType::I64, 1), (DType::F16, 2), (DType::I8, 3), (DType::Bool, 4), (DType::U8, 5)];
    for (dtype, tag) in table {
        assert_eq!(postcard::to_allocvec(&dtype).unwrap(), [tag], "{} changed its encoding", dtype.name());
    }
    // The exhaustive match makes a new dtype a compile error here until the table has it.
    for (dtype, _) in table {
        match dtype {
            DType::F32 | DType::I64 | DType::F16 | DType::I8 | DType::Bool | DType::U8 => {}
        }
    }
}
