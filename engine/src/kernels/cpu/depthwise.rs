//! Depthwise convolution (one input channel per group): forward, input gradient and weight
//! gradient as direct loops over kernel taps, one output row segment at a time, so the inner loop
//! is a contiguous multiply-add the compiler vectorises (AVX2+FMA where the CPU has them, chosen
//! at run time; SSE2 or NEON otherwise). Planes (forward, input gradient) and channels (weight
//! gradient) are independent and are split among the pool's threads; each is computed the same
//! way on any thread, so results do not depend on the thread count.
//!
//! Small planes (MobileNet's 16x16 down to 4x4), where these row loops would mostly enter and
//! leave rows of a few elements, take the channel-blocked path of `depthwise_blocked.rs` instead.

use super::depthwise_blocked as blocked;
use super::par::{for_each_chunk, madd, multiversion};
use crate::kernels::conv_geometry::ConvGeometry as Geometry;

/// Calls `f(tap, oh, ih, ow_range, iw_first)` for every kernel tap (`kh * KW + kw`) and every
/// output row `oh` on which that tap reads input row `ih` rather than padding; `ow_range` are the
/// output columns on which it reads input columns, starting at `iw_first`.
///
/// Callers in a [`multiversion`] body mark `f` `#[inline(always)]`: a closure does not inherit
/// the AVX2+FMA target of the function it is inlined into, so left out of line (as LLVM chose
/// for the input gradient's) its `mul_add` became a call to the library's `fmaf`, which made the
/// stride-2 input gradient 5 times slower.
#[inline(always)]
pub(super) fn for_each_tap_row(g: &Geometry, mut f: impl FnMut(usize, usize, usize, core::ops::Range<usize>, usize)) {
    for kh in 0..g.kh {
        let (oh_range, ih_first) = g.rows(kh);
        for kw in 0..g.kw {
            let (ow_range, iw_first) = g.cols(kw);
            for (i, oh) in oh_range.clone().enumerate() {
                f(kh * g.kw + kw, oh, ih_first + i * g.stride[0], ow_range.clone(), iw_first);
            }
        }
    }
}

/// `y = conv(x, w)` for a depthwise convolution; with an epilogue (a fused bias and activation)
/// each plane gets it right after its sum.
pub(super) fn forward(g: &Geometry, x: &[f32], w: &[f32], y: &mut [f32], threads: usize, epilogue: Option<super::epilogue::Epilogue<'_>>) {
    if blocked::applies(g) {
        return blocked::forward(g, x, w, y, threads, epilogue);
    }
    let (in_plane, out_plane, taps) = (g.in_plane(), g.out_plane(), g.kh * g.kw);
    for_each_chunk(threads, y, out_plane, out_plane * taps, |p, y_plane| {
        let (n, o) = (p / g.o, p % g.o);
        // With one input channel per group, the group index is the input channel.
        let x_plane = &x[(n * g.c + o / g.og) * in_plane..][..in_plane];
        forward_plane(g, x_plane, &w[o * taps..(o + 1) * taps], y_plane);
        if let Some(e) = &epilogue {
            e.planes(o, y_plane, out_plane);
        }
    });
}

multiversion!(fn forward_plane(g: &Geometry, x_plane: &[f32], kernel: &[f32], y_plane: &mut [f32]) => forward_plane_body);

/// One output plane: a sum over kernel taps of the shifted (and strided) input plane, scaled by
/// the tap's weight.
#[inline(always)]
fn forward_plane_body<const FMA: bool>(g: &Geometry, x_plane: &[f32], kernel: &[f32], y_plane: &mut [f32]) {
    if g.kh == 3 && g.kw == 3 && g.dilation == [1, 1] && g.stride[0] == g.stride[1] {
        match g.stride[0] {
            1 => return forward_plane_3x3::<FMA, 1>(g, x_plane, kernel, y_plane),
            2 => return forward_plane_3x3::<FMA, 2>(g, x_plane, kernel, y_plane),
            _ => {}
        }
    }
    y_plane.fill(0.0);
    for_each_tap_row(
        g,
        #[inline(always)]
        |tap, oh, ih, ows, iw_first| {
            let y_row = &mut y_plane[oh * g.wo + ows.start..oh * g.wo + ows.end];
            let x_row = &x_plane[ih * g.w + iw_first..(ih + 1) * g.w];
            let weight = kernel[tap];
            zip_gather(y_row, x_row, g.stride[1], |d, s| *d = madd::<FMA>(weight, s, *d));
        },
    );
}

/// Output pixels a 3x3 row computes side by side.
const ROW_LANES: usize = 8;

/// [`forward_plane_body`] for a 3x3 kernel of stride `S` in both directions, undilated: each
/// output row is computed once, its up to nine taps summed in registers, `ROW_LANES` pixels at a
/// time, where the tap-by-tap loop read and wrote every output row nine times. The taps are
/// applied in the same order (kernel rows, then columns, skipping those that read padding), each
/// as one multiply-add onto the running sum from zero, so the bits are the loop's.
#[inline(always)]
fn forward_plane_3x3<const FMA: bool, const S: usize>(g: &Geometry, x_plane: &[f32], kernel: &[f32], y_plane: &mut [f32]) {
    let (pt, pl) = (g.padding[0], g.padding[1]);
    // Output columns whose three taps all read inside the row: `ow * S >= pl` and
    // `ow * S + 2 - pl < w`.
    let lo = pl.div_ceil(S).min(g.wo);
    let hi = if g.w + pl >= 3 { ((g.w + pl - 3) / S + 1).min(g.wo).max(lo) } else { lo };
    for (oh, y_row) in y_plane.chunks_exact_mut(g.wo).enumerate() {
        // The input rows of the three kernel rows (None: padding).
        let rows: [Option<&[f32]>; 3] = core::array::from_fn(|kh| {
            let ih = (oh * S + kh).checked_sub(pt)?;
            (ih < g.h).then(|| &x_plane[ih * g.w..(ih + 1) * g.w])
        });
        for (ow, y) in y_row.iter_mut().enumerate().take(lo) {
            *y = pixel_3x3::<FMA, S>(&rows, kernel, ow, pl);
        }
        // Whole groups of lanes; the last group is moved back to end at `hi` (recomputing a few
        // pixels, to the same bits), so only the row's edges are computed one by one.
        let mut ow = lo;
        #[cfg(target_arch = "x86_64")]
        if FMA && (S == 1 || S == 2) && hi - lo >= ROW_LANES {
            // SAFETY: `FMA` is true only in `multiversion`'s AVX2+FMA copy, which runs where the
            // CPU has both.
            ow = unsafe { row_3x3_avx2::<S>(&rows, kernel, lo..hi, pl, y_row) };
        }
        while ow < hi && hi - lo >= ROW_LANES {
            ow = ow.min(hi - ROW_LANES);
            let mut acc = [0.0f32; ROW_LANES];
            for (kh, row) in rows.iter().enumerate() {
                let Some(row) = row else { continue };
                for kw in 0..3 {
                    let weight = kernel[kh * 3 + kw];
                    let start = ow * S + kw - pl;
                    let seg = &row[start..start + (ROW_LANES - 1) * S + 1];
                    for (l, a) in acc.iter_mut().enumerate() {
                        *a = madd::<FMA>(weight, seg[l * S], *a);
                    }
                }
            }
            y_row[ow..ow + ROW_LANES].copy_from_slice(&acc);
            ow += ROW_LANES;
        }
        for (q, y) in y_row.iter_mut().enumerate().skip(ow) {
            *y = pixel_3x3::<FMA, S>(&rows, kernel, q, pl);
        }
    }
}

/// The interior of a row of [`forward_plane_3x3`] at stride `S` (1 or 2) with AVX2 and FMA:
/// output columns `cols` (whose taps all read inside the rows, at least [`ROW_LANES`] of them)
/// from the first on, eight pixels at a time, the same taps in the same order, each one fused
/// multiply-add onto the running sum from zero (so the same bits as the portable loop). Stride 1
/// takes sixteen pixels at a time in two independent sums and moves its last eight back to end
/// at `cols.end`; stride 2 deinterleaves sixteen input values into the even and odd columns, and
/// stops before a group whose loads would pass the row's end (its last value's odd neighbour).
/// Returns the column where it stopped: the caller computes the rest. Written with intrinsics
/// because the compiler turned the portable loop's three overlapping loads per kernel row into
/// chains of permutes and blends.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_3x3_avx2<const S: usize>(
    rows: &[Option<&[f32]>; 3],
    kernel: &[f32],
    cols: core::ops::Range<usize>,
    pl: usize,
    y_row: &mut [f32],
) -> usize {
    use core::arch::x86_64::*;
    debug_assert!(cols.len() >= ROW_LANES && cols.start * S >= pl && (S == 1 || S == 2));
    use blocked::lanes;
    let mut weights = [[_mm256_setzero_ps(); 3]; 3];
    for (kh, w) in weights.iter_mut().enumerate() {
        for (kw, v) in w.iter_mut().enumerate() {
            *v = _mm256_set1_ps(kernel[kh * 3 + kw]);
        }
    }
    // The even and odd values of the sixteen at `x` (a macro, as below).
    macro_rules! deinterleave {
        ($x:expr) => {{
            // SAFETY: `lanes` checked the sixteen reads.
            let (a, b) = unsafe { (_mm256_loadu_ps($x.as_ptr()), _mm256_loadu_ps($x.as_ptr().add(ROW_LANES))) };
            let even = _mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(_mm256_shuffle_ps::<0b10_00_10_00>(a, b)));
            let odd = _mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(_mm256_shuffle_ps::<0b11_01_11_01>(a, b)));
            (_mm256_castpd_ps(even), _mm256_castpd_ps(odd))
        }};
    }
    // Eight pixels from output column `$ow` (a macro: closures here stayed calls).
    macro_rules! group {
        ($ow:expr) => {{
            let mut acc = _mm256_setzero_ps();
            for (row, w) in rows.iter().zip(&weights) {
                let Some(row) = row else { continue };
                let first = $ow * S - pl;
                if S == 1 {
                    for (kw, &wv) in w.iter().enumerate() {
                        // SAFETY: `lanes` checked the eight reads.
                        let v = unsafe { _mm256_loadu_ps(lanes::<ROW_LANES>(row, first + kw).as_ptr()) };
                        acc = _mm256_fmadd_ps(wv, v, acc);
                    }
                } else {
                    let (even, odd) = deinterleave!(lanes::<{ 2 * ROW_LANES }>(row, first));
                    let (next, _) = deinterleave!(lanes::<{ 2 * ROW_LANES }>(row, first + 2));
                    acc = _mm256_fmadd_ps(w[0], even, acc);
                    acc = _mm256_fmadd_ps(w[1], odd, acc);
                    acc = _mm256_fmadd_ps(w[2], next, acc);
                }
            }
            acc
        }};
    }
    macro_rules! store {
        ($ow:expr, $v:expr) => {{
            let out: &mut [f32; ROW_LANES] = (&mut y_row[$ow..$ow + ROW_LANES]).try_into().expect("eight lanes");
            // SAFETY: `out` holds eight floats.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr(), $v) };
        }};
    }
    let mut ow = cols.start;
    if S == 2 {
        // Every row is the input's width; a group reads columns `ow * 2 - pl ..` up to 18 on.
        let width = rows.iter().flatten().map(|r| r.len()).next().unwrap_or(0);
        while ow + ROW_LANES <= cols.end && ow * 2 - pl + 2 * ROW_LANES + 2 <= width {
            let a = group!(ow);
            store!(ow, a);
            ow += ROW_LANES;
        }
        return ow;
    }
    while ow + 2 * ROW_LANES <= cols.end {
        let (a, b) = (group!(ow), group!(ow + ROW_LANES));
        store!(ow, a);
        store!(ow + ROW_LANES, b);
        ow += 2 * ROW_LANES;
    }
    while ow < cols.end {
        ow = ow.min(cols.end - ROW_LANES);
        let a = group!(ow);
        store!(ow, a);
        ow += ROW_LANES;
    }
    ow
}

/// One output pixel of [`forward_plane_3x3`] with bounds checks (a row's edges): the taps in the
/// same order, those that read padding skipped.
#[inline(always)]
fn pixel_3x3<const FMA: bool, const S: usize>(rows: &[Option<&[f32]>; 3], kernel: &[f32], ow: usize, pl: usize) -> f32 {
    let mut acc = 0.0f32;
    for (kh, row) in rows.iter().enumerate() {
        let Some(row) = row else { continue };
        for kw in 0..3 {
            if let Some(&v) = (ow * S + kw).checked_sub(pl).and_then(|iw| row.get(iw)) {
                acc = madd::<FMA>(kernel[kh * 3 + kw], v, acc);
            }
        }
    }
    acc
}

/// Kernels with more taps than this take the scatter path of the input gradient (the gather path
/// flips the kernel into a stack array).
const MAX_FLIPPED_TAPS: usize = 64;

/// `dx` of a depthwise convolution.
///
/// With stride 1 and one output channel per input channel, `dx` is the forward convolution of
/// `dy` with the kernel flipped and the padding complemented (`dilation * (k - 1) - pad` on each
/// side), so it runs [`forward_plane`]: a gather whose inner loop is a contiguous multiply-add.
/// Otherwise each `dy` row segment is scaled by the tap's weight and added onto the input row it
/// was read from (each input plane gathers from the `O/groups` output planes of its channel).
///
/// With `mask` (a fused `Conv2dGradInputMasked`) each `dx` plane is masked right after its sum.
pub(super) fn grad_input(g: &Geometry, dy: &[f32], w: &[f32], dx: &mut [f32], threads: usize, mask: Option<&[u8]>) {
    if blocked::applies(g) {
        return blocked::grad_input(g, dy, w, dx, threads, mask);
    }
    let (in_plane, out_plane, taps) = (g.in_plane(), g.out_plane(), g.kh * g.kw);
    if let Some(t) = transposed(g) {
        for_each_chunk(threads, dx, in_plane, out_plane * taps, |p, dx_plane| {
            let mut flipped = [0.0f32; MAX_FLIPPED_TAPS];
            let channel = p % g.c;
            for (f, &v) in flipped[..taps].iter_mut().zip(w[channel * taps..(channel + 1) * taps].iter().rev()) {
                *f = v;
            }
            forward_plane(&t, &dy[p * out_plane..][..out_plane], &flipped[..taps], dx_plane);
            if let Some(bits) = mask {
                super::epilogue::mask_at(bits, p * in_plane, dx_plane);
            }
        });
        return;
    }
    for_each_chunk(threads, dx, in_plane, g.og * out_plane * taps, |p, dx_plane| {
        let (n, c) = (p / g.c, p % g.c);
        let (first, count) = (c * g.og, g.og);
        let dy_planes = &dy[(n * g.o + first) * out_plane..][..count * out_plane];
        grad_input_plane(g, dy_planes, &w[first * taps..(first + count) * taps], dx_plane);
        if let Some(bits) = mask {
            super::epilogue::mask_at(bits, p * in_plane, dx_plane);
        }
    });
}

/// The geometry of the input gradient as a forward depthwise convolution over `dy` (see
/// [`grad_input`]), where one exists: stride 1, one output per input channel, padding no larger
/// than the dilated kernel's reach, and a kernel small enough to flip on the stack.
fn transposed(g: &Geometry) -> Option<Geometry> {
    if g.stride != [1, 1] || g.og != 1 || g.kh * g.kw > MAX_FLIPPED_TAPS || g.kh == 0 || g.kw == 0 {
        return None;
    }
    let reach = [g.dilation[0] * (g.kh - 1), g.dilation[1] * (g.kw - 1)];
    let padding = [
        reach[0].checked_sub(g.padding[0])?,
        reach[1].checked_sub(g.padding[1])?,
        reach[0].checked_sub(g.padding[2])?,
        reach[1].checked_sub(g.padding[3])?,
    ];
    Some(Geometry {
        n: g.n,
        c: g.o,
        h: g.ho,
        w: g.wo,
        o: g.c,
        groups: g.groups,
        cg: 1,
        og: 1,
        kh: g.kh,
        kw: g.kw,
        ho: g.h,
        wo: g.w,
        stride: [1, 1],
        padding,
        dilation: g.dilation,
    })
}

multiversion!(fn grad_input_plane(g: &Geometry, dy_planes: &[f32], kernels: &[f32], dx_plane: &mut [f32]) => grad_input_plane_body);

#[inline(always)]
fn grad_input_plane_body<const FMA: bool>(g: &Geometry, dy_planes: &[f32], kernels: &[f32], dx_plane: &mut [f32]) {
    let (out_plane, taps) = (g.out_plane(), g.kh * g.kw);
    dx_plane.fill(0.0);
    for (dy_plane, kernel) in dy_planes.chunks_exact(out_plane.max(1)).zip(kernels.chunks_exact(taps.max(1))) {
        for_each_tap_row(
            g,
            #[inline(always)]
            |tap, oh, ih, ows, iw_first| {
                let dy_row = &dy_plane[oh * g.wo + ows.start..oh * g.wo + ows.end];
                let dx_row = &mut dx_plane[ih * g.w + iw_first..(ih + 1) * g.w];
                let weight = kernel[tap];
                zip_scatter(dx_row, dy_row, g.stride[1], |d, s| *d = madd::<FMA>(weight, s, *d));
            },
        );
    }
}

/// `dw` of a depthwise convolution: each tap's gradient is the dot product of `dy` with the input
/// positions the tap read, summed over the batch; one task per output channel.
pub(super) fn grad_weight(g: &Geometry, dy: &[f32], x: &[f32], dw: &mut [f32], threads: usize) {
    if blocked::applies(g) {
        return blocked::grad_weight(g, dy, x, dw, threads);
    }
    let (out_plane, taps) = (g.out_plane(), g.kh * g.kw);
    for_each_chunk(threads, dw, taps, g.n * out_plane * taps, |o, kernel_grad| grad_weight_channel(g, dy, x, o, kernel_grad));
}

multiversion!(fn grad_weight_channel(g: &Geometry, dy: &[f32], x: &[f32], o: usize, kernel_grad: &mut [f32]) => grad_weight_channel_body);

#[inline(always)]
fn grad_weight_channel_body<const FMA: bool>(g: &Geometry, dy: &[f32], x: &[f32], o: usize, kernel_grad: &mut [f32]) {
    let (in_plane, out_plane) = (g.in_plane(), g.out_plane());
    kernel_grad.fill(0.0);
    for n in 0..g.n {
        let dy_plane = &dy[(n * g.o + o) * out_plane..][..out_plane];
        let x_plane = &x[(n * g.c + o / g.og) * in_plane..][..in_plane];
        for_each_tap_row(
            g,
            #[inline(always)]
            |tap, oh, ih, ows, iw_first| {
                let dy_row = &dy_plane[oh * g.wo + ows.start..oh * g.wo + ows.end];
                let x_row = &x_plane[ih * g.w + iw_first..(ih + 1) * g.w];
                kernel_grad[tap] += dot_strided::<FMA>(dy_row, x_row, g.stride[1]);
            },
        );
    }
}

/// Calls `f(&mut dst[k], src[k * stride])` for every `k` in `dst` (`src` must reach that far).
///
/// Strides 1 and 2 cover nearly every convolution; with the stride known at compile time the
/// compiler turns the strided reads into vector loads and shuffles, which it cannot do for a
/// runtime stride.
#[inline(always)]
pub(super) fn zip_gather(dst: &mut [f32], src: &[f32], stride: usize, f: impl Fn(&mut f32, f32)) {
    #[inline(always)]
    fn fixed<const S: usize>(dst: &mut [f32], src: &[f32], f: impl Fn(&mut f32, f32)) {
        // Whole groups of S source elements first; the last element may lack its S - 1 followers.
        let whole = dst.len().min(src.len() / S);
        let (head, tail) = dst.split_at_mut(whole);
        for (d, s) in head.iter_mut().zip(src.chunks_exact(S)) {
            f(d, s[0]);
        }
        for (k, d) in tail.iter_mut().enumerate() {
            f(d, src[(whole + k) * S]);
        }
    }
    match stride {
        1 => fixed::<1>(dst, src, f),
        2 => fixed::<2>(dst, src, f),
        _ => {
            for (d, &s) in dst.iter_mut().zip(src.iter().step_by(stride)) {
                f(d, s);
            }
        }
    }
}

/// Calls `f(&mut dst[k * stride], src[k])` for every `k` in `src`: the adjoint of
/// [`zip_gather`], with the same compile-time strides.
#[inline(always)]
pub(super) fn zip_scatter(dst: &mut [f32], src: &[f32], stride: usize, f: impl Fn(&mut f32, f32)) {
    #[inline(always)]
    fn fixed<const S: usize>(dst: &mut [f32], src: &[f32], f: impl Fn(&mut f32, f32)) {
        let whole = src.len().min(dst.len() / S);
        for (d, &s) in dst.chunks_exact_mut(S).zip(&src[..whole]) {
            f(&mut d[0], s);
        }
        for (k, &s) in src.iter().enumerate().skip(whole) {
            f(&mut dst[k * S], s);
        }
    }
    match stride {
        1 => fixed::<1>(dst, src, f),
        2 => fixed::<2>(dst, src, f),
        _ => {
            for (d, &s) in dst.iter_mut().step_by(stride).zip(src) {
                f(d, s);
            }
        }
    }
}

/// `sum(a[k] * b[k * stride])` for every `k` in `a`. Eight partial sums let the compiler vectorise
/// the loop and also shorten the chains along which f32 rounding errors accumulate.
#[inline(always)]
fn dot_strided<const FMA: bool>(a: &[f32], b: &[f32], stride: usize) -> f32 {
    #[inline(always)]
    fn fixed<const FMA: bool, const S: usize>(a: &[f32], b: &[f32]) -> f32 {
        let main = a.len().min(b.len() / S) / 8 * 8;
        let mut lanes = [0.0f32; 8];
        for (ca, cb) in a[..main].chunks_exact(8).zip(b.chunks_exact(8 * S)) {
            for ((lane, &p), q) in lanes.iter_mut().zip(ca).zip(cb.chunks_exact(S)) {
                *lane = madd::<FMA>(p, q[0], *lane);
            }
        }
        let tail: f32 = a.iter().enumerate().skip(main).map(|(k, &p)| p * b[k * S]).sum();
        lanes.iter().sum::<f32>() + tail
    }
    match stride {
        1 => fixed::<FMA, 1>(a, b),
        2 => fixed::<FMA, 2>(a, b),
        _ => a.iter().zip(b.iter().step_by(stride)).map(|(p, q)| p * q).sum(),
    }
}
