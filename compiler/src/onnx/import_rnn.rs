//! LSTM and GRU, unrolled over the sequence. pock's shapes are static, so a recurrent layer over
//! `S` steps is `S` copies of its cell built from primitives (MatMul, broadcasting Add/Sub/Mul,
//! Sigmoid, Tanh, Slice, Concat, Reshape), and its gradient is back-propagation through time by
//! the primitives' own rules. The input projection of all steps is one product before the loop.
//!
//! Supported: `direction` forward, reverse or bidirectional; `layout` 0 or 1; the default
//! activations; the optional bias, `initial_h` and `initial_c`; both values of GRU's
//! `linear_before_reset`. Refused with a message: `clip`, `input_forget`, peepholes (`P`), other
//! activations, and a `sequence_lens` input that is not the full length for every sample.

use pock_engine::kernels::unary::{Sigmoid, Tanh};
use pock_engine::ops::{BroadcastOp, DenseOp, MatMul, MoveOp, Slice, UnaryFn, UnaryOp};

use super::{Ctx, Importer, Value};
use crate::ir::{TensorId, Values};
use crate::onnx::{Attribute, ImportError};

#[derive(Clone, Copy, PartialEq)]
enum Cell {
    Lstm,
    /// `linear_before_reset`: the reset gate multiplies `h R_h^T + Rb_h` (1, PyTorch's form) or
    /// scales `h` before the product (0).
    Gru {
        linear_before_reset: bool,
    },
}

impl Cell {
    fn gates(self) -> usize {
        match self {
            Cell::Lstm => 4,
            Cell::Gru { .. } => 3,
        }
    }
}

impl Importer<'_> {
    pub(super) fn recurrent(&mut self, ctx: &Ctx) -> Result<(), ImportError> {
        let lstm = ctx.node.op_type == "LSTM";
        let cell = if lstm {
            Cell::Lstm
        } else {
            match ctx.int("linear_before_reset", 0)? {
                0 => Cell::Gru { linear_before_reset: false },
                1 => Cell::Gru { linear_before_reset: true },
                v => return Err(ctx.err(format!("linear_before_reset {v} is not 0 or 1"))),
            }
        };
        let hidden = usize::try_from(ctx.int("hidden_size", 0)?)
            .ok()
            .filter(|&h| h > 0)
            .ok_or_else(|| ctx.err("hidden_size is missing or not positive"))?;
        let directions: &[bool] = match ctx.string("direction", "forward")?.as_str() {
            "forward" => &[false],
            "reverse" => &[true],
            "bidirectional" => &[false, true],
            other => return Err(ctx.err(format!("direction '{other}' is not forward, reverse or bidirectional"))),
        };
        let layout = ctx.int("layout", 0)?;
        if !matches!(layout, 0 | 1) {
            return Err(ctx.err(format!("layout {layout} is not 0 or 1")));
        }
        if ctx.node.attribute("clip").is_some() {
            return Err(ctx.err("cell clipping ('clip') is not supported; re-export without it"));
        }
        if ctx.int("input_forget", 0)? != 0 {
            return Err(ctx.err("input_forget (coupled input and forget gates) is not supported"));
        }
        if let Some(Attribute::Strings(acts)) = ctx.node.attribute("activations") {
            let default: &[&[u8]] = if lstm { &[b"Sigmoid", b"Tanh", b"Tanh"] } else { &[b"Sigmoid", b"Tanh"] };
            let ok = acts.len() == default.len() * directions.len()
                && acts.chunks(default.len()).all(|c| c.iter().zip(default).all(|(a, d)| a.as_slice() == *d));
            if !ok {
                let names: Vec<String> = acts.iter().map(|a| String::from_utf8_lossy(a).into_owned()).collect();
                return Err(ctx.err(format!("activations {names:?} are not supported; only the defaults (sigmoid gates, tanh cell)")));
            }
        }
        if lstm && ctx.optional_input(7).is_some() {
            return Err(ctx.err("peephole weights (input P) are not supported; re-export without them"));
        }

        let name = ctx.node.name.clone();
        let x = self.tensor(ctx, ctx.input(0)?)?;
        let xs = self.graph.shape(x).to_vec();
        if xs.len() != 3 {
            return Err(ctx.err(format!("input X has shape {xs:?}; expected rank 3")));
        }
        let (steps, batch, features) = if layout == 0 { (xs[0], xs[1], xs[2]) } else { (xs[1], xs[0], xs[2]) };
        if steps == 0 {
            return Err(ctx.err("the sequence is empty"));
        }
        if let Some(lens) = ctx.optional_input(4) {
            let lens = self.constant(ctx, lens, "sequence_lens")?.as_i64().map_err(|e| ctx.err(e))?;
            if lens.len() != batch || lens.iter().any(|&l| l != steps as i64) {
                return Err(ctx.err(format!(
                    "sequence_lens {lens:?} differs from the full length {steps}; pock unrolls every sample over all steps"
                )));
            }
        }
        let g = cell.gates();
        let dirs = directions.len();
        let w = self.tensor(ctx, ctx.input(1)?)?;
        let r = self.tensor(ctx, ctx.input(2)?)?;
        let expect = |t: &[usize], want: [usize; 3], what: &str| {
            if t == want {
                Ok(())
            } else {
                Err(ctx.err(format!("{what} has shape {t:?}, expected {want:?}")))
            }
        };
        expect(self.graph.shape(w), [dirs, g * hidden, features], "W")?;
        expect(self.graph.shape(r), [dirs, g * hidden, hidden], "R")?;
        let bias = match ctx.optional_input(3) {
            Some(b) => {
                let b = self.tensor(ctx, b)?;
                let bs = self.graph.shape(b).to_vec();
                if bs != [dirs, 2 * g * hidden] {
                    return Err(ctx.err(format!("B has shape {bs:?}, expected {:?}", [dirs, 2 * g * hidden])));
                }
                Some(b)
            }
            None => None,
        };
        // The sequence as [S, N, I].
        let x =
            if layout == 0 { x } else { self.emit(ctx, &format!("{name}.seq_first"), MoveOp::Transpose { perm: vec![1, 0, 2] }, &[x])? };
        let rows = self.emit(ctx, &format!("{name}.rows"), DenseOp::Reshape { shape: vec![steps * batch, features] }, &[x])?;
        // An initial state [D, N, H] (layout 0) or [N, D, H] (layout 1), as [N, H] per direction.
        let initial = |this: &mut Self, input: usize, what: &str, d: usize| -> Result<TensorId, ImportError> {
            let Some(s) = ctx.optional_input(input) else {
                return Ok(this.graph.typed_constant(
                    format!("{name}.{what}0.d{d}"),
                    vec![batch, hidden],
                    Values::F32(vec![0.0; batch * hidden]),
                ));
            };
            let s = this.tensor(ctx, s)?;
            let want = if layout == 0 { [dirs, batch, hidden] } else { [batch, dirs, hidden] };
            expect(this.graph.shape(s), want, what)?;
            let axis = if layout == 0 { 0 } else { 1 };
            let one = this.slice_axis(ctx, &format!("{name}.{what}0.d{d}.slice"), s, axis, d, d + 1)?;
            this.emit(ctx, &format!("{name}.{what}0.d{d}"), DenseOp::Reshape { shape: vec![batch, hidden] }, &[one])
        };

        let mut ys = Vec::with_capacity(dirs);
        let (mut last_h, mut last_c) = (Vec::with_capacity(dirs), Vec::with_capacity(dirs));
        for (d, &reverse) in directions.iter().enumerate() {
            let p = format!("{name}.d{d}");
            let matrix = |this: &mut Self, t: TensorId, cols: usize, what: &str| -> Result<TensorId, ImportError> {
                let one = this.slice_axis(ctx, &format!("{p}.{what}.slice"), t, 0, d, d + 1)?;
                this.emit(ctx, &format!("{p}.{what}"), DenseOp::Reshape { shape: vec![g * hidden, cols] }, &[one])
            };
            let wd = matrix(self, w, features, "w")?;
            let rd = matrix(self, r, hidden, "r")?;
            // Biases: Wb and Rb, each [G*H].
            let (wb, rb) = match bias {
                Some(b) => {
                    let one = self.slice_axis(ctx, &format!("{p}.b.slice"), b, 0, d, d + 1)?;
                    let flat = self.emit(ctx, &format!("{p}.b"), DenseOp::Reshape { shape: vec![2 * g * hidden] }, &[one])?;
                    (
                        Some(self.slice_axis(ctx, &format!("{p}.wb"), flat, 0, 0, g * hidden)?),
                        Some(self.slice_axis(ctx, &format!("{p}.rb"), flat, 0, g * hidden, 2 * g * hidden)?),
                    )
                }
                None => (None, None),
            };
            // Every step's input projection at once: [S*N, G*H], with Wb (and, where the cell
            // adds it unconditionally, Rb) folded in.
            let mut xw = self.emit(ctx, &format!("{p}.xw"), DenseOp::MatMul(MatMul { trans_a: false, trans_b: true }), &[rows, wd])?;
            let folded_rb = match (cell, rb) {
                (Cell::Lstm, Some(rb)) => Some(rb),
                (Cell::Gru { .. }, Some(rb)) => Some(self.slice_axis(ctx, &format!("{p}.rb_zr"), rb, 0, 0, 2 * hidden)?),
                _ => None,
            };
            if let Some(wb) = wb {
                xw = self.emit(ctx, &format!("{p}.xw_wb"), BroadcastOp::Add, &[xw, wb])?;
            }
            if let Some(rb) = folded_rb {
                let rb = if cell == Cell::Lstm {
                    rb
                } else {
                    // [2H] padded with H zeros so it adds to the z and r columns only.
                    let zeros = self.graph.typed_constant(format!("{p}.rb_pad"), vec![hidden], Values::F32(vec![0.0; hidden]));
                    self.emit(ctx, &format!("{p}.rb_zr0"), MoveOp::Concat { axis: 0 }, &[rb, zeros])?
                };
                xw = self.emit(ctx, &format!("{p}.xw_rb"), BroadcastOp::Add, &[xw, rb])?;
            }
            let xw = self.emit(ctx, &format!("{p}.xw_steps"), DenseOp::Reshape { shape: vec![steps, batch * g * hidden] }, &[xw])?;
            let rb_h = match (cell, rb) {
                (Cell::Gru { .. }, Some(rb)) => Some(self.slice_axis(ctx, &format!("{p}.rb_h"), rb, 0, 2 * hidden, 3 * hidden)?),
                _ => None,
            };
            let (r_zr, r_h) = match cell {
                Cell::Gru { linear_before_reset: false } => (
                    Some(self.slice_axis(ctx, &format!("{p}.r_zr"), rd, 0, 0, 2 * hidden)?),
                    Some(self.slice_axis(ctx, &format!("{p}.r_h"), rd, 0, 2 * hidden, 3 * hidden)?),
                ),
                _ => (None, None),
            };

            let mut h = initial(self, 5, "h", d)?;
            let mut c = if lstm { Some(initial(self, 6, "c", d)?) } else { None };
            let mut outputs: Vec<Option<TensorId>> = vec![None; steps];
            let order: Vec<usize> = if reverse { (0..steps).rev().collect() } else { (0..steps).collect() };
            for t in order {
                let q = format!("{p}.t{t}");
                let xt = self.slice_axis(ctx, &format!("{q}.x"), xw, 0, t, t + 1)?;
                let xt = self.emit(ctx, &format!("{q}.xg"), DenseOp::Reshape { shape: vec![batch, g * hidden] }, &[xt])?;
                let cols = |this: &mut Self, t: TensorId, k: usize, what: &str| {
                    this.slice_axis(ctx, &format!("{q}.{what}"), t, 1, k * hidden, (k + 1) * hidden)
                };
                let mm = |this: &mut Self, a: TensorId, b: TensorId, what: &str| {
                    this.emit(ctx, &format!("{q}.{what}"), DenseOp::MatMul(MatMul { trans_a: false, trans_b: true }), &[a, b])
                };
                let sig = |this: &mut Self, v: TensorId, what: &str| {
                    this.emit(ctx, &format!("{q}.{what}"), UnaryOp::Map(UnaryFn::Sigmoid(Sigmoid)), &[v])
                };
                let tanh = |this: &mut Self, v: TensorId, what: &str| {
                    this.emit(ctx, &format!("{q}.{what}"), UnaryOp::Map(UnaryFn::Tanh(Tanh)), &[v])
                };
                let bin = |this: &mut Self, op: BroadcastOp, a: TensorId, b: TensorId, what: &str| {
                    this.emit(ctx, &format!("{q}.{what}"), op, &[a, b])
                };
                match cell {
                    Cell::Lstm => {
                        // ONNX gate order: input, output, forget, cell.
                        let hr = mm(self, h, rd, "hr")?;
                        let gates = bin(self, BroadcastOp::Add, xt, hr, "gates")?;
                        let (i, o, f, cc) = (
                            cols(self, gates, 0, "i_pre")?,
                            cols(self, gates, 1, "o_pre")?,
                            cols(self, gates, 2, "f_pre")?,
                            cols(self, gates, 3, "c_pre")?,
                        );
                        let (i, o, f, cc) = (sig(self, i, "i")?, sig(self, o, "o")?, sig(self, f, "f")?, tanh(self, cc, "c_new")?);
                        let keep = bin(self, BroadcastOp::Mul, f, c.expect("an LSTM has a cell state"), "keep")?;
                        let add = bin(self, BroadcastOp::Mul, i, cc, "add")?;
                        let cn = bin(self, BroadcastOp::Add, keep, add, "c")?;
                        let tc = tanh(self, cn, "tanh_c")?;
                        h = bin(self, BroadcastOp::Mul, o, tc, "h")?;
                        c = Some(cn);
                    }
                    Cell::Gru { linear_before_reset } => {
                        // ONNX gate order: update (z), reset (r), hidden.
                        let (z, candidate) = if linear_before_reset {
                            let hr = mm(self, h, rd, "hr")?;
                            let (xz, xr, xh) = (cols(self, xt, 0, "xz")?, cols(self, xt, 1, "xr")?, cols(self, xt, 2, "xh")?);
                            let (hz, hrr, mut hh) = (cols(self, hr, 0, "hz")?, cols(self, hr, 1, "hrr")?, cols(self, hr, 2, "hh")?);
                            // Rb_h joins the hidden columns only (Rb_z and Rb_r were folded into xw).
                            if let Some(rb_h) = rb_h {
                                hh = bin(self, BroadcastOp::Add, hh, rb_h, "hh_b")?;
                            }
                            let z = bin(self, BroadcastOp::Add, xz, hz, "z_pre")?;
                            let rr = bin(self, BroadcastOp::Add, xr, hrr, "r_pre")?;
                            let (z, rr) = (sig(self, z, "z")?, sig(self, rr, "r")?);
                            let scaled = bin(self, BroadcastOp::Mul, rr, hh, "r_hh")?;
                            (z, bin(self, BroadcastOp::Add, xh, scaled, "n_pre")?)
                        } else {
                            let hzr = mm(self, h, r_zr.expect("sliced above"), "hzr")?;
                            let (xz, xr, xh) = (cols(self, xt, 0, "xz")?, cols(self, xt, 1, "xr")?, cols(self, xt, 2, "xh")?);
                            let (hz, hrr) = (cols(self, hzr, 0, "hz")?, cols(self, hzr, 1, "hrr")?);
                            let z = bin(self, BroadcastOp::Add, xz, hz, "z_pre")?;
                            let rr = bin(self, BroadcastOp::Add, xr, hrr, "r_pre")?;
                            let (z, rr) = (sig(self, z, "z")?, sig(self, rr, "r")?);
                            let rh = bin(self, BroadcastOp::Mul, rr, h, "r_h")?;
                            let mut hh = mm(self, rh, r_h.expect("sliced above"), "hh")?;
                            if let Some(rb_h) = rb_h {
                                hh = bin(self, BroadcastOp::Add, hh, rb_h, "hh_b")?;
                            }
                            (z, bin(self, BroadcastOp::Add, xh, hh, "n_pre")?)
                        };
                        let n = tanh(self, candidate, "n")?;
                        // h' = (1 - z) * n + z * h = n + z * (h - n).
                        let diff = bin(self, BroadcastOp::Sub, h, n, "h_minus_n")?;
                        let moved = bin(self, BroadcastOp::Mul, z, diff, "z_diff")?;
                        h = bin(self, BroadcastOp::Add, n, moved, "h")?;
                    }
                }
                outputs[t] = Some(self.emit(ctx, &format!("{q}.y"), DenseOp::Reshape { shape: vec![1, 1, batch, hidden] }, &[h])?);
            }
            let parts: Vec<TensorId> = outputs.into_iter().map(|o| o.expect("every step ran")).collect();
            ys.push(if steps == 1 { parts[0] } else { self.emit(ctx, &format!("{p}.y"), MoveOp::Concat { axis: 0 }, &parts)? });
            last_h.push(self.emit(ctx, &format!("{p}.h_last"), DenseOp::Reshape { shape: vec![1, batch, hidden] }, &[h])?);
            if let Some(c) = c {
                last_c.push(self.emit(ctx, &format!("{p}.c_last"), DenseOp::Reshape { shape: vec![1, batch, hidden] }, &[c])?);
            }
        }
        // Y [S, D, N, H], Y_h and Y_c [D, N, H]; layout 1: [N, S, D, H] and [N, D, H].
        let join = |this: &mut Self, parts: Vec<TensorId>, axis: usize, what: &str| {
            if parts.len() == 1 {
                Ok(parts[0])
            } else {
                this.emit(ctx, &format!("{name}.{what}"), MoveOp::Concat { axis }, &parts)
            }
        };
        let mut y = join(self, ys, 1, "y_dirs")?;
        let mut yh = join(self, last_h, 0, "h_dirs")?;
        let mut yc = if lstm { Some(join(self, last_c, 0, "c_dirs")?) } else { None };
        if layout == 1 {
            y = self.emit(ctx, &format!("{name}.y_batch_first"), MoveOp::Transpose { perm: vec![2, 0, 1, 3] }, &[y])?;
            yh = self.emit(ctx, &format!("{name}.h_batch_first"), MoveOp::Transpose { perm: vec![1, 0, 2] }, &[yh])?;
            if let Some(c) = yc {
                yc = Some(self.emit(ctx, &format!("{name}.c_batch_first"), MoveOp::Transpose { perm: vec![1, 0, 2] }, &[c])?);
            }
        }
        self.set(ctx, 0, Value::Tensor(y))?;
        if ctx.node.outputs.len() > 1 {
            self.set(ctx, 1, Value::Tensor(yh))?;
        }
        if let (Some(c), true) = (yc, ctx.node.outputs.len() > 2) {
            self.set(ctx, 2, Value::Tensor(c))?;
        }
        Ok(())
    }

    /// `t[start..end]` along `axis`.
    fn slice_axis(&mut self, ctx: &Ctx, name: &str, t: TensorId, axis: usize, start: usize, end: usize) -> Result<TensorId, ImportError> {
        let s = Slice { axes: vec![axis], starts: vec![start as i64], ends: vec![end as i64], steps: vec![1] };
        self.emit(ctx, name, MoveOp::Slice(s), &[t])
    }
}
