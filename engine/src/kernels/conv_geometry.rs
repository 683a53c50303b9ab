//! The sizes of a convolution, shared by the reference and the fast kernels.
// Without `std` only the reference kernels use this, and they need only part of it.
#![cfg_attr(not(feature = "std"), allow(dead_code))]

use crate::ops::Conv2d;

/// The sizes of one convolution, read from its input-side (`[N, C, H, W]`), weight
/// (`[O, C/groups, KH, KW]`) and output-side (`[N, O, HO, WO]`) shapes.
pub(crate) struct ConvGeometry {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub o: usize,
    pub groups: usize,
    /// Input channels per group.
    pub cg: usize,
    /// Output channels per group.
    pub og: usize,
    pub kh: usize,
    pub kw: usize,
    pub ho: usize,
    pub wo: usize,
    pub stride: [usize; 2],
    pub padding: [usize; 4],
    pub dilation: [usize; 2],
}

impl ConvGeometry {
    /// `None` when the shapes are not those of a convolution with these attributes (the plan
    /// loader checks them first, so this only guards against misuse).
    pub fn new(conv: &Conv2d, input: &[usize], weight: &[usize], output: &[usize]) -> Option<Self> {
        let (&[n, c, h, w], &[o, cg, kh, kw], &[n_out, o_out, ho, wo]) = (input, weight, output) else { return None };
        let groups = conv.groups;
        if groups == 0 || conv.stride.contains(&0) || n_out != n || o_out != o || !o.is_multiple_of(groups) || cg * groups != c {
            return None;
        }
        Some(ConvGeometry {
            n,
            c,
            h,
            w,
            o,
            groups,
            cg,
            og: o / groups,
            kh,
            kw,
            ho,
            wo,
            stride: conv.stride,
            padding: conv.padding,
            dilation: conv.dilation,
        })
    }

    pub fn in_plane(&self) -> usize {
        self.h * self.w
    }

    pub fn out_plane(&self) -> usize {
        self.ho * self.wo
    }

    /// Kernel taps per output element: the rows of the column matrix.
    pub fn taps(&self) -> usize {
        self.cg * self.kh * self.kw
    }

    pub fn input_index(&self, n: usize, ch: usize, ih: usize, iw: usize) -> usize {
        ((n * self.c + ch) * self.h + ih) * self.w + iw
    }

    pub fn weight_index(&self, o: usize, ci: usize, kh: usize, kw: usize) -> usize {
        ((o * self.cg + ci) * self.kh + kh) * self.kw + kw
    }

    pub fn output_index(&self, n: usize, o: usize, oh: usize, ow: usize) -> usize {
        ((n * self.o + o) * self.ho + oh) * self.wo + ow
    }
}
