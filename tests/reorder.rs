//! Operator reordering (issue 7): the Train program's order is chosen for the smallest arena,
//! computes exactly what the emission order computes, lets each parameter gradient die at its
//! update, and `pock compile --memory-budget` / `pock inspect` account for it.

mod common;

use common::{fails, pock, s, workdir};
use pock::compiler::accounting::{breakdown, largest_contributors, parameter_gradients, scratch_buffers};
use pock::compiler::scheme::layer_of;
use pock::compiler::{CompileOptions, UpdatePreset, UpdateScheme};
use pock::engine::plan::{OptimizerKind, Plan};
use pock::engine::{Session, SessionOptions, Targets};

fn sgd() -> CompileOptions {
    CompileOptions {
        optimizer: OptimizerKind::Sgd { momentum: 0.9, dampening: 0.0, nesterov: false, weight_decay: 1e-4 },
        learning_rate: 0.05,
        ..Default::default()
    }
}

fn adam_clipped() -> CompileOptions {
    CompileOptions {
        optimizer: OptimizerKind::AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 },
        learning_rate: 1e-3,
        clip_grad_norm: Some(0.5),
        ..Default::default()
    }
}

fn accumulated() -> CompileOptions {
    CompileOptions { accumulate: 2, ..sgd() }
}

fn plan(model: &str, batch: usize, options: CompileOptions) -> Plan {
    pock::compile_model(model, batch, 7, options).unwrap().plan
}

const CNN: &str = "zoo:cnn:channels=3,size=16,classes=4,width=8";
const MOBILENET: &str = "zoo:mobilenetv2:classes=4,size=32,width=0.25";

/// Trains `steps` batches on the plan compiled with and without reordering: the losses and every
/// checkpointed tensor (parameters, optimizer state, statistics, counters) are bit-identical.
fn same_training(model: &str, batch: usize, options: CompileOptions, steps: usize) {
    let run = |reorder: bool| {
        let compiled = pock::compile_model(model, batch, 7, CompileOptions { reorder, ..options.clone() }).unwrap();
        let mut session = Session::from_bytes(&compiled.to_bytes(), SessionOptions::default()).unwrap();
        let plan = session.plan().clone();
        let x_len: usize = plan.tensor(plan.programs.train.feeds[0]).numel();
        let classes = 4;
        let losses: Vec<u32> = (0..steps)
            .map(|step| {
                let x: Vec<f32> = (0..x_len).map(|i| (((i * 7919 + step * 131) % 1009) as f32 / 1009.0) - 0.5).collect();
                let y: Vec<i64> = (0..batch).map(|i| ((i + step) % classes) as i64).collect();
                session.train_step(&x, Targets::Labels(&y)).unwrap().to_bits()
            })
            .collect();
        let state: Vec<(String, Vec<u32>)> = plan
            .tensors
            .iter()
            .filter(|t| t.role.is_checkpointed() && t.dtype == pock::engine::plan::DType::F32)
            .map(|t| (t.name.clone(), session.read_tensor(&t.name).unwrap().iter().map(|v| v.to_bits()).collect()))
            .collect();
        (plan, losses, state)
    };
    let (ordered, losses, state) = run(true);
    let (emitted, losses_emitted, state_emitted) = run(false);
    assert_ne!(
        ordered.programs.train.nodes.iter().map(|n| &n.name).collect::<Vec<_>>(),
        emitted.programs.train.nodes.iter().map(|n| &n.name).collect::<Vec<_>>(),
        "{model}: reordering changed nothing, so this test compares nothing"
    );
    assert_eq!(losses, losses_emitted, "{model}: losses differ with reordering");
    assert!(state.len() > 3);
    assert_eq!(state.len(), state_emitted.len());
    for ((name, a), (_, b)) in state.iter().zip(&state_emitted) {
        assert!(a == b, "{model}: {name} differs with reordering");
    }
    assert!(ordered.arena_bytes <= emitted.arena_bytes, "{model}: {} > {}", ordered.arena_bytes, emitted.arena_bytes);
    assert_eq!(ordered.arena_bytes_unordered, emitted.arena_bytes, "{model}: the recorded unordered arena is the --no-reorder plan's");
    assert_eq!(emitted.arena_bytes_unordered, emitted.arena_bytes);
}

#[test]
fn reordering_keeps_losses_and_parameters_bit_exact() {
    same_training(CNN, 4, sgd(), 4);
    same_training(CNN, 4, adam_clipped(), 4);
    same_training(MOBILENET, 2, sgd(), 3);
    same_training(MOBILENET, 2, CompileOptions { accumulate: 2, ..adam_clipped() }, 4);
}

/// For each pair of parameter gradients of different layers that are live at the same node of
/// the Train program, `(layer a, layer b, node)`.
fn overlapping_gradients(plan: &Plan) -> Vec<(String, String, usize)> {
    let train = &plan.programs.train;
    let grads = parameter_gradients(plan, train);
    // A BatchNorm folded into its convolution is one op with it: the folded bias (named as the
    // BatchNorm's bias) belongs to the conv's layer.
    let layer_of_param = |name: &str| {
        let conv = plan.folded_norms.iter().find(|f| f.beta == name).map_or(name, |f| f.conv_weight.as_str());
        layer_of(conv).to_string()
    };
    let layer = |g| grads.iter().find(|(t, _)| *t == g).map(|(_, p)| layer_of_param(&plan.tensor(*p).name));
    let buffers: Vec<_> =
        scratch_buffers(plan, train).into_iter().filter_map(|b| b.tensors.iter().find_map(|&t| layer(t)).map(|l| (l, b))).collect();
    assert!(!buffers.is_empty(), "{}: no gradient buffers found", plan.model);
    let mut out = Vec::new();
    for (i, (la, a)) in buffers.iter().enumerate() {
        for (lb, b) in &buffers[..i] {
            if la != lb && a.first <= b.last && b.first <= a.last {
                out.push((la.clone(), lb.clone(), a.first.max(b.first)));
            }
        }
    }
    out
}

#[test]
fn no_two_layers_gradients_are_live_at_once() {
    let bias = CompileOptions { update: UpdateScheme { preset: Some(UpdatePreset::Bias), train: vec![], ..Default::default() }, ..sgd() };
    let adam = CompileOptions { clip_grad_norm: None, ..adam_clipped() };
    for (model, batch, options) in [
        (CNN, 4, sgd()),
        (CNN, 4, adam.clone()),
        (MOBILENET, 2, sgd()),
        (MOBILENET, 2, bias),
        (MOBILENET, 2, accumulated()),
        ("zoo:resnet18:classes=4,size=32", 1, adam),
    ] {
        let p = plan(model, batch, options.clone());
        let overlaps = overlapping_gradients(&p);
        assert!(overlaps.is_empty(), "{model} ({options:?}): {:?}", &overlaps[..overlaps.len().min(5)]);
        // Without reordering, every gradient would wait for the end of the backward pass.
        let emitted = plan(model, batch, CompileOptions { reorder: false, ..options.clone() });
        assert!(!overlapping_gradients(&emitted).is_empty(), "{model}: the emission order already frees gradients early");
        let m = breakdown(&p);
        assert!(m.gradients_held_at_once_bytes < m.gradient_bytes, "{model}: {m:?}");
    }
}

/// With clipping the global norm reads every gradient, so all are live together at that node
/// (and only because of it): the breakdown reports them all as held at once.
#[test]
fn clipping_keeps_every_gradient_alive_and_inspect_says_so() {
    for model in [CNN, MOBILENET] {
        let p = plan(model, 2, adam_clipped());
        let train = &p.programs.train;
        let scale_node = train.nodes.iter().position(|n| n.name == "optimizer.grad_scale").expect("a GradScale node");
        let grads = parameter_gradients(&p, train);
        let buffers = scratch_buffers(&p, train);
        for (g, _) in &grads {
            let b = buffers.iter().find(|b| b.tensors.contains(g)).unwrap();
            assert!(b.live_at(scale_node), "{model}: {} is not live at the global norm", p.tensor(*g).name);
        }
        let m = breakdown(&p);
        assert!(m.gradients_held_at_once_bytes >= m.gradient_bytes, "{model}: {m:?}");
        let unclipped = breakdown(&plan(model, 2, CompileOptions { clip_grad_norm: None, ..adam_clipped() }));
        assert!(unclipped.gradients_held_at_once_bytes < m.gradients_held_at_once_bytes);
        assert!(unclipped.arena_bytes < m.arena_bytes, "{model}: clipping cost nothing? {} vs {}", unclipped.arena_bytes, m.arena_bytes);
    }
}

#[test]
fn breakdown_accounts_for_every_layer() {
    let p = plan(MOBILENET, 2, sgd());
    let m = breakdown(&p);
    let per_layer = |f: fn(&pock::compiler::accounting::LayerCost) -> u64| m.layers.iter().map(f).sum::<u64>();
    assert_eq!(per_layer(|l| l.parameter_bytes), m.trainable_weight_bytes + m.frozen_weight_bytes);
    assert_eq!(per_layer(|l| l.gradient_bytes), m.gradient_bytes);
    assert_eq!(per_layer(|l| l.optimizer_state_bytes), m.optimizer_state_bytes);
    // Every saved activation is attributed to a layer, except those read before the first one.
    let attributed = per_layer(|l| l.saved_activation_bytes);
    assert!(attributed <= m.saved_activation_bytes && attributed * 10 >= m.saved_activation_bytes * 9, "{attributed} of {m:?}");
    let peak = &m.peak;
    assert_eq!(
        peak.live_bytes,
        peak.inputs
            + peak.saved_activations
            + peak.forward_values
            + peak.parameter_gradients
            + peak.backward_values
            + peak.optimizer_values
            + peak.workspace
    );
    assert_eq!(p.persistent_bytes + peak.live_bytes + peak.packing_overhead, p.arena_bytes);
}

#[test]
fn memory_budget_refusal_names_bytes_and_contributors() {
    let d = workdir("budget");
    let o = d.join("cnn.pock");
    let p = plan(CNN, 4, CompileOptions::default());
    let needed = p.arena_bytes + p.weight_bytes;
    let args = |budget: &str| -> Vec<String> {
        ["compile", CNN, "--batch", "4", "--seed", "7", "--memory-budget", budget, "-o", s(&o)].iter().map(|a| a.to_string()).collect()
    };
    let run = |budget: &str| {
        let a = args(budget);
        pock(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let e = String::from_utf8(run("64KiB").stderr).unwrap();
    assert!(e.contains(&format!("the plan needs {needed} bytes")) && e.contains("more than --memory-budget of 65536 bytes"), "{e}");
    let top = largest_contributors(&p, 5);
    assert_eq!(top.len(), 5);
    assert!(top.windows(2).all(|w| w[0].bytes >= w[1].bytes));
    for c in &top {
        assert!(e.contains(&format!("{} ({}) {} bytes", c.name, c.what, c.bytes)), "{c:?} missing from: {e}");
    }
    assert!(!o.exists());
    // One byte short is refused, exactly enough compiles; 64MiB-style suffixes parse.
    assert!(!run(&(needed - 1).to_string()).status.success());
    assert!(run(&needed.to_string()).status.success());
    assert!(run("64MiB").status.success());
    // A board's memory is the default budget.
    let e = fails(&["compile", "zoo:mobilenetv2:classes=10,size=64", "--batch", "2", "--target", "cortex-m7", "-o", s(&o)]);
    assert!(e.contains("the memory of --target cortex-m7") && e.contains("262144 bytes") && e.contains("largest contributors"), "{e}");
    let e = String::from_utf8(pock(&["compile", CNN, "--memory-budget", "12 parsecs", "-o", s(&o)]).stderr).unwrap();
    assert!(e.contains("'12 parsecs' is not a byte count such as 1048576, 512M, 64MiB or 2G"), "{e}");
}

#[test]
fn inspect_reports_the_arena_with_and_without_reordering() {
    let d = workdir("inspect-reorder");
    let (a, b) = (d.join("a.pock"), d.join("b.pock"));
    let compile = |o: &std::path::Path, extra: &[&str]| {
        let mut args = vec!["compile", CNN, "--batch", "4", "--momentum", "0.9", "-o", s(o)];
        args.extend_from_slice(extra);
        assert!(pock(&args).status.success());
    };
    compile(&a, &[]);
    compile(&b, &["--no-reorder"]);
    let json = |p: &std::path::Path| -> serde_json::Value { serde_json::from_slice(&pock(&["inspect", s(p), "--json"]).stdout).unwrap() };
    let (ja, jb) = (json(&a), json(&b));
    let (arena, unordered) = (ja["arena_bytes"].as_u64().unwrap(), ja["arena_bytes_unordered"].as_u64().unwrap());
    assert!(arena < unordered, "{ja}");
    assert_eq!(jb["arena_bytes"].as_u64().unwrap(), unordered);
    assert_eq!(jb["arena_bytes_unordered"].as_u64().unwrap(), unordered);
    let m = &ja["memory"];
    for key in
        ["trainable_weight_bytes", "optimizer_state_bytes", "saved_activation_bytes", "gradient_bytes", "gradients_held_at_once_bytes"]
    {
        assert!(m[key].as_u64().unwrap() > 0, "{key}: {m}");
    }
    // The CNN's convolutions are 3x3 with stride 1: the CPU kernels pack their gemm operands
    // straight from the tensors (forward, weight gradient, and the input gradient as a flipped
    // forward pass), so no node needs a workspace; only strided input gradients have one.
    assert_eq!(m["workspace_bytes"].as_u64(), Some(0), "{m}");
    let layers = m["layers"].as_array().unwrap();
    assert!(layers.iter().any(|l| l["name"] == "classifier" && l["trainable"] == true && l["gradient_bytes"].as_u64().unwrap() > 0), "{m}");
    let text = String::from_utf8(pock(&["inspect", s(&a)]).stdout).unwrap();
    assert!(text.contains("in emission order (--no-reorder)") && text.contains("train peak") && text.contains("classifier"), "{text}");
}
