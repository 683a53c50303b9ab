//! Convolution as im2col + gemm, with arena workspace for the column matrix.
//!
//! Three algorithms, chosen from the shapes alone so that [`conv_workspace_elems`] (called by the
//! compiler to size the arena) and the kernels (which receive that slice) always agree:
//! - pointwise (1x1, stride 1, no padding): the input plane already is the column matrix, so the
//!   convolution is one gemm per sample and group, with no workspace;
//! - depthwise (one input channel per group): a gemm per channel would have a single row, so a
//!   direct loop over kernel taps is used instead, with no workspace (`depthwise.rs`);
//! - im2col: everything else. For one sample and group, the column matrix has one row per
//!   (input channel, kh, kw) tap and one column per output position; the convolution is then
//!   `weights [O/groups, taps] @ columns [taps, HO * WO]`.

use super::epilogue::{self, Epilogue};
use super::par::{for_each_chunk, for_each_part};
use super::{depthwise, pack_elems, sgemm, Mat};
use crate::kernels::{KernelError, View, ViewMut};
use crate::ops::{Conv2d, ConvOp};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Algorithm {
    Pointwise,
    Depthwise,
    Im2col,
}

use crate::kernels::conv_geometry::ConvGeometry as Geometry;

impl Geometry {
    fn algorithm(&self) -> Algorithm {
        if self.cg == 1 && self.groups > 1 {
            Algorithm::Depthwise
        } else if self.kh == 1 && self.kw == 1 && self.stride == [1, 1] && self.padding == [0; 4] {
            Algorithm::Pointwise
        } else {
            Algorithm::Im2col
        }
    }

    fn workspace_elems(&self) -> usize {
        match self.algorithm() {
            Algorithm::Im2col => self.taps() * self.out_plane(),
            Algorithm::Pointwise | Algorithm::Depthwise => 0,
        }
    }

    /// Output rows whose window row `kh` lands inside the input, and the input row of the first.
    pub(super) fn rows(&self, kh: usize) -> (core::ops::Range<usize>, usize) {
        valid_outputs(self.ho, self.stride[0], kh * self.dilation[0], self.padding[0], self.h)
    }

    /// Output columns whose window column `kw` lands inside the input, and the input column of
    /// the first.
    pub(super) fn cols(&self, kw: usize) -> (core::ops::Range<usize>, usize) {
        valid_outputs(self.wo, self.stride[1], kw * self.dilation[1], self.padding[1], self.w)
    }

    /// The `(sample, group)` slice of an input-side tensor: `C/groups` planes.
    fn input_group(&self, n: usize, g: usize) -> core::ops::Range<usize> {
        let start = (n * self.c + g * self.cg) * self.in_plane();
        start..start + self.cg * self.in_plane()
    }

    /// The `(sample, group)` slice of an output-side tensor: `O/groups` planes.
    fn output_group(&self, n: usize, g: usize) -> core::ops::Range<usize> {
        let start = (n * self.o + g * self.og) * self.out_plane();
        start..start + self.og * self.out_plane()
    }

    /// The weights of group `g`, a row-major `[O/groups, taps]` matrix.
    fn weight_group(&self, g: usize) -> core::ops::Range<usize> {
        let start = g * self.og * self.taps();
        start..start + self.og * self.taps()
    }
}

/// Along one axis: the output positions `o` whose input position `o * stride + offset - pad`
/// lies in `[0, len)`, and the input position of the first of them. (`offset` is the kernel
/// tap's `k * dilation`.) Outside the range the tap reads padding.
fn valid_outputs(out_len: usize, stride: usize, offset: usize, pad: usize, len: usize) -> (core::ops::Range<usize>, usize) {
    let lo = pad.saturating_sub(offset).div_ceil(stride);
    let hi = (len + pad).saturating_sub(offset).div_ceil(stride).min(out_len);
    let lo = lo.min(hi);
    // When the range is empty the first input position is never used; 0 avoids an underflow.
    let first = if lo < hi { lo * stride + offset - pad } else { 0 };
    (lo..hi, first)
}

/// f32 elements of scratch each conv op needs.
pub fn conv_workspace_elems(op: &ConvOp, inputs: &[&[usize]], outputs: &[&[usize]]) -> usize {
    let geometry = match (op, inputs, outputs) {
        (ConvOp::Conv2d(c) | ConvOp::Conv2dBiasAct { conv: c, .. }, [x, w, ..], [y]) => Geometry::new(c, x, w, y),
        (ConvOp::Conv2dGradInput { conv, .. } | ConvOp::Conv2dGradInputMasked { conv, .. }, [dy, w, ..], [dx]) => {
            Geometry::new(conv, dx, w, dy)
        }
        (ConvOp::Conv2dGradWeight { conv, .. }, [dy, x], [dw]) => Geometry::new(conv, x, dw, dy),
        // The fast path covers ungrouped convolutions; grouped ones run the reference kernel.
        (ConvOp::Conv2dGradWeightRows { conv, .. }, [dy, x], [dw]) if conv.groups == 1 && dw.len() == 4 && dy.len() == 4 => {
            Geometry::new(conv, x, &[dy[1], dw[1], dw[2], dw[3]], dy)
        }
        _ => None,
    };
    geometry.map_or(0, |g| g.workspace_elems())
}

/// f32 elements of gemm packing scratch each conv op needs with `threads` threads: one buffer per
/// thread, for the paths that run one single-threaded gemm per task.
pub fn conv_scratch_elems(op: &ConvOp, inputs: &[&[usize]], outputs: &[&[usize]], threads: usize) -> usize {
    let product = match (op, inputs, outputs) {
        (ConvOp::Conv2d(c) | ConvOp::Conv2dBiasAct { conv: c, .. }, [x, w, ..], [y]) => {
            Geometry::new(c, x, w, y).map(|g| (g.og, g.out_plane(), g.taps(), g))
        }
        (ConvOp::Conv2dGradInput { conv, .. } | ConvOp::Conv2dGradInputMasked { conv, .. }, [dy, w, ..], [dx]) => {
            Geometry::new(conv, dx, w, dy).map(|g| (g.taps(), g.out_plane(), g.og, g))
        }
        (ConvOp::Conv2dGradWeight { conv, .. }, [dy, x], [dw]) => {
            Geometry::new(conv, x, dw, dy).map(|g| (g.og, g.taps(), g.out_plane(), g))
        }
        // Rows of an ungrouped gradient: sized as the whole gradient, an upper bound.
        (ConvOp::Conv2dGradWeightRows { conv, .. }, [dy, x], [&[_, cg, kh, kw]]) if dy.len() == 4 => {
            Geometry::new(conv, x, &[dy[1], cg, kh, kw], dy).map(|g| (g.og, g.taps(), g.out_plane(), g))
        }
        _ => None,
    };
    match product {
        Some((m, n, k, g)) if g.algorithm() != Algorithm::Depthwise => pack_elems(m, n, k).saturating_mul(threads.max(1)),
        _ => 0,
    }
}

/// Checks the shapes and data lengths, and returns the geometry and the workspace the chosen
/// algorithm uses.
fn prepare<'w>(
    op: &'static str,
    conv: &Conv2d,
    input: (&[usize], usize),
    weight: (&[usize], usize),
    output: (&[usize], usize),
    ws: &'w mut [f32],
) -> Result<(Geometry, &'w mut [f32]), KernelError> {
    let g = Geometry::new(conv, input.0, weight.0, output.0)
        .ok_or(KernelError::Invalid { op, message: "shapes do not describe this convolution" })?;
    let numel = |s: &[usize]| s.iter().product::<usize>();
    if numel(input.0) != input.1 || numel(weight.0) != weight.1 || numel(output.0) != output.1 {
        return Err(KernelError::Invalid { op, message: "tensor data does not match its shape" });
    }
    let need = g.workspace_elems();
    if ws.len() < need {
        return Err(KernelError::Invalid { op, message: "workspace is smaller than conv_workspace_elems requires" });
    }
    Ok((g, &mut ws[..need]))
}

/// `y = conv(x, w)`, or with an epilogue `y = act(conv(x, w) + b)` (`Conv2dBiasAct`): the bias
/// and activation are applied to each output plane right after the product that wrote it.
#[allow(clippy::too_many_arguments)]
pub(super) fn conv2d(
    c: &Conv2d,
    x: View<f32>,
    w: View<f32>,
    y: &mut ViewMut<f32>,
    ws: &mut [f32],
    scratch: &mut [f32],
    threads: usize,
    epilogue: Option<Epilogue<'_>>,
) -> Result<(), KernelError> {
    let op = if epilogue.is_some() { "Conv2dBiasAct" } else { "Conv2d" };
    let (g, ws) = prepare(op, c, (x.shape, x.data.len()), (w.shape, w.data.len()), (y.shape, y.data.len()), ws)?;
    let algorithm = g.algorithm();
    if algorithm == Algorithm::Depthwise {
        depthwise::forward(&g, x.data, w.data, y.data, threads, epilogue);
        return Ok(());
    }
    let (taps, out_plane) = (g.taps(), g.out_plane());
    if algorithm == Algorithm::Pointwise && per_sample(&g, threads) {
        // Runs of samples, one per thread, each a single-threaded gemm per sample and group with
        // the thread's own packing buffer: the products of a 1x1 convolution are mostly too small
        // to split well inside gemm.
        let pack = pack_elems(g.og, out_plane, taps);
        for_each_part(threads, y.data, g.o * out_plane, scratch, pack, |first, y_run, pack| {
            for (i, y_sample) in y_run.chunks_exact_mut(g.o * out_plane).enumerate() {
                for grp in 0..g.groups {
                    let weights = Mat { data: &w.data[g.weight_group(grp)], rows: g.og, cols: taps, row_stride: taps, col_stride: 1 };
                    let columns = Mat {
                        data: &x.data[g.input_group(first + i, grp)],
                        rows: taps,
                        cols: out_plane,
                        row_stride: out_plane,
                        col_stride: 1,
                    };
                    let y_group = &mut y_sample[grp * g.og * out_plane..(grp + 1) * g.og * out_plane];
                    sgemm(weights, columns, y_group, out_plane, false, 1, pack);
                    if let Some(e) = &epilogue {
                        e.planes(grp * g.og, y_group, out_plane);
                    }
                }
            }
        });
        return Ok(());
    }
    for n in 0..g.n {
        for grp in 0..g.groups {
            let x_group = &x.data[g.input_group(n, grp)];
            let columns: &[f32] = if algorithm == Algorithm::Pointwise {
                x_group
            } else {
                im2col(&g, x_group, ws, threads);
                ws
            };
            let weights = Mat { data: &w.data[g.weight_group(grp)], rows: g.og, cols: taps, row_stride: taps, col_stride: 1 };
            let columns = Mat { data: columns, rows: taps, cols: out_plane, row_stride: out_plane, col_stride: 1 };
            let y_group = &mut y.data[g.output_group(n, grp)];
            sgemm(weights, columns, y_group, out_plane, false, threads, scratch);
            if let Some(e) = &epilogue {
                // The group's planes, split among the threads as the gemm was.
                for_each_chunk(threads, y_group, out_plane, out_plane, |p, plane| e.planes(grp * g.og + p, plane, out_plane));
            }
        }
    }
    Ok(())
}

/// `dx = col2im(w^T @ dy)` per sample and group; with `mask` (`Conv2dGradInputMasked`, the packed
/// activation mask of `dx`'s elements) each sample and group, or depthwise plane, is masked right
/// after it is computed.
#[allow(clippy::too_many_arguments)]
pub(super) fn conv2d_grad_input(
    c: &Conv2d,
    dy: View<f32>,
    w: View<f32>,
    dx: &mut ViewMut<f32>,
    ws: &mut [f32],
    scratch: &mut [f32],
    threads: usize,
    mask: Option<&[u8]>,
) -> Result<(), KernelError> {
    let op = if mask.is_some() { "Conv2dGradInputMasked" } else { "Conv2dGradInput" };
    let (g, ws) = prepare(op, c, (dx.shape, dx.data.len()), (w.shape, w.data.len()), (dy.shape, dy.data.len()), ws)?;
    if mask.is_some_and(|bits| bits.len() != dx.data.len().div_ceil(8)) {
        return Err(KernelError::Invalid { op, message: "mask length differs from the packed shape of dx" });
    }
    let algorithm = g.algorithm();
    if algorithm == Algorithm::Depthwise {
        depthwise::grad_input(&g, dy.data, w.data, dx.data, threads, mask);
        return Ok(());
    }
    let (taps, out_plane) = (g.taps(), g.out_plane());
    if algorithm == Algorithm::Pointwise && per_sample(&g, threads) {
        let pack = pack_elems(taps, out_plane, g.og);
        for_each_part(threads, dx.data, g.c * out_plane, scratch, pack, |first, dx_run, pack| {
            for (i, dx_sample) in dx_run.chunks_exact_mut(g.c * out_plane).enumerate() {
                for grp in 0..g.groups {
                    let weights_t = Mat { data: &w.data[g.weight_group(grp)], rows: taps, cols: g.og, row_stride: 1, col_stride: taps };
                    let dy_group = Mat {
                        data: &dy.data[g.output_group(first + i, grp)],
                        rows: g.og,
                        cols: out_plane,
                        row_stride: out_plane,
                        col_stride: 1,
                    };
                    let dx_group = &mut dx_sample[grp * g.cg * out_plane..(grp + 1) * g.cg * out_plane];
                    sgemm(weights_t, dy_group, dx_group, out_plane, false, 1, pack);
                    if let Some(bits) = mask {
                        epilogue::mask_at(bits, g.input_group(first + i, grp).start, dx_group);
                    }
                }
            }
        });
        return Ok(());
    }
    for n in 0..g.n {
        for grp in 0..g.groups {
            // The transposed group weights: `[taps, O/groups]`, read with swapped strides.
            let weights_t = Mat { data: &w.data[g.weight_group(grp)], rows: taps, cols: g.og, row_stride: 1, col_stride: taps };
            let dy_group =
                Mat { data: &dy.data[g.output_group(n, grp)], rows: g.og, cols: out_plane, row_stride: out_plane, col_stride: 1 };
            let dx_group = &mut dx.data[g.input_group(n, grp)];
            if algorithm == Algorithm::Pointwise {
                // Input and output planes coincide, so the product is the input gradient itself.
                sgemm(weights_t, dy_group, dx_group, out_plane, false, threads, scratch);
            } else {
                sgemm(weights_t, dy_group, ws, out_plane, false, threads, scratch);
                col2im(&g, ws, dx_group, threads);
            }
            if let Some(bits) = mask {
                // The group's planes, split among the threads as col2im splits them.
                let (start, plane) = (g.input_group(n, grp).start, g.in_plane());
                for_each_chunk(threads, dx_group, plane, plane, |p, dx_plane| epilogue::mask_at(bits, start + p * plane, dx_plane));
            }
        }
    }
    Ok(())
}

/// `dw = sum over samples of dy @ im2col(x)^T`, per group.
pub fn conv2d_grad_weight(
    c: &Conv2d,
    dy: View<f32>,
    x: View<f32>,
    dw: &mut ViewMut<f32>,
    ws: &mut [f32],
    scratch: &mut [f32],
    threads: usize,
) -> Result<(), KernelError> {
    let (g, ws) = prepare("Conv2dGradWeight", c, (x.shape, x.data.len()), (dw.shape, dw.data.len()), (dy.shape, dy.data.len()), ws)?;
    let algorithm = g.algorithm();
    if algorithm == Algorithm::Depthwise {
        depthwise::grad_weight(&g, dy.data, x.data, dw.data, threads);
        return Ok(());
    }
    let (taps, out_plane) = (g.taps(), g.out_plane());
    if algorithm == Algorithm::Pointwise && threads > 1 && g.groups == 1 && g.og >= 2 * threads {
        // Blocks of output channels (rows of dw), one per thread, each summed over the samples
        // with the thread's own packing buffer.
        let pack = pack_elems(g.og, taps, out_plane);
        for_each_part(threads, dw.data, taps, scratch, pack, |first, dw_rows, pack| {
            let count = dw_rows.len() / taps;
            for n in 0..g.n {
                let dy_rows = Mat {
                    data: &dy.data[g.output_group(n, 0)][first * out_plane..(first + count) * out_plane],
                    rows: count,
                    cols: out_plane,
                    row_stride: out_plane,
                    col_stride: 1,
                };
                let columns_t =
                    Mat { data: &x.data[g.input_group(n, 0)], rows: out_plane, cols: taps, row_stride: 1, col_stride: out_plane };
                sgemm(dy_rows, columns_t, dw_rows, taps, n > 0, 1, pack);
            }
            if g.n == 0 {
                dw_rows.fill(0.0);
            }
        });
        return Ok(());
    }
    for grp in 0..g.groups {
        grad_weight_gemm(&g, grp, 0..g.og, dy.data, x.data, &mut dw.data[g.weight_group(grp)], ws, scratch, threads);
    }
    Ok(())
}

/// Whether a pointwise convolution splits its samples among threads (enough samples to share).
fn per_sample(g: &Geometry, threads: usize) -> bool {
    threads > 1 && g.n >= threads
}

/// Rows `rows` of an ungrouped convolution's weight gradient: `dw = sum over samples of
/// dy[:, rows] @ im2col(x)^T`. The rows of `dy` a sample contributes are contiguous, so this is
/// the same gemm as [`conv2d_grad_weight`] with fewer rows, over the whole input.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_grad_weight_rows(
    c: &Conv2d,
    rows: core::ops::Range<usize>,
    dy: View<f32>,
    x: View<f32>,
    dw: &mut ViewMut<f32>,
    ws: &mut [f32],
    scratch: &mut [f32],
    threads: usize,
) -> Result<(), KernelError> {
    const OP: &str = "Conv2dGradWeightRows";
    let (&[_, cg, kh, kw], &[_, o, ..]) = (dw.shape, dy.shape) else {
        return Err(KernelError::Invalid { op: OP, message: "dy and the weight gradient must be 4-D" });
    };
    if c.groups != 1 || rows.start >= rows.end || rows.end > o || dw.shape[0] != rows.len() {
        return Err(KernelError::Invalid {
            op: OP,
            message: "the fast kernel takes an ungrouped convolution and rows inside dy's channels",
        });
    }
    let full = [o, cg, kh, kw];
    let numel = |s: &[usize]| s.iter().product::<usize>();
    let (g, ws) = prepare(OP, c, (x.shape, x.data.len()), (&full, numel(&full)), (dy.shape, dy.data.len()), ws)?;
    if dw.data.len() != numel(dw.shape) {
        return Err(KernelError::Invalid { op: OP, message: "tensor data does not match its shape" });
    }
    grad_weight_gemm(&g, 0, rows, dy.data, x.data, dw.data, ws, scratch, threads);
    Ok(())
}

/// Rows `rows` of group `grp`'s weight gradient (`dw_rows`, `[rows, taps]`), summed over the
/// samples: one gemm per sample of `dy`'s rows with the transposed column matrix of `x`. The
/// first sample overwrites whatever `dw_rows` held; the others add to it.
#[allow(clippy::too_many_arguments)]
fn grad_weight_gemm(
    g: &Geometry,
    grp: usize,
    rows: core::ops::Range<usize>,
    dy: &[f32],
    x: &[f32],
    dw_rows: &mut [f32],
    ws: &mut [f32],
    scratch: &mut [f32],
    threads: usize,
) {
    let (taps, out_plane) = (g.taps(), g.out_plane());
    if g.n == 0 {
        dw_rows.fill(0.0);
    }
    for n in 0..g.n {
        let x_group = &x[g.input_group(n, grp)];
        let columns: &[f32] = if g.algorithm() == Algorithm::Pointwise {
            x_group
        } else {
            im2col(g, x_group, ws, threads);
            ws
        };
        let dy_group = &dy[g.output_group(n, grp)];
        let dy_rows = Mat {
            data: &dy_group[rows.start * out_plane..rows.end * out_plane],
            rows: rows.len(),
            cols: out_plane,
            row_stride: out_plane,
            col_stride: 1,
        };
        // The transposed column matrix: `[HO * WO, taps]`, read with swapped strides.
        let columns_t = Mat { data: columns, rows: out_plane, cols: taps, row_stride: 1, col_stride: out_plane };
        sgemm(dy_rows, columns_t, dw_rows, taps, n > 0, threads, scratch);
    }
}

/// Writes the column matrix of one sample and group (`x_group` is `[C/groups, H, W]`) into
/// `columns` (`[taps, HO * WO]`), with zeros where a tap reads padding. Rows (taps) are
/// independent and are split among the pool's threads.
fn im2col(g: &Geometry, x_group: &[f32], columns: &mut [f32], threads: usize) {
    let (in_plane, out_plane, kernel) = (g.in_plane(), g.out_plane(), g.kh * g.kw);
    let columns = &mut columns[..g.taps() * out_plane];
    for_each_chunk(threads, columns, out_plane, out_plane, |r, row| {
        let (ci, kh, kw) = (r / kernel, r % kernel / g.kw, r % g.kw);
        let plane = &x_group[ci * in_plane..(ci + 1) * in_plane];
        let (oh_range, ih_first) = g.rows(kh);
        let (ow_range, iw_first) = g.cols(kw);
        row[..oh_range.start * g.wo].fill(0.0);
        row[oh_range.end * g.wo..].fill(0.0);
        for (i, oh) in oh_range.clone().enumerate() {
            let ih = ih_first + i * g.stride[0];
            let out_row = &mut row[oh * g.wo..(oh + 1) * g.wo];
            out_row[..ow_range.start].fill(0.0);
            out_row[ow_range.end..].fill(0.0);
            let in_row = &plane[ih * g.w..(ih + 1) * g.w];
            depthwise::zip_gather(&mut out_row[ow_range.clone()], &in_row[iw_first..], g.stride[1], |d, s| *d = s);
        }
    });
}

/// The adjoint of [`im2col`]: sets `dx_group` (`[C/groups, H, W]`) to the sum of each
/// column-matrix entry onto the input position it was read from; entries that read padding are
/// dropped. Input planes are independent (each gathers its own `KH * KW` rows, in the same order
/// on any thread) and are split among the pool's threads.
fn col2im(g: &Geometry, columns: &[f32], dx_group: &mut [f32], threads: usize) {
    let (in_plane, out_plane, kernel) = (g.in_plane(), g.out_plane(), g.kh * g.kw);
    for_each_chunk(threads, dx_group, in_plane, kernel * out_plane, |ci, plane| {
        plane.fill(0.0);
        let rows = columns[ci * kernel * out_plane..(ci + 1) * kernel * out_plane].chunks_exact(out_plane.max(1));
        for (r, row) in rows.enumerate() {
            let (kh, kw) = (r / g.kw, r % g.kw);
            let (oh_range, ih_first) = g.rows(kh);
            let (ow_range, iw_first) = g.cols(kw);
            for (i, oh) in oh_range.clone().enumerate() {
                let ih = ih_first + i * g.stride[0];
                let src = &row[oh * g.wo + ow_range.start..oh * g.wo + ow_range.end];
                let in_row = &mut plane[ih * g.w..(ih + 1) * g.w];
                depthwise::zip_scatter(&mut in_row[iw_first..], src, g.stride[1], |d, s| *d += s);
            }
        }
    });
}
