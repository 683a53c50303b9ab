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

use super::par::for_each_chunk;
use super::{depthwise, sgemm, Mat};
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
        (ConvOp::Conv2d(c), [x, w], [y]) => Geometry::new(c, x, w, y),
        (ConvOp::Conv2dGradInput { conv, .. }, [dy, w], [dx]) => Geometry::new(conv, dx, w, dy),
        (ConvOp::Conv2dGradWeight { conv, .. }, [dy, x], [dw]) => Geometry::new(conv, x, dw, dy),
        // The fast path covers ungrouped convolutions; grouped ones run the reference kernel.
        (ConvOp::Conv2dGradWeightRows { conv, .. }, [dy, x], [dw]) if conv.groups == 1 && dw.len() == 4 && dy.len() == 4 => {
            Geometry::new(conv, x, &[dy[1], dw[1], dw[2], dw[3]], dy)
        }
        _ => None,
    };
    geometry.map_or(0, |g| g.workspace_elems())
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

/// `y = conv(x, w)`.
pub fn conv2d(c: &Conv2d, x: View<f32>, w: View<f32>, y: &mut ViewMut<f32>, ws: &mut [f32], threads: usize) -> Result<(), KernelError> {
    let (g, ws) = prepare("Conv2d", c, (x.shape, x.data.len()), (w.shape, w.data.len()), (y.shape, y.data.len()), ws)?;
    let algorithm = g.algorithm();
    if algorithm == Algorithm::Depthwise {
        depthwise::forward(&g, x.data, w.data, y.data, threads);
        return Ok(());
    }
    let (taps, out_plane) = (g.taps(), g.out_plane());
    if algorithm == Algorithm::Pointwise && per_sample(&g, threads) {
        // One task per sample, each a single-threaded gemm per group: the products of a 1x1
        // convolution are mostly too small to split well inside gemm.
        for_each_chunk(threads, y.data, g.o * out_plane, g.o * taps * out_plane, |n, y_sample| {
            for grp in 0..g.groups {
                let weights = Mat { data: &w.data[g.weight_group(grp)], rows: g.og, cols: taps, row_stride: taps, col_stride: 1 };
                let columns =
                    Mat { data: &x.data[g.input_group(n, grp)], rows: taps, cols: out_plane, row_stride: out_plane, col_stride: 1 };
                let y_group = &mut y_sample[grp * g.og * out_plane..(grp + 1) * g.og * out_plane];
                sgemm(weights, columns, y_group, out_plane, false, gemm::Parallelism::None);
            }
        });
        return Ok(());
    }
    let par = gemm_parallelism(threads);
    for n in 0..g.n {
        for grp in 0..g.groups {
            let x_group = &x.data[g.input_group(n, grp)];
            let columns: &[f32] = if algorithm == Algorithm::Pointwise {
                x_group
            } else {
                im2col(&g, x_group, ws);
                ws
            };
            let weights = Mat { data: &w.data[g.weight_group(grp)], rows: g.og, cols: taps, row_stride: taps, col_stride: 1 };
            let columns = Mat { data: columns, rows: taps, cols: out_plane, row_stride: out_plane, col_stride: 1 };
            sgemm(weights, columns, &mut y.data[g.output_group(n, grp)], out_plane, false, par);
        }
    }
    Ok(())
}

/// `dx = col2im(w^T @ dy)` per sample and group.
pub fn conv2d_grad_input(
    c: &Conv2d,
    dy: View<f32>,
    w: View<f32>,
    dx: &mut ViewMut<f32>,
    ws: &mut [f32],
    threads: usize,
) -> Result<(), KernelError> {
    let (g, ws) = prepare("Conv2dGradInput", c, (dx.shape, dx.data.len()), (w.shape, w.data.len()), (dy.shape, dy.data.len()), ws)?;
    let algorithm = g.algorithm();
    if algorithm == Algorithm::Depthwise {
        depthwise::grad_input(&g, dy.data, w.data, dx.data, threads);
        return Ok(());
    }
    let (taps, out_plane) = (g.taps(), g.out_plane());
    if algorithm == Algorithm::Pointwise && per_sample(&g, threads) {
        for_each_chunk(threads, dx.data, g.c * out_plane, g.o * taps * out_plane, |n, dx_sample| {
            for grp in 0..g.groups {
                let weights_t = Mat { data: &w.data[g.weight_group(grp)], rows: taps, cols: g.og, row_stride: 1, col_stride: taps };
                let dy_group =
                    Mat { data: &dy.data[g.output_group(n, grp)], rows: g.og, cols: out_plane, row_stride: out_plane, col_stride: 1 };
                let dx_group = &mut dx_sample[grp * g.cg * out_plane..(grp + 1) * g.cg * out_plane];
                sgemm(weights_t, dy_group, dx_group, out_plane, false, gemm::Parallelism::None);
            }
        });
        return Ok(());
    }
    let par = gemm_parallelism(threads);
    for n in 0..g.n {
        for grp in 0..g.groups {
            // The transposed group weights: `[taps, O/groups]`, read with swapped strides.
            let weights_t = Mat { data: &w.data[g.weight_group(grp)], rows: taps, cols: g.og, row_stride: 1, col_stride: taps };
            let dy_group =
                Mat { data: &dy.data[g.output_group(n, grp)], rows: g.og, cols: out_plane, row_stride: out_plane, col_stride: 1 };
            let dx_group = &mut dx.data[g.input_group(n, grp)];
            if algorithm == Algorithm::Pointwise {
                // Input and output planes coincide, so the product is the input gradient itself.
                sgemm(weights_t, dy_group, dx_group, out_plane, false, par);
            } else {
                sgemm(weights_t, dy_group, ws, out_plane, false, par);
                dx_group.fill(0.0);
                col2im(&g, ws, dx_group);
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
        // Blocks of output channels (rows of dw), each summed over the samples by its own task.
        let rows = g.og.div_ceil(2 * threads);
        for_each_chunk(threads, dw.data, rows * taps, g.n * rows * taps * out_plane, |b, dw_rows| {
            let first = b * rows;
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
                sgemm(dy_rows, columns_t, dw_rows, taps, n > 0, gemm::Parallelism::None);
            }
            if g.n == 0 {
                dw_rows.fill(0.0);
            }
        });
        return Ok(());
    }
    let par = gemm_parallelism(threads);
    for grp in 0..g.groups {
        let dw_group = &mut dw.data[g.weight_group(grp)];
        if g.n == 0 {
            dw_group.fill(0.0);
        }
        for n in 0..g.n {
            let x_group = &x.data[g.input_group(n, grp)];
            let columns: &[f32] = if algorithm == Algorithm::Pointwise {
                x_group
            } else {
                im2col(&g, x_group, ws);
                ws
            };
            let dy_group =
                Mat { data: &dy.data[g.output_group(n, grp)], rows: g.og, cols: out_plane, row_stride: out_plane, col_stride: 1 };
            // The transposed column matrix: `[HO * WO, taps]`, read with swapped strides.
            let columns_t = Mat { data: columns, rows: out_plane, cols: taps, row_stride: 1, col_stride: out_plane };
            // The first sample overwrites whatever the arena held; the others add to it.
            sgemm(dy_group, columns_t, dw_group, taps, n > 0, par);
        }
    }
    Ok(())
}

/// Whether a pointwise convolution splits its samples among threads (enough samples to share).
fn per_sample(g: &Geometry, threads: usize) -> bool {
    threads > 1 && g.n >= threads
}

fn gemm_parallelism(threads: usize) -> gemm::Parallelism {
    if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    }
}

/// Rows `rows` of an ungrouped convolution's weight gradient: `dw = sum over samples of
/// dy[:, rows] @ im2col(x)^T`. The rows of `dy` a sample contributes are contiguous, so this is
/// the same gemm as [`conv2d_grad_weight`] with fewer rows, over the whole input.
pub fn conv2d_grad_weight_rows(
    c: &Conv2d,
    rows: core::ops::Range<usize>,
    dy: View<f32>,
    x: View<f32>,
    dw: &mut ViewMut<f32>,
    ws: &mut [f32],
    threads: usize,
) -> Result<(), KernelError> {
    const OP: &str = "Conv2dGradWeightRows";
    let par = gemm_parallelism(threads);
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
    let (taps, out_plane) = (g.taps(), g.out_plane());
    if g.n == 0 {
        dw.data.fill(0.0);
    }
    for n in 0..g.n {
        let x_sample = &x.data[g.input_group(n, 0)];
        let columns: &[f32] = if g.algorithm() == Algorithm::Pointwise {
            x_sample
        } else {
            im2col(&g, x_sample, ws);
            ws
        };
        let first = (n * g.o + rows.start) * out_plane;
        let dy_rows = Mat {
            data: &dy.data[first..first + rows.len() * out_plane],
            rows: rows.len(),
            cols: out_plane,
            row_stride: out_plane,
            col_stride: 1,
        };
        let columns_t = Mat { data: columns, rows: out_plane, cols: taps, row_stride: 1, col_stride: out_plane };
        sgemm(dy_rows, columns_t, dw.data, taps, n > 0, par);
    }
    Ok(())
}

/// Writes the column matrix of one sample and group (`x_group` is `[C/groups, H, W]`) into
/// `columns` (`[taps, HO * WO]`), with zeros where a tap reads padding.
fn im2col(g: &Geometry, x_group: &[f32], columns: &mut [f32]) {
    let (in_plane, out_plane) = (g.in_plane(), g.out_plane());
    let mut rows = columns.chunks_exact_mut(out_plane.max(1));
    for ci in 0..g.cg {
        let plane = &x_group[ci * in_plane..(ci + 1) * in_plane];
        for kh in 0..g.kh {
            let (oh_range, ih_first) = g.rows(kh);
            for kw in 0..g.kw {
                let (ow_range, iw_first) = g.cols(kw);
                let Some(row) = rows.next() else { return };
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
            }
        }
    }
}

/// The adjoint of [`im2col`]: adds each column-matrix entry onto the input position it was read
/// from (`dx_group` is `[C/groups, H, W]`); entries that read padding are dropped.
fn col2im(g: &Geometry, columns: &[f32], dx_group: &mut [f32]) {
    let (in_plane, out_plane) = (g.in_plane(), g.out_plane());
    let mut rows = columns.chunks_exact(out_plane.max(1));
    for ci in 0..g.cg {
        let plane = &mut dx_group[ci * in_plane..(ci + 1) * in_plane];
        for kh in 0..g.kh {
            let (oh_range, ih_first) = g.rows(kh);
            for kw in 0..g.kw {
                let (ow_range, iw_first) = g.cols(kw);
                let Some(row) = rows.next() else { return };
                for (i, oh) in oh_range.clone().enumerate() {
                    let ih = ih_first + i * g.stride[0];
                    let src = &row[oh * g.wo + ow_range.start..oh * g.wo + ow_range.end];
                    let in_row = &mut plane[ih * g.w..(ih + 1) * g.w];
                    depthwise::zip_scatter(&mut in_row[iw_first..], src, g.stride[1], |d, s| *d += s);
                }
            }
        }
    }
}
