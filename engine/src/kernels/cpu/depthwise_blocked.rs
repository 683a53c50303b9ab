//! Channel-blocked depthwise convolution for small planes: eight channels travel together in the
//! vector lanes.
//!
//! MobileNet-style networks shrink their planes to 8x8 and 4x4, where the row loops of
//! `depthwise.rs` spend most of their time entering and leaving rows of a few elements. Here a
//! task takes a block of [`LANES`] channels of one sample (of all samples for the weight
//! gradient), gathers their planes into a zero-padded tile on the stack in which the channels are
//! the innermost dimension (NHWC8c), runs every kernel tap as one full-width multiply-add per
//! pixel, and scatters the block back to its planes. Padding lives in the tile, so no tap needs a
//! bounds check. The last block of a sample may hold fewer channels; its spare lanes compute
//! values that are never written out.
//!
//! Tasks (blocks) are split among the pool's threads in runs ([`for_each_run`]); a block is
//! computed the same way on any thread, so results do not depend on the thread count. The tiles
//! are stack arrays of at most [`TILE_PIXELS`] pixels, so nothing is allocated.

use super::par::{for_each_run, madd, multiversion};
use crate::kernels::conv_geometry::ConvGeometry as Geometry;

/// Channels per block: one AVX2 vector of f32 (two SSE2 or NEON vectors).
const LANES: usize = 8;

/// Planes whose zero-padded input (and output) have at most this many pixels take this path: a
/// 16x16 plane padded by one. From 32x32 on, the row path was as fast or faster (measured on
/// MobileNetV2's shapes, BENCHMARKS.md), and a larger tile no longer stays in the L1 cache.
pub(super) const TILE_PIXELS: usize = 18 * 18;

/// Kernels with more taps than this take the row path (the block's weights live on the stack).
const MAX_TAPS: usize = 64;

const TILE: usize = LANES * TILE_PIXELS;

/// The padded input's `(rows, columns)`.
fn padded(g: &Geometry) -> (usize, usize) {
    (g.h + g.padding[0] + g.padding[2], g.w + g.padding[1] + g.padding[3])
}

/// Whether `g` takes the channel-blocked path: one output channel per input channel, a small
/// kernel, and planes whose padded tiles fit; every tap of every output pixel must fall inside
/// the padded input (the shapes of a well-formed convolution guarantee it).
pub(super) fn applies(g: &Geometry) -> bool {
    let (hp, wp) = padded(g);
    let taps = g.kh * g.kw;
    let reach = |out: usize, k: usize, s: usize, d: usize| (out - 1) * s + (k - 1) * d + 1;
    g.cg == 1
        && g.og == 1
        && taps > 0
        && taps <= MAX_TAPS
        && g.ho > 0
        && g.wo > 0
        && hp.saturating_mul(wp) <= TILE_PIXELS
        && g.out_plane() <= TILE_PIXELS
        && reach(g.ho, g.kh, g.stride[0], g.dilation[0]) <= hp
        && reach(g.wo, g.kw, g.stride[1], g.dilation[1]) <= wp
}

/// Blocks per sample.
fn blocks(g: &Geometry) -> usize {
    g.c.div_ceil(LANES)
}

/// `(sample, first channel, channels)` of task `t` over samples and blocks.
fn task(g: &Geometry, t: usize) -> (usize, usize, usize) {
    let (n, b) = (t / blocks(g), t % blocks(g));
    let first = b * LANES;
    (n, first, (g.c - first).min(LANES))
}

/// The element of an `[N, C, plane]` tensor at which task `t`'s planes start (`t` may be the
/// task count, giving the length).
fn task_start(g: &Geometry, t: usize, plane: usize) -> usize {
    let (n, b) = (t / blocks(g), t % blocks(g));
    (n * g.c + (b * LANES).min(g.c)) * plane
}

/// `kernel[tap * LANES + l] = w[(first + l) * taps + tap]` for the block's channels.
fn gather_kernel(w: &[f32], first: usize, count: usize, taps: usize, kernel: &mut [f32; LANES * MAX_TAPS]) {
    for l in 0..count {
        for (tap, &v) in w[(first + l) * taps..(first + l + 1) * taps].iter().enumerate() {
            kernel[tap * LANES + l] = v;
        }
    }
}

/// Writes `count` planes (`rows x cols`, consecutive in `planes`) into the lanes of `tile`, whose
/// rows are `tile_cols` pixels wide, starting at pixel `(top, left)`.
#[allow(clippy::too_many_arguments)]
fn gather_planes(planes: &[f32], count: usize, rows: usize, cols: usize, tile: &mut [f32], tile_cols: usize, top: usize, left: usize) {
    let plane = rows * cols;
    for r in 0..rows {
        let tile_row = &mut tile[((top + r) * tile_cols + left) * LANES..][..cols * LANES];
        if count == LANES {
            // Eight source rows read in step; the compiler interleaves them into the pixels.
            let src: [&[f32]; LANES] = core::array::from_fn(|l| &planes[l * plane + r * cols..][..cols]);
            for (k, pixel) in tile_row.chunks_exact_mut(LANES).enumerate() {
                for (v, s) in pixel.iter_mut().zip(&src) {
                    *v = s[k];
                }
            }
        } else {
            for l in 0..count {
                let src = &planes[l * plane + r * cols..][..cols];
                for (pixel, &s) in tile_row.chunks_exact_mut(LANES).zip(src) {
                    pixel[l] = s;
                }
            }
        }
    }
}

/// Writes the lanes of `tile` (pixels `(top, left)` onward, rows `tile_cols` wide) back to `count`
/// planes of `rows x cols`: the adjoint of [`gather_planes`].
#[allow(clippy::too_many_arguments)]
fn scatter_planes(tile: &[f32], tile_cols: usize, top: usize, left: usize, count: usize, rows: usize, cols: usize, planes: &mut [f32]) {
    let plane = rows * cols;
    for (l, dst) in planes.chunks_exact_mut(plane.max(1)).take(count).enumerate() {
        for r in 0..rows {
            let tile_row = &tile[((top + r) * tile_cols + left) * LANES..][..cols * LANES];
            for (d, pixel) in dst[r * cols..(r + 1) * cols].iter_mut().zip(tile_row.chunks_exact(LANES)) {
                *d = pixel[l];
            }
        }
    }
}

/// `N` lanes of `s` from `at` (eight here), the bounds checked once: a vector read stays inside.
#[inline(always)]
pub(super) fn lanes<const N: usize>(s: &[f32], at: usize) -> &[f32; N] {
    s[at..at + N].try_into().expect("a slice of N elements")
}

#[inline(always)]
fn lanes_mut(s: &mut [f32], at: usize) -> &mut [f32; LANES] {
    (&mut s[at..at + LANES]).try_into().expect("a slice of LANES elements")
}

/// `y = conv(x, w)` for the depthwise convolutions [`applies`] accepts; with an epilogue each
/// block's planes get it right after they are written.
pub(super) fn forward(g: &Geometry, x: &[f32], w: &[f32], y: &mut [f32], threads: usize, epilogue: Option<super::epilogue::Epilogue<'_>>) {
    let (in_plane, out_plane, taps) = (g.in_plane(), g.out_plane(), g.kh * g.kw);
    let (_, wp) = padded(g);
    let tasks = g.n * blocks(g);
    let start = |t: usize| task_start(g, t, out_plane);
    for_each_run(threads, tasks, LANES * out_plane * taps, y, start, |run, y_run| {
        let mut tile = [0.0f32; TILE];
        let mut out_tile = [0.0f32; TILE];
        let mut kernel = [0.0f32; LANES * MAX_TAPS];
        let base = start(run.start);
        for t in run {
            let (n, first, count) = task(g, t);
            gather_planes(
                &x[(n * g.c + first) * in_plane..][..count * in_plane],
                count,
                g.h,
                g.w,
                &mut tile,
                wp,
                g.padding[0],
                g.padding[1],
            );
            gather_kernel(w, first, count, taps, &mut kernel);
            let y_block = &mut y_run[start(t) - base..][..count * out_plane];
            forward_block(g, &tile, &kernel, &mut out_tile);
            scatter_planes(&out_tile, g.wo, 0, 0, count, g.ho, g.wo, y_block);
            if let Some(e) = &epilogue {
                e.planes(first, y_block, out_plane);
            }
        }
    });
}

multiversion!(fn forward_block(g: &Geometry, tile: &[f32], kernel: &[f32], out_tile: &mut [f32]) => forward_block_body);

/// Each output pixel's eight channels, into `out_tile` (pixel-major, `LANES` channels per pixel,
/// rows `g.wo` wide; the caller scatters it to the planes, where storing each lane straight into
/// its plane cost eight scattered stores per pixel): a sum over the taps in the row path's order
/// (tap by tap from zero), so both paths round alike; padding taps add `w * 0`.
#[inline(always)]
fn forward_block_body<const FMA: bool>(g: &Geometry, tile: &[f32], kernel: &[f32], out_tile: &mut [f32]) {
    if (g.kh, g.kw) == (3, 3) {
        forward_block_k::<FMA, 3>(g, tile, kernel, out_tile)
    } else {
        forward_block_k::<FMA, 0>(g, tile, kernel, out_tile)
    }
}

/// [`forward_block_body`] for a `K x K` kernel known at compile time (its tap loops unrolled), or
/// any kernel (`K = 0`).
#[inline(always)]
fn forward_block_k<const FMA: bool, const K: usize>(g: &Geometry, tile: &[f32], kernel: &[f32], out_tile: &mut [f32]) {
    let (kh_len, kw_len) = if K > 0 { (K, K) } else { (g.kh, g.kw) };
    let (_, wp) = padded(g);
    let [s0, s1] = g.stride;
    let [d0, d1] = g.dilation;
    for oh in 0..g.ho {
        for ow in 0..g.wo {
            let origin = oh * s0 * wp + ow * s1;
            let mut acc = [0.0f32; LANES];
            for kh in 0..kh_len {
                for kw in 0..kw_len {
                    let x = lanes::<LANES>(tile, (origin + kh * d0 * wp + kw * d1) * LANES);
                    let k = lanes::<LANES>(kernel, (kh * kw_len + kw) * LANES);
                    for l in 0..LANES {
                        acc[l] = madd::<FMA>(k[l], x[l], acc[l]);
                    }
                }
            }
            *lanes_mut(out_tile, (oh * g.wo + ow) * LANES) = acc;
        }
    }
}

/// `dx` for the depthwise convolutions [`applies`] accepts: each block's `dy` is scattered, tap by
/// tap, onto a zero-padded `dx` tile whose interior then goes back to the planes; with `mask`
/// (`Conv2dGradInputMasked`) each block is masked right after.
pub(super) fn grad_input(g: &Geometry, dy: &[f32], w: &[f32], dx: &mut [f32], threads: usize, mask: Option<&[u8]>) {
    let (in_plane, out_plane, taps) = (g.in_plane(), g.out_plane(), g.kh * g.kw);
    let (hp, wp) = padded(g);
    let tasks = g.n * blocks(g);
    let start = |t: usize| task_start(g, t, in_plane);
    for_each_run(threads, tasks, LANES * out_plane * taps, dx, start, |run, dx_run| {
        let mut dx_tile = [0.0f32; TILE];
        let mut dy_tile = [0.0f32; TILE];
        let mut kernel = [0.0f32; LANES * MAX_TAPS];
        let base = start(run.start);
        for t in run {
            let (n, first, count) = task(g, t);
            gather_planes(&dy[(n * g.c + first) * out_plane..][..count * out_plane], count, g.ho, g.wo, &mut dy_tile, g.wo, 0, 0);
            gather_kernel(w, first, count, taps, &mut kernel);
            let dx_tile = &mut dx_tile[..hp * wp * LANES];
            dx_tile.fill(0.0);
            grad_input_block(g, &dy_tile, &kernel, dx_tile);
            let dx_block = &mut dx_run[start(t) - base..][..count * in_plane];
            scatter_planes(dx_tile, wp, g.padding[0], g.padding[1], count, g.h, g.w, dx_block);
            if let Some(bits) = mask {
                super::epilogue::mask_at(bits, start(t), dx_block);
            }
        }
    });
}

multiversion!(fn grad_input_block(g: &Geometry, dy_tile: &[f32], kernel: &[f32], dx_tile: &mut [f32]) => grad_input_block_body);

/// Tap by tap, every output pixel's `dy` scaled by the tap's weights is added onto the input
/// pixel the tap read; within a tap the pixels are distinct, so the adds do not wait on each other.
#[inline(always)]
fn grad_input_block_body<const FMA: bool>(g: &Geometry, dy_tile: &[f32], kernel: &[f32], dx_tile: &mut [f32]) {
    let (_, wp) = padded(g);
    let [s0, s1] = g.stride;
    let [d0, d1] = g.dilation;
    for kh in 0..g.kh {
        for kw in 0..g.kw {
            let k = *lanes::<LANES>(kernel, (kh * g.kw + kw) * LANES);
            for oh in 0..g.ho {
                let row = (oh * s0 + kh * d0) * wp + kw * d1;
                for ow in 0..g.wo {
                    let v = lanes::<LANES>(dy_tile, (oh * g.wo + ow) * LANES);
                    let d = lanes_mut(dx_tile, (row + ow * s1) * LANES);
                    for l in 0..LANES {
                        d[l] = madd::<FMA>(k[l], v[l], d[l]);
                    }
                }
            }
        }
    }
}

/// `dw` for the depthwise convolutions [`applies`] accepts: one task per block of channels, each
/// tap's gradient summed per sample over the output pixels (eight channels at a time), then over
/// the samples in order.
pub(super) fn grad_weight(g: &Geometry, dy: &[f32], x: &[f32], dw: &mut [f32], threads: usize) {
    let (in_plane, out_plane, taps) = (g.in_plane(), g.out_plane(), g.kh * g.kw);
    let (_, wp) = padded(g);
    let start = |b: usize| (b * LANES).min(g.c) * taps;
    for_each_run(threads, blocks(g), g.n * LANES * out_plane * taps, dw, start, |run, dw_run| {
        let mut x_tile = [0.0f32; TILE];
        let mut dy_tile = [0.0f32; TILE];
        let base = start(run.start);
        for b in run {
            let (first, count) = (b * LANES, (g.c - b * LANES).min(LANES));
            let mut total = [0.0f32; LANES * MAX_TAPS];
            for n in 0..g.n {
                let planes = |plane: usize| (n * g.c + first) * plane..(n * g.c + first + count) * plane;
                gather_planes(&x[planes(in_plane)], count, g.h, g.w, &mut x_tile, wp, g.padding[0], g.padding[1]);
                gather_planes(&dy[planes(out_plane)], count, g.ho, g.wo, &mut dy_tile, g.wo, 0, 0);
                grad_weight_block(g, &x_tile, &dy_tile, &mut total[..taps * LANES]);
            }
            let dw_block = &mut dw_run[start(b) - base..][..count * taps];
            for (l, kernel_grad) in dw_block.chunks_exact_mut(taps).enumerate() {
                for (tap, v) in kernel_grad.iter_mut().enumerate() {
                    *v = total[tap * LANES + l];
                }
            }
        }
    });
}

multiversion!(fn grad_weight_block(g: &Geometry, x_tile: &[f32], dy_tile: &[f32], total: &mut [f32]) => grad_weight_block_body);

/// Adds one sample's tap gradients (summed over its output pixels from zero) onto `total`
/// (`taps * LANES`, tap-major).
#[inline(always)]
fn grad_weight_block_body<const FMA: bool>(g: &Geometry, x_tile: &[f32], dy_tile: &[f32], total: &mut [f32]) {
    if (g.kh, g.kw) == (3, 3) {
        grad_weight_block_k::<FMA, 3>(g, x_tile, dy_tile, total)
    } else {
        grad_weight_block_k::<FMA, 0>(g, x_tile, dy_tile, total)
    }
}

/// [`grad_weight_block_body`] for a `K x K` kernel known at compile time, or any kernel (`K = 0`).
#[inline(always)]
fn grad_weight_block_k<const FMA: bool, const K: usize>(g: &Geometry, x_tile: &[f32], dy_tile: &[f32], total: &mut [f32]) {
    let (kh_len, kw_len) = if K > 0 { (K, K) } else { (g.kh, g.kw) };
    let (_, wp) = padded(g);
    let [s0, s1] = g.stride;
    let [d0, d1] = g.dilation;
    let mut sums = [0.0f32; LANES * MAX_TAPS];
    for oh in 0..g.ho {
        for ow in 0..g.wo {
            let origin = oh * s0 * wp + ow * s1;
            let v = *lanes::<LANES>(dy_tile, (oh * g.wo + ow) * LANES);
            for kh in 0..kh_len {
                for kw in 0..kw_len {
                    let tap = kh * kw_len + kw;
                    let x = lanes::<LANES>(x_tile, (origin + kh * d0 * wp + kw * d1) * LANES);
                    let s = lanes_mut(&mut sums, tap * LANES);
                    for l in 0..LANES {
                        s[l] = madd::<FMA>(v[l], x[l], s[l]);
                    }
                }
            }
        }
    }
    for (t, s) in total.iter_mut().zip(&sums) {
        *t += s;
    }
}
