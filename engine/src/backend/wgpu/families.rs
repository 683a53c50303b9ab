//! The kernels of the op families added after the first slice of the GPU backend: gradient
//! scaling (clipping, accumulation; its reduction in `wide.rs`), MSE (`wide.rs`), cross-entropy with `ignore_index`, the unary maths,
//! broadcasting arithmetic and data movement (one strided kernel), reductions and softmax (one
//! per-group kernel) and the tiled matmul (MatMul, MatMulBiasAct and BatchMatMul); and the
//! lowering of their nodes.
//!
//! The two generic kernels take shapes and strides in the parameter block, at most
//! [`MAX_RANK`] axes: the strided kernel runs one thread per element of an iteration shape and
//! reads up to three inputs and writes one output each at `base + sum(coord * stride)` (strides
//! are `i32`, so a slice can walk backwards and a broadcast input has stride 0); the group kernel
//! runs one thread per group of a reduction (the kept axes) and walks the group's elements (the
//! reduced axes) in row-major order, the reference's order of additions, where a thread's loops
//! stay short; larger groups run `wide.rs`'s `GROUPS_WIDE`, a workgroup (or several) per group.

use alloc::string::String;
use alloc::vec::Vec;

use super::kernels::{Addresses, Kernel, Lowered, NONE};
use super::wide;
use crate::kernels::unary::{Attributes, WGSL_FORMULAS, WGSL_PRELUDE};
use crate::ops::{
    BroadcastOp, CrossEntropy, GradScale, LossOp, MatMulOp, MoveOp, Op, OptimOp, RandomOp, ReduceOp, Reduction, UnaryFn, UnaryOp,
};
use crate::plan::{Node, TensorId};

/// The most axes the strided and group kernels take (the broadcast family's limit too).
pub const MAX_RANK: usize = 8;

/// `P = [1, scale, has_max_norm, max_norm, multiplier]`: the scale word holds the sum of squares
/// (or NaN); it becomes `multiplier * min(1, max_norm / (norm + 1e-6))`, or `multiplier` without
/// a max norm, NaN when the sum is not finite.
pub const GRAD_SCALE_FINISH: &str = r#"
fn body(i: u32) {
    let s = M[P[1]];
    var clip = 1.0;
    if (!finite(s)) { clip = nan(); } else if (P[2] != 0u) {
        let coef = pf(3) / (sqrt(s) + 1e-6);
        clip = select(coef, 1.0, coef > 1.0);
    }
    M[P[1]] = pf(4) * clip;
}
"#;

/// `P = [n, dloss, pred, target, dpred, features, mean, total]`: `dpred = (pred - target) * w`.
pub const MSE_GRAD: &str = r#"
fn body(i: u32) {
    var w = 2.0 * M[P[1]] / f32(P[7]);
    if (P[6] == 0u) { w = 2.0 * M[P[1] + i / P[5]] / f32(P[5]); }
    M[P[4] + i] = (M[P[2] + i] - M[P[3] + i]) * w;
}
"#;

/// `P = [samples, logits, labels, loss, positions, C, 0, ignore_index, per_sample]`, one thread
/// per sample (the mean runs `wide.rs`'s `CROSS_ENTROPY_PARTIAL` and `SUM_PARTIALS` instead);
/// `position_loss` is `kernels.rs`'s `POSITION_LOSS`.
pub const CROSS_ENTROPY: &str = r#"
fn kept(p: u32) -> bool { return bitcast<i32>(label(P[2], p)) != bitcast<i32>(P[7]); }
fn body(i: u32) {
    let lo = i * P[8]; let hi = lo + P[8];
    var total = 0.0; var count = 0u;
    for (var p = lo; p < hi; p++) {
        if (kept(p)) { total += position_loss(p); count += 1u; }
    }
    M[P[3] + i] = total / f32(max(count, 1u));
}
"#;

/// `P = [positions, dloss, logits, labels, dlogits, positions, C, mean, ignore_index,
/// per_sample, count]`, one thread per position; with `mean` the word `count` holds the number of
/// kept positions (counted by `CROSS_ENTROPY_PARTIAL` and `SUM_PARTIALS` before);
/// `position_loss_grad` is `kernels.rs`'s `POSITION_LOSS_GRAD`.
pub const CROSS_ENTROPY_GRAD: &str = r#"
fn kept(p: u32) -> bool { return bitcast<i32>(label(P[3], p)) != bitcast<i32>(P[8]); }
fn body(p: u32) {
    let dst = P[4]; let C = P[6];
    if (!kept(p)) {
        for (var c = 0u; c < C; c++) { M[dst + p * C + c] = 0.0; }
        return;
    }
    var dloss = M[P[1]]; var count = 0.0;
    if (P[7] == 0u) {
        let n = p / P[9]; let lo = n * P[9];
        dloss = M[P[1] + n];
        for (var q = lo; q < lo + P[9]; q++) { if (kept(q)) { count += 1.0; } }
    } else {
        count = M[P[10]];
    }
    position_loss_grad(p, dloss / max(count, 1.0));
}
"#;

/// `P = [n, function, x, saved, y, grad, alpha, beta]`: `y = f(x)`, or with `grad`
/// `y = x * f'(saved)` (`x` is then `dy`; `saved` is NONE for a function that saves nothing).
/// Generated from the one definition of each formula in `kernels/unary.rs`
/// (`unary_formulas!`): its helpers (`WGSL_PRELUDE`), then one `switch` case per formula of
/// `WGSL_FORMULAS`, the case number being the formula's position there.
pub fn unary_source() -> String {
    use core::fmt::Write;
    let mut s = String::from(WGSL_PRELUDE);
    for (what, head) in [(0, "fn apply(f: u32, x: f32) -> f32 {"), (1, "fn derivative(f: u32, s: f32) -> f32 {")] {
        s.push_str(head);
        s.push_str("\n    let alpha = pf(6); let beta = pf(7);\n    switch f {\n");
        for (k, f) in WGSL_FORMULAS.iter().enumerate() {
            let text = if what == 0 { f.apply } else { f.derivative };
            let _ = writeln!(s, "        case {k}u: {{ {text} }}");
        }
        s.push_str("        default: { return 0.0; }\n    }\n}\n");
    }
    s.push_str(UNARY_BODY);
    s
}

const UNARY_BODY: &str = r#"
fn body(i: u32) {
    let x = M[P[2] + i];
    if (P[5] == 0u) { M[P[4] + i] = apply(P[1], x); return; }
    var s = 0.0;
    if (P[3] != NONE) { s = M[P[3] + i]; }
    M[P[4] + i] = x * derivative(P[1], s);
}
"#;

/// The walk shared by [`STRIDED`] and `typed.rs`'s `TYPED`: element `i` of the output (dims
/// `P[8..]`, rank `P[2]`, row-major) to the word (or byte) offsets of `y, a, b, c`: bases
/// `P[3..7]` plus the coordinates times each operand's `i32` strides (`P[16..]`, `P[24..]`,
/// `P[32..]`, `P[40..]`).
pub const STRIDED_WALK: &str = r#"
fn strided_offsets(i: u32) -> vec4<i32> {
    var rest = i;
    var o = vec4<i32>(bitcast<i32>(P[3]), bitcast<i32>(P[4]), bitcast<i32>(P[5]), bitcast<i32>(P[6]));
    for (var k = P[2]; k > 0u; k--) {
        let d = k - 1u;
        let c = i32(rest % P[8u + d]);
        rest = rest / P[8u + d];
        o += c * vec4<i32>(bitcast<i32>(P[16u + d]), bitcast<i32>(P[24u + d]), bitcast<i32>(P[32u + d]), bitcast<i32>(P[40u + d]));
    }
    return o;
}
"#;

/// `P = [n, op, rank, y, a, b, c, attr, dims@8, y strides@16, a strides@24, b strides@32,
/// c strides@40]` (bases in words, strides `i32`). Ops: 0 copy, 1 add, 2 sub, 3 mul, 4 div,
/// 5 pow, 6 max, 7 min, 8 `-(dy * a) / (b * b)`, 9 pow's base gradient, 10 pow's exponent
/// gradient, 11 max's share for `a`, 12 min's, 13 `a * attr`, 14 and 15 Trilu's upper and
/// lower triangle (`attr` is `k` as `i32`; the output is contiguous); for 8..=12 `a, b, c` are
/// `dy, a, b`.
pub const STRIDED: &str = r#"
fn powf(a: f32, b: f32) -> f32 {
    if (b == 0.0) { return 1.0; }
    if (a == 0.0) { return select(bitcast<f32>(0x7f800000u), 0.0, b > 0.0); }
    if (a < 0.0) {
        if (b != floor(b)) { return nan(); }
        let r = pow(-a, b);
        if (abs(b) < 16777216.0 && (i32(b) & 1) != 0) { return -r; }
        return r;
    }
    return pow(a, b);
}
fn select_grad(dy: f32, a: f32, b: f32, a_wins: bool) -> f32 {
    if (a == b) { return dy * 0.5; }
    return select(0.0, dy, a_wins);
}
fn body(i: u32) {
    let o = strided_offsets(i);
    let oy = o.x; let oa = o.y; let ob = o.z; let oc = o.w;
    let a = M[u32(oa)];
    let op = P[1];
    var r = a;
    if (op >= 1u && op <= 12u) {
        let b = M[u32(ob)];
        switch op {
            case 1u: { r = a + b; }
            case 2u: { r = a - b; }
            case 3u: { r = a * b; }
            case 4u: { r = a / b; }
            case 5u: { r = powf(a, b); }
            case 6u: { if (is_nan(a) || is_nan(b)) { r = nan(); } else { r = select(b, a, a >= b); } }
            case 7u: { if (is_nan(a) || is_nan(b)) { r = nan(); } else { r = select(b, a, a <= b); } }
            default: {
                let c = M[u32(oc)];
                switch op {
                    case 8u: { r = -(a * b) / (c * c); }
                    case 9u: { r = select(a * c * powf(b, c - 1.0), 0.0, c == 0.0); }
                    case 10u: { r = select(a * powf(b, c) * log(b), 0.0, b == 0.0 && c >= 0.0); }
                    case 11u: { r = select_grad(a, b, c, b > c); }
                    case 12u: { r = select_grad(a, b, c, b < c); }
                    default: {}
                }
            }
        }
    } else if (op == 13u) {
        r = a * pf(7);
    } else if (op == 14u || op == 15u) {
        let rank = P[2];
        let cols = P[8u + rank - 1u]; let rows = P[8u + rank - 2u];
        let d = i32(i % cols) - i32((i / cols) % rows);
        let k = bitcast<i32>(P[7]);
        let keep = select(d <= k, d >= k, op == 14u);
        r = select(0.0, a, keep);
    }
    M[u32(oy)] = r;
}
"#;

/// The offsets of `GROUPS` and `GROUPS_WIDE` (same `P` words): the first element of group `g`,
/// and the `j`th element of a group relative to it.
pub const GROUP_INDEX: &str = r#"
fn group_base(g: u32) -> u32 {
    var rest = g; var o = 0u;
    for (var k = P[6]; k > 0u; k--) { let d = k - 1u; o += (rest % P[9u + d]) * P[17u + d]; rest = rest / P[9u + d]; }
    return o;
}
fn at(j: u32) -> u32 {
    var rest = j; var o = 0u;
    for (var k = P[7]; k > 0u; k--) { let d = k - 1u; o += (rest % P[25u + d]) * P[33u + d]; rest = rest / P[25u + d]; }
    return o;
}
"#;

/// `P = [groups, mode, x, y, b, c, kept rank, reduced rank, scale, kept dims@9, kept
/// strides@17, reduced dims@25, reduced strides@33]`: thread `g` handles the group of kept
/// coordinates `g` (row-major), whose elements sit at `base(g) + offset(j)` in the full layout.
/// Modes: 0 sum, 1 mean, 2 max (`y[g]`); 3 max gradient (`x`, `dy = b[g]`, `y = c[g]`, writes
/// `dx` laid out as `x`); 5 softmax, 6 log-softmax (`x -> y`, same layout); 7 softmax gradient (`x` is `dy`, `c` is
/// `y`), 8 log-softmax gradient.
pub const GROUPS: &str = r#"
fn body(g: u32) {
    var n = 1u;
    for (var k = 0u; k < P[7]; k++) { n = n * P[25u + k]; }
    let base = group_base(g);
    let x = P[2] + base; let y = P[3] + base;
    switch P[1] {
        case 0u, 1u: {
            var s = 0.0;
            for (var j = 0u; j < n; j++) { s += M[x + at(j)]; }
            if (P[1] == 1u) { s = s / f32(n); }
            M[P[3] + g] = s;
        }
        case 2u: {
            var m = bitcast<f32>(0xff800000u);
            for (var j = 0u; j < n; j++) { let v = M[x + at(j)]; if (v > m || is_nan(v)) { m = v; } }
            M[P[3] + g] = m;
        }
        case 3u: {
            let dy = M[P[4] + g]; let m = M[P[5] + g];
            var ties = 0u;
            for (var j = 0u; j < n; j++) { if (M[x + at(j)] == m) { ties += 1u; } }
            var share = nan(); var other = nan();
            if (ties > 0u) { share = dy / f32(ties); other = 0.0; }
            for (var j = 0u; j < n; j++) { M[y + at(j)] = select(other, share, M[x + at(j)] == m); }
        }
        case 5u, 6u: {
            var m = bitcast<f32>(0xff800000u);
            for (var j = 0u; j < n; j++) { let v = M[x + at(j)]; if (v > m) { m = v; } }
            var s = 0.0;
            if (P[1] == 5u) {
                for (var j = 0u; j < n; j++) { let e = exp(M[x + at(j)] - m); M[y + at(j)] = e; s += e; }
                for (var j = 0u; j < n; j++) { M[y + at(j)] = M[y + at(j)] / s; }
            } else {
                for (var j = 0u; j < n; j++) { s += exp(M[x + at(j)] - m); }
                let ls = m + log(s);
                for (var j = 0u; j < n; j++) { M[y + at(j)] = M[x + at(j)] - ls; }
            }
        }
        case 7u, 8u: {
            let out = P[3] + base; let yv = P[5] + base;
            var s = 0.0;
            if (P[1] == 7u) {
                for (var j = 0u; j < n; j++) { s += M[x + at(j)] * M[yv + at(j)]; }
                for (var j = 0u; j < n; j++) { M[out + at(j)] = M[yv + at(j)] * (M[x + at(j)] - s); }
            } else {
                for (var j = 0u; j < n; j++) { s += M[x + at(j)]; }
                for (var j = 0u; j < n; j++) { M[out + at(j)] = M[x + at(j)] - exp(M[yv + at(j)]) * s; }
            }
        }
        default: {}
    }
}
"#;

/// The register micro-tile of the tiled GEMMs ([`MATMUL_TILED`] and `conv_gemm.rs`'s
/// `SKELETON`): the workgroup's slice of A (32 rows x 16 depths, row `r` depth `k` at
/// `As[r * 16 + k]`) and of B (16 depths x 32 columns, `Bs[k * 32 + c]`) staged in shared
/// memory, and `multiply_slice`, which adds the products of the slice's first `kn` depths to a
/// thread's 2x2 block of the 32x32 output tile (rows `2 ty` and `2 ty + 1`, columns `2 tx` and
/// `2 tx + 1`), each output one running sum in depth order.
pub const MICRO_TILE: &str = r#"
var<workgroup> As: array<f32, 512>;
var<workgroup> Bs: array<f32, 512>;
struct Block { s00: f32, s01: f32, s10: f32, s11: f32 }
fn multiply_slice(block: Block, tx: u32, ty: u32, kn: u32) -> Block {
    var s = block;
    for (var k = 0u; k < kn; k++) {
        let a0 = As[ty * 32u + k]; let a1 = As[ty * 32u + 16u + k];
        let b0 = Bs[k * 32u + tx * 2u]; let b1 = Bs[k * 32u + tx * 2u + 1u];
        s.s00 += a0 * b0; s.s01 += a0 * b1; s.s10 += a1 * b0; s.s11 += a1 * b1;
    }
    return s;
}
"#;

/// `P = [threads, a, b, y, rows, cols, K, trans_a, trans_b, batch rank, y batch dims@10, a matrix
/// strides@16, b matrix strides@22, bias@28, act@29, lo@30, hi@31]` (batch strides in words, 0
/// along broadcast axes; `act` 0 none, 1 ReLU, 2 clip, the bias of column `c` added after the
/// whole sum as `bias_act` does). Workgroup-shared tiles: each workgroup computes a 32x32 block
/// of one output matrix, each of its 16x16 threads a 2x2 block, walking K in slices of 16 staged
/// through shared memory. Every output is still one running sum over k = 0, 1, ..., K - 1, the
/// reference's order. `threads` is 256 per block (`P[0] / 256` blocks, batch-major). Split-K
/// ([`split_matmul`]): `P[32]` > 1 splits of `P[33]` depth, the blocks of each split in turn,
/// each writing its raw sums to the scratch `P[34]` (at `split * P[35]` plus the output index;
/// `P[35]` the outputs of all matrices) for `MATMUL_FINISH`. After [`MICRO_TILE`].
pub const MATMUL_TILED: &str = r#"
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let flat = wg.y * nw.x + wg.x;
    if (flat >= P[0] / 256u) { return; }
    let rows = P[4]; let cols = P[5]; let K = P[6];
    let br = (rows + 31u) / 32u; let bc = (cols + 31u) / 32u;
    let splits = max(P[32], 1u);
    let blocks = P[0] / 256u / splits;
    let ks = flat / blocks; let block = flat % blocks;
    var k_lo = 0u; var k_hi = K;
    if (splits > 1u) { k_lo = ks * P[33]; k_hi = min(K, k_lo + P[33]); }
    let mat = block / (br * bc); let t = block % (br * bc);
    let r0 = (t / bc) * 32u; let c0 = (t % bc) * 32u;
    var rest = mat; var ao = P[1]; var bo = P[2];
    for (var k = P[9]; k > 0u; k--) {
        let d = k - 1u;
        let x = rest % P[10u + d];
        rest = rest / P[10u + d];
        ao += x * P[16u + d];
        bo += x * P[22u + d];
    }
    var a_row = K; var a_k = 1u;
    if (P[7] != 0u) { a_row = 1u; a_k = rows; }
    var b_k = cols; var b_col = 1u;
    if (P[8] != 0u) { b_k = 1u; b_col = K; }
    let tx = li % 16u; let ty = li / 16u;
    var s = Block(0.0, 0.0, 0.0, 0.0);
    for (var k0 = k_lo; k0 < k_hi; k0 += 16u) {
        for (var e = li; e < 512u; e += 256u) {
            let r = r0 + e / 16u; let k = k0 + e % 16u;
            var v = 0.0;
            if (r < rows && k < K) { v = M[ao + r * a_row + k * a_k]; }
            As[e] = v;
            let kb = k0 + e / 32u; let c = c0 + e % 32u;
            var w = 0.0;
            if (kb < K && c < cols) { w = M[bo + kb * b_k + c * b_col]; }
            Bs[e] = w;
        }
        workgroupBarrier();
        s = multiply_slice(s, tx, ty, min(16u, K - k0));
        workgroupBarrier();
    }
    let r = r0 + ty * 2u; let c = c0 + tx * 2u;
    var y = P[3] + mat * rows * cols;
    if (splits > 1u) { y = P[34] + ks * P[35] + mat * rows * cols; }
    if (r < rows && c < cols) { M[y + r * cols + c] = finished(s.s00, c); }
    if (r < rows && c + 1u < cols) { M[y + r * cols + c + 1u] = finished(s.s01, c + 1u); }
    if (r + 1u < rows && c < cols) { M[y + (r + 1u) * cols + c] = finished(s.s10, c); }
    if (r + 1u < rows && c + 1u < cols) { M[y + (r + 1u) * cols + c + 1u] = finished(s.s11, c + 1u); }
}
"#;

/// The epilogue of [`MATMUL_TILED`] and [`MATMUL_FINISH`]: the bias of column `c` and the
/// activation, after the whole sum (a split's partial sum stays raw).
pub const MATMUL_EPILOGUE: &str = r#"
fn epilogue(s: f32, c: u32) -> f32 {
    if (P[28] == NONE) { return s; }
    return activate(s + M[P[28] + c], P[29], pf(30), pf(31));
}
fn finished(s: f32, c: u32) -> f32 {
    if (P[32] > 1u) { return s; }
    return epilogue(s, c);
}
"#;

/// Split-K's second pass (`MATMUL_TILED`'s `P`, `P[0]` its outputs): one thread per output adds
/// the splits' partial sums in split order, then the epilogue.
pub const MATMUL_FINISH: &str = r#"
fn body(i: u32) {
    var s = 0.0;
    for (var k = 0u; k < P[32]; k++) { s += M[P[34] + k * P[35] + i]; }
    M[P[3] + i] = epilogue(s, i % P[5]);
}
"#;

/// A [`MATMUL_TILED`] dispatch whose depth one thread could not walk cut into the fewest splits
/// of at most `conv_gemm::SPLIT_DEPTH`, each writing partial sums to `scratch`, then
/// [`MATMUL_FINISH`]; unchanged where the depth fits.
pub(super) fn split_matmul(mut l: Lowered, scratch: u32) -> Vec<Lowered> {
    let depth = l.params[6];
    let splits = depth.div_ceil(super::conv_gemm::SPLIT_DEPTH);
    l.params.resize(36, 0);
    if splits <= 1 {
        return alloc::vec![l];
    }
    let (rows, cols) = (l.params[4], l.params[5]);
    let matrices = l.params[0] / 256 / (rows.div_ceil(32) * cols.div_ceil(32)).max(1);
    let outputs = matrices * rows * cols;
    l.params[0] *= splits;
    l.params[32..36].copy_from_slice(&[splits, super::conv_gemm::SPLIT_DEPTH, scratch, outputs]);
    let mut finish = Lowered { kernel: Kernel::MatMulSplitFinish, params: l.params.clone() };
    finish.params[0] = outputs;
    alloc::vec![l, finish]
}

/// `P = [n, mode, x, counter, y, mask, key_lo, key_hi, a, b]`: mode 0 Dropout (`a` the ratio,
/// `b` the keep scale `1 / (1 - ratio)` as the reference computes it in f32), 1 RandomUniform
/// (`y = a + b * u` with `a` low and `b` high - low), 2 Advance (`counter += 1`). The counter is
/// an `i64` held as `i32` (see the module doc of `mod.rs`), read as the reference's `counter as
/// u64` (sign-extended). `uniform` is `kernels/reference/random.rs::uniform` with its 64-bit
/// integer arithmetic done on pairs of u32 words (`(lo, hi)`), so the stream is bit for bit the
/// CPU's.
pub const RANDOM: &str = r#"
fn mul32(a: u32, b: u32) -> vec2<u32> {
    let a0 = a & 0xffffu; let a1 = a >> 16u; let b0 = b & 0xffffu; let b1 = b >> 16u;
    let p00 = a0 * b0; let p01 = a0 * b1; let p10 = a1 * b0; let p11 = a1 * b1;
    let mid = (p00 >> 16u) + (p01 & 0xffffu) + (p10 & 0xffffu);
    return vec2<u32>((p00 & 0xffffu) | (mid << 16u), p11 + (p01 >> 16u) + (p10 >> 16u) + (mid >> 16u));
}
fn mul64(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    let p = mul32(a.x, b.x);
    return vec2<u32>(p.x, p.y + a.x * b.y + a.y * b.x);
}
fn add64(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    let lo = a.x + b.x;
    return vec2<u32>(lo, a.y + b.y + select(0u, 1u, lo < a.x));
}
fn shr64(a: vec2<u32>, s: u32) -> vec2<u32> {
    if (s >= 32u) { return vec2<u32>(a.y >> (s - 32u), 0u); }
    return vec2<u32>((a.x >> s) | (a.y << (32u - s)), a.y >> s);
}
fn mix(z0: vec2<u32>) -> vec2<u32> {
    var z = mul64(z0 ^ shr64(z0, 30u), vec2<u32>(0x1ce4e5b9u, 0xbf58476du));
    z = mul64(z ^ shr64(z, 27u), vec2<u32>(0x133111ebu, 0x94d049bbu));
    return z ^ shr64(z, 31u);
}
const GOLDEN = vec2<u32>(0x7f4a7c15u, 0x9e3779b9u);
fn uniform(key: vec2<u32>, counter: vec2<u32>, index: u32) -> f32 {
    let state = mix(key ^ mix(add64(counter, GOLDEN)));
    let bits = mix(add64(state, mul64(vec2<u32>(index + 1u, select(0u, 1u, index == 0xffffffffu)), GOLDEN)));
    return f32(bits.y >> 8u) * (1.0 / 16777216.0);
}
fn body(i: u32) {
    let c = bitcast<u32>(M[P[3]]);
    if (P[1] == 2u) { M[P[3]] = bitcast<f32>(c + 1u); return; }
    let counter = vec2<u32>(c, select(0u, 0xffffffffu, bitcast<i32>(c) < 0));
    let u = uniform(vec2<u32>(P[6], P[7]), counter, i);
    if (P[1] == 1u) { M[P[4] + i] = pf(8) + pf(9) * u; return; }
    let m = select(0.0, pf(9), u >= pf(8));
    M[P[5] + i] = m;
    M[P[4] + i] = M[P[2] + i] * m;
}
"#;

/// The threads of a [`MATMUL_TILED`] dispatch: 256 for each 32x32 block of each of `matrices`
/// `rows x cols` outputs.
pub(super) fn tiled_threads(matrices: usize, rows: usize, cols: usize) -> u32 {
    (matrices * rows.div_ceil(32) * cols.div_ceil(32) * 256) as u32
}

/// Row-major element strides of `shape`.
pub(super) fn contiguous(shape: &[usize]) -> Vec<i64> {
    let mut s = alloc::vec![0i64; shape.len()];
    let mut stride = 1i64;
    for k in (0..shape.len()).rev() {
        s[k] = stride;
        stride *= shape[k] as i64;
    }
    s
}

/// Strides of `input` read as a tensor of shape `out` (right-aligned, 0 where it broadcasts).
pub(super) fn broadcast(input: &[usize], out: &[usize]) -> Vec<i64> {
    let mut s = alloc::vec![0i64; out.len()];
    let lead = out.len() - input.len();
    let c = contiguous(input);
    for k in 0..input.len() {
        if input[k] != 1 {
            s[lead + k] = c[k];
        }
    }
    s
}

/// One operand of a strided dispatch: its base word and strides over the iteration shape.
pub(super) struct Operand {
    pub base: i64,
    pub strides: Vec<i64>,
}

impl Operand {
    pub fn none(rank: usize) -> Operand {
        Operand { base: -1, strides: alloc::vec![0; rank] }
    }
}

fn too_many_axes(node: &Node, rank: usize) -> String {
    alloc::format!(
        "op {} (node '{}') has {rank} axes, more than the GPU kernels' {MAX_RANK}; train this plan with --backend cpu",
        node.op.name(),
        node.name
    )
}

/// A dispatch of the strided kernel over `dims`.
#[allow(clippy::too_many_arguments)]
pub(super) fn strided(
    node: &Node,
    op: u32,
    dims: &[usize],
    y: Operand,
    a: Operand,
    b: Operand,
    c: Operand,
    attr: f32,
) -> Result<Lowered, String> {
    if dims.len() > MAX_RANK {
        return Err(too_many_axes(node, dims.len()));
    }
    let n: usize = dims.iter().product();
    let mut p = alloc::vec![0u32; 48];
    p[0] = n as u32;
    p[1] = op;
    p[2] = dims.len() as u32;
    for (k, o) in [&y, &a, &b, &c].iter().enumerate() {
        p[3 + k] = o.base as i32 as u32;
        for (d, &s) in o.strides.iter().enumerate() {
            p[16 + 8 * k + d] = s as i32 as u32;
        }
    }
    p[7] = attr.to_bits();
    for (d, &v) in dims.iter().enumerate() {
        p[8 + d] = v as u32;
    }
    Ok(Lowered { kernel: Kernel::Strided, params: p })
}

/// Loop iterations up to which a group is reduced by one thread, in the reference's order (the
/// narrow `GROUPS`); larger groups run on workgroups (`wide.rs`).
const NARROW: u64 = 4096;

/// The dispatches of a group reduction: `shape` is the full layout, `reduced` its reduced axes,
/// `t` the tensors `[x, y, b, c]` of `GROUPS`. Adjacent axes of one kind are merged first (same
/// order of elements, fewer index steps). Mode 4 (a sum or mean gradient, `dx = dy[g] * scale`)
/// is elementwise: a `STRIDED` dispatch.
pub(super) fn groups(
    node: &Node,
    mode: u32,
    shape: &[usize],
    reduced: &[usize],
    t: [u32; 4],
    scale: f32,
    at: &Addresses<'_>,
) -> Result<Vec<Lowered>, String> {
    if shape.len() > MAX_RANK {
        return Err(too_many_axes(node, shape.len()));
    }
    let strides = contiguous(shape);
    if mode == 4 {
        let rank = shape.len();
        let mut dy = alloc::vec![0i64; rank];
        let mut step = 1i64;
        for k in (0..rank).rev().filter(|k| !reduced.contains(k)) {
            dy[k] = step;
            step *= shape[k] as i64;
        }
        let y = Operand { base: t[1] as i64, strides };
        let a = Operand { base: t[0] as i64, strides: dy };
        return Ok(alloc::vec![strided(node, 13, shape, y, a, Operand::none(rank), Operand::none(rank), scale)?]);
    }
    // (dim, stride) of the kept and of the reduced axes.
    let (mut kept, mut red) = (Vec::<(usize, i64)>::new(), Vec::<(usize, i64)>::new());
    let mut previous = None;
    for k in 0..shape.len() {
        let is_reduced = reduced.contains(&k);
        let list = if is_reduced { &mut red } else { &mut kept };
        match list.len().checked_sub(1) {
            Some(last) if previous == Some(is_reduced) => list[last] = (list[last].0 * shape[k], strides[k]),
            _ => list.push((shape[k], strides[k])),
        }
        previous = Some(is_reduced);
    }
    let count: usize = kept.iter().map(|k| k.0).product();
    let n: u64 = red.iter().map(|k| k.0 as u64).product();
    let mut p = alloc::vec![0u32; 41];
    p[0] = count as u32;
    p[1] = mode;
    p[2..6].copy_from_slice(&t);
    p[6] = kept.len() as u32;
    p[7] = red.len() as u32;
    p[8] = scale.to_bits();
    for (d, (dim, s)) in kept.iter().enumerate() {
        p[9 + d] = *dim as u32;
        p[17 + d] = *s as u32;
    }
    for (d, (dim, s)) in red.iter().enumerate() {
        p[25 + d] = *dim as u32;
        p[33 + d] = *s as u32;
    }
    // Passes over the group, and index walks (`at`) per element in the narrow kernel.
    let rr = red.len() as u64;
    let (passes, walks) = match mode {
        0..=2 => (1, 1),
        3 => (2, 3),
        5 => (3, 5),
        6 | 8 => (3, 4),
        _ => (2, 5),
    };
    let fixed = 2 * MAX_RANK as u64 + 4;
    if n * (passes + walks * rr) + fixed <= NARROW {
        return Ok(alloc::vec![Lowered { kernel: Kernel::Groups, params: p }]);
    }
    // A workgroup per group, each pass walking an element's offset once; sums and maxima of
    // groups longer than one workgroup's share are split over several, then combined.
    let cost = passes * (1 + rr);
    let (splits, chunk) = if mode <= 2 {
        wide::split(n, cost)
    } else {
        let iterations = n.div_ceil(256) * cost + fixed + 64;
        if iterations > at.loop_limit {
            return Err(wide::too_long(node, "the elements of a reduced group", n, iterations));
        }
        (1, n.div_ceil(256) as u32 * 256)
    };
    let scratch = if splits > 1 { at.scratch() } else { NONE };
    p[0] = count as u32 * splits;
    p.extend_from_slice(&[splits, chunk, scratch]);
    let mut list = alloc::vec![Lowered { kernel: Kernel::GroupsWide, params: p }];
    if splits > 1 {
        list.push(Lowered { kernel: Kernel::GroupsFinish, params: alloc::vec![count as u32, mode, scratch, t[1], splits, n as u32] });
    }
    Ok(list)
}

/// Lowers a node of the families this file covers; `None` for other ops (the caller lowers
/// them), `Some(Err)` for one that has no GPU kernel here.
pub fn lower(node: &Node, at: &Addresses<'_>) -> Option<Result<Vec<Lowered>, String>> {
    let plan = at.plan;
    let shape = |t: TensorId| plan.tensor(t).shape.clone();
    let numel = |t: TensorId| plan.tensor(t).numel() as u32;
    let word = |t: TensorId| at.word(t) as i64;
    let i = |k: usize| at.word(node.inputs[k]);
    let o = |k: usize| at.word(node.outputs[k]);
    let no_kernel =
        || Err(alloc::format!("op {} (node '{}') has no GPU kernel yet; train this plan with --backend cpu", node.op.name(), node.name));
    let fill = |t: TensorId, value: f32| Lowered { kernel: Kernel::Fill, params: alloc::vec![numel(t), at.word(t), value.to_bits()] };
    let result = match &node.op {
        Op::Optim(OptimOp::GradScale(GradScale { max_norm, multiplier })) => {
            let scale = node.outputs[0];
            let mut list = alloc::vec![fill(scale, 0.0)];
            // Each gradient's sum of squares in blocks (`wide.rs`), the blocks' partial sums then
            // added to the scale word (or only a non-finite element's NaN, without a max norm).
            let scratch = at.scratch();
            for &g in &node.inputs {
                let (splits, chunk) = wide::split(numel(g) as u64, 1);
                list.push(Lowered {
                    kernel: Kernel::GradScaleAccumulate,
                    params: alloc::vec![splits, at.word(g), scratch, numel(g), chunk, multiplier.to_bits()],
                });
                let mode = if max_norm.is_some() { 2 } else { 3 };
                list.push(wide::sum_partials(scratch, splits, at.word(scale), NONE, 0.0, mode));
            }
            list.push(Lowered {
                kernel: Kernel::GradScaleFinish,
                params: alloc::vec![1, at.word(scale), max_norm.is_some() as u32, max_norm.unwrap_or(0.0).to_bits(), multiplier.to_bits()],
            });
            Ok(list)
        }
        Op::Loss(LossOp::Mse(r)) => {
            let p = shape(node.inputs[0]);
            let total = numel(node.inputs[0]);
            let (batch, features) = (p[0] as u32, p[1..].iter().product::<usize>() as u32);
            if *r == Reduction::Mean {
                Ok(wide::mse(at, i(0), i(1), o(0), 1, total, true))
            } else {
                Ok(wide::mse(at, i(0), i(1), o(0), batch, features, false))
            }
        }
        Op::Loss(LossOp::MseGrad(r)) => {
            let p = shape(node.inputs[1]);
            let total = numel(node.inputs[1]);
            let features = p[1..].iter().product::<usize>() as u32;
            Ok(alloc::vec![Lowered {
                kernel: Kernel::MseGrad,
                params: alloc::vec![total, i(0), i(1), i(2), o(0), features, (*r == Reduction::Mean) as u32, total],
            }])
        }
        Op::Loss(LossOp::CrossEntropy(ce)) | Op::Loss(LossOp::CrossEntropyGrad(ce)) => {
            let grad = matches!(node.op, Op::Loss(LossOp::CrossEntropyGrad(_)));
            let (logits, labels) = if grad { (node.inputs[1], node.inputs[2]) } else { (node.inputs[0], node.inputs[1]) };
            let (logits_word, labels_word) = (at.word(logits), at.word(labels));
            let CrossEntropy { reduction, ignore_index } = *ce;
            let Ok(ignore) = i32::try_from(ignore_index) else {
                return Some(Err(alloc::format!(
                    "node '{}': ignore_index {ignore_index} does not fit the 32-bit integers the GPU holds labels in; use --backend cpu",
                    node.name
                )));
            };
            let ls = shape(labels);
            let positions = numel(labels);
            let classes = *shape(logits).last().unwrap_or(&1) as u32;
            let per = match ls.first() {
                Some(&0) | None => positions,
                Some(&b) => positions / b as u32,
            };
            let mean = reduction == Reduction::Mean;
            if let Err(e) = super::kernels::classes_fit(node, classes as u64, at) {
                return Some(Err(e));
            }
            // Per sample, a thread walks the sample's positions (counting them in the gradient,
            // each position's classes in the loss).
            let (per_position, rows) = if grad { (1, 4 * classes as u64) } else { (2 * classes as u64 + 2, 0) };
            let iterations = per as u64 * per_position + rows + 8;
            if !mean && iterations > at.loop_limit {
                return Some(Err(wide::too_long(node, "the positions of a sample", per as u64, iterations)));
            }
            // The mean's sums (of the loss, or only of the count of kept positions for the
            // gradient) split across threads (`wide.rs`).
            let scratch = at.scratch();
            let (splits, chunk) = wide::split(positions as u64, if grad { 1 } else { 2 * classes as u64 + 2 });
            let partial = Lowered {
                kernel: Kernel::CrossEntropyPartial,
                params: alloc::vec![splits, logits_word, labels_word, scratch, positions, classes, ignore as u32, chunk, grad as u32],
            };
            if grad {
                let count = if mean { scratch + 2 * splits } else { NONE };
                let g = Lowered {
                    kernel: Kernel::CrossEntropyGrad,
                    params: alloc::vec![positions, i(0), i(1), i(2), o(0), positions, classes, mean as u32, ignore as u32, per, count],
                };
                if mean {
                    Ok(alloc::vec![partial, wide::sum_partials(scratch, splits, count, scratch + splits, 0.0, 4), g])
                } else {
                    Ok(alloc::vec![g])
                }
            } else if mean {
                Ok(alloc::vec![partial, wide::sum_partials(scratch, splits, o(0), scratch + splits, 0.0, 1)])
            } else {
                Ok(alloc::vec![Lowered {
                    kernel: Kernel::CrossEntropy,
                    params: alloc::vec![numel(node.outputs[0]), i(0), i(1), o(0), positions, classes, 0, ignore as u32, per],
                }])
            }
        }
        Op::Unary(UnaryOp::Map(f)) | Op::Unary(UnaryOp::Grad(f)) => {
            let grad = matches!(node.op, Op::Unary(UnaryOp::Grad(_)));
            let (code, alpha, beta) = unary_code(f);
            let saved = if grad && node.inputs.len() > 1 { i(1) } else { NONE };
            Ok(alloc::vec![Lowered {
                kernel: Kernel::Unary,
                params: alloc::vec![numel(node.outputs[0]), code, i(0), saved, o(0), grad as u32, alpha.to_bits(), beta.to_bits()],
            }])
        }
        Op::Broadcast(b) => {
            let y = shape(node.outputs[0]);
            let operand = |k: usize| Operand { base: word(node.inputs[k]), strides: broadcast(&shape(node.inputs[k]), &y) };
            let out = Operand { base: word(node.outputs[0]), strides: contiguous(&y) };
            let code = match b {
                BroadcastOp::Add => 1,
                BroadcastOp::Sub => 2,
                BroadcastOp::Mul => 3,
                BroadcastOp::Div => 4,
                BroadcastOp::Pow => 5,
                BroadcastOp::Max => 6,
                BroadcastOp::Min => 7,
                BroadcastOp::DivGradDivisor => 8,
                BroadcastOp::PowGradBase => 9,
                BroadcastOp::PowGradExponent => 10,
                BroadcastOp::MaxGrad => 11,
                BroadcastOp::MinGrad => 12,
                BroadcastOp::SumTo { shape: to } => {
                    let x = shape(node.inputs[0]);
                    let lead = x.len() - to.len();
                    let reduced: Vec<usize> = (0..x.len()).filter(|&k| k < lead || to[k - lead] == 1).collect();
                    return Some(groups(node, 0, &x, &reduced, [i(0), o(0), NONE, NONE], 1.0, at));
                }
                // Comparisons, logic and Where work on bools, which the GPU does not hold yet.
                _ => return Some(no_kernel()),
            };
            let rank = y.len();
            let c = if code >= 8 { operand(2) } else { Operand::none(rank) };
            strided(node, code, &y, out, operand(0), operand(1), c, 0.0).map(|l| alloc::vec![l])
        }
        Op::Reduce(r) => {
            let x = |k: usize| shape(node.inputs[k]);
            match r {
                ReduceOp::ReduceSum(red) => groups(node, 0, &x(0), &red.axes, [i(0), o(0), NONE, NONE], 1.0, at),
                ReduceOp::ReduceMean(red) => groups(node, 1, &x(0), &red.axes, [i(0), o(0), NONE, NONE], 1.0, at),
                ReduceOp::ReduceMax(red) => groups(node, 2, &x(0), &red.axes, [i(0), o(0), NONE, NONE], 1.0, at),
                ReduceOp::ReduceMaxGrad(red) => groups(node, 3, &x(1), &red.axes, [i(1), o(0), i(0), i(2)], 1.0, at),
                ReduceOp::ReduceSumGrad { reduce, shape: s } => groups(node, 4, s, &reduce.axes, [i(0), o(0), NONE, NONE], 1.0, at),
                ReduceOp::ReduceMeanGrad { reduce, shape: s } => {
                    let n: usize = reduce.axes.iter().map(|&a| s[a]).product();
                    groups(node, 4, s, &reduce.axes, [i(0), o(0), NONE, NONE], 1.0 / n as f32, at)
                }
                ReduceOp::Softmax { axis } => groups(node, 5, &x(0), &[*axis], [i(0), o(0), NONE, NONE], 1.0, at),
                ReduceOp::LogSoftmax { axis } => groups(node, 6, &x(0), &[*axis], [i(0), o(0), NONE, NONE], 1.0, at),
                ReduceOp::SoftmaxGrad { axis } => groups(node, 7, &x(0), &[*axis], [i(0), o(0), NONE, i(1)], 1.0, at),
                ReduceOp::LogSoftmaxGrad { axis } => groups(node, 8, &x(0), &[*axis], [i(0), o(0), NONE, i(1)], 1.0, at),
            }
        }
        Op::Move(m) => movement(node, m, at),
        Op::Random(r) => {
            let key = |k: u64| [k as u32, (k >> 32) as u32];
            let params = match r {
                RandomOp::Dropout(d) => {
                    let scale = 1.0f32 / (1.0 - d.ratio);
                    let [lo, hi] = key(d.key);
                    alloc::vec![numel(node.inputs[0]), 0, i(0), i(1), o(0), o(1), lo, hi, d.ratio.to_bits(), scale.to_bits()]
                }
                RandomOp::Uniform { low, high, key: k, .. } => {
                    let [lo, hi] = key(*k);
                    alloc::vec![numel(node.outputs[0]), 1, NONE, i(0), o(0), NONE, lo, hi, low.to_bits(), (high - low).to_bits()]
                }
                RandomOp::Advance => alloc::vec![1, 2, NONE, o(0), NONE, NONE, 0, 0, 0, 0],
            };
            Ok(alloc::vec![Lowered { kernel: Kernel::Random, params }])
        }
        Op::MatMul(MatMulOp::BatchMatMul(m)) => {
            let (a, b, y) = (shape(node.inputs[0]), shape(node.inputs[1]), shape(node.outputs[0]));
            let matrix = |s: &[usize], is_a: bool| -> ([usize; 2], usize) {
                match *s {
                    [k] if is_a => ([1, k], 0),
                    [k] => ([k, 1], 0),
                    _ => {
                        let r = s.len() - 2;
                        ([s[r], s[r + 1]], r)
                    }
                }
            };
            let ((a_shape, ra), (b_shape, rb)) = (matrix(&a, true), matrix(&b, false));
            let (a_vec, b_vec) = (a.len() == 1, b.len() == 1);
            let ry = y.len() + usize::from(a_vec) + usize::from(b_vec) - 2;
            if ry > 6 {
                return Some(Err(too_many_axes(node, ry + 2)));
            }
            let tail = &y[ry..];
            let rows = if a_vec { 1 } else { tail[0] };
            let cols = if b_vec { 1 } else { tail[tail.len() - 1] };
            let k = if m.trans_a { a_shape[0] } else { a_shape[1] };
            let (a_mat, b_mat) = (a_shape[0] * a_shape[1], b_shape[0] * b_shape[1]);
            let mut p = alloc::vec![0u32; 32];
            let matrices = (numel(node.outputs[0]) as usize).checked_div(rows * cols).unwrap_or(0);
            let head = [
                tiled_threads(matrices, rows, cols),
                i(0),
                i(1),
                o(0),
                rows as u32,
                cols as u32,
                k as u32,
                m.trans_a as u32,
                m.trans_b as u32,
            ];
            p[..9].copy_from_slice(&head);
            p[9] = ry as u32;
            let (mut a_step, mut b_step) = (1usize, 1usize);
            for d in (0..ry).rev() {
                p[10 + d] = y[d] as u32;
                if let Some(ka) = (d + ra).checked_sub(ry) {
                    if a[ka] != 1 {
                        p[16 + d] = (a_step * a_mat) as u32;
                    }
                    a_step *= a[ka];
                }
                if let Some(kb) = (d + rb).checked_sub(ry) {
                    if b[kb] != 1 {
                        p[22 + d] = (b_step * b_mat) as u32;
                    }
                    b_step *= b[kb];
                }
            }
            p[28] = NONE;
            Ok(split_matmul(Lowered { kernel: Kernel::MatMul, params: p }, at.scratch()))
        }
        _ => return None,
    };
    Some(result)
}

/// The movement family: each op is one or a few strided copies (Pad and SliceGrad first fill
/// their output; Trilu masks a contiguous copy). Operands are addressed in their tensors' own
/// elements ([`Addresses::elem`]), so `typed.rs` reuses these copies for `i64` and bool tensors;
/// it lowers Gather and its gradient itself.
pub(super) fn movement(node: &Node, m: &MoveOp, at: &Addresses<'_>) -> Result<Vec<Lowered>, String> {
    let plan = at.plan;
    let shape = |t: TensorId| plan.tensor(t).shape.clone();
    let word = |t: TensorId| at.elem(t);
    let whole = |t: TensorId| Operand { base: word(t), strides: contiguous(&shape(t)) };
    let none = |rank: usize| Operand::none(rank);
    let fill = |t: TensorId, value: f32| Lowered {
        kernel: Kernel::Fill,
        params: alloc::vec![plan.tensor(t).numel() as u32, at.word(t), value.to_bits()],
    };
    let (x, y) = (node.inputs[0], node.outputs[0]);
    match m {
        MoveOp::Transpose { perm } => {
            let ys = shape(y);
            let xs = contiguous(&shape(x));
            let a = Operand { base: word(x), strides: perm.iter().map(|&p| xs[p]).collect() };
            Ok(alloc::vec![strided(node, 0, &ys, whole(y), a, none(ys.len()), none(ys.len()), 0.0)?])
        }
        MoveOp::Expand { .. } => {
            let ys = shape(y);
            let a = Operand { base: word(x), strides: broadcast(&shape(x), &ys) };
            Ok(alloc::vec![strided(node, 0, &ys, whole(y), a, none(ys.len()), none(ys.len()), 0.0)?])
        }
        MoveOp::Slice(s) | MoveOp::SliceGrad { slice: s, .. } => {
            // The sliced tensor (x of Slice, dx of SliceGrad) is read or written at the slice's
            // positions; the other side is contiguous.
            let grad = matches!(m, MoveOp::SliceGrad { .. });
            let full = if grad { y } else { x };
            let part = if grad { x } else { y };
            let fs = shape(full);
            let fstr = contiguous(&fs);
            let mut base = word(full);
            let mut strides = Vec::new();
            for (axis, &stride) in fstr.iter().enumerate() {
                let (start, _, step) = s.range(&fs, axis);
                base += start as i64 * stride;
                strides.push(stride * step);
            }
            let sliced = Operand { base, strides };
            let ps = shape(part);
            if grad {
                Ok(alloc::vec![fill(y, 0.0), strided(node, 0, &ps, sliced, whole(x), none(ps.len()), none(ps.len()), 0.0)?])
            } else {
                Ok(alloc::vec![strided(node, 0, &ps, whole(y), sliced, none(ps.len()), none(ps.len()), 0.0)?])
            }
        }
        MoveOp::Concat { axis } => {
            let ystr = contiguous(&shape(y));
            let mut list = Vec::new();
            let mut offset = 0i64;
            for &input in &node.inputs {
                let is = shape(input);
                let dst = Operand { base: word(y) + offset * ystr[*axis], strides: ystr.clone() };
                list.push(strided(node, 0, &is, dst, whole(input), none(is.len()), none(is.len()), 0.0)?);
                offset += is[*axis] as i64;
            }
            Ok(list)
        }
        MoveOp::Split { axis, .. } => {
            let xstr = contiguous(&shape(x));
            let mut list = Vec::new();
            let mut offset = 0i64;
            for &output in &node.outputs {
                let os = shape(output);
                let src = Operand { base: word(x) + offset * xstr[*axis], strides: xstr.clone() };
                list.push(strided(node, 0, &os, whole(output), src, none(os.len()), none(os.len()), 0.0)?);
                offset += os[*axis] as i64;
            }
            Ok(list)
        }
        MoveOp::Pad { pads, value } => {
            let (xs, ystr) = (shape(x), contiguous(&shape(y)));
            let base = word(y) + (0..xs.len()).map(|k| pads[k] as i64 * ystr[k]).sum::<i64>();
            let dst = Operand { base, strides: ystr };
            Ok(alloc::vec![fill(y, *value), strided(node, 0, &xs, dst, whole(x), none(xs.len()), none(xs.len()), 0.0)?])
        }
        MoveOp::Trilu { upper, k } => {
            let ys = shape(y);
            // Beyond the matrix's own size any k keeps all or nothing; clamped, it fits i32.
            let bound = (ys[ys.len() - 2] + ys[ys.len() - 1]) as i64;
            let k = (*k).clamp(-bound, bound) as i32;
            let mut l = strided(node, if *upper { 14 } else { 15 }, &ys, whole(y), whole(x), none(ys.len()), none(ys.len()), 0.0)?;
            l.params[7] = k as u32;
            Ok(alloc::vec![l])
        }
        MoveOp::Gather { .. } | MoveOp::GatherGrad { .. } => {
            Err(alloc::format!("op {} (node '{}') has no GPU kernel yet; train this plan with --backend cpu", node.op.name(), node.name))
        }
    }
}

/// The unary function's case in [`unary_source`] (its position in `WGSL_FORMULAS`) and its
/// attributes.
pub(super) fn unary_code(f: &UnaryFn) -> (u32, f32, f32) {
    let name = f.name();
    let code = WGSL_FORMULAS.iter().position(|w| w.name == name).expect("every UnaryFn is in unary_formulas!");
    let [alpha, beta] = crate::dispatch_unary!(f, g => Attributes::attributes(g));
    (code as u32, alpha, beta)
}
