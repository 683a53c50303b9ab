//! The host-side evaluator of constant subgraphs.
//!
//! Exporters compute reshape targets and similar values with small graphs over shapes and
//! constants (`Shape -> Gather -> Unsqueeze -> Concat -> Reshape`). Shapes are static in a pock
//! plan, so every such value is known at compile time: the importer evaluates these nodes here,
//! over i64, f32 and bool tensors, and only their results (folded into attributes such as a
//! reshape target) reach the graph.

use super::{Attribute, Node, Tensor, TensorValues};

/// The values of a folded constant: the IR's typed values, so that a folded constant that a
/// run-time op reads becomes a graph constant unchanged.
pub use crate::ir::Values as ConstData;

/// A constant tensor known at compile time.
#[derive(Clone, Debug, PartialEq)]
pub struct Const {
    pub dims: Vec<usize>,
    pub data: ConstData,
}

impl Const {
    pub fn i64(dims: Vec<usize>, values: Vec<i64>) -> Const {
        Const { dims, data: ConstData::I64(values) }
    }

    pub fn len(&self) -> usize {
        match &self.data {
            ConstData::F32(v) => v.len(),
            ConstData::I64(v) => v.len(),
            ConstData::Bool(v) => v.len(),
            ConstData::I8(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dtype_name(&self) -> &'static str {
        match self.data {
            ConstData::F32(_) => "float32",
            ConstData::I64(_) => "int64",
            ConstData::Bool(_) => "bool",
            ConstData::I8(_) => "int8",
        }
    }

    /// The values as i64 (shapes, axes, indices); floats are refused.
    pub fn as_i64(&self) -> Result<Vec<i64>, String> {
        match &self.data {
            ConstData::I64(v) => Ok(v.clone()),
            ConstData::Bool(v) => Ok(v.iter().map(|&b| i64::from(b)).collect()),
            ConstData::I8(v) => Ok(v.iter().map(|&b| i64::from(b)).collect()),
            ConstData::F32(_) => Err("expected an integer tensor, got float32".into()),
        }
    }

    /// The values as f32 (clip bounds, dropout ratios).
    pub fn as_f32(&self) -> Vec<f32> {
        match &self.data {
            ConstData::F32(v) => v.clone(),
            ConstData::I64(v) => v.iter().map(|&x| x as f32).collect(),
            ConstData::Bool(v) => v.iter().map(|&b| if b { 1.0 } else { 0.0 }).collect(),
            ConstData::I8(v) => v.iter().map(|&x| f32::from(x)).collect(),
        }
    }

    /// The single value of a one-element tensor, as f32.
    pub fn scalar_f32(&self) -> Result<f32, String> {
        match self.as_f32().as_slice() {
            [v] => Ok(*v),
            other => Err(format!("expected one value, got {} (shape {:?})", other.len(), self.dims)),
        }
    }

    /// Converts a tensor read from the model. float16/float64 and int32 widen or narrow to the
    /// types pock folds over; the values involved (shapes, small constants) fit.
    pub fn from_tensor(t: &Tensor) -> Const {
        let data = match &t.values {
            TensorValues::F32(v) => ConstData::F32(v.clone()),
            TensorValues::F64(v) => ConstData::F32(v.iter().map(|&x| x as f32).collect()),
            TensorValues::F16(v) => ConstData::F32(v.iter().map(|&h| f16_to_f32(h)).collect()),
            TensorValues::I64(v) => ConstData::I64(v.clone()),
            TensorValues::I32(v) => ConstData::I64(v.iter().map(|&x| i64::from(x)).collect()),
            TensorValues::Bool(v) => ConstData::Bool(v.clone()),
        };
        Const { dims: t.dims.clone(), data }
    }
}

/// IEEE half to single precision (exact).
fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let man = u32::from(h & 0x3ff);
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: normalise the mantissa.
            let shift = m.leading_zeros() - 21;
            sign | ((113 - shift) << 23) | (((m << shift) & 0x3ff) << 13)
        }
        (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 112) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

/// The op types this evaluator folds when all their inputs are constants.
pub const FOLDABLE: &[&str] = &[
    "Abs",
    "Add",
    "And",
    "Cast",
    "Ceil",
    "Concat",
    "Constant",
    "ConstantOfShape",
    "Div",
    "Equal",
    "Exp",
    "Expand",
    "Flatten",
    "Floor",
    "Gather",
    "GatherElements",
    "Greater",
    "GreaterOrEqual",
    "Identity",
    "Less",
    "LessOrEqual",
    "Log",
    "Max",
    "Min",
    "Mod",
    "Mul",
    "Neg",
    "Not",
    "Or",
    "Range",
    "Reciprocal",
    "Reshape",
    "Round",
    "ScatterND",
    "Shape",
    "Sign",
    "Slice",
    "Sqrt",
    "Squeeze",
    "Sub",
    "Transpose",
    "Unsqueeze",
    "Where",
    "Xor",
];

/// The most elements a folded constant may have; a model asking for more (a `Range` or
/// `ConstantOfShape` of absurd size) is refused instead of exhausting memory.
pub const MAX_FOLDED_ELEMENTS: usize = 1 << 26;

/// The element count of `dims`, refusing overflow and sizes past [`MAX_FOLDED_ELEMENTS`].
fn checked_numel(dims: &[usize]) -> Result<usize, String> {
    dims.iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|&n| n <= MAX_FOLDED_ELEMENTS)
        .ok_or_else(|| format!("shape {dims:?} has more than {MAX_FOLDED_ELEMENTS} elements"))
}

/// Normalises a possibly negative axis against `rank` (`rank + 1` for Unsqueeze's output).
pub fn axis(a: i64, rank: usize) -> Result<usize, String> {
    let r = rank as i64;
    let v = if a < 0 { a + r } else { a };
    if (0..r).contains(&v) {
        Ok(v as usize)
    } else {
        Err(format!("axis {a} is out of range for rank {rank}"))
    }
}

/// Row-major strides of `dims`.
pub(super) fn strides(dims: &[usize]) -> Vec<usize> {
    let mut s = vec![1; dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * dims[i + 1];
    }
    s
}

/// Picks elements by flat index, keeping the dtype.
fn take(data: &ConstData, index: impl Iterator<Item = usize>) -> ConstData {
    match data {
        ConstData::F32(v) => ConstData::F32(index.map(|i| v[i]).collect()),
        ConstData::I64(v) => ConstData::I64(index.map(|i| v[i]).collect()),
        ConstData::Bool(v) => ConstData::Bool(index.map(|i| v[i]).collect()),
        ConstData::I8(v) => ConstData::I8(index.map(|i| v[i]).collect()),
    }
}

/// Whether `order` (of `a` against `b`) satisfies the comparison op `op`.
fn compare(op: &str, order: std::cmp::Ordering) -> bool {
    use std::cmp::Ordering::*;
    match op {
        "Equal" => order == Equal,
        "Less" => order == Less,
        "LessOrEqual" => order != Greater,
        "Greater" => order == Greater,
        _ => order != Less,
    }
}

fn int_attr(node: &Node, name: &str) -> Option<i64> {
    match node.attribute(name) {
        Some(Attribute::Int(v)) => Some(*v),
        _ => None,
    }
}

/// The output dims of a Reshape to `target` (ONNX rules: 0 copies the input's size unless
/// `allowzero`, one -1 is inferred).
pub fn reshape_dims(input: &[usize], target: &[i64], allowzero: bool) -> Result<Vec<usize>, String> {
    let total: usize = input.iter().product();
    let mut out = Vec::with_capacity(target.len().min(64));
    let mut infer = None;
    for (i, &d) in target.iter().enumerate() {
        match d {
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            0 if !allowzero => out.push(*input.get(i).ok_or_else(|| format!("shape {target:?} copies dimension {i} of {input:?}"))?),
            d if d >= 0 => out.push(d as usize),
            _ => return Err(format!("shape {target:?} is not a valid reshape target")),
        }
    }
    if let Some(i) = infer {
        let known = out.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).unwrap_or(0);
        if known == 0 || !total.is_multiple_of(known) {
            return Err(format!("cannot reshape {input:?} to {target:?}"));
        }
        out[i] = total / known;
    }
    if out.iter().try_fold(1usize, |n, &d| n.checked_mul(d)) != Some(total) {
        return Err(format!("cannot reshape {input:?} ({total} elements) to {target:?}"));
    }
    Ok(out)
}

/// The output dims of Unsqueeze with these axes.
pub fn unsqueeze_dims(input: &[usize], axes: &[i64]) -> Result<Vec<usize>, String> {
    let rank = input.len() + axes.len();
    let mut at: Vec<usize> = axes.iter().map(|&a| axis(a, rank)).collect::<Result<_, _>>()?;
    at.sort_unstable();
    if at.windows(2).any(|w| w[0] == w[1]) {
        return Err(format!("axes {axes:?} repeat an axis"));
    }
    let mut rest = input.iter();
    Ok((0..rank).map(|i| if at.contains(&i) { 1 } else { *rest.next().unwrap_or(&1) }).collect())
}

/// The output dims of Squeeze with these axes (all size-1 axes when `None`).
pub fn squeeze_dims(input: &[usize], axes: Option<&[i64]>) -> Result<Vec<usize>, String> {
    match axes {
        None => Ok(input.iter().copied().filter(|&d| d != 1).collect()),
        Some(axes) => {
            let at: Vec<usize> = axes.iter().map(|&a| axis(a, input.len())).collect::<Result<_, _>>()?;
            if let Some(&a) = at.iter().find(|&&a| input[a] != 1) {
                return Err(format!("cannot squeeze axis {a} of {input:?}: its size is not 1"));
            }
            Ok(input.iter().enumerate().filter(|(i, _)| !at.contains(i)).map(|(_, &d)| d).collect())
        }
    }
}

/// The output dims of Flatten at `axis`.
pub fn flatten_dims(input: &[usize], axis_attr: i64) -> Result<[usize; 2], String> {
    let a = if axis_attr == input.len() as i64 { input.len() } else { axis(axis_attr, input.len().max(1))? };
    Ok([input[..a].iter().product(), input[a..].iter().product()])
}

/// Numpy broadcasting of two shapes.
fn broadcast(a: &[usize], b: &[usize]) -> Result<Vec<usize>, String> {
    let rank = a.len().max(b.len());
    let at = |s: &[usize], i: usize| if i + s.len() >= rank { s[i + s.len() - rank] } else { 1 };
    (0..rank)
        .map(|i| match (at(a, i), at(b, i)) {
            (x, y) if x == y => Ok(x),
            (1, y) => Ok(y),
            (x, 1) => Ok(x),
            (x, y) => Err(format!("shapes {a:?} and {b:?} do not broadcast ({x} vs {y})")),
        })
        .collect()
}

/// The flat index into a tensor of shape `src` (broadcast to `out`) for each output element.
fn broadcast_index(src: &[usize], out: &[usize]) -> Vec<usize> {
    let n: usize = out.iter().product();
    let os = strides(out);
    let ss = strides(src);
    let off = out.len() - src.len();
    (0..n)
        .map(|flat| {
            let mut idx = 0;
            for (d, &s) in src.iter().enumerate() {
                let coord = (flat / os[d + off]) % out[d + off];
                if s != 1 {
                    idx += coord * ss[d];
                }
            }
            idx
        })
        .collect()
}

/// Evaluates one node whose inputs are all constants (`None` for an omitted optional input).
/// `Ok(None)` means this evaluator does not fold the op.
pub fn evaluate(node: &Node, inputs: &[Option<&Const>]) -> Result<Option<Vec<Const>>, String> {
    let input = |i: usize| inputs.get(i).copied().flatten().ok_or_else(|| format!("input {i} is missing"));
    let out = match node.op_type.as_str() {
        "Constant" => {
            let (name, a) = node.attributes.first().ok_or("a Constant node without a value")?;
            match (name.as_str(), a) {
                ("value", Attribute::Tensor(t)) => Const::from_tensor(t),
                ("value_float", Attribute::Float(v)) => Const { dims: vec![], data: ConstData::F32(vec![*v]) },
                ("value_floats", Attribute::Floats(v)) => Const { dims: vec![v.len()], data: ConstData::F32(v.clone()) },
                ("value_int", Attribute::Int(v)) => Const::i64(vec![], vec![*v]),
                ("value_ints", Attribute::Ints(v)) => Const::i64(vec![v.len()], v.clone()),
                (other, _) => return Err(format!("Constant attribute '{other}' is not supported")),
            }
        }
        "Identity" => input(0)?.clone(),
        "Shape" => {
            let x = input(0)?;
            shape_of(node, &x.dims)
        }
        "Cast" => {
            let x = input(0)?;
            let to = int_attr(node, "to").ok_or("Cast has no 'to' attribute")?;
            let data = match (to, &x.data) {
                (1 | 10 | 11 | 16, d) => ConstData::F32(match d {
                    ConstData::F32(v) => v.clone(),
                    ConstData::I64(v) => v.iter().map(|&x| x as f32).collect(),
                    ConstData::Bool(v) => v.iter().map(|&b| f32::from(u8::from(b))).collect(),
                    ConstData::I8(v) => v.iter().map(|&x| f32::from(x)).collect(),
                }),
                (6 | 7, d) => ConstData::I64(match d {
                    // ONNX casts float to int by truncation toward zero, as `as` does.
                    ConstData::F32(v) => v.iter().map(|&x| x as i64).collect(),
                    ConstData::I64(v) => v.clone(),
                    ConstData::Bool(v) => v.iter().map(|&b| i64::from(b)).collect(),
                    ConstData::I8(v) => v.iter().map(|&x| i64::from(x)).collect(),
                }),
                (9, d) => ConstData::Bool(match d {
                    ConstData::F32(v) => v.iter().map(|&x| x != 0.0).collect(),
                    ConstData::I64(v) => v.iter().map(|&x| x != 0).collect(),
                    ConstData::Bool(v) => v.clone(),
                    ConstData::I8(v) => v.iter().map(|&x| x != 0).collect(),
                }),
                (other, _) => return Err(format!("Cast to ONNX type {other} is not folded")),
            };
            Const { dims: x.dims.clone(), data }
        }
        "Reshape" => {
            let (x, shape) = (input(0)?, input(1)?);
            let allowzero = int_attr(node, "allowzero").unwrap_or(0) != 0;
            Const { dims: reshape_dims(&x.dims, &shape.as_i64()?, allowzero)?, data: x.data.clone() }
        }
        "Flatten" => {
            let x = input(0)?;
            Const { dims: flatten_dims(&x.dims, int_attr(node, "axis").unwrap_or(1))?.to_vec(), data: x.data.clone() }
        }
        "Unsqueeze" => {
            let (x, axes) = (input(0)?, input(1)?);
            Const { dims: unsqueeze_dims(&x.dims, &axes.as_i64()?)?, data: x.data.clone() }
        }
        "Squeeze" => {
            let x = input(0)?;
            let axes = match inputs.get(1).copied().flatten() {
                Some(a) => Some(a.as_i64()?),
                None => None,
            };
            Const { dims: squeeze_dims(&x.dims, axes.as_deref())?, data: x.data.clone() }
        }
        "Gather" => {
            let (x, idx) = (input(0)?, input(1)?);
            if x.dims.is_empty() {
                return Err("Gather of a scalar".into());
            }
            let a = axis(int_attr(node, "axis").unwrap_or(0), x.dims.len())?;
            let n = x.dims[a] as i64;
            let indices: Vec<usize> = idx
                .as_i64()?
                .iter()
                .map(|&i| {
                    let j = if i < 0 { i + n } else { i };
                    if (0..n).contains(&j) {
                        Ok(j as usize)
                    } else {
                        Err(format!("index {i} is out of range for axis {a} of size {n}"))
                    }
                })
                .collect::<Result<_, _>>()?;
            let outer: usize = x.dims[..a].iter().product();
            let inner: usize = x.dims[a + 1..].iter().product();
            let mut flat = Vec::with_capacity(outer * indices.len() * inner);
            for o in 0..outer {
                for &j in &indices {
                    flat.extend((0..inner).map(|k| (o * x.dims[a] + j) * inner + k));
                }
            }
            let mut dims = x.dims[..a].to_vec();
            dims.extend_from_slice(&idx.dims);
            dims.extend_from_slice(&x.dims[a + 1..]);
            Const { dims, data: take(&x.data, flat.into_iter()) }
        }
        "GatherElements" => {
            // out[.., i_a, ..] = x[.., idx[.., i_a, ..], ..] on the axis, the output shaped as
            // the indices (HF BERT gathers its token-type buffer by position ids this way).
            let (x, idx) = (input(0)?, input(1)?);
            let rank = x.dims.len();
            if idx.dims.len() != rank || rank == 0 {
                return Err(format!("GatherElements' indices have rank {}, its data rank {rank}", idx.dims.len()));
            }
            let a = axis(int_attr(node, "axis").unwrap_or(0), rank)?;
            if let Some(d) = (0..rank).find(|&d| d != a && idx.dims[d] > x.dims[d]) {
                return Err(format!("GatherElements' indices {:?} exceed the data {:?} on axis {d}", idx.dims, x.dims));
            }
            let n = x.dims[a] as i64;
            let (xs, is) = (strides(&x.dims), strides(&idx.dims));
            let values = idx.as_i64()?;
            let mut flat = Vec::with_capacity(values.len());
            for (k, &v) in values.iter().enumerate() {
                let j = if v < 0 { v + n } else { v };
                if !(0..n).contains(&j) {
                    return Err(format!("index {v} is out of range for axis {a} of size {n}"));
                }
                let src: usize = (0..rank).map(|d| if d == a { j as usize } else { k / is[d] % idx.dims[d] } * xs[d]).sum();
                flat.push(src);
            }
            Const { dims: idx.dims.clone(), data: take(&x.data, flat.into_iter()) }
        }
        "Transpose" => {
            let x = input(0)?;
            let rank = x.dims.len();
            let perm: Vec<usize> = match node.attribute("perm") {
                Some(Attribute::Ints(p)) => p.iter().map(|&a| axis(a, rank)).collect::<Result<_, _>>()?,
                _ => (0..rank).rev().collect(),
            };
            let mut seen = vec![false; rank];
            if perm.len() != rank || perm.iter().any(|&a| std::mem::replace(&mut seen[a], true)) {
                return Err(format!("Transpose's perm {perm:?} is not a permutation of {rank} axes"));
            }
            let dims: Vec<usize> = perm.iter().map(|&a| x.dims[a]).collect();
            let (src, out) = (strides(&x.dims), strides(&dims));
            let n = x.len();
            let index = (0..n).map(|flat| (0..rank).map(|i| flat / out[i] % dims[i] * src[perm[i]]).sum());
            Const { data: take(&x.data, index), dims }
        }
        "Expand" => {
            let (x, shape) = (input(0)?, input(1)?);
            let target: Vec<usize> = shape
                .as_i64()?
                .iter()
                .map(|&d| usize::try_from(d).map_err(|_| format!("Expand to a negative size {d}")))
                .collect::<Result<_, _>>()?;
            let dims = broadcast(&x.dims, &target)?;
            checked_numel(&dims)?;
            Const { data: take(&x.data, broadcast_index(&x.dims, &dims).into_iter()), dims }
        }
        "ScatterND" => {
            // A copy of `data` with the slices `indices` names overwritten by `updates`, in order
            // (a later duplicate index wins, as ONNX Runtime does). Reductions are not folded.
            let (x, idx, up) = (input(0)?, input(1)?, input(2)?);
            match node.attribute("reduction") {
                None => {}
                Some(Attribute::String(r)) if r == b"none" => {}
                Some(_) => return Err("ScatterND with a reduction is not supported; re-export with reduction 'none'".into()),
            }
            let k = *idx.dims.last().ok_or("ScatterND's indices are a scalar")?;
            if k == 0 || k > x.dims.len() {
                return Err(format!("ScatterND's index tuples have {k} entries for data of rank {}", x.dims.len()));
            }
            let slice: usize = x.dims[k..].iter().product();
            let tuples = idx.dims[..idx.dims.len() - 1].iter().product::<usize>();
            let mut want = idx.dims[..idx.dims.len() - 1].to_vec();
            want.extend_from_slice(&x.dims[k..]);
            if up.dims != want {
                return Err(format!("ScatterND's updates have shape {:?}, expected {want:?}", up.dims));
            }
            let (offsets, st) = (idx.as_i64()?, strides(&x.dims));
            // Each output element's source: `Ok(i)` the data's element `i`, `Err(j)` the update's `j`.
            let mut source: Vec<Result<usize, usize>> = (0..x.len()).map(Ok).collect();
            for t in 0..tuples {
                let mut base = 0;
                for (a, &i) in offsets[t * k..(t + 1) * k].iter().enumerate() {
                    let n = x.dims[a] as i64;
                    let j = if i < 0 { i + n } else { i };
                    if !(0..n).contains(&j) {
                        return Err(format!("ScatterND index {i} is out of range for axis {a} of size {n}"));
                    }
                    base += j as usize * st[a];
                }
                for e in 0..slice {
                    source[base + e] = Err(t * slice + e);
                }
            }
            let pick = |d: &ConstData, u: &ConstData| -> Result<ConstData, String> {
                Ok(match (d, u) {
                    (ConstData::F32(d), ConstData::F32(u)) => {
                        ConstData::F32(source.iter().map(|s| s.map_or_else(|j| u[j], |i| d[i])).collect())
                    }
                    (ConstData::I64(d), ConstData::I64(u)) => {
                        ConstData::I64(source.iter().map(|s| s.map_or_else(|j| u[j], |i| d[i])).collect())
                    }
                    (ConstData::Bool(d), ConstData::Bool(u)) => {
                        ConstData::Bool(source.iter().map(|s| s.map_or_else(|j| u[j], |i| d[i])).collect())
                    }
                    (ConstData::I8(d), ConstData::I8(u)) => {
                        ConstData::I8(source.iter().map(|s| s.map_or_else(|j| u[j], |i| d[i])).collect())
                    }
                    _ => return Err(format!("ScatterND of {} data with {} updates", x.dtype_name(), up.dtype_name())),
                })
            };
            Const { dims: x.dims.clone(), data: pick(&x.data, &up.data)? }
        }
        "Concat" => {
            let parts: Vec<&Const> = (0..inputs.len()).map(input).collect::<Result<_, _>>()?;
            let first = parts.first().ok_or("Concat of nothing")?;
            let a = axis(int_attr(node, "axis").ok_or("Concat has no axis")?, first.dims.len())?;
            let mut dims = first.dims.clone();
            dims[a] = 0;
            for p in &parts {
                if p.dims.len() != first.dims.len()
                    || p.dims.iter().zip(&first.dims).enumerate().any(|(i, (x, y))| i != a && x != y)
                    || std::mem::discriminant(&p.data) != std::mem::discriminant(&first.data)
                {
                    return Err(format!("Concat of {:?} and {:?} along axis {a}", first.dims, p.dims));
                }
                dims[a] += p.dims[a];
            }
            let outer: usize = dims[..a].iter().product();
            let mut data = match first.data {
                ConstData::F32(_) => ConstData::F32(vec![]),
                ConstData::I64(_) => ConstData::I64(vec![]),
                ConstData::Bool(_) => ConstData::Bool(vec![]),
                ConstData::I8(_) => ConstData::I8(vec![]),
            };
            for o in 0..outer {
                for p in &parts {
                    let chunk: usize = p.dims[a..].iter().product();
                    let piece = take(&p.data, o * chunk..(o + 1) * chunk);
                    match (&mut data, piece) {
                        (ConstData::F32(d), ConstData::F32(s)) => d.extend(s),
                        (ConstData::I64(d), ConstData::I64(s)) => d.extend(s),
                        (ConstData::Bool(d), ConstData::Bool(s)) => d.extend(s),
                        _ => unreachable!("dtypes were checked equal above"),
                    }
                }
            }
            Const { dims, data }
        }
        "Slice" => {
            let x = input(0)?;
            let starts = input(1)?.as_i64()?;
            let ends = input(2)?.as_i64()?;
            let axes = match inputs.get(3).copied().flatten() {
                Some(a) => a.as_i64()?,
                None => (0..starts.len() as i64).collect(),
            };
            let steps = match inputs.get(4).copied().flatten() {
                Some(s) => s.as_i64()?,
                None => vec![1; starts.len()],
            };
            if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
                return Err("Slice's starts, ends, axes and steps differ in length".into());
            }
            // Per axis, the selected indices.
            let mut pick: Vec<Vec<usize>> = x.dims.iter().map(|&d| (0..d).collect()).collect();
            for k in 0..starts.len() {
                let a = axis(axes[k], x.dims.len())?;
                let d = x.dims[a] as i64;
                let step = steps[k];
                if step == 0 {
                    return Err("Slice step 0".into());
                }
                let clamp = |v: i64, lo: i64, hi: i64| v.clamp(lo, hi);
                let norm = |v: i64| if v < 0 { v + d } else { v };
                let mut v = Vec::new();
                if step > 0 {
                    let (mut i, e) = (clamp(norm(starts[k]), 0, d), clamp(norm(ends[k]), 0, d));
                    while i < e {
                        v.push(i as usize);
                        i += step;
                    }
                } else {
                    let (mut i, e) = (clamp(norm(starts[k]), -1, d - 1), clamp(norm(ends[k]), -1, d - 1));
                    while i > e {
                        v.push(i as usize);
                        i += step;
                    }
                }
                pick[a] = v;
            }
            let dims: Vec<usize> = pick.iter().map(Vec::len).collect();
            let st = strides(&x.dims);
            let n: usize = dims.iter().product();
            let os = strides(&dims);
            let flat = (0..n).map(|f| (0..dims.len()).map(|d| pick[d][(f / os[d]) % dims[d]] * st[d]).sum());
            Const { data: take(&x.data, flat), dims }
        }
        "ConstantOfShape" => {
            let dims: Vec<usize> = input(0)?
                .as_i64()?
                .iter()
                .map(|&d| usize::try_from(d).map_err(|_| format!("negative dimension {d}")))
                .collect::<Result<_, _>>()?;
            let n = checked_numel(&dims)?;
            let data = match node.attribute("value") {
                Some(Attribute::Tensor(t)) => match Const::from_tensor(t).data {
                    ConstData::F32(v) => ConstData::F32(vec![*v.first().ok_or("empty value")?; n]),
                    ConstData::I64(v) => ConstData::I64(vec![*v.first().ok_or("empty value")?; n]),
                    ConstData::Bool(v) => ConstData::Bool(vec![*v.first().ok_or("empty value")?; n]),
                    ConstData::I8(v) => ConstData::I8(vec![*v.first().ok_or("empty value")?; n]),
                },
                _ => ConstData::F32(vec![0.0; n]),
            };
            Const { dims, data }
        }
        "Range" => {
            let (s, l, d) = (input(0)?, input(1)?, input(2)?);
            match (&s.data, &l.data, &d.data) {
                (ConstData::I64(s), ConstData::I64(l), ConstData::I64(d)) => {
                    let (s, l, d) = (s[0], l[0], d[0]);
                    if d == 0 {
                        return Err("Range with delta 0".into());
                    }
                    let n = ((l as f64 - s as f64) / d as f64).ceil().max(0.0) as usize;
                    checked_numel(&[n])?;
                    let values = (0..n as i64).map(|i| i.checked_mul(d).and_then(|v| v.checked_add(s))).collect::<Option<Vec<_>>>();
                    Const::i64(vec![n], values.ok_or("Range overflows int64")?)
                }
                _ => {
                    let (s, l, d) = (s.scalar_f32()?, l.scalar_f32()?, d.scalar_f32()?);
                    let n = ((l - s) / d).ceil().max(0.0) as usize;
                    checked_numel(&[n])?;
                    Const { dims: vec![n], data: ConstData::F32((0..n).map(|i| s + i as f32 * d).collect()) }
                }
            }
        }
        "Min" | "Max" if inputs.len() != 2 => return Ok(None),
        "Add" | "Sub" | "Mul" | "Div" | "Mod" | "Equal" | "Less" | "LessOrEqual" | "Greater" | "GreaterOrEqual" | "Min" | "Max" => {
            let (a, b) = (input(0)?, input(1)?);
            // Mod: `fmod = 0` (the default) takes the divisor's sign, as Python's `%`; `fmod = 1`
            // the dividend's, as C's `fmod`. Floats need `fmod = 1`.
            let fmod = int_attr(node, "fmod").unwrap_or(0) != 0;
            let dims = broadcast(&a.dims, &b.dims)?;
            let (ia, ib) = (broadcast_index(&a.dims, &dims), broadcast_index(&b.dims, &dims));
            let op = node.op_type.as_str();
            let data = match (&a.data, &b.data) {
                (ConstData::I64(x), ConstData::I64(y)) => {
                    let pairs = ia.iter().zip(&ib).map(|(&i, &j)| (x[i], y[j]));
                    match op {
                        "Equal" | "Less" | "LessOrEqual" | "Greater" | "GreaterOrEqual" => {
                            ConstData::Bool(pairs.map(|(p, q)| compare(op, p.cmp(&q))).collect())
                        }
                        "Min" => ConstData::I64(pairs.map(|(p, q)| p.min(q)).collect()),
                        "Max" => ConstData::I64(pairs.map(|(p, q)| p.max(q)).collect()),
                        _ => ConstData::I64(
                            pairs
                                .map(|(p, q)| match op {
                                    "Add" => p.checked_add(q),
                                    "Sub" => p.checked_sub(q),
                                    "Mul" => p.checked_mul(q),
                                    "Mod" if fmod => p.checked_rem(q),
                                    "Mod" => p.checked_rem_euclid(q).map(|r| if r != 0 && q < 0 { r + q } else { r }),
                                    // ONNX integer division truncates, as Rust's does.
                                    _ => p.checked_div(q),
                                })
                                .collect::<Option<Vec<_>>>()
                                .ok_or("integer overflow or division by zero")?,
                        ),
                    }
                }
                (ConstData::F32(x), ConstData::F32(y)) => {
                    let pairs = ia.iter().zip(&ib).map(|(&i, &j)| (x[i], y[j]));
                    match op {
                        // IEEE: every comparison with NaN is false.
                        "Equal" | "Less" | "LessOrEqual" | "Greater" | "GreaterOrEqual" => {
                            ConstData::Bool(pairs.map(|(p, q)| p.partial_cmp(&q).is_some_and(|o| compare(op, o))).collect())
                        }
                        // ONNX's Min and Max propagate NaN.
                        "Min" | "Max" => ConstData::F32(
                            pairs
                                .map(|(p, q)| match (p.is_nan() || q.is_nan(), op) {
                                    (true, _) => f32::NAN,
                                    (false, "Min") => p.min(q),
                                    _ => p.max(q),
                                })
                                .collect(),
                        ),
                        "Add" => ConstData::F32(pairs.map(|(p, q)| p + q).collect()),
                        "Sub" => ConstData::F32(pairs.map(|(p, q)| p - q).collect()),
                        "Mul" => ConstData::F32(pairs.map(|(p, q)| p * q).collect()),
                        "Mod" if fmod => ConstData::F32(pairs.map(|(p, q)| p % q).collect()),
                        "Mod" => return Err("Mod of floats needs fmod = 1 (ONNX)".into()),
                        _ => ConstData::F32(pairs.map(|(p, q)| p / q).collect()),
                    }
                }
                (ConstData::Bool(x), ConstData::Bool(y)) if op == "Equal" => {
                    ConstData::Bool(ia.iter().zip(&ib).map(|(&i, &j)| x[i] == y[j]).collect())
                }
                _ => return Err(format!("{op} of {} and {}", a.dtype_name(), b.dtype_name())),
            };
            Const { dims, data }
        }
        "And" | "Or" | "Xor" => {
            let (a, b) = (input(0)?, input(1)?);
            let dims = broadcast(&a.dims, &b.dims)?;
            let (ia, ib) = (broadcast_index(&a.dims, &dims), broadcast_index(&b.dims, &dims));
            let (ConstData::Bool(x), ConstData::Bool(y)) = (&a.data, &b.data) else {
                return Err(format!("{} of {} and {}", node.op_type, a.dtype_name(), b.dtype_name()));
            };
            let f = |p: bool, q: bool| match node.op_type.as_str() {
                "And" => p && q,
                "Or" => p || q,
                _ => p != q,
            };
            Const { dims, data: ConstData::Bool(ia.iter().zip(&ib).map(|(&i, &j)| f(x[i], y[j])).collect()) }
        }
        "Abs" | "Neg" | "Sign" | "Ceil" | "Floor" | "Round" | "Sqrt" | "Exp" | "Log" | "Reciprocal" | "Not" => {
            let x = input(0)?;
            let op = node.op_type.as_str();
            let data = match (&x.data, op) {
                (ConstData::Bool(v), "Not") => ConstData::Bool(v.iter().map(|b| !b).collect()),
                (ConstData::I64(v), "Abs" | "Neg" | "Sign") => ConstData::I64(
                    v.iter()
                        .map(|&a| match op {
                            "Abs" => a.checked_abs(),
                            "Neg" => a.checked_neg(),
                            _ => Some(a.signum()),
                        })
                        .collect::<Option<Vec<_>>>()
                        .ok_or("integer overflow")?,
                ),
                (ConstData::F32(v), _) if op != "Not" => ConstData::F32(
                    v.iter()
                        .map(|&a| match op {
                            "Abs" => a.abs(),
                            "Neg" => -a,
                            "Sign" if a.is_nan() => a,
                            "Sign" => {
                                if a == 0.0 {
                                    0.0
                                } else {
                                    a.signum()
                                }
                            }
                            "Ceil" => a.ceil(),
                            "Floor" => a.floor(),
                            // ONNX rounds halves to even.
                            "Round" => a.round_ties_even(),
                            "Sqrt" => a.sqrt(),
                            "Exp" => a.exp(),
                            "Log" => a.ln(),
                            _ => 1.0 / a,
                        })
                        .collect(),
                ),
                _ => return Err(format!("{op} of {}", x.dtype_name())),
            };
            Const { dims: x.dims.clone(), data }
        }
        "Where" => {
            let (c, x, y) = (input(0)?, input(1)?, input(2)?);
            let dims = broadcast(&broadcast(&c.dims, &x.dims)?, &y.dims)?;
            let cond: Vec<bool> = match &c.data {
                ConstData::Bool(v) => broadcast_index(&c.dims, &dims).iter().map(|&i| v[i]).collect(),
                _ => return Err("Where's condition is not bool".into()),
            };
            let (ix, iy) = (broadcast_index(&x.dims, &dims), broadcast_index(&y.dims, &dims));
            let data = match (&x.data, &y.data) {
                (ConstData::F32(p), ConstData::F32(q)) => {
                    ConstData::F32(cond.iter().enumerate().map(|(k, &c)| if c { p[ix[k]] } else { q[iy[k]] }).collect())
                }
                (ConstData::I64(p), ConstData::I64(q)) => {
                    ConstData::I64(cond.iter().enumerate().map(|(k, &c)| if c { p[ix[k]] } else { q[iy[k]] }).collect())
                }
                _ => return Err(format!("Where of {} and {}", x.dtype_name(), y.dtype_name())),
            };
            Const { dims, data }
        }
        _ => return Ok(None),
    };
    if out.len() != out.dims.iter().product::<usize>() {
        return Err(format!("folding produced {} values for shape {:?}", out.len(), out.dims));
    }
    Ok(Some(vec![out]))
}

/// `Shape` of a value with these dims, with opset 15's `start`/`end`.
pub fn shape_of(node: &Node, dims: &[usize]) -> Const {
    let r = dims.len() as i64;
    let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
    let start = clamp(int_attr(node, "start").unwrap_or(0));
    let end = clamp(int_attr(node, "end").unwrap_or(r));
    let picked: Vec<i64> = dims[start..end.max(start)].iter().map(|&d| d as i64).collect();
    Const::i64(vec![picked.len()], picked)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(op: &str, attributes: Vec<(&str, Attribute)>) -> Node {
        Node {
            name: "n".into(),
            op_type: op.into(),
            domain: String::new(),
            inputs: vec![],
            outputs: vec![],
            attributes: attributes.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        }
    }

    fn ints(dims: Vec<usize>, v: Vec<i64>) -> Const {
        Const::i64(dims, v)
    }

    fn eval(n: &Node, inputs: &[&Const]) -> Const {
        let inputs: Vec<Option<&Const>> = inputs.iter().map(|c| Some(*c)).collect();
        evaluate(n, &inputs).unwrap().unwrap().remove(0)
    }

    #[test]
    fn shape_gather_unsqueeze_concat_reshape_chain() {
        // The exporters' `x.view(x.size(0), -1)` pattern on a [2, 3, 4] tensor.
        let shape = shape_of(&node("Shape", vec![]), &[2, 3, 4]);
        assert_eq!(shape, ints(vec![3], vec![2, 3, 4]));
        let n0 = eval(&node("Gather", vec![("axis", Attribute::Int(0))]), &[&shape, &ints(vec![], vec![0])]);
        assert_eq!(n0, ints(vec![], vec![2]));
        let u = eval(&node("Unsqueeze", vec![]), &[&n0, &ints(vec![1], vec![0])]);
        assert_eq!(u, ints(vec![1], vec![2]));
        let c = eval(&node("Concat", vec![("axis", Attribute::Int(0))]), &[&u, &ints(vec![1], vec![-1])]);
        assert_eq!(c, ints(vec![2], vec![2, -1]));
        assert_eq!(reshape_dims(&[2, 3, 4], &[2, -1], false).unwrap(), vec![2, 12]);
        assert_eq!(reshape_dims(&[2, 3, 4], &[0, 0, -1], false).unwrap(), vec![2, 3, 4]);
        assert!(reshape_dims(&[2, 3, 4], &[5, -1], false).is_err());
        let s = shape_of(&node("Shape", vec![("start", Attribute::Int(-2))]), &[2, 3, 4]);
        assert_eq!(s, ints(vec![2], vec![3, 4]));
    }

    #[test]
    fn gather_concat_and_slice_on_matrices() {
        let m = ints(vec![2, 3], vec![1, 2, 3, 4, 5, 6]);
        let g = eval(&node("Gather", vec![("axis", Attribute::Int(1))]), &[&m, &ints(vec![2], vec![2, -3])]);
        assert_eq!(g, ints(vec![2, 2], vec![3, 1, 6, 4]));
        let c = eval(&node("Concat", vec![("axis", Attribute::Int(1))]), &[&m, &g]);
        assert_eq!(c, ints(vec![2, 5], vec![1, 2, 3, 3, 1, 4, 5, 6, 6, 4]));
        let s = eval(
            &node("Slice", vec![]),
            &[&m, &ints(vec![1], vec![-1]), &ints(vec![1], vec![0]), &ints(vec![1], vec![1]), &ints(vec![1], vec![-2])],
        );
        assert_eq!(s, ints(vec![2, 1], vec![3, 6]));
    }

    #[test]
    fn gather_elements_follows_the_spec_examples() {
        // The ONNX operator page's two examples, and an index past the axis refused.
        let d = ints(vec![2, 2], vec![1, 2, 3, 4]);
        let g = eval(&node("GatherElements", vec![("axis", Attribute::Int(1))]), &[&d, &ints(vec![2, 2], vec![0, 0, 1, 0])]);
        assert_eq!(g, ints(vec![2, 2], vec![1, 1, 4, 3]));
        let d = ints(vec![3, 3], (1..=9).collect());
        let g = eval(&node("GatherElements", vec![("axis", Attribute::Int(0))]), &[&d, &ints(vec![2, 3], vec![1, 2, 0, 2, 0, 0])]);
        assert_eq!(g, ints(vec![2, 3], vec![4, 8, 3, 7, 2, 3]));
        // Negative indices count from the end; indices narrower than the data on another axis.
        let g = eval(&node("GatherElements", vec![("axis", Attribute::Int(-1))]), &[&d, &ints(vec![2, 1], vec![-1, 0])]);
        assert_eq!(g, ints(vec![2, 1], vec![3, 4]));
        let e = evaluate(&node("GatherElements", vec![]), &[Some(&d), Some(&ints(vec![1, 1], vec![3]))]).unwrap_err();
        assert!(e.contains("out of range"), "{e}");
    }

    #[test]
    fn comparisons_min_max_and_unary_maths_fold_as_onnx_defines_them() {
        // T5's relative position buckets and MobileViT's sizes are such chains on constants.
        let f = |dims: Vec<usize>, v: Vec<f32>| Const { dims, data: ConstData::F32(v) };
        let bools = |c: &Const| match &c.data {
            ConstData::Bool(v) => v.clone(),
            other => panic!("{other:?}"),
        };
        let floats = |c: &Const| match &c.data {
            ConstData::F32(v) => v.clone(),
            other => panic!("{other:?}"),
        };
        let (a, b) = (ints(vec![3], vec![-2, 0, 5]), ints(vec![], vec![0]));
        assert_eq!(bools(&eval(&node("Less", vec![]), &[&a, &b])), [true, false, false]);
        assert_eq!(bools(&eval(&node("GreaterOrEqual", vec![]), &[&a, &b])), [false, true, true]);
        assert_eq!(eval(&node("Min", vec![]), &[&a, &ints(vec![1], vec![1])]), ints(vec![3], vec![-2, 0, 1]));
        assert_eq!(eval(&node("Abs", vec![]), &[&a]), ints(vec![3], vec![2, 0, 5]));
        assert_eq!(eval(&node("Neg", vec![]), &[&a]), ints(vec![3], vec![2, 0, -5]));
        assert_eq!(eval(&node("Sign", vec![]), &[&a]), ints(vec![3], vec![-1, 0, 1]));
        assert!(evaluate(&node("Abs", vec![]), &[Some(&ints(vec![], vec![i64::MIN]))]).is_err());
        // Floats: NaN compares false and propagates through Min/Max; Round takes halves to even.
        let x = f(vec![4], vec![f32::NAN, -1.5, 0.5, 2.5]);
        assert_eq!(bools(&eval(&node("LessOrEqual", vec![]), &[&x, &f(vec![], vec![0.5])])), [false, true, true, false]);
        let m = floats(&eval(&node("Max", vec![]), &[&x, &f(vec![], vec![0.0])]));
        assert!(m[0].is_nan() && m[1..] == [0.0, 0.5, 2.5]);
        assert_eq!(floats(&eval(&node("Round", vec![]), &[&x]))[1..], [-2.0, 0.0, 2.0]);
        assert_eq!(floats(&eval(&node("Ceil", vec![]), &[&x]))[1..], [-1.0, 1.0, 3.0]);
        assert_eq!(floats(&eval(&node("Floor", vec![]), &[&x]))[1..], [-2.0, 0.0, 2.0]);
        assert_eq!(floats(&eval(&node("Sign", vec![]), &[&f(vec![3], vec![-0.0, 3.0, -2.0])])), [0.0, 1.0, -1.0]);
        assert_eq!(floats(&eval(&node("Log", vec![]), &[&f(vec![1], vec![1.0])])), [0.0]);
        // Bool logic broadcasts.
        let p = Const { dims: vec![2], data: ConstData::Bool(vec![true, false]) };
        let q = Const { dims: vec![], data: ConstData::Bool(vec![true]) };
        assert_eq!(bools(&eval(&node("And", vec![]), &[&p, &q])), [true, false]);
        assert_eq!(bools(&eval(&node("Xor", vec![]), &[&p, &q])), [false, true]);
        assert_eq!(bools(&eval(&node("Not", vec![]), &[&p])), [false, true]);
    }

    #[test]
    fn arithmetic_broadcasts_and_checks_overflow() {
        let a = ints(vec![2, 1], vec![10, 20]);
        let b = ints(vec![3], vec![1, 2, 3]);
        assert_eq!(eval(&node("Sub", vec![]), &[&a, &b]), ints(vec![2, 3], vec![9, 8, 7, 19, 18, 17]));
        assert_eq!(eval(&node("Div", vec![]), &[&ints(vec![], vec![-7]), &ints(vec![], vec![2])]), ints(vec![], vec![-3]));
        let e = evaluate(&node("Div", vec![]), &[Some(&ints(vec![], vec![1])), Some(&ints(vec![], vec![0]))]).unwrap_err();
        assert!(e.contains("division by zero"), "{e}");
        let eq = eval(&node("Equal", vec![]), &[&b, &ints(vec![], vec![2])]);
        assert_eq!(eq.data, ConstData::Bool(vec![false, true, false]));
    }

    #[test]
    fn mod_takes_the_divisors_sign_unless_fmod() {
        let (a, b) = (ints(vec![4], vec![-7, 7, -7, 6]), ints(vec![4], vec![3, -3, -3, 3]));
        assert_eq!(eval(&node("Mod", vec![]), &[&a, &b]), ints(vec![4], vec![2, -2, -1, 0]));
        let c = eval(&node("Mod", vec![("fmod", Attribute::Int(1))]), &[&a, &b]);
        assert_eq!(c, ints(vec![4], vec![-1, 1, -1, 0]));
        let e = evaluate(&node("Mod", vec![]), &[Some(&ints(vec![], vec![1])), Some(&ints(vec![], vec![0]))]).unwrap_err();
        assert!(e.contains("division by zero"), "{e}");
    }

    #[test]
    fn transpose_permutes_axes() {
        let m = ints(vec![2, 3], vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(eval(&node("Transpose", vec![]), &[&m]), ints(vec![3, 2], vec![1, 4, 2, 5, 3, 6]));
        let t = ints(vec![1, 2, 3], vec![1, 2, 3, 4, 5, 6]);
        let p = eval(&node("Transpose", vec![("perm", Attribute::Ints(vec![2, 0, 1]))]), &[&t]);
        assert_eq!(p, ints(vec![3, 1, 2], vec![1, 4, 2, 5, 3, 6]));
        let e = evaluate(&node("Transpose", vec![("perm", Attribute::Ints(vec![0, 0, 1]))]), &[Some(&t)]);
        assert!(e.unwrap_err().contains("not a permutation"));
    }

    #[test]
    fn expand_broadcasts_both_ways() {
        let col = ints(vec![2, 1], vec![1, 2]);
        assert_eq!(eval(&node("Expand", vec![]), &[&col, &ints(vec![2], vec![1, 3])]), ints(vec![2, 3], vec![1, 1, 1, 2, 2, 2]));
        assert_eq!(eval(&node("Expand", vec![]), &[&col, &ints(vec![1], vec![1])]), col);
    }

    #[test]
    fn scatter_nd_overwrites_the_named_slices() {
        let data = ints(vec![3, 2], vec![1, 2, 3, 4, 5, 6]);
        let rows = eval(&node("ScatterND", vec![]), &[&data, &ints(vec![2, 1], vec![2, -3]), &ints(vec![2, 2], vec![7, 8, 9, 10])]);
        assert_eq!(rows, ints(vec![3, 2], vec![9, 10, 3, 4, 7, 8]));
        let one = eval(&node("ScatterND", vec![]), &[&data, &ints(vec![1, 2], vec![1, 1]), &ints(vec![1], vec![0])]);
        assert_eq!(one, ints(vec![3, 2], vec![1, 2, 3, 0, 5, 6]));
        let e = evaluate(&node("ScatterND", vec![]), &[Some(&data), Some(&ints(vec![1, 1], vec![3])), Some(&ints(vec![1, 2], vec![0, 0]))]);
        assert!(e.unwrap_err().contains("out of range"));
    }

    #[test]
    fn half_floats_convert_exactly() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x7c00), f32::INFINITY);
    }

    #[test]
    fn unfolded_ops_return_none() {
        assert_eq!(evaluate(&node("Conv", vec![]), &[]).unwrap(), None);
    }
}
