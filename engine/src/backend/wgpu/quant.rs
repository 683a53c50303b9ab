//! The kernels of the quant family (`ops/quant.rs`, whose reference kernels are
//! `kernels/reference/quant.rs`): Quantize, Dequantize, QLinear and its three gradients.
//!
//! Device layout: an int8 tensor is its bytes in the arena, four to a little-endian word, and
//! starts on a word (`ValidatedPlan` checks that every arena offset is a multiple of 8; the
//! compiler places weights at 64-byte boundaries too, and `lower` refuses an int8 weight that
//! does not start on a word, which only a hand-made plan can have), so a tensor's last word holds
//! no other live tensor's bytes. A byte is read by loading its word
//! and sign-extending; int8 outputs are written by one thread per word (four elements), so no two
//! threads write one word, and the thread of the last word keeps the bytes past the tensor's end.
//! The memory is declared `array<u32>` here (floats through `bitcast`).
//!
//! Exactness: the forward ops are the reference's bit for bit. Rounding is half away from zero
//! (`roundf`, not WGSL's `round`, which rounds halves to even); float-to-integer conversions
//! saturate with NaN as 0 (Rust's `as`); `i32` to `f32` rounds to nearest even by hand
//! (`I32_TO_F32`); the dot products accumulate in `i32`, wrapping like the reference's; and the
//! divisions (the requantization multiplier `x.scale * w_scale / y.scale`, QAS's inverses) are
//! done by `div_rn`, a correctly rounded division in integer arithmetic, because WGSL's `/` may
//! be 2.5 ULP off (the native `/` only where an operand or the quotient is zero, subnormal,
//! infinite or NaN). Multiplications are correctly rounded in WGSL. `Quantize`'s `1 / scale` is
//! computed on the host as the reference computes it. The gradients sum in the reference's
//! order, one thread per output element; they are held to the other kernels' tolerance (a
//! compiler may fuse a multiply and an add). An integer difference `x - zero_point` is taken in
//! `i32` (the reference's `i64`), which differs only for zero points within 128 of the `i32`
//! range's ends.

use alloc::string::String;
use alloc::vec::Vec;

use super::kernels::{Addresses, Kernel, Lowered};
use crate::ops::{Op, QLinear, QOutput, QuantOp};
use crate::plan::{DType, Node, TensorId};

/// The memory as `u32` words and the helpers every quant kernel uses.
pub const HEADER: &str = r#"
@group(0) @binding(0) var<storage, read_write> M: array<u32>;
@group(0) @binding(1) var<storage, read> P: array<u32>;
fn f(at: u32) -> f32 { return bitcast<f32>(M[at]); }
fn pf(i: u32) -> f32 { return bitcast<f32>(P[i]); }
fn pi(i: u32) -> i32 { return bitcast<i32>(P[i]); }
fn is_nan(x: f32) -> bool { return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u; }
// Element `j` of the int8 tensor at word `base`, sign-extended.
fn i8at(base: u32, j: u32) -> i32 {
    let s = (j & 3u) * 8u;
    return bitcast<i32>(M[base + (j >> 2u)] << (24u - s)) >> 24u;
}
// Half away from zero, as C's `roundf` (the fraction `v - trunc(v)` is exact).
fn round_away(v: f32) -> f32 {
    let t = trunc(v);
    return select(t, t + sign(v), abs(v - t) >= 0.5);
}
// Rust's saturating `as i32`: NaN is 0.
fn to_i32(x: f32) -> i32 {
    if (is_nan(x)) { return 0; }
    if (x >= 2147483648.0) { return 2147483647; }
    if (x <= -2147483648.0) { return -2147483647 - 1; }
    return i32(x);
}
fn sat_add(a: i32, b: i32) -> i32 {
    let s = a + b;
    if (a > 0 && b > 0 && s < 0) { return 2147483647; }
    if (a < 0 && b < 0 && s >= 0) { return -2147483647 - 1; }
    return s;
}
// The reference's `to_int8`: `clamp(round(v) + zero_point, lo, hi)` as a byte (max, then min).
fn to_int8(v: f32, zp: i32, lo: i32, hi: i32) -> u32 {
    let q = min(max(sat_add(to_i32(round_away(v)), zp), lo), hi);
    return bitcast<u32>(q) & 0xffu;
}
// `a / b` correctly rounded (nearest even) for normal operands and a normal quotient: the 24
// mantissa bits and a rounding bit by long division, the remainder as the sticky bit.
fn div_rn(a: f32, b: f32) -> f32 {
    let ua = bitcast<u32>(a); let ub = bitcast<u32>(b);
    let ea = i32((ua >> 23u) & 0xffu); let eb = i32((ub >> 23u) & 0xffu);
    if (ea == 0 || ea == 255 || eb == 0 || eb == 255) { return a / b; }
    var ma = (ua & 0x7fffffu) | 0x800000u; let mb = (ub & 0x7fffffu) | 0x800000u;
    var e = ea - eb + 127;
    if (ma < mb) { ma = ma << 1u; e = e - 1; }
    var r = ma; var q = 0u;
    for (var k = 0u; k < 25u; k++) {
        q = q << 1u;
        if (r >= mb) { r = r - mb; q = q | 1u; }
        r = r << 1u;
    }
    var m = q >> 1u;
    if ((q & 1u) == 1u && (r != 0u || (m & 1u) == 1u)) { m = m + 1u; }
    if (m == 0x1000000u) { m = m >> 1u; e = e + 1; }
    if (e <= 0 || e >= 255) { return a / b; }
    return bitcast<f32>(((ua ^ ub) & 0x80000000u) | (u32(e) << 23u) | (m & 0x7fffffu));
}
// A weight: int8 bytes (`is8` 1) or the f32 master copy rounded and clamped to [-127, 127].
fn weight(is8: u32, base: u32, j: u32) -> i32 {
    if (is8 == 1u) { return i8at(base, j); }
    let v = f(base + j);
    if (is_nan(v)) { return 0; }
    return i32(clamp(round_away(v), -127.0, 127.0));
}
// Whether the gradient passes output element `k`: always for an f32 output (`is8` 0), else
// when the int8 output lies strictly inside the clamp `(lo, hi)`.
fn passes(is8: u32, y: u32, k: u32, lo: i32, hi: i32) -> bool {
    if (is8 == 0u) { return true; }
    let v = i8at(y, k);
    return lo < v && v < hi;
}
// Replaces byte `k` of `word` by `b`.
fn put_byte(word: u32, k: u32, b: u32) -> u32 {
    let s = k * 8u;
    return (word & ~(0xffu << s)) | (b << s);
}
"#;

/// `P = [words, x, q, n, 1 / scale, zero_point]`: one thread per word of `q`.
const QUANTIZE: &str = r#"
fn body(t: u32) {
    let n = P[3];
    var word = 0u;
    if (4u * t + 4u > n) { word = M[P[2] + t]; }
    for (var k = 0u; k < 4u; k++) {
        let e = 4u * t + k;
        if (e >= n) { break; }
        word = put_byte(word, k, to_int8(f(P[1] + e) * pf(4), pi(5), -128, 127));
    }
    M[P[2] + t] = word;
}
"#;

/// `P = [n, q, x, scale, zero_point]`: `x = scale * (q - zero_point)`.
const DEQUANTIZE: &str = r#"
fn body(i: u32) {
    M[P[2] + i] = bitcast<u32>(pf(3) * i32_to_f32(i8at(P[1], i) - pi(4)));
}
"#;

/// `P = [threads, x, w, w_scale, bias, y, N, I, O, w int8, y int8, x.scale, x.zero_point,
/// y.scale, y.zero_point, lo, hi]`: one thread per element of an f32 `y`, per word of an int8 one.
const LINEAR: &str = r#"
fn acc(r: u32, o: u32) -> i32 {
    let I = P[7]; let zx = pi(12);
    var a = to_i32(round_away(f(P[4] + o)));
    for (var i = 0u; i < I; i++) {
        a = a + (i8at(P[1], r * I + i) - zx) * weight(P[9], P[2], o * I + i);
    }
    return a;
}
fn body(t: u32) {
    let O = P[8];
    if (P[10] == 0u) {
        M[P[5] + t] = bitcast<u32>(i32_to_f32(acc(t / O, t % O)) * pf(11) * f(P[3] + t % O));
        return;
    }
    let n = P[6] * O;
    var word = 0u;
    if (4u * t + 4u > n) { word = M[P[5] + t]; }
    for (var k = 0u; k < 4u; k++) {
        let e = 4u * t + k;
        if (e >= n) { break; }
        let o = e % O;
        let multiplier = div_rn(pf(11) * f(P[3] + o), pf(13));
        word = put_byte(word, k, to_int8(i32_to_f32(acc(e / O, o)) * multiplier, pi(14), pi(15), pi(16)));
    }
    M[P[5] + t] = word;
}
"#;

/// `P = [N * I, dy, y, w, w_scale, dx, N, I, O, w int8, y int8, lo, hi]`: one thread per element
/// of `dx`, summing over the outputs in order.
const LINEAR_GRAD_INPUT: &str = r#"
fn body(t: u32) {
    let I = P[7]; let O = P[8]; let r = t / I; let i = t % I;
    var s = 0.0;
    for (var o = 0u; o < O; o++) {
        let k = r * O + o;
        if (!passes(P[10], P[2], k, pi(11), pi(12))) { continue; }
        let g = f(P[1] + k) * f(P[4] + o);
        s = s + g * f32(weight(P[9], P[3], o * I + i));
    }
    M[P[5] + t] = bitcast<u32>(s);
}
"#;

/// `P = [O * I, dy, y, x, w_scale, dw, N, I, O, y int8, lo, hi, x.scale, x.zero_point, qas]`: one
/// thread per element of `dw`, summing over the rows in order.
const LINEAR_GRAD_WEIGHT: &str = r#"
fn body(t: u32) {
    let N = P[6]; let I = P[7]; let O = P[8]; let o = t / I; let i = t % I;
    var s = 0.0;
    for (var r = 0u; r < N; r++) {
        let k = r * O + o;
        if (passes(P[9], P[2], k, pi(10), pi(11))) {
            s = s + f(P[1] + k) * i32_to_f32(i8at(P[3], r * I + i) - pi(13));
        }
    }
    let ws = f(P[4] + o);
    let c = select(ws, div_rn(1.0, ws), P[14] != 0u);
    M[P[5] + t] = bitcast<u32>(c * pf(12) * s);
}
"#;

/// `P = [O, dy, y, w_scale, db, N, O, y int8, lo, hi, x.scale, qas]`: one thread per output.
const LINEAR_GRAD_BIAS: &str = r#"
fn body(o: u32) {
    let N = P[5]; let O = P[6];
    var s = 0.0;
    for (var r = 0u; r < N; r++) {
        if (passes(P[7], P[2], r * O + o, pi(8), pi(9))) { s = s + f(P[1] + r * O + o); }
    }
    let c = pf(10) * f(P[3] + o);
    M[P[4] + o] = bitcast<u32>(select(s * c, div_rn(s, c), P[11] != 0u));
}
"#;

/// The WGSL source of a quant kernel (`grid` is the one-thread-per-element entry point).
pub fn source(kernel: Kernel, grid: &str) -> String {
    let body = match kernel {
        Kernel::Quantize => QUANTIZE,
        Kernel::Dequantize => DEQUANTIZE,
        Kernel::QLinear => LINEAR,
        Kernel::QLinearGradInput => LINEAR_GRAD_INPUT,
        Kernel::QLinearGradWeight => LINEAR_GRAD_WEIGHT,
        Kernel::QLinearGradBias => LINEAR_GRAD_BIAS,
        // Another family's kernel (`Kernel::source` sends only these here): no body.
        _ => "",
    };
    let mut s = String::from(HEADER);
    s.push_str(grid);
    s.push_str(super::typed::I32_TO_F32);
    s.push_str(body);
    s
}

/// Lowers a quant node, or `None` for a node of another family.
pub fn lower(node: &Node, at: &Addresses<'_>) -> Option<Result<Vec<Lowered>, String>> {
    let Op::Quant(op) = &node.op else { return None };
    Some(lower_quant(op, node, at).and_then(|list| {
        // The plain GEMMs: a thread walks a row's inputs (four rows' for an int8 output), the
        // outputs or the batch rows; refused where that outgrows a thread's loops.
        for l in &list {
            let p = &l.params;
            let (what, size, iterations) = match l.kernel {
                Kernel::QLinear => ("the inputs of a row", p[7] as u64, 4 * (p[7] as u64 + 32)),
                Kernel::QLinearGradInput => ("the outputs of a row", p[8] as u64, p[8] as u64 + 8),
                Kernel::QLinearGradWeight => ("the batch rows", p[6] as u64, 0),
                Kernel::QLinearGradBias => ("the batch rows", p[5] as u64, 0),
                _ => continue,
            };
            let iterations = iterations.max(size + 40);
            if iterations > at.loop_limit {
                return Err(super::wide::too_long(node, what, size, iterations));
            }
        }
        Ok(list)
    }))
}

fn lower_quant(op: &QuantOp, node: &Node, at: &Addresses<'_>) -> Result<Vec<Lowered>, String> {
    let plan = at.plan;
    for &t in node.inputs.iter().chain(&node.outputs) {
        let info = plan.tensor(t);
        if info.dtype == DType::I8 && !at.byte(t).is_multiple_of(4) {
            return Err(alloc::format!(
                "node '{}': int8 tensor '{}' does not start on a 4-byte word, which the GPU's int8 kernels need; recompile the plan with `pock compile` or use --backend cpu",
                node.name,
                info.name
            ));
        }
    }
    let shape = |t: TensorId| plan.tensor(t).shape.as_slice();
    let int8 = |t: TensorId| (plan.tensor(t).dtype == DType::I8) as u32;
    let (i, o) = (|k: usize| at.word(node.inputs[k]), |k: usize| at.word(node.outputs[k]));
    let n = plan.tensor(node.outputs[0]).numel() as u32;
    // The output's clamp and its quantization (unused for an f32 output).
    let out = |l: &QLinear| match l.out {
        QOutput::Int8 { q, lo, hi } => (q.scale, q.zero_point, i32::from(lo), i32::from(hi)),
        QOutput::F32 => (1.0, 0, -128, 127),
    };
    let u = |v: usize| v as u32;
    let bits = |v: i32| v as u32;
    let lowered = match op {
        QuantOp::Quantize(q) => Lowered {
            kernel: Kernel::Quantize,
            params: alloc::vec![n.div_ceil(4), i(0), o(0), n, (1.0 / q.scale).to_bits(), bits(q.zero_point)],
        },
        QuantOp::Dequantize(q) => {
            Lowered { kernel: Kernel::Dequantize, params: alloc::vec![n, i(0), o(0), q.scale.to_bits(), bits(q.zero_point)] }
        }
        QuantOp::Linear(l) => {
            let ([rows, inner], outs) = (matrix(shape(node.inputs[0])), matrix(shape(node.outputs[0]))[1]);
            let y8 = int8(node.outputs[0]);
            let (qs, qz, lo, hi) = out(l);
            let threads = if y8 == 1 { n.div_ceil(4) } else { n };
            let mut p = alloc::vec![threads, i(0), i(1), i(2), i(3), o(0), u(rows), u(inner), u(outs), int8(node.inputs[1]), y8];
            p.extend([l.x.scale.to_bits(), bits(l.x.zero_point), qs.to_bits(), bits(qz), bits(lo), bits(hi)]);
            Lowered { kernel: Kernel::QLinear, params: p }
        }
        QuantOp::LinearGradInput(l) => {
            let ([rows, outs], inner) = (matrix(shape(node.inputs[0])), matrix(shape(node.outputs[0]))[1]);
            let (_, _, lo, hi) = out(l);
            let p = alloc::vec![
                n,
                i(0),
                i(1),
                i(2),
                i(3),
                o(0),
                u(rows),
                u(inner),
                u(outs),
                int8(node.inputs[2]),
                int8(node.inputs[1]),
                bits(lo),
                bits(hi)
            ];
            Lowered { kernel: Kernel::QLinearGradInput, params: p }
        }
        QuantOp::LinearGradWeight(l) => {
            let ([rows, outs], inner) = (matrix(shape(node.inputs[0])), matrix(shape(node.outputs[0]))[1]);
            let (_, _, lo, hi) = out(l);
            let mut p = alloc::vec![n, i(0), i(1), i(2), i(3), o(0), u(rows), u(inner), u(outs), int8(node.inputs[1]), bits(lo), bits(hi)];
            p.extend([l.x.scale.to_bits(), bits(l.x.zero_point), l.qas as u32]);
            Lowered { kernel: Kernel::QLinearGradWeight, params: p }
        }
        QuantOp::LinearGradBias(l) => {
            let [rows, outs] = matrix(shape(node.inputs[0]));
            let (_, _, lo, hi) = out(l);
            let p = alloc::vec![
                n,
                i(0),
                i(1),
                i(2),
                o(0),
                u(rows),
                u(outs),
                int8(node.inputs[1]),
                bits(lo),
                bits(hi),
                l.x.scale.to_bits(),
                l.qas as u32
            ];
            Lowered { kernel: Kernel::QLinearGradBias, params: p }
        }
    };
    Ok(alloc::vec![lowered])
}

/// A validated plan's matrix shape (the shape rule checked the rank).
fn matrix(s: &[usize]) -> [usize; 2] {
    [s.first().copied().unwrap_or(0), s.get(1).copied().unwrap_or(0)]
}
