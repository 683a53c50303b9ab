//! The zoo: spec parsing, structure (parameter counts and names against torchvision), initial
//! values, and a forward evaluation of every model with the compiler's reference interpreter.

use std::collections::HashSet;

use pock_compiler::interp::Interpreter;
use pock_compiler::ir::{Graph, Phase, Program, Role, TensorId};
use pock_compiler::{ForwardGraph, Task};
use pock_models::{build, catalog, help_text, ModelError};

fn param_count(g: &Graph) -> usize {
    g.trainable_parameters().iter().map(|&t| g.tensor(t).numel()).sum()
}

fn init_of<'g>(g: &'g Graph, name: &str) -> &'g [f32] {
    let t = g.find(name).unwrap_or_else(|| panic!("no tensor '{name}'"));
    g.tensor(t).init_f32().unwrap_or_else(|| panic!("'{name}' has no initial value"))
}

fn shape_of<'g>(g: &'g Graph, name: &str) -> &'g [usize] {
    g.shape(g.find(name).unwrap_or_else(|| panic!("no tensor '{name}'")))
}

fn mean_std(v: &[f32]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

fn built(spec: &str, batch: usize) -> ForwardGraph {
    let f = build(spec, batch, 0).unwrap_or_else(|e| panic!("{spec}: {e}"));
    f.graph.validate().unwrap_or_else(|e| panic!("{spec}: {e}"));
    f
}

// ---- spec parsing ----

#[test]
fn spec_without_zoo_prefix_is_rejected_with_an_example() {
    let e = build("mlp", 1, 0).unwrap_err();
    assert!(matches!(e, ModelError::NotZoo { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("zoo:NAME") && msg.contains("mobilenetv2"), "{msg}");
}

#[test]
fn unknown_model_lists_the_known_ones() {
    let e = build("zoo:vgg16", 1, 0).unwrap_err();
    assert!(matches!(e, ModelError::UnknownModel { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("vgg16"), "{msg}");
    for m in catalog() {
        assert!(msg.contains(m.name), "{msg}");
    }
}

#[test]
fn unknown_key_lists_the_valid_ones() {
    let e = build("zoo:cnn:clases=10", 1, 0).unwrap_err();
    assert!(matches!(e, ModelError::UnknownKey { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("clases") && msg.contains("channels, size, classes, width"), "{msg}");
}

#[test]
fn bad_values_name_key_value_and_expectation() {
    for (spec, key, value, expected) in [
        ("zoo:cnn:classes=ten", "classes", "ten", "integer"),
        ("zoo:cnn:size=2", "size", "2", "in [4, 65536]"),
        ("zoo:cnn:size=100000", "size", "100000", "in [4, 65536]"),
        ("zoo:mobilenetv2:width=100", "width", "100", "up to 4"),
        ("zoo:mobilenetv2:width=0", "width", "0", "positive number"),
        ("zoo:mobilenetv2:width=-0.5", "width", "-0.5", "positive number"),
        ("zoo:mobilenetv2:width=nan", "width", "nan", "positive number"),
        ("zoo:mlp:task=ranking", "task", "ranking", "classification, regression"),
        ("zoo:mlp:classes=1", "classes", "1", "in [2, 65536]"),
        ("zoo:mlp:outputs=3", "outputs", "3", "task=regression"),
        ("zoo:mlp:task=regression,classes=3", "classes", "3", "task=classification"),
        ("zoo:resnet18:classes=-1", "classes", "-1", "integer"),
    ] {
        let e = build(spec, 1, 0).unwrap_err();
        assert!(matches!(e, ModelError::BadValue { .. }), "{spec}: {e:?}");
        let msg = e.to_string();
        assert!(msg.contains(&format!("'{key}'")) && msg.contains(&format!("'{value}'")) && msg.contains(expected), "{spec}: {msg}");
    }
}

#[test]
fn malformed_settings_are_rejected() {
    for spec in ["zoo:cnn:classes", "zoo:cnn:classes=3,classes=4"] {
        let e = build(spec, 1, 0).unwrap_err();
        assert!(matches!(e, ModelError::Malformed { .. }), "{spec}: {e:?}");
    }
    assert!(matches!(build("zoo:cnn", 0, 0).unwrap_err(), ModelError::ZeroBatch { .. }));
}

#[test]
fn settings_tolerate_spaces_and_trailing_commas() {
    let f = built("zoo:cnn: classes = 7 ,", 2);
    assert_eq!(f.task, Task::Classification { classes: 7 });
    assert_eq!(f.name, "zoo:cnn: classes = 7 ,");
}

#[test]
fn help_lists_every_model_key_and_default() {
    let text = help_text();
    for m in catalog() {
        assert!(text.contains(&format!("zoo:{}", m.name)), "{text}");
        for k in m.keys {
            assert!(text.contains(&format!("{}={}", k.key, k.default)), "{text}");
            assert!(text.contains(k.help), "{text}");
        }
    }
}

#[test]
fn every_catalog_default_builds() {
    for m in catalog() {
        let spec = format!("zoo:{}", m.name);
        let f = built(&spec, 2);
        assert_eq!(f.name, spec);
        // Setting every key to its default explicitly gives the same graph.
        let explicit = format!(
            "{spec}:{}",
            m.keys.iter().map(|k| format!("{}={}", k.key, k.default)).filter(|s| !s.starts_with("outputs=")).collect::<Vec<_>>().join(",")
        );
        let g = built(&explicit, 2);
        assert_eq!(f.graph, g.graph, "{explicit}");
    }
}

// ---- structure ----

/// Properties every zoo graph has, whatever the model.
fn check_common(f: &ForwardGraph, input_shape: &[usize], output_shape: &[usize]) {
    let g = &f.graph;
    assert_eq!(g.tensor(f.inputs[0]).name, "input");
    assert_eq!(g.tensor(f.inputs[0]).role, Role::Input);
    assert_eq!(g.shape(f.inputs[0]), input_shape);
    assert_eq!(g.shape(f.output), output_shape);
    let mut names = HashSet::new();
    for t in &g.tensors {
        assert!(names.insert(t.name.as_str()), "tensor name '{}' is used twice", t.name);
        match t.role {
            Role::Parameter { trainable } => {
                assert!(trainable, "{}", t.name);
                assert!(t.name.ends_with(".weight") || t.name.ends_with(".bias"), "{}", t.name);
            }
            Role::RunningStat => assert!(t.name.ends_with(".running_mean") || t.name.ends_with(".running_var"), "{}", t.name),
            Role::Input | Role::Transient => {}
            ref other => panic!("unexpected role {other:?} for '{}'", t.name),
        }
    }
    for n in &g.nodes {
        assert_eq!((n.phase, n.program), (Phase::Forward, Program::Train), "{}", n.name);
    }
    let node_names: HashSet<&str> = g.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(node_names.len(), g.nodes.len(), "node names are unique");
}

fn count_op(g: &Graph, op: &str) -> usize {
    g.nodes.iter().filter(|n| n.op.name() == op).count()
}

#[test]
fn mobilenetv2_matches_torchvision() {
    let f = built("zoo:mobilenetv2", 2);
    check_common(&f, &[2, 3, 224, 224], &[2, 1000]);
    let g = &f.graph;
    assert_eq!(param_count(g), 3_504_872);
    assert_eq!(count_op(g, "Conv2d"), 52);
    assert_eq!(count_op(g, "BatchNormTrain"), 52);
    assert_eq!(count_op(g, "Clip"), 35);
    // Residual adds: blocks 3, 5, 6, 8, 9, 10, 12, 13, 15, 16.
    assert_eq!(count_op(g, "AddSameShape"), 10);
    for (name, shape) in [
        ("features.0.0.weight", &[32, 3, 3, 3][..]),
        ("features.0.1.weight", &[32]),
        ("features.0.1.running_var", &[32]),
        ("features.1.conv.0.0.weight", &[32, 1, 3, 3]),
        ("features.1.conv.1.weight", &[16, 32, 1, 1]),
        ("features.1.conv.2.bias", &[16]),
        ("features.2.conv.0.0.weight", &[96, 16, 1, 1]),
        ("features.2.conv.1.0.weight", &[96, 1, 3, 3]),
        ("features.2.conv.2.weight", &[24, 96, 1, 1]),
        ("features.2.conv.3.running_mean", &[24]),
        ("features.17.conv.2.weight", &[320, 960, 1, 1]),
        ("features.18.0.weight", &[1280, 320, 1, 1]),
        ("features.18.1.bias", &[1280]),
        ("classifier.1.weight", &[1000, 1280]),
        ("classifier.1.bias", &[1000]),
    ] {
        assert_eq!(shape_of(g, name), shape, "{name}");
    }
    assert!(g.find("features.19.0.weight").is_none());
    assert!(g.find("classifier.0.weight").is_none());
    // The depthwise convolution has one group per channel.
    let dw = g.nodes.iter().find(|n| n.name == "features.2.conv.1.0").unwrap();
    assert!(
        matches!(dw.op, pock_engine::ops::Op::Conv(pock_engine::ops::ConvOp::Conv2d(c)) if c.groups == 96 && c.stride == [2, 2] && c.padding == [1; 4])
    );
    assert_eq!(shape_of(g, "features.18.2"), &[2, 1280, 7, 7]);
}

#[test]
fn mobilenetv2_width_multiplier_rounds_like_torchvision() {
    // width 0.25: stem 8, stages 8, 8, 8, 16, 24, 40, 80; head stays 1280.
    let f = built("zoo:mobilenetv2:width=0.25,size=32,classes=10", 2);
    check_common(&f, &[2, 3, 32, 32], &[2, 10]);
    let g = &f.graph;
    assert_eq!(shape_of(g, "features.0.0.weight"), &[8, 3, 3, 3]);
    assert_eq!(shape_of(g, "features.1.conv.1.weight"), &[8, 8, 1, 1]);
    assert_eq!(shape_of(g, "features.2.conv.2.weight"), &[8, 48, 1, 1]);
    assert_eq!(shape_of(g, "features.7.conv.2.weight"), &[16, 48, 1, 1]);
    assert_eq!(shape_of(g, "features.17.conv.2.weight"), &[80, 240, 1, 1]);
    assert_eq!(shape_of(g, "features.18.0.weight"), &[1280, 80, 1, 1]);
    assert_eq!(shape_of(g, "features.18.2"), &[2, 1280, 1, 1]);
    // At width 0.25 the stem (32 -> 8) and the first block (16 -> 8) have the same channels, so
    // the stride-1 first block gains the residual connection it lacks at width 1.0.
    assert!(g.find("features.1.add").is_some());
    assert!(built("zoo:mobilenetv2:size=32", 1).graph.find("features.1.add").is_none());
    assert!(g.find("features.4.add").is_none(), "stride-2 blocks never add");
    // width 1.4 widens the head: 1280 * 1.4 = 1792.
    let wide = built("zoo:mobilenetv2:width=1.4,size=32", 1);
    assert_eq!(shape_of(&wide.graph, "features.18.0.weight"), &[1792, 448, 1, 1]);
    assert_eq!(shape_of(&wide.graph, "features.0.0.weight"), &[48, 3, 3, 3]);
}

#[test]
fn resnet18_matches_torchvision() {
    let f = built("zoo:resnet18", 2);
    check_common(&f, &[2, 3, 224, 224], &[2, 1000]);
    let g = &f.graph;
    assert_eq!(param_count(g), 11_689_512);
    assert_eq!(count_op(g, "Conv2d"), 20);
    assert_eq!(count_op(g, "BatchNormTrain"), 20);
    assert_eq!(count_op(g, "AddSameShape"), 8);
    for (name, shape) in [
        ("conv1.weight", &[64, 3, 7, 7][..]),
        ("bn1.weight", &[64]),
        ("bn1.running_mean", &[64]),
        ("layer1.0.conv1.weight", &[64, 64, 3, 3]),
        ("layer1.1.bn2.bias", &[64]),
        ("layer2.0.conv1.weight", &[128, 64, 3, 3]),
        ("layer2.0.downsample.0.weight", &[128, 64, 1, 1]),
        ("layer2.0.downsample.1.running_var", &[128]),
        ("layer4.1.conv2.weight", &[512, 512, 3, 3]),
        ("fc.weight", &[1000, 512]),
        ("fc.bias", &[1000]),
        ("maxpool", &[2, 64, 56, 56]),
        ("layer4.1.relu_1", &[2, 512, 7, 7]),
    ] {
        assert_eq!(shape_of(g, name), shape, "{name}");
    }
    assert!(g.find("layer1.0.downsample.0.weight").is_none());
    assert!(g.find("conv1.bias").is_none(), "torchvision convs have no bias");
}

#[test]
fn resnet18_options() {
    let f = built("zoo:resnet18:classes=10,size=32,channels=1", 3);
    check_common(&f, &[3, 1, 32, 32], &[3, 10]);
    assert_eq!(shape_of(&f.graph, "conv1.weight"), &[64, 1, 7, 7]);
    assert_eq!(shape_of(&f.graph, "layer4.1.relu_1"), &[3, 512, 1, 1]);
}

#[test]
fn mlp_structure_and_tasks() {
    let f = built("zoo:mlp", 8);
    check_common(&f, &[8, 2], &[8, 2]);
    assert_eq!(f.task, Task::Classification { classes: 2 });
    assert_eq!(param_count(&f.graph), 2 * 64 + 64 + 64 * 64 + 64 + 64 * 2 + 2);
    for (name, shape) in
        [("layers.0.weight", &[64, 2][..]), ("layers.2.weight", &[64, 64]), ("layers.4.weight", &[2, 64]), ("layers.4.bias", &[2])]
    {
        assert_eq!(shape_of(&f.graph, name), shape, "{name}");
    }
    assert_eq!(f.graph.nodes.iter().find(|n| n.name == "layers.1").unwrap().op.name(), "Relu");

    let r = built("zoo:mlp:task=regression,inputs=5,outputs=3,depth=0", 4);
    check_common(&r, &[4, 5], &[4, 3]);
    assert_eq!(r.task, Task::Regression);
    assert_eq!(param_count(&r.graph), 5 * 3 + 3);
    assert_eq!(shape_of(&r.graph, "layers.0.weight"), &[3, 5]);
}

#[test]
fn cnn_structure() {
    let f = built("zoo:cnn", 32);
    check_common(&f, &[32, 1, 28, 28], &[32, 4]);
    let g = &f.graph;
    assert_eq!(param_count(g), 144 + 32 + 16 * 32 * 9 + 64 + 32 * 64 * 9 + 128 + 64 * 4 + 4);
    for (name, shape) in [
        ("features.0.weight", &[16, 1, 3, 3][..]),
        ("features.1.running_mean", &[16]),
        ("features.4.weight", &[32, 16, 3, 3]),
        ("features.8.weight", &[64, 32, 3, 3]),
        ("features.9.bias", &[64]),
        ("features.3", &[32, 16, 14, 14]),
        ("features.7", &[32, 32, 7, 7]),
        ("features.10", &[32, 64, 7, 7]),
        ("classifier.weight", &[4, 64]),
    ] {
        assert_eq!(shape_of(g, name), shape, "{name}");
    }
    let f = built("zoo:cnn:channels=3,size=4,classes=10,width=2", 1);
    check_common(&f, &[1, 3, 4, 4], &[1, 10]);
}

// ---- initial values ----

#[test]
fn init_is_deterministic_per_seed() {
    for spec in ["zoo:mlp", "zoo:cnn", "zoo:mobilenetv2:width=0.25,size=32", "zoo:resnet18:size=32"] {
        let a = build(spec, 2, 7).unwrap().graph;
        let b = build(spec, 2, 7).unwrap().graph;
        let c = build(spec, 2, 8).unwrap().graph;
        assert_eq!(a, b, "{spec}");
        let differs = a.trainable_parameters().iter().filter(|&&t| a.tensor(t).init != c.tensor(t).init).count();
        // Only BatchNorm's constant 1/0 and torchvision's zero biases may coincide.
        let random =
            a.trainable_parameters().iter().filter(|&&t| a.tensor(t).init_f32().unwrap().iter().any(|&v| v != 0.0 && v != 1.0)).count();
        assert!(random > 0 && differs == random, "{spec}: {differs} of {random} random parameters differ between seeds");
    }
}

#[test]
fn a_parameter_init_does_not_depend_on_the_rest_of_the_model() {
    let a = build("zoo:resnet18:size=32,classes=10", 1, 3).unwrap().graph;
    let b = build("zoo:resnet18:size=32,classes=1000", 1, 3).unwrap().graph;
    assert_eq!(init_of(&a, "layer3.1.conv2.weight"), init_of(&b, "layer3.1.conv2.weight"));
    assert_ne!(init_of(&a, "layer3.1.conv2.weight"), init_of(&a, "layer3.0.conv2.weight"));
}

#[test]
fn init_follows_pytorch_and_torchvision() {
    let r = build("zoo:resnet18:size=32", 1, 0).unwrap().graph;
    // kaiming_normal_(fan_out, relu): std = sqrt(2 / (64 * 7 * 7)).
    let (m, s) = mean_std(init_of(&r, "conv1.weight"));
    let want = (2.0f64 / (64.0 * 49.0)).sqrt();
    assert!(m.abs() < 0.05 * want && (s / want - 1.0).abs() < 0.05, "conv1: mean {m}, std {s}, want std {want}");
    let (_, s) = mean_std(init_of(&r, "layer4.0.conv2.weight"));
    let want = (2.0f64 / (512.0 * 9.0)).sqrt();
    assert!((s / want - 1.0).abs() < 0.02, "layer4.0.conv2: std {s}, want {want}");
    // fc: nn.Linear default, U(-1/sqrt(512), 1/sqrt(512)) for weight and bias.
    let bound = 1.0 / 512f32.sqrt();
    for name in ["fc.weight", "fc.bias"] {
        let v = init_of(&r, name);
        assert!(v.iter().all(|x| x.abs() <= bound), "{name}");
        assert!(v.iter().any(|x| x.abs() > 0.9 * bound), "{name} spans its range");
    }
    assert!(init_of(&r, "bn1.weight").iter().all(|&v| v == 1.0));
    assert!(init_of(&r, "bn1.bias").iter().all(|&v| v == 0.0));
    assert!(init_of(&r, "bn1.running_mean").iter().all(|&v| v == 0.0));
    assert!(init_of(&r, "bn1.running_var").iter().all(|&v| v == 1.0));

    let m = build("zoo:mobilenetv2", 1, 0).unwrap().graph;
    let (mean, s) = mean_std(init_of(&m, "classifier.1.weight"));
    assert!(mean.abs() < 1e-3 && (s / 0.01 - 1.0).abs() < 0.01, "classifier.1: mean {mean}, std {s}");
    assert!(init_of(&m, "classifier.1.bias").iter().all(|&v| v == 0.0));
    // Depthwise: fan_out = out_channels * 3 * 3 (PyTorch does not divide by groups).
    let (_, s) = mean_std(init_of(&m, "features.2.conv.1.0.weight"));
    let want = (2.0f64 / (96.0 * 9.0)).sqrt();
    assert!((s / want - 1.0).abs() < 0.1, "depthwise: std {s}, want {want}");

    // mlp: PyTorch defaults, bound 1/sqrt(fan_in) for weight and bias.
    let p = build("zoo:mlp:inputs=16", 1, 0).unwrap().graph;
    for name in ["layers.0.weight", "layers.0.bias"] {
        let v = init_of(&p, name);
        assert!(v.iter().all(|x| x.abs() <= 0.25) && v.iter().any(|x| x.abs() > 0.2), "{name}");
    }
    let v = init_of(&p, "layers.2.weight");
    assert!(v.iter().all(|x| x.abs() <= 0.125) && v.iter().any(|x| x.abs() > 0.12));
    let (m, s) = mean_std(v);
    let want = 0.125 / 3f64.sqrt();
    assert!(m.abs() < 0.01 && (s / want - 1.0).abs() < 0.05, "uniform: mean {m}, std {s}, want {want}");
}

// ---- evaluation ----

/// Runs the forward nodes in f64 on a seeded input; returns the interpreter for inspection.
fn run_forward(f: &ForwardGraph) -> Interpreter<'_> {
    let mut it = Interpreter::new(&f.graph);
    let n = f.graph.tensor(f.inputs[0]).numel();
    let x: Vec<f64> = (0..n).map(|i| ((i * 7919) % 1000) as f64 / 500.0 - 1.0).collect();
    it.set(f.inputs[0], x);
    it.run(f.graph.program_nodes(Program::Train)).unwrap_or_else(|e| panic!("{}: {e}", f.name));
    it
}

#[test]
fn every_model_evaluates_to_finite_logits() {
    for spec in ["zoo:mlp:inputs=3", "zoo:cnn", "zoo:mobilenetv2:width=0.25,size=32,classes=10", "zoo:resnet18:size=32,classes=10"] {
        let f = built(spec, 2);
        let it = run_forward(&f);
        let y = it.get(f.output).unwrap();
        assert_eq!(y.len(), f.graph.tensor(f.output).numel());
        assert!(y.iter().all(|v| v.is_finite()), "{spec}: {y:?}");
        assert!(y.iter().any(|&v| v != 0.0), "{spec}: all-zero logits");
        // The two samples differ, so their logits do.
        let k = y.len() / 2;
        assert_ne!(y[..k], y[k..], "{spec}");
    }
}

#[test]
fn batch_norm_updates_running_statistics_in_place() {
    let f = built("zoo:cnn", 4);
    let it = run_forward(&f);
    let mean: TensorId = f.graph.find("features.1.running_mean").unwrap();
    let var: TensorId = f.graph.find("features.1.running_var").unwrap();
    assert!(it.get(mean).unwrap().iter().any(|&v| v != 0.0));
    assert!(it.get(var).unwrap().iter().any(|&v| v != 1.0));
}

#[test]
fn mlp_computes_linear_relu_linear() {
    let f = built("zoo:mlp:inputs=3,hidden=4,depth=1,classes=2", 2);
    let it = run_forward(&f);
    let g = &f.graph;
    let (w0, b0, w2, b2) =
        (init_of(g, "layers.0.weight"), init_of(g, "layers.0.bias"), init_of(g, "layers.2.weight"), init_of(g, "layers.2.bias"));
    let x = it.get(f.inputs[0]).unwrap().to_vec();
    let y = it.get(f.output).unwrap();
    for s in 0..2 {
        let h: Vec<f64> =
            (0..4).map(|j| (b0[j] as f64 + (0..3).map(|i| w0[j * 3 + i] as f64 * x[s * 3 + i]).sum::<f64>()).max(0.0)).collect();
        for o in 0..2 {
            let want = b2[o] as f64 + (0..4).map(|j| w2[o * 4 + j] as f64 * h[j]).sum::<f64>();
            assert!((y[s * 2 + o] - want).abs() < 1e-9, "sample {s} output {o}: {} vs {want}", y[s * 2 + o]);
        }
    }
}
