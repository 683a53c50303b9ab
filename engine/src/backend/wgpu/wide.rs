//! Reductions split across threads, so that no shader invocation loops over a tensor-sized range.
//!
//! Mesa's llvmpipe (lavapipe) ends an invocation's loops after about 65535 iterations in all,
//! silently; real GPUs have no such limit but run one invocation reducing 100k elements slowly.
//! So every reduction whose length grows with the tensor runs on workgroups ([`BLOCKS`]): each of
//! a block's 256 threads sums a strided share of the block's range (`li, li + 256, ...`), and
//! the block's partial sums meet in a fixed shared-memory tree ([`BLOCKS`]'s `tree_sum`). A range
//! longer than one block's share (about 256 iterations a thread) is cut into blocks that write
//! partial sums to the scratch words after the flag word ([`Addresses::scratch`]), which a
//! second dispatch adds up in order. Every order is fixed (no atomics on floats), so results are
//! deterministic; they differ from the reference's single running sum by rounding only.
//!
//! The per-channel sums whose order the reference fixes (BatchNorm's statistics and gradient
//! sums, BiasGrad, the direct weight gradient) keep one thread and the reference's order while
//! its loops stay within [`LOOP_LIMIT`], and only longer ones run here.
//!
//! The tiled GEMMs split their depth the same way where it outgrows a thread (split-K:
//! `conv_gemm::split_k` for the weight gradient, `families::split_matmul`). Where a thread still
//! loops over a length that no split covers (a row of classes, a convolution's forward depth, a
//! pooling window, ...), the lowering checks the length against [`LOOP_LIMIT`] and refuses the
//! node, naming the op and the size, rather than computing garbage on lavapipe.

use alloc::string::String;

use super::kernels::{Addresses, Kernel, Lowered, NONE};
use crate::plan::Node;

/// Loop iterations one invocation may run in all (lavapipe stops at 65535; a margin for the
/// kernels' small fixed loops). A node whose kernel would loop more is refused at load.
pub const LOOP_LIMIT: u64 = 61440;
/// Loop iterations a thread of a split reduction is sized to run: blocks of 256 threads times
/// this, so that a large range spreads over many workgroups (a real GPU's cores) and the second
/// pass adds few partials.
const SPLIT: u64 = 256;
/// Threads per workgroup.
const THREADS: u64 = 256;

/// The refusal of a node whose threads would loop `iterations` times over `what`.
pub fn too_long(node: &Node, what: &str, size: u64, iterations: u64) -> String {
    alloc::format!(
        "op {} (node '{}') loops over {what} ({size}) in one GPU thread, {iterations} iterations, more than the {LOOP_LIMIT} a software Vulkan allows (Mesa's lavapipe silently stops a thread's loops near 65535; plans placed for a generic GPU keep to it too); use a hardware GPU, a smaller model or batch, or --backend cpu",
        node.op.name(),
        node.name
    )
}

/// How a range of `n` elements, each costing `cost` loop iterations, is cut into blocks of 256
/// threads: `(splits, chunk)` with each block covering `chunk` elements (a multiple of 256) and
/// each thread looping about [`SPLIT`] times (at least once per element it takes).
pub fn split(n: u64, cost: u64) -> (u32, u32) {
    let per_thread = (SPLIT / cost.max(1)).max(1);
    let chunk = per_thread * THREADS;
    (n.div_ceil(chunk).max(1) as u32, chunk.min(u32::MAX as u64 / 2) as u32)
}

/// Words of scratch (after the flag word) the dispatch writes, from its first scratch word.
pub fn scratch_words(l: &Lowered) -> u64 {
    let p = &l.params;
    match l.kernel {
        Kernel::Mse if p[7] == 0 => p[0] as u64,
        Kernel::GradScaleAccumulate => p[0] as u64,
        Kernel::CrossEntropyPartial => 2 * p[0] as u64 + 1,
        Kernel::GroupsWide if p[41] > 1 => p[0] as u64,
        Kernel::MatMul if p.get(32).is_some_and(|&s| s > 1) => p[32] as u64 * p[35] as u64,
        Kernel::ConvGemmGradWeight if p[28] > 1 => p[28] as u64 * p[27] as u64 * p[24] as u64 * p[25] as u64,
        _ => 0,
    }
}

/// The entry point of the split kernels: one workgroup per block, `P[0]` blocks on a 2-D grid of
/// workgroups (the dispatch may round up; the extra workgroups return), and the fixed tree that
/// adds (or takes the maximum of) one value of each of the 256 threads.
pub const BLOCKS: &str = r#"
var<workgroup> part: array<f32, 256>;
fn tree_sum(li: u32, v: f32) -> f32 {
    workgroupBarrier();
    part[li] = v;
    workgroupBarrier();
    for (var w = 128u; w > 0u; w = w >> 1u) {
        if (li < w) { part[li] += part[li + w]; }
        workgroupBarrier();
    }
    return part[0];
}
// The larger of two; with `keep_nan` NaN wins (ReduceMax), else NaN is never larger (softmax).
fn larger(a: f32, b: f32, keep_nan: bool) -> f32 {
    if (keep_nan && (is_nan(a) || is_nan(b))) { return nan(); }
    return select(a, b, b > a);
}
fn tree_max(li: u32, v: f32, keep_nan: bool) -> f32 {
    workgroupBarrier();
    part[li] = v;
    workgroupBarrier();
    for (var w = 128u; w > 0u; w = w >> 1u) {
        if (li < w) { part[li] = larger(part[li], part[li + w], keep_nan); }
        workgroupBarrier();
    }
    return part[0];
}
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let b = wg.y * nw.x + wg.x;
    if (b >= P[0]) { return; }
    body(b, li);
}
"#;

/// `P = [blocks, pred, target, out, F, chunk, splits, direct]`: block `b` sums the squared errors
/// of split `b % splits` (elements `chunk` wide) of group `b / splits` (`F` elements from
/// `g * F`); `direct`: `out[g] = sum / F` (one split per group), else `out[b] = sum` (scratch).
pub const MSE: &str = r#"
fn body(b: u32, li: u32) {
    let F = P[4]; let chunk = P[5]; let splits = P[6];
    let g = b / splits; let s = b % splits;
    let start = g * F;
    let end = start + min(F, (s + 1u) * chunk);
    var acc = 0.0;
    for (var j = start + s * chunk + li; j < end; j += 256u) { let d = M[P[1] + j] - M[P[2] + j]; acc += d * d; }
    let t = tree_sum(li, acc);
    if (li == 0u) {
        if (P[7] != 0u) { M[P[3] + g] = t / f32(F); } else { M[P[3] + b] = t; }
    }
}
"#;

/// `P = [blocks, grad, out, n, chunk, multiplier]`: block `b` writes `out[b]`, the sum of
/// `(multiplier * g)^2` over its `chunk` elements, NaN where one of them is not finite.
pub const GRAD_SCALE_PARTIAL: &str = r#"
fn body(b: u32, li: u32) {
    let end = min(P[3], (b + 1u) * P[4]); let m = pf(5);
    var s = 0.0; var ok = true;
    for (var j = b * P[4] + li; j < end; j += 256u) {
        let v = M[P[1] + j];
        if (!finite(v)) { ok = false; }
        let t = m * v;
        s += t * t;
    }
    if (!ok) { s = nan(); }
    let t = tree_sum(li, s);
    if (li == 0u) { M[P[2] + b] = t; }
}
"#;

/// `P = [blocks, logits, labels, out, positions, C, ignore_index, chunk, count_only]`: block `b`
/// writes `out[b]`, the loss summed over the kept positions of its `chunk` (0 with
/// `count_only`), and `out[blocks + b]` their count; `position_loss` is `kernels.rs`'s
/// `POSITION_LOSS`.
pub const CROSS_ENTROPY_PARTIAL: &str = r#"
fn kept(p: u32) -> bool { return bitcast<i32>(label(P[2], p)) != bitcast<i32>(P[6]); }
fn body(b: u32, li: u32) {
    let end = min(P[4], (b + 1u) * P[7]);
    var total = 0.0; var count = 0.0;
    for (var p = b * P[7] + li; p < end; p += 256u) {
        if (kept(p)) {
            if (P[8] == 0u) { total += position_loss(p); }
            count += 1.0;
        }
    }
    let t = tree_sum(li, total);
    let c = tree_sum(li, count);
    if (li == 0u) { M[P[3] + b] = t; M[P[3] + P[0] + b] = c; }
}
"#;

/// `P = [1, src, count, out, den, divisor, mode]`, one workgroup: `t` the sum of `src[0..count]`,
/// `c` that of `den[0..count]` (0 for NONE). Modes: 0 `out = t / divisor`, 1 `out = t / max(c,
/// 1)`, 2 `out += t` (the gradient scale's sum of squares; NaN stays NaN), 3 `out = NaN` where
/// `t` is NaN (a non-finite gradient without a max norm), 4 `out = c`.
pub const SUM_PARTIALS: &str = r#"
fn body(b: u32, li: u32) {
    var s = 0.0; var d = 0.0;
    for (var k = li; k < P[2]; k += 256u) {
        s += M[P[1] + k];
        if (P[4] != NONE) { d += M[P[4] + k]; }
    }
    let t = tree_sum(li, s);
    let c = tree_sum(li, d);
    if (li != 0u) { return; }
    switch P[6] {
        case 0u: { M[P[3]] = t / pf(5); }
        case 1u: { M[P[3]] = t / max(c, 1.0); }
        case 2u: { M[P[3]] = M[P[3]] + t; }
        case 3u: { if (is_nan(t)) { M[P[3]] = nan(); } }
        case 4u: { M[P[3]] = c; }
        default: {}
    }
}
"#;

/// `GROUPS` (`families.rs`, same `P` words 0..=40) with a workgroup per group, `P[41]` splits of
/// the group, `P[42]` elements per split, `P[43]` the scratch (NONE with one split): block `b` is
/// split `b % splits` of group `b / splits`. Sum, mean and max with several splits write their
/// partial to `scratch[b]` (`GROUPS_FINISH` combines them); every other mode has one split. Each
/// element's offset is computed once a pass.
pub const GROUPS_WIDE: &str = r#"
fn finish(g: u32, b: u32, li: u32, t: f32, n: u32) {
    if (li != 0u) { return; }
    if (P[41] > 1u) { M[P[43] + b] = t; return; }
    M[P[3] + g] = select(t, t / f32(n), P[1] == 1u);
}
fn body(b: u32, li: u32) {
    var n = 1u;
    for (var k = 0u; k < P[7]; k++) { n = n * P[25u + k]; }
    let splits = P[41];
    let g = b / splits; let s = b % splits;
    let lo = s * P[42] + li; let hi = min(n, (s + 1u) * P[42]);
    let base = group_base(g);
    let x = P[2] + base; let y = P[3] + base;
    let mode = P[1];
    if (mode <= 1u) {
        var acc = 0.0;
        for (var j = lo; j < hi; j += 256u) { acc += M[x + at(j)]; }
        finish(g, b, li, tree_sum(li, acc), n);
    } else if (mode == 2u) {
        var m = bitcast<f32>(0xff800000u);
        for (var j = lo; j < hi; j += 256u) { let v = M[x + at(j)]; if (v > m || is_nan(v)) { m = v; } }
        finish(g, b, li, tree_max(li, m, true), n);
    } else if (mode == 3u) {
        let dy = M[P[4] + g]; let m = M[P[5] + g];
        var ties = 0.0;
        for (var j = lo; j < hi; j += 256u) { if (M[x + at(j)] == m) { ties += 1.0; } }
        let tied = tree_sum(li, ties);
        var share = nan(); var other = nan();
        if (tied > 0.0) { share = dy / tied; other = 0.0; }
        for (var j = lo; j < hi; j += 256u) { let a = at(j); M[y + a] = select(other, share, M[x + a] == m); }
    } else if (mode == 5u || mode == 6u) {
        var m = bitcast<f32>(0xff800000u);
        for (var j = lo; j < hi; j += 256u) { let v = M[x + at(j)]; if (v > m) { m = v; } }
        m = tree_max(li, m, false);
        var acc = 0.0;
        if (mode == 5u) {
            for (var j = lo; j < hi; j += 256u) { let a = at(j); let e = exp(M[x + a] - m); M[y + a] = e; acc += e; }
            let total = tree_sum(li, acc);
            for (var j = lo; j < hi; j += 256u) { let a = at(j); M[y + a] = M[y + a] / total; }
        } else {
            for (var j = lo; j < hi; j += 256u) { acc += exp(M[x + at(j)] - m); }
            let ls = m + log(tree_sum(li, acc));
            for (var j = lo; j < hi; j += 256u) { let a = at(j); M[y + a] = M[x + a] - ls; }
        }
    } else if (mode == 7u || mode == 8u) {
        let out = P[3] + base; let yv = P[5] + base;
        var acc = 0.0;
        if (mode == 7u) {
            for (var j = lo; j < hi; j += 256u) { let a = at(j); acc += M[x + a] * M[yv + a]; }
            let total = tree_sum(li, acc);
            for (var j = lo; j < hi; j += 256u) { let a = at(j); M[out + a] = M[yv + a] * (M[x + a] - total); }
        } else {
            for (var j = lo; j < hi; j += 256u) { acc += M[x + at(j)]; }
            let total = tree_sum(li, acc);
            for (var j = lo; j < hi; j += 256u) { let a = at(j); M[out + a] = M[x + a] - exp(M[yv + a]) * total; }
        }
    }
}
"#;

/// `P = [groups, mode, scratch, y, splits, n]`, one thread per group: combines the group's
/// `splits` partials of `GROUPS_WIDE` in order (mode 0 sum, 1 mean of `n` elements, 2 max with
/// NaN winning).
pub const GROUPS_FINISH: &str = r#"
fn body(g: u32) {
    let first = P[2] + g * P[4];
    var r = M[first];
    for (var s = 1u; s < P[4]; s++) {
        let v = M[first + s];
        if (P[1] == 2u) {
            if (is_nan(r) || is_nan(v)) { r = nan(); } else { r = select(r, v, v > r); }
        } else {
            r += v;
        }
    }
    if (P[1] == 1u) { r = r / f32(P[5]); }
    M[P[3] + g] = r;
}
"#;

/// BatchNorm statistics with one block per channel (`P[0]` = C blocks, `BN_PARAMS` words): the
/// channel's `N * inner` elements strided over the threads, mean then squared deviations, each
/// added in the fixed tree. Writes what `BATCH_NORM_STATS` writes.
pub const BATCH_NORM_STATS_WIDE: &str = r#"
fn element(p: Bn, c: u32, e: u32) -> u32 { return P[1] + ((e / p.inner) * p.C + c) * p.inner + e % p.inner; }
fn body(c: u32, li: u32) {
    let p = bn();
    let count = p.N * p.inner;
    let m = f32(count);
    var s = 0.0;
    for (var e = li; e < count; e += 256u) { s += M[element(p, c, e)]; }
    let mean = tree_sum(li, s) / m;
    var q = 0.0;
    for (var e = li; e < count; e += 256u) { let d = M[element(p, c, e)] - mean; q += d * d; }
    let squares = tree_sum(li, q);
    if (li != 0u) { return; }
    bn_store_stats(p, c, mean, squares, count);
}
"#;

/// BatchNorm gradient sums with one block per channel (`P[0]` = C blocks): what
/// `BATCH_NORM_GRAD_SUMS` writes, its two sums strided over the threads and added in the tree.
pub const BATCH_NORM_GRAD_SUMS_WIDE: &str = r#"
fn body(c: u32, li: u32) {
    let p = bn();
    let mean = M[P[3] + c];
    let invstd = bn_invstd(p, M[P[4] + c]);
    let count = p.N * p.inner;
    var sum_dy = 0.0; var sum_dy_xhat = 0.0;
    for (var e = li; e < count; e += 256u) {
        let k = ((e / p.inner) * p.C + c) * p.inner + e % p.inner;
        let g = M[P[1] + k];
        sum_dy += g;
        sum_dy_xhat += g * (M[P[2] + k] - mean) * invstd;
    }
    let dx = tree_sum(li, sum_dy_xhat);
    let db = tree_sum(li, sum_dy);
    if (li == 0u) { M[P[5] + c] = dx; M[P[6] + c] = db; }
}
"#;

/// The direct weight gradient (`CONV2D_GRAD_WEIGHT`'s `P`) with one block per weight element
/// (`P[0]` of them): the `N * OH * OW` positions strided over the threads, added in the tree.
pub const CONV2D_GRAD_WEIGHT_WIDE: &str = r#"
fn body(i: u32, li: u32) {
    let p = conv();
    let Cg = p.C / p.G; let Og = p.O / p.G;
    let kw = i % p.KW; let kh = (i / p.KW) % p.KH; let cg = (i / (p.KW * p.KH)) % Cg; let o = i / (p.KW * p.KH * Cg) + P[20];
    let c = (o / Og) * Cg + cg;
    let count = p.N * p.OH * p.OW;
    var s = 0.0;
    for (var e = li; e < count; e += 256u) {
        let ow = e % p.OW; let oh = (e / p.OW) % p.OH; let n = e / (p.OW * p.OH);
        let ih = i32(oh * p.sh + kh * p.dh) - i32(p.pt);
        let iw = i32(ow * p.sw + kw * p.dw) - i32(p.pl);
        if (ih < 0 || ih >= i32(p.H) || iw < 0 || iw >= i32(p.W)) { continue; }
        s += M[P[1] + ((n * p.O + o) * p.OH + oh) * p.OW + ow] * M[P[2] + ((n * p.C + c) * p.H + u32(ih)) * p.W + u32(iw)];
    }
    let t = tree_sum(li, s);
    if (li == 0u) { M[P[3] + i] = t; }
}
"#;

/// A sum of `count` partials at `src` (and of `den`'s, or NONE) into `out` ([`SUM_PARTIALS`]).
pub fn sum_partials(src: u32, count: u32, out: u32, den: u32, divisor: f32, mode: u32) -> Lowered {
    Lowered { kernel: Kernel::SumPartials, params: alloc::vec![1, src, count, out, den, divisor.to_bits(), mode] }
}

/// The dispatches of a sum of squared errors (`P` of [`MSE`]): `groups` groups of `features`
/// elements at `pred`/`target`; `mean` (one group): `out = sum / total`; else `out[g] = sum_g /
/// features`.
pub fn mse(at: &Addresses<'_>, pred: u32, target: u32, out: u32, groups: u32, features: u32, mean: bool) -> alloc::vec::Vec<Lowered> {
    let scratch = at.scratch();
    let (splits, chunk) = split(features as u64, 1);
    let direct = !mean && splits == 1;
    let dest = if direct { out } else { scratch };
    let partial =
        Lowered { kernel: Kernel::Mse, params: alloc::vec![groups * splits, pred, target, dest, features, chunk, splits, direct as u32] };
    if direct {
        alloc::vec![partial]
    } else if mean {
        alloc::vec![partial, sum_partials(scratch, splits, out, NONE, features as f32, 0)]
    } else {
        alloc::vec![partial, Lowered { kernel: Kernel::GroupsFinish, params: alloc::vec![groups, 1, scratch, out, splits, features] }]
    }
}
