//! The broadcasting elementwise family (numpy / ONNX multidirectional broadcasting): arithmetic,
//! comparisons, logic, `Where`, `SumTo` (the adjoint of broadcasting, which sums a gradient back
//! over the broadcast axes) and the backward ops of the arithmetic.
//!
//! Shapes are aligned at their last axis; along each axis the sizes must be equal or one of them
//! 1, and a missing leading axis counts as 1. The output has the larger rank and, per axis, the
//! size that is not 1 (0 if an input has 0 there and the other 1).

use alloc::vec;
use alloc::vec::Vec;
use core::ops::Range;
use serde::{Deserialize, Serialize};

use super::{Check, OpRules, ShapeError};
use crate::kernels::reference::broadcast::{self as kernel, MAX_RANK};
use crate::kernels::{Float, KernelError, NodeArgs, View, ViewMut};
use crate::plan::DType;

/// The broadcasting family. The doc comment of each variant is its argument convention:
/// `inputs -> outputs`, every input broadcast to the output's shape. Append new ops at the end
/// (the variant index is the plan encoding).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum BroadcastOp {
    /// `[a, b] -> [y]`: `a + b`; two floats, or two `i64` (wrapping, as PyTorch's integers).
    Add,
    /// `[a, b] -> [y]`: `a - b`; two floats or two `i64`.
    Sub,
    /// `[a, b] -> [y]`: `a * b`; two floats or two `i64`.
    Mul,
    /// `[a, b] -> [y]`: `a / b`; two floats, or two `i64` truncating toward zero (as ONNX `Div`
    /// and C), where division by zero and `i64::MIN / -1` are kernel errors.
    Div,
    /// `[a, b] -> [y]`, floats: `a^b`.
    Pow,
    /// `[a, b] -> [y]`, floats: the larger, NaN if either is NaN (`torch.maximum`).
    Max,
    /// `[a, b] -> [y]`, floats: the smaller, NaN if either is NaN (`torch.minimum`).
    Min,
    /// `[a, b] -> [y]`, two floats, two `i64` or two bools, to bool: `a == b`.
    Equal,
    /// `[a, b] -> [y]`, two floats or two `i64`, to bool: `a < b`.
    Less,
    /// `[a, b] -> [y]`, two floats or two `i64`, to bool: `a <= b`.
    LessOrEqual,
    /// `[a, b] -> [y]`, two floats or two `i64`, to bool: `a > b`.
    Greater,
    /// `[a, b] -> [y]`, two floats or two `i64`, to bool: `a >= b`.
    GreaterOrEqual,
    /// `[a, b] -> [y]`, bools: `a && b`.
    And,
    /// `[a, b] -> [y]`, bools: `a || b`.
    Or,
    /// `[a, b] -> [y]`, bools: `a != b`.
    Xor,
    /// `[cond, a, b] -> [y]`: `a` where `cond`, else `b`; `cond` is bool, `a` and `b` share a
    /// dtype (float, `i64` or bool), which is `y`'s.
    Where,
    /// `[x] -> [y]`, floats: `y` of shape `shape` is the sum of `x` over the axes along which
    /// `shape` broadcasts to `x`'s shape (the gradient of an input that was broadcast).
    SumTo { shape: Vec<usize> },
    /// `[dy, a, b] -> [da]`, floats, `da` of `dy`'s shape: `-dy * a / b^2`, the gradient of
    /// `a / b` with respect to `b` before it is summed to `b`'s shape.
    DivGradDivisor,
    /// `[dy, a, b] -> [da]`: `dy * b * a^(b-1)` (0 where `b == 0`), the gradient of `a^b` with
    /// respect to `a`.
    PowGradBase,
    /// `[dy, a, b] -> [db]`: `dy * a^b * ln a` (0 where `a == 0` and `b >= 0`), the gradient of
    /// `a^b` with respect to `b`.
    PowGradExponent,
    /// `[dy, a, b] -> [da]`: the share of `dy` that `max(a, b)` routes to `a`: all of it where
    /// `a > b`, half where `a == b` (as PyTorch), none elsewhere. `b`'s share is the same op
    /// with `a` and `b` swapped.
    MaxGrad,
    /// `[dy, a, b] -> [da]`: as [`BroadcastOp::MaxGrad`] for `min(a, b)` (`a < b` selects `a`).
    MinGrad,
}

/// What an op of the family takes, for its dtype rule.
enum Takes {
    /// Two floats, or two `i64`; the output has their dtype.
    Numbers,
    /// Floats only.
    Floats,
    /// Two floats or two `i64` (or two bools when `bools`), compared to a bool.
    Comparable { bools: bool },
    /// Two bools.
    Bools,
    /// A bool condition and two values of one dtype.
    Select,
}

impl BroadcastOp {
    fn takes(&self) -> Takes {
        use BroadcastOp::*;
        match self {
            Add | Sub | Mul | Div => Takes::Numbers,
            Pow | Max | Min | SumTo { .. } | DivGradDivisor | PowGradBase | PowGradExponent | MaxGrad | MinGrad => Takes::Floats,
            Equal => Takes::Comparable { bools: true },
            Less | LessOrEqual | Greater | GreaterOrEqual => Takes::Comparable { bools: false },
            And | Or | Xor => Takes::Bools,
            Where => Takes::Select,
        }
    }
}

/// The shape all of `shapes` broadcast to, or an error naming every shape and the first axis on
/// which they disagree.
pub fn broadcast_shape(check: Check, shapes: &[&[usize]]) -> Result<Vec<usize>, ShapeError> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    if rank > MAX_RANK {
        return Err(check.err(alloc::format!("broadcasting takes at most {MAX_RANK} axes, got shapes {shapes:?}")));
    }
    let mut out = vec![1usize; rank];
    for (axis, out_size) in out.iter_mut().enumerate() {
        let mut size: Option<usize> = None;
        for s in shapes {
            // Axes are aligned at the end; a missing leading axis is 1.
            let Some(d) = (axis + s.len()).checked_sub(rank).map(|i| s[i]) else { continue };
            match size {
                _ if d == 1 => {}
                None | Some(1) => size = Some(d),
                Some(prev) if prev == d => {}
                Some(prev) => {
                    let from_end = rank - axis;
                    let what = if shapes.len() == 2 { "shapes" } else { "shapes of all inputs" };
                    return Err(check.err(alloc::format!(
                        "{what} {} cannot be broadcast together: axis -{from_end} has sizes {prev} and {d} (each must equal the \
                         other or be 1)",
                        ShapeList(shapes)
                    )));
                }
            }
        }
        *out_size = size.unwrap_or(1);
    }
    Ok(out)
}

/// Writes `[2, 3] and [4]` or `[2, 3], [4] and [1]`.
struct ShapeList<'a>(&'a [&'a [usize]]);

impl core::fmt::Display for ShapeList<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            let sep = if i == 0 {
                ""
            } else if i + 1 == self.0.len() {
                " and "
            } else {
                ", "
            };
            write!(f, "{sep}{s:?}")?;
        }
        Ok(())
    }
}

impl OpRules for BroadcastOp {
    fn name(&self) -> &'static str {
        match self {
            BroadcastOp::Add => "Add",
            BroadcastOp::Sub => "Sub",
            BroadcastOp::Mul => "Mul",
            BroadcastOp::Div => "Div",
            BroadcastOp::Pow => "Pow",
            BroadcastOp::Max => "Max",
            BroadcastOp::Min => "Min",
            BroadcastOp::Equal => "Equal",
            BroadcastOp::Less => "Less",
            BroadcastOp::LessOrEqual => "LessOrEqual",
            BroadcastOp::Greater => "Greater",
            BroadcastOp::GreaterOrEqual => "GreaterOrEqual",
            BroadcastOp::And => "And",
            BroadcastOp::Or => "Or",
            BroadcastOp::Xor => "Xor",
            BroadcastOp::Where => "Where",
            BroadcastOp::SumTo { .. } => "SumTo",
            BroadcastOp::DivGradDivisor => "DivGradDivisor",
            BroadcastOp::PowGradBase => "PowGradBase",
            BroadcastOp::PowGradExponent => "PowGradExponent",
            BroadcastOp::MaxGrad => "MaxGrad",
            BroadcastOp::MinGrad => "MinGrad",
        }
    }

    fn input_arity(&self) -> Option<usize> {
        use BroadcastOp::*;
        Some(match self {
            SumTo { .. } => 1,
            Where | DivGradDivisor | PowGradBase | PowGradExponent | MaxGrad | MinGrad => 3,
            Add | Sub | Mul | Div | Pow | Max | Min | Equal | Less | LessOrEqual | Greater | GreaterOrEqual | And | Or | Xor => 2,
        })
    }

    fn dtype_rule(&self, check: Check, inputs: &[DType]) -> Result<Vec<DType>, ShapeError> {
        let pair = |allowed: &[DType], expected: &str| -> Result<DType, ShapeError> {
            let (a, b) = (inputs[0], inputs[1]);
            if a == b && allowed.contains(&a) {
                Ok(a)
            } else {
                Err(check.err(alloc::format!("inputs are {} and {}, expected {expected}", a.name(), b.name())))
            }
        };
        Ok(vec![match self.takes() {
            Takes::Numbers => pair(&[DType::F32, DType::I64], "two float32 or two int64")?,
            Takes::Floats => return check.floats(inputs, 1),
            Takes::Comparable { bools: false } => {
                pair(&[DType::F32, DType::I64], "two float32 or two int64")?;
                DType::Bool
            }
            Takes::Comparable { bools: true } => {
                pair(&[DType::F32, DType::I64, DType::Bool], "two float32, two int64 or two bool")?;
                DType::Bool
            }
            Takes::Bools => pair(&[DType::Bool], "two bool")?,
            Takes::Select => {
                if inputs[0] != DType::Bool {
                    return Err(check.err(alloc::format!("the condition (input 0) is {}, expected bool", inputs[0].name())));
                }
                let (a, b) = (inputs[1], inputs[2]);
                if a != b || ![DType::F32, DType::I64, DType::Bool].contains(&a) {
                    return Err(check.err(alloc::format!(
                        "inputs 1 and 2 are {} and {}, expected the same dtype (float32, int64 or bool)",
                        a.name(),
                        b.name()
                    )));
                }
                a
            }
        }])
    }

    fn inplace_outputs(&self) -> Range<usize> {
        0..0
    }

    fn shape_rule(&self, check: Check, inputs: &[&[usize]]) -> Result<Vec<Vec<usize>>, ShapeError> {
        use BroadcastOp::*;
        Ok(vec![match self {
            SumTo { shape } => {
                let x = inputs[0];
                if shape.len() > x.len() || broadcast_shape(check, &[shape, x]).ok().as_deref() != Some(x) {
                    return Err(check.err(alloc::format!("cannot sum {x:?} to {shape:?}: {shape:?} does not broadcast to {x:?}")));
                }
                shape.clone()
            }
            DivGradDivisor | PowGradBase | PowGradExponent | MaxGrad | MinGrad => {
                let dy = inputs[0];
                if broadcast_shape(check, inputs)? != dy {
                    return Err(check.err(alloc::format!(
                        "operands {:?} and {:?} do not broadcast to the gradient's shape {dy:?}",
                        inputs[1],
                        inputs[2]
                    )));
                }
                dy.to_vec()
            }
            _ => broadcast_shape(check, inputs)?,
        }])
    }

    fn execute<T: Float>(&self, args: NodeArgs<'_, '_, T>) -> Result<(), KernelError> {
        use BroadcastOp::*;
        let NodeArgs { inputs: f, int_inputs: i, bool_inputs: b, outputs: fo, int_outputs: io, bool_outputs: bo } = args;
        match self {
            Add | Sub | Mul | Div | Pow | Max | Min if !f.is_empty() => {
                let y = &mut fo[0];
                let op: fn(T, T) -> T = match self {
                    Add => |a, b| a + b,
                    Sub => |a, b| a - b,
                    Mul => |a, b| a * b,
                    Div => |a, b| a / b,
                    Pow => |a, b| a.powf(b),
                    Max => kernel::max,
                    _ => kernel::min,
                };
                kernel::binary(f[0], f[1], y, op);
            }
            Add | Sub | Mul | Div => return integer(self, i[0], i[1], &mut io[0]),
            Equal | Less | LessOrEqual | Greater | GreaterOrEqual => {
                let y = &mut bo[0];
                match (f, i, b) {
                    ([x0, x1], _, _) => compare(self, *x0, *x1, y),
                    (_, [x0, x1], _) => compare(self, *x0, *x1, y),
                    (_, _, [x0, x1]) => compare(self, *x0, *x1, y),
                    _ => return Err(wrong_arguments(self)),
                }
            }
            And | Or | Xor => {
                let op: fn(bool, bool) -> bool = match self {
                    And => |a, b| a && b,
                    Or => |a, b| a || b,
                    _ => |a, b| a != b,
                };
                kernel::binary(b[0], b[1], &mut bo[0], |x, y| u8::from(op(x != 0, y != 0)));
            }
            Where => {
                let cond = b[0];
                match (f, i, b.len()) {
                    ([x0, x1], _, 1) => kernel::ternary(cond, *x0, *x1, &mut fo[0], select),
                    (_, [x0, x1], 1) => kernel::ternary(cond, *x0, *x1, &mut io[0], select),
                    (_, _, 3) => kernel::ternary(cond, b[1], b[2], &mut bo[0], |c, x, y| u8::from(select(c, x, y) != 0)),
                    _ => return Err(wrong_arguments(self)),
                }
            }
            SumTo { .. } => kernel::sum_to(f[0], &mut fo[0]),
            DivGradDivisor => kernel::ternary(f[0], f[1], f[2], &mut fo[0], kernel::div_grad_divisor),
            PowGradBase => kernel::ternary(f[0], f[1], f[2], &mut fo[0], kernel::pow_grad_base),
            PowGradExponent => kernel::ternary(f[0], f[1], f[2], &mut fo[0], kernel::pow_grad_exponent),
            MaxGrad => kernel::ternary(f[0], f[1], f[2], &mut fo[0], |dy, a, b| kernel::select_grad(dy, a, b, |a, b| a > b)),
            MinGrad => kernel::ternary(f[0], f[1], f[2], &mut fo[0], |dy, a, b| kernel::select_grad(dy, a, b, |a, b| a < b)),
            Pow | Max | Min => return Err(wrong_arguments(self)),
        }
        Ok(())
    }
}

fn select<V>(c: u8, a: V, b: V) -> V {
    if c != 0 {
        a
    } else {
        b
    }
}

fn compare<V: PartialOrd + Copy>(op: &BroadcastOp, a: View<V>, b: View<V>, y: &mut ViewMut<u8>) {
    let test: fn(&V, &V) -> bool = match op {
        BroadcastOp::Equal => |a, b| a == b,
        BroadcastOp::Less => |a, b| a < b,
        BroadcastOp::LessOrEqual => |a, b| a <= b,
        BroadcastOp::Greater => |a, b| a > b,
        _ => |a, b| a >= b,
    };
    kernel::binary(a, b, y, |a, b| u8::from(test(&a, &b)));
}

/// Integer arithmetic: wrapping add, subtract and multiply (two's complement, as PyTorch), and
/// division truncating toward zero that refuses a zero divisor and the one overflowing quotient.
fn integer(op: &BroadcastOp, a: View<i64>, b: View<i64>, y: &mut ViewMut<i64>) -> Result<(), KernelError> {
    let mut undefined = false;
    match op {
        BroadcastOp::Add => kernel::binary(a, b, y, i64::wrapping_add),
        BroadcastOp::Sub => kernel::binary(a, b, y, i64::wrapping_sub),
        BroadcastOp::Mul => kernel::binary(a, b, y, i64::wrapping_mul),
        _ => kernel::binary(a, b, y, |a, b| {
            a.checked_div(b).unwrap_or_else(|| {
                undefined = true;
                0
            })
        }),
    }
    if undefined {
        return Err(KernelError::Invalid { op: "Div", message: "int64 division by zero (or i64::MIN / -1); check the divisor's values" });
    }
    Ok(())
}

fn wrong_arguments(op: &BroadcastOp) -> KernelError {
    KernelError::Invalid { op: op.name(), message: "arguments do not match the op's dtype rule" }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::Op;
    use alloc::string::ToString;

    fn shapes(op: BroadcastOp, inputs: &[&[usize]]) -> Result<Vec<usize>, ShapeError> {
        let op: Op = op.into();
        op.output_shapes(inputs).map(|mut s| s.remove(0))
    }

    #[test]
    fn shape_rule_broadcasts_like_numpy() {
        assert_eq!(shapes(BroadcastOp::Add, &[&[2, 3, 4], &[4]]).unwrap(), [2, 3, 4]);
        assert_eq!(shapes(BroadcastOp::Mul, &[&[2, 1, 4], &[3, 1]]).unwrap(), [2, 3, 4]);
        assert_eq!(shapes(BroadcastOp::Sub, &[&[], &[2, 2]]).unwrap(), [2, 2]);
        assert_eq!(shapes(BroadcastOp::Less, &[&[0, 1], &[1, 5]]).unwrap(), [0, 5]);
        assert_eq!(shapes(BroadcastOp::Where, &[&[2, 1, 1], &[3, 1], &[4]]).unwrap(), [2, 3, 4]);
    }

    #[test]
    fn shape_rule_refuses_incompatible_shapes_naming_both() {
        let e = shapes(BroadcastOp::Add, &[&[2, 3], &[4]]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Add: shapes [2, 3] and [4] cannot be broadcast together: axis -1 has sizes 3 and 4 (each must equal the other or be 1)"
        );
        let e = shapes(BroadcastOp::Where, &[&[2], &[3, 2], &[5, 1]]).unwrap_err();
        assert!(e.message.contains("[2], [3, 2] and [5, 1]") && e.message.contains("axis -2 has sizes 3 and 5"), "{e}");
        let e = shapes(BroadcastOp::Max, &[&[1; 9], &[1]]).unwrap_err();
        assert!(e.message.contains("at most 8 axes"), "{e}");
        // SumTo's target must broadcast to its input, and cannot add axes.
        assert_eq!(shapes(BroadcastOp::SumTo { shape: vec![3, 1] }, &[&[2, 3, 4]]).unwrap(), [3, 1]);
        let e = shapes(BroadcastOp::SumTo { shape: vec![2] }, &[&[2, 3]]).unwrap_err();
        assert_eq!(e.to_string(), "SumTo: cannot sum [2, 3] to [2]: [2] does not broadcast to [2, 3]");
        assert!(shapes(BroadcastOp::SumTo { shape: vec![1, 2, 3] }, &[&[2, 3]]).is_err());
        // A gradient op's operands must broadcast to dy, not beyond it.
        assert!(shapes(BroadcastOp::MaxGrad, &[&[3], &[2, 3], &[3]]).is_err());
    }

    #[test]
    fn dtype_rules() {
        let rule = |op: BroadcastOp, inputs: &[DType]| Op::from(op).output_dtypes(inputs).map_err(|e| e.to_string());
        assert_eq!(rule(BroadcastOp::Add, &[DType::I64, DType::I64]), Ok(vec![DType::I64]));
        assert_eq!(
            rule(BroadcastOp::Add, &[DType::F32, DType::I64]),
            Err("Add: inputs are float32 and int64, expected two float32 or two int64".into())
        );
        assert!(rule(BroadcastOp::Pow, &[DType::I64, DType::I64]).is_err());
        assert_eq!(rule(BroadcastOp::Less, &[DType::I64, DType::I64]), Ok(vec![DType::Bool]));
        assert!(rule(BroadcastOp::Less, &[DType::Bool, DType::Bool]).is_err());
        assert_eq!(rule(BroadcastOp::Equal, &[DType::Bool, DType::Bool]), Ok(vec![DType::Bool]));
        assert!(rule(BroadcastOp::And, &[DType::F32, DType::F32]).is_err());
        assert_eq!(rule(BroadcastOp::Where, &[DType::Bool, DType::I64, DType::I64]), Ok(vec![DType::I64]));
        assert_eq!(
            rule(BroadcastOp::Where, &[DType::F32, DType::F32, DType::F32]),
            Err("Where: the condition (input 0) is float32, expected bool".into())
        );
        assert!(rule(BroadcastOp::Where, &[DType::Bool, DType::F32, DType::I64]).is_err());
    }

    /// The one output of a node, as whichever of the three dtypes it has (the others unwritten).
    type Outputs = (Vec<f64>, Vec<i64>, Vec<u8>);

    /// Runs `op` on typed arguments; returns (floats, ints, bools) of the one output.
    fn run(op: BroadcastOp, f: &[View<f64>], i: &[View<i64>], b: &[View<u8>], out: (DType, &[usize])) -> Result<Outputs, KernelError> {
        let n: usize = out.1.iter().product();
        let (mut yf, mut yi, mut yb) = (vec![f64::NAN; n], vec![99i64; n], vec![99u8; n]);
        let mut fo = [ViewMut { data: &mut yf[..], shape: out.1 }];
        let mut io = [ViewMut { data: &mut yi[..], shape: out.1 }];
        let mut bo = [ViewMut { data: &mut yb[..], shape: out.1 }];
        let args = NodeArgs {
            inputs: f,
            int_inputs: i,
            bool_inputs: b,
            outputs: if out.0 == DType::F32 { &mut fo } else { &mut [] },
            int_outputs: if out.0 == DType::I64 { &mut io } else { &mut [] },
            bool_outputs: if out.0 == DType::Bool { &mut bo } else { &mut [] },
        };
        Op::from(op).execute(args)?;
        Ok((yf, yi, yb))
    }

    fn v<'a, T>(data: &'a [T], shape: &'a [usize]) -> View<'a, T> {
        View { data, shape }
    }

    #[test]
    fn float_arithmetic_broadcasts() {
        // a [2, 1] = [[1], [2]], b [3] = [1, 2, 4].
        let (a, b) = (v(&[1.0, 2.0], &[2, 1]), v(&[1.0, 2.0, 4.0], &[3]));
        let out = (DType::F32, &[2usize, 3][..]);
        let y = |op| run(op, &[a, b], &[], &[], out).unwrap().0;
        assert_eq!(y(BroadcastOp::Add), [2.0, 3.0, 5.0, 3.0, 4.0, 6.0]);
        assert_eq!(y(BroadcastOp::Sub), [0.0, -1.0, -3.0, 1.0, 0.0, -2.0]);
        assert_eq!(y(BroadcastOp::Mul), [1.0, 2.0, 4.0, 2.0, 4.0, 8.0]);
        assert_eq!(y(BroadcastOp::Div), [1.0, 0.5, 0.25, 2.0, 1.0, 0.5]);
        assert_eq!(y(BroadcastOp::Pow), [1.0, 1.0, 1.0, 2.0, 4.0, 16.0]);
        assert_eq!(y(BroadcastOp::Max), [1.0, 2.0, 4.0, 2.0, 2.0, 4.0]);
        assert_eq!(y(BroadcastOp::Min), [1.0, 1.0, 1.0, 1.0, 2.0, 2.0]);
    }

    #[test]
    fn comparisons_write_bools_for_float_int_and_bool_inputs() {
        let out = (DType::Bool, &[3usize][..]);
        let (a, s) = (v(&[1.0, 2.0, 3.0], &[3]), v(&[2.0], &[]));
        let cmp = |op| run(op, &[a, s], &[], &[], out).unwrap().2;
        assert_eq!(cmp(BroadcastOp::Equal), [0, 1, 0]);
        assert_eq!(cmp(BroadcastOp::Less), [1, 0, 0]);
        assert_eq!(cmp(BroadcastOp::LessOrEqual), [1, 1, 0]);
        assert_eq!(cmp(BroadcastOp::Greater), [0, 0, 1]);
        assert_eq!(cmp(BroadcastOp::GreaterOrEqual), [0, 1, 1]);
        let ints = run(BroadcastOp::Greater, &[], &[v(&[5, -1, 2], &[3]), v(&[0], &[1])], &[], out).unwrap().2;
        assert_eq!(ints, [1, 0, 1]);
        let nan = run(BroadcastOp::Equal, &[v(&[f64::NAN, 1.0, 1.0], &[3]), v(&[f64::NAN], &[])], &[], &[], out).unwrap().2;
        assert_eq!(nan, [0, 0, 0], "NaN equals nothing, itself included");
        // Bools: any non-zero byte is true; And/Or/Xor and Equal.
        let (p, q) = (v(&[0u8, 0, 1, 1], &[4]), v(&[0u8, 2, 0, 1], &[4]));
        let out = (DType::Bool, &[4usize][..]);
        let logic = |op| run(op, &[], &[], &[p, q], out).unwrap().2;
        assert_eq!(logic(BroadcastOp::And), [0, 0, 0, 1]);
        assert_eq!(logic(BroadcastOp::Or), [0, 1, 1, 1]);
        assert_eq!(logic(BroadcastOp::Xor), [0, 1, 1, 0]);
        assert_eq!(logic(BroadcastOp::Equal), [1, 0, 0, 1]);
    }

    #[test]
    fn integer_arithmetic_wraps_and_division_truncates() {
        let out = (DType::I64, &[4usize][..]);
        let (a, b) = (v(&[7, -7, i64::MAX, 6], &[4]), v(&[2, 2, 1, -4], &[4]));
        let y = |op| run(op, &[], &[a, b], &[], out);
        assert_eq!(y(BroadcastOp::Add).unwrap().1, [9, -5, i64::MIN, 2]);
        assert_eq!(y(BroadcastOp::Sub).unwrap().1, [5, -9, i64::MAX - 1, 10]);
        assert_eq!(y(BroadcastOp::Mul).unwrap().1, [14, -14, i64::MAX, -24]);
        assert_eq!(y(BroadcastOp::Div).unwrap().1, [3, -3, i64::MAX, -1]);
        let e = run(BroadcastOp::Div, &[], &[a, v(&[0], &[])], &[], out).unwrap_err();
        assert!(e.to_string().contains("division by zero"), "{e}");
        assert!(run(BroadcastOp::Div, &[], &[v(&[i64::MIN], &[1]), v(&[-1], &[1])], &[], (DType::I64, &[1])).is_err());
    }

    #[test]
    fn where_selects_with_broadcast_condition() {
        // cond [2, 1] selects rows; a [3] and the scalar b broadcast to [2, 3].
        let cond = v(&[1u8, 0], &[2, 1]);
        let out = (DType::F32, &[2usize, 3][..]);
        let y = run(BroadcastOp::Where, &[v(&[1.0, 2.0, 3.0], &[3]), v(&[-1.0], &[])], &[], &[cond], out).unwrap().0;
        assert_eq!(y, [1.0, 2.0, 3.0, -1.0, -1.0, -1.0]);
        let ints = run(BroadcastOp::Where, &[], &[v(&[1, 2, 3], &[3]), v(&[0], &[])], &[cond], (DType::I64, &[2, 3])).unwrap().1;
        assert_eq!(ints, [1, 2, 3, 0, 0, 0]);
        let bools = run(BroadcastOp::Where, &[], &[], &[cond, v(&[5u8], &[]), v(&[0u8], &[])], (DType::Bool, &[2, 1])).unwrap().2;
        assert_eq!(bools, [1, 0]);
    }

    #[test]
    fn gradient_ops_on_hand_computed_values() {
        let out = (DType::F32, &[3usize][..]);
        let dy = v(&[1.0, 2.0, 4.0], &[3]);
        // max(a, b) with a = [3, 1, 2], b = 2 (scalar): a wins, b wins, tie.
        let (a, b) = (v(&[3.0, 1.0, 2.0], &[3]), v(&[2.0], &[]));
        assert_eq!(run(BroadcastOp::MaxGrad, &[dy, a, b], &[], &[], out).unwrap().0, [1.0, 0.0, 2.0]);
        assert_eq!(run(BroadcastOp::MaxGrad, &[dy, b, a], &[], &[], out).unwrap().0, [0.0, 2.0, 2.0]);
        assert_eq!(run(BroadcastOp::MinGrad, &[dy, a, b], &[], &[], out).unwrap().0, [0.0, 2.0, 2.0]);
        // d(a/b)/db = -a/b^2; d(a^b)/da = b a^(b-1); with b = 2.
        assert_eq!(run(BroadcastOp::DivGradDivisor, &[dy, a, b], &[], &[], out).unwrap().0, [-0.75, -0.5, -2.0]);
        assert_eq!(run(BroadcastOp::PowGradBase, &[dy, a, b], &[], &[], out).unwrap().0, [6.0, 4.0, 16.0]);
        // SumTo of dy [2, 3] onto [3] and onto [2, 1].
        let dy = v(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]);
        assert_eq!(run(BroadcastOp::SumTo { shape: vec![3] }, &[dy], &[], &[], out).unwrap().0, [5.0, 7.0, 9.0]);
        assert_eq!(run(BroadcastOp::SumTo { shape: vec![2, 1] }, &[dy], &[], &[], (DType::F32, &[2, 1])).unwrap().0, [6.0, 15.0]);
    }
}
