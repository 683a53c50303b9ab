//! Winograd F(2x2, 3x3): stride-1, undilated, ungrouped 3x3 convolutions with 16 products of
//! `C`-deep dot products per 2x2 output tile instead of 36 multiply-adds per input channel.
//!
//! With `g` a 3x3 kernel, `d` a 4x4 input tile and `G`, `B^T`, `A^T` the F(2, 3) matrices below,
//! the 2x2 output tile is `A^T [sum over c of (G g G^T) . (B^T d B)] A` (`.` elementwise). So:
//! - the weights are transformed once per call (they change every training step):
//!   `U[k][xi][c]`, `xi` one of the 16 positions of `G g G^T`;
//! - the output tiles are processed in blocks of whole tile rows (over all samples), sized so
//!   that the block's transformed inputs `V[c][xi][t]` and products `M[xi][k][t]` stay within a
//!   few MiB: for each block, the input tiles are transformed (`B^T d B`, channels split among
//!   the threads), then `M[xi] = U[.][xi] @ V[.][xi]` is 16 independent gemms of `K x C` by
//!   `C x tiles` (pock's sgemm, the products split among the threads), then each output
//!   channel's tiles are transformed back (`A^T m A`) straight into its planes of `y`.
//!
//! The input gradient of such a convolution is the same computation on `dy` with the flipped,
//! transposed weights (`weights: Flipped`), as in `conv.rs`.
//!
//! Convolutions whose output planes are 16x16 or more use F(4x4, 3x3) instead, for all three
//! (`winograd4.rs`: fewer products per output, a larger rounding).
//!
//! The weight gradient ([`grad_weight`]) is the adjoint: `dW = sum over tiles and samples of
//! G^T [(A dY A^T) . (B^T X B)] G`, `dY` the 2x2 tile of the output gradient (zero past the
//! output's edge) and `B^T X B` the forward's input transform. Per block of tile rows the input
//! tiles `V[c][xi][t]` and output-gradient tiles `D[k][xi][t]` are transformed (channels split
//! among the threads), then 16 gemms `M[xi] += D[.][xi] @ V[.][xi]^T` (`K x tiles` by
//! `tiles x C`, one per thread at a time) sum over the blocks in order; at the end each
//! `dw[k][c] = G^T M[.][k][c] G`. The block is the forward's, so its buffers fit the same
//! workspace size. Against an f64 sum its error is 3.9e-7 to 6.6e-7 of the gradient's RMS,
//! 1.1x to 1.8x im2col's (`winograd_weight_gradient_rounding` in `engine/tests/fast_kernels.rs`).
//!
//! The transforms only add, subtract and halve (no FMA), so both instruction-set paths
//! ([`multiversion`]) give the same bits. Every buffer is the node's arena workspace
//! ([`workspace_elems`]), and the block size is a function of the shapes alone, so the
//! compiler's sizing and the kernel always agree. The transforms compute each value the same way
//! on any thread, and the gemm does not depend on the thread count, so results do not either.
//! Rounding: against an f64 reference on random inputs the error is no larger than im2col's
//! (RMS 1.4e-7 to 5e-7 of the output's RMS on 16 to 256 channels, im2col's 2e-7 to 3.4e-7), but
//! it is a different rounding: a training run moves by it as by any other change of summation
//! order.

use super::par::{for_each_chunk, for_each_part, multiversion};
use super::sgemm::{pack_elems_items, product_with, Out, SourceA, SourceB, MR, NR};
use super::winograd4;
use super::Mat;
use crate::kernels::conv_geometry::ConvGeometry as Geometry;

/// Tiles whose transforms are computed side by side (vector lanes).
pub(super) const LANES: usize = 8;

/// Whether the convolution `g` computes its forward pass with Winograd: ungrouped 3x3, stride 1,
/// dilation 1, padding at most 2 on each side (the input gradient of a padding-0 convolution has
/// padding 2), an output of the size the padding gives, and enough channels and output for the
/// transforms to pay for themselves (measured on ResNet-18's layers: below 16 channels the
/// transforms dominate).
pub(super) fn applies(g: &Geometry) -> bool {
    eligible(g) && g.n * g.ho.div_ceil(2) * g.wo.div_ceil(2) >= MIN_TILES
}

/// Whether the convolution `g` has the shape Winograd computes, and enough channels and output for
/// the transforms to pay for themselves (see [`applies`]).
fn eligible(g: &Geometry) -> bool {
    g.groups == 1
        && g.kh == 3
        && g.kw == 3
        && g.stride == [1, 1]
        && g.dilation == [1, 1]
        && g.padding.iter().all(|&p| p <= 2)
        && g.h + g.padding[0] + g.padding[2] == g.ho + 2
        && g.w + g.padding[1] + g.padding[3] == g.wo + 2
        && g.c >= MIN_CHANNELS
        && g.o >= MIN_CHANNELS
        && g.ho * g.wo >= MIN_OUT_PLANE
}

/// The smallest input and output channel counts Winograd is used for.
const MIN_CHANNELS: usize = 16;
/// The smallest output plane Winograd is used for.
const MIN_OUT_PLANE: usize = 16;
/// The fewest output tiles (over all samples) Winograd is used for. Its gemms do `2 * tiles`
/// FLOPs per transformed weight, and the transformed weights (16/9 of the weights) are written,
/// packed and read again, so with few tiles that traffic costs more than the saved products. On
/// one thread (`winograd_speed` in `engine/tests/fast_kernels.rs`, thread CPU time) ResNet-18's
/// stride-1 layers at batch 8 ran at 1.32x to 1.45x of im2col's speed with 2048 and 512 tiles
/// (64x32x32, 128x16x16), 1.02x to 1.11x with 128 (256x8x8) and 0.71x to 0.78x with 32 (512x4x4).
/// After the 12x32 AVX-512 gemm kernel and the faster tile transforms, on two threads in wall
/// clock (`POCK_SPEED_THREADS=2 ... resnet18_conv_speed`), a threshold of 100 made 256x8x8 (128
/// tiles) faster, from 2.15 to 1.83 ms forward and from 2.24 to 2.01 ms for the input gradient
/// (512x4x4, 32 tiles, lost: 2.69 to 2.82 and 3.15 to 3.68 ms). It stays at 256: with 128, one
/// of `tests/onnx_parity.rs`'s small ResNet-18 layers changes algorithm, and its three chaotic
/// steps then move the first layer's BatchNorm bias by 1.3e-3 relative against PyTorch, outside
/// that test's 1e-4.
const MIN_TILES: usize = 256;

/// One Winograd algorithm F(m x m, 3x3): its tiles and transforms. [`convolve_with`] and
/// [`grad_weight_with`] drive either (F(2x2) here, [`winograd4::F4`]).
pub(super) trait Variant {
    /// The output tile's side, `m`.
    const SIDE: usize;
    /// Transformed values per tile, `(m + 2)^2`.
    const XI: usize;
    /// Upper bound of a block's transformed inputs and products together, in f32 elements: they
    /// stay in L2/L3 between the transforms and the gemms.
    const BLOCK_ELEMS: usize;
    /// f32 elements of the transformed weights.
    fn weights_elems(g: &Geometry) -> usize;
    /// Transforms the weights (read as `weights` says) into `u` (at least `weights_elems`).
    fn transform_weights(g: &Geometry, w: &[f32], weights: Weights, u: &mut [f32], threads: usize);
    /// The left operand of product `xi` (`K x C`, the transformed weights at position `xi`).
    fn weights_operand<'a>(g: &Geometry, u: &'a [f32], xi: usize) -> impl SourceA + 'a;
    /// Transforms the input tiles of tile row `th` of one input plane into `vc` (`[XI][tiles]`),
    /// the row's first tile at `first`, zero where a tile reads padding.
    fn input_tile_row(g: &Geometry, plane: &[f32], th: usize, tiles_w: usize, vc: &mut [f32], tiles: usize, first: usize);
    /// Writes output tile row `th` of one output plane from its products `mk` (position `xi`'s
    /// at `mk[xi * stride + first..]`).
    fn output_tile_row(g: &Geometry, mk: &[f32], stride: usize, first: usize, th: usize, tiles_w: usize, plane: &mut [f32]);
    /// Transforms the output-gradient tiles (`A dY A^T`) of tile row `th` of one plane of `dy`
    /// into `dk` (`[XI][tiles]`), zero past the output's edge.
    fn grad_tile_row(g: &Geometry, plane: &[f32], th: usize, tiles_w: usize, dk: &mut [f32], tiles: usize, first: usize);
    /// `dw[ko][ci] = G^T M[.][ko][ci] G` from the weight gradient's summed products (`M[xi]`,
    /// `[K][C]`, `K * C` apart).
    fn finish_weight_gradient(g: &Geometry, sums: &[f32], dw: &mut [f32], threads: usize);
}

/// Winograd F(2x2, 3x3).
struct F2;

impl Variant for F2 {
    const SIDE: usize = 2;
    const XI: usize = 16;
    const BLOCK_ELEMS: usize = 1 << 19;
    fn weights_elems(g: &Geometry) -> usize {
        16 * g.o * g.c
    }
    fn transform_weights(g: &Geometry, w: &[f32], weights: Weights, u: &mut [f32], threads: usize) {
        for_each_chunk(threads, u, 16 * g.c, 16 * 8 * g.c, |k, uk| transform_kernels(g, w, weights, k, uk));
    }
    fn weights_operand<'a>(g: &Geometry, u: &'a [f32], xi: usize) -> impl SourceA + 'a {
        Mat { data: &u[xi * g.c..], rows: g.o, cols: g.c, row_stride: 16 * g.c, col_stride: 1 }
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
        finish_weight_gradient::<4>(g, sums, dw, threads, g_transpose_transform);
    }
}

/// `dw[ko][ci] = G^T M[.][ko][ci] G` for tiles of `P x P` transformed values (`P * P` products
/// `M[xi]`, each `[K][C]`, `K * C` apart), `gt` applying `G^T` to a `P`-vector: along one axis of
/// the `P x P` values, then along the other.
pub(super) fn finish_weight_gradient<const P: usize>(
    g: &Geometry,
    sums: &[f32],
    dw: &mut [f32],
    threads: usize,
    gt: fn([f32; P]) -> [f32; 3],
) {
    let (c, k) = (g.c, g.o);
    for_each_chunk(threads, dw, 9 * c, 4 * P * P * c, |ko, dwk| {
        for ci in 0..c {
            let m = |a: usize, b: usize| sums[(a * P + b) * k * c + ko * c + ci];
            // cols[b][i] = (G^T m)[i][b]; then (G^T m G)[i][j] is G^T applied along b.
            let cols: [[f32; 3]; P] = core::array::from_fn(|b| gt(core::array::from_fn(|a| m(a, b))));
            for i in 0..3 {
                let t = gt(core::array::from_fn(|b| cols[b][i]));
                dwk[ci * 9 + i * 3..ci * 9 + i * 3 + 3].copy_from_slice(&t);
            }
        }
    });
}

/// Whether F(4x4) computes the convolution `g` (one that [`applies`]).
fn four(g: &Geometry) -> bool {
    winograd4::applies(g) && winograd4::enabled()
}

/// The larger of `f2` and F(4x4)'s `f4` where F(4x4) applies (it may be switched off with
/// `set_winograd_f4` after the sizes were taken), else `f2`.
fn either(g: &Geometry, f2: usize, f4: impl FnOnce() -> usize) -> usize {
    if winograd4::applies(g) {
        f2.max(f4())
    } else {
        f2
    }
}

/// The tiling of one Winograd convolution: tiles per row and column, and tile rows per block.
struct Tiling {
    tiles_h: usize,
    tiles_w: usize,
    block_rows: usize,
}

impl Tiling {
    fn new<V: Variant>(g: &Geometry) -> Self {
        let (tiles_h, tiles_w) = (g.ho.div_ceil(V::SIDE), g.wo.div_ceil(V::SIDE));
        // As many tile rows as fit, then the blocks evened out (so that the last is not a
        // sliver of the others: each block's products are thin enough).
        let per_row = V::XI * (g.c + g.o) * tiles_w.max(1);
        let rows_total = (g.n * tiles_h).max(1);
        let most = (V::BLOCK_ELEMS / per_row).clamp(1, rows_total);
        let block_rows = rows_total.div_ceil(rows_total.div_ceil(most));
        Tiling { tiles_h, tiles_w, block_rows }
    }

    /// Tiles in a full block.
    fn block_tiles(&self) -> usize {
        self.block_rows * self.tiles_w
    }
}

/// f32 elements of workspace: the transformed weights, and one block's transformed inputs and
/// products.
pub(super) fn workspace_elems(g: &Geometry) -> usize {
    either(g, workspace::<F2>(g), || workspace::<winograd4::F4>(g))
}

fn workspace<V: Variant>(g: &Geometry) -> usize {
    V::weights_elems(g) + V::XI * (g.c + g.o) * Tiling::new::<V>(g).block_tiles()
}

/// f32 elements of gemm packing buffer with `threads` threads: one `K x C` by `C x tiles`
/// product at a time on each (at most one per product).
pub(super) fn scratch_elems(g: &Geometry, threads: usize) -> usize {
    either(g, scratch::<F2>(g, threads), || scratch::<winograd4::F4>(g, threads))
}

fn scratch<V: Variant>(g: &Geometry, threads: usize) -> usize {
    pack_elems_items(g.o, Tiling::new::<V>(g).block_tiles(), 1, g.c).saturating_mul(threads.clamp(1, V::XI))
}

/// The input tiles of tile rows `rows` (over all samples) transformed (`B^T d B`) into `v`:
/// channel `ci`'s are `v[ci * XI * tiles..]`, `[XI][tiles]`, channels split among the threads.
fn transform_input_block<V: Variant>(
    g: &Geometry,
    tiling: &Tiling,
    x: &[f32],
    rows: core::ops::Range<usize>,
    v: &mut [f32],
    threads: usize,
) {
    let (c, in_plane) = (g.c, g.in_plane());
    let tiles = rows.len() * tiling.tiles_w;
    for_each_chunk(threads, v, V::XI * tiles, 4 * V::XI * tiles, |ci, vc| {
        for row in rows.clone() {
            let (n, th) = (row / tiling.tiles_h, row % tiling.tiles_h);
            let plane = &x[(n * c + ci) * in_plane..(n * c + ci + 1) * in_plane];
            let first = (row - rows.start) * tiling.tiles_w;
            V::input_tile_row(g, plane, th, tiling.tiles_w, vc, tiles, first);
        }
    });
}

/// How the 3x3 kernels of the convolution are read from the weight tensor `w` (`[O, C, 3, 3]` of
/// the forward convolution).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Weights {
    /// The forward pass: the kernel of output channel `k`, input channel `c` is `w[k, c]`.
    Forward,
    /// The input gradient: output channel `k` (an input channel of the forward convolution),
    /// input channel `c` (one of its output channels) is `w[c, k]` flipped along both axes.
    Flipped,
}

/// `y = conv(x, w)` for the convolution `g` (one that [`applies`]); `ws` holds at least
/// [`workspace_elems`] elements and `pack` [`scratch_elems`]. `finish(p, at, rows)` is called
/// on each part of an output plane right after it is written (`rows`, elements `at..` of plane
/// `p` of `y`, whole output rows): the caller's epilogue or mask, applied while it is in cache.
#[allow(clippy::too_many_arguments)]
pub(super) fn convolve(
    g: &Geometry,
    x: &[f32],
    w: &[f32],
    weights: Weights,
    y: &mut [f32],
    ws: &mut [f32],
    threads: usize,
    pack: &mut [f32],
    finish: &(dyn Fn(usize, usize, &mut [f32]) + Sync),
) {
    if four(g) {
        convolve_with::<winograd4::F4>(g, x, w, weights, y, ws, threads, pack, finish);
    } else {
        convolve_with::<F2>(g, x, w, weights, y, ws, threads, pack, finish);
    }
}

/// [`convolve`] with the algorithm `V`.
#[allow(clippy::too_many_arguments)]
fn convolve_with<V: Variant>(
    g: &Geometry,
    x: &[f32],
    w: &[f32],
    weights: Weights,
    y: &mut [f32],
    ws: &mut [f32],
    threads: usize,
    pack: &mut [f32],
    finish: &(dyn Fn(usize, usize, &mut [f32]) + Sync),
) {
    let (c, k, xis) = (g.c, g.o, V::XI);
    let tiling = Tiling::new::<V>(g);
    let bt = tiling.block_tiles();
    let (u, rest) = ws.split_at_mut(V::weights_elems(g));
    let (v, rest) = rest.split_at_mut(xis * c * bt);
    let m = &mut rest[..xis * k * bt];
    V::transform_weights(g, w, weights, u, threads);
    let u = &*u;
    let rows_total = g.n * tiling.tiles_h;
    let out_plane = g.out_plane();
    for first_row in (0..rows_total).step_by(tiling.block_rows) {
        let rows = first_row..(first_row + tiling.block_rows).min(rows_total);
        let tiles = rows.len() * tiling.tiles_w;
        let v = &mut v[..xis * c * tiles];
        transform_input_block::<V>(g, &tiling, x, rows.clone(), v, threads);
        // The products `M[xi] = U[.][xi] @ V[.][xi]` (rows of `V` `XI` blocks apart), split
        // among the threads, each product on one thread with the thread's own packing buffer:
        // one barrier per block rather than one per product (the products' results do not
        // depend on the threads).
        let v = &*v;
        let m = &mut m[..xis * k * tiles];
        let per_thread = pack_elems_items(k, tiles, 1, c);
        for_each_part(threads.min(xis), m, k * tiles, pack, per_thread, |first, run, pack| {
            for (j, mx) in run.chunks_mut(k * tiles).enumerate() {
                let xi = first + j;
                let a = V::weights_operand(g, u, xi);
                let b = Mat { data: &v[xi * tiles..], rows: c, cols: tiles, row_stride: xis * tiles, col_stride: 1 };
                product_with(&a, &b, mx, Out { ldc: tiles, item_stride: 0 }, false, 1, pack);
            }
        });
        // Outputs: the planes of the samples this block's tile rows belong to, each channel's
        // plane written where the block's tile rows lie.
        let (n_first, n_last) = (rows.start / tiling.tiles_h, (rows.end - 1) / tiling.tiles_h);
        let y_block = &mut y[n_first * k * out_plane..(n_last + 1) * k * out_plane];
        let m = &*m;
        let side = V::SIDE;
        for_each_chunk(threads, y_block, out_plane, 2 * xis * out_plane.min(side * side * tiles), |p, plane| {
            let (n, ko) = (n_first + p / k, p % k);
            let sample_rows = n * tiling.tiles_h..(n + 1) * tiling.tiles_h;
            // Channel `ko`'s products: `M[xi][ko]`, `k * tiles` apart.
            let mk = &m[ko * tiles..];
            let own = rows.start.max(sample_rows.start)..rows.end.min(sample_rows.end);
            for row in own.clone() {
                let first = (row - rows.start) * tiling.tiles_w;
                V::output_tile_row(g, mk, k * tiles, first, row - sample_rows.start, tiling.tiles_w, plane);
            }
            let written = side * (own.start - sample_rows.start) * g.wo..(side * (own.end - sample_rows.start)).min(g.ho) * g.wo;
            finish(n * k + ko, written.start, &mut plane[written]);
        });
    }
}

/// Whether the weight gradient of the convolution `g` is computed with Winograd: a shape the
/// forward pass takes ([`eligible`]), and enough tiles for the transforms and the `16 x K x C`
/// sums to pay for themselves (see [`MIN_TILES_GRAD_WEIGHT`]).
pub(super) fn grad_weight_applies(g: &Geometry) -> bool {
    eligible(g) && g.n * g.ho.div_ceil(2) * g.wo.div_ceil(2) >= MIN_TILES_GRAD_WEIGHT
}

/// The fewest output tiles (over all samples) the weight gradient uses Winograd for: as for the
/// forward pass, its products (`K x tiles` by `tiles x C`) are too thin to pay for the transforms
/// and for writing, packing and transforming the `16 x K x C` sums. On one thread
/// (`winograd_speed`, thread CPU time, on a loaded machine) ResNet-18's stride-1 layers at batch
/// 8 ran at 1.49x to 1.59x of im2col's speed with 2048 tiles (64x32x32), 1.47x to 1.55x with 512
/// (128x16x16), 0.91x to 0.96x with 128 (256x8x8) and 0.42x to 0.45x with 32 (512x4x4).
const MIN_TILES_GRAD_WEIGHT: usize = 256;

/// f32 elements of workspace of the weight gradient: the products summed over the blocks
/// (`M[xi][k][c]`), and one block's transformed inputs and output gradients.
pub(super) fn grad_weight_workspace_elems(g: &Geometry) -> usize {
    either(g, grad_weight_workspace::<F2>(g), || grad_weight_workspace::<winograd4::F4>(g))
}

fn grad_weight_workspace<V: Variant>(g: &Geometry) -> usize {
    V::XI * (g.o * g.c + (g.c + g.o) * Tiling::new::<V>(g).block_tiles())
}

/// f32 elements of gemm packing buffer of the weight gradient with `threads` threads: one
/// `K x tiles` by `tiles x C` product at a time on each (at most one per product).
pub(super) fn grad_weight_scratch_elems(g: &Geometry, threads: usize) -> usize {
    either(g, grad_weight_scratch::<F2>(g, threads), || grad_weight_scratch::<winograd4::F4>(g, threads))
}

fn grad_weight_scratch<V: Variant>(g: &Geometry, threads: usize) -> usize {
    pack_elems_items(g.o, g.c, 1, Tiling::new::<V>(g).block_tiles()).saturating_mul(threads.clamp(1, V::XI))
}

/// `dw = sum over tiles of G^T [(A dY A^T) . (B^T X B)] G` for the convolution `g` (one that
/// [`grad_weight_applies`]): `dy` the output gradient, `x` the input, `dw` (`[O, C, 3, 3]`)
/// overwritten; `ws` holds at least [`grad_weight_workspace_elems`] elements and `pack`
/// [`grad_weight_scratch_elems`]. Per block of tile rows: the input tiles are transformed as in
/// the forward pass (`V[c][xi][t]`), the output-gradient tiles as `D[k][xi][t] = A dY A^T` (zero
/// past the output's edge), then `M[xi] += D[.][xi] @ V[.][xi]^T`, one gemm of `K x tiles` by
/// `tiles x C` per position (the first block overwrites); at the end `dw[k][c] = G^T M[.][k][c] G`.
pub(super) fn grad_weight(g: &Geometry, dy: &[f32], x: &[f32], dw: &mut [f32], ws: &mut [f32], threads: usize, pack: &mut [f32]) {
    if four(g) {
        grad_weight_with::<winograd4::F4>(g, dy, x, dw, ws, threads, pack);
    } else {
        grad_weight_with::<F2>(g, dy, x, dw, ws, threads, pack);
    }
}

/// [`grad_weight`] with the algorithm `V`.
fn grad_weight_with<V: Variant>(g: &Geometry, dy: &[f32], x: &[f32], dw: &mut [f32], ws: &mut [f32], threads: usize, pack: &mut [f32]) {
    let (c, k, xis) = (g.c, g.o, V::XI);
    let tiling = Tiling::new::<V>(g);
    let bt = tiling.block_tiles();
    let (sums, rest) = ws.split_at_mut(xis * k * c);
    let (v, rest) = rest.split_at_mut(xis * c * bt);
    let d = &mut rest[..xis * k * bt];
    let rows_total = g.n * tiling.tiles_h;
    if rows_total == 0 {
        sums.fill(0.0);
    }
    let out_plane = g.out_plane();
    for (block, first_row) in (0..rows_total).step_by(tiling.block_rows).enumerate() {
        let rows = first_row..(first_row + tiling.block_rows).min(rows_total);
        let tiles = rows.len() * tiling.tiles_w;
        let v = &mut v[..xis * c * tiles];
        transform_input_block::<V>(g, &tiling, x, rows.clone(), v, threads);
        // Output gradients: channel `ko`'s transformed tiles are `d[ko * XI * tiles..]`.
        let d = &mut d[..xis * k * tiles];
        for_each_chunk(threads, d, xis * tiles, 2 * xis * tiles, |ko, dk| {
            for row in rows.clone() {
                let (n, th) = (row / tiling.tiles_h, row % tiling.tiles_h);
                let plane = &dy[(n * k + ko) * out_plane..(n * k + ko + 1) * out_plane];
                let first = (row - rows.start) * tiling.tiles_w;
                V::grad_tile_row(g, plane, th, tiling.tiles_w, dk, tiles, first);
            }
        });
        // The products `M[xi] (+)= D[.][xi] @ V[.][xi]^T`, split among the threads, each on
        // one thread with the thread's own packing buffer (as in `convolve_with`): a product's
        // sums run through the blocks in order, whatever the threads.
        let (v, d) = (&*v, &*d);
        let per_thread = pack_elems_items(k, c, 1, tiles);
        for_each_part(threads.min(xis), sums, k * c, pack, per_thread, |first, run, pack| {
            for (j, mx) in run.chunks_mut(k * c).enumerate() {
                let xi = first + j;
                let a = TileRows { data: &d[xi * tiles..], rows: k, tiles, positions: xis };
                let b = TileRows { data: &v[xi * tiles..], rows: c, tiles, positions: xis };
                product_with(&a, &b, mx, Out { ldc: c, item_stride: 0 }, block > 0, 1, pack);
            }
        });
    }
    V::finish_weight_gradient(g, sums, dw, threads);
}

/// One of the 16 transformed values of a block's tiles for every channel: row `r` (a channel),
/// depth `t` (a tile) at `data[r * 16 * tiles + t]`. The weight gradient's left operand as it
/// is (`D[.][xi]`, `K x tiles`), its right operand transposed (`V[.][xi]^T`, `tiles x C`, a
/// channel per column). Either packs its slivers by transposing whole rows: gemm's strided
/// packing reads and writes an element at a time with bounds checks, which took more time than
/// the products (`perf` on the 64x32x32 layer: 32% against 23%; these packs take 12%).
pub(super) struct TileRows<'a> {
    pub(super) data: &'a [f32],
    pub(super) rows: usize,
    pub(super) tiles: usize,
    /// Transformed values per tile: 16 for F(2x2), 36 for F(4x4) (rows are `positions * tiles`
    /// apart).
    pub(super) positions: usize,
}

impl TileRows<'_> {
    /// Depths `pc..pc + sliver.len() / W` of rows `row..row + rows` (`rows <= W`), depth-major,
    /// `W` values per depth, zero beyond `rows`.
    fn pack<const W: usize>(&self, pc: usize, row: usize, rows: usize, sliver: &mut [f32]) {
        let kc = sliver.len() / W;
        let stride = self.positions * self.tiles;
        if rows == W {
            let src: [&[f32]; W] = core::array::from_fn(|i| &self.data[(row + i) * stride + pc..][..kc]);
            for (p, out) in (0..kc).zip(sliver.chunks_exact_mut(W)) {
                for (o, s) in out.iter_mut().zip(&src) {
                    *o = s[p];
                }
            }
        } else {
            sliver.fill(0.0);
            for i in 0..rows {
                let src = &self.data[(row + i) * stride + pc..][..kc];
                for (out, &s) in sliver.chunks_exact_mut(W).zip(src) {
                    out[i] = s;
                }
            }
        }
    }
}

impl SourceA for TileRows<'_> {
    fn rows(&self) -> usize {
        self.rows
    }
    fn depth(&self) -> usize {
        self.tiles
    }
    fn pack(&self, pc: usize, row: usize, rows: usize, sliver: &mut [f32]) {
        self.pack::<MR>(pc, row, rows, sliver);
    }
}

impl SourceB for TileRows<'_> {
    fn items(&self) -> usize {
        1
    }
    fn depth(&self) -> usize {
        self.tiles
    }
    fn cols(&self) -> usize {
        self.rows
    }
    fn pack(&self, _item: usize, pc: usize, col: usize, cols: usize, sliver: &mut [f32]) {
        self.pack::<NR>(pc, col, cols, sliver);
    }
}

/// `G^T v` for a 4-vector `v` (the adjoint of [`g_transform`]).
fn g_transpose_transform(v: [f32; 4]) -> [f32; 3] {
    [v[0] + 0.5 * (v[1] + v[2]), 0.5 * (v[1] - v[2]), 0.5 * (v[1] + v[2]) + v[3]]
}

// `U[k][xi][c] = (G g G^T)[xi]` for the 3x3 kernel `g` of output channel `k` and input channel
// `c`, with `G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]` (`F2::transform_weights`).
multiversion!(
    /// The transformed kernels of output channel `k` (`F2::transform_weights`) into `uk`.
    fn transform_kernels(g: &Geometry, w: &[f32], weights: Weights, k: usize, uk: &mut [f32]) => transform_kernels_body);

// Lane `l` of four arrays at once: indices read clearer than nested zips.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn transform_kernels_body<const FMA: bool>(g: &Geometry, w: &[f32], weights: Weights, k: usize, uk: &mut [f32]) {
    let c = g.c;
    // `LANES` input channels at a time, in plain loops over the lanes (vectorised), each
    // of the 16 transformed values written for all of them at once.
    for ci0 in (0..c).step_by(LANES) {
        let lanes = LANES.min(c - ci0);
        // Forward: w[k, ci]; flipped: w[ci, k] with both axes reversed (the forward
        // convolution has `g.c` output channels and `g.o` input channels).
        let mut kernel = [[[0.0f32; LANES]; 3]; 3];
        for l in 0..lanes {
            let ci = ci0 + l;
            match weights {
                Weights::Forward => {
                    let s = &w[(k * c + ci) * 9..][..9];
                    for (i, row) in kernel.iter_mut().enumerate() {
                        for (j, v) in row.iter_mut().enumerate() {
                            v[l] = s[i * 3 + j];
                        }
                    }
                }
                Weights::Flipped => {
                    let s = &w[(ci * g.o + k) * 9..][..9];
                    for (i, row) in kernel.iter_mut().enumerate() {
                        for (j, v) in row.iter_mut().enumerate() {
                            v[l] = s[(2 - i) * 3 + 2 - j];
                        }
                    }
                }
            }
        }
        // rows[j][a] = (G g)[a][j]; then (G g G^T)[a][b] is G applied along j.
        let mut rows = [[[0.0f32; LANES]; 4]; 3];
        for (j, row) in rows.iter_mut().enumerate() {
            for l in 0..LANES {
                let t = g_transform([kernel[0][j][l], kernel[1][j][l], kernel[2][j][l]]);
                for a in 0..4 {
                    row[a][l] = t[a];
                }
            }
        }
        for a in 0..4 {
            let mut t = [[0.0f32; LANES]; 4];
            for l in 0..LANES {
                let v = g_transform([rows[0][a][l], rows[1][a][l], rows[2][a][l]]);
                for b in 0..4 {
                    t[b][l] = v[b];
                }
            }
            for (b, values) in t.iter().enumerate() {
                let at = (a * 4 + b) * c + ci0;
                store_lanes::<FMA>(&mut uk[at..at + lanes], values);
            }
        }
    }
}

/// `G v` for a 3-vector `v`.
fn g_transform(v: [f32; 3]) -> [f32; 4] {
    [v[0], 0.5 * (v[0] + v[1] + v[2]), 0.5 * (v[0] - v[1] + v[2]), v[2]]
}

/// The even- and odd-indexed values of `row[start..start + 2 * LANES]` (`row[start + 2 * l]` and
/// `row[start + 2 * l + 1]` in lane `l`), zero where the index is outside the row: masked loads
/// and two shuffles with AVX2 (`FMA`, the instance [`multiversion`] compiles for AVX2 and FMA),
/// else a plain gather. Moves values only, so both give the same bits. (A copy of the row's part
/// through a buffer on the stack, read back as vectors, stalled each load on the copy's stores.)
#[inline(always)]
fn even_odd<const FMA: bool>(row: &[f32], start: isize) -> [[f32; LANES]; 2] {
    #[cfg(target_arch = "x86_64")]
    if FMA {
        // SAFETY: `FMA` is true only in the instance compiled for (and run on) AVX2 and FMA.
        return unsafe { even_odd_avx2(row, start) };
    }
    let at = |j: usize| usize::try_from(start + j as isize).ok().and_then(|i| row.get(i)).copied().unwrap_or(0.0);
    [core::array::from_fn(|l| at(2 * l)), core::array::from_fn(|l| at(2 * l + 1))]
}

/// [`even_odd`] with AVX2.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn even_odd_avx2(row: &[f32], start: isize) -> [[f32; LANES]; 2] {
    use core::arch::x86_64::*;
    let base = row.as_ptr().wrapping_offset(start);
    // SAFETY: a masked load reads only the lanes its mask sets, here indices inside `row`; the
    // others are zero. (`wrapping_offset` may point outside `row`; no lane outside is read.)
    let (a, b) = unsafe {
        let (lo, hi) = (inside(start, row.len()), inside(start + LANES as isize, row.len()));
        (_mm256_maskload_ps(base, lo), _mm256_maskload_ps(base.wrapping_add(LANES), hi))
    };
    // [a0 a2 b0 b2 | a4 a6 b4 b6], then the middle 64-bit pairs swapped: [a0 a2 a4 a6 b0 b2 b4 b6].
    let even = _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(_mm256_shuffle_ps::<0b10_00_10_00>(a, b))));
    let odd = _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(_mm256_shuffle_ps::<0b11_01_11_01>(a, b))));
    // SAFETY: a vector of 8 floats is 8 floats.
    unsafe { [core::mem::transmute::<__m256, [f32; LANES]>(even), core::mem::transmute::<__m256, [f32; LANES]>(odd)] }
}

/// The inverse of [`even_odd`]'s split: `even[l]` at `2 * l`, `odd[l]` at `2 * l + 1` (a
/// constant shuffle, which the compiler lowers to unpacks in the AVX2 instance).
#[inline(always)]
fn interleave(even: [f32; LANES], odd: [f32; LANES]) -> [f32; 2 * LANES] {
    let mut out = [0.0f32; 2 * LANES];
    for l in 0..LANES {
        out[2 * l] = even[l];
        out[2 * l + 1] = odd[l];
    }
    out
}

/// Writes `values[..dst.len()]` to `dst` (at most `LANES` values): one masked store with AVX2
/// (`FMA`, see [`even_odd`]), else a copy. (A copy of a constant length in one branch and of a
/// variable one in the other was merged by the compiler into one call of `memmove`.)
#[inline(always)]
pub(super) fn store_lanes<const FMA: bool>(dst: &mut [f32], values: &[f32; LANES]) {
    #[cfg(target_arch = "x86_64")]
    if FMA {
        // SAFETY: `FMA` is true only in the instance compiled for (and run on) AVX2 and FMA.
        unsafe { store_lanes_avx2(dst, values) };
        return;
    }
    let n = dst.len();
    dst.copy_from_slice(&values[..n]);
}

/// [`store_lanes`] with AVX2.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn store_lanes_avx2(dst: &mut [f32], values: &[f32; LANES]) {
    use core::arch::x86_64::*;
    assert!(dst.len() <= LANES, "at most LANES values");
    // SAFETY: the mask sets the first `dst.len()` lanes only, all inside `dst`; `values` holds 8.
    unsafe { _mm256_maskstore_ps(dst.as_mut_ptr(), inside(0, dst.len()), _mm256_loadu_ps(values.as_ptr())) };
}

/// `src` (at most `LANES` values) in the first lanes, zero in the others: one masked load with
/// AVX2, else a copy (see [`store_lanes`]).
#[inline(always)]
pub(super) fn load_lanes<const FMA: bool>(src: &[f32]) -> [f32; LANES] {
    #[cfg(target_arch = "x86_64")]
    if FMA {
        // SAFETY: `FMA` is true only in the instance compiled for (and run on) AVX2 and FMA.
        return unsafe { load_lanes_avx2(src) };
    }
    let mut v = [0.0f32; LANES];
    v[..src.len()].copy_from_slice(src);
    v
}

/// [`load_lanes`] with AVX2.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn load_lanes_avx2(src: &[f32]) -> [f32; LANES] {
    use core::arch::x86_64::*;
    assert!(src.len() <= LANES, "at most LANES values");
    // SAFETY: the mask sets the first `src.len()` lanes only, all inside `src`; a vector of 8
    // floats is 8 floats.
    unsafe { core::mem::transmute::<__m256, [f32; LANES]>(_mm256_maskload_ps(src.as_ptr(), inside(0, src.len()))) }
}

/// The AVX2 lane mask of the masked loads and stores above: lane `t` set where `first + t` is an
/// index of a slice of `len` values (`0 <= first + t < len`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
pub(super) fn inside(first: isize, len: usize) -> core::arch::x86_64::__m256i {
    use core::arch::x86_64::*;
    const { assert!(LANES == 8) };
    let i = _mm256_add_epi32(_mm256_set1_epi32(first as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    _mm256_and_si256(_mm256_cmpgt_epi32(i, _mm256_set1_epi32(-1)), _mm256_cmpgt_epi32(_mm256_set1_epi32(len as i32), i))
}

multiversion!(
    /// Transforms the input tiles of tile row `th` of one input plane into `vc` (`[16][tiles]`, the
    /// block's transformed tiles of this channel), the row's first tile at `first`: `B^T d B` with
    /// `B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]`, zero where `d` reads
    /// padding.
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
    let (pt, pl) = (g.padding[0], g.padding[1]);
    let input_row = |i: usize| -> Option<&[f32]> {
        let ih = (2 * th + i).checked_sub(pt)?;
        (ih < g.h).then(|| &plane[ih * g.w..(ih + 1) * g.w])
    };
    let rows = [input_row(0), input_row(1), input_row(2), input_row(3)];
    for tw0 in (0..tiles_w).step_by(LANES) {
        let count = LANES.min(tiles_w - tw0);
        // r[b][i][l]: row `i` of tile `tw0 + l` transformed along the columns (`d B`), value `b`.
        let mut r = [[[0.0f32; LANES]; 4]; 4];
        for (i, row) in rows.iter().enumerate() {
            let Some(row) = row else { continue };
            // The input columns the lanes read, zero outside the row (2 per lane and 2 more):
            // tile `l` reads `e[l], o[l], e[l + 1], o[l + 1]` (`e`, `o` the even and odd ones).
            let start = 2 * tw0 as isize - pl as isize;
            let [e0, o0] = even_odd::<FMA>(row, start);
            let [e1, o1] = even_odd::<FMA>(row, start + 2);
            for l in 0..LANES {
                r[0][i][l] = e0[l] - e1[l];
                r[1][i][l] = o0[l] + e1[l];
                r[2][i][l] = e1[l] - o0[l];
                r[3][i][l] = o0[l] - o1[l];
            }
        }
        // Along the rows (`B^T (d B)`), each of the 16 values written for the lanes' tiles.
        for (b, rb) in r.iter().enumerate() {
            let mut out = [[0.0f32; LANES]; 4];
            for l in 0..LANES {
                out[0][l] = rb[0][l] - rb[2][l];
                out[1][l] = rb[1][l] + rb[2][l];
                out[2][l] = rb[2][l] - rb[1][l];
                out[3][l] = rb[1][l] - rb[3][l];
            }
            for (a, values) in out.iter().enumerate() {
                let at = (a * 4 + b) * tiles + first + tw0;
                store_lanes::<FMA>(&mut vc[at..at + count], values);
            }
        }
    }
}

multiversion!(
    /// Transforms the products of tile row `th` of one output channel (`mk`, product `xi` of tile
    /// `t` at `xi * tiles + t`, the row's first tile at `first`) back into its output plane: `A^T m A` with
    /// `A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]`, dropping the positions past the plane's edge.
    fn output_tile_row(g: &Geometry, mk: &[f32], tiles: usize, first: usize, th: usize, tiles_w: usize, plane: &mut [f32]) => output_tile_row_body);

#[inline(always)]
fn output_tile_row_body<const FMA: bool>(
    g: &Geometry,
    mk: &[f32],
    tiles: usize,
    first: usize,
    th: usize,
    tiles_w: usize,
    plane: &mut [f32],
) {
    for tw0 in (0..tiles_w).step_by(LANES) {
        let count = LANES.min(tiles_w - tw0);
        let mut m = [[0.0f32; LANES]; 16];
        for (xi, lanes) in m.iter_mut().enumerate() {
            let at = xi * tiles + first + tw0;
            *lanes = load_lanes::<FMA>(&mk[at..at + count]);
        }
        // s[b][o][l] = (A^T m)[o][b], then y[o][p] = (s A)[o][p], interleaved into output rows.
        // (Plain loops: nested `array::from_fn` closures were left as calls.)
        let mut s = [[[0.0f32; LANES]; 2]; 4];
        for (b, sb) in s.iter_mut().enumerate() {
            for l in 0..LANES {
                sb[0][l] = m[b][l] + m[4 + b][l] + m[8 + b][l];
                sb[1][l] = m[4 + b][l] - m[8 + b][l] - m[12 + b][l];
            }
        }
        let mut out = [[0.0f32; 2 * LANES]; 2];
        for (o, row) in out.iter_mut().enumerate() {
            let (mut even, mut odd) = ([0.0f32; LANES], [0.0f32; LANES]);
            for l in 0..LANES {
                even[l] = s[0][o][l] + s[1][o][l] + s[2][o][l];
                odd[l] = s[1][o][l] - s[2][o][l] - s[3][o][l];
            }
            *row = interleave(even, odd);
        }
        let (ow, len) = (2 * tw0, (2 * count).min(g.wo - 2 * tw0));
        for (o, values) in out.iter().enumerate() {
            let oh = 2 * th + o;
            if oh < g.ho {
                let at = oh * g.wo + ow;
                let (lo, hi) = values.split_at(LANES);
                store_lanes::<FMA>(&mut plane[at..at + len.min(LANES)], lo.try_into().expect("LANES values"));
                if len > LANES {
                    store_lanes::<FMA>(&mut plane[at + LANES..at + len], hi.try_into().expect("LANES values"));
                }
            }
        }
    }
}

multiversion!(
    /// Transforms the output-gradient tiles of tile row `th` of one output-gradient plane into
    /// `dk` (`[16][tiles]`, the block's transformed tiles of this channel), the row's first tile
    /// at `first`: `A dY A^T` with `A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]` (the adjoint of the
    /// forward's output transform), `dY` zero past the plane's edge.
    fn grad_tile_row(g: &Geometry, plane: &[f32], th: usize, tiles_w: usize, dk: &mut [f32], tiles: usize, first: usize) => grad_tile_row_body);

#[inline(always)]
fn grad_tile_row_body<const FMA: bool>(g: &Geometry, plane: &[f32], th: usize, tiles_w: usize, dk: &mut [f32], tiles: usize, first: usize) {
    let output_row = |o: usize| -> Option<&[f32]> {
        let oh = 2 * th + o;
        (oh < g.ho).then(|| &plane[oh * g.wo..(oh + 1) * g.wo])
    };
    let rows = [output_row(0), output_row(1)];
    for tw0 in (0..tiles_w).step_by(LANES) {
        let count = LANES.min(tiles_w - tw0);
        // r[b][o][l]: row `o` of tile `tw0 + l` transformed along the columns (`dY A^T`), value `b`.
        let mut r = [[[0.0f32; LANES]; 2]; 4];
        for (o, row) in rows.iter().enumerate() {
            let Some(row) = row else { continue };
            // The output columns the lanes read, zero past the row: tile `l` reads `e[l], d[l]`.
            let [e, d] = even_odd::<FMA>(row, 2 * tw0 as isize);
            for l in 0..LANES {
                r[0][o][l] = e[l];
                r[1][o][l] = e[l] + d[l];
                r[2][o][l] = e[l] - d[l];
                r[3][o][l] = -d[l];
            }
        }
        // Along the rows (`A (dY A^T)`), each of the 16 values written for the lanes' tiles.
        for (b, rb) in r.iter().enumerate() {
            let mut out = [[0.0f32; LANES]; 4];
            for l in 0..LANES {
                out[0][l] = rb[0][l];
                out[1][l] = rb[0][l] + rb[1][l];
                out[2][l] = rb[0][l] - rb[1][l];
                out[3][l] = -rb[1][l];
            }
            for (a, values) in out.iter().enumerate() {
                let at = (a * 4 + b) * tiles + first + tw0;
                store_lanes::<FMA>(&mut dk[at..at + count], values);
            }
        }
    }
}
