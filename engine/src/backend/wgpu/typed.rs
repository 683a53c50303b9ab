//! The kernels of ops on `i64` and bool tensors: comparisons, logic, `Where`, integer
//! arithmetic, `Not`, `Cast` in every direction, the movement ops (Reshape, Transpose, Expand,
//! Slice, Concat, Split, Trilu) on integers and bools, and `Gather` / `GatherGrad`.
//!
//! Device layout (see the module doc of `mod.rs`): an `i64` tensor is an `i32` array at the start
//! of its bytes (one word per element), a bool tensor is one byte per element as on the CPU, four
//! to a little-endian word. The memory is declared `array<atomic<u32>>` in these kernels so that
//! a thread can write one byte of a word (an `atomicAnd` clearing it, an `atomicOr` setting it)
//! while other threads write the word's other bytes; f32 and i32 elements are whole words.
//!
//! `TYPED` is the strided kernel of `families.rs` (same parameter words 0..48: one thread per
//! element of an iteration shape of at most 8 axes, operands at base plus `i32` strides) with the
//! dtype of each operand at words 48..52 (0 f32, 1 i32 holding an `i64`, 2 bool byte) and
//! operands addressed in their own elements (words, or bytes for bools).

use alloc::string::String;
use alloc::vec::Vec;

use super::families::{self, Operand};
use super::kernels::{Addresses, Kernel, Lowered};
use crate::ops::{BroadcastOp, CastOp, DenseOp, MoveOp, Op, UnaryOp};
use crate::plan::{DType, Node, TensorId};

/// Shared by [`TYPED`] and [`GATHER`]: the memory as atomic words, loads and stores by dtype
/// (`t`: 0 f32, 1 i32, 2 byte; `at` in words, or in bytes for bytes).
pub const HEADER: &str = r#"
@group(0) @binding(0) var<storage, read_write> M: array<atomic<u32>>;
@group(0) @binding(1) var<storage, read> P: array<u32>;
const NONE: u32 = 0xffffffffu;
fn load(t: u32, at: i32) -> u32 {
    if (t == 2u) { let b = u32(at); return (atomicLoad(&M[b >> 2u]) >> ((b & 3u) * 8u)) & 0xffu; }
    return atomicLoad(&M[u32(at)]);
}
fn store(t: u32, at: i32, v: u32) {
    if (t == 2u) {
        let b = u32(at); let w = b >> 2u; let s = (b & 3u) * 8u;
        atomicAnd(&M[w], ~(0xffu << s));
        atomicOr(&M[w], (v & 0xffu) << s);
        return;
    }
    atomicStore(&M[u32(at)], v);
}
fn nan_bits(x: u32) -> bool { return (x & 0x7fffffffu) > 0x7f800000u; }
"#;

/// `i32` to `f32` rounded to nearest even, by hand: WGSL's conversion may round either way
/// (shared with `quant.rs`).
pub const I32_TO_F32: &str = r#"
fn i32_to_f32(v: i32) -> f32 {
    let neg = v < 0;
    var u = bitcast<u32>(v);
    if (neg) { u = 0u - u; }
    if (u < 16777216u) { let f = f32(u); return select(f, -f, neg); }
    let drop = firstLeadingBit(u) - 23u;
    var m = u >> drop;
    let rem = u & ((1u << drop) - 1u);
    let half = 1u << (drop - 1u);
    if (rem > half || (rem == half && (m & 1u) == 1u)) { m += 1u; }
    let f = ldexp(f32(m), i32(drop));
    return select(f, -f, neg);
}
"#;

/// `P = [n, op, rank, y, a, b, c, attr, dims@8, y strides@16, a strides@24, b strides@32,
/// c strides@40, types of y, a, b, c@48]`. Ops: 0 copy (the raw element), 1 cast from `a`'s
/// dtype to `y`'s (`kernels/reference/cast.rs`: float to integer truncates toward zero, NaN
/// 0, saturating at the i32 range the device holds; integer to float rounds to nearest even;
/// anything to bool is `!= 0`, NaN true; bool to a number 0 or 1), 2 add, 3 sub, 4 mul
/// (wrapping), 5 div (truncating; WGSL gives `a` for `a / 0` and `i32::MIN / -1`), 6 equal,
/// 7 less, 8 less or equal, 9 greater, 10 greater or equal (false where a float is NaN), 11 and,
/// 12 or, 13 xor (any non-zero byte is true), 14 where (`a` the condition, `b` and `c` the
/// values), 15 not, 16 fill with `attr` (raw bits of `y`'s dtype), 17 and 18 Trilu's upper and
/// lower triangle (`attr` is `k` as `i32`; the output is contiguous). Results of comparisons
/// and logic are 0 or 1.
pub const TYPED: &str = r#"
fn f32_to_i32(x: f32) -> i32 {
    if (nan_bits(bitcast<u32>(x))) { return 0; }
    if (x >= 2147483648.0) { return 2147483647; }
    if (x <= -2147483648.0) { return -2147483647 - 1; }
    return i32(x);
}
fn truth(t: u32, v: u32) -> bool {
    if (t == 0u) { return (v & 0x7fffffffu) != 0u; }
    return v != 0u;
}
fn convert(src: u32, dst: u32, v: u32) -> u32 {
    if (dst == 2u) { return select(0u, 1u, truth(src, v)); }
    if (src == dst) { return v; }
    if (src == 2u) {
        if (dst == 0u) { return select(0u, bitcast<u32>(1.0), v != 0u); }
        return select(0u, 1u, v != 0u);
    }
    if (dst == 0u) { return bitcast<u32>(i32_to_f32(bitcast<i32>(v))); }
    return bitcast<u32>(f32_to_i32(bitcast<f32>(v)));
}
fn compare(op: u32, t: u32, a: u32, b: u32) -> bool {
    if (t == 0u) {
        if (nan_bits(a) || nan_bits(b)) { return false; }
        let x = bitcast<f32>(a); let y = bitcast<f32>(b);
        switch op {
            case 6u: { return x == y; }
            case 7u: { return x < y; }
            case 8u: { return x <= y; }
            case 9u: { return x > y; }
            default: { return x >= y; }
        }
    }
    if (op == 6u) { return a == b; }
    let x = bitcast<i32>(a); let y = bitcast<i32>(b);
    switch op {
        case 7u: { return x < y; }
        case 8u: { return x <= y; }
        case 9u: { return x > y; }
        default: { return x >= y; }
    }
}
fn body(i: u32) {
    let o = strided_offsets(i);
    let oy = o.x; let oa = o.y; let ob = o.z; let oc = o.w;
    let ty = P[48]; let ta = P[49]; let tb = P[50]; let tc = P[51];
    let op = P[1];
    var r = 0u;
    switch op {
        case 0u: { r = load(ta, oa); }
        case 1u: { r = convert(ta, ty, load(ta, oa)); }
        case 2u, 3u, 4u, 5u: {
            let a = bitcast<i32>(load(ta, oa)); let b = bitcast<i32>(load(tb, ob));
            var v = 0;
            switch op {
                case 2u: { v = a + b; }
                case 3u: { v = a - b; }
                case 4u: { v = a * b; }
                default: { v = a / b; }
            }
            r = bitcast<u32>(v);
        }
        case 6u, 7u, 8u, 9u, 10u: { r = select(0u, 1u, compare(op, ta, load(ta, oa), load(tb, ob))); }
        case 11u, 12u, 13u: {
            let a = load(ta, oa) != 0u; let b = load(tb, ob) != 0u;
            var v = a != b;
            if (op == 11u) { v = a && b; }
            if (op == 12u) { v = a || b; }
            r = select(0u, 1u, v);
        }
        case 14u: {
            if (load(ta, oa) != 0u) { r = load(tb, ob); } else { r = load(tc, oc); }
            if (ty == 2u) { r = select(0u, 1u, r != 0u); }
        }
        case 15u: { r = select(0u, 1u, load(ta, oa) == 0u); }
        case 16u: { r = P[7]; }
        case 17u, 18u: {
            let rank = P[2];
            let cols = P[8u + rank - 1u]; let rows = P[8u + rank - 2u];
            let d = i32(i % cols) - i32((i / cols) % rows);
            let k = bitcast<i32>(P[7]);
            if (select(d <= k, d >= k, op == 17u)) { r = load(ta, oa); }
        }
        default: {}
    }
    store(ty, oy, r);
}
"#;

/// `P = [n, mode, data, indices, y, len, m, inner, type]`: mode 0 Gather (`y` laid out
/// `[outer, m, inner]` from `data` `[outer, len, inner]`, `data` and `y` of dtype `type`,
/// addressed as in [`HEADER`]); mode 1 GatherGrad (f32: each element of `ddata` `[outer, len,
/// inner]` sums the rows of `dy` `[outer, m, inner]` whose index is its row, in index order as
/// the reference's scatter-add). Indices are `i32` words, negative ones counting from the end;
/// one out of range (only possible for indices computed on the device: written ones are checked)
/// reads 0.
pub const GATHER: &str = r#"
fn index(t: u32, len: u32) -> i32 {
    var v = bitcast<i32>(atomicLoad(&M[P[3] + t]));
    if (v < 0) { v += i32(len); }
    return v;
}
fn body(i: u32) {
    let len = P[5]; let m = P[6]; let inner = P[7];
    let j = i % inner;
    if (P[1] == 0u) {
        let t = (i / inner) % m; let o = i / (inner * m);
        let v = index(t, len);
        var r = 0u;
        if (v >= 0 && v < i32(len)) { r = load(P[8], i32(P[2] + (o * len + u32(v)) * inner + j)); }
        store(P[8], i32(P[4] + i), r);
        return;
    }
    let row = i32((i / inner) % len); let o = i / (inner * len);
    var s = 0.0;
    for (var t = 0u; t < m; t++) {
        if (index(t, len) == row) { s += bitcast<f32>(atomicLoad(&M[P[2] + (o * m + t) * inner + j])); }
    }
    atomicStore(&M[P[4] + i], bitcast<u32>(s));
}
"#;

/// The dtype word of the typed kernels, or why the GPU does not hold `d`.
fn type_code(node: &Node, d: DType) -> Result<u32, String> {
    match d {
        DType::F32 => Ok(0),
        DType::I64 => Ok(1),
        DType::Bool => Ok(2),
        d => Err(alloc::format!(
            "op {} (node '{}') reads or writes {}, for which this op has no GPU kernel; train this plan with --backend cpu",
            node.op.name(),
            node.name,
            d.name()
        )),
    }
}

/// Whether the typed kernels lower this node: ops on bools or `i64`, and Gather.
fn is_typed(node: &Node, at: &Addresses<'_>) -> bool {
    let plan = at.plan;
    let any_non_float = node.inputs.iter().chain(&node.outputs).any(|&t| plan.tensor(t).dtype != DType::F32);
    match &node.op {
        Op::Cast(_) | Op::Unary(UnaryOp::Not) | Op::Move(MoveOp::Gather { .. } | MoveOp::GatherGrad { .. }) => true,
        Op::Broadcast(_) | Op::Move(_) | Op::Dense(DenseOp::Reshape { .. }) => any_non_float,
        _ => false,
    }
}

/// Lowers a node on bools or `i64` (and Gather); `None` for a node the other lowerings take.
pub fn lower(node: &Node, at: &Addresses<'_>) -> Option<Result<Vec<Lowered>, String>> {
    if !is_typed(node, at) {
        return None;
    }
    Some(lower_typed(node, at))
}

fn lower_typed(node: &Node, at: &Addresses<'_>) -> Result<Vec<Lowered>, String> {
    let plan = at.plan;
    // Operands are addressed in i32 elements; a bool's byte address must fit too.
    for &t in node.inputs.iter().chain(&node.outputs) {
        let info = plan.tensor(t);
        type_code(node, info.dtype)?;
        if info.dtype == DType::Bool && at.elem(t) + info.bytes() as i64 > i32::MAX as i64 {
            return Err(alloc::format!(
                "node '{}': bool tensor '{}' lies past the 2 GiB the GPU kernels address bytes in; train this plan with --backend cpu",
                node.name,
                info.name
            ));
        }
    }
    let shape = |t: TensorId| plan.tensor(t).shape.clone();
    let code = |t: TensorId| type_code(node, plan.tensor(t).dtype);
    let whole = |t: TensorId| Operand { base: at.elem(t), strides: families::contiguous(&plan.tensor(t).shape) };
    let typed = |l: Lowered, types: [u32; 4]| -> Lowered {
        let mut params = l.params;
        params.resize(52, 0);
        params[48..52].copy_from_slice(&types);
        Lowered { kernel: Kernel::Typed, params }
    };
    let (x, y) = (node.inputs[0], node.outputs[0]);
    let ys = shape(y);
    let rank = ys.len();
    let none = || Operand::none(rank);
    match &node.op {
        Op::Cast(CastOp::Cast { .. }) => {
            let l = families::strided(node, 1, &ys, whole(y), whole(x), none(), none(), 0.0)?;
            Ok(alloc::vec![typed(l, [code(y)?, code(x)?, 0, 0])])
        }
        Op::Unary(UnaryOp::Not) => {
            let l = families::strided(node, 15, &ys, whole(y), whole(x), none(), none(), 0.0)?;
            Ok(alloc::vec![typed(l, [2, 2, 0, 0])])
        }
        Op::Dense(DenseOp::Reshape { .. }) => {
            if plan.tensor(x).location == plan.tensor(y).location {
                return Ok(Vec::new());
            }
            let n = plan.tensor(y).numel();
            let flat = |t: TensorId| Operand { base: at.elem(t), strides: alloc::vec![1] };
            let l = families::strided(node, 0, &[n], flat(y), flat(x), Operand::none(1), Operand::none(1), 0.0)?;
            Ok(alloc::vec![typed(l, [code(y)?, code(x)?, 0, 0])])
        }
        Op::Broadcast(b) => {
            let operand = |k: usize| Operand { base: at.elem(node.inputs[k]), strides: families::broadcast(&shape(node.inputs[k]), &ys) };
            let op = match b {
                BroadcastOp::Add => 2,
                BroadcastOp::Sub => 3,
                BroadcastOp::Mul => 4,
                BroadcastOp::Div => 5,
                BroadcastOp::Equal => 6,
                BroadcastOp::Less => 7,
                BroadcastOp::LessOrEqual => 8,
                BroadcastOp::Greater => 9,
                BroadcastOp::GreaterOrEqual => 10,
                BroadcastOp::And => 11,
                BroadcastOp::Or => 12,
                BroadcastOp::Xor => 13,
                BroadcastOp::Where => 14,
                // Float-only ops: the dtype rule keeps them off integers and bools.
                _ => {
                    return Err(alloc::format!(
                        "op {} (node '{}') on non-float tensors has no GPU kernel; train this plan with --backend cpu",
                        node.op.name(),
                        node.name
                    ))
                }
            };
            let c = if op == 14 { operand(2) } else { none() };
            let tc = if op == 14 { code(node.inputs[2])? } else { 0 };
            let l = families::strided(node, op, &ys, whole(y), operand(0), operand(1), c, 0.0)?;
            Ok(alloc::vec![typed(l, [code(y)?, code(node.inputs[0])?, code(node.inputs[1])?, tc])])
        }
        Op::Move(MoveOp::Gather { axis }) => {
            let data = shape(x);
            let (len, inner) = split(&data, *axis);
            let m = plan.tensor(node.inputs[1]).numel();
            let ty = code(y)?;
            let params = [
                plan.tensor(y).numel(),
                0,
                at.elem(x) as usize,
                at.word(node.inputs[1]) as usize,
                at.elem(y) as usize,
                len,
                m,
                inner,
                ty as usize,
            ];
            Ok(alloc::vec![Lowered { kernel: Kernel::Gather, params: params.iter().map(|&v| v as u32).collect() }])
        }
        Op::Move(MoveOp::GatherGrad { axis, shape: s }) => {
            let (len, inner) = split(s, *axis);
            let m = plan.tensor(node.inputs[1]).numel();
            // A thread of the table gradient walks every index.
            if m as u64 + 8 > at.loop_limit {
                return Err(super::wide::too_long(node, "the indices", m as u64, m as u64 + 8));
            }
            let params =
                [plan.tensor(y).numel(), 1, at.word(x) as usize, at.word(node.inputs[1]) as usize, at.word(y) as usize, len, m, inner, 0];
            Ok(alloc::vec![Lowered { kernel: Kernel::Gather, params: params.iter().map(|&v| v as u32).collect() }])
        }
        Op::Move(m) => {
            // The float lowering's strided copies, addressed in the tensors' own elements.
            let d = code(y)?;
            let list = families::movement(node, m, at)?;
            list.into_iter()
                .map(|l| match (l.kernel, l.params[1]) {
                    (Kernel::Strided, op @ (0 | 14 | 15)) => {
                        let mut t = typed(l, [d; 4]);
                        t.params[1] = match op {
                            14 => 17,
                            15 => 18,
                            _ => 0,
                        };
                        Ok(t)
                    }
                    _ => Err(alloc::format!(
                        "op {} (node '{}') on {} tensors has no GPU kernel; train this plan with --backend cpu",
                        node.op.name(),
                        node.name,
                        plan.tensor(y).dtype.name()
                    )),
                })
                .collect()
        }
        _ => Err(alloc::format!("op {} (node '{}') has no GPU kernel yet; train this plan with --backend cpu", node.op.name(), node.name)),
    }
}

/// The size of `axis` and the product of the sizes after it.
fn split(shape: &[usize], axis: usize) -> (usize, usize) {
    (shape[axis], shape[axis + 1..].iter().product())
}
