//! Winograd F(4x4, 3x3) for the larger planes of the convolutions that [`super::winograd`]
//! takes: 36 products of `C`-deep dot products per 4x4 output tile (2.25 per output, against
//! F(2x2, 3x3)'s 4 and im2col's 9), and fewer transformed values per output (36 per 16 outputs,
//! F(2x2)'s 16 per 4).
//!
//! The forward pass, the input gradient (the forward pass on `dy` with flipped weights) and the
//! weight gradient ([`grad_weight`], the adjoint) have the structure of F(2x2)'s
//! (see `winograd.rs`). The forward pass: the weights transformed once per call
//! (`U[k][xi][c] = (G g G^T)[xi]`, `xi` one of 36 positions), then per block of whole tile rows
//! the input tiles transformed (`V[c][xi][t] = (B^T d B)[xi]`, `d` the 6x6 input tile, tiles 4
//! apart, zero outside the input), 36 independent gemms `M[xi] = U[.][xi] @ V[.][xi]`, and each
//! output channel's tiles transformed back (`A^T m A`, 4x4) into its planes. The matrices are
//! Lavin and Gray's (interpolation points 0, 1, -1, 2, -2 and infinity):
//!
//! ```text
//! B^T = [4  0 -5  0 1 0]   G = [ 1/4     0    0]   A^T = [1 1  1 1  1 0]
//!       [0 -4 -4  1 1 0]       [-1/6 -1/6 -1/6]          [0 1 -1 2 -2 0]
//!       [0  4 -4 -1 1 0]       [-1/6  1/6 -1/6]          [0 1  1 4  4 0]
//!       [0 -2 -1  2 1 0]       [1/24 1/12  1/6]          [0 1 -1 8 -8 1]
//!       [0  2 -1 -2 1 0]       [1/24 -1/12 1/6]
//!       [0  4  0 -5 0 1]       [   0     0    1]
//! ```
//!
//! The transforms are plain multiplies and adds (no FMA), computed the same way on every
//! instruction-set path ([`multiversion`]) and thread, and the gemm does not depend on the
//! thread count, so neither do the results. The transforms multiply by up to 8 (F(2x2)'s only
//! add and halve), so the rounding is larger: against an f64 sum its RMS error is 1.1e-6 to
//! 2.3e-6 of the output's RMS, 4x to 7x im2col's and F(2x2)'s (`winograd_forward_rounding` in
//! `engine/tests/fast_kernels.rs`), and single elements reach 3.7e-5 of it (`cpu_conv.rs`); the
//! weight gradient's RMS error is 2.0e-6 to 2.3e-6 of its RMS, about 6x im2col's
//! (`winograd_weight_gradient_rounding`).
//!
//! Speed, one thread (`winograd_speed` in `engine/tests/fast_kernels.rs`, thread CPU time):
//! ResNet-18's 64x32x32 layer at batch 8 ran 1.43x (forward) and 1.45x (input gradient) as
//! fast as F(2x2), its 128x16x16 layer 1.33x and 1.03x; on two threads (wall clock) the weight
//! gradients ran 1.46x and 1.21x as fast as F(2x2)'s. With F(2x2)'s blocks of tile rows and
//! the weights packed per block, F(4x4) had been slower than F(2x2), hence [`Packed`] and the
//! evened, larger blocks.

use super::par::{for_each_chunk, multiversion};
use super::sgemm::{SourceA, MR};
#[cfg(target_arch = "x86_64")]
use super::winograd::inside;
use super::winograd::{finish_weight_gradient, load_lanes, store_lanes, Variant, Weights, LANES};
use crate::kernels::conv_geometry::ConvGeometry as Geometry;

/// Transformed values per tile.
const XI: usize = 36;

/// Upper bound of a block's transformed inputs and products together, in f32 elements (4 MiB,
/// twice F(2x2)'s: with 36 values per tile against 16, a block then holds about as many tiles as
/// F(2x2)'s, so its products are about as wide).
const BLOCK_ELEMS: usize = 1 << 20;

/// Whether a convolution that F(2x2) takes ([`super::winograd::applies`]) is computed with
/// F(4x4) instead: output planes of at least [`MIN_SIDE`] on both sides, where the 4x4 tiles
/// waste little on the edges.
pub(super) fn applies(g: &Geometry) -> bool {
    g.ho >= MIN_SIDE && g.wo >= MIN_SIDE
}

/// The smallest output height and width F(4x4) is used for.
const MIN_SIDE: usize = 16;

/// Whether the convolutions that [`applies`] to use F(4x4) (the default); off, they use F(2x2).
/// For comparing the two in one process: workspace sizes count the larger of the two.
static ENABLED: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(true);

/// Enables or disables F(4x4) process-wide (see [`ENABLED`]); for benchmarks and tests.
pub fn set_winograd_f4(enabled: bool) {
    ENABLED.store(enabled, core::sync::atomic::Ordering::Relaxed);
}

pub(super) fn enabled() -> bool {
    ENABLED.load(core::sync::atomic::Ordering::Relaxed)
}

/// Winograd F(4x4, 3x3) for [`super::winograd`]'s drivers.
pub(super) struct F4;

impl Variant for F4 {
    const SIDE: usize = 4;
    const XI: usize = XI;
    const BLOCK_ELEMS: usize = BLOCK_ELEMS;
    fn weights_elems(g: &Geometry) -> usize {
        XI * g.o.div_ceil(MR) * MR * g.c
    }
    fn transform_weights(g: &Geometry, w: &[f32], weights: Weights, u: &mut [f32], threads: usize) {
        // In gemm's packed layout, a row sliver of `MR` output channels at a time.
        for_each_chunk(threads, u, XI * g.c * MR, XI * 8 * g.c * MR, |s, us| transform_kernels(g, w, weights, s, us));
    }
    fn weights_operand<'a>(g: &Geometry, u: &'a [f32], xi: usize) -> impl SourceA + 'a {
        Packed { data: &u[xi * g.c * MR..], rows: g.o, depth: g.c, sliver_stride: XI * g.c * MR }
    }
    fn input_tile_row(g: &Geometry, plane: &[f32], th: usize, tiles_w: usize, vc: &mut [f32], tiles: usize, first: usize) {
        input_tile_row(g, plane, th, tiles_w, vc, tiles, first);
    }
    fn output_tile_row(g: &Geometry, mk: &[f32], stride: usize, first: usize, th: usize, tiles_w: usize, plane: &mut [f32]) {
        output_tile_row(g, mk, stride, first, th, tiles_w, plane);
    }
    fn grad_tile_row(g: &Geometry, plane: &[f32], th: usize, tiles_w: usize, dk: &mut [f32], tiles: usize, first: usize) {
        grad_tile_row(g, plane, th, tiles_w, dk, tiles, first);
    }
    fn finish_weight_gradient(g: &Geometry, sums: &[f32], dw: &mut [f32], threads: usize) {
        finish_weight_gradient::<6>(g, sums, dw, threads, g_transpose);
    }
}

/// `G^T m` for a 6-vector `m` (the adjoint of [`gt`]).
fn g_transpose(m: [f32; 6]) -> [f32; 3] {
    [
        0.25 * m[0] - (m[1] + m[2]) / 6.0 + (m[3] + m[4]) / 24.0,
        (m[2] - m[1]) / 6.0 + (m[3] - m[4]) / 12.0,
        (m[3] + m[4] - m[1] - m[2]) / 6.0 + m[5],
    ]
}

/// `A y` for four lane vectors `y` (the adjoint of [`at`]): 6 values.
#[inline(always)]
fn a_apply(y: &[Lanes; 4]) -> [Lanes; 6] {
    let mut r = [[0.0; LANES]; 6];
    for l in 0..LANES {
        let [y0, y1, y2, y3] = [y[0][l], y[1][l], y[2][l], y[3][l]];
        let (s02, s13) = (y0 + y2, y1 + y3);
        let (e, o) = (y0 + 4.0 * y2, 2.0 * y1 + 8.0 * y3);
        r[0][l] = y0;
        r[1][l] = s02 + s13;
        r[2][l] = s02 - s13;
        r[3][l] = e + o;
        r[4][l] = e - o;
        r[5][l] = y3;
    }
    r
}

multiversion!(
    /// The transformed output-gradient tiles (`A dY A^T`, 4x4 tiles of one channel's `plane`,
    /// zero past the output's edge) of tile row `th` into `dk` (`[36][tiles]`), tiles
    /// `first..first + tiles_w`.
    fn grad_tile_row(g: &Geometry, plane: &[f32], th: usize, tiles_w: usize, dk: &mut [f32], tiles: usize, first: usize) => grad_tile_row_body);

#[inline(always)]
fn grad_tile_row_body<const FMA: bool>(g: &Geometry, plane: &[f32], th: usize, tiles_w: usize, dk: &mut [f32], tiles: usize, first: usize) {
    let wo = g.wo;
    for t0 in (0..tiles_w).step_by(LANES) {
        let lanes = LANES.min(tiles_w - t0);
        // r[b][o][l]: row o of tile t0 + l transformed along the columns (`dY A^T`), value b.
        let mut r = [[[0.0f32; LANES]; 4]; 6];
        for o in 0..4 {
            let oh = 4 * th + o;
            if oh >= g.ho {
                break;
            }
            let q = quads::<FMA>(&plane[oh * wo..(oh + 1) * wo], (4 * t0) as isize);
            let t = a_apply(&[q[0], q[1], q[2], q[3]]);
            for (rb, tb) in r.iter_mut().zip(t) {
                rb[o] = tb;
            }
        }
        // Along the rows (`A (dY A^T)`), each of the 36 values written for the lanes' tiles.
        for (b, rb) in r.iter().enumerate() {
            let t = a_apply(rb);
            for (a, values) in t.iter().enumerate() {
                store_lanes::<FMA>(&mut dk[(a * 6 + b) * tiles + first + t0..][..lanes], values);
            }
        }
    }
}

type Lanes = [f32; LANES];

/// `B^T d` for six lane vectors `d`.
#[inline(always)]
fn bt(d: &[Lanes; 6]) -> [Lanes; 6] {
    let mut r = [[0.0; LANES]; 6];
    for l in 0..LANES {
        let [d0, d1, d2, d3, d4, d5] = [d[0][l], d[1][l], d[2][l], d[3][l], d[4][l], d[5][l]];
        r[0][l] = 4.0 * d0 - 5.0 * d2 + d4;
        r[1][l] = -4.0 * (d1 + d2) + (d3 + d4);
        r[2][l] = 4.0 * (d1 - d2) + (d4 - d3);
        r[3][l] = 2.0 * (d3 - d1) + (d4 - d2);
        r[4][l] = 2.0 * (d1 - d3) + (d4 - d2);
        r[5][l] = 4.0 * d1 - 5.0 * d3 + d5;
    }
    r
}

/// `A^T m` for six lane vectors `m`.
#[inline(always)]
fn at(m: &[Lanes; 6]) -> [Lanes; 4] {
    let mut r = [[0.0; LANES]; 4];
    for l in 0..LANES {
        let [m0, m1, m2, m3, m4, m5] = [m[0][l], m[1][l], m[2][l], m[3][l], m[4][l], m[5][l]];
        let (s12, d12, s34, d34) = (m1 + m2, m1 - m2, m3 + m4, m3 - m4);
        r[0][l] = m0 + s12 + s34;
        r[1][l] = d12 + 2.0 * d34;
        r[2][l] = s12 + 4.0 * s34;
        r[3][l] = d12 + 8.0 * d34 + m5;
    }
    r
}

/// `G w` for three lane vectors `w`.
#[inline(always)]
fn gt(w: &[Lanes; 3]) -> [Lanes; 6] {
    let mut r = [[0.0; LANES]; 6];
    for l in 0..LANES {
        let [w0, w1, w2] = [w[0][l], w[1][l], w[2][l]];
        r[0][l] = 0.25 * w0;
        r[1][l] = -(w0 + w1 + w2) / 6.0;
        r[2][l] = -(w0 - w1 + w2) / 6.0;
        r[3][l] = w0 / 24.0 + w1 / 12.0 + w2 / 6.0;
        r[4][l] = w0 / 24.0 - w1 / 12.0 + w2 / 6.0;
        r[5][l] = w2;
    }
    r
}

/// The transformed weights of one product (`U[.][xi]`, `K x C`) as gemm's left operand, already
/// in its packed layout: row sliver `i` (output channels `i * MR..`) holds every depth, `MR`
/// values each, `sliver_stride` elements after sliver `i - 1` (zero past the last channel). So
/// packing a block of depths is one contiguous copy: the weights are packed once per call, not
/// once per block of tiles.
struct Packed<'a> {
    data: &'a [f32],
    rows: usize,
    depth: usize,
    sliver_stride: usize,
}

impl SourceA for Packed<'_> {
    fn rows(&self) -> usize {
        self.rows
    }
    fn depth(&self) -> usize {
        self.depth
    }
    fn pack(&self, pc: usize, row: usize, _rows: usize, sliver: &mut [f32]) {
        debug_assert_eq!(row % MR, 0);
        sliver.copy_from_slice(&self.data[row / MR * self.sliver_stride + pc * MR..][..sliver.len()]);
    }
}

multiversion!(
    /// Row sliver `s` of the transformed weights (output channels `s * MR..`) into `us`
    /// (`[36][C][MR]`, see [`Packed`]): `(G g G^T)[xi]`, `g` the 3x3 kernel of output channel
    /// `ko` and input channel `ci` as `weights` reads it, zero for channels past the last.
    fn transform_kernels(g: &Geometry, w: &[f32], weights: Weights, s: usize, us: &mut [f32]) => transform_kernels_body);

// Lane `r` of the kernel's nine taps at once: indices read clearer than nested zips.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn transform_kernels_body<const FMA: bool>(g: &Geometry, w: &[f32], weights: Weights, s: usize, us: &mut [f32]) {
    const { assert!(MR <= LANES) };
    let (c, rows) = (g.c, MR.min(g.o - s * MR));
    // The sliver's output channels side by side (lane r: channel s * MR + r), one input channel
    // at a time, so that each transformed value is `MR` consecutive floats of `us`.
    for ci in 0..c {
        // kernel[i][j][r]: row i, column j of the kernel of output channel s * MR + r.
        let mut kernel = [[[0.0f32; LANES]; 3]; 3];
        for r in 0..rows {
            let ko = s * MR + r;
            let taps: &[f32; 9] = match weights {
                Weights::Forward => &w[(ko * c + ci) * 9..][..9],
                Weights::Flipped => &w[(ci * g.o + ko) * 9..][..9],
            }
            .try_into()
            .expect("9 taps");
            let flip = weights == Weights::Flipped;
            for i in 0..3 {
                for j in 0..3 {
                    kernel[i][j][r] = if flip { taps[8 - i * 3 - j] } else { taps[i * 3 + j] };
                }
            }
        }
        // cols[j] = G applied down column j (6 values); then G along each row of the 6x3.
        // (Plain loops: `array::from_fn` closures here stayed calls.)
        let mut cols = [[[0.0f32; LANES]; 6]; 3];
        for (j, col) in cols.iter_mut().enumerate() {
            *col = gt(&[kernel[0][j], kernel[1][j], kernel[2][j]]);
        }
        for a in 0..6 {
            let t = gt(&[cols[0][a], cols[1][a], cols[2][a]]);
            for (b, values) in t.iter().enumerate() {
                // Lanes past `rows` hold zeros (the sliver's padding rows).
                store_lanes::<FMA>(&mut us[((a * 6 + b) * c + ci) * MR..][..MR], values);
            }
        }
    }
}

multiversion!(
    /// The transformed input tiles of tile row `th` of one channel's `plane` into `vc`
    /// (`[36][tiles]`), tiles `first..first + tiles_w`.
    fn input_tile_row(g: &Geometry, plane: &[f32], th: usize, tiles_w: usize, vc: &mut [f32], tiles: usize, first: usize) => input_tile_row_body);

#[inline(always)]
fn input_tile_row_body<const FMA: bool>(
    g: &Geometry,
    plane: &[f32],
    th: usize,
    tiles_w: usize,
    vc: &mut [f32],
    tiles: usize,
    first: usize,
) {
    let (pt, pl) = (g.padding[0] as isize, g.padding[1] as isize);
    let (h, w) = (g.h as isize, g.w);
    for t0 in (0..tiles_w).step_by(LANES) {
        let lanes = LANES.min(tiles_w - t0);
        // d[cc][r][l]: row r, column cc of tile t0 + l (zero outside the plane), a column per
        // argument of `bt`.
        let mut d = [[[0.0f32; LANES]; 6]; 6];
        let col0 = (4 * t0) as isize - pl;
        for r in 0..6 {
            let ih = (4 * th + r) as isize - pt;
            if (0..h).contains(&ih) {
                let row = &plane[ih as usize * w..(ih as usize + 1) * w];
                let q = quads::<FMA>(row, col0);
                for (dc, qc) in d.iter_mut().zip(q) {
                    dc[r] = qc;
                }
            }
        }
        // cols[cc] = B^T down column cc; then B^T along each row. (Plain loops: `array::from_fn`
        // closures here stayed calls.)
        let mut cols = [[[0.0f32; LANES]; 6]; 6];
        for (col, dc) in cols.iter_mut().zip(&d) {
            *col = bt(dc);
        }
        for a in 0..6 {
            let mut row = [[0.0f32; LANES]; 6];
            for (v, col) in row.iter_mut().zip(&cols) {
                *v = col[a];
            }
            let t = bt(&row);
            for (b, values) in t.iter().enumerate() {
                store_lanes::<FMA>(&mut vc[(a * 6 + b) * tiles + first + t0..][..lanes], values);
            }
        }
    }
}

/// The six columns of `LANES` tiles 4 apart in `row` from `start`: lane `l` of column `cc` is
/// `row[start + 4 * l + cc]`, zero where that index is outside the row. With AVX2 (`FMA`, the
/// instance [`multiversion`] compiles for AVX2 and FMA): four masked loads transposed as 8x4,
/// and the last two columns the first two moved by one lane. Moves values only, so every path
/// gives the same bits.
#[inline(always)]
fn quads<const FMA: bool>(row: &[f32], start: isize) -> [Lanes; 6] {
    #[cfg(target_arch = "x86_64")]
    if FMA {
        // SAFETY: `FMA` is true only in the instance compiled for (and run on) AVX2 and FMA.
        return unsafe { quads_avx2(row, start) };
    }
    let at = |j: usize| usize::try_from(start + j as isize).ok().and_then(|i| row.get(i)).copied().unwrap_or(0.0);
    let mut q = [[0.0f32; LANES]; 6];
    for (cc, qc) in q.iter_mut().enumerate() {
        for (l, v) in qc.iter_mut().enumerate() {
            *v = at(4 * l + cc);
        }
    }
    q
}

/// [`quads`] with AVX2.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn quads_avx2(row: &[f32], start: isize) -> [Lanes; 6] {
    use core::arch::x86_64::*;
    let base = row.as_ptr().wrapping_offset(start);
    // SAFETY: a masked load reads only the lanes its mask sets, here indices inside `row`; the
    // others are zero. (`wrapping_offset` may point outside `row`; no lane outside is read.)
    // (No closures here: in this function they stayed calls.)
    let (v0, v1, v2, v3) = unsafe {
        (
            _mm256_maskload_ps(base, inside(start, row.len())),
            _mm256_maskload_ps(base.wrapping_add(8), inside(start + 8, row.len())),
            _mm256_maskload_ps(base.wrapping_add(16), inside(start + 16, row.len())),
            _mm256_maskload_ps(base.wrapping_add(24), inside(start + 24, row.len())),
        )
    };
    // v_i holds tiles 2i and 2i + 1, four columns each: transposed, column cc has the tiles in
    // the lane order 0 2 4 6 1 3 5 7, then permuted into order.
    let (t0, t1) = (_mm256_unpacklo_ps(v0, v1), _mm256_unpackhi_ps(v0, v1));
    let (t2, t3) = (_mm256_unpacklo_ps(v2, v3), _mm256_unpackhi_ps(v2, v3));
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    let c0 = _mm256_permutevar8x32_ps(_mm256_shuffle_ps::<0b01_00_01_00>(t0, t2), order);
    let c1 = _mm256_permutevar8x32_ps(_mm256_shuffle_ps::<0b11_10_11_10>(t0, t2), order);
    let c2 = _mm256_permutevar8x32_ps(_mm256_shuffle_ps::<0b01_00_01_00>(t1, t3), order);
    let c3 = _mm256_permutevar8x32_ps(_mm256_shuffle_ps::<0b11_10_11_10>(t1, t3), order);
    // Columns 4 and 5 are columns 0 and 1 of the next tile: moved down a lane, the last lane
    // from `row[start + 32]` and `row[start + 33]`.
    // (`start + 32 >= 0`: `start` is at least minus the padding, at most 2.)
    let (i32_, i33) = ((start + 32) as usize, (start + 33) as usize);
    let (x32, x33) = (if i32_ < row.len() { row[i32_] } else { 0.0 }, if i33 < row.len() { row[i33] } else { 0.0 });
    let next = _mm256_setr_epi32(1, 2, 3, 4, 5, 6, 7, 7);
    let c4 = _mm256_blend_ps::<0x80>(_mm256_permutevar8x32_ps(c0, next), _mm256_set1_ps(x32));
    let c5 = _mm256_blend_ps::<0x80>(_mm256_permutevar8x32_ps(c1, next), _mm256_set1_ps(x33));
    // SAFETY: a vector of 8 floats is 8 floats.
    unsafe { core::mem::transmute::<[__m256; 6], [Lanes; 6]>([c0, c1, c2, c3, c4, c5]) }
}

multiversion!(
    /// Output tile row `th` of one output channel's `plane` from its products `mk` (`M[xi]` at
    /// `mk[xi * stride + first..]`, tiles `first..first + tiles_w`).
    fn output_tile_row(g: &Geometry, mk: &[f32], stride: usize, first: usize, th: usize, tiles_w: usize, plane: &mut [f32]) => output_tile_row_body);

#[inline(always)]
fn output_tile_row_body<const FMA: bool>(
    g: &Geometry,
    mk: &[f32],
    stride: usize,
    first: usize,
    th: usize,
    tiles_w: usize,
    plane: &mut [f32],
) {
    let wo = g.wo;
    for t0 in (0..tiles_w).step_by(LANES) {
        let lanes = LANES.min(tiles_w - t0);
        // cols[b] = A^T down column b (4 values); then A^T along each row.
        let mut cols = [[[0.0f32; LANES]; 4]; 6];
        for (b, col) in cols.iter_mut().enumerate() {
            let mut column = [[0.0f32; LANES]; 6];
            for (a, v) in column.iter_mut().enumerate() {
                *v = load_lanes::<FMA>(&mk[(a * 6 + b) * stride + first + t0..][..lanes]);
            }
            *col = at(&column);
        }
        let width = (wo - 4 * t0).min(4 * LANES);
        for i in 0..4 {
            let oh = 4 * th + i;
            if oh >= g.ho {
                break;
            }
            let mut row = [[0.0f32; LANES]; 6];
            for (v, col) in row.iter_mut().zip(&cols) {
                *v = col[i];
            }
            let t = at(&row);
            // Tile l's four outputs side by side, written a vector of 8 (two tiles) at a time.
            let mut out = [[0.0f32; LANES]; 4];
            for l in 0..LANES {
                for (j, tj) in t.iter().enumerate() {
                    out[l / 2][4 * (l % 2) + j] = tj[l];
                }
            }
            let dst = &mut plane[oh * wo + 4 * t0..][..width];
            for (chunk, values) in dst.chunks_mut(LANES).zip(&out) {
                store_lanes::<FMA>(chunk, values);
            }
        }
    }
}
