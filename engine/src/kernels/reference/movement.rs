//! Movement kernels. Each walks the output in row-major order and computes the input element it
//! reads from the output's coordinates, innermost axis first, so no index buffer is needed (and
//! nothing is allocated).

use crate::kernels::{Float, KernelError, View, ViewMut};
use crate::ops::Slice;

/// Row-major stride of axis `axis` of `shape`.
fn stride(shape: &[usize], axis: usize) -> usize {
    shape[axis + 1..].iter().product()
}

/// `y[c] = x[c permuted]`: `y`'s axis `k` is `x`'s axis `perm[k]`.
pub fn transpose<V: Copy>(perm: &[usize], x: View<V>, y: &mut ViewMut<V>) {
    for (i, yv) in y.data.iter_mut().enumerate() {
        let (mut rest, mut from) = (i, 0);
        for (k, &dim) in y.shape.iter().enumerate().rev() {
            from += (rest % dim) * stride(x.shape, perm[k]);
            rest /= dim;
        }
        *yv = x.data[from];
    }
}

/// Joins `xs` along `axis`: for each index of the axes before it, each input contributes one
/// contiguous run of `x.shape[axis] * inner` elements.
pub fn concat<V: Copy>(axis: usize, xs: &[View<V>], y: &mut ViewMut<V>) {
    let outer: usize = y.shape[..axis].iter().product();
    let inner = stride(y.shape, axis);
    let mut at = 0;
    for o in 0..outer {
        for x in xs {
            let run = x.shape[axis] * inner;
            y.data[at..at + run].copy_from_slice(&x.data[o * run..(o + 1) * run]);
            at += run;
        }
    }
}

/// The inverse of [`concat`]: consecutive pieces of `x` along `axis` into `ys`.
pub fn split<V: Copy>(axis: usize, x: View<V>, ys: &mut [ViewMut<V>]) {
    let outer: usize = x.shape[..axis].iter().product();
    let inner = stride(x.shape, axis);
    let mut at = 0;
    for o in 0..outer {
        for y in ys.iter_mut() {
            let run = y.shape[axis] * inner;
            y.data[o * run..(o + 1) * run].copy_from_slice(&x.data[at..at + run]);
            at += run;
        }
    }
}

/// Flat index in `x` (shape `x_shape`) of the element a slice puts at flat index `i` of its
/// output `y_shape`.
fn sliced_index(slice: &Slice, x_shape: &[usize], y_shape: &[usize], i: usize) -> usize {
    let (mut rest, mut from, mut step_size) = (i, 0, 1);
    for (k, &dim) in y_shape.iter().enumerate().rev() {
        let (start, _, step) = slice.range(x_shape, k);
        // `start + c * step` lies in `[0, x_shape[k])` by the slice rule, so it is a valid index.
        let coord = start as i128 + (rest % dim) as i128 * step as i128;
        from += coord as usize * step_size;
        step_size *= x_shape[k];
        rest /= dim;
    }
    from
}

pub fn slice<V: Copy>(slice: &Slice, x: View<V>, y: &mut ViewMut<V>) {
    for (i, yv) in y.data.iter_mut().enumerate() {
        *yv = x.data[sliced_index(slice, x.shape, y.shape, i)];
    }
}

/// `dx` = 0, then `dy` written where the slice read (a slice never reads an element twice).
pub fn slice_grad<T: Float>(slice: &Slice, dy: View<T>, dx: &mut ViewMut<T>) {
    dx.data.fill(T::zero());
    for (i, &g) in dy.data.iter().enumerate() {
        dx.data[sliced_index(slice, dx.shape, dy.shape, i)] = g;
    }
}

/// Numpy broadcasting of `x` to `y`'s shape: `x` is aligned on the right, and its size-1 axes
/// (and the leading axes it lacks) repeat.
pub fn expand<V: Copy>(x: View<V>, y: &mut ViewMut<V>) {
    let lead = y.shape.len() - x.shape.len();
    for (i, yv) in y.data.iter_mut().enumerate() {
        let (mut rest, mut from, mut step) = (i, 0, 1);
        for (k, &dim) in y.shape.iter().enumerate().rev().take(x.shape.len()) {
            let x_dim = x.shape[k - lead];
            if x_dim != 1 {
                from += (rest % dim) * step;
            }
            step *= x_dim;
            rest /= dim;
        }
        *yv = x.data[from];
    }
}

/// The position along an axis of size `n` that index `index` names, negative ones counting from
/// the end, or an error when it is out of range.
fn resolve(op: &'static str, index: i64, n: usize) -> Result<usize, KernelError> {
    let n_i = n as i128;
    let i = if index < 0 { index as i128 + n_i } else { index as i128 };
    if i < 0 || i >= n_i {
        return Err(KernelError::IndexOutOfRange { op, index, len: n });
    }
    Ok(i as usize)
}

/// ONNX Gather. Every index is checked before anything is written.
pub fn gather<V: Copy>(axis: usize, data: View<V>, indices: View<i64>, y: &mut ViewMut<V>) -> Result<(), KernelError> {
    let n = data.shape[axis];
    for &index in indices.data {
        resolve("Gather", index, n)?;
    }
    let outer: usize = data.shape[..axis].iter().product();
    let inner = stride(data.shape, axis);
    let m = indices.data.len();
    for o in 0..outer {
        for (t, &index) in indices.data.iter().enumerate() {
            let from = (o * n + resolve("Gather", index, n)?) * inner;
            let to = (o * m + t) * inner;
            y.data[to..to + inner].copy_from_slice(&data.data[from..from + inner]);
        }
    }
    Ok(())
}

/// Scatter-add of `dy` into `ddata` (zeroed first): Gather's gradient with respect to its data.
pub fn gather_grad<T: Float>(axis: usize, dy: View<T>, indices: View<i64>, ddata: &mut ViewMut<T>) -> Result<(), KernelError> {
    let n = ddata.shape[axis];
    for &index in indices.data {
        resolve("GatherGrad", index, n)?;
    }
    ddata.data.fill(T::zero());
    let outer: usize = ddata.shape[..axis].iter().product();
    let inner = stride(ddata.shape, axis);
    let m = indices.data.len();
    for o in 0..outer {
        for (t, &index) in indices.data.iter().enumerate() {
            let to = (o * n + resolve("GatherGrad", index, n)?) * inner;
            let from = (o * m + t) * inner;
            for (d, &g) in ddata.data[to..to + inner].iter_mut().zip(&dy.data[from..from + inner]) {
                *d += g;
            }
        }
    }
    Ok(())
}

/// Constant padding: `pads[k]` elements before and `pads[k + rank]` after axis `k`.
pub fn pad<T: Float>(pads: &[usize], value: T, x: View<T>, y: &mut ViewMut<T>) {
    for (i, yv) in y.data.iter_mut().enumerate() {
        let (mut rest, mut from, mut step, mut inside) = (i, 0, 1, true);
        for (k, &dim) in y.shape.iter().enumerate().rev() {
            let coord = rest % dim;
            rest /= dim;
            match coord.checked_sub(pads[k]) {
                Some(c) if c < x.shape[k] => from += c * step,
                _ => inside = false,
            }
            step *= x.shape[k];
        }
        *yv = if inside { x.data[from] } else { value };
    }
}

/// ONNX Trilu over the last two axes `[.., rows, cols]`: keeps `(i, j)` where `j - i >= k`
/// (`upper`) or `j - i <= k`, and writes 0 elsewhere.
pub fn trilu<V: Copy + Default>(upper: bool, k: i64, x: View<V>, y: &mut ViewMut<V>) {
    let r = x.shape.len();
    let (rows, cols) = (x.shape[r - 2], x.shape[r - 1]);
    for (p, (yv, &xv)) in y.data.iter_mut().zip(x.data).enumerate() {
        let (i, j) = ((p / cols % rows) as i128, (p % cols) as i128);
        let keep = if upper { j - i >= k as i128 } else { j - i <= k as i128 };
        // Default is 0 for numbers and false (0) for bool bytes.
        *yv = if keep { xv } else { V::default() };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view<'a, V>(data: &'a [V], shape: &'a [usize]) -> View<'a, V> {
        View { data, shape }
    }

    #[test]
    fn transpose_moves_axes() {
        // x [2, 3] = [[0, 1, 2], [3, 4, 5]] -> its transpose [3, 2].
        let mut y = [0i64; 6];
        transpose(&[1, 0], view(&[0, 1, 2, 3, 4, 5], &[2, 3]), &mut ViewMut { data: &mut y, shape: &[3, 2] });
        assert_eq!(y, [0, 3, 1, 4, 2, 5]);
        // x [1, 2, 3] with perm [2, 0, 1] -> [3, 1, 2]: y[c][0][a] = x[0][a][c].
        let mut y = [0.0; 6];
        transpose(&[2, 0, 1], view(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0], &[1, 2, 3]), &mut ViewMut { data: &mut y, shape: &[3, 1, 2] });
        assert_eq!(y, [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
    }

    #[test]
    fn concat_and_split_are_inverse() {
        let (a, b) = ([1u8, 2, 3, 4], [5u8, 6]);
        let mut y = [0u8; 6];
        concat(1, &[view(&a, &[2, 2]), view(&b, &[2, 1])], &mut ViewMut { data: &mut y, shape: &[2, 3] });
        assert_eq!(y, [1, 2, 5, 3, 4, 6]);
        let (mut a2, mut b2) = ([0u8; 4], [0u8; 2]);
        let mut outs = [ViewMut { data: &mut a2[..], shape: &[2, 2] }, ViewMut { data: &mut b2[..], shape: &[2, 1] }];
        split(1, view(&y, &[2, 3]), &mut outs);
        assert_eq!((a2, b2), (a, b));
    }

    #[test]
    fn slice_with_negative_step_and_its_gradient() {
        let slice = Slice { axes: vec![1], starts: vec![-1], ends: vec![i64::MIN], steps: vec![-2] };
        // x [2, 5]: every row reversed, every other element: columns 4, 2, 0.
        let x: [f64; 10] = core::array::from_fn(|i| i as f64);
        let mut y = [0.0; 6];
        super::slice(&slice, view(&x, &[2, 5]), &mut ViewMut { data: &mut y, shape: &[2, 3] });
        assert_eq!(y, [4.0, 2.0, 0.0, 9.0, 7.0, 5.0]);
        let mut dx = [9.0; 10];
        slice_grad(&slice, view(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]), &mut ViewMut { data: &mut dx, shape: &[2, 5] });
        assert_eq!(dx, [3.0, 0.0, 2.0, 0.0, 1.0, 6.0, 0.0, 5.0, 0.0, 4.0]);
    }

    #[test]
    fn expand_repeats_size_one_and_missing_axes() {
        // x [2, 1] = [[1], [2]] -> [3, 2, 2].
        let mut y = [0i64; 12];
        expand(view(&[1, 2], &[2, 1]), &mut ViewMut { data: &mut y, shape: &[3, 2, 2] });
        assert_eq!(y, [1, 1, 2, 2, 1, 1, 2, 2, 1, 1, 2, 2]);
        // x [3] -> [2, 3].
        let mut y = [0i64; 6];
        expand(view(&[7, 8, 9], &[3]), &mut ViewMut { data: &mut y, shape: &[2, 3] });
        assert_eq!(y, [7, 8, 9, 7, 8, 9]);
    }

    #[test]
    fn gather_reads_rows_with_negative_indices_and_refuses_out_of_range() {
        // An embedding table [3, 2] and ids [[2, -3], [1, 2]].
        let table = [0.0, 1.0, 10.0, 11.0, 20.0, 21.0];
        let ids = [2i64, -3, 1, 2];
        let mut y = [0.0; 8];
        gather(0, view(&table, &[3, 2]), view(&ids, &[2, 2]), &mut ViewMut { data: &mut y, shape: &[2, 2, 2] }).unwrap();
        assert_eq!(y, [20.0, 21.0, 0.0, 1.0, 10.0, 11.0, 20.0, 21.0]);
        // Along axis 1: columns [1, 0] of each row.
        let mut y = [0.0; 6];
        gather(1, view(&table, &[3, 2]), view(&[1, 0], &[2]), &mut ViewMut { data: &mut y, shape: &[3, 2] }).unwrap();
        assert_eq!(y, [1.0, 0.0, 11.0, 10.0, 21.0, 20.0]);
        // The gradient accumulates the repeated id 2.
        let mut d = [9.0; 6];
        gather_grad(0, view(&[1.0; 8], &[2, 2, 2]), view(&ids, &[2, 2]), &mut ViewMut { data: &mut d, shape: &[3, 2] }).unwrap();
        assert_eq!(d, [1.0, 1.0, 1.0, 1.0, 2.0, 2.0]);
        for bad in [3i64, -4, i64::MIN] {
            let mut y = [5.0; 2];
            let e = gather(0, view(&table, &[3, 2]), view(&[bad], &[1]), &mut ViewMut { data: &mut y, shape: &[1, 2] }).unwrap_err();
            assert_eq!(e, KernelError::IndexOutOfRange { op: "Gather", index: bad, len: 3 });
            assert_eq!(y, [5.0; 2], "nothing is written before the indices are checked");
        }
    }

    #[test]
    fn pad_and_trilu() {
        // x [1, 2] padded by 1 row after and 1 column before -> [2, 3].
        let mut y = [0.0; 6];
        pad(&[0, 1, 1, 0], -1.0, view(&[5.0, 6.0], &[1, 2]), &mut ViewMut { data: &mut y, shape: &[2, 3] });
        assert_eq!(y, [-1.0, 5.0, 6.0, -1.0, -1.0, -1.0]);
        let x = [1.0; 9];
        let mut y = [0.0; 9];
        trilu(true, 1, view(&x, &[3, 3]), &mut ViewMut { data: &mut y, shape: &[3, 3] });
        assert_eq!(y, [0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]);
        trilu(false, 0, view(&x, &[1, 3, 3]), &mut ViewMut { data: &mut y, shape: &[1, 3, 3] });
        assert_eq!(y, [1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0]);
    }

    #[test]
    fn trilu_zeroes_integers_and_bools_too() {
        // A causal mask built from an int64 or bool tensor: keep j <= i.
        let x = [5i64; 6];
        let mut y = [9i64; 6];
        trilu(false, 0, view(&x, &[2, 3]), &mut ViewMut { data: &mut y, shape: &[2, 3] });
        assert_eq!(y, [5, 0, 0, 5, 5, 0]);
        let b = [1u8; 4];
        let mut m = [1u8; 4];
        trilu(true, 1, view(&b, &[2, 2]), &mut ViewMut { data: &mut m, shape: &[2, 2] });
        assert_eq!(m, [0, 1, 0, 0]);
    }
}
