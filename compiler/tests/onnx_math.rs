//! The importer's elementwise, comparison, logic, reduction, Softmax, LayerNormalization, Gelu and
//! Cast arms on run-time tensors: tiny ONNX models built with the prost types, encoded, loaded,
//! imported, and run by the f64 interpreter, against values computed here from each op's ONNX
//! definition (numpy broadcasting spelled out below). Then a finite-difference check of the
//! gradients through an imported model that chains the composites.

mod onnx_support;

use pock_compiler::gradcheck::{assert_close, check_model};
use pock_compiler::interp::Interpreter;
use pock_compiler::ir::{DType, Role};
use pock_compiler::onnx::proto::{
    attribute_proto::AttributeType, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, ValueInfoProto,
};
use pock_compiler::onnx::{import_model, load_model_bytes, ImportError, ImportOptions, LossKind, OnnxModel};
use pock_compiler::ForwardGraph;
use prost::Message;

// ONNX element type codes.
const F32: i32 = 1;
const I64: i32 = 7;
const BOOL: i32 = 9;

fn value(name: &str, elem: i32, dims: &[usize]) -> ValueInfoProto {
    onnx_support::value_info(name, elem, &dims.iter().map(|&d| Ok(d as i64)).collect::<Vec<_>>())
}

fn f32_init(name: &str, dims: &[usize], values: &[f32]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: Some(F32),
        float_data: values.to_vec(),
        ..Default::default()
    }
}

fn i64_init(name: &str, dims: &[usize], values: &[i64]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: Some(I64),
        int64_data: values.to_vec(),
        ..Default::default()
    }
}

fn bool_init(name: &str, dims: &[usize], values: &[bool]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: Some(BOOL),
        int32_data: values.iter().map(|&b| i32::from(b)).collect(),
        ..Default::default()
    }
}

fn int(name: &str, v: i64) -> AttributeProto {
    AttributeProto { name: Some(name.into()), r#type: Some(AttributeType::Int as i32), i: Some(v), ..Default::default() }
}

fn float(name: &str, v: f32) -> AttributeProto {
    AttributeProto { name: Some(name.into()), r#type: Some(AttributeType::Float as i32), f: Some(v), ..Default::default() }
}

fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto { name: Some(name.into()), r#type: Some(AttributeType::Ints as i32), ints: v.to_vec(), ..Default::default() }
}

fn string(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::String as i32),
        s: Some(v.as_bytes().to_vec()),
        ..Default::default()
    }
}

fn node(op: &str, inputs: &[&str], outputs: &[&str], attribute: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        name: Some(format!("{op}_{}", outputs[0])),
        op_type: Some(op.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute,
        ..Default::default()
    }
}

/// Encodes and loads a model whose data inputs are `inputs` and whose output is `output`.
fn load(opset: i64, inputs: Vec<ValueInfoProto>, init: Vec<TensorProto>, nodes: Vec<NodeProto>, output: &str) -> OnnxModel {
    let m = ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(opset) }],
        graph: Some(GraphProto {
            name: Some("math".into()),
            node: nodes,
            initializer: init,
            input: inputs,
            output: vec![ValueInfoProto { name: Some(output.into()), ..Default::default() }],
            ..Default::default()
        }),
        ..Default::default()
    };
    load_model_bytes(&m.encode_to_vec(), None).expect("the test model loads")
}

fn import(m: &OnnxModel) -> Result<ForwardGraph, ImportError> {
    import_model(m, "math", &ImportOptions { loss: LossKind::Mse, ..Default::default() }).map(|i| i.forward)
}

/// A value fed to or read from the interpreter.
#[derive(Clone, Debug, PartialEq)]
enum V {
    F(Vec<f64>),
    I(Vec<i64>),
    B(Vec<bool>),
}

/// Imports `m`, feeds its inputs in order, and returns the output's shape and values.
fn run(m: &OnnxModel, feeds: &[V]) -> (Vec<usize>, V) {
    let f = import(m).unwrap_or_else(|e| panic!("import: {e}"));
    let mut it = Interpreter::<f64>::new(&f.graph);
    assert_eq!(f.inputs.len(), feeds.len());
    for (&t, v) in f.inputs.iter().zip(feeds) {
        match v {
            V::F(x) => it.set(t, x.clone()),
            V::I(x) => it.set_int(t, x.clone()),
            V::B(x) => it.set_bool(t, x.iter().map(|&b| u8::from(b)).collect()),
        }
    }
    it.run(&f.graph.nodes).unwrap_or_else(|e| panic!("run: {e}"));
    let y = f.output;
    let out = match f.graph.tensor(y).dtype {
        DType::F32 => V::F(it.get(y).unwrap().to_vec()),
        DType::I64 => V::I(it.get_int(y).unwrap().to_vec()),
        DType::Bool => V::B(it.get_bool(y).unwrap().iter().map(|&b| b != 0).collect()),
        other => panic!("the importer wrote a {other:?} output"),
    };
    (f.graph.shape(y).to_vec(), out)
}

fn floats(v: V) -> Vec<f64> {
    match v {
        V::F(x) => x,
        other => panic!("expected floats, got {other:?}"),
    }
}

fn assert_near(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = (g - w).abs() <= tol * w.abs().max(1.0) || (g.is_nan() && w.is_nan());
        assert!(ok, "{what}: element {i}: got {g}, want {w}\n got {got:?}\nwant {want:?}");
    }
}

/// numpy's broadcast shape of `a` and `b` (the tests use compatible shapes only).
fn broadcast_shape(a: &[usize], b: &[usize]) -> Vec<usize> {
    let rank = a.len().max(b.len());
    let at = |s: &[usize], k: usize| if k + s.len() >= rank { s[k + s.len() - rank] } else { 1 };
    (0..rank).map(|k| at(a, k).max(at(b, k))).collect()
}

/// The flat index into a tensor of shape `s` that numpy reads for output index `flat` of `out`.
fn source_index(out: &[usize], s: &[usize], mut flat: usize) -> usize {
    let mut idx = vec![0; out.len()];
    for k in (0..out.len()).rev() {
        idx[k] = flat % out[k];
        flat /= out[k];
    }
    let offset = out.len() - s.len();
    s.iter().enumerate().fold(0, |acc, (k, &d)| acc * d + if d == 1 { 0 } else { idx[k + offset] })
}

/// `f(a, b)` elementwise with numpy broadcasting.
fn zip<A: Copy, B: Copy, R>(a: &[A], sa: &[usize], b: &[B], sb: &[usize], f: impl Fn(A, B) -> R) -> (Vec<usize>, Vec<R>) {
    let out = broadcast_shape(sa, sb);
    let n = out.iter().product();
    (out.clone(), (0..n).map(|i| f(a[source_index(&out, sa, i)], b[source_index(&out, sb, i)])).collect())
}

/// Deterministic test values in [-2, 2), none of them zero.
fn values(n: usize, seed: usize) -> Vec<f64> {
    (0..n).map(|i| (((i * 37 + seed * 11) % 29) as f64 - 14.5) / 7.25).collect()
}

/// The shape pairs each binary op is run on: equal shapes, a trailing vector, both operands
/// broadcast, and a scalar.
const PAIRS: [(&[usize], &[usize]); 4] = [(&[2, 3], &[2, 3]), (&[2, 3, 4], &[4]), (&[2, 1, 4], &[3, 1]), (&[], &[2, 3])];

fn binary_model(op: &str, ea: i32, sa: &[usize], eb: i32, sb: &[usize]) -> OnnxModel {
    load(17, vec![value("a", ea, sa), value("b", eb, sb)], vec![], vec![node(op, &["a", "b"], &["y"], vec![])], "y")
}

#[test]
fn float_arithmetic_broadcasts_like_numpy() {
    type F = fn(f64, f64) -> f64;
    let ops: [(&str, F); 7] = [
        ("Add", |a, b| a + b),
        ("Sub", |a, b| a - b),
        ("Mul", |a, b| a * b),
        ("Div", |a, b| a / b),
        ("Pow", |a, b| a.abs().powf(b)),
        ("Max", f64::max),
        ("Min", f64::min),
    ];
    for (k, (sa, sb)) in PAIRS.iter().enumerate() {
        let mut a = values(sa.iter().product(), k);
        let b = values(sb.iter().product(), k + 7);
        for (op, f) in ops {
            if op == "Pow" {
                // Pow of a negative base by a fractional exponent is NaN; test positive bases.
                a.iter_mut().for_each(|x| *x = x.abs());
            }
            let (shape, y) = run(&binary_model(op, F32, sa, F32, sb), &[V::F(a.clone()), V::F(b.clone())]);
            let (want_shape, want) = zip(&a, sa, &b, sb, f);
            assert_eq!(shape, want_shape, "{op} {sa:?} {sb:?}");
            assert_near(&format!("{op} {sa:?} {sb:?}"), &floats(y), &want, 1e-12);
        }
    }
}

#[test]
fn equal_shape_float_add_and_mul_keep_the_same_shape_ops_and_broadcasting_uses_the_family() {
    let names = |m: &OnnxModel| import(m).unwrap().graph.nodes.iter().map(|n| n.op.name().to_string()).collect::<Vec<_>>();
    assert_eq!(names(&binary_model("Add", F32, &[2, 3], F32, &[2, 3])), ["AddSameShape"]);
    assert_eq!(names(&binary_model("Mul", F32, &[2, 3], F32, &[2, 3])), ["MulSameShape"]);
    assert_eq!(names(&binary_model("Add", F32, &[2, 3], F32, &[3])), ["Add"]);
    assert_eq!(names(&binary_model("Mul", F32, &[2, 3], F32, &[1, 3])), ["Mul"]);
}

#[test]
fn int64_arithmetic_broadcasts_and_divides_toward_zero() {
    let a = vec![7i64, -7, 9, -1, 0, 5];
    let b = vec![2i64, -3, 4];
    type F = fn(i64, i64) -> i64;
    let ops: [(&str, F); 4] = [("Add", |a, b| a + b), ("Sub", |a, b| a - b), ("Mul", |a, b| a * b), ("Div", |a, b| a / b)];
    for (op, f) in ops {
        let (shape, y) = run(&binary_model(op, I64, &[2, 3], I64, &[3]), &[V::I(a.clone()), V::I(b.clone())]);
        let (_, want) = zip(&a, &[2, 3], &b, &[3], f);
        assert_eq!((shape, y), (vec![2, 3], V::I(want)), "{op}");
    }
    // Rust's `/` truncates toward zero, as ONNX's integer Div: -7 / 2 is -3, 7 / -3 is -2.
    let (_, y) = run(&binary_model("Div", I64, &[2, 3], I64, &[3]), &[V::I(a.clone()), V::I(b)]);
    assert_eq!(y, V::I(vec![3, 2, 2, 0, 0, 1]));
    let m = load(17, vec![value("a", I64, &[2, 3])], vec![], vec![node("Neg", &["a"], &["y"], vec![])], "y");
    assert_eq!(run(&m, &[V::I(a.clone())]).1, V::I(a.iter().map(|x| -x).collect()));
}

#[test]
fn comparisons_and_logic_give_bools_with_broadcasting() {
    type C = fn(f64, f64) -> bool;
    let ops: [(&str, C); 5] = [
        ("Equal", |a, b| a == b),
        ("Less", |a, b| a < b),
        ("LessOrEqual", |a, b| a <= b),
        ("Greater", |a, b| a > b),
        ("GreaterOrEqual", |a, b| a >= b),
    ];
    // Ties included: b's values occur in a.
    let a = vec![1.0, 2.0, 3.0, -1.0, 2.0, 0.5];
    let b = vec![2.0, 0.5, 3.0];
    for (op, f) in ops {
        let (shape, y) = run(&binary_model(op, F32, &[2, 3], F32, &[3]), &[V::F(a.clone()), V::F(b.clone())]);
        let (_, want) = zip(&a, &[2, 3], &b, &[3], f);
        assert_eq!((shape, y), (vec![2, 3], V::B(want)), "{op} float");
        let (ai, bi): (Vec<i64>, Vec<i64>) = (a.iter().map(|&x| (x * 2.0) as i64).collect(), b.iter().map(|&x| (x * 2.0) as i64).collect());
        let (_, y) = run(&binary_model(op, I64, &[2, 3], I64, &[3]), &[V::I(ai.clone()), V::I(bi.clone())]);
        let (_, want) = zip(&ai, &[2, 3], &bi, &[3], |p, q| f(p as f64, q as f64));
        assert_eq!(y, V::B(want), "{op} int64");
    }
    let p = vec![true, false, true, false];
    let q = vec![true, false];
    type L = fn(bool, bool) -> bool;
    let logic: [(&str, L); 3] = [("And", |a, b| a && b), ("Or", |a, b| a || b), ("Xor", |a, b| a != b)];
    for (op, f) in logic {
        let (shape, y) = run(&binary_model(op, BOOL, &[2, 2], BOOL, &[2, 1]), &[V::B(p.clone()), V::B(q.clone())]);
        let (_, want) = zip(&p, &[2, 2], &q, &[2, 1], f);
        assert_eq!((shape, y), (vec![2, 2], V::B(want)), "{op}");
    }
    let m = load(17, vec![value("p", BOOL, &[4])], vec![], vec![node("Not", &["p"], &["y"], vec![])], "y");
    assert_eq!(run(&m, &[V::B(p)]).1, V::B(vec![false, true, false, true]));
}

#[test]
fn where_broadcasts_a_run_time_mask_and_a_constant_fill() {
    // y = where(mask [2, 1], x [2, 3], -100), the fill a Constant node (a folded scalar).
    let nodes =
        vec![node("Constant", &[], &["fill"], vec![float("value_float", -100.0)]), node("Where", &["mask", "x", "fill"], &["y"], vec![])];
    let m = load(17, vec![value("mask", BOOL, &[2, 1]), value("x", F32, &[2, 3])], vec![], nodes, "y");
    let x = values(6, 1);
    let (shape, y) = run(&m, &[V::B(vec![false, true]), V::F(x.clone())]);
    assert_eq!(shape, vec![2, 3]);
    assert_eq!(floats(y), [vec![-100.0; 3], x[3..].to_vec()].concat());
    // An int64 initializer on one side and a run-time int64 on the other.
    let nodes = vec![node("Where", &["mask", "x", "k"], &["y"], vec![])];
    let m = load(17, vec![value("mask", BOOL, &[3]), value("x", I64, &[2, 3])], vec![i64_init("k", &[], &[9])], nodes, "y");
    let (_, y) = run(&m, &[V::B(vec![true, false, true]), V::I(vec![1, 2, 3, 4, 5, 6])]);
    assert_eq!(y, V::I(vec![1, 9, 3, 4, 9, 6]));
}

#[test]
fn a_float_initializer_exponent_stays_a_constant_as_dynamo_writes_x_squared() {
    // RMSNorm's x ** 2 with a negative x: a trainable exponent would get a NaN gradient.
    let init = vec![f32_init("two", &[], &[2.0]), f32_init("w", &[3], &[0.5, 1.0, 1.5])];
    let nodes = vec![node("Pow", &["x", "two"], &["p"], vec![]), node("Mul", &["p", "w"], &["y"], vec![])];
    let m = load(18, vec![value("x", F32, &[2, 3])], init, nodes, "y");
    let f = import(&m).unwrap();
    let role = |name: &str| f.graph.tensor(f.graph.find(name).unwrap()).role.clone();
    assert_eq!((role("two"), role("w")), (Role::Constant, Role::Parameter { trainable: true }));
    let x = values(6, 8);
    let (_, y) = run(&m, &[V::F(x.clone())]);
    assert_near("x^2 * w", &floats(y), &(0..6).map(|i| x[i] * x[i] * [0.5, 1.0, 1.5][i % 3]).collect::<Vec<_>>(), 1e-12);
}

#[test]
fn variadic_max_and_min_chain_and_pow_takes_an_integer_exponent() {
    let nodes = vec![node("Max", &["a", "b", "c"], &["m"], vec![]), node("Min", &["m", "d"], &["y"], vec![])];
    let init = vec![f32_init("c", &[3], &[0.5, -0.5, 1.5]), f32_init("d", &[2, 1], &[0.75, 1.25])];
    let m = load(17, vec![value("a", F32, &[2, 3]), value("b", F32, &[2, 1])], init, nodes, "y");
    let (a, b, c) = (values(6, 2), vec![0.25, -0.75], [0.5, -0.5, 1.5]);
    let (_, y) = run(&m, &[V::F(a.clone()), V::F(b.clone())]);
    let want: Vec<f64> = (0..6).map(|i| a[i].max(b[i / 3]).max(c[i % 3]).min([0.75, 1.25][i / 3])).collect();
    assert_near("Max/Min", &floats(y), &want, 0.0);
    // On int64 (index arithmetic) they are a comparison and a select.
    let (ai, bi) = (vec![4i64, -2, 7, 0, 9, -5], vec![1i64, 8]);
    let nodes = vec![node("Max", &["a", "b"], &["m"], vec![]), node("Min", &["m", "c"], &["y"], vec![])];
    let m = load(17, vec![value("a", I64, &[2, 3]), value("b", I64, &[2, 1])], vec![i64_init("c", &[3], &[3, 6, 5])], nodes, "y");
    let (_, y) = run(&m, &[V::I(ai.clone()), V::I(bi.clone())]);
    assert_eq!(y, V::I((0..6).map(|i| ai[i].max(bi[i / 3]).min([3, 6, 5][i % 3])).collect()));
    let m = load(17, vec![value("a", F32, &[2, 3])], vec![i64_init("e", &[], &[3])], vec![node("Pow", &["a", "e"], &["y"], vec![])], "y");
    let f = import(&m).unwrap();
    assert!(f.graph.tensors.iter().all(|t| !matches!(t.role, Role::Parameter { .. })), "an exponent is never a parameter");
    let (_, y) = run(&m, &[V::F(a.clone())]);
    assert_near("Pow int exponent", &floats(y), &a.iter().map(|x| x * x * x).collect::<Vec<_>>(), 1e-12);
}

/// erf by its Maclaurin series, accurate to about 1e-13 for |x| <= 3 (the tests stay inside).
fn erf(x: f64) -> f64 {
    let (mut term, mut sum) = (x, x);
    for n in 1..80 {
        term *= -x * x / n as f64;
        sum += term / (2 * n + 1) as f64;
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

#[test]
fn unary_functions_follow_their_onnx_definitions_and_attributes() {
    let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
    let hard_sigmoid = |a: f32, b: f32| move |x: f64| (f64::from(a) * x + f64::from(b)).clamp(0.0, 1.0);
    type U = Box<dyn Fn(f64) -> f64>;
    let cases: Vec<(&str, Vec<AttributeProto>, U)> = vec![
        ("Sigmoid", vec![], Box::new(sigmoid)),
        ("Tanh", vec![], Box::new(f64::tanh)),
        ("Erf", vec![], Box::new(erf)),
        ("Exp", vec![], Box::new(f64::exp)),
        ("Neg", vec![], Box::new(|x| -x)),
        ("Abs", vec![], Box::new(f64::abs)),
        ("Sin", vec![], Box::new(f64::sin)),
        ("Cos", vec![], Box::new(f64::cos)),
        ("Softplus", vec![], Box::new(|x: f64| (1.0 + x.exp()).ln())),
        ("Reciprocal", vec![], Box::new(|x| 1.0 / x)),
        ("LeakyRelu", vec![], Box::new(|x| if x > 0.0 { x } else { f64::from(0.01f32) * x })),
        ("LeakyRelu", vec![float("alpha", 0.25)], Box::new(|x| if x > 0.0 { x } else { 0.25 * x })),
        ("Elu", vec![], Box::new(|x: f64| if x > 0.0 { x } else { x.exp() - 1.0 })),
        ("Elu", vec![float("alpha", 0.5)], Box::new(|x: f64| if x > 0.0 { x } else { 0.5 * (x.exp() - 1.0) })),
        ("HardSigmoid", vec![], Box::new(hard_sigmoid(0.2, 0.5))),
        ("HardSigmoid", vec![float("alpha", 0.5), float("beta", 0.25)], Box::new(hard_sigmoid(0.5, 0.25))),
        ("HardSwish", vec![], Box::new(move |x| x * hard_sigmoid(1.0 / 6.0, 0.5)(x))),
        ("Relu", vec![], Box::new(|x: f64| x.max(0.0))),
        ("Identity", vec![], Box::new(|x| x)),
        ("Floor", vec![], Box::new(f64::floor)),
        ("Ceil", vec![], Box::new(f64::ceil)),
        ("Round", vec![], Box::new(f64::round_ties_even)),
        (
            "Sign",
            vec![],
            Box::new(|x: f64| {
                if x > 0.0 {
                    1.0
                } else if x < 0.0 {
                    -1.0
                } else {
                    x
                }
            }),
        ),
    ];
    // Rank 3, values in [-2, 2) plus HardSwish's kinks at -3 and 3.
    let mut x = values(24, 5);
    x[0] = -3.5;
    x[1] = 3.5;
    // A half that rounds down to the even integer (Round).
    x[2] = 2.5;
    for (op, attrs, f) in cases {
        let what = format!("{op} {attrs:?}");
        let m = load(17, vec![value("x", F32, &[2, 3, 4])], vec![], vec![node(op, &["x"], &["y"], attrs)], "y");
        let (shape, y) = run(&m, &[V::F(x.clone())]);
        assert_eq!(shape, vec![2, 3, 4], "{what}");
        assert_near(&what, &floats(y), &x.iter().map(|&v| f(v)).collect::<Vec<_>>(), 1e-12);
    }
    let positive: Vec<f64> = x.iter().map(|v| v.abs()).collect();
    for (op, f) in [("Log", f64::ln as fn(f64) -> f64), ("Sqrt", f64::sqrt)] {
        let m = load(17, vec![value("x", F32, &[2, 3, 4])], vec![], vec![node(op, &["x"], &["y"], vec![])], "y");
        let (_, y) = run(&m, &[V::F(positive.clone())]);
        assert_near(op, &floats(y), &positive.iter().map(|&v| f(v)).collect::<Vec<_>>(), 1e-12);
    }
}

#[test]
fn gelu_exact_and_tanh_expand_to_pytorchs_formulas() {
    let x = values(12, 3);
    let exact = |v: f64| 0.5 * v * (1.0 + erf(v / 2f64.sqrt()));
    let tanh = |v: f64| 0.5 * v * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v * v * v)).tanh());
    for (attrs, f, what) in
        [(vec![], &exact as &dyn Fn(f64) -> f64, "none (default)"), (vec![string("approximate", "tanh")], &tanh, "tanh")]
    {
        let m = load(20, vec![value("x", F32, &[3, 4])], vec![], vec![node("Gelu", &["x"], &["y"], attrs)], "y");
        let (_, y) = run(&m, &[V::F(x.clone())]);
        // The constants 1/sqrt(2), sqrt(2/pi) and 0.044715 are float32 in the graph.
        assert_near(&format!("Gelu {what}"), &floats(y), &x.iter().map(|&v| f(v)).collect::<Vec<_>>(), 1e-7);
    }
}

/// Reduces `x` of shape `s` over `axes` with `f` starting at `init`; returns the kept-dims shape.
fn reduce_ref(x: &[f64], s: &[usize], axes: &[usize], init: f64, f: impl Fn(f64, f64) -> f64) -> (Vec<usize>, Vec<f64>) {
    let out: Vec<usize> = s.iter().enumerate().map(|(k, &d)| if axes.contains(&k) { 1 } else { d }).collect();
    let mut y = vec![init; out.iter().product()];
    for (i, &v) in x.iter().enumerate() {
        let mut rest = i;
        let mut idx = vec![0; s.len()];
        for k in (0..s.len()).rev() {
            idx[k] = rest % s[k];
            rest /= s[k];
        }
        let j = out.iter().enumerate().fold(0, |acc, (k, &d)| acc * d + if axes.contains(&k) { 0 } else { idx[k] });
        y[j] = f(y[j], v);
    }
    (out, y)
}

#[test]
fn reductions_take_axes_as_attribute_or_input_with_keepdims_and_noop() {
    let s = [2, 3, 4];
    let x = values(24, 9);
    let sum = |axes: &[usize]| reduce_ref(&x, &s, axes, 0.0, |a, b| a + b);
    let max = |axes: &[usize]| reduce_ref(&x, &s, axes, f64::NEG_INFINITY, f64::max);
    let mean = |axes: &[usize]| {
        let n: usize = axes.iter().map(|&a| s[a]).product();
        let (shape, y) = sum(axes);
        (shape, y.into_iter().map(|v| v / n as f64).collect::<Vec<_>>())
    };
    let one = |opset: i64, op: &str, axes_input: Option<&[i64]>, attrs: Vec<AttributeProto>| {
        let (inputs, init) = match axes_input {
            Some(a) => (vec!["x", "axes"], vec![i64_init("axes", &[a.len()], a)]),
            None => (vec!["x"], vec![]),
        };
        let m = load(opset, vec![value("x", F32, &s)], init, vec![node(op, &inputs, &["y"], attrs)], "y");
        let (shape, y) = run(&m, &[V::F(x.clone())]);
        (shape, floats(y))
    };
    // ReduceMean (opset 17): axes attribute, negative and unordered, keepdims 1 and 0.
    let (shape, y) = one(17, "ReduceMean", None, vec![ints("axes", &[-1, 0])]);
    let (want_shape, want) = mean(&[0, 2]);
    assert_eq!(shape, want_shape);
    assert_near("ReduceMean axes [-1, 0]", &y, &want, 1e-12);
    let (shape, y) = one(17, "ReduceMean", None, vec![ints("axes", &[1]), int("keepdims", 0)]);
    assert_eq!(shape, vec![2, 4]);
    assert_near("ReduceMean keepdims 0", &y, &mean(&[1]).1, 1e-12);
    // No axes: everything.
    let (shape, y) = one(17, "ReduceMean", None, vec![int("keepdims", 0)]);
    assert_eq!(shape, Vec::<usize>::new());
    assert_near("ReduceMean all", &y, &mean(&[0, 1, 2]).1, 1e-12);
    // ReduceSum (axes an input since opset 13), and with no axes and noop_with_empty_axes.
    let (shape, y) = one(13, "ReduceSum", Some(&[1, 2]), vec![]);
    assert_eq!(shape, vec![2, 1, 1]);
    assert_near("ReduceSum axes input", &y, &sum(&[1, 2]).1, 1e-12);
    let (shape, y) = one(13, "ReduceSum", None, vec![int("noop_with_empty_axes", 1)]);
    assert_eq!((shape, y), (s.to_vec(), x.clone()));
    let (shape, y) = one(13, "ReduceSum", Some(&[]), vec![int("keepdims", 0)]);
    assert_eq!(shape, Vec::<usize>::new());
    assert_near("ReduceSum empty axes", &y, &sum(&[0, 1, 2]).1, 1e-12);
    // ReduceMax (opset 18: axes an input).
    let (shape, y) = one(18, "ReduceMax", Some(&[-2]), vec![int("keepdims", 0)]);
    assert_eq!(shape, vec![2, 4]);
    assert_near("ReduceMax", &y, &max(&[1]).1, 0.0);
    // ReduceMax of bools is "any".
    let m = load(
        18,
        vec![value("p", BOOL, &[2, 3])],
        vec![i64_init("axes", &[1], &[1])],
        vec![node("ReduceMax", &["p", "axes"], &["y"], vec![int("keepdims", 0)])],
        "y",
    );
    let (shape, y) = run(&m, &[V::B(vec![false, true, false, false, false, false])]);
    assert_eq!((shape, y), (vec![2], V::B(vec![true, false])));
    // The NCHW spatial mean stays GlobalAvgPool and agrees with the definition.
    let m = load(
        18,
        vec![value("x", F32, &[1, 2, 3, 4])],
        vec![i64_init("axes", &[2], &[2, 3])],
        vec![node("ReduceMean", &["x", "axes"], &["y"], vec![int("keepdims", 0)])],
        "y",
    );
    let f = import(&m).unwrap();
    assert_eq!(f.graph.nodes.iter().map(|n| n.op.name()).collect::<Vec<_>>(), ["GlobalAvgPool", "Reshape"]);
    let (shape, y) = run(&m, &[V::F(x.clone())]);
    assert_eq!(shape, vec![1, 2]);
    assert_near("spatial mean", &floats(y), &[x[..12].iter().sum::<f64>() / 12.0, x[12..].iter().sum::<f64>() / 12.0], 1e-12);
}

/// Softmax of `x` over groups along axis `axis` of `s`.
fn softmax_ref(x: &[f64], s: &[usize], axis: usize, log: bool) -> Vec<f64> {
    let inner: usize = s[axis + 1..].iter().product();
    let n = s[axis];
    let mut y = vec![0.0; x.len()];
    for outer in 0..x.len() / (n * inner) {
        for i in 0..inner {
            let at = |k: usize| outer * n * inner + k * inner + i;
            let total: f64 = (0..n).map(|k| x[at(k)].exp()).sum();
            for k in 0..n {
                y[at(k)] = if log { x[at(k)] - total.ln() } else { x[at(k)].exp() / total };
            }
        }
    }
    y
}

#[test]
fn softmax_and_log_softmax_along_one_axis_and_the_old_matrix_coercion() {
    let s = [2, 3, 4];
    let x = values(24, 4);
    for (op, log) in [("Softmax", false), ("LogSoftmax", true)] {
        for (attrs, axis) in [(vec![], 2), (vec![int("axis", 1)], 1), (vec![int("axis", -3)], 0)] {
            let m = load(13, vec![value("x", F32, &s)], vec![], vec![node(op, &["x"], &["y"], attrs)], "y");
            let (shape, y) = run(&m, &[V::F(x.clone())]);
            assert_eq!(shape, s.to_vec());
            assert_near(&format!("{op} axis {axis}"), &floats(y), &softmax_ref(&x, &s, axis, log), 1e-12);
        }
        // Before opset 13, axis 1 of [2, 3, 4] means a softmax over the 12 values of each
        // [3, 4] block (the loader takes opset 13 and later, so the model is edited after loading).
        let mut m = load(13, vec![value("x", F32, &s)], vec![], vec![node(op, &["x"], &["y"], vec![])], "y");
        m.opset = 11;
        m.opset_imports = vec![(String::new(), 11)];
        let (shape, y) = run(&m, &[V::F(x.clone())]);
        assert_eq!(shape, s.to_vec());
        assert_near(&format!("{op} opset 11"), &floats(y), &softmax_ref(&x, &[2, 12], 1, log), 1e-12);
    }
}

#[test]
fn layer_normalization_normalises_the_trailing_axes_with_scale_bias_and_statistics() {
    let s = [2, 3, 4];
    let x = values(24, 6);
    let eps = 1e-3f32;
    for (axis, with_bias) in [(-1i64, true), (1, false)] {
        let a = if axis < 0 { (3 + axis) as usize } else { axis as usize };
        let tail = &s[a..];
        let n: usize = tail.iter().product();
        let scale: Vec<f32> = (0..n).map(|i| 0.5 + i as f32 * 0.25).collect();
        let bias: Vec<f32> = (0..n).map(|i| i as f32 * -0.5).collect();
        let mut init = vec![f32_init("scale", tail, &scale)];
        let mut inputs = vec!["x", "scale"];
        if with_bias {
            init.push(f32_init("bias", tail, &bias));
            inputs.push("bias");
        }
        let attrs = vec![int("axis", axis), float("epsilon", eps)];
        let nodes = vec![node("LayerNormalization", &inputs, &["y", "mean", "inv_std"], attrs)];
        let m = load(17, vec![value("x", F32, &s)], init, nodes, "y");
        let (shape, y) = run(&m, &[V::F(x.clone())]);
        assert_eq!(shape, s.to_vec());
        let mut want = Vec::new();
        let (mut means, mut inv) = (Vec::new(), Vec::new());
        for group in x.chunks(n) {
            let mean = group.iter().sum::<f64>() / n as f64;
            let var = group.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
            let std = (var + f64::from(eps)).sqrt();
            means.push(mean);
            inv.push(1.0 / std);
            for (i, v) in group.iter().enumerate() {
                want.push((v - mean) / std * f64::from(scale[i]) + if with_bias { f64::from(bias[i]) } else { 0.0 });
            }
        }
        assert_near(&format!("LayerNormalization axis {axis}"), &floats(y), &want, 1e-12);
        // The optional outputs, read as model outputs.
        for (out, want) in [("mean", &means), ("inv_std", &inv)] {
            let mut m = m.clone();
            m.outputs[0].name = out.into();
            let (shape, y) = run(&m, &[V::F(x.clone())]);
            assert_eq!(shape, s.iter().enumerate().map(|(k, &d)| if k >= a { 1 } else { d }).collect::<Vec<_>>(), "{out}");
            assert_near(out, &floats(y), want, 1e-12);
        }
    }
}

#[test]
fn cast_converts_run_time_tensors_between_float_int64_and_bool() {
    let cast =
        |from: i32, to: i64| load(17, vec![value("x", from, &[5])], vec![], vec![node("Cast", &["x"], &["y"], vec![int("to", to)])], "y");
    let x = vec![-2.75, -0.5, 0.0, 1.5, 3.0];
    assert_eq!(run(&cast(F32, 7), &[V::F(x.clone())]).1, V::I(vec![-2, 0, 0, 1, 3]));
    assert_eq!(run(&cast(F32, 9), &[V::F(x.clone())]).1, V::B(vec![true, true, false, true, true]));
    assert_eq!(run(&cast(I64, 1), &[V::I(vec![-3, 0, 1, 2, 7])]).1, V::F(vec![-3.0, 0.0, 1.0, 2.0, 7.0]));
    assert_eq!(run(&cast(BOOL, 1), &[V::B(vec![true, false, true, true, false])]).1, V::F(vec![1.0, 0.0, 1.0, 1.0, 0.0]));
    assert_eq!(run(&cast(BOOL, 7), &[V::B(vec![true, false, true, true, false])]).1, V::I(vec![1, 0, 1, 1, 0]));
    // float64 computes in float32 and a cast to the input's own type adds no node.
    assert!(import(&cast(F32, 11)).unwrap().graph.nodes.is_empty());
    assert!(import(&cast(F32, 1)).unwrap().graph.nodes.is_empty());
    // A mask as exporters write it: Cast(bool -> float), then (1 - mask) * -10000 broadcast.
    let nodes = vec![
        node("Cast", &["mask"], &["m"], vec![int("to", 1)]),
        node("Sub", &["one", "m"], &["inv"], vec![]),
        node("Mul", &["inv", "big"], &["y"], vec![]),
    ];
    let init = vec![f32_init("one", &[], &[1.0]), f32_init("big", &[], &[-10000.0])];
    let m = load(17, vec![value("mask", BOOL, &[2, 2])], init, nodes, "y");
    assert_eq!(run(&m, &[V::B(vec![true, false, false, true])]).1, V::F(vec![0.0, -10000.0, -10000.0, 0.0]));
}

#[test]
fn cast_like_takes_the_dtype_of_its_second_input_and_folds_constants() {
    // y = x + CastLike(2.9, x) on int64: the constant becomes int64 2 at compile time.
    let nodes = vec![
        node("Constant", &[], &["c"], vec![float("value_float", 2.9)]),
        node("CastLike", &["c", "x"], &["k"], vec![]),
        node("Add", &["x", "k"], &["y"], vec![]),
    ];
    let m = load(17, vec![value("x", I64, &[3])], vec![], nodes, "y");
    assert_eq!(import(&m).unwrap().graph.nodes.len(), 1, "only the Add reaches the graph");
    assert_eq!(run(&m, &[V::I(vec![1, -5, 0])]).1, V::I(vec![3, -3, 2]));
    // A run-time float cast like a bool mask.
    let nodes = vec![node("CastLike", &["x", "mask"], &["y"], vec![])];
    let m = load(17, vec![value("x", F32, &[3]), value("mask", BOOL, &[3])], vec![], nodes, "y");
    assert_eq!(run(&m, &[V::F(vec![0.0, -1.5, 2.0]), V::B(vec![false; 3])]).1, V::B(vec![false, true, true]));
}

#[test]
fn unsupported_attribute_values_name_the_node() {
    let err = |m: OnnxModel| import(&m).map(|_| ()).unwrap_err().to_string();
    let one = |opset: i64, op: &str, attrs: Vec<AttributeProto>| {
        let init = vec![f32_init("scale", &[4], &[1.0; 4])];
        let inputs: &[&str] = if op == "LayerNormalization" { &["x", "scale"] } else { &["x"] };
        load(opset, vec![value("x", F32, &[2, 3, 4])], init, vec![node(op, inputs, &["y"], attrs)], "y")
    };
    let e = err(one(20, "Gelu", vec![string("approximate", "fast")]));
    assert!(e.contains("Gelu_y") && e.contains("approximate='fast'"), "{e}");
    let e = err(one(17, "LayerNormalization", vec![int("stash_type", 11)]));
    assert!(e.contains("LayerNormalization_y") && e.contains("stash_type 11 (float64)"), "{e}");
    let e = err(one(17, "ReduceSum", vec![int("keepdims", 1)]).tap_axes(&[1, -2]));
    assert!(e.contains("ReduceSum_y") && e.contains("name one axis twice"), "{e}");
    let e = err(one(17, "ReduceMean", vec![ints("axes", &[3])]));
    assert!(e.contains("ReduceMean_y") && e.contains("axis"), "{e}");
    let e = err(one(17, "Cast", vec![int("to", 10)]));
    assert!(e.contains("Cast_y") && e.contains("Cast to float16 is not supported"), "{e}");
    let e = err(one(17, "Cast", vec![]));
    assert!(e.contains("Cast_y") && e.contains("'to'"), "{e}");
    let e = err(one(17, "Softmax", vec![int("axis", 3)]));
    assert!(e.contains("Softmax_y"), "{e}");
    let e = err(binary_model("Pow", I64, &[2, 3], I64, &[3]));
    assert!(e.contains("Pow_y") && e.contains("base of type int64"), "{e}");
    // Operands that do not broadcast: the shape error names both shapes.
    let e = err(binary_model("Add", F32, &[2, 3], F32, &[2]));
    assert!(e.contains("Add_y") && e.contains("[2, 3] and [2]"), "{e}");
    let e = err(binary_model("Add", F32, &[2, 3], I64, &[2, 3]));
    assert!(e.contains("Add_y") && e.contains("float32 and int64"), "{e}");
}

/// Adds ReduceSum's axes input to a model built by the error test.
trait TapAxes {
    fn tap_axes(self, axes: &[i64]) -> Self;
}

impl TapAxes for OnnxModel {
    fn tap_axes(mut self, axes: &[i64]) -> Self {
        self.initializers.push(pock_compiler::onnx::Tensor {
            name: "axes".into(),
            dims: vec![axes.len()],
            values: pock_compiler::onnx::TensorValues::I64(axes.to_vec()),
        });
        self.nodes[0].inputs.push("axes".into());
        self
    }
}

/// `[batch 2, 4 tokens, 6 features] -> [2, 6]`: LayerNormalization, Gelu, Erf, a broadcast scale,
/// Softmax, Pow, Sqrt, Div, Where over a constant mask, and ReduceMean, with five parameters.
fn chain() -> OnnxModel {
    let p = |name: &str, dims: &[usize], seed: usize| {
        let n = dims.iter().product();
        f32_init(name, dims, &values(n, seed).iter().map(|v| (0.5 * v) as f32).collect::<Vec<_>>())
    };
    let init = vec![
        p("ln.scale", &[6], 1),
        p("ln.bias", &[6], 2),
        p("w", &[4, 1], 3),
        p("c", &[6], 4),
        p("v", &[1, 6], 5),
        bool_init("mask", &[4, 1], &[true, false, true, true]),
    ];
    // The scalars are Constant nodes, as the TorchScript exporter writes them: a float
    // initializer would become a trainable parameter.
    let nodes = vec![
        node("Constant", &[], &["two"], vec![float("value_float", 2.0)]),
        node("Constant", &[], &["one"], vec![float("value_float", 1.0)]),
        node("LayerNormalization", &["x", "ln.scale", "ln.bias"], &["h"], vec![int("axis", -1), float("epsilon", 1e-5)]),
        node("Gelu", &["h"], &["g"], vec![]),
        node("Mul", &["g", "w"], &["u"], vec![]),
        node("Softmax", &["u"], &["s"], vec![int("axis", -1)]),
        node("Add", &["s", "c"], &["sc"], vec![]),
        node("Pow", &["sc", "two"], &["p"], vec![]),
        node("Add", &["p", "one"], &["p1"], vec![]),
        node("Sqrt", &["p1"], &["r"], vec![]),
        node("Erf", &["h"], &["e"], vec![]),
        node("Mul", &["e", "v"], &["ev"], vec![]),
        node("Div", &["ev", "r"], &["q"], vec![]),
        node("Where", &["mask", "q", "s"], &["m"], vec![]),
        node("ReduceMean", &["m", "axes"], &["y"], vec![int("keepdims", 0)]),
    ];
    let mut init = init;
    init.push(i64_init("axes", &[1], &[1]));
    load(20, vec![value("x", F32, &[2, 4, 6])], init, nodes, "y")
}

#[test]
fn gradients_through_an_imported_chain_of_composites_match_finite_differences() {
    let forward = import(&chain()).unwrap();
    let checks = check_model(forward, 17, 8, 12, 1e-6).unwrap();
    for p in ["ln.scale", "ln.bias", "w", "c", "v"] {
        assert!(checks.iter().any(|c| c.name == p), "{p} is checked: {checks:?}");
    }
    assert_close("imported LayerNorm/Gelu/Softmax/Pow/Sqrt/Div/Where chain", &checks, 1e-6);
}

#[test]
fn the_engine_trains_the_imported_chain_like_the_f32_interpreter() {
    use pock_compiler::ir::{Program, RuntimeScalar, TensorId};
    use pock_compiler::CompileOptions;
    use pock_engine::{Session, SessionOptions, Targets};
    let options = CompileOptions { learning_rate: 0.5, ..CompileOptions::default() };
    let t = import(&chain()).unwrap().into_training(options.clone()).unwrap();
    let bytes = t.clone().into_plan().unwrap().to_bytes();
    let x: Vec<f32> = values(48, 12).iter().map(|&v| v as f32).collect();
    let y: Vec<f32> = values(12, 13).iter().map(|&v| (0.25 * v) as f32).collect();
    let mut s = Session::from_bytes(&bytes, SessionOptions { threads: 1, reference_kernels: true, ..Default::default() }).unwrap();
    let losses: Vec<f32> = (0..8).map(|_| s.train_step(&x, Targets::Values(&y)).unwrap()).collect();
    let mut it = Interpreter::<f32>::new(&t.graph);
    let lr = t.graph.tensors.iter().position(|d| d.role == pock_compiler::ir::Role::RuntimeScalar(RuntimeScalar::LearningRate));
    for (step, &loss) in losses.iter().enumerate() {
        it.set(t.train_input, x.clone());
        it.set(t.train_target, y.clone());
        if let Some(lr) = lr {
            it.set(TensorId(lr as u32), vec![options.learning_rate]);
        }
        it.run(t.graph.program_nodes(Program::Train)).unwrap();
        assert_eq!(it.get(t.train_loss).unwrap()[0].to_bits(), loss.to_bits(), "step {step}");
    }
    assert!(losses.windows(2).all(|w| w[1] < w[0]), "every step lowers the loss on this fixed batch: {losses:?}");
}
