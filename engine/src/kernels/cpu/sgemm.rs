//! pock's own f32 matrix product, `C = A @ B` or `C += A @ B`, that packs its operands into a
//! buffer the caller owns (the backend sizes it at load, [`pack_elems`]), so it allocates nothing.
//!
//! The loop nest is the usual one of packed gemm: for each block of `KC` depths, all of `A` is
//! packed into `MR`-row slivers, then for each block of `NC` columns the block of `B` is packed
//! into `NR`-column slivers (both zero-padded to whole slivers), and every `MR x NR` tile of `C`
//! is one call of the micro-kernel over the block's depth. Tiles are grouped into units (one
//! sliver of `B` against `MC` rows of `A`), which the pool's threads share; each tile is computed
//! the same way by whichever thread runs it, and depth blocks are added in order, so results do
//! not depend on the thread count.
//!
//! Where `A` is the large operand (more than twice the rows of all columns together: deep layers
//! on small planes) and there are several threads, the threads split `A`'s rows instead: all of
//! `B` is packed first, then each thread runs every depth block of its own rows without a
//! barrier, packing `MC` rows at a time right before they meet every column sliver.
//!
//! Operands are sources that pack their own slivers ([`SourceA`], [`SourceB`]): a strided matrix,
//! or a convolution's column matrix read straight from its input. One call may multiply `A` with
//! several right operands (the samples of a batch, [`product_with`]): `A` is packed once per depth
//! block and the items' column slivers (none straddling two items) form one sequence.
//!
//! The micro-kernel is AVX2+FMA intrinsics when the CPU has them (chosen at run time), else plain
//! Rust that the compiler vectorises for the build target (SSE2, NEON). On a CPU with AVX-512F,
//! two vertically adjacent full tiles are computed together against two adjacent column slivers
//! where both are full (`12 x 32`, two 512-bit registers per row; else `12 x 16`), and a lone
//! row sliver (the last of an odd count, or one of fewer than `MR` rows, through a local tile)
//! is `6 x 32` or `6 x 16`; all in the AVX2 kernel's order of additions, so the packing, the
//! workspace sizes and the results stay those of AVX2.

use super::par::{avx512, for_each_chunk, isa, Isa};
use super::Mat;

/// Rows of a micro-tile.
pub const MR: usize = 6;
/// Columns of a micro-tile (two AVX vectors).
pub const NR: usize = 16;
/// Largest depth of a packed block: an `NR`-column sliver of `B` (at most `KC * NR * 4` = 32 KiB)
/// stays in L1 while it meets every row sliver of a unit. The depth is split into equal blocks
/// (`k.div_ceil(k.div_ceil(KC))`), as the `gemm` crate pock used before did: each output is a
/// chain of fused multiply-adds per block, the blocks added in order, so results keep that
/// crate's rounding where its blocking matches. Rounding matters here: ResNet-18's BatchNorm bias
/// gradients are sums with heavy cancellation, and 256-deep blocks moved them after 3 steps by
/// 2.5e-4 relative, outside the PyTorch parity test's 1e-4 (`tests/onnx_parity.rs`).
const KC: usize = 512;
/// Columns of a packed block of `B` (2 MiB at most).
const NC: usize = 2048;
/// Rows of `A` per unit of parallel work (72 rows x `KC` = 72 KiB, in L2).
const MC: usize = 12 * MR;

/// f32 elements of packing buffer an `m x k` by `k x n` product needs (0 when it is empty).
pub fn pack_elems(m: usize, n: usize, k: usize) -> usize {
    pack_elems_items(m, n, 1, k)
}

/// f32 elements of packing buffer a batched product ([`product_with`]) needs: one `m x k` left
/// operand against `items` right operands of `k x n` each (0 when it is empty).
pub fn pack_elems_items(m: usize, n: usize, items: usize, k: usize) -> usize {
    if m == 0 || n == 0 || k == 0 || items == 0 {
        return 0;
    }
    let kc = k.min(KC);
    let rows = m.div_ceil(MR) * MR;
    if split_rows(m, n, items, k) {
        // Every depth block of every column sliver at once (see `product_with`).
        return rows * kc + items * n.div_ceil(NR) * NR * k;
    }
    let columns = items.saturating_mul(n.div_ceil(NR) * NR).min(NC);
    (rows + columns) * kc
}

/// Most f32 elements of the right operands that a product splitting the rows of `A` among the
/// threads packs at once (all their depths: 4 MiB).
const SPLIT_B_ELEMS: usize = 1 << 20;

/// Whether a product on several threads splits the rows of `A` among them (see `product_with`):
/// `A` has at least twice as many (padded) rows as all the right operands have columns, at
/// least `MC` of them, and all of `B` packed fits in [`SPLIT_B_ELEMS`].
fn split_rows(m: usize, n: usize, items: usize, k: usize) -> bool {
    let columns = items.saturating_mul(n.div_ceil(NR) * NR);
    let rows = m.div_ceil(MR) * MR;
    rows >= MC && rows >= columns.saturating_mul(2) && columns.saturating_mul(k) <= SPLIT_B_ELEMS
}

/// A left operand that packs its own `MR`-row slivers: a strided matrix ([`Mat`]), or a matrix
/// computed on the fly (the flipped, transposed weights of a convolution's input gradient).
pub(super) trait SourceA: Sync {
    fn rows(&self) -> usize;
    fn depth(&self) -> usize;
    /// Packs rows `row..row + rows` (`rows <= MR`) of depths `pc..pc + sliver.len() / MR` into
    /// `sliver`: depth-major, `MR` values per depth, zero beyond `rows`.
    fn pack(&self, pc: usize, row: usize, rows: usize, sliver: &mut [f32]);
}

/// The right operands of a batched product: `items()` matrices of `depth() x cols()` that pack
/// their own `NR`-column slivers (a strided matrix, or the column matrix of a convolution read
/// straight from its input, so that it is never written out whole).
pub(super) trait SourceB: Sync {
    fn items(&self) -> usize;
    fn depth(&self) -> usize;
    fn cols(&self) -> usize;
    /// Packs columns `col..col + cols` (`cols <= NR`) of depths `pc..pc + sliver.len() / NR` of
    /// item `item` into `sliver`: depth-major, `NR` values per depth, zero beyond `cols`.
    fn pack(&self, item: usize, pc: usize, col: usize, cols: usize, sliver: &mut [f32]);
}

impl SourceA for Mat<'_> {
    fn rows(&self) -> usize {
        self.rows
    }
    fn depth(&self) -> usize {
        self.cols
    }
    fn pack(&self, pc: usize, row: usize, rows: usize, sliver: &mut [f32]) {
        pack_a_sliver(*self, pc, row, rows, sliver);
    }
}

impl SourceB for Mat<'_> {
    fn items(&self) -> usize {
        1
    }
    fn depth(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
    fn pack(&self, _item: usize, pc: usize, col: usize, cols: usize, sliver: &mut [f32]) {
        pack_b_sliver(*self, pc, col, cols, sliver);
    }
}

/// Where a batched product writes: item `i`'s `m x n` result starts `i * item_stride` elements
/// into `C` and has row stride `ldc`.
#[derive(Clone, Copy)]
pub(super) struct Out {
    pub ldc: usize,
    pub item_stride: usize,
}

impl Out {
    /// One past the last element `items` results of `m x n` address (`None` on overflow).
    pub fn end(self, items: usize, m: usize, n: usize) -> Option<usize> {
        if items == 0 || m == 0 || n == 0 {
            return Some(0);
        }
        (items - 1).checked_mul(self.item_stride)?.checked_add((m - 1).checked_mul(self.ldc)?)?.checked_add(n)
    }
}

/// A pointer to `C` that the units of one product share; each unit writes only its own tiles.
#[derive(Clone, Copy)]
struct Dst(*mut f32);
// SAFETY: the units of a product write disjoint tiles of `C` (see `product_with`), and `C`
// outlives the parallel loop that uses the pointer.
unsafe impl Send for Dst {}
unsafe impl Sync for Dst {}

impl Dst {
    /// The pointer (a method, so that closures capture the whole `Dst`, not its raw field).
    fn ptr(self) -> *mut f32 {
        self.0
    }
}

/// `c = a @ b` (`accumulate`: `c += a @ b`); `c` row-major with row stride `ldc`, already checked
/// by the caller ([`super::sgemm`]) to hold every element, with `m, n, k > 0`.
pub(super) fn product(a: Mat<'_>, b: Mat<'_>, c: &mut [f32], ldc: usize, accumulate: bool, threads: usize, pack: &mut [f32]) {
    product_with(&a, &b, c, Out { ldc, item_stride: 0 }, accumulate, threads, pack);
}

/// The batched product: for every item `i` of `b`, `C_i = a @ b_i` (`accumulate`: `+=`), `C_i`
/// placed in `c` as `out` says. `a` is packed once per depth block for all items, and the
/// items' column slivers form one sequence that the pool's threads share with the row blocks of
/// `a`, so a product with few columns per item (a deep convolution layer) still splits well.
///
/// Panics when `pack` is smaller than [`pack_elems_items`] or `c` does not hold every result
/// element, or when the items' results overlap (`item_stride` below `m * ldc` with more than one
/// item) or their rows do (`ldc < n`).
pub(super) fn product_with<A: SourceA, B: SourceB>(
    a: &A,
    b: &B,
    c: &mut [f32],
    out: Out,
    accumulate: bool,
    threads: usize,
    pack: &mut [f32],
) {
    let (m, k, n, items) = (a.rows(), a.depth(), b.cols(), b.items());
    assert_eq!(b.depth(), k, "sgemm: inner dimensions differ");
    if m == 0 || n == 0 || items == 0 {
        return;
    }
    assert!(out.end(items, m, n).is_some_and(|e| e <= c.len()), "sgemm: dst out of bounds");
    assert!(m <= 1 || out.ldc >= n, "sgemm: dst rows overlap (row stride {} < {n} columns)", out.ldc);
    assert!(items <= 1 || out.item_stride >= (m - 1) * out.ldc + n, "sgemm: dst items overlap");
    if k == 0 {
        if !accumulate {
            for i in 0..items {
                for r in 0..m {
                    let start = i * out.item_stride + r * out.ldc;
                    c[start..start + n].fill(0.0);
                }
            }
        }
        return;
    }
    let need = pack_elems_items(m, n, items, k);
    assert!(pack.len() >= need, "sgemm: packing buffer of {} elements, the product needs {need}", pack.len());
    let kc_max = k.min(KC);
    let (pack_a, pack_b) = pack.split_at_mut(m.div_ceil(MR) * MR * kc_max);
    let fma = isa() == Isa::Avx2Fma;
    let slivers_a = m.div_ceil(MR);
    let blocks_a = m.div_ceil(MC);
    // Column slivers of one item (none straddles two items), and of all of them.
    let per_item = n.div_ceil(NR);
    let slivers = items * per_item;
    let dst = Dst(c.as_mut_ptr());
    let depth_block = k.div_ceil(k.div_ceil(KC));
    // Whether column sliver `j` (of all items' sequence) pairs with `j + 1` for the `12 x 32`
    // kernel: `left > 1` slivers remain in the run at hand and both are full (they may belong to
    // two items: the kernel writes each half where its item's result is). Returns the slivers
    // taken together: 2, or 1.
    // Column sliver `j` of all items' sequence: its item and first column.
    let place = |j: usize| (j / per_item, j % per_item * NR);
    let full = |j: usize| place(j).1 + NR <= n;
    let pair_len = |j: usize, left: usize| -> usize {
        if left > 1 && full(j) && full(j + 1) {
            2
        } else {
            1
        }
    };
    // One tile: item `item`, rows `row..`, columns `col..` of `C` from an `A` and a `B` sliver.
    let tile_at = |a_sliver: &[f32], b_sliver: &[f32], item: usize, row: usize, col: usize, kc: usize, overwrite: bool| {
        // SAFETY: the tile (item `item`, rows `row..row + MR.min(m - row)`, columns
        // `col..col + NR.min(n - col)`) lies inside `c` (checked above with `out.end`), and no
        // other unit writes it: units differ in their row block or column sliver, and items and
        // rows do not overlap (checked above).
        unsafe {
            let at = dst.ptr().add(item * out.item_stride + row * out.ldc + col);
            tile(fma, kc, a_sliver, b_sliver, at, out.ldc, MR.min(m - row), NR.min(n - col), overwrite)
        };
    };
    let wide = cfg!(target_arch = "x86_64") && avx512();
    // Tiles of row slivers `slivers` (of `A`, packed in `pa`) against column sliver `j` (of all
    // items' sequence), or `j` and `j + 1` where they pair (`b` holds `b.len() / (NR * kc)`
    // slivers): where AVX-512 is used, full tiles go in vertically adjacent pairs, as `12 x 32`
    // tiles against two slivers, else `12 x 16`.
    // `pa` starts at row sliver `first` of `A`.
    let tile_rows = |pa: &[f32], first: usize, slivers: core::ops::Range<usize>, b: &[f32], j: usize, kc: usize, overwrite: bool| {
        let pa = |ir: usize, count: usize| &pa[(ir - first) * MR * kc..(ir - first + count) * MR * kc];
        let sliver_len = NR * kc;
        let two = b.len() == 2 * sliver_len;
        debug_assert!(b.len() == sliver_len || (two && full(j) && full(j + 1)));
        // Where sliver `j + s`'s columns of row `row` of `C` start.
        #[cfg(target_arch = "x86_64")]
        let at = |s: usize, row: usize| {
            let (item, col) = place(j + s);
            item * out.item_stride + row * out.ldc + col
        };
        let mut ir = slivers.start;
        while ir < slivers.end {
            if wide && ir + 1 < slivers.end && (ir + 2) * MR <= m && full(j) {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: AVX-512F was detected (`avx512`); the tiles (rows `ir * MR..(ir + 2) * MR`,
                // the columns of sliver `j`, and of `j + 1` with two, all full as checked above)
                // lie inside `c` and are written by this unit only (as in `tile_at`); the slivers
                // hold `kc` depths.
                unsafe {
                    let (a, c) = (pa(ir, 2).as_ptr(), dst.ptr());
                    if two {
                        let (lo, hi) = (c.add(at(0, ir * MR)), c.add(at(1, ir * MR)));
                        kernel_avx512_quad(kc, a, kc * MR, b.as_ptr(), sliver_len, [lo, hi], out.ldc, overwrite);
                    } else {
                        kernel_avx512_pair(kc, a, kc * MR, b.as_ptr(), c.add(at(0, ir * MR)), out.ldc, overwrite);
                    }
                }
                ir += 2;
            } else if wide && full(j) {
                // A lone row sliver (the last, or the only one; its rows may be fewer than
                // `MR`): `6 x 32` or `6 x 16` with AVX-512, through a local tile when partial.
                #[cfg(target_arch = "x86_64")]
                // SAFETY: AVX-512F was detected (`avx512`); the slivers hold `kc` depths; the
                // tiles (rows `ir * MR..ir * MR + rows`, the columns of sliver `j`, and of `j + 1`
                // with two, all full) lie inside `c` and are written by this unit only (as in
                // `tile_at`); the local tile holds `MR` rows of `2 * NR`.
                unsafe {
                    let (a, rows, c) = (pa(ir, 1), MR.min(m - ir * MR), dst.ptr());
                    let (lo, hi) = (c.add(at(0, ir * MR)), if two { c.add(at(1, ir * MR)) } else { c });
                    if rows == MR {
                        kernel_avx512_six(kc, a.as_ptr(), b.as_ptr(), sliver_len, two, [lo, hi], out.ldc, overwrite);
                    } else {
                        let mut local = [0.0f32; MR * 2 * NR];
                        let l = local.as_mut_ptr();
                        kernel_avx512_six(kc, a.as_ptr(), b.as_ptr(), sliver_len, two, [l, l.add(NR)], 2 * NR, true);
                        for (h, dst) in [lo, hi].into_iter().enumerate().take(if two { 2 } else { 1 }) {
                            for i in 0..rows {
                                let (d, v) = (dst.add(i * out.ldc), &local[i * 2 * NR + h * NR..][..NR]);
                                for (q, &v) in v.iter().enumerate() {
                                    *d.add(q) = if overwrite { v } else { *d.add(q) + v };
                                }
                            }
                        }
                    }
                }
                ir += 1;
            } else {
                for (s, b_sliver) in b.chunks_exact(sliver_len).enumerate() {
                    let (item, col) = place(j + s);
                    tile_at(pa(ir, 1), b_sliver, item, ir * MR, col, kc, overwrite);
                }
                ir += 1;
            }
        }
    };
    // On several threads, each task packs the column slivers it multiplies itself
    // (`own_slivers`), in groups as large as half of L2 holds (`GROUP_ELEMS`; every group reads
    // all of `A` again, from L3 when `A` is large), their count a multiple of the thread count
    // (groups differ by at most one sliver, so the threads' shares are equal), of at least
    // `MIN_GROUP` slivers. With fewer columns than that (fewer than 8 slivers on 2 threads), and
    // on one thread (where packing up to `NC` columns once and meeting each row block of `A`
    // with all of them measured a few percent faster on ResNet-18's forward passes), the block
    // of `B` is packed once and read by every unit.
    let group = (GROUP_ELEMS / (NR * depth_block)).clamp(MIN_GROUP, MAX_GROUP);
    let groups = slivers.div_ceil(group).next_multiple_of(threads.max(1));
    let own = threads > 1 && slivers / groups >= MIN_GROUP;
    // (Worth a parallel loop: at least two tasks' minimum of multiply-adds.)
    let macs = m.saturating_mul(slivers * NR).saturating_mul(k);
    if threads > 1 && split_rows(m, n, items, k) && macs >= 2 * super::par::MIN_TASK_WORK {
        // `A` is the large operand (deep layers on small planes: ResNet-18's layer 4,
        // MobileNetV2's last 1x1 convolution). Every depth block of every column sliver is packed
        // first (`pack_b` holds them all, block `pc` at `pc * slivers * NR`), then each thread
        // takes its own rows of `A` through all depth blocks, packing `MC` rows of a block at a
        // time right before it meets every column sliver with them. Packed rows of `A` stay with
        // the thread that packed them, and there are two parallel loops per product instead of
        // two per depth block. Tiles are computed as on the other paths.
        let pb_all = &mut pack_b[..slivers * NR * k];
        let base = Dst(pb_all.as_mut_ptr());
        let depth_blocks = k.div_ceil(depth_block);
        let per_task = (super::par::MIN_TASK_WORK / (NR * depth_block)).max(1);
        super::par::for_each_index(threads, depth_blocks * slivers, per_task, |u| {
            let (pc, j) = (u / slivers * depth_block, u % slivers);
            let kc = depth_block.min(k - pc);
            let (item, col) = place(j);
            // SAFETY: sliver `j` of depth block `pc` (`NR * kc` elements at
            // `pc * slivers * NR + j * NR * kc`, inside `pb_all`, which holds `slivers * NR * k`)
            // is packed by this call only.
            let sliver = unsafe { core::slice::from_raw_parts_mut(base.ptr().add(pc * slivers * NR + j * NR * kc), NR * kc) };
            b.pack(item, pc, col, NR.min(n - col), sliver);
        });
        let pb_all = &*pb_all;
        // Row slivers in equal runs of an even count (so that pairs of them stay together).
        let tasks = threads.min(slivers_a / 2);
        let bound = |t: usize| if t == tasks { slivers_a } else { (slivers_a * t / tasks).div_ceil(2) * 2 };
        let a_base = Dst(pack_a.as_mut_ptr());
        super::par::for_each_index(threads, tasks, 1, |t| {
            for pc in (0..k).step_by(depth_block) {
                let kc = depth_block.min(k - pc);
                let overwrite = !accumulate && pc == 0;
                let pb = &pb_all[pc * slivers * NR..][..slivers * NR * kc];
                for ib in (bound(t)..bound(t + 1)).step_by(MC / MR) {
                    let ie = (ib + MC / MR).min(bound(t + 1));
                    // Placed as if every block were `depth_block` deep: a task that has reached a
                    // shorter last block must not write into rows another task still reads.
                    // SAFETY: row slivers `ib..ie` (`MR * kc` elements each, from
                    // `ib * MR * depth_block`, inside `pack_a`, which holds
                    // `slivers_a * MR * depth_block`) belong to this task's run only.
                    let pa = unsafe { core::slice::from_raw_parts_mut(a_base.ptr().add(ib * MR * depth_block), (ie - ib) * MR * kc) };
                    for (i, sliver) in pa.chunks_exact_mut(MR * kc).enumerate() {
                        let row = (ib + i) * MR;
                        a.pack(pc, row, MR.min(m - row), sliver);
                    }
                    let mut j = 0;
                    while j < slivers {
                        let taken = pair_len(j, slivers - j);
                        tile_rows(pa, ib, ib..ie, &pb[j * NR * kc..(j + taken) * NR * kc], j, kc, overwrite);
                        j += taken;
                    }
                }
            }
        });
        return;
    }
    // Depth blocks outermost: `a`'s block is packed once for every column block, and each
    // output still adds its depth blocks in order, so the rounding is that of the plain loop.
    for pc in (0..k).step_by(depth_block) {
        let kc = depth_block.min(k - pc);
        let pa = &mut pack_a[..slivers_a * MR * kc];
        for_each_chunk(threads, pa, MR * kc, MR * kc, |i, sliver| a.pack(pc, i * MR, MR.min(m - i * MR), sliver));
        let pa = &*pa;
        let overwrite = !accumulate && pc == 0;
        if own {
            let tiles = |rows, b: &[f32], j| tile_rows(pa, 0, rows, b, j, kc, overwrite);
            own_slivers(b, pack_b, (m, n, per_item, slivers), groups, pc, kc, threads, tiles, pair_len);
            continue;
        }
        for first in (0..slivers).step_by(NC / NR) {
            let count = (NC / NR).min(slivers - first);
            let pb = &mut pack_b[..count * NR * kc];
            for_each_chunk(threads, pb, NR * kc, NR * kc, |j, sliver| {
                let (item, col) = place(first + j);
                b.pack(item, pc, col, NR.min(n - col), sliver);
            });
            let pb = &*pb;
            // Units of one row block against two adjacent slivers where they pair (`pair_len`).
            let pairs = count.div_ceil(2);
            let unit = |u: usize| {
                let (ib, jp) = (u / pairs, u % pairs);
                let jr = 2 * jp;
                let rows = ib * (MC / MR)..((ib + 1) * (MC / MR)).min(slivers_a);
                let taken = pair_len(first + jr, count - jr);
                tile_rows(pa, 0, rows.clone(), &pb[jr * NR * kc..(jr + taken) * NR * kc], first + jr, kc, overwrite);
                if taken == 1 && jr + 1 < count {
                    // Two slivers that do not pair (one is partial): one by one.
                    tile_rows(pa, 0, rows, &pb[(jr + 1) * NR * kc..(jr + 2) * NR * kc], first + jr + 1, kc, overwrite);
                }
            };
            let units = blocks_a * pairs;
            let work = MC * 2 * NR * kc;
            if threads > 1 && units > 1 && units * work >= 2 * super::par::MIN_TASK_WORK {
                super::par::for_each_index(threads, units, (super::par::MIN_TASK_WORK / work).max(1), unit);
            } else {
                (0..units).for_each(unit);
            }
        }
    }
}

/// f32 elements of the column slivers a task packs and multiplies at a time, at most: 512 KiB
/// (16 slivers of a 512-deep block), which stay in L2 next to a block of `MC` rows of `A` while
/// every row of `A` meets them.
const GROUP_ELEMS: usize = 128 * 1024;
/// Most column slivers per group (short depths).
const MAX_GROUP: usize = 32;
/// Fewest column slivers per group on more than one thread (each group reads all of `A`).
const MIN_GROUP: usize = 4;

/// One depth block of a product whose tasks pack their own column slivers: the column slivers
/// (of every item, in order) are cut into `groups` groups of consecutive slivers (sizes differ
/// by at most one), runs of groups are shared among the threads, and a task packs each group of
/// its run into its own part of `pack_b`, then multiplies all of `A` (`pa`, packed) with it.
/// Nothing is shared between the tasks but `pa`, so there is no barrier between packing `B` and
/// computing, and a group is used right after it is packed (in L2), where a shared packed block
/// of `B` (up to 4 MiB) came back from L3. `tile(a_sliver, b_sliver, item, row, col)` computes
/// one tile; every tile is computed the same way whatever the thread count or grouping, so
/// results do not depend on them.
#[allow(clippy::too_many_arguments)]
fn own_slivers<B: SourceB>(
    b: &B,
    pack_b: &mut [f32],
    (m, n, per_item, slivers): (usize, usize, usize, usize),
    groups: usize,
    pc: usize,
    kc: usize,
    threads: usize,
    tile_rows: impl Fn(core::ops::Range<usize>, &[f32], usize) + Sync,
    pair_len: impl Fn(usize, usize) -> usize + Sync,
) {
    let slivers_a = m.div_ceil(MR);
    debug_assert!((1..=slivers).contains(&groups));
    let largest = slivers.div_ceil(groups);
    let sliver_len = NR * kc;
    // `pack_b` holds `min(slivers, NC / NR)` slivers of `kc_max >= kc` depths (at least
    // `largest`): one part of `largest` slivers for each task.
    let part = largest * sliver_len;
    assert!(pack_b.len() >= part, "sgemm: packing buffer too small for a group of column slivers");
    let slots = pack_b.len() / part;
    let work = slivers_a * MR * part;
    let tasks = if threads > 1 && groups > 1 && groups * work >= 2 * super::par::MIN_TASK_WORK {
        // A multiple of the threads where the buffer allows, so that their shares are equal.
        let t = groups.min(slots);
        if t >= threads {
            t - t % threads
        } else {
            t
        }
    } else {
        1
    };
    let base = Dst(pack_b.as_mut_ptr());
    let run = |t: usize| {
        // SAFETY: part `t` of `pack_b` (`t < tasks <= slots`, so inside it) is used by task `t`
        // only.
        let slot = unsafe { core::slice::from_raw_parts_mut(base.ptr().add(t * part), part) };
        for g in groups * t / tasks..groups * (t + 1) / tasks {
            let first = slivers * g / groups;
            let count = slivers * (g + 1) / groups - first;
            for (j, sliver) in slot.chunks_exact_mut(sliver_len).take(count).enumerate() {
                let (item, col) = ((first + j) / per_item, (first + j) % per_item * NR);
                b.pack(item, pc, col, NR.min(n - col), sliver);
            }
            // Rows of `A` in blocks of `MC` (in L2), each met by every sliver of the group (in
            // L1), two adjacent ones at a time where they pair (`pair_len`).
            for ib in (0..slivers_a).step_by(MC / MR) {
                let mut j = 0;
                while j < count {
                    let taken = pair_len(first + j, count - j);
                    tile_rows(ib..(ib + MC / MR).min(slivers_a), &slot[j * sliver_len..(j + taken) * sliver_len], first + j);
                    j += taken;
                }
            }
        }
    };
    if tasks > 1 {
        super::par::for_each_index(threads, tasks, 1, run);
    } else {
        run(0);
    }
}

/// Packs columns `col..col + cols` of rows `pc..pc + sliver.len() / NR` of `b` into one sliver:
/// depth-major, `NR` values per depth, zero beyond `cols`.
fn pack_b_sliver(b: Mat<'_>, pc: usize, col: usize, cols: usize, sliver: &mut [f32]) {
    if b.col_stride == 1 && cols == NR {
        // A constant length: copied in registers rather than by a call per depth.
        for (p, out) in sliver.chunks_exact_mut(NR).enumerate() {
            let start = (pc + p) * b.row_stride + col;
            out.copy_from_slice(&b.data[start..start + NR]);
        }
    } else if b.col_stride == 1 {
        for (p, out) in sliver.chunks_exact_mut(NR).enumerate() {
            let start = (pc + p) * b.row_stride + col;
            out[..cols].copy_from_slice(&b.data[start..start + cols]);
            out[cols..].fill(0.0);
        }
    } else {
        let kc = sliver.len() / NR;
        if cols < NR {
            sliver.fill(0.0);
        }
        for j in 0..cols {
            let base = (col + j) * b.col_stride + pc * b.row_stride;
            for p in 0..kc {
                sliver[p * NR + j] = b.data[base + p * b.row_stride];
            }
        }
    }
}

/// Packs rows `row..row + rows` of depths `pc..pc + sliver.len() / MR` of `a` into one sliver:
/// depth-major, `MR` values per depth, zero beyond `rows`.
fn pack_a_sliver(a: Mat<'_>, pc: usize, row: usize, rows: usize, sliver: &mut [f32]) {
    let kc = sliver.len() / MR;
    if rows < MR {
        sliver.fill(0.0);
    }
    if a.row_stride == 1 && a.col_stride != 1 {
        for (p, out) in sliver.chunks_exact_mut(MR).enumerate() {
            let start = (pc + p) * a.col_stride + row;
            out[..rows].copy_from_slice(&a.data[start..start + rows]);
        }
    } else if rows == MR && a.col_stride == 1 {
        // Whole slivers of a row-major matrix: each depth's `MR` values written at once, read
        // from `MR` rows that are each walked in order.
        let src: [&[f32]; MR] = core::array::from_fn(|i| &a.data[(row + i) * a.row_stride + pc..][..kc]);
        for (p, out) in sliver.chunks_exact_mut(MR).enumerate() {
            *<&mut [f32; MR]>::try_from(out).expect("MR values") = core::array::from_fn(|i| src[i][p]);
        }
    } else {
        for i in 0..rows {
            let base = (row + i) * a.row_stride + pc * a.col_stride;
            for p in 0..kc {
                sliver[p * MR + i] = a.data[base + p * a.col_stride];
            }
        }
    }
}

/// One `rows x cols` tile of `C` at `c` (row stride `ldc`): `C = A_sliver @ B_sliver`
/// (`overwrite`) or `C += A_sliver @ B_sliver`.
///
/// # Safety
/// `c` must point at a tile of `rows <= MR` rows and `cols <= NR` columns, row stride `ldc`,
/// valid for reads and writes and not accessed by anything else meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn tile(fma: bool, kc: usize, a: &[f32], b: &[f32], c: *mut f32, ldc: usize, rows: usize, cols: usize, overwrite: bool) {
    debug_assert!(a.len() >= kc * MR && b.len() >= kc * NR);
    let full = rows == MR && cols == NR;
    let mut local = [0.0f32; MR * NR];
    // A partial tile is computed into `local` (row stride NR), then its valid part is moved.
    let (out, out_ld, out_overwrite) = if full { (c, ldc, overwrite) } else { (local.as_mut_ptr(), NR, true) };
    #[cfg(target_arch = "x86_64")]
    if fma {
        // SAFETY: `fma` is true only when `isa` found AVX2 and FMA on this CPU; `a` and `b` hold
        // `kc` depths; `out` is the caller's full tile or `local`.
        unsafe { kernel_avx2(kc, a.as_ptr(), b.as_ptr(), out, out_ld, out_overwrite) };
    } else {
        // SAFETY: as above, without the instruction-set condition.
        unsafe { kernel_portable(kc, a, b, out, out_ld, out_overwrite) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = fma;
        // SAFETY: `a` and `b` hold `kc` depths; `out` is the caller's full tile or `local`.
        unsafe { kernel_portable(kc, a, b, out, out_ld, out_overwrite) };
    }
    if !full {
        for i in 0..rows {
            for j in 0..cols {
                // SAFETY: `(i, j)` is inside the caller's tile.
                unsafe {
                    let d = c.add(i * ldc + j);
                    *d = if overwrite { local[i * NR + j] } else { *d + local[i * NR + j] };
                }
            }
        }
    }
}

/// The micro-kernel in plain Rust: `MR x NR` accumulators the compiler keeps in vector registers.
///
/// # Safety
/// `c` must be valid for an `MR x NR` tile of row stride `ldc`.
unsafe fn kernel_portable(kc: usize, a: &[f32], b: &[f32], c: *mut f32, ldc: usize, overwrite: bool) {
    let mut acc = [[0.0f32; NR]; MR];
    for (ap, bp) in a.chunks_exact(MR).zip(b.chunks_exact(NR)).take(kc) {
        for (row, &av) in acc.iter_mut().zip(ap) {
            for (x, &bv) in row.iter_mut().zip(bp) {
                *x += av * bv;
            }
        }
    }
    for (i, row) in acc.iter().enumerate() {
        for (j, &v) in row.iter().enumerate() {
            // SAFETY: `(i, j)` is inside the tile (the caller's contract).
            unsafe {
                let d = c.add(i * ldc + j);
                *d = if overwrite { v } else { *d + v };
            }
        }
    }
}

/// The AVX2+FMA micro-kernel: 12 accumulator registers (6 rows x 2 vectors of 8).
///
/// Its loads are single instructions written with `asm!`: the intrinsics `_mm256_loadu_ps` and
/// `_mm256_broadcast_ss` go through `copy_nonoverlapping` and a reference, whose precondition
/// checks (on in every build with debug assertions, the test profile's timing binary included)
/// spilled every load through the stack and cost about a third of the kernel's speed.
///
/// # Safety
/// The CPU must have AVX2 and FMA; `a` must hold `kc * MR` and `b` `kc * NR` values; `c` must be
/// valid for an `MR x NR` tile of row stride `ldc`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel_avx2(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, overwrite: bool) {
    use core::arch::asm;
    use core::arch::x86_64::*;
    /// 8 floats from `p` (any alignment).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load(p: *const f32) -> __m256 {
        let v: __m256;
        // SAFETY: the caller's pointer is valid for 8 floats; the instruction only reads them.
        unsafe {
            asm!("vmovups {v}, ymmword ptr [{p}]", p = in(reg) p, v = out(ymm_reg) v, options(pure, readonly, nostack, preserves_flags))
        };
        v
    }
    /// The float at `p` in all 8 lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn splat(p: *const f32) -> __m256 {
        let v: __m256;
        // SAFETY: the caller's pointer is valid for one float; the instruction only reads it.
        unsafe {
            asm!("vbroadcastss {v}, dword ptr [{p}]", p = in(reg) p, v = out(ymm_reg) v, options(pure, readonly, nostack, preserves_flags))
        };
        v
    }
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
    let (mut ap, mut bp) = (a, b);
    for _ in 0..kc {
        // SAFETY: `ap` and `bp` point at depth `p < kc` of the slivers, inside them (the caller's
        // contract).
        unsafe {
            let b0 = load(bp);
            let b1 = load(bp.wrapping_add(8));
            for (i, row) in acc.iter_mut().enumerate() {
                let av = splat(ap.wrapping_add(i));
                row[0] = _mm256_fmadd_ps(av, b0, row[0]);
                row[1] = _mm256_fmadd_ps(av, b1, row[1]);
            }
        }
        ap = ap.wrapping_add(MR);
        bp = bp.wrapping_add(NR);
    }
    for (i, row) in acc.iter().enumerate() {
        // SAFETY: row `i` of the tile is inside `c` (the caller's contract).
        unsafe {
            let d = c.add(i * ldc);
            if overwrite {
                _mm256_storeu_ps(d, row[0]);
                _mm256_storeu_ps(d.add(8), row[1]);
            } else {
                _mm256_storeu_ps(d, _mm256_add_ps(load(d), row[0]));
                _mm256_storeu_ps(d.add(8), _mm256_add_ps(load(d.add(8)), row[1]));
            }
        }
    }
}

/// Four tiles at once with AVX-512F: rows `0..MR` from the `A` sliver at `a` and rows
/// `MR..2 * MR` from the one at `a + a_next`, against the `B` sliver at `b` (the `2 * MR x NR`
/// tile at `c[0]`) and the one at `b + b_next` (the tile at `c[1]`, which may be another item's
/// result): 24 accumulators, 2 loads of `B` and 12
/// broadcasts of `A` per depth for 24 multiply-adds, where [`kernel_avx512_pair`] does 13 loads
/// for 12. Each output is the same chain of fused multiply-adds over the depths in order, added
/// to `C` once at the end, so the bits are the other kernels'.
///
/// # Safety
/// The CPU must have AVX-512F; both `A` slivers must hold `kc * MR` values and both `B` slivers
/// `kc * NR`; both `c` must be valid for a `2 * MR x NR` tile of row stride `ldc`, and not
/// overlap.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
// Rows `i` and `MR + i` of the accumulators in one loop: an index reads clearer than two zips.
#[allow(clippy::needless_range_loop)]
unsafe fn kernel_avx512_quad(
    kc: usize,
    a: *const f32,
    a_next: usize,
    b: *const f32,
    b_next: usize,
    c: [*mut f32; 2],
    ldc: usize,
    overwrite: bool,
) {
    use core::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 2]; 2 * MR];
    let (mut ap, mut bp) = (a, b);
    for _ in 0..kc {
        // SAFETY: `ap`, `ap + a_next`, `bp` and `bp + b_next` point at depth `p < kc` of their
        // slivers (the caller's contract).
        unsafe {
            let (b0, b1) = (_mm512_loadu_ps(bp), _mm512_loadu_ps(bp.add(b_next)));
            for i in 0..MR {
                let x = _mm512_set1_ps(*ap.add(i));
                acc[i][0] = _mm512_fmadd_ps(x, b0, acc[i][0]);
                acc[i][1] = _mm512_fmadd_ps(x, b1, acc[i][1]);
            }
            for i in 0..MR {
                let x = _mm512_set1_ps(*ap.add(a_next + i));
                acc[MR + i][0] = _mm512_fmadd_ps(x, b0, acc[MR + i][0]);
                acc[MR + i][1] = _mm512_fmadd_ps(x, b1, acc[MR + i][1]);
            }
        }
        ap = ap.wrapping_add(MR);
        bp = bp.wrapping_add(NR);
    }
    // SAFETY: both tiles have `2 * MR` rows (the caller's contract).
    unsafe { store_rows(&acc, 2, c, ldc, overwrite) };
}

/// One row sliver with AVX-512F: rows `0..MR` from the `A` sliver at `a` against the `B` sliver
/// at `b` (the `MR x NR` tile at `c[0]`) and, when `two`, the one at `b + b_next` (the tile at
/// `c[1]`): one 512-bit accumulator per row and sliver. Each output is the same chain of fused
/// multiply-adds over the depths in order, added to `C` once at the end, so the bits are the
/// other kernels'.
///
/// # Safety
/// The CPU must have AVX-512F; the `A` sliver must hold `kc * MR` values and the `B` slivers
/// `kc * NR`; `c[0]` (and `c[1]` when `two`) must be valid for an `MR x NR` tile of row stride
/// `ldc`, and not overlap.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_avx512_six(
    kc: usize,
    a: *const f32,
    b: *const f32,
    b_next: usize,
    two: bool,
    c: [*mut f32; 2],
    ldc: usize,
    overwrite: bool,
) {
    use core::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    let (mut ap, mut bp) = (a, b);
    if two {
        for _ in 0..kc {
            // SAFETY: `ap`, `bp` and `bp + b_next` point at depth `p < kc` of their slivers (the
            // caller's contract).
            unsafe {
                let (b0, b1) = (_mm512_loadu_ps(bp), _mm512_loadu_ps(bp.add(b_next)));
                for (i, row) in acc.iter_mut().enumerate() {
                    let x = _mm512_set1_ps(*ap.add(i));
                    row[0] = _mm512_fmadd_ps(x, b0, row[0]);
                    row[1] = _mm512_fmadd_ps(x, b1, row[1]);
                }
            }
            ap = ap.wrapping_add(MR);
            bp = bp.wrapping_add(NR);
        }
    } else {
        for _ in 0..kc {
            // SAFETY: as above, one `B` sliver.
            unsafe {
                let b0 = _mm512_loadu_ps(bp);
                for (i, row) in acc.iter_mut().enumerate() {
                    row[0] = _mm512_fmadd_ps(_mm512_set1_ps(*ap.add(i)), b0, row[0]);
                }
            }
            ap = ap.wrapping_add(MR);
            bp = bp.wrapping_add(NR);
        }
    }
    // SAFETY: the tiles have `MR` rows (the caller's contract).
    unsafe { store_rows(&acc, if two { 2 } else { 1 }, c, ldc, overwrite) };
}

/// Writes accumulator rows to `C`: `acc[i][h]` is row `i` of the tile at `c[h]`, for the first
/// `tiles` tiles (`C = acc`, or `C += acc` unless `overwrite`).
///
/// # Safety
/// The CPU must have AVX-512F; each of the first `tiles` pointers must be valid for an
/// `acc.len() x NR` tile of row stride `ldc`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn store_rows(acc: &[[core::arch::x86_64::__m512; 2]], tiles: usize, c: [*mut f32; 2], ldc: usize, overwrite: bool) {
    use core::arch::x86_64::*;
    for (i, row) in acc.iter().enumerate() {
        for (h, half) in row.iter().enumerate().take(tiles) {
            // SAFETY: row `i` of tile `h` is inside `c[h]` (the caller's contract).
            unsafe {
                let d = c[h].add(i * ldc);
                if overwrite {
                    _mm512_storeu_ps(d, *half);
                } else {
                    _mm512_storeu_ps(d, _mm512_add_ps(_mm512_loadu_ps(d), *half));
                }
            }
        }
    }
}

/// Two vertically adjacent tiles at once with AVX-512F: rows `0..MR` from the `A` sliver at `a`
/// and rows `MR..2 * MR` from the one at `a + a_next`, all `NR` columns, one 512-bit accumulator
/// per row (12 registers). Each output is the AVX2 kernel's chain of fused multiply-adds over the
/// depths in order, added to `C` once at the end, so the bits are the AVX2 kernel's.
///
/// # Safety
/// The CPU must have AVX-512F; both `A` slivers must hold `kc * MR` values and `b` `kc * NR`;
/// `c` must be valid for a `2 * MR x NR` tile of row stride `ldc`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn kernel_avx512_pair(kc: usize, a: *const f32, a_next: usize, b: *const f32, c: *mut f32, ldc: usize, overwrite: bool) {
    use core::arch::x86_64::*;
    let mut acc = [_mm512_setzero_ps(); 2 * MR];
    let (mut ap, mut bp) = (a, b);
    for _ in 0..kc {
        // SAFETY: `ap`, `ap + a_next` and `bp` point at depth `p < kc` of their slivers (the
        // caller's contract).
        unsafe {
            let bv = _mm512_loadu_ps(bp);
            for i in 0..MR {
                acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(*ap.add(i)), bv, acc[i]);
                acc[MR + i] = _mm512_fmadd_ps(_mm512_set1_ps(*ap.add(a_next + i)), bv, acc[MR + i]);
            }
        }
        ap = ap.wrapping_add(MR);
        bp = bp.wrapping_add(NR);
    }
    for (i, row) in acc.iter().enumerate() {
        // SAFETY: row `i` of the tile is inside `c` (the caller's contract).
        unsafe {
            let d = c.add(i * ldc);
            if overwrite {
                _mm512_storeu_ps(d, *row);
            } else {
                _mm512_storeu_ps(d, _mm512_add_ps(_mm512_loadu_ps(d), *row));
            }
        }
    }
}
