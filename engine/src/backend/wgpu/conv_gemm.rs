//! Implicit-GEMM convolutions: the forward, the input gradient and the weight gradient (and the
//! fused `Conv2dBiasAct` / `Conv2dGradInputMasked`) as tiled matrix products over a virtual
//! im2col matrix that is never materialised.
//!
//! One skeleton ([`SKELETON`], the tiling of `MATMUL_TILED` in `families.rs`, with its register
//! micro-tile `MICRO_TILE`): a workgroup computes a 32x32 tile of one group's `rows x cols` output,
//! each of its 16x16 invocations a 2x2 register block, walking the reduction depth `K` in slices of
//! 16 that the workgroup stages in shared memory. The three convolutions differ only in their
//! functions `a_at` (row `r`, depth `k`), `b_col` and `b_at` (column `c`, decoded once per thread
//! into a base and a window corner, then depth `k`) and `store`, which map GEMM coordinates onto
//! the NCHW tensors (a load outside the padded input reads 0):
//!
//! | kernel | rows | cols | K | A | B |
//! |---|---|---|---|---|---|
//! | forward | O/G | N*OH*OW | C/G*KH*KW | w | im2col(x) |
//! | input gradient | C/G | N*H*W | O/G*KH*KW | w (transposed per tap) | dy gathered per tap |
//! | weight gradient | O/G (or the node's rows) | C/G*KH*KW | N*OH*OW | dy | im2col(x) transposed |
//!
//! Groups are the GEMM's batch (one set of tiles per group). Depthwise-like convolutions (more
//! than one group, one input channel per group) keep the direct kernels of `kernels.rs`: their per-group
//! GEMM is a single row, nothing to tile. Each output is still one running sum over k in the
//! direct kernel's order (channel, kernel row, kernel column; or n, oh, ow), padded taps adding
//! an exact 0 product. The weight gradient's depth grows with the batch; past what one thread may
//! loop (Mesa's lavapipe stops near 65535 iterations, `wide.rs`) it is split ([`split_k`]): each
//! split's sums, then the splits added in order.

use alloc::string::String;

use super::kernels::{Kernel, Lowered};

/// The GEMM's shape at parameter words 24-27: rows, cols, depth, groups. Words 0-19 are the
/// convolution's (`CONV_PARAMS` in `kernels.rs`), 20-23 each kernel's own (bias and activation;
/// the mask; the weight gradient's first row, row count and row offset inside a group), 28-30
/// the weight gradient's split-K ([`split_k`]: splits, depth per split, scratch; 0 for none).
const SKELETON: &str = r#"
/// A B column decoded once per thread (its columns do not change along the depth): a base word
/// and the row and column where its window starts (`b_col` of each kernel says which).
struct Col { base: u32, y: i32, x: i32 }
/// Element `e` (0..512) of the A and B tiles of the slice at depth `k0`.
fn load(p: Conv, g: u32, e: u32, r0: u32, c0: u32, k0: u32, col: Col) {
    let rows = P[24]; let cols = P[25]; let K = P[26];
    let r = r0 + e / 16u; let k = k0 + e % 16u;
    var v = 0.0;
    if (r < rows && k < K) { v = a_at(p, g, r, k); }
    As[e] = v;
    let bd = b_depth(e); let bn = b_column(e);
    let kb = k0 + bd;
    var w = 0.0;
    if (kb < K && c0 + bn < cols) { w = b_at(p, kb, col); }
    Bs[bd * 32u + bn] = w;
}
/// The kernel's store, or with split-K the split's partial sum into the scratch (`P[30]`), at
/// `ks * G*rows*cols + (g * rows + r) * cols + c` (`ks` the split).
fn put(p: Conv, g: u32, r: u32, c: u32, s: f32, ks: u32) {
    if (P[28] > 1u) {
        M[P[30] + ((ks * P[27] + g) * P[24] + r) * P[25] + c] = s;
    } else {
        store(p, g, r, c, s);
    }
}
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let flat = wg.y * nw.x + wg.x;
    if (flat >= P[0] / 256u) { return; }
    let p = conv();
    let rows = P[24]; let cols = P[25]; let K = P[26];
    let br = (rows + 31u) / 32u; let bc = (cols + 31u) / 32u;
    // Split-K (`P[28]` > 1 splits of `P[29]` depth each): the tiles of each split in turn.
    let tiles = P[27] * br * bc;
    let ks = flat / tiles; let block = flat % tiles;
    var k_lo = 0u; var k_hi = K;
    if (P[28] > 1u) { k_lo = ks * P[29]; k_hi = min(K, k_lo + P[29]); }
    let g = block / (br * bc); let t = block % (br * bc);
    let r0 = (t / bc) * 32u; let c0 = (t % bc) * 32u;
    let tx = li % 16u; let ty = li / 16u;
    // Each thread loads tile elements li and li + 256: their B columns, decoded once.
    let col0 = b_col(p, g, min(c0 + b_column(li), cols - 1u));
    let col1 = b_col(p, g, min(c0 + b_column(li + 256u), cols - 1u));
    var s = Block(0.0, 0.0, 0.0, 0.0);
    for (var k0 = k_lo; k0 < k_hi; k0 += 16u) {
        load(p, g, li, r0, c0, k0, col0);
        load(p, g, li + 256u, r0, c0, k0, col1);
        workgroupBarrier();
        s = multiply_slice(s, tx, ty, min(16u, K - k0));
        workgroupBarrier();
    }
    let r = r0 + ty * 2u; let c = c0 + tx * 2u;
    if (r < rows && c < cols) { put(p, g, r, c, s.s00, ks); }
    if (r < rows && c + 1u < cols) { put(p, g, r, c + 1u, s.s01, ks); }
    if (r + 1u < rows && c < cols) { put(p, g, r + 1u, c, s.s10, ks); }
    if (r + 1u < rows && c + 1u < cols) { put(p, g, r + 1u, c + 1u, s.s11, ks); }
}
"#;

/// Forward: `P[1] = x, P[2] = w, P[3] = y`. A is the weight `[O, C/G*KH*KW]` of the group, B the
/// virtual im2col matrix: depth `k` is (channel in group, kernel row, kernel column), column `c`
/// is (n, oh, ow). `store` is the plain one or, for `Conv2dBiasAct`, `bias_act` (`P[20..24]`).
const FORWARD: &str = r#"
fn a_at(p: Conv, g: u32, r: u32, k: u32) -> f32 {
    let Og = p.O / p.G;
    return M[P[2] + (g * Og + r) * (p.C / p.G) * p.KH * p.KW + k];
}
// Column (n, oh, ow): the group's first input plane of image n, the window's top-left corner.
fn b_col(p: Conv, g: u32, c: u32) -> Col {
    let ow = c % p.OW; let oh = (c / p.OW) % p.OH; let n = c / (p.OW * p.OH);
    return Col((n * p.C + g * (p.C / p.G)) * p.H * p.W, i32(oh * p.sh) - i32(p.pt), i32(ow * p.sw) - i32(p.pl));
}
fn b_at(p: Conv, k: u32, col: Col) -> f32 {
    let kw = k % p.KW; let kh = (k / p.KW) % p.KH; let cg = k / (p.KW * p.KH);
    let ih = col.y + i32(kh * p.dh);
    let iw = col.x + i32(kw * p.dw);
    if (ih < 0 || ih >= i32(p.H) || iw < 0 || iw >= i32(p.W)) { return 0.0; }
    return M[P[1] + col.base + (cg * p.H + u32(ih)) * p.W + u32(iw)];
}
fn out_index(p: Conv, g: u32, r: u32, c: u32) -> u32 {
    let plane = p.OH * p.OW;
    return ((c / plane) * p.O + g * (p.O / p.G) + r) * plane + c % plane;
}
"#;

/// How the workgroup's 256 threads walk the 16x32 B tile (element `e` of 512): along the columns
/// where B's columns are contiguous in memory (the forward's and the input gradient's output
/// pixels), along the depth where its depth is (the weight gradient's `N*OH*OW`).
const B_ALONG_COLUMNS: &str = r#"
fn b_depth(e: u32) -> u32 { return e / 32u; }
fn b_column(e: u32) -> u32 { return e % 32u; }
"#;
const B_ALONG_DEPTH: &str = r#"
fn b_depth(e: u32) -> u32 { return e % 16u; }
fn b_column(e: u32) -> u32 { return e / 16u; }
"#;

const FORWARD_STORE: &str = r#"
fn store(p: Conv, g: u32, r: u32, c: u32, s: f32) {
    M[P[3] + out_index(p, g, r, c)] = s;
}
"#;

/// The bias of output channel `o` added after the whole sum, then the activation (`activate`
/// in `kernels.rs`'s header: act 0 none, 1 ReLU, 2 clip to `[pf(22), pf(23)]`), as the direct
/// `Conv2dBiasAct` does.
const BIAS_ACT_STORE: &str = r#"
fn store(p: Conv, g: u32, r: u32, c: u32, s: f32) {
    let o = g * (p.O / p.G) + r;
    M[P[3] + out_index(p, g, r, c)] = activate(s + M[P[20] + o], P[21], pf(22), pf(23));
}
"#;

/// Input gradient: `P[1] = dy, P[2] = w, P[3] = dx`. Row `r` is the input channel in the group,
/// column `c` is (n, ih, iw), depth `k` is (output channel in group, kernel row, kernel column):
/// B reads the `dy` element that tap reaches (0 where the stride skips it or it falls outside).
const GRAD_INPUT: &str = r#"
fn a_at(p: Conv, g: u32, r: u32, k: u32) -> f32 {
    let taps = p.KH * p.KW;
    let og = k / taps;
    return M[P[2] + ((g * (p.O / p.G) + og) * (p.C / p.G) + r) * taps + k % taps];
}
// Column (n, ih, iw): the group's first dy plane of image n, the padded input position.
fn b_col(p: Conv, g: u32, c: u32) -> Col {
    let iw = c % p.W; let ih = (c / p.W) % p.H; let n = c / (p.W * p.H);
    return Col((n * p.O + g * (p.O / p.G)) * p.OH * p.OW, i32(ih + p.pt), i32(iw + p.pl));
}
fn b_at(p: Conv, k: u32, col: Col) -> f32 {
    let kw = k % p.KW; let kh = (k / p.KW) % p.KH; let og = k / (p.KW * p.KH);
    let th = col.y - i32(kh * p.dh);
    let tw = col.x - i32(kw * p.dw);
    if (th < 0 || tw < 0 || u32(th) % p.sh != 0u || u32(tw) % p.sw != 0u) { return 0.0; }
    let oh = u32(th) / p.sh; let ow = u32(tw) / p.sw;
    if (oh >= p.OH || ow >= p.OW) { return 0.0; }
    return M[P[1] + col.base + (og * p.OH + oh) * p.OW + ow];
}
fn in_index(p: Conv, g: u32, r: u32, c: u32) -> u32 {
    let plane = p.H * p.W;
    return ((c / plane) * p.C + g * (p.C / p.G) + r) * plane + c % plane;
}
"#;

const GRAD_INPUT_STORE: &str = r#"
fn store(p: Conv, g: u32, r: u32, c: u32, s: f32) {
    M[P[3] + in_index(p, g, r, c)] = s;
}
"#;

/// The store masked as `MASK_GRAD` masks: `P[20]` holds the packed bits, one per `dx` element.
const GRAD_INPUT_MASKED_STORE: &str = r#"
fn store(p: Conv, g: u32, r: u32, c: u32, s: f32) {
    let i = in_index(p, g, r, c);
    let bit = (bitcast<u32>(M[P[20] + i / 32u]) >> (i % 32u)) & 1u;
    M[P[3] + i] = select(0.0, s, bit == 1u);
}
"#;

/// Weight gradient: `P[1] = dy, P[2] = x, P[3] = dw`. Row `r` is the output channel
/// `g * O/G + P[22] + r`, column `c` is (channel in group, kernel row, kernel column), depth `k`
/// is (n, oh, ow). `dw` holds the rows `P[20]..P[20] + P[21]` of the full gradient (all of them
/// but for `Conv2dGradWeightRows`); rows outside are computed by no tile (one group) or not
/// stored (several groups).
const GRAD_WEIGHT: &str = r#"
fn a_at(p: Conv, g: u32, r: u32, k: u32) -> f32 {
    let plane = p.OH * p.OW;
    let o = g * (p.O / p.G) + P[22] + r;
    return M[P[1] + ((k / plane) * p.O + o) * plane + k % plane];
}
// Column (channel in group, kh, kw): its input plane in image 0, the tap's offset from a window's
// top-left corner.
fn b_col(p: Conv, g: u32, c: u32) -> Col {
    let kw = c % p.KW; let kh = (c / p.KW) % p.KH; let cg = c / (p.KW * p.KH);
    return Col((g * (p.C / p.G) + cg) * p.H * p.W, i32(kh * p.dh) - i32(p.pt), i32(kw * p.dw) - i32(p.pl));
}
fn b_at(p: Conv, k: u32, col: Col) -> f32 {
    let ow = k % p.OW; let oh = (k / p.OW) % p.OH; let n = k / (p.OW * p.OH);
    let ih = col.y + i32(oh * p.sh);
    let iw = col.x + i32(ow * p.sw);
    if (ih < 0 || ih >= i32(p.H) || iw < 0 || iw >= i32(p.W)) { return 0.0; }
    return M[P[2] + n * p.C * p.H * p.W + col.base + u32(ih) * p.W + u32(iw)];
}
fn store(p: Conv, g: u32, r: u32, c: u32, s: f32) {
    let o = g * (p.O / p.G) + P[22] + r;
    if (o < P[20] || o >= P[20] + P[21]) { return; }
    M[P[3] + (o - P[20]) * P[25] + c] = s;
}
"#;

/// The split-K weight gradient's second pass: one thread per element `(g, r, c)` of the GEMM's
/// `G x rows x cols` output (`P[0]` of them, the GEMM's other words as its own) adds the
/// `P[28]` splits' partials in split order and stores the sum as the GEMM would.
const SPLIT_FINISH: &str = r#"
struct Col { base: u32, y: i32, x: i32 }
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = (wg.y * nw.x + wg.x) * 256u + li;
    if (i >= P[0]) { return; }
    let rows = P[24]; let cols = P[25];
    let c = i % cols; let r = (i / cols) % rows; let g = i / (cols * rows);
    var s = 0.0;
    for (var k = 0u; k < P[28]; k++) { s += M[P[30] + k * P[0] + i]; }
    store(conv(), g, r, c, s);
}
"#;

/// The most depth one split walks (here and in `families::split_matmul`): 2048 slices of 16, 17
/// loop iterations each here and 19 in `MATMUL_TILED` (its tile loads loop twice), about 39000,
/// well within `wide::LOOP_LIMIT`.
pub(super) const SPLIT_DEPTH: u32 = 2048 * 16;

/// The weight gradient `gemm` (from [`tile`]) with its depth `N*OH*OW` cut into the fewest splits
/// of at most [`SPLIT_DEPTH`]: each split's tiles write partial sums to `scratch`, then
/// [`SPLIT_FINISH`] adds them in order. Unchanged (one dispatch) where the depth fits.
pub(super) fn split_k(mut gemm: Lowered, scratch: u32) -> alloc::vec::Vec<Lowered> {
    let depth = gemm.params[26];
    let splits = depth.div_ceil(SPLIT_DEPTH);
    if splits <= 1 {
        return alloc::vec![gemm];
    }
    let outputs = gemm.params[27] * gemm.params[24] * gemm.params[25];
    gemm.params[0] *= splits;
    gemm.params[28..31].copy_from_slice(&[splits, SPLIT_DEPTH, scratch]);
    let mut finish = Lowered { kernel: Kernel::ConvGemmSplitFinish, params: gemm.params.clone() };
    finish.params[0] = outputs;
    alloc::vec![gemm, finish]
}

/// The WGSL of one of the implicit-GEMM kernels, after `header` (bindings) and `conv_params`
/// (the `Conv` struct).
pub(super) fn source(kernel: Kernel, header: &str, conv_params: &str) -> String {
    let parts: &[&str] = match kernel {
        Kernel::ConvGemm => &[FORWARD, FORWARD_STORE, B_ALONG_COLUMNS],
        Kernel::ConvGemmBiasAct => &[FORWARD, BIAS_ACT_STORE, B_ALONG_COLUMNS],
        Kernel::ConvGemmGradInput => &[GRAD_INPUT, GRAD_INPUT_STORE, B_ALONG_COLUMNS],
        Kernel::ConvGemmGradInputMasked => &[GRAD_INPUT, GRAD_INPUT_MASKED_STORE, B_ALONG_COLUMNS],
        Kernel::ConvGemmGradWeight => &[GRAD_WEIGHT, B_ALONG_DEPTH],
        Kernel::ConvGemmSplitFinish => return alloc::format!("{header}{conv_params}{GRAD_WEIGHT}{SPLIT_FINISH}"),
        _ => unreachable!("{} is not an implicit-GEMM kernel", kernel.name()),
    };
    let mut s = String::from(header);
    s.push_str(conv_params);
    for part in parts {
        s.push_str(part);
    }
    s.push_str(super::families::MICRO_TILE);
    s.push_str(SKELETON);
    s
}

/// Whether a convolution takes the implicit-GEMM path: all but depthwise-like ones (groups > 1
/// with one input channel per group), which keep the direct kernels.
pub(super) fn applies(channels: usize, groups: usize) -> bool {
    groups == 1 || channels.checked_div(groups).is_some_and(|per_group| per_group > 1)
}

/// `direct` (a direct kernel's lowering, `P` words 0-19 as `CONV_PARAMS`, its own words at 20-23)
/// turned into the implicit-GEMM kernel `kernel`: the GEMM shape at words 24-27 and the thread
/// count (256 per 32x32 tile) at word 0. For the weight gradient, `rows` is the node's first row
/// and row count.
pub(super) fn tile(direct: Lowered, kernel: Kernel, rows: Option<[usize; 2]>) -> Lowered {
    let mut p = direct.params;
    p.resize(31, 0);
    let [n, c, h, w, o, oh, ow, kh, kw] = [p[4], p[5], p[6], p[7], p[8], p[9], p[10], p[11], p[12]];
    // Validated plans have groups >= 1; `max` keeps a malformed one from dividing by zero here.
    let g = p[19].max(1);
    let (cg, og) = (c / g, o / g);
    let (m, cols, depth) = match kernel {
        Kernel::ConvGemm | Kernel::ConvGemmBiasAct => (og, n * oh * ow, cg * kh * kw),
        Kernel::ConvGemmGradInput | Kernel::ConvGemmGradInputMasked => (cg, n * h * w, og * kh * kw),
        _ => {
            let [start, count] = rows.map_or([0, o], |[s, e]| [s as u32, (e - s) as u32]);
            p[20] = start;
            p[21] = count;
            // One group: tiles over the node's rows only. Several: every row of each group, the
            // stores outside the node's rows skipped.
            let (m, offset) = if g == 1 { (count, start) } else { (og, 0) };
            p[22] = offset;
            (m, cg * kh * kw, n * oh * ow)
        }
    };
    p[24..28].copy_from_slice(&[m, cols, depth, g]);
    p[0] = g * m.div_ceil(32) * cols.div_ceil(32) * 256;
    Lowered { kernel, params: p }
}
