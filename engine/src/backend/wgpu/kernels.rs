//! The WGSL kernels and the lowering of each plan node to one dispatch of one of them.
//!
//! Every kernel sees the same two bindings: `M`, the whole device memory (the arena followed by
//! the weight section) as `f32` words (as atomic `u32` words in the kernels of `typed.rs`, which
//! store single bytes of bool tensors), and `P`, the node's parameter block (`u32` words: tensor
//! offsets in words, sizes, attributes as bit patterns). Binding the whole buffer at offset 0 is
//! what lets tensors sit at any 8-byte-aligned planned offset: the kernel adds the offset itself,
//! so the device's 256-byte storage-offset alignment never applies to tensors (see
//! ARCHITECTURE.md "GPU backend"). `P[0]` is the number of threads the node runs; kernels of the
//! `Grid` kind run one thread per output element on a 2-D grid of 256-thread workgroups;
//! reductions run one workgroup per block of their range (`wide.rs`), so that no thread loops over
//! a tensor-sized range. The optimizer
//! updates are `Grid` kernels after a `FINITE_CHECK` dispatch that sets a flag word where a
//! gradient element is not finite, so that they skip the update as the reference kernels do.
//!
//! Each kernel follows its reference kernel in `kernels/reference/` (same formula, same order of
//! additions where one thread computes one sum); `engine/tests/wgpu_kernels.rs` checks each one
//! against it on random shapes.

use alloc::string::String;
use alloc::vec::Vec;

use crate::ops::{Conv2d, ConvOp, DenseOp, LossOp, MaskKind, MaskOp, NormOp, Op, OptimOp, PoolOp, Reduction};
use crate::plan::{DType, Location, Node, Plan, TensorId};

use super::{conv_gemm, families, wide};

/// Threads per workgroup in every kernel.
pub const WORKGROUP: u32 = 256;
/// "No tensor" in a parameter block (an optional input that the node does not have).
pub const NONE: u32 = u32::MAX;

/// The kernels, one WGSL entry point each. The discriminant indexes the pipeline table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    Elementwise,
    BiasAdd,
    BiasGrad,
    MatMul,
    Conv2d,
    Conv2dGradInput,
    Conv2dGradWeight,
    MaxPool,
    MaxPoolGrad,
    AvgPool,
    AvgPoolGrad,
    GlobalAvgPoolGrad,
    SoftmaxCrossEntropy,
    SoftmaxCrossEntropyGrad,
    Sgd,
    Adam,
    CountNonFinite,
    Fill,
    AccumulateGrad,
    MaskPack,
    MaskGrad,
    BatchNormStats,
    BatchNormApply,
    BatchNormGradSums,
    BatchNormGradInput,
    GradScaleAccumulate,
    GradScaleFinish,
    Mse,
    MseGrad,
    CrossEntropy,
    CrossEntropyGrad,
    Unary,
    Strided,
    Groups,
    Random,
    Conv2dBiasAct,
    Conv2dGradInputMasked,
    Typed,
    Gather,
    ConvGemm,
    ConvGemmGradInput,
    ConvGemmGradWeight,
    ConvGemmBiasAct,
    ConvGemmGradInputMasked,
    FiniteCheck,
    Quantize,
    Dequantize,
    QLinear,
    QLinearGradInput,
    QLinearGradWeight,
    QLinearGradBias,
    SumPartials,
    CrossEntropyPartial,
    GroupsWide,
    GroupsFinish,
    BatchNormStatsWide,
    BatchNormGradSumsWide,
    Conv2dGradWeightWide,
    ConvGemmSplitFinish,
    MatMulSplitFinish,
}

pub const KERNELS: [Kernel; 60] = [
    Kernel::Elementwise,
    Kernel::BiasAdd,
    Kernel::BiasGrad,
    Kernel::MatMul,
    Kernel::Conv2d,
    Kernel::Conv2dGradInput,
    Kernel::Conv2dGradWeight,
    Kernel::MaxPool,
    Kernel::MaxPoolGrad,
    Kernel::AvgPool,
    Kernel::AvgPoolGrad,
    Kernel::GlobalAvgPoolGrad,
    Kernel::SoftmaxCrossEntropy,
    Kernel::SoftmaxCrossEntropyGrad,
    Kernel::Sgd,
    Kernel::Adam,
    Kernel::CountNonFinite,
    Kernel::Fill,
    Kernel::AccumulateGrad,
    Kernel::MaskPack,
    Kernel::MaskGrad,
    Kernel::BatchNormStats,
    Kernel::BatchNormApply,
    Kernel::BatchNormGradSums,
    Kernel::BatchNormGradInput,
    Kernel::GradScaleAccumulate,
    Kernel::GradScaleFinish,
    Kernel::Mse,
    Kernel::MseGrad,
    Kernel::CrossEntropy,
    Kernel::CrossEntropyGrad,
    Kernel::Unary,
    Kernel::Strided,
    Kernel::Groups,
    Kernel::Random,
    Kernel::Conv2dBiasAct,
    Kernel::Conv2dGradInputMasked,
    Kernel::Typed,
    Kernel::Gather,
    Kernel::ConvGemm,
    Kernel::ConvGemmGradInput,
    Kernel::ConvGemmGradWeight,
    Kernel::ConvGemmBiasAct,
    Kernel::ConvGemmGradInputMasked,
    Kernel::FiniteCheck,
    Kernel::Quantize,
    Kernel::Dequantize,
    Kernel::QLinear,
    Kernel::QLinearGradInput,
    Kernel::QLinearGradWeight,
    Kernel::QLinearGradBias,
    Kernel::SumPartials,
    Kernel::CrossEntropyPartial,
    Kernel::GroupsWide,
    Kernel::GroupsFinish,
    Kernel::BatchNormStatsWide,
    Kernel::BatchNormGradSumsWide,
    Kernel::Conv2dGradWeightWide,
    Kernel::ConvGemmSplitFinish,
    Kernel::MatMulSplitFinish,
];

const HEADER: &str = r#"
@group(0) @binding(0) var<storage, read_write> M: array<f32>;
@group(0) @binding(1) var<storage, read> P: array<u32>;
const NONE: u32 = 0xffffffffu;
fn pf(i: u32) -> f32 { return bitcast<f32>(P[i]); }
fn finite(x: f32) -> bool { return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u; }
fn is_nan(x: f32) -> bool { return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u; }
fn label(off: u32, i: u32) -> u32 { return bitcast<u32>(M[off + i]); }
fn nan() -> f32 { return bitcast<f32>(0x7fc00000u); }
// The activations of the elementwise kernel and of every fused epilogue, written once: kind 0
// none, 1 ReLU, 2 clip to [lo, hi] (raised first, so that NaN stays NaN), as `kernels/cpu/`'s.
fn activate(v: f32, kind: u32, lo: f32, hi: f32) -> f32 {
    if (kind == 1u) { return select(v, 0.0, v < 0.0); }
    if (kind == 2u) { let raised = select(v, lo, v < lo); return select(raised, hi, raised > hi); }
    return v;
}
"#;

/// One thread per element: `i` is the element, threads past `P[0]` return.
const GRID: &str = r#"
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = (wg.y * nw.x + wg.x) * 256u + li;
    if (i >= P[0]) { return; }
    body(i);
}
"#;

/// One workgroup per channel, dispatched as exactly `P[0]` workgroups along x: `c` is the
/// channel, `li` the thread; `partial` is the workgroup's scratch for its reductions.
const CHANNEL: &str = r#"
var<workgroup> partial: array<f32, 257>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    body(wg.x, li);
}
"#;

/// The optimizer updates' helpers: the gradient scale (`P[4]`, a tensor or NONE) and whether the
/// finite check (`FINITE_CHECK`, the dispatch before) found a non-finite value (`P[flag]` is the
/// flag word's address).
const OPTIM: &str = r#"
fn read_scale() -> f32 {
    if (P[4] == NONE) { return 1.0; }
    return M[P[4]];
}
fn skipped(flag: u32) -> bool { return bitcast<u32>(M[P[flag]]) != 0u; }
"#;

impl Kernel {
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Elementwise => "elementwise",
            Kernel::BiasAdd => "bias_add",
            Kernel::BiasGrad => "bias_grad",
            Kernel::MatMul => "matmul",
            Kernel::Conv2d => "conv2d",
            Kernel::Conv2dGradInput => "conv2d_grad_input",
            Kernel::Conv2dGradWeight => "conv2d_grad_weight",
            Kernel::MaxPool => "max_pool",
            Kernel::MaxPoolGrad => "max_pool_grad",
            Kernel::AvgPool => "avg_pool",
            Kernel::AvgPoolGrad => "avg_pool_grad",
            Kernel::GlobalAvgPoolGrad => "global_avg_pool_grad",
            Kernel::SoftmaxCrossEntropy => "softmax_cross_entropy",
            Kernel::SoftmaxCrossEntropyGrad => "softmax_cross_entropy_grad",
            Kernel::Sgd => "sgd",
            Kernel::Adam => "adam",
            Kernel::CountNonFinite => "count_non_finite",
            Kernel::Fill => "fill",
            Kernel::AccumulateGrad => "accumulate_grad",
            Kernel::MaskPack => "mask_pack",
            Kernel::MaskGrad => "mask_grad",
            Kernel::BatchNormStats => "batch_norm_stats",
            Kernel::BatchNormApply => "batch_norm_apply",
            Kernel::BatchNormGradSums => "batch_norm_grad_sums",
            Kernel::BatchNormGradInput => "batch_norm_grad_input",
            Kernel::GradScaleAccumulate => "grad_scale_accumulate",
            Kernel::GradScaleFinish => "grad_scale_finish",
            Kernel::Mse => "mse",
            Kernel::MseGrad => "mse_grad",
            Kernel::CrossEntropy => "cross_entropy",
            Kernel::CrossEntropyGrad => "cross_entropy_grad",
            Kernel::Unary => "unary",
            Kernel::Strided => "strided",
            Kernel::Groups => "groups",
            Kernel::Random => "random",
            Kernel::Conv2dBiasAct => "conv2d_bias_act",
            Kernel::Conv2dGradInputMasked => "conv2d_grad_input_masked",
            Kernel::Typed => "typed",
            Kernel::Gather => "gather",
            Kernel::ConvGemm => "conv2d_gemm",
            Kernel::ConvGemmGradInput => "conv2d_gemm_grad_input",
            Kernel::ConvGemmGradWeight => "conv2d_gemm_grad_weight",
            Kernel::ConvGemmBiasAct => "conv2d_gemm_bias_act",
            Kernel::ConvGemmGradInputMasked => "conv2d_gemm_grad_input_masked",
            Kernel::FiniteCheck => "finite_check",
            Kernel::Quantize => "quantize",
            Kernel::Dequantize => "dequantize",
            Kernel::QLinear => "qlinear",
            Kernel::QLinearGradInput => "qlinear_grad_input",
            Kernel::QLinearGradWeight => "qlinear_grad_weight",
            Kernel::QLinearGradBias => "qlinear_grad_bias",
            Kernel::SumPartials => "sum_partials",
            Kernel::CrossEntropyPartial => "cross_entropy_partial",
            Kernel::GroupsWide => "groups_wide",
            Kernel::GroupsFinish => "groups_finish",
            Kernel::BatchNormStatsWide => "batch_norm_stats_wide",
            Kernel::BatchNormGradSumsWide => "batch_norm_grad_sums_wide",
            Kernel::Conv2dGradWeightWide => "conv2d_grad_weight_wide",
            Kernel::ConvGemmSplitFinish => "conv2d_gemm_split_finish",
            Kernel::MatMulSplitFinish => "matmul_split_finish",
        }
    }

    /// Whether the kernel runs one workgroup per block, `P[0]` blocks (`wide.rs`'s `BLOCKS`),
    /// its threads reducing the block together (else one thread per element of `P[0]`).
    pub fn blocks(self) -> bool {
        matches!(
            self,
            Kernel::Mse
                | Kernel::GradScaleAccumulate
                | Kernel::SumPartials
                | Kernel::CrossEntropyPartial
                | Kernel::GroupsWide
                | Kernel::BatchNormStatsWide
                | Kernel::BatchNormGradSumsWide
                | Kernel::Conv2dGradWeightWide
        )
    }

    /// Whether the kernel runs one workgroup per channel (`P[0]` channels), its threads
    /// reducing the channel together ([`CHANNEL`]).
    pub fn per_channel(self) -> bool {
        matches!(self, Kernel::BatchNormStats)
    }

    /// The complete WGSL source of the kernel.
    pub fn source(self) -> String {
        let body = match self {
            Kernel::Elementwise => ELEMENTWISE,
            Kernel::BiasAdd => BIAS_ADD,
            Kernel::BiasGrad => BIAS_GRAD,
            // Its own entry point (workgroup-shared tiles), no GRID.
            Kernel::MatMul => {
                return alloc::format!("{HEADER}{}{}{}", families::MATMUL_EPILOGUE, families::MICRO_TILE, families::MATMUL_TILED)
            }
            Kernel::MatMulSplitFinish => return alloc::format!("{HEADER}{GRID}{}{}", families::MATMUL_EPILOGUE, families::MATMUL_FINISH),
            Kernel::Unary => return alloc::format!("{HEADER}{GRID}{}", families::unary_source()),
            // Implicit GEMM (`conv_gemm.rs`): its own tiled entry point.
            Kernel::ConvGemm
            | Kernel::ConvGemmGradInput
            | Kernel::ConvGemmGradWeight
            | Kernel::ConvGemmBiasAct
            | Kernel::ConvGemmGradInputMasked
            | Kernel::ConvGemmSplitFinish => return conv_gemm::source(self, HEADER, CONV_PARAMS),
            Kernel::Conv2d => CONV2D,
            Kernel::Conv2dGradInput => CONV2D_GRAD_INPUT,
            Kernel::Conv2dGradWeight => CONV2D_GRAD_WEIGHT,
            Kernel::MaxPool => MAX_POOL,
            Kernel::MaxPoolGrad => MAX_POOL_GRAD,
            Kernel::AvgPool => AVG_POOL,
            Kernel::AvgPoolGrad => AVG_POOL_GRAD,
            Kernel::GlobalAvgPoolGrad => GLOBAL_AVG_POOL_GRAD,
            Kernel::SoftmaxCrossEntropy => SOFTMAX_CROSS_ENTROPY,
            Kernel::SoftmaxCrossEntropyGrad => SOFTMAX_CROSS_ENTROPY_GRAD,
            Kernel::Sgd => SGD,
            Kernel::Adam => ADAM,
            Kernel::CountNonFinite => COUNT_NON_FINITE,
            Kernel::FiniteCheck => return alloc::format!("{}{GRID}{FINITE_CHECK}", super::typed::HEADER),
            Kernel::Fill => FILL,
            Kernel::AccumulateGrad => ACCUMULATE_GRAD,
            Kernel::MaskPack => MASK_PACK,
            Kernel::MaskGrad => MASK_GRAD,
            Kernel::BatchNormStats => BATCH_NORM_STATS,
            Kernel::BatchNormApply => BATCH_NORM_APPLY,
            Kernel::BatchNormGradSums => BATCH_NORM_GRAD_SUMS,
            Kernel::BatchNormGradInput => BATCH_NORM_GRAD_INPUT,
            Kernel::GradScaleAccumulate => wide::GRAD_SCALE_PARTIAL,
            Kernel::GradScaleFinish => families::GRAD_SCALE_FINISH,
            Kernel::Mse => wide::MSE,
            Kernel::SumPartials => wide::SUM_PARTIALS,
            Kernel::CrossEntropyPartial => wide::CROSS_ENTROPY_PARTIAL,
            Kernel::GroupsWide => wide::GROUPS_WIDE,
            Kernel::GroupsFinish => wide::GROUPS_FINISH,
            Kernel::BatchNormStatsWide => wide::BATCH_NORM_STATS_WIDE,
            Kernel::BatchNormGradSumsWide => wide::BATCH_NORM_GRAD_SUMS_WIDE,
            Kernel::Conv2dGradWeightWide => wide::CONV2D_GRAD_WEIGHT_WIDE,
            Kernel::MseGrad => families::MSE_GRAD,
            Kernel::CrossEntropy => families::CROSS_ENTROPY,
            Kernel::CrossEntropyGrad => families::CROSS_ENTROPY_GRAD,
            Kernel::Strided => families::STRIDED,
            Kernel::Groups => families::GROUPS,
            Kernel::Random => families::RANDOM,
            // Memory as atomic words (byte stores), with their own header.
            Kernel::Typed | Kernel::Gather => {
                let mut s = String::from(super::typed::HEADER);
                s.push_str(GRID);
                if self == Kernel::Typed {
                    s.push_str(families::STRIDED_WALK);
                    s.push_str(super::typed::I32_TO_F32);
                    s.push_str(super::typed::TYPED);
                } else {
                    s.push_str(super::typed::GATHER);
                }
                return s;
            }
            // The convolution's own body (one sum per thread, in its order), ending in the
            // epilogue instead of the plain store.
            Kernel::Conv2dBiasAct => return bias_act_source(CONV2D, CONV_PARAMS, "o"),
            // The input gradient's own body, its store masked as MASK_GRAD masks (`P[20]`: bits).
            // The int8 family: memory as `u32` words, its own header (`quant.rs`).
            Kernel::Quantize
            | Kernel::Dequantize
            | Kernel::QLinear
            | Kernel::QLinearGradInput
            | Kernel::QLinearGradWeight
            | Kernel::QLinearGradBias => return super::quant::source(self, GRID),
            Kernel::Conv2dGradInputMasked => {
                let store = "M[P[3] + i] = s;";
                debug_assert!(CONV2D_GRAD_INPUT.contains(store));
                let masked =
                    "let bit = (bitcast<u32>(M[P[20] + i / 32u]) >> (i % 32u)) & 1u;\n    M[P[3] + i] = select(0.0, s, bit == 1u);";
                let mut s = String::from(HEADER);
                s.push_str(GRID);
                s.push_str(CONV_PARAMS);
                s.push_str(&CONV2D_GRAD_INPUT.replace(store, masked));
                return s;
            }
        };
        let entry = if self.blocks() {
            wide::BLOCKS
        } else if self.per_channel() {
            CHANNEL
        } else {
            GRID
        };
        let helpers: &[&str] = match self {
            Kernel::Conv2d | Kernel::Conv2dGradInput | Kernel::Conv2dGradWeight | Kernel::Conv2dGradWeightWide => &[CONV_PARAMS],
            Kernel::MaxPool | Kernel::MaxPoolGrad | Kernel::AvgPool | Kernel::AvgPoolGrad => &[POOL_WINDOW],
            Kernel::SoftmaxCrossEntropy | Kernel::CrossEntropy | Kernel::CrossEntropyPartial => &[ROW_MAX, POSITION_LOSS],
            Kernel::SoftmaxCrossEntropyGrad | Kernel::CrossEntropyGrad => &[ROW_MAX, POSITION_LOSS_GRAD],
            Kernel::BatchNormStats
            | Kernel::BatchNormApply
            | Kernel::BatchNormGradSums
            | Kernel::BatchNormGradInput
            | Kernel::BatchNormStatsWide
            | Kernel::BatchNormGradSumsWide => &[BN_PARAMS],
            Kernel::Strided => &[families::STRIDED_WALK],
            Kernel::Groups | Kernel::GroupsWide => &[families::GROUP_INDEX],
            Kernel::Sgd | Kernel::Adam => &[OPTIM],
            _ => &[],
        };
        let mut s = String::from(HEADER);
        s.push_str(entry);
        for helper in helpers {
            s.push_str(helper);
        }
        s.push_str(body);
        s
    }
}

/// `Conv2dBiasAct`: the body of `CONV2D` (`P` words 0-19) with `P` extended by
/// `[.., b, act, lo, hi]` at words 20-23 (act 0 none, 1 ReLU, 2 clip), its
/// store replaced: the bias of output channel / column `channel` is added after the whole sum,
/// then the activation with the elementwise kernel's formulas.
fn bias_act_source(body: &str, helpers: &str, channel: &str) -> String {
    const STORE: &str = "M[P[3] + i] = s;";
    const EPILOGUE: &str = r#"
fn bias_act(s: f32, o: u32) -> f32 {
    return activate(s + M[P[20] + o], P[21], pf(22), pf(23));
}
"#;
    debug_assert!(body.contains(STORE));
    let mut s = String::from(HEADER);
    s.push_str(GRID);
    s.push_str(helpers);
    s.push_str(EPILOGUE);
    s.push_str(&body.replace(STORE, &alloc::format!("M[P[3] + i] = bias_act(s, {channel});")));
    s
}

/// `P = [n, kind, a, b, y, lo, hi]`: kinds 0 ReLU, 1 ReLU gradient (`a = dy`, `b = x`), 2 add,
/// 3 multiply, 4 clip, 5 clip gradient (`a = dy`, `b = x`), 6 copy.
const ELEMENTWISE: &str = r#"
fn body(i: u32) {
    let a = M[P[2] + i];
    var r = a;
    switch P[1] {
        case 0u: { r = activate(a, 1u, 0.0, 0.0); }
        case 1u: { r = select(0.0, a, M[P[3] + i] > 0.0); }
        case 2u: { r = a + M[P[3] + i]; }
        case 3u: { r = a * M[P[3] + i]; }
        case 4u: { r = activate(a, 2u, pf(5), pf(6)); }
        case 5u: { let x = M[P[3] + i]; r = select(0.0, a, pf(5) < x && x < pf(6)); }
        default: {}
    }
    M[P[4] + i] = r;
}
"#;

/// `P = [n, x, b, y, C, inner]`.
const BIAS_ADD: &str = r#"
fn body(i: u32) {
    M[P[3] + i] = M[P[1] + i] + M[P[2] + (i / P[5]) % P[4]];
}
"#;

/// `P = [C, dy, db, C, inner, outer]`: one thread per channel, while its `outer * (inner + 1)`
/// iterations fit (`wide::LOOP_LIMIT`; else a group reduction on workgroups).
const BIAS_GRAD: &str = r#"
fn body(c: u32) {
    let C = P[3]; let inner = P[4];
    var s = 0.0;
    for (var n = 0u; n < P[5]; n++) {
        let base = P[1] + (n * C + c) * inner;
        for (var j = 0u; j < inner; j++) { s += M[base + j]; }
    }
    M[P[2] + c] = s;
}
"#;

/// Convolution parameters shared by the three kernels (`P[1..4]` are the node's tensors):
/// `P = [n, t1, t2, out, N, C, H, W, O, OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, groups]`, with
/// the forward's shapes (`x` `[N, C, H, W]`, `w` `[O, C/G, KH, KW]`, `y` `[N, O, OH, OW]`).
const CONV_PARAMS: &str = r#"
struct Conv { N: u32, C: u32, H: u32, W: u32, O: u32, OH: u32, OW: u32, KH: u32, KW: u32, sh: u32, sw: u32, pt: u32, pl: u32, dh: u32, dw: u32, G: u32 }
fn conv() -> Conv {
    return Conv(P[4], P[5], P[6], P[7], P[8], P[9], P[10], P[11], P[12], P[13], P[14], P[15], P[16], P[17], P[18], P[19]);
}
"#;

/// `P[1] = x, P[2] = w, P[3] = y`: y[n, o, oh, ow] = sum over c in o's group, kh, kw of
/// x[n, c, ih, iw] * w[o, c % Cg, kh, kw].
const CONV2D: &str = r#"
fn body(i: u32) {
    let p = conv();
    let ow = i % p.OW; let oh = (i / p.OW) % p.OH; let o = (i / (p.OW * p.OH)) % p.O; let n = i / (p.OW * p.OH * p.O);
    let Cg = p.C / p.G; let Og = p.O / p.G; let g = o / Og;
    var s = 0.0;
    for (var cg = 0u; cg < Cg; cg++) {
        let c = g * Cg + cg;
        for (var kh = 0u; kh < p.KH; kh++) {
            let ih = i32(oh * p.sh + kh * p.dh) - i32(p.pt);
            if (ih < 0 || ih >= i32(p.H)) { continue; }
            for (var kw = 0u; kw < p.KW; kw++) {
                let iw = i32(ow * p.sw + kw * p.dw) - i32(p.pl);
                if (iw < 0 || iw >= i32(p.W)) { continue; }
                s += M[P[1] + ((n * p.C + c) * p.H + u32(ih)) * p.W + u32(iw)] * M[P[2] + ((o * Cg + cg) * p.KH + kh) * p.KW + kw];
            }
        }
    }
    M[P[3] + i] = s;
}
"#;

/// `P[1] = dy, P[2] = w, P[3] = dx`: dx[n, c, ih, iw] = sum over o in c's group and the
/// (kh, kw) that reach (ih, iw) of dy[n, o, oh, ow] * w[o, c % Cg, kh, kw].
const CONV2D_GRAD_INPUT: &str = r#"
fn body(i: u32) {
    let p = conv();
    let iw = i % p.W; let ih = (i / p.W) % p.H; let c = (i / (p.W * p.H)) % p.C; let n = i / (p.W * p.H * p.C);
    let Cg = p.C / p.G; let Og = p.O / p.G; let g = c / Cg; let cg = c % Cg;
    var s = 0.0;
    for (var og = 0u; og < Og; og++) {
        let o = g * Og + og;
        for (var kh = 0u; kh < p.KH; kh++) {
            let th = i32(ih + p.pt) - i32(kh * p.dh);
            if (th < 0 || u32(th) % p.sh != 0u) { continue; }
            let oh = u32(th) / p.sh;
            if (oh >= p.OH) { continue; }
            for (var kw = 0u; kw < p.KW; kw++) {
                let tw = i32(iw + p.pl) - i32(kw * p.dw);
                if (tw < 0 || u32(tw) % p.sw != 0u) { continue; }
                let ow = u32(tw) / p.sw;
                if (ow >= p.OW) { continue; }
                s += M[P[1] + ((n * p.O + o) * p.OH + oh) * p.OW + ow] * M[P[2] + ((o * Cg + cg) * p.KH + kh) * p.KW + kw];
            }
        }
    }
    M[P[3] + i] = s;
}
"#;

/// `P[1] = dy, P[2] = x, P[3] = dw`: dw[o, cg, kh, kw] = sum over n, oh, ow of
/// dy[n, o, oh, ow] * x[n, c, ih, iw]; `P[20]` is the first output channel (row) computed, 0 but
/// for `Conv2dGradWeightRows`, whose `dw` holds rows `P[20]..` of the full gradient.
const CONV2D_GRAD_WEIGHT: &str = r#"
fn body(i: u32) {
    let p = conv();
    let Cg = p.C / p.G; let Og = p.O / p.G;
    let kw = i % p.KW; let kh = (i / p.KW) % p.KH; let cg = (i / (p.KW * p.KH)) % Cg; let o = i / (p.KW * p.KH * Cg) + P[20];
    let c = (o / Og) * Cg + cg;
    var s = 0.0;
    for (var n = 0u; n < p.N; n++) {
        for (var oh = 0u; oh < p.OH; oh++) {
            let ih = i32(oh * p.sh + kh * p.dh) - i32(p.pt);
            if (ih < 0 || ih >= i32(p.H)) { continue; }
            for (var ow = 0u; ow < p.OW; ow++) {
                let iw = i32(ow * p.sw + kw * p.dw) - i32(p.pl);
                if (iw < 0 || iw >= i32(p.W)) { continue; }
                s += M[P[1] + ((n * p.O + o) * p.OH + oh) * p.OW + ow] * M[P[2] + ((n * p.C + c) * p.H + u32(ih)) * p.W + u32(iw)];
            }
        }
    }
    M[P[3] + i] = s;
}
"#;

/// Pooling windows: `P = [n, t1, t2, out, H, W, OH, OW, KH, KW, sh, sw, pt, pl, include_pad]`
/// (`H, W` of the input, `OH, OW` of the output). A window's in-bounds rows are `lo..hi` as the
/// reference's `Window::new` clips them; `arg_max` is the reference's `window_max` (the first
/// maximum in window order, NaN winning), `divisor` its `avg_divisor`.
const POOL_WINDOW: &str = r#"
fn lo_hi(o: u32, stride: u32, k: u32, pad: u32, len: u32) -> vec2<u32> {
    let start = o * stride;
    let lo = min(select(0u, start - pad, start > pad), len);
    let end = start + k;
    let hi = min(select(0u, end - pad, end > pad), len);
    return vec2<u32>(lo, max(hi, lo));
}
fn arg_max(plane: u32, oh: u32, ow: u32) -> u32 {
    let W = P[5];
    let r = lo_hi(oh, P[10], P[8], P[12], P[4]);
    let c = lo_hi(ow, P[11], P[9], P[13], W);
    var best = 0.0; var arg = NONE;
    for (var y = r.x; y < r.y; y++) {
        for (var x = c.x; x < c.y; x++) {
            let v = M[plane + y * W + x];
            if (arg == NONE || v > best || is_nan(v)) { best = v; arg = y * W + x; }
        }
    }
    return arg;
}
// The outputs whose window (stride s, size k, padding pad) may hold input row (or column) i,
// `lo..hi` of `len`: the gradients walk these only, not every output of the plane.
fn reaching(i: u32, s: u32, k: u32, pad: u32, len: u32) -> vec2<u32> {
    let t = i + pad;
    var lo = 0u;
    if (t >= k) { lo = (t - k) / s + 1u; }
    let hi = min(len, t / s + 1u);
    return vec2<u32>(min(lo, hi), hi);
}
fn divisor(oh: u32, ow: u32) -> u32 {
    if (P[14] != 0u) { return P[8] * P[9]; }
    let r = lo_hi(oh, P[10], P[8], P[12], P[4]);
    let c = lo_hi(ow, P[11], P[9], P[13], P[5]);
    return (r.y - r.x) * (c.y - c.x);
}
// The gradients' walk (`P[1] = dy`): for input element i, the sum over the windows that hold it,
// in window order as the reference adds them, of the window's dy where the window's maximum is
// i (`of_max`, `P[2] = x`), else of dy / divisor (a window with divisor 0 adds nothing).
fn window_grad(i: u32, of_max: bool) -> f32 {
    let H = P[4]; let W = P[5]; let OH = P[6]; let OW = P[7];
    let j = i % (H * W); let p = i / (H * W);
    let ih = j / W; let iw = j % W;
    var s = 0.0;
    let rows = reaching(ih, P[10], P[8], P[12], OH);
    for (var oh = rows.x; oh < rows.y; oh++) {
        let r = lo_hi(oh, P[10], P[8], P[12], H);
        if (ih < r.x || ih >= r.y) { continue; }
        let cols = reaching(iw, P[11], P[9], P[13], OW);
        for (var ow = cols.x; ow < cols.y; ow++) {
            let c = lo_hi(ow, P[11], P[9], P[13], W);
            if (iw < c.x || iw >= c.y) { continue; }
            if (of_max) {
                if (arg_max(P[2] + p * H * W, oh, ow) == j) { s += M[P[1] + (p * OH + oh) * OW + ow]; }
            } else {
                let d = divisor(oh, ow);
                if (d != 0u) { s += M[P[1] + (p * OH + oh) * OW + ow] / f32(d); }
            }
        }
    }
    return s;
}
"#;

/// `P[1] = x, P[3] = y`; a window entirely in the padding gives -inf.
const MAX_POOL: &str = r#"
fn body(i: u32) {
    let H = P[4]; let W = P[5]; let OH = P[6]; let OW = P[7];
    let plane = P[1] + (i / (OW * OH)) * H * W;
    let arg = arg_max(plane, (i / OW) % OH, i % OW);
    M[P[3] + i] = select(M[plane + arg], bitcast<f32>(0xff800000u), arg == NONE);
}
"#;

/// `P[1] = dy, P[2] = x, P[3] = dx`: dx[plane, ih, iw] = sum of dy over the windows whose
/// maximum is (ih, iw), in window order as the reference adds them.
const MAX_POOL_GRAD: &str = r#"
fn body(i: u32) {
    M[P[3] + i] = window_grad(i, true);
}
"#;

/// `P[1] = x, P[3] = y`; a window with divisor 0 averages to 0.
const AVG_POOL: &str = r#"
fn body(i: u32) {
    let H = P[4]; let W = P[5]; let OH = P[6]; let OW = P[7];
    let ow = i % OW; let oh = (i / OW) % OH; let plane = P[1] + (i / (OW * OH)) * H * W;
    let r = lo_hi(oh, P[10], P[8], P[12], H);
    let c = lo_hi(ow, P[11], P[9], P[13], W);
    let d = divisor(oh, ow);
    var s = 0.0;
    for (var y = r.x; y < r.y; y++) {
        for (var x = c.x; x < c.y; x++) { s += M[plane + y * W + x]; }
    }
    M[P[3] + i] = select(s / f32(d), 0.0, d == 0u);
}
"#;

/// `P[1] = dy, P[3] = dx`: dx[plane, ih, iw] = sum over the windows holding (ih, iw) of
/// dy / divisor.
const AVG_POOL_GRAD: &str = r#"
fn body(i: u32) {
    M[P[3] + i] = window_grad(i, false);
}
"#;

/// `P = [N*C*plane, dy, dx, plane]`.
const GLOBAL_AVG_POOL_GRAD: &str = r#"
fn body(i: u32) {
    M[P[2] + i] = M[P[1] + i / P[3]] / f32(P[3]);
}
"#;

/// Shared by the cross-entropy kernels: the largest logit of row `n` of `[B, C]` logits at `lg`.
const ROW_MAX: &str = r#"
fn row_max(lg: u32, n: u32, C: u32) -> f32 {
    var m = bitcast<f32>(0xff800000u);
    for (var c = 0u; c < C; c++) { let v = M[lg + n * C + c]; if (v > m) { m = v; } }
    return m;
}
"#;

/// The loss of one position (row `p` of `[positions, C]` logits): `log(sum(exp(logit))) -
/// logit[label]`, the sum shifted by the row's largest logit. Shared by the three loss kernels
/// whose `P` has the logits at word 1, the labels at word 2 and `C` at word 5
/// (`SOFTMAX_CROSS_ENTROPY`, `families.rs`'s `CROSS_ENTROPY` and `wide.rs`'s
/// `CROSS_ENTROPY_PARTIAL`), after `ROW_MAX`; it reads the labels with `HEADER`'s `label`.
const POSITION_LOSS: &str = r#"
fn position_loss(p: u32) -> f32 {
    let lg = P[1]; let C = P[5];
    let m = row_max(lg, p, C);
    var s = 0.0;
    for (var c = 0u; c < C; c++) { s += exp(M[lg + p * C + c] - m); }
    return m + log(s) - M[lg + p * C + label(P[2], p)];
}
"#;

/// `P = [B, logits, labels, loss, B, C, 0]`: one thread per row, the per-sample losses (the mean
/// runs `wide.rs`'s `CROSS_ENTROPY_PARTIAL` and `SUM_PARTIALS`).
const SOFTMAX_CROSS_ENTROPY: &str = r#"
fn body(i: u32) {
    M[P[3] + i] = position_loss(i);
}
"#;

/// The gradient of one position's loss times `w` (row `p` of `[positions, C]` dlogits):
/// `(softmax(logits) - onehot(label)) * w`, the exponentials shifted by the row's largest logit
/// and summed in order. Shared by the two gradient kernels whose `P` has the logits at word 2,
/// the labels at word 3, the dlogits at word 4 and `C` at word 6 (`SOFTMAX_CROSS_ENTROPY_GRAD`
/// and `families.rs`'s `CROSS_ENTROPY_GRAD`), after `ROW_MAX`.
const POSITION_LOSS_GRAD: &str = r#"
fn position_loss_grad(p: u32, w: f32) {
    let lg = P[2]; let dst = P[4]; let C = P[6];
    let m = row_max(lg, p, C);
    var s = 0.0;
    for (var c = 0u; c < C; c++) { let e = exp(M[lg + p * C + c] - m); M[dst + p * C + c] = e; s += e; }
    for (var c = 0u; c < C; c++) { M[dst + p * C + c] = M[dst + p * C + c] / s * w; }
    let l = label(P[3], p);
    M[dst + p * C + l] = M[dst + p * C + l] - w;
}
"#;

/// `P = [B, dloss, logits, labels, dlogits, B, C, mean]`, one thread per row.
const SOFTMAX_CROSS_ENTROPY_GRAD: &str = r#"
fn body(n: u32) {
    var w = M[P[1] + n];
    if (P[7] != 0u) { w = M[P[1]] / f32(P[5]); }
    position_loss_grad(n, w);
}
"#;

/// `P = [n, grad, lr, step, scale, param, buffer, momentum, dampening, nesterov, weight_decay,
/// flag]`: one thread per element, after `FINITE_CHECK` (nothing moves when it found a
/// non-finite gradient element or scale).
const SGD: &str = r#"
fn body(j: u32) {
    if (skipped(11u)) { return; }
    let scale = read_scale();
    let lr = M[P[2]]; let first = M[P[3]] <= 1.0;
    let momentum = pf(7); let dampening = pf(8); let wd = pf(10);
    var g = M[P[1] + j] * scale;
    if (wd != 0.0) { g += wd * M[P[5] + j]; }
    if (P[6] != NONE) {
        var b = g;
        if (!first) { b = momentum * M[P[6] + j] + (1.0 - dampening) * g; }
        M[P[6] + j] = b;
        if (P[9] != 0u) { g = g + momentum * b; } else { g = b; }
    }
    M[P[5] + j] = M[P[5] + j] - lr * g;
}
"#;

/// `P = [n, grad, lr, step, scale, param, exp_avg, exp_avg_sq, beta1, beta2, eps, wd, decoupled,
/// flag]`: one thread per element, after `FINITE_CHECK` (as SGD).
/// `beta^step` by repeated squaring for whole steps: WGSL's `pow` is `exp2(y * log2(x))`, whose
/// error on `1 - 0.999^1` would exceed the 1e-4 the backend promises.
const ADAM: &str = r#"
fn powi(b: f32, e: f32) -> f32 {
    if (e < 0.0 || e > 16777216.0 || e != floor(e)) { return pow(b, e); }
    var r = 1.0; var x = b; var k = u32(e);
    loop {
        if (k == 0u) { break; }
        if ((k & 1u) != 0u) { r = r * x; }
        x = x * x; k = k >> 1u;
    }
    return r;
}
fn body(j: u32) {
    if (skipped(13u)) { return; }
    let scale = read_scale();
    let lr = M[P[2]]; let step = M[P[3]];
    let b1 = pf(8); let b2 = pf(9); let eps = pf(10); let wd = pf(11);
    let step_size = lr / (1.0 - powi(b1, step));
    let bc2 = sqrt(1.0 - powi(b2, step));
    let decay = 1.0 - lr * wd;
    var g = M[P[1] + j] * scale;
    if (wd != 0.0) {
        if (P[12] != 0u) { M[P[5] + j] = M[P[5] + j] * decay; } else { g += wd * M[P[5] + j]; }
    }
    let m = b1 * M[P[6] + j] + (1.0 - b1) * g;
    let v = b2 * M[P[7] + j] + (1.0 - b2) * g * g;
    M[P[6] + j] = m;
    M[P[7] + j] = v;
    M[P[5] + j] = M[P[5] + j] - step_size * m / (sqrt(v) / bc2 + eps);
}
"#;

/// `P = [n, x, flag, _, scale]` (memory as atomic words, `typed.rs`'s header): one thread per
/// element of `x`, any number of workgroups; a thread whose element (or, for thread 0, the
/// scale, a tensor or NONE) is not finite sets the flag word. The flag is 0 before (every user
/// clears it after reading) and the dispatches after this one read it.
const FINITE_CHECK: &str = r#"
fn finite_bits(x: u32) -> bool { return (x & 0x7f800000u) != 0x7f800000u; }
fn body(i: u32) {
    var ok = finite_bits(atomicLoad(&M[P[1] + i]));
    if (i == 0u && P[4] != NONE) { ok = ok && finite_bits(atomicLoad(&M[P[4]])); }
    if (!ok) { atomicOr(&M[P[2]], 1u); }
}
"#;

/// `P = [1, flag, count]`: one thread, after `FINITE_CHECK`: counts a non-finite tensor and
/// clears the flag.
const COUNT_NON_FINITE: &str = r#"
fn body(i: u32) {
    if (bitcast<u32>(M[P[1]]) != 0u) { M[P[2]] = M[P[2]] + 1.0; }
    M[P[1]] = 0.0;
}
"#;

/// `P = [n, y, value]`.
const FILL: &str = r#"
fn body(i: u32) { M[P[1] + i] = pf(2); }
"#;

/// `P = [n, g, acc]`.
const ACCUMULATE_GRAD: &str = r#"
fn body(i: u32) { M[P[2] + i] = M[P[2] + i] + M[P[1] + i]; }
"#;

/// `P = [words, v, bits, n, clip, lo, hi]`, one thread per 32-bit word of the mask: element `i`
/// is bit `i % 8` of byte `i / 8`, which is bit `i % 32` of little-endian word `i / 32`. The last
/// word's bits past `n` are 0, and its bytes past the mask's `ceil(n / 8)` belong to no other
/// tensor (arena offsets are 8-byte aligned).
const MASK_PACK: &str = r#"
fn body(w: u32) {
    var bits = 0u;
    for (var k = 0u; k < 32u; k++) {
        let i = w * 32u + k;
        if (i >= P[3]) { break; }
        let x = M[P[1] + i];
        var keep = x > 0.0;
        if (P[4] != 0u) { keep = pf(5) < x && x < pf(6); }
        if (keep) { bits = bits | (1u << k); }
    }
    M[P[2] + w] = bitcast<f32>(bits);
}
"#;

/// `P = [n, dy, bits, dx]`: `dx = dy` where the element's bit is set, else 0.
const MASK_GRAD: &str = r#"
fn body(i: u32) {
    let bit = (bitcast<u32>(M[P[2] + i / 32u]) >> (i % 32u)) & 1u;
    M[P[3] + i] = select(0.0, M[P[1] + i], bit == 1u);
}
"#;

/// BatchNorm parameters shared by its four kernels: `P[1..=8]` are tensors (which ones depends on
/// the kernel), then `P = [.., N, C, inner, eps, momentum, frozen]` at 9..=14 (`x` is
/// `[N, C, inner...]`). `frozen` means the statistics tensors are `running_mean` and
/// `running_var` (so `invstd = 1 / sqrt(var + eps)`), else `saved_mean` and `saved_invstd`.
/// Channel `c` of sample `n` is the run of `inner` words at `(n * C + c) * inner`.
const BN_PARAMS: &str = r#"
struct Bn { N: u32, C: u32, inner: u32, eps: f32, momentum: f32, frozen: bool }
fn bn() -> Bn { return Bn(P[9], P[10], P[11], pf(12), pf(13), P[14] != 0u); }
fn bn_invstd(p: Bn, s: f32) -> f32 {
    if (p.frozen) { return 1.0 / sqrt(s + p.eps); }
    return s;
}
/// A channel's statistics from its `count` elements' mean and sum of squared deviations: the
/// saved mean and inverse standard deviation, and the running mean and (unbiased) variance.
fn bn_store_stats(p: Bn, c: u32, mean: f32, squares: f32, count: u32) {
    let var_ = squares / f32(count);
    M[P[2] + c] = mean;
    M[P[3] + c] = 1.0 / sqrt(var_ + p.eps);
    var unbiased = var_;
    if (count > 1u) { unbiased = squares / f32(count - 1u); }
    M[P[4] + c] = (1.0 - p.momentum) * M[P[4] + c] + p.momentum * mean;
    M[P[5] + c] = (1.0 - p.momentum) * M[P[5] + c] + p.momentum * unbiased;
}
"#;

/// Training statistics, one workgroup per channel ([`CHANNEL`]): `P[1] = x, P[2] = saved_mean,
/// P[3] = saved_invstd, P[4] = running_mean, P[5] = running_var`. Sums run as the reference's:
/// each sample's run summed in order (one thread per sample, so a channel's samples are summed at
/// once), then the runs added in order (thread 0); two passes (mean, then squared deviations).
const BATCH_NORM_STATS: &str = r#"
/// Sample `n`'s run of channel `c`: the sum of `x` (`mean` NaN) or of `(x - mean)^2`.
fn run_sum(p: Bn, c: u32, n: u32, mean: f32, squares: bool) -> f32 {
    let base = P[1] + (n * p.C + c) * p.inner;
    var run = 0.0;
    for (var j = 0u; j < p.inner; j++) {
        if (squares) { let d = M[base + j] - mean; run += d * d; } else { run += M[base + j]; }
    }
    return run;
}
/// The runs of every sample added in sample order, agreed by the workgroup.
fn channel_total(p: Bn, c: u32, li: u32, mean: f32, squares: bool) -> f32 {
    var total = 0.0;
    for (var first = 0u; first < p.N; first += 256u) {
        var run = 0.0;
        if (first + li < p.N) { run = run_sum(p, c, first + li, mean, squares); }
        partial[li] = run;
        workgroupBarrier();
        if (li == 0u) {
            for (var k = 0u; k < min(256u, p.N - first); k++) { total += partial[k]; }
            partial[256u] = total;
        }
        workgroupBarrier();
        total = partial[256u];
        workgroupBarrier();
    }
    return total;
}
fn body(c: u32, li: u32) {
    let p = bn();
    let count = p.N * p.inner;
    let m = f32(count);
    let mean = channel_total(p, c, li, 0.0, false) / m;
    let squares = channel_total(p, c, li, mean, true);
    if (li != 0u) { return; }
    bn_store_stats(p, c, mean, squares, count);
}
"#;

/// Normalisation, one thread per element: `P[1] = x, P[2] = gamma, P[3] = beta, P[4] = mean,
/// P[5] = saved_invstd or running_var, P[6] = y`, then the activation `P[15..18]` (`activate`'s
/// kind, lo, hi: 0 for none, `BatchNormTrainAct`'s ReLU or clip otherwise).
const BATCH_NORM_APPLY: &str = r#"
fn body(i: u32) {
    let p = bn();
    let c = (i / p.inner) % p.C;
    let scale = M[P[2] + c] * bn_invstd(p, M[P[5] + c]);
    M[P[6] + i] = activate((M[P[1] + i] - M[P[4] + c]) * scale + M[P[3] + c], P[15], pf(16), pf(17));
}
"#;

/// Per-channel gradient sums, one thread per channel: `P[1] = dy, P[2] = x, P[3] = mean, P[4] =
/// invstd or running_var, P[5] = dgamma (sum of dy * xhat), P[6] = dbeta (sum of dy)`, one running
/// sum over the runs in order as the reference's `channel_sums` (a parallel sum in another order
/// moved zoo:mobilenetv2's losses 2% from the CPU's within 3 steps of `tests/wgpu.rs`).
const BATCH_NORM_GRAD_SUMS: &str = r#"
fn body(c: u32) {
    let p = bn();
    let mean = M[P[3] + c];
    let invstd = bn_invstd(p, M[P[4] + c]);
    var sum_dy = 0.0; var sum_dy_xhat = 0.0;
    for (var n = 0u; n < p.N; n++) {
        let base = (n * p.C + c) * p.inner;
        for (var j = 0u; j < p.inner; j++) {
            let g = M[P[1] + base + j];
            sum_dy += g;
            sum_dy_xhat += g * (M[P[2] + base + j] - mean) * invstd;
        }
    }
    M[P[5] + c] = sum_dy_xhat;
    M[P[6] + c] = sum_dy;
}
"#;

/// The input gradient, one thread per element, after [`BATCH_NORM_GRAD_SUMS`]: `P[1] = dy, P[2] =
/// x, P[3] = mean, P[4] = invstd or running_var, P[5] = dgamma, P[6] = dbeta, P[7] = gamma, P[8] =
/// dx`. Training: `gamma * invstd / M * (M * dy - sum(dy) - xhat * sum(dy * xhat))`; frozen:
/// `dy * gamma * invstd`.
const BATCH_NORM_GRAD_INPUT: &str = r#"
fn body(i: u32) {
    let p = bn();
    let c = (i / p.inner) % p.C;
    let invstd = bn_invstd(p, M[P[4] + c]);
    let g = M[P[1] + i];
    if (p.frozen) {
        M[P[8] + i] = g * (M[P[7] + c] * invstd);
        return;
    }
    let m = f32(p.N * p.inner);
    let scale = M[P[7] + c] * invstd / m;
    let xhat = (M[P[2] + i] - M[P[3] + c]) * invstd;
    M[P[8] + i] = scale * (m * g - M[P[6] + c] - xhat * M[P[5] + c]);
}
"#;
/// Refuses a loss whose rows of `classes` logits one thread could not walk (its gradient loops
/// over a row four times).
pub(super) fn classes_fit(node: &Node, classes: u64, at: &Addresses<'_>) -> Result<(), String> {
    let iterations = 4 * classes + 8;
    if iterations > at.loop_limit {
        return Err(wide::too_long(node, "a row of classes", classes, iterations));
    }
    Ok(())
}

/// The epilogue's `P` words of a fused op's activation: kind (0 none, 1 ReLU, 2 clip), lo, hi.
fn activation_params(act: &crate::ops::Activation) -> (u32, f32, f32) {
    match act {
        crate::ops::Activation::Identity => (0, 0.0, 0.0),
        crate::ops::Activation::Relu => (1, 0.0, 0.0),
        crate::ops::Activation::Clip(c) => (2, c.min, c.max),
    }
}

/// `FINITE_CHECK` over `n` words at `x` (and the scale word, or NONE) into the flag word.
fn finite_check(n: u32, x: u32, scale: u32, flag: u32) -> Lowered {
    Lowered { kernel: Kernel::FiniteCheck, params: alloc::vec![n, x, flag, 0, scale] }
}

/// An optimizer update as three dispatches, each as wide as the parameter: the finite check of
/// the gradient and scale, the update (which reads the flag), and the flag cleared for the next
/// user (a one-thread Fill).
fn checked(n: u32, grad: u32, scale: u32, update: Lowered, flag: u32) -> Vec<Lowered> {
    alloc::vec![finite_check(n, grad, scale, flag), update, Lowered { kernel: Kernel::Fill, params: alloc::vec![1, flag, 0] }]
}

/// One node lowered: the kernel and its parameter block.
pub struct Lowered {
    pub kernel: Kernel,
    pub params: Vec<u32>,
}

/// Where each tensor is in device memory, in 4-byte words.
pub struct Addresses<'a> {
    pub plan: &'a Plan,
    /// Byte offset of the weight section in device memory.
    pub weights_at: u64,
    /// The most loop iterations one invocation may run on this device: [`wide::LOOP_LIMIT`] on
    /// a software Vulkan (lavapipe) and where no device is known (the compiler's placement), no
    /// limit on a hardware GPU. A node that would loop longer is refused; kernels choose their
    /// algorithm from [`wide::LOOP_LIMIT`] alone, so every device computes the same sums.
    pub loop_limit: u64,
}

impl Addresses<'_> {
    pub fn word(&self, t: TensorId) -> u32 {
        (self.byte(t) / 4) as u32
    }

    /// The flag word the optimizer's finite check sets (`FINITE_CHECK`): the word after the
    /// weight section, which the backend allocates with the memory. Zero between nodes.
    pub fn flag(&self) -> u32 {
        (self.weights_at + self.plan.weight_bytes).div_ceil(4) as u32
    }

    /// The first of the scratch words after the flag word, where split reductions leave their
    /// partial sums between two dispatches (`wide.rs`); the backend allocates as many as the
    /// plan's dispatches need (`wide::scratch_words`).
    pub fn scratch(&self) -> u32 {
        self.flag() + 1
    }

    /// The tensor's first byte in device memory.
    pub fn byte(&self, t: TensorId) -> u64 {
        match self.plan.tensor(t).location {
            Location::Arena { offset } => offset,
            Location::Weights { offset } => self.weights_at + offset,
        }
    }

    /// Where the tensor's first element is, in its own elements: words for f32 and for `i64`
    /// (held as `i32`, see `mod.rs`), bytes for bool, u8 and int8.
    pub fn elem(&self, t: TensorId) -> i64 {
        let w = self.word(t) as i64;
        match self.plan.tensor(t).dtype {
            DType::Bool | DType::U8 | DType::I8 => w * 4,
            _ => w,
        }
    }
}

/// Lowers one node to the dispatches that run it, in order (usually one; none for a Reshape whose
/// output aliases its input; two for the BatchNorm ops, a per-channel pass then a per-element
/// one), or says why it has no GPU kernel.
pub fn lower(node: &Node, at: &Addresses<'_>) -> Result<Vec<Lowered>, String> {
    let plan = at.plan;
    let shape = |t: TensorId| plan.tensor(t).shape.as_slice();
    let numel = |t: TensorId| plan.tensor(t).numel() as u32;
    let i = |k: usize| at.word(node.inputs[k]);
    let o = |k: usize| at.word(node.outputs[k]);
    let no_kernel =
        || Err(alloc::format!("op {} (node '{}') has no GPU kernel yet; train this plan with --backend cpu", node.op.name(), node.name));
    if let Some(lowered) = super::typed::lower(node, at) {
        return lowered;
    }
    if let Some(lowered) = super::quant::lower(node, at) {
        return lowered;
    }
    for &t in node.inputs.iter().chain(&node.outputs) {
        let d = plan.tensor(t).dtype;
        let allowed = d == DType::F32
            || (d == DType::I64 && matches!(node.op, Op::Loss(_) | Op::Random(_)))
            || (d == DType::U8 && matches!(node.op, Op::Mask(_) | Op::Conv(ConvOp::Conv2dGradInputMasked { .. })));
        if !allowed {
            return no_kernel();
        }
    }
    if let Some(lowered) = families::lower(node, at) {
        return lowered;
    }
    let elementwise = |kind: u32, a: u32, b: u32, y: u32, lo: f32, hi: f32| Lowered {
        kernel: Kernel::Elementwise,
        params: alloc::vec![numel(node.outputs[0]), kind, a, b, y, lo.to_bits(), hi.to_bits()],
    };
    // MATMUL_TILED's words (`families.rs`): threads, a, b, y, rows, columns, depth, transposes,
    // no batch axes, then the epilogue at 28-31 (none: NONE for the bias).
    let matmul_params = |m: &crate::ops::MatMul| {
        let (a, y) = (shape(node.inputs[0]), shape(node.outputs[0]));
        let k = if m.trans_a { a[0] } else { a[1] };
        let threads = families::tiled_threads(1, y[0], y[1]);
        let mut p = alloc::vec![threads, i(0), i(1), o(0), y[0] as u32, y[1] as u32, k as u32, m.trans_a as u32, m.trans_b as u32];
        p.resize(32, 0);
        p[28] = NONE;
        p
    };
    let conv_params = |c: &Conv2d, x: &[usize], w_shape: &[usize], y: &[usize], threads: u32, t: [u32; 3]| {
        let u = |v: usize| v as u32;
        alloc::vec![
            threads,
            t[0],
            t[1],
            t[2],
            u(x[0]),
            u(x[1]),
            u(x[2]),
            u(x[3]),
            u(w_shape[0]),
            u(y[2]),
            u(y[3]),
            u(w_shape[2]),
            u(w_shape[3]),
            u(c.stride[0]),
            u(c.stride[1]),
            u(c.padding[0]),
            u(c.padding[1]),
            u(c.dilation[0]),
            u(c.dilation[1]),
            u(c.groups),
            0
        ]
    };
    let pool_params = |p: &crate::ops::Pool2d, x: &[usize], y: &[usize], threads: u32, t: [u32; 3]| {
        let u = |v: usize| v as u32;
        alloc::vec![
            threads,
            t[0],
            t[1],
            t[2],
            u(x[2]),
            u(x[3]),
            u(y[2]),
            u(y[3]),
            u(p.kernel[0]),
            u(p.kernel[1]),
            u(p.stride[0]),
            u(p.stride[1]),
            u(p.padding[0]),
            u(p.padding[1]),
            p.count_include_pad as u32
        ]
    };
    // Row-restricted updates write the rows `start..` of the parameter: its base moves by that
    // many rows (the gradient and the optimizer state have the gradient's shape).
    let param = match &node.op {
        Op::Optim(OptimOp::SgdUpdateRows { rows, .. } | OptimOp::AdamUpdateRows { rows, .. }) => {
            let p = plan.tensor(node.outputs[0]);
            o(0) + (rows.start * (p.numel() / rows.param_rows.max(1))) as u32
        }
        _ => o(0),
    };
    let lowered = match &node.op {
        Op::Dense(d) => match d {
            DenseOp::Relu => elementwise(0, i(0), NONE, o(0), 0.0, 0.0),
            DenseOp::ReluGrad => elementwise(1, i(0), i(1), o(0), 0.0, 0.0),
            DenseOp::Add => elementwise(2, i(0), i(1), o(0), 0.0, 0.0),
            DenseOp::Mul => elementwise(3, i(0), i(1), o(0), 0.0, 0.0),
            DenseOp::Clip(c) => elementwise(4, i(0), NONE, o(0), c.min, c.max),
            DenseOp::ClipGrad(c) => elementwise(5, i(0), i(1), o(0), c.min, c.max),
            DenseOp::Reshape { .. } => {
                if plan.tensor(node.inputs[0]).location == plan.tensor(node.outputs[0]).location {
                    return Ok(Vec::new());
                }
                elementwise(6, i(0), NONE, o(0), 0.0, 0.0)
            }
            DenseOp::BiasAdd => {
                let x = shape(node.inputs[0]);
                let inner: usize = x[2..].iter().product();
                Lowered {
                    kernel: Kernel::BiasAdd,
                    params: alloc::vec![numel(node.outputs[0]), i(0), i(1), o(0), x[1] as u32, inner as u32],
                }
            }
            DenseOp::BiasGrad => {
                // One thread sums a channel in the reference's order while its loops fit; else
                // the sum over every axis but the channels' runs on workgroups (`wide.rs`).
                let dy = shape(node.inputs[0]);
                let inner: usize = dy[2..].iter().product();
                if (dy[0] * (inner + 1)) as u64 + 8 > wide::LOOP_LIMIT {
                    let reduced: Vec<usize> = (0..dy.len()).filter(|&k| k != 1).collect();
                    return families::groups(node, 0, dy, &reduced, [i(0), o(0), NONE, NONE], 1.0, at);
                }
                let c = dy[1] as u32;
                Lowered { kernel: Kernel::BiasGrad, params: alloc::vec![c, i(0), o(0), c, inner as u32, dy[0] as u32] }
            }
            DenseOp::MatMulBiasAct { mm, act } => {
                let mut params = matmul_params(mm);
                let (kind, lo, hi) = activation_params(act);
                params[28..32].copy_from_slice(&[i(2), kind, lo.to_bits(), hi.to_bits()]);
                Lowered { kernel: Kernel::MatMul, params }
            }
            DenseOp::MatMul(m) => Lowered { kernel: Kernel::MatMul, params: matmul_params(m) },
        },
        Op::Conv(op) => {
            // Every convolution kernel takes the forward's geometry: the shapes of x, w and y,
            // whichever of the node's tensors hold them (a row slice of the weight gradient
            // describes the whole weight).
            let (dw, dy) = (shape(node.outputs[0]), shape(node.inputs[0]));
            let full_weight;
            let (conv, x, w, y) = match op {
                ConvOp::Conv2d(c) | ConvOp::Conv2dBiasAct { conv: c, .. } => (c, shape(node.inputs[0]), shape(node.inputs[1]), dw),
                ConvOp::Conv2dGradInput { conv, .. } | ConvOp::Conv2dGradInputMasked { conv, .. } => (conv, dw, shape(node.inputs[1]), dy),
                ConvOp::Conv2dGradWeight { conv, .. } => (conv, shape(node.inputs[1]), dw, dy),
                ConvOp::Conv2dGradWeightRows { conv, .. } => {
                    full_weight = [dy[1], dw[1], dw[2], dw[3]];
                    (conv, shape(node.inputs[1]), &full_weight[..], dy)
                }
            };
            let mut params = conv_params(conv, x, w, y, numel(node.outputs[0]), [i(0), i(1), o(0)]);
            let kernel = match op {
                ConvOp::Conv2d(_) => Kernel::Conv2d,
                ConvOp::Conv2dGradInput { .. } => Kernel::Conv2dGradInput,
                ConvOp::Conv2dGradWeight { .. } => Kernel::Conv2dGradWeight,
                ConvOp::Conv2dGradWeightRows { rows, .. } => {
                    params[20] = rows[0] as u32;
                    Kernel::Conv2dGradWeight
                }
                ConvOp::Conv2dBiasAct { act, .. } => {
                    let (kind, lo, hi) = activation_params(act);
                    // Word 20 (the weight gradient's first row, 0 here) holds the bias.
                    params[20] = i(2);
                    params.extend([kind, lo.to_bits(), hi.to_bits()]);
                    Kernel::Conv2dBiasAct
                }
                ConvOp::Conv2dGradInputMasked { .. } => {
                    // Word 20 (the weight gradient's first row, 0 here) holds the mask bits.
                    params[20] = i(2);
                    Kernel::Conv2dGradInputMasked
                }
            };
            let direct = Lowered { kernel, params };
            // Implicit GEMM (`conv_gemm.rs`) for all but depthwise-like convolutions.
            let (channels, groups) = (direct.params[5] as usize, direct.params[19] as usize);
            if !conv_gemm::applies(channels, groups) {
                // The direct forward and input gradient loop over a group's channels and taps.
                let (cg, og) = (channels / groups.max(1), w[0] / groups.max(1));
                let taps = (w[2] * (w[3] + 1)) as u64;
                let iterations = (cg.max(og) as u64) * (taps + 1) + 8;
                if kernel != Kernel::Conv2dGradWeight && iterations > at.loop_limit {
                    return Err(wide::too_long(
                        node,
                        "a group's channels times the kernel's taps",
                        (cg.max(og) * w[2] * w[3]) as u64,
                        iterations,
                    ));
                }
                // The direct weight gradient sums N * OH * OW positions: in one thread, in the
                // reference's order, where that fits; else one workgroup per weight element.
                let positions = (y[0] * y[2] * y[3]) as u64;
                if kernel == Kernel::Conv2dGradWeight && positions + (y[0] * y[2]) as u64 + 8 > wide::LOOP_LIMIT {
                    let iterations = positions.div_ceil(256) + 64;
                    if iterations > at.loop_limit {
                        return Err(wide::too_long(node, "the N * OH * OW positions of a weight gradient", positions, iterations));
                    }
                    Lowered { kernel: Kernel::Conv2dGradWeightWide, params: direct.params }
                } else {
                    direct
                }
            } else {
                let (kernel, rows) = match op {
                    ConvOp::Conv2d(_) => (Kernel::ConvGemm, None),
                    ConvOp::Conv2dBiasAct { .. } => (Kernel::ConvGemmBiasAct, None),
                    ConvOp::Conv2dGradInput { .. } => (Kernel::ConvGemmGradInput, None),
                    ConvOp::Conv2dGradInputMasked { .. } => (Kernel::ConvGemmGradInputMasked, None),
                    ConvOp::Conv2dGradWeight { .. } => (Kernel::ConvGemmGradWeight, None),
                    ConvOp::Conv2dGradWeightRows { rows, .. } => (Kernel::ConvGemmGradWeight, Some(*rows)),
                };
                conv_gemm::tile(direct, kernel, rows)
            }
        }
        Op::Pool(PoolOp::MaxPool2d(p) | PoolOp::AvgPool2d(p) | PoolOp::MaxPool2dGrad(p) | PoolOp::AvgPool2dGrad { pool: p, .. })
            if pool_iterations(p) > at.loop_limit =>
        {
            return Err(wide::too_long(node, "the windows of a pooling", (p.kernel[0] * p.kernel[1]) as u64, pool_iterations(p)));
        }
        Op::Pool(p) => match p {
            PoolOp::GlobalAvgPool => {
                let x = shape(node.inputs[0]);
                return families::groups(node, 1, x, &[2, 3], [i(0), o(0), NONE, NONE], 1.0, at);
            }
            PoolOp::GlobalAvgPoolGrad { input_hw } => Lowered {
                kernel: Kernel::GlobalAvgPoolGrad,
                params: alloc::vec![numel(node.outputs[0]), i(0), o(0), (input_hw[0] * input_hw[1]) as u32],
            },
            PoolOp::MaxPool2d(p) => Lowered {
                kernel: Kernel::MaxPool,
                params: pool_params(p, shape(node.inputs[0]), shape(node.outputs[0]), numel(node.outputs[0]), [i(0), NONE, o(0)]),
            },
            PoolOp::AvgPool2d(p) => Lowered {
                kernel: Kernel::AvgPool,
                params: pool_params(p, shape(node.inputs[0]), shape(node.outputs[0]), numel(node.outputs[0]), [i(0), NONE, o(0)]),
            },
            PoolOp::MaxPool2dGrad(p) => Lowered {
                kernel: Kernel::MaxPoolGrad,
                params: pool_params(p, shape(node.inputs[1]), shape(node.inputs[0]), numel(node.outputs[0]), [i(0), i(1), o(0)]),
            },
            PoolOp::AvgPool2dGrad { pool, .. } => Lowered {
                kernel: Kernel::AvgPoolGrad,
                params: pool_params(pool, shape(node.outputs[0]), shape(node.inputs[0]), numel(node.outputs[0]), [i(0), NONE, o(0)]),
            },
        },
        Op::Loss(l) => match l {
            LossOp::SoftmaxCrossEntropy(r) => {
                let lg = shape(node.inputs[0]);
                classes_fit(node, lg[1] as u64, at)?;
                if *r == Reduction::Mean {
                    // The mean over rows split across threads: cross-entropy's partial sums with
                    // no label ignored (labels are checked to lie in [0, C) when written).
                    let (rows, classes) = (lg[0] as u32, lg[1] as u32);
                    let (splits, chunk) = wide::split(rows as u64, 2 * classes as u64 + 2);
                    let scratch = at.scratch();
                    let partial = Lowered {
                        kernel: Kernel::CrossEntropyPartial,
                        params: alloc::vec![splits, i(0), i(1), scratch, rows, classes, i32::MIN as u32, chunk, 0],
                    };
                    return Ok(alloc::vec![partial, wide::sum_partials(scratch, splits, o(0), NONE, rows as f32, 0)]);
                }
                Lowered {
                    kernel: Kernel::SoftmaxCrossEntropy,
                    params: alloc::vec![lg[0] as u32, i(0), i(1), o(0), lg[0] as u32, lg[1] as u32, 0],
                }
            }
            LossOp::SoftmaxCrossEntropyGrad(r) => {
                let lg = shape(node.inputs[1]);
                classes_fit(node, lg[1] as u64, at)?;
                Lowered {
                    kernel: Kernel::SoftmaxCrossEntropyGrad,
                    params: alloc::vec![lg[0] as u32, i(0), i(1), i(2), o(0), lg[0] as u32, lg[1] as u32, (*r == Reduction::Mean) as u32],
                }
            }
            _ => return no_kernel(),
        },
        Op::Optim(op) => match op {
            OptimOp::SgdUpdate(s) | OptimOp::SgdUpdateRows { sgd: s, .. } => {
                let scale = if s.scaled { i(3) } else { NONE };
                let buffer = if node.outputs.len() > 1 { o(1) } else { NONE };
                let update = Lowered {
                    kernel: Kernel::Sgd,
                    params: alloc::vec![
                        numel(node.inputs[0]),
                        i(0),
                        i(1),
                        i(2),
                        scale,
                        param,
                        buffer,
                        s.momentum.to_bits(),
                        s.dampening.to_bits(),
                        s.nesterov as u32,
                        s.weight_decay.to_bits(),
                        at.flag()
                    ],
                };
                return Ok(checked(numel(node.inputs[0]), i(0), scale, update, at.flag()));
            }
            OptimOp::AdamUpdate(a) | OptimOp::AdamUpdateRows { adam: a, .. } => {
                let scale = if a.scaled { i(3) } else { NONE };
                let update = Lowered {
                    kernel: Kernel::Adam,
                    params: alloc::vec![
                        numel(node.inputs[0]),
                        i(0),
                        i(1),
                        i(2),
                        scale,
                        param,
                        o(1),
                        o(2),
                        a.beta1.to_bits(),
                        a.beta2.to_bits(),
                        a.eps.to_bits(),
                        a.weight_decay.to_bits(),
                        a.decoupled as u32,
                        at.flag()
                    ],
                };
                return Ok(checked(numel(node.inputs[0]), i(0), scale, update, at.flag()));
            }
            OptimOp::CountNonFinite => {
                return Ok(alloc::vec![
                    finite_check(numel(node.inputs[0]), i(0), NONE, at.flag()),
                    Lowered { kernel: Kernel::CountNonFinite, params: alloc::vec![1, at.flag(), o(0)] },
                ]);
            }
            OptimOp::Fill { value } => Lowered { kernel: Kernel::Fill, params: alloc::vec![numel(node.outputs[0]), o(0), value.to_bits()] },
            OptimOp::AccumulateGrad => Lowered { kernel: Kernel::AccumulateGrad, params: alloc::vec![numel(node.outputs[0]), i(0), o(0)] },
            // Lowered in `families.rs`.
            OptimOp::GradScale(_) => return no_kernel(),
        },
        Op::Mask(MaskOp::Pack(kind)) => {
            let n = numel(node.inputs[0]);
            let (clip, lo, hi) = match kind {
                MaskKind::Relu => (0, 0.0f32, 0.0f32),
                MaskKind::Clip(c) => (1, c.min, c.max),
            };
            Lowered { kernel: Kernel::MaskPack, params: alloc::vec![n.div_ceil(32), i(0), o(0), n, clip, lo.to_bits(), hi.to_bits()] }
        }
        Op::Norm(n) => {
            let (b, frozen) = match n {
                NormOp::BatchNormTrain(b) | NormOp::BatchNormTrainAct { norm: b, .. } | NormOp::BatchNormTrainGrad(b) => (b, false),
                NormOp::BatchNormInfer(b) | NormOp::BatchNormInferGrad(b) => (b, true),
            };
            let x = match n {
                NormOp::BatchNormTrain(_) | NormOp::BatchNormTrainAct { .. } | NormOp::BatchNormInfer(_) => shape(node.inputs[0]),
                _ => shape(node.inputs[1]),
            };
            let inner: usize = x[2..].iter().product();
            let (count, channels) = (numel(node.outputs[0]), x[1] as u32);
            let bn = |threads: u32, kernel: Kernel, t: [u32; 8]| {
                let mut params = alloc::vec![threads];
                params.extend_from_slice(&t);
                params.extend_from_slice(&[x[0] as u32, channels, inner as u32, b.eps.to_bits(), b.momentum.to_bits(), frozen as u32]);
                Lowered { kernel, params }
            };
            // The per-channel sums: in the reference's order (a thread a sample's run, or the
            // channel's whole sum) while a thread's loops fit, else strided over a workgroup. (A
            // parallel sum in another order moved zoo:mobilenetv2's losses 2% from the CPU's
            // within 3 steps; where one thread can, the order stays the reference's.)
            let per_channel = (x[0] * inner) as u64;
            let spread = |narrow: u64| -> Result<bool, String> {
                let iterations = 2 * per_channel.div_ceil(256) + 64;
                if narrow + 8 <= wide::LOOP_LIMIT {
                    Ok(false)
                } else if iterations > at.loop_limit {
                    Err(wide::too_long(node, "the N * H * W elements of a channel", per_channel, iterations))
                } else {
                    Ok(true)
                }
            };
            let stats_kernel = if spread(2 * (x[0] as u64).div_ceil(256) * (inner as u64 + 260))? {
                Kernel::BatchNormStatsWide
            } else {
                Kernel::BatchNormStats
            };
            let sums_kernel = if spread(per_channel + x[0] as u64)? { Kernel::BatchNormGradSumsWide } else { Kernel::BatchNormGradSums };
            // BatchNormApply's words 15-17: the activation after it (`activation_params`).
            let apply = |t: [u32; 8], act: &crate::ops::Activation| {
                let mut lowered = bn(count, Kernel::BatchNormApply, t);
                let (kind, lo, hi) = activation_params(act);
                lowered.params.extend([kind, lo.to_bits(), hi.to_bits()]);
                lowered
            };
            return Ok(match n {
                // [x, gamma, beta] -> [y, saved_mean, saved_invstd, running_mean, running_var]
                NormOp::BatchNormTrain(_) | NormOp::BatchNormTrainAct { .. } => {
                    let act = &n.activation();
                    alloc::vec![
                        bn(channels, stats_kernel, [i(0), o(1), o(2), o(3), o(4), NONE, NONE, NONE]),
                        apply([i(0), i(1), i(2), o(1), o(2), o(0), NONE, NONE], act),
                    ]
                }
                // [x, gamma, beta, running_mean, running_var] -> [y]
                NormOp::BatchNormInfer(_) => alloc::vec![apply([i(0), i(1), i(2), i(3), i(4), o(0), NONE, NONE], &n.activation())],
                // [dy, x, gamma, mean, invstd or var] -> [dx, dgamma, dbeta]
                NormOp::BatchNormTrainGrad(_) | NormOp::BatchNormInferGrad(_) => alloc::vec![
                    bn(channels, sums_kernel, [i(0), i(1), i(3), i(4), o(1), o(2), NONE, NONE]),
                    bn(count, Kernel::BatchNormGradInput, [i(0), i(1), i(3), i(4), o(1), o(2), i(2), o(0)]),
                ],
            });
        }
        Op::Mask(MaskOp::Grad) => Lowered { kernel: Kernel::MaskGrad, params: alloc::vec![numel(node.outputs[0]), i(0), i(1), o(0)] },
        _ => return no_kernel(),
    };
    // The tiled GEMMs walk their depth in slices of 16, about 18 loop iterations a slice: the
    // matmuls' and the weight gradient's depth is split past what one thread may loop, the
    // other convolutions' refused.
    if lowered.kernel == Kernel::MatMul {
        return Ok(families::split_matmul(lowered, at.scratch()));
    }
    let depth = match lowered.kernel {
        Kernel::ConvGemm
        | Kernel::ConvGemmGradInput
        | Kernel::ConvGemmGradWeight
        | Kernel::ConvGemmBiasAct
        | Kernel::ConvGemmGradInputMasked => Some(lowered.params[26]),
        _ => None,
    };
    if lowered.kernel == Kernel::ConvGemmGradWeight {
        // The weight gradient's depth N * OH * OW grows with the batch: split-K past a thread's
        // loops (`conv_gemm::split_k`).
        return Ok(conv_gemm::split_k(lowered, at.scratch()));
    }
    if let Some(k) = depth {
        depth_fits(node, k, at)?;
    }
    Ok(alloc::vec![lowered])
}

/// A bound on the loop iterations of a pooling kernel's thread: a window (the forward), or each
/// window reaching an input and its maximum (the gradients).
fn pool_iterations(p: &crate::ops::Pool2d) -> u64 {
    let [kh, kw] = p.kernel.map(|k| k as u64);
    let window = kh * (kw + 1);
    let reaching = |k: u64, s: usize| k / (s as u64).max(1) + 1;
    reaching(kh, p.stride[0]) * (reaching(kw, p.stride[1]) * (window + 2) + 1) + 8
}

/// Refuses an implicit-GEMM forward or input gradient whose depth `k` one thread could not walk:
/// ceil(k / 16) slices of about 18 loop iterations each.
fn depth_fits(node: &Node, k: u32, at: &Addresses<'_>) -> Result<(), String> {
    let iterations = (k as u64).div_ceil(16) * 18 + 8;
    if iterations > at.loop_limit {
        return Err(wide::too_long(node, "the reduction depth of a GEMM", k as u64, iterations));
    }
    Ok(())
}
