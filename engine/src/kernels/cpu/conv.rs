//! Convolution as im2col + gemm (or Winograd, `winograd.rs`), with arena workspace for the column matrix.
//!
//! Four algorithms, chosen from the shapes alone so that [`conv_workspace_elems`] (called by the
//! compiler to size the arena) and the kernels (which receive that slice) always agree:
//! - pointwise (1x1, stride 1, no padding): the input plane already is the column matrix, so the
//!   forward pass and the input gradient are one product per group for all samples (the weights
//!   packed once, the samples' planes read as its right operands), with no workspace;
//! - depthwise (one input channel per group): a gemm per channel would have a single row, so a
//!   direct loop over kernel taps is used instead, with no workspace (`depthwise.rs`);
//! - im2col: everything else. For one sample and group, the column matrix has one row per
//!   (input channel, kh, kw) tap and one column per output position; the convolution is then
//!   `weights [O/groups, taps] @ columns [taps, HO * WO]`. The forward pass and the weight
//!   gradient never write the column matrix out: gemm packs its slivers straight from the input
//!   ([`Columns`], [`ColumnsT`]), and the forward pass is one product for all samples (the
//!   weights are packed once, and the threads share the samples' columns with the weight rows).
//!   The input gradient of a stride-1 convolution is the forward convolution of `dy` with the
//!   flipped, transposed weights ([`FlippedWeights`]), computed the same way with no col2im;
//!   other strides compute `w^T @ dy` per sample into the workspace and scatter it (col2im).
//! - Winograd F(2x2, 3x3) (`winograd.rs`): ungrouped, stride-1, undilated 3x3 convolutions with
//!   at least 16 channels on each side and 256 output tiles, forward pass, input gradient (again
//!   with the flipped, transposed weights) and weight gradient (not the row subsets of
//!   [`conv2d_grad_weight_rows`], which stay on im2col); its buffers are the node's workspace.
//!   Outputs of 16x16 or more take F(4x4, 3x3) instead (`winograd4.rs`).

use super::epilogue::{self, Epilogue};
use super::par::{for_each_chunk, for_each_part};
use super::sgemm::{pack_elems_items, product_with, Out, SourceA, SourceB, MR, NR};
use super::winograd::{self, Weights};
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

    /// Whether the input gradient is the forward convolution of `dy` with flipped, transposed
    /// weights ([`Geometry::transposed`]): stride 1 and padding within the kernel's reach.
    fn grad_input_direct(&self) -> bool {
        let reach = [self.dilation[0] * self.kh.saturating_sub(1), self.dilation[1] * self.kw.saturating_sub(1)];
        self.algorithm() == Algorithm::Im2col
            && self.kh > 0
            && self.kw > 0
            && self.stride == [1, 1]
            && self.padding[0] <= reach[0]
            && self.padding[2] <= reach[0]
            && self.padding[1] <= reach[1]
            && self.padding[3] <= reach[1]
    }

    /// Whether the forward pass can be Winograd, F(2x2, 3x3) or F(4x4, 3x3) ([`winograd::applies`]); the
    /// buffers are sized for it whether or not [`set_winograd`] turned it off.
    fn forward_winograd_fits(&self) -> bool {
        self.algorithm() == Algorithm::Im2col && winograd::applies(self)
    }

    /// Whether the forward pass is Winograd.
    fn forward_winograd(&self) -> bool {
        self.forward_winograd_fits() && winograd_enabled()
    }

    /// Whether the input gradient can be the Winograd forward pass of `dy` with the flipped,
    /// transposed weights.
    fn grad_input_winograd_fits(&self) -> bool {
        self.grad_input_direct() && winograd::applies(&self.transposed())
    }

    /// Whether the input gradient is computed with Winograd.
    fn grad_input_winograd(&self) -> bool {
        self.grad_input_winograd_fits() && winograd_enabled()
    }

    /// Whether the weight gradient can be Winograd ([`winograd::grad_weight_applies`]); the
    /// buffers are sized for it whether or not [`set_winograd`] turned it off.
    fn grad_weight_winograd_fits(&self) -> bool {
        self.algorithm() == Algorithm::Im2col && winograd::grad_weight_applies(self)
    }

    /// Whether the weight gradient is computed with Winograd.
    fn grad_weight_winograd(&self) -> bool {
        self.grad_weight_winograd_fits() && winograd_enabled()
    }

    /// The workspace of the weight gradient: Winograd's summed products and one block of
    /// transformed tiles, else none (im2col packs gemm's slivers straight from the input).
    fn grad_weight_workspace_elems(&self) -> usize {
        if self.grad_weight_winograd_fits() {
            winograd::grad_weight_workspace_elems(self)
        } else {
            0
        }
    }

    /// The workspace of the forward pass: Winograd's transformed weights and one block of
    /// transformed tiles, else none.
    fn forward_workspace_elems(&self) -> usize {
        if self.forward_winograd_fits() {
            winograd::workspace_elems(self)
        } else {
            0
        }
    }

    /// The workspace of the input gradient: one sample's column matrix for col2im, Winograd's
    /// buffers, or none when the gradient is computed directly.
    fn grad_input_workspace_elems(&self) -> usize {
        if self.grad_input_winograd_fits() {
            winograd::workspace_elems(&self.transposed())
        } else if self.algorithm() != Algorithm::Im2col || self.grad_input_direct() {
            0
        } else if self.grad_input_batched() {
            self.n * self.taps() * self.out_plane()
        } else {
            self.taps() * self.out_plane()
        }
    }

    /// Whether a strided input gradient is one product for all samples (ungrouped: the column
    /// matrices of all samples in the workspace, then one col2im over every input plane).
    fn grad_input_batched(&self) -> bool {
        self.algorithm() == Algorithm::Im2col && !self.grad_input_direct() && self.groups == 1
    }

    /// The geometry of the convolution whose forward pass is this one's input gradient (stride
    /// 1 only): input `dy` (`O` channels of `HO x WO`), output `dx`, weights `[C, O/groups, KH,
    /// KW]` (the flipped, transposed weights) and padding `dilation * (k - 1) - pad`.
    fn transposed(&self) -> Geometry {
        let reach = [self.dilation[0] * (self.kh - 1), self.dilation[1] * (self.kw - 1)];
        let p = self.padding;
        Geometry {
            n: self.n,
            c: self.o,
            h: self.ho,
            w: self.wo,
            o: self.c,
            groups: self.groups,
            cg: self.og,
            og: self.cg,
            kh: self.kh,
            kw: self.kw,
            ho: self.h,
            wo: self.w,
            stride: [1, 1],
            padding: [reach[0] - p[0], reach[1] - p[1], reach[0] - p[2], reach[1] - p[3]],
            dilation: self.dilation,
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

/// Whether stride-1 3x3 convolutions may use Winograd (the default); off, they use im2col. For
/// comparing the two algorithms in one process: the workspace sizes do not depend on it.
static WINOGRAD: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(true);

/// Enables or disables Winograd convolutions process-wide (see [`WINOGRAD`]); for benchmarks and
/// tests that compare the algorithms. Workspace sizes keep counting Winograd's buffers.
pub fn set_winograd(enabled: bool) {
    WINOGRAD.store(enabled, core::sync::atomic::Ordering::Relaxed);
}

fn winograd_enabled() -> bool {
    WINOGRAD.load(core::sync::atomic::Ordering::Relaxed)
}

/// f32 elements of scratch each conv op needs.
pub fn conv_workspace_elems(op: &ConvOp, inputs: &[&[usize]], outputs: &[&[usize]]) -> usize {
    // Only the input gradient of a strided convolution materialises a column matrix (col2im's);
    // the forward pass and the weight gradient pack gemm's slivers straight from the input
    // (Winograd's buffers aside).
    match (op, inputs, outputs) {
        (ConvOp::Conv2d(c) | ConvOp::Conv2dBiasAct { conv: c, .. }, [x, w, ..], [y]) => {
            Geometry::new(c, x, w, y).map_or(0, |g| g.forward_workspace_elems())
        }
        (ConvOp::Conv2dGradInput { conv, .. } | ConvOp::Conv2dGradInputMasked { conv, .. }, [dy, w, ..], [dx]) => {
            Geometry::new(conv, dx, w, dy).map_or(0, |g| g.grad_input_workspace_elems())
        }
        (ConvOp::Conv2dGradWeight { conv, .. }, [dy, x], [dw]) => {
            Geometry::new(conv, x, dw, dy).map_or(0, |g| g.grad_weight_workspace_elems())
        }
        _ => 0,
    }
}

/// f32 elements of gemm packing scratch each conv op needs with `threads` threads: one buffer per
/// thread, for the paths that run one single-threaded gemm per task.
pub fn conv_scratch_elems(op: &ConvOp, inputs: &[&[usize]], outputs: &[&[usize]], threads: usize) -> usize {
    let product = match (op, inputs, outputs) {
        (ConvOp::Conv2d(c) | ConvOp::Conv2dBiasAct { conv: c, .. }, [x, w, ..], [y]) => match Geometry::new(c, x, w, y) {
            Some(g) if g.forward_winograd_fits() => {
                // Either algorithm may run ([`set_winograd`]).
                return winograd::scratch_elems(&g, threads).max(pack_elems_items(g.og, g.out_plane(), g.n, g.taps()));
            }
            // One product for all samples: a single buffer, whatever the threads.
            Some(g) if g.algorithm() != Algorithm::Depthwise => return pack_elems_items(g.og, g.out_plane(), g.n, g.taps()),
            other => other.map(|g| (g.og, g.out_plane(), g.taps(), g)),
        },
        (ConvOp::Conv2dGradInput { conv, .. } | ConvOp::Conv2dGradInputMasked { conv, .. }, [dy, w, ..], [dx]) => {
            match Geometry::new(conv, dx, w, dy) {
                Some(g) if g.grad_input_direct() => {
                    let t = g.transposed();
                    let im2col = pack_elems_items(t.og, t.out_plane(), t.n, t.taps());
                    // Either algorithm may run ([`set_winograd`]).
                    return if g.grad_input_winograd_fits() { im2col.max(winograd::scratch_elems(&t, threads)) } else { im2col };
                }
                Some(g) if g.grad_input_batched() => return pack_elems_items(g.taps(), g.out_plane(), g.n, g.og),
                Some(g) if g.algorithm() == Algorithm::Pointwise => return pack_elems_items(g.taps(), g.out_plane(), g.n, g.og),
                other => other.map(|g| (g.taps(), g.out_plane(), g.og, g)),
            }
        }
        (ConvOp::Conv2dGradWeight { conv, .. }, [dy, x], [dw]) => match Geometry::new(conv, x, dw, dy) {
            Some(g) if g.grad_weight_winograd_fits() => {
                // Either algorithm may run ([`set_winograd`]).
                let winograd = winograd::grad_weight_scratch_elems(&g, threads);
                let (m, n, k, _) = grad_weight_product(g);
                return winograd.max(pack_elems(m, n, k).saturating_mul(threads.max(1)));
            }
            other => other.map(grad_weight_product),
        },
        // Rows of an ungrouped gradient: sized as the whole gradient, an upper bound.
        (ConvOp::Conv2dGradWeightRows { conv, .. }, [dy, x], [&[_, cg, kh, kw]]) if dy.len() == 4 => {
            Geometry::new(conv, x, &[dy[1], cg, kh, kw], dy).map(grad_weight_product)
        }
        _ => None,
    };
    match product {
        Some((m, n, k, g)) if g.algorithm() != Algorithm::Depthwise => pack_elems(m, n, k).saturating_mul(threads.max(1)),
        _ => 0,
    }
}

/// `(M, N, K)` of the weight gradient's products: one over all samples' output positions (im2col),
/// or one per sample (pointwise).
fn grad_weight_product(g: Geometry) -> (usize, usize, usize, Geometry) {
    let depth = if g.algorithm() == Algorithm::Im2col { g.n * g.out_plane() } else { g.out_plane() };
    (g.og, g.taps(), depth, g)
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
    let need = if op.starts_with("Conv2dGradInput") {
        g.grad_input_workspace_elems()
    } else if op == "Conv2d" || op == "Conv2dBiasAct" {
        g.forward_workspace_elems()
    } else if op == "Conv2dGradWeight" {
        g.grad_weight_workspace_elems()
    } else {
        0
    };
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
    if algorithm == Algorithm::Pointwise {
        // The input planes are the column matrices: one product per group for all samples (the
        // weights packed once per depth block, the samples' column slivers shared by the threads).
        for grp in 0..g.groups {
            let weights = Mat { data: &w.data[g.weight_group(grp)], rows: g.og, cols: taps, row_stride: taps, col_stride: 1 };
            let planes =
                Planes { data: &x.data[grp * g.cg * out_plane..], items: g.n, item_stride: g.c * out_plane, rows: taps, cols: out_plane };
            let out = Out { ldc: out_plane, item_stride: g.o * out_plane };
            product_with(&weights, &planes, &mut y.data[grp * g.og * out_plane..], out, false, threads, scratch);
        }
        if let Some(e) = &epilogue {
            for_each_chunk(threads, y.data, out_plane, out_plane, |p, plane| e.planes(p % g.o, plane, out_plane));
        }
        return Ok(());
    }
    if g.forward_winograd() {
        let finish = |p: usize, _: usize, rows: &mut [f32]| {
            if let Some(e) = &epilogue {
                e.planes(p % g.o, rows, rows.len());
            }
        };
        winograd::convolve(&g, x.data, w.data, Weights::Forward, y.data, ws, threads, scratch, &finish);
        return Ok(());
    }
    // The im2col forward pass needs no workspace (`prepare` gives it Winograd's when that was
    // turned off).
    debug_assert!(ws.is_empty() || g.forward_winograd_fits());
    convolve(&g, x.data, w.data, y.data, threads, scratch);
    if let Some(e) = &epilogue {
        for_each_chunk(threads, y.data, out_plane, out_plane, |p, plane| e.planes(p % g.o, plane, out_plane));
    }
    Ok(())
}

/// `y = conv(x, w)` for every sample, group by group: one product per group of the group's
/// weights with all samples' column matrices, packed straight from `x` ([`Columns`]).
fn convolve(g: &Geometry, x: &[f32], w: &[f32], y: &mut [f32], threads: usize, pack: &mut [f32]) {
    let taps = g.taps();
    for grp in 0..g.groups {
        let weights = Mat { data: &w[g.weight_group(grp)], rows: g.og, cols: taps, row_stride: taps, col_stride: 1 };
        let columns = Columns::new(g, x, grp);
        let out = Out { ldc: g.out_plane(), item_stride: g.o * g.out_plane() };
        product_with(&weights, &columns, &mut y[grp * g.og * g.out_plane()..], out, false, threads, pack);
    }
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
    if algorithm == Algorithm::Pointwise {
        // Input and output planes coincide: one product per group of the transposed weights
        // (`[C/groups, O/groups]`, swapped strides) with every sample's `dy` planes.
        for grp in 0..g.groups {
            let weights_t = Mat { data: &w.data[g.weight_group(grp)], rows: taps, cols: g.og, row_stride: 1, col_stride: taps };
            let planes =
                Planes { data: &dy.data[grp * g.og * out_plane..], items: g.n, item_stride: g.o * out_plane, rows: g.og, cols: out_plane };
            let out = Out { ldc: out_plane, item_stride: g.c * out_plane };
            product_with(&weights_t, &planes, &mut dx.data[grp * g.cg * out_plane..], out, false, threads, scratch);
        }
        if let Some(bits) = mask {
            let plane = g.in_plane();
            for_each_chunk(threads, dx.data, plane, plane, |p, dx_plane| epilogue::mask_at(bits, p * plane, dx_plane));
        }
        return Ok(());
    }
    if g.grad_input_winograd() {
        // The Winograd forward convolution of `dy` with the flipped, transposed weights.
        let plane = g.in_plane();
        let finish = |p: usize, at: usize, rows: &mut [f32]| {
            if let Some(bits) = mask {
                epilogue::mask_at(bits, p * plane + at, rows);
            }
        };
        winograd::convolve(&g.transposed(), dy.data, w.data, Weights::Flipped, dx.data, ws, threads, scratch, &finish);
        return Ok(());
    }
    if g.grad_input_direct() {
        // The forward convolution of `dy` with the flipped, transposed weights.
        let t = g.transposed();
        for grp in 0..g.groups {
            let weights = FlippedWeights { g: &g, w: w.data, grp };
            let columns = Columns::new(&t, dy.data, grp);
            let out = Out { ldc: t.out_plane(), item_stride: t.o * t.out_plane() };
            product_with(&weights, &columns, &mut dx.data[grp * t.og * t.out_plane()..], out, false, threads, scratch);
        }
        if let Some(bits) = mask {
            let plane = g.in_plane();
            for_each_chunk(threads, dx.data, plane, plane, |p, dx_plane| epilogue::mask_at(bits, p * plane, dx_plane));
        }
        return Ok(());
    }
    if g.grad_input_batched() {
        // The transposed weights (`[taps, O]`, swapped strides) times every sample's `dy`: the
        // samples' column matrices side by side in the workspace, then one col2im over all input
        // planes (sample `n`'s channel `ci` reads rows `(n * C + ci) * KH * KW..` of it).
        let weights_t = Mat { data: w.data, rows: taps, cols: g.og, row_stride: 1, col_stride: taps };
        let dy_samples = Planes { data: dy.data, items: g.n, item_stride: g.o * out_plane, rows: g.og, cols: out_plane };
        let out = Out { ldc: out_plane, item_stride: taps * out_plane };
        product_with(&weights_t, &dy_samples, ws, out, false, threads, scratch);
        col2im(&g, ws, dx.data, threads);
        if let Some(bits) = mask {
            let plane = g.in_plane();
            for_each_chunk(threads, dx.data, plane, plane, |p, dx_plane| epilogue::mask_at(bits, p * plane, dx_plane));
        }
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

/// `dw = sum over samples of dy @ im2col(x)^T`, per group (or Winograd, [`winograd::grad_weight`]).
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
    if g.grad_weight_winograd() {
        winograd::grad_weight(&g, dy.data, x.data, dw.data, ws, threads, scratch);
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
/// samples: for im2col one product of `dy`'s rows of all samples ([`SamplesA`]) with all samples'
/// transposed column matrices ([`ColumnsT`]), whose depth runs through the samples; for a
/// pointwise convolution one gemm per sample, the first overwriting `dw_rows`, the others adding.
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
    // The im2col weight gradient needs no workspace (`prepare` gives it Winograd's when that was
    // turned off).
    debug_assert!(ws.is_empty() || g.grad_weight_winograd_fits());
    if g.algorithm() != Algorithm::Pointwise {
        // One product over all samples: the depth runs through every sample's output positions.
        let tap_table = Taps::new(g);
        let a = SamplesA { g, dy, grp, rows };
        let b = ColumnsT { g, x, grp, taps: &tap_table };
        product_with(&a, &b, dw_rows, Out { ldc: taps, item_stride: 0 }, false, threads, scratch);
        return;
    }
    for n in 0..g.n {
        let x_group = &x[g.input_group(n, grp)];
        let dy_group = &dy[g.output_group(n, grp)];
        let dy_rows = Mat {
            data: &dy_group[rows.start * out_plane..rows.end * out_plane],
            rows: rows.len(),
            cols: out_plane,
            row_stride: out_plane,
            col_stride: 1,
        };
        // The transposed input planes: `[HO * WO, C/groups]`, read with swapped strides.
        let x_t = Mat { data: x_group, rows: out_plane, cols: taps, row_stride: 1, col_stride: out_plane };
        sgemm(dy_rows, x_t, dw_rows, taps, n > 0, threads, scratch);
    }
}

/// The column matrices of every sample of group `grp` as gemm's right operands (item `n` is
/// sample `n`'s `[taps, HO * WO]` matrix), packed sliver by sliver straight from `x`: zeros
/// where a tap reads padding.
struct Columns<'a> {
    g: &'a Geometry,
    x: &'a [f32],
    grp: usize,
    taps: Taps,
}

impl<'a> Columns<'a> {
    fn new(g: &'a Geometry, x: &'a [f32], grp: usize) -> Self {
        Columns { g, x, grp, taps: Taps::new(g) }
    }
}

/// Kernel rows and columns beyond this are looked up on the fly instead of in [`Taps`].
const TAP_TABLE: usize = 16;

/// [`Geometry::rows`] and [`Geometry::cols`] for every kernel row and column, computed once per
/// product instead of once per tap and sliver (they divide by the stride).
struct Taps {
    rows: [(core::ops::Range<usize>, usize); TAP_TABLE],
    cols: [(core::ops::Range<usize>, usize); TAP_TABLE],
}

impl Taps {
    fn new(g: &Geometry) -> Self {
        Taps {
            rows: core::array::from_fn(|kh| if kh < g.kh { g.rows(kh) } else { (0..0, 0) }),
            cols: core::array::from_fn(|kw| if kw < g.kw { g.cols(kw) } else { (0..0, 0) }),
        }
    }

    fn rows(&self, g: &Geometry, kh: usize) -> (core::ops::Range<usize>, usize) {
        if kh < TAP_TABLE {
            self.rows[kh].clone()
        } else {
            g.rows(kh)
        }
    }

    fn cols(&self, g: &Geometry, kw: usize) -> (core::ops::Range<usize>, usize) {
        if kw < TAP_TABLE {
            self.cols[kw].clone()
        } else {
            g.cols(kw)
        }
    }
}

impl SourceB for Columns<'_> {
    fn items(&self) -> usize {
        self.g.n
    }
    fn depth(&self) -> usize {
        self.g.taps()
    }
    fn cols(&self) -> usize {
        self.g.out_plane()
    }
    fn pack(&self, item: usize, pc: usize, col: usize, cols: usize, sliver: &mut [f32]) {
        pack_columns(self, item, pc, col, cols, sliver);
    }
}

/// [`Columns`]' sliver, with AVX2 where the CPU has it ([`pack_columns_avx2`]), else portably
/// ([`pack_columns_portable`]).
fn pack_columns(c: &Columns<'_>, item: usize, pc: usize, col: usize, cols: usize, sliver: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if super::par::isa() == super::par::Isa::Avx2Fma {
        // SAFETY: `isa` returned Avx2Fma, so this CPU has AVX2 and FMA.
        unsafe { pack_columns_avx2(c, item, pc, col, cols, sliver) };
        return;
    }
    pack_columns_portable(c, item, pc, col, cols, sliver);
}

/// The output positions `col..col + cols` (at most `NR`) of one sample's column sliver as runs
/// along output rows: `(oh, first ow, length, first lane)`, and how many there are.
#[inline(always)]
fn sliver_runs(g: &Geometry, col: usize, cols: usize) -> ([(usize, usize, usize, usize); NR], usize) {
    let mut runs = [(0usize, 0usize, 0usize, 0usize); NR];
    let (mut count, mut q) = (0, col);
    while q < col + cols {
        let (oh, ow) = (q / g.wo, q % g.wo);
        let len = (g.wo - ow).min(col + cols - q);
        runs[count] = (oh, ow, len, q - col);
        count += 1;
        q += len;
    }
    (runs, count)
}

/// The depths of a [`Columns`] sliver of sample `item` from one on, in order: each one's input
/// plane and window tap, as the output rows and columns whose window reaches the input and the
/// input row and column of the first ([`Taps::rows`], [`Taps::cols`]). The first tap is divided
/// out, the others stepped along without dividing.
struct DepthTaps<'c> {
    c: &'c Columns<'c>,
    x_group: &'c [f32],
    ci: usize,
    kh: usize,
    kw: usize,
}

impl<'c> DepthTaps<'c> {
    fn new(c: &'c Columns<'c>, item: usize, depth: usize) -> Self {
        let (g, kernel) = (c.g, c.g.kh * c.g.kw);
        let x_group = &c.x[g.input_group(item, c.grp)];
        DepthTaps { c, x_group, ci: depth / kernel, kh: depth % kernel / g.kw, kw: depth % g.kw }
    }

    /// The next depth's input plane, `(output rows, first input row)` and `(output columns,
    /// first input column)`.
    #[inline(always)]
    #[allow(clippy::type_complexity)]
    fn next(&mut self) -> (&'c [f32], (core::ops::Range<usize>, usize), (core::ops::Range<usize>, usize)) {
        let (g, in_plane) = (self.c.g, self.c.g.in_plane());
        let taps = (self.c.taps.rows(g, self.kh), self.c.taps.cols(g, self.kw));
        let plane = &self.x_group[self.ci * in_plane..(self.ci + 1) * in_plane];
        self.kw += 1;
        if self.kw == g.kw {
            (self.kw, self.kh) = (0, self.kh + 1);
            if self.kh == g.kh {
                (self.kh, self.ci) = (0, self.ci + 1);
            }
        }
        (plane, taps.0, taps.1)
    }
}

/// [`Columns`]' sliver without AVX2: for each depth (tap), the sliver's output positions as runs
/// along output rows, each read from one input row at the stride (a whole sliver at stride 1 or
/// 2 a copy or gather of constant length, which the compiler vectorises).
fn pack_columns_portable(c: &Columns<'_>, item: usize, pc: usize, col: usize, cols: usize, sliver: &mut [f32]) {
    let g = c.g;
    let (runs, count) = sliver_runs(g, col, cols);
    let runs = &runs[..count];
    let mut depths = DepthTaps::new(c, item, pc);
    for out in sliver.chunks_exact_mut(NR) {
        let (plane, (oh_range, ih_first), (ow_range, iw_first)) = depths.next();
        for &(oh, ow, len, at) in runs {
            let dst = &mut out[at..at + len];
            if !oh_range.contains(&oh) {
                dst.fill(0.0);
                continue;
            }
            let ih = ih_first + (oh - oh_range.start) * g.stride[0];
            let lo = ow_range.start.clamp(ow, ow + len);
            let hi = ow_range.end.clamp(lo, ow + len);
            dst[..lo - ow].fill(0.0);
            dst[hi - ow..].fill(0.0);
            if lo < hi {
                let in_row = &plane[ih * g.w..(ih + 1) * g.w];
                let first = iw_first + (lo - ow_range.start) * g.stride[1];
                if g.stride[1] == 1 && hi - lo == NR {
                    // A whole sliver from one input row: a constant length, copied in
                    // registers rather than by a call.
                    let dst: &mut [f32; NR] = dst.try_into().expect("a run of NR values");
                    dst.copy_from_slice(&in_row[first..first + NR]);
                } else if g.stride[1] == 2 && hi - lo == NR && first + 2 * NR <= in_row.len() {
                    // Likewise at stride 2: every other value of `2 * NR` (a 7x7 stride-2
                    // stem's columns spent a third of its time in a gather of unknown length).
                    let dst: &mut [f32; NR] = dst.try_into().expect("a run of NR values");
                    let src: &[f32; 2 * NR] = in_row[first..first + 2 * NR].try_into().expect("2 * NR values");
                    for (k, d) in dst.iter_mut().enumerate() {
                        *d = src[2 * k];
                    }
                } else {
                    depthwise::zip_gather(&mut dst[lo - ow..hi - ow], &in_row[first..], g.stride[1], |d, s| *d = s);
                }
            }
        }
        out[cols..].fill(0.0);
    }
}

/// [`pack_columns_portable`] with AVX2: each depth's `NR` (16) values are built in two registers and
/// stored at once. At horizontal stride 1 a run of the sliver (a stretch of one output row) is
/// one masked load per register half; at stride 2 a whole sliver from one input row is four
/// loads and two shuffles; other runs are gathered one by one into a zeroed local row. Lanes
/// outside a run's columns that read the input, or past `cols`, hold +0.0, as the portable
/// loop's fills. On 8x8 and 4x4 output planes a depth's runs are 8 or 4 values with padding at
/// their ends, and the portable loop's copies and fills of those lengths were calls to `memcpy`
/// and `memset`: in ResNet-18's full step this packing took 8% of the time, and its fills
/// another 2% in `memset`.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_columns_avx2(c: &Columns<'_>, item: usize, pc: usize, col: usize, cols: usize, sliver: &mut [f32]) {
    use core::arch::x86_64::*;
    const { assert!(NR == 16, "two registers of eight lanes per depth") };
    let (g, stride) = (c.g, c.g.stride[1]);
    let (runs, count) = sliver_runs(g, col, cols);
    let runs = &runs[..count];
    let lanes = [_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_setr_epi32(8, 9, 10, 11, 12, 13, 14, 15)];
    let mut depths = DepthTaps::new(c, item, pc);
    for out in sliver.chunks_exact_mut(NR) {
        let (plane, (oh_range, ih_first), (ow_range, iw_first)) = depths.next();
        let mut acc = [_mm256_setzero_ps(); 2];
        // Values gathered one by one (runs at strides above 1), zero elsewhere.
        let mut gathered: Option<[f32; NR]> = None;
        for &(oh, ow, len, at) in runs {
            let lo = ow_range.start.clamp(ow, ow + len);
            let hi = ow_range.end.clamp(lo, ow + len);
            if !oh_range.contains(&oh) || lo == hi {
                continue;
            }
            let ih = ih_first + (oh - oh_range.start) * g.stride[0];
            let in_row = &plane[ih * g.w..(ih + 1) * g.w];
            let first = iw_first + (lo - ow_range.start) * stride;
            // Output columns `lo..hi` read the input from `first` on, `stride` apart, into lanes
            // `lane_lo..lane_hi`.
            let (lane_lo, lane_hi) = (at + lo - ow, at + hi - ow);
            if stride == 2 && (lane_lo, lane_hi) == (0, NR) && first + 2 * NR <= in_row.len() {
                // A whole sliver (a 7x7 stride-2 stem's columns spent a third of its time in a
                // gather of unknown length): the even values of thirty-two.
                let src: &[f32; 2 * NR] = in_row[first..first + 2 * NR].try_into().expect("2 * NR values");
                for (h, acc) in acc.iter_mut().enumerate() {
                    // SAFETY: `src` holds the sixteen values read.
                    let (a, b) = unsafe { (_mm256_loadu_ps(src.as_ptr().add(16 * h)), _mm256_loadu_ps(src.as_ptr().add(16 * h + 8))) };
                    let even = _mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(_mm256_shuffle_ps::<0b10_00_10_00>(a, b)));
                    *acc = _mm256_castpd_ps(even);
                }
                continue;
            }
            if stride != 1 {
                let values = gathered.get_or_insert([0.0; NR]);
                for (l, value) in values[lane_lo..lane_hi].iter_mut().enumerate() {
                    *value = in_row[first + l * stride];
                }
                continue;
            }
            let src = &in_row[first..first + (hi - lo)];
            let (above, below) = (_mm256_set1_epi32(lane_lo as i32 - 1), _mm256_set1_epi32(lane_hi as i32));
            for (h, (acc, &lane)) in acc.iter_mut().zip(&lanes).enumerate() {
                if lane_hi <= 8 * h || lane_lo >= 8 * h + 8 {
                    continue;
                }
                let mask = _mm256_and_si256(_mm256_cmpgt_epi32(lane, above), _mm256_cmpgt_epi32(below, lane));
                // Where lane `8 * h` would read (maybe outside `src`, so a wrapping pointer).
                let p = src.as_ptr().wrapping_add(8 * h).wrapping_sub(lane_lo);
                // SAFETY: only the lanes of `mask` are read, `lane_lo..lane_hi`, at
                // `src[0..hi - lo]`; the masked-off lanes are not accessed and give +0.0.
                *acc = _mm256_or_ps(*acc, unsafe { _mm256_maskload_ps(p, mask) });
            }
        }
        if let Some(values) = &gathered {
            for (h, acc) in acc.iter_mut().enumerate() {
                // SAFETY: `values` holds the sixteen values read.
                *acc = _mm256_or_ps(*acc, unsafe { _mm256_loadu_ps(values.as_ptr().add(8 * h)) });
            }
        }
        let out: &mut [f32; NR] = out.try_into().expect("NR values per depth");
        // SAFETY: `out` holds the sixteen values written.
        unsafe {
            _mm256_storeu_ps(out.as_mut_ptr(), acc[0]);
            _mm256_storeu_ps(out.as_mut_ptr().add(8), acc[1]);
        }
    }
}

/// Row-major `rows x cols` matrices `item_stride` elements apart (a batch's planes), as gemm's
/// right operands.
struct Planes<'a> {
    data: &'a [f32],
    items: usize,
    item_stride: usize,
    rows: usize,
    cols: usize,
}

impl SourceB for Planes<'_> {
    fn items(&self) -> usize {
        self.items
    }
    fn depth(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
    fn pack(&self, item: usize, pc: usize, col: usize, cols: usize, sliver: &mut [f32]) {
        let data = &self.data[item * self.item_stride..];
        let m = Mat { data, rows: self.rows, cols: self.cols, row_stride: self.cols, col_stride: 1 };
        SourceB::pack(&m, 0, pc, col, cols, sliver);
    }
}

/// The transposed column matrices of all samples of group `grp`, stacked along the depth
/// (`[N * HO * WO, taps]`), as gemm's right operand, packed straight from `x`: the weight
/// gradient's, whose depth is then every sample's output positions in turn.
struct ColumnsT<'a> {
    g: &'a Geometry,
    x: &'a [f32],
    grp: usize,
    taps: &'a Taps,
}

/// Rows `rows` of group `grp`'s output-side planes of all samples, side by side along the depth
/// (`[rows, N * HO * WO]`), as gemm's left operand: the weight gradient's `dy`.
struct SamplesA<'a> {
    g: &'a Geometry,
    dy: &'a [f32],
    grp: usize,
    rows: core::ops::Range<usize>,
}

impl SourceA for SamplesA<'_> {
    fn rows(&self) -> usize {
        self.rows.len()
    }
    fn depth(&self) -> usize {
        self.g.n * self.g.out_plane()
    }
    fn pack(&self, pc: usize, row: usize, rows: usize, sliver: &mut [f32]) {
        let out_plane = self.g.out_plane();
        let kc = sliver.len() / MR;
        if rows < MR {
            sliver.fill(0.0);
        }
        // Depths `pc..pc + kc` as runs inside one sample's planes.
        let mut d = pc;
        while d < pc + kc {
            let (n, q) = (d / out_plane, d % out_plane);
            let len = (out_plane - q).min(pc + kc - d);
            let first = g_plane_start(self.g, n, self.grp, self.rows.start + row) + q;
            for i in 0..rows {
                let src = &self.dy[first + i * out_plane..][..len];
                for (t, &v) in src.iter().enumerate() {
                    sliver[(d - pc + t) * MR + i] = v;
                }
            }
            d += len;
        }
    }
}

/// Where output-side plane `row` of group `grp` of sample `n` starts.
fn g_plane_start(g: &Geometry, n: usize, grp: usize, row: usize) -> usize {
    g.output_group(n, grp).start + row * g.out_plane()
}

impl SourceB for ColumnsT<'_> {
    fn items(&self) -> usize {
        1
    }
    fn depth(&self) -> usize {
        self.g.n * self.g.out_plane()
    }
    fn cols(&self) -> usize {
        self.g.taps()
    }
    fn pack(&self, _item: usize, pc: usize, col: usize, cols: usize, sliver: &mut [f32]) {
        let g = self.g;
        let (in_plane, kernel) = (g.in_plane(), g.kh * g.kw);
        let kc = sliver.len() / NR;
        if cols < NR {
            sliver.fill(0.0);
        }
        let out_plane = g.out_plane();
        // Each column's tap: its input plane's offset in a sample's group, and the output rows
        // and columns whose window reaches the input (computed once per sliver, not per run).
        let mut taps = [(0usize, 0usize, 0usize, 0usize, 0usize, 0usize, 0usize); NR];
        for (j, t) in taps.iter_mut().enumerate().take(cols) {
            let tap = col + j;
            let (ci, kh, kw) = (tap / kernel, tap % kernel / g.kw, tap % g.kw);
            let (oh_range, ih_first) = self.taps.rows(g, kh);
            let (ow_range, iw_first) = self.taps.cols(g, kw);
            *t = (ci * in_plane, oh_range.start, oh_range.end, ih_first, ow_range.start, ow_range.end, iw_first);
        }
        // Depths are (sample, output position) pairs `pc..pc + kc`, walked along output rows;
        // every column of the sliver takes its values for a run of depths in turn.
        let mut d = pc;
        while d < pc + kc {
            let (n, q) = (d / out_plane, d % out_plane);
            let (oh, ow) = (q / g.wo, q % g.wo);
            let len = (g.wo - ow).min(pc + kc - d);
            let x_group = &self.x[g.input_group(n, self.grp)];
            let base = (d - pc) * NR;
            d += len;
            for (j, &(plane, oh_lo, oh_hi, ih_first, ow_lo, ow_hi, iw_first)) in taps.iter().enumerate().take(cols) {
                // Column `j` of depths `d..d + len`: every `NR`-th element from `base + j`.
                let column = &mut sliver[base + j..base + j + (len - 1) * NR + 1];
                if !(oh_lo..oh_hi).contains(&oh) {
                    column.iter_mut().step_by(NR).for_each(|d| *d = 0.0);
                    continue;
                }
                let ih = ih_first + (oh - oh_lo) * g.stride[0];
                let in_row = &x_group[plane + ih * g.w..plane + (ih + 1) * g.w];
                let lo = ow_lo.clamp(ow, ow + len);
                let hi = ow_hi.clamp(lo, ow + len);
                let mut dst = column.iter_mut().step_by(NR);
                dst.by_ref().take(lo - ow).for_each(|d| *d = 0.0);
                let first = iw_first + lo.saturating_sub(ow_lo) * g.stride[1];
                let src = in_row[first.min(in_row.len())..].iter().step_by(g.stride[1]);
                dst.by_ref().take(hi - lo).zip(src).for_each(|(d, &v)| *d = v);
                dst.for_each(|d| *d = 0.0);
            }
        }
    }
}

/// The weights of the convolution that computes a stride-1 input gradient, as gemm's left
/// operand for group `grp`: row `ci` (an input channel of the group), depth `(o, a, b)` (an
/// output channel of the group and a tap) is `w[o, ci, KH - 1 - a, KW - 1 - b]`.
struct FlippedWeights<'a> {
    g: &'a Geometry,
    w: &'a [f32],
    grp: usize,
}

impl SourceA for FlippedWeights<'_> {
    fn rows(&self) -> usize {
        self.g.cg
    }
    fn depth(&self) -> usize {
        self.g.og * self.g.kh * self.g.kw
    }
    fn pack(&self, pc: usize, row: usize, rows: usize, sliver: &mut [f32]) {
        let g = self.g;
        let kernel = g.kh * g.kw;
        let weights = &self.w[g.weight_group(self.grp)];
        if rows < MR {
            sliver.fill(0.0);
        }
        // Depth `(o, tap)` of row `row + i` is `weights[(o * C/groups + row + i) * kernel +
        // kernel - 1 - tap]` (flipping both kernel axes reverses the tap order): rows `kernel`
        // apart, stepped along the depths without dividing.
        let (mut o, mut tap) = (pc / kernel, pc % kernel);
        // 3x3 kernels with whole rows: where a depth starts output channel `o` and its 9 taps
        // are all in the sliver, they are one block of `MR` rows of 9 taps, transposed and
        // reversed with constant indices (the general step gathers a depth at a run-time stride).
        let blocks = rows == MR && kernel == 9;
        let mut at = 0;
        while at < sliver.len() {
            if blocks && tap == 0 && sliver.len() - at >= 9 * MR {
                let block: &[f32; 9 * MR] = weights[(o * g.cg + row) * 9..][..9 * MR].try_into().expect("a block of taps");
                let out: &mut [f32; 9 * MR] = (&mut sliver[at..at + 9 * MR]).try_into().expect("9 depths");
                for t in 0..9 {
                    for i in 0..MR {
                        out[t * MR + i] = block[i * 9 + 8 - t];
                    }
                }
                (at, o) = (at + 9 * MR, o + 1);
                continue;
            }
            let start = (o * g.cg + row) * kernel + kernel - 1 - tap;
            let column = weights[start..start + (rows - 1) * kernel + 1].iter().step_by(kernel);
            sliver[at..at + rows].iter_mut().zip(column).for_each(|(v, &w)| *v = w);
            at += MR;
            tap += 1;
            if tap == kernel {
                (tap, o) = (0, o + 1);
            }
        }
    }
}

/// The adjoint of the column matrix ([`Columns`]): sets `dx_group` (`[C/groups, H, W]`, or for an
/// ungrouped convolution all of `dx`, every sample's columns side by side) to the sum of each
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
