//! The `pock` command line.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use clap::{Args, Parser, Subcommand, ValueEnum};
use pock::compiler::onnx::{DropoutMode, ExportOptions, ImportOptions, LossKind, ShapeOverrides};
use pock::compiler::stages::BatchNormMode;
use pock::compiler::CompileOptions;
use pock::data::Dataset;
use pock::engine::plan::OptimizerKind;
use pock::engine::session::BackendChoice;
use pock::engine::{Session, SessionOptions};
use pock::schedule::LrSchedule;
use pock::train::{DivergenceGuard, TrainConfig};
use pock::PockError;

#[derive(Parser)]
#[command(
    name = "pock",
    version,
    about = "Compiled on-device training: compile a model into a static training plan, then train it anywhere."
)]
#[command(
    after_help = "Typical use:\n  pock compile zoo:cnn --batch 32 --optimizer sgd --lr 0.05 --momentum 0.9 --batch-norm train -o cnn.pock\n  pock inspect cnn.pock\n  pock train cnn.pock --data train.npz --epochs 3 --save cnn.ckpt.safetensors\n  pock eval cnn.pock --weights cnn.ckpt.safetensors --data test.npz --json\n  pock demo"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Hide progress (bars, per-epoch lines, notes); results and errors are still printed.
    #[arg(long, short, global = true)]
    quiet: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Compile a model into a training plan (forward, backward and optimizer, memory planned).
    #[command(after_help = pock_models_help())]
    Compile(CompileArgs),
    /// Choose an update scheme under a memory budget by contribution analysis on calibration data, and write it as a scheme file.
    #[command(after_help = SCHEME_HELP)]
    Scheme(SchemeArgs),
    /// Show what a plan contains: memory, parameters, ops, inputs.
    Inspect {
        plan: PathBuf,
        /// Print a JSON object (fields: arena_bytes, weight_bytes, trainable_params, optimizer_state_bytes, ops, inputs, ...).
        #[arg(long)]
        json: bool,
        /// Also list every node of every program.
        #[arg(long)]
        ops: bool,
    },
    /// Train a plan on an .npz dataset (arrays x: float32 N×..., y: int64 labels or float32 targets).
    #[command(
        after_help = "The last partial batch of each epoch is dropped (training uses full batches only).\nWith --resume, epochs, shuffling and the optimizer state continue exactly where the checkpoint stopped."
    )]
    Train(TrainArgs),
    /// Evaluate a plan's model on an .npz dataset: loss, and accuracy for classifiers.
    Eval {
        #[command(flatten)]
        model: TrainedModel,
        /// Print {"loss": ..., "accuracy": ..., "samples": ...}.
        #[arg(long)]
        json: bool,
    },
    /// Run the model on the inputs of an .npz and write its outputs to an .npz (array y).
    Infer {
        #[command(flatten)]
        model: TrainedModel,
        /// Output .npz (array y, one row per input sample).
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a trained model as ONNX (the graph it was compiled from, with the trained initializers) or its weights as safetensors.
    #[command(after_help = EXPORT_HELP)]
    Export(ExportArgs),
    /// Time training steps of a plan on a synthetic batch: ms/step, steps/s, GFLOP/s, memory.
    #[command(after_help = BENCH_HELP)]
    Bench {
        plan: PathBuf,
        /// Timed steps; the median is reported.
        #[arg(long, default_value_t = 20)]
        steps: usize,
        /// Untimed steps first (caches, lazily started state).
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        /// Also time every op of the train program and print a table per op kind, slowest first.
        #[arg(long)]
        profile: bool,
        /// With --profile, also list the N slowest nodes one by one (name, op, output shape,
        /// time, GFLOP/s): which layer an op kind's time goes to.
        #[arg(long, value_name = "N", default_value_t = 0, requires = "profile")]
        slowest: usize,
        /// Read the training loss back every N steps instead of every step: the steps in between
        /// queue their losses where the backend computed them (device memory with --backend
        /// wgpu), so the host waits for the GPU once per N steps. Step times are then each
        /// window's time divided by N.
        #[arg(long, default_value_t = 1, value_name = "N")]
        loss_every: usize,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Draw a dataset in code, compile zoo:cnn, train it and report (no files needed).
    Demo {
        #[arg(long, default_value_t = 4)]
        epochs: u64,
        #[arg(long, default_value_t = 2048)]
        samples: usize,
        /// Also write the demo's datasets as DIR/train.npz and DIR/test.npz (to try `pock train` on).
        #[arg(long, value_name = "DIR")]
        save_data: Option<PathBuf>,
        #[command(flatten)]
        run: RunArgs,
    },
}

const BENCH_HELP: &str = "Example:\n  pock compile zoo:mobilenetv2:classes=10,size=128 --batch 8 --optimizer sgd --momentum 0.9 -o m.pock\n  pock bench m.pock --threads 2 --profile\n\n\
The batch is synthetic (the kernels' speed does not depend on the values); the plan's parameters do train during the run. \
GFLOP/s counts the train program's FLOPs as the compiler's cost model gives them. With --profile each op is timed (one clock \
read before and after it), which adds a little to the step time; the table's ms/step is the op kind's time per step, its % \
the share of all ops' time. On the CPU the report also gives the gemm ceiling: pock's own gemm on a 1024x1024x1024 product with the \
same threads, measured right after the timed steps; the profile's \"% ceiling\" column is each convolution's and matmul's GFLOP/s as a \
share of it.";

const EXPORT_HELP: &str = "Examples:\n  pock export r18.pock --weights r18.ckpt.safetensors --onnx r18.trained.onnx --inference\n  pock export cnn.pock --weights cnn.ckpt.safetensors --safetensors cnn.weights.safetensors\n\n\
--onnx reads the .onnx file the plan was compiled from (the path recorded in the plan, relative to where `pock compile` ran, or --model) \
and refuses a file whose length or FNV-1a 64 hash differs from the one recorded. Every initializer that training changes (parameters, \
BatchNormalization running statistics) is written with its trained values under its own name; every other initializer, node and \
attribute is written as it was. External data is copied into the output, which must stay under the 2 GiB protobuf limit (pock does \
not write external data files; use --safetensors for larger models).\n\n\
Without --inference the graph keeps its training mode (BatchNormalization training_mode=1, Dropout's training_mode input), so it can \
be trained further by pock or PyTorch. With --inference BatchNormalization uses the trained running statistics and Dropout is the \
identity: what `pock infer` computes, and what a deployed model should do.\n\n\
--safetensors writes the parameters and running statistics alone, float32, under their ONNX or zoo names (zoo plans too).\n\n\
A plan compiled with --batch-norm fold (the default) is exported in the model's original form: each folded conv weight is divided \
back by its BatchNorm's scale s = gamma / sqrt(running_var + eps) and the BatchNorm's bias is recovered from the trained conv bias, \
beta = bias - (conv bias - running_mean) * s; gamma and the running statistics are written as they were (folding kept them fixed).";

fn pock_models_help() -> String {
    format!(
        "{}\nOptimizers: sgd (--momentum, --dampening, --nesterov, --weight-decay), adam and adamw (--beta1, --beta2, --eps, --weight-decay).\n\n{}",
        pock::models::help_text(),
        targets_help()
    )
}

/// The `--target` boards, one line each, from the board table.
fn targets_help() -> String {
    let mut s = String::from("Targets (--target; memory left to pock, sustained f32 throughput and bandwidth, nominal):");
    for t in pock::targets::TARGETS {
        s += &format!(
            "\n  {:<17} {} ({}, {} cores, {}, {} GFLOP/s, {} GB/s)",
            t.name,
            t.description,
            t.isa.name(),
            t.cores,
            pock::human_bytes(t.memory_bytes),
            t.gflops,
            t.bandwidth_gbs
        );
        if let Some(g) = &t.gpu {
            let link = g.link_gbs.map_or_else(|| "unified memory".to_string(), |l| format!("{l} GB/s to the host"));
            s += &format!("\n  {:<17} GPU: {} ({} GFLOP/s, {} GB/s, {link}; --placement)", "", g.description, g.gflops, g.bandwidth_gbs);
        }
    }
    s
}

#[derive(Clone, Copy, ValueEnum)]
enum OptimizerArg {
    Sgd,
    Adam,
    Adamw,
}

#[derive(Clone, Copy, ValueEnum)]
enum LossArg {
    /// Softmax cross-entropy over [batch, classes] logits; int64 labels in `y`.
    CrossEntropy,
    /// Mean squared error; float targets of the output's shape in `y`.
    Mse,
}

#[derive(Clone, Copy, ValueEnum)]
enum PlacementArg {
    /// The cost model decides, for a --target with a GPU (gpu, jetson-orin-nano, android-arm64);
    /// a target without one gets no placement (the whole plan runs on the backend chosen at load).
    Auto,
    /// Every node on the CPU.
    Cpu,
    /// Every node with a GPU kernel on the GPU, but the --place-cpu ops; the others on the CPU.
    Gpu,
}

#[derive(Clone, Copy, ValueEnum)]
enum QuantizeArg {
    /// Float32 weights and activations.
    None,
    /// Int8 weights (per output channel) and activations (per tensor, calibrated on --calib),
    /// int32 accumulation; see ARCHITECTURE.md "Int8 training".
    Int8,
}

#[derive(Clone, Copy, ValueEnum)]
enum DropoutArg {
    /// Training-mode Dropout of an ONNX model draws a seeded mask each step (PyTorch train()).
    On,
    /// Dropout is the identity (PyTorch eval()).
    Off,
}

#[derive(Clone, Copy, ValueEnum)]
enum BatchNormArg {
    /// Running statistics fixed, and each BatchNorm after a conv folded into it: the conv weight
    /// absorbs the scale, the shift becomes a trainable conv bias named as the BatchNorm's bias
    /// (same outputs as frozen; export writes the original layers back).
    Fold,
    /// Running statistics used and kept fixed (gamma and beta still learn).
    Frozen,
    /// Batch statistics; running statistics updated (PyTorch train()).
    Train,
}

/// The model and how it trains: what `pock compile` and `pock scheme` share.
#[derive(Args)]
#[command(allow_negative_numbers = true)]
struct ModelArgs {
    /// The model: zoo:NAME, zoo:NAME:key=value,... (see the list below), or a path to an .onnx file.
    model: String,
    /// Samples per training step (shapes are static). Default 32 for zoo models; an ONNX model
    /// needs it for a dynamic batch dimension.
    #[arg(long)]
    batch: Option<usize>,
    /// ONNX only: the full shape of a data input with dynamic dimensions, as NAME=AxB (repeatable).
    #[arg(long, value_name = "NAME=AxB")]
    input_shape: Vec<String>,
    /// ONNX only: the graph output to train (default: the model's only output). An output that
    /// is a SoftmaxCrossEntropyLoss or NegativeLogLikelihoodLoss node is trained as it is.
    #[arg(long, value_name = "NAME")]
    output: Option<String>,
    /// ONNX only: the loss attached to the trained output.
    #[arg(long, value_enum, default_value = "cross-entropy")]
    loss: LossArg,
    #[arg(long, value_enum, default_value = "sgd")]
    optimizer: OptimizerArg,
    /// Default learning rate (a runtime value: `pock train --lr` overrides it without recompiling).
    #[arg(long, default_value_t = 0.01)]
    lr: f32,
    #[arg(long, default_value_t = 0.0)]
    momentum: f32,
    #[arg(long, default_value_t = 0.0)]
    dampening: f32,
    #[arg(long)]
    nesterov: bool,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f32,
    #[arg(long, default_value_t = 0.9)]
    beta1: f32,
    #[arg(long, default_value_t = 0.999)]
    beta2: f32,
    #[arg(long, default_value_t = 1e-8)]
    eps: f32,
    /// Accumulate gradients over K micro-batches before each optimizer step.
    #[arg(long, default_value_t = 1)]
    accumulate: usize,
    /// Clip gradients by their global L2 norm.
    #[arg(long)]
    clip_grad_norm: Option<f32>,
    /// How BatchNorm layers train: fold (frozen and folded into the conv before them), frozen, or
    /// train (batch statistics, as PyTorch's train()).
    #[arg(long, value_enum, default_value = "fold")]
    batch_norm: BatchNormArg,
    /// Dropout of an ONNX model exported in training mode; the masks are drawn from --seed.
    #[arg(long, value_enum, default_value = "on")]
    dropout: DropoutArg,
    /// Board the plan is for: its memory bounds the plan (unless --memory-budget is given), its
    /// ISA is recorded (the engine warns when the plan runs on another) and `pock inspect`
    /// estimates the step time on it. The boards are listed below.
    #[arg(long, default_value = "host", value_name = "BOARD")]
    target: String,
    /// Seed of the parameter initialisation (zoo models) and of the dropout masks (ONNX models).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Keep the order autodiff emits (the optimizer at the end of the step) instead of the order
    /// chosen for the smallest arena (each update right after its gradient is complete).
    /// `pock inspect` shows both arenas.
    #[arg(long)]
    no_reorder: bool,
    /// Keep ReLU/ReLU6 activations as floats for their gradients instead of 1-bit masks (the
    /// gradients are the same bit for bit; the masks only save memory). For comparisons.
    #[arg(long)]
    no_activation_masks: bool,
    /// Keep ops unfused: by default each convolution or matmul with its bias and ReLU/ReLU6 is one
    /// Conv2dBiasAct/MatMulBiasAct (neither the raw nor the biased output is written), each
    /// training-mode BatchNorm with the ReLU/ReLU6 after it is one BatchNormTrainAct, and each
    /// ReLU/ReLU6 mask gradient joins the conv input gradient before it (Conv2dGradInputMasked),
    /// which lowers the arena; results are the same bit for bit. For comparisons and debugging.
    #[arg(long)]
    no_fuse: bool,
    /// Start from these parameters and running statistics instead of --seed's (fine-tuning): a
    /// checkpoint of a plan that trained every parameter, or `pock export --safetensors` weights.
    /// Frozen parameters are stored in the plan, so they must come from here, not from --weights.
    #[arg(long, value_name = "WEIGHTS.safetensors")]
    init_weights: Option<PathBuf>,
}

#[derive(Args)]
#[command(allow_negative_numbers = true)]
struct CompileArgs {
    #[command(flatten)]
    m: ModelArgs,
    /// Output plan file. (`--output` names the ONNX graph output to train, so this flag's long
    /// form is `--plan`.)
    #[arg(short = 'o', long = "plan", value_name = "PLAN")]
    plan: PathBuf,
    /// Refuse a plan whose memory (arena and weights) exceeds this many bytes (1048576, 512M,
    /// 64MiB, 2G), naming what it needs and its largest contributors. Default: the memory of the
    /// --target board, or for host this machine's physical memory.
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    memory_budget: Option<u64>,
    /// Which parameters train: full (all), bias (every *.bias plus the classifier, the last layer),
    /// or last:K (the last K layers). A layer is the parameters sharing a name up to the last '.'
    /// (features.17.conv.2.weight and .bias), in the order the forward pass first reads them.
    /// Frozen parameters get no gradient, no optimizer state and no saved activations.
    #[arg(long, value_name = "full|bias|last:K")]
    update: Option<String>,
    /// Also train the parameters whose names match GLOB (repeatable; `*`, `?`, `[a-z]`, `[6-8]`,
    /// `[!0]`), e.g. --train 'features.1[6-8].*' --train '*.bias'. Alone, only the matches train.
    #[arg(long, value_name = "GLOB")]
    train: Vec<String>,
    /// A scheme file (TOML), combined with --update and --train as a union: `update = "bias"`,
    /// `train = ["classifier.*"]`, and [[channels]] tables that train some output channels of
    /// convolution weights: `params = "features.1[4-7].conv.0.0.weight"` (a glob) with
    /// `fraction = "1/4"` (1/8, 1/4, 1/2 or 1: the first ceil(f x C) of C channels) or
    /// `indices = [8, 9, 10, 11]` (one contiguous run). Only those rows get a gradient, an update
    /// and optimizer state; the others keep their exact values. See examples/schemes/.
    #[arg(long, value_name = "FILE")]
    scheme: Option<PathBuf>,
    /// Int8 training as the Tiny Training Engine does it: int8 weights (per output channel
    /// scale) and activations (per tensor scale and zero point, from --calib), int32
    /// accumulation, requantization between layers, f32 logits. Trained weights keep an f32
    /// master copy of their integer values; frozen ones are stored as int8. Quantizes chains of
    /// Linear layers (+ ReLU/ReLU6), such as zoo:mlp; convolutions are not quantized yet.
    #[arg(long, value_enum, default_value = "none")]
    quantize: QuantizeArg,
    /// With --quantize int8: the calibration samples (an .npz with `x`, for example the training
    /// data; whole batches of it are used).
    #[arg(long, value_name = "DATA.npz")]
    calib: Option<PathBuf>,
    /// With --quantize int8: leave out quantization-aware scaling (QAS) of the weight and bias
    /// gradients. Without it the int8 parameters barely move at a float learning rate; for
    /// comparisons only.
    #[arg(long)]
    no_qas: bool,
    /// Per-node placement on a --target with a GPU: which side runs each node, the CPU or the
    /// GPU, chosen at compile time from the target's cost model (node times on each side, the
    /// host-device copies and the waits at each switch); ops without a GPU kernel run on the
    /// CPU. `pock train --backend wgpu` then runs each node on its side; `pock inspect` shows
    /// the sides, the copies and the syncs.
    #[arg(long, value_enum, default_value = "auto")]
    placement: PlacementArg,
    /// Run every node of these ops on the CPU whatever the cost model says (comma-separated op
    /// names as `pock inspect --ops` shows them, e.g. MaxPool2d,Softmax): for tests and
    /// experiments with placement.
    #[arg(long, value_name = "OP,OP", value_delimiter = ',')]
    place_cpu: Vec<String>,
}

#[derive(Args)]
#[command(allow_negative_numbers = true)]
struct SchemeArgs {
    #[command(flatten)]
    m: ModelArgs,
    /// Calibration data (.npz, as `pock train` reads it): the gradients of its first batches
    /// measure what each parameter contributes.
    #[arg(long)]
    data: PathBuf,
    /// The memory the plan may use, arena and weights (1048576, 512M, 64MiB, 2G), as `pock
    /// compile --memory-budget` checks it.
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    memory_budget: u64,
    /// Output scheme file (TOML), for `pock compile --scheme`.
    #[arg(short = 'o', long = "out", value_name = "SCHEME.toml")]
    out: PathBuf,
    /// Calibration batches (in file order; default: up to 8, as many as the data holds).
    #[arg(long, value_name = "N")]
    calibration_batches: Option<usize>,
    /// Steps of fine-tuning the loss drop is predicted over (those `pock train` will run): a
    /// candidate's predicted drop grows with the steps until it saturates.
    #[arg(long, value_name = "STEPS", default_value_t = pock::scheme_search::DEFAULT_HORIZON)]
    horizon: u64,
    /// Threads for the calibration run's kernels (as `pock train --threads`).
    #[arg(long)]
    threads: Option<usize>,
}

const SCHEME_HELP: &str = "Example:\n  pock scheme zoo:mobilenetv2:classes=10,size=128 --batch 8 --momentum 0.9 --data calib.npz --memory-budget 48MiB -o scheme.toml\n  \
pock compile zoo:mobilenetv2:classes=10,size=128 --batch 8 --momentum 0.9 --scheme scheme.toml -o plan.pock\n\n\
Candidates: every parameter whole, and each convolution weight also at 1/8, 1/4 and 1/2 of its output channels (the first \
ceil(f x C), as --scheme files select them). Benefit: the loss drop predicted for the candidate alone over --horizon steps, on a quadratic along its mean gradient g over \
the calibration batches (computed by a full-backpropagation plan), with the spread of the batches' gradients as the curvature \
c: for SGD A^2/(2c) (1 - (1 - step c/A)^(2T)), A = |g|^2 (at first lr |g|^2 per step, then saturating; 0 where --lr would \
diverge). Cost: the memory of compiled \
plans. The choice is greedy by benefit per byte, and every step is compiled, so the written scheme fits the budget; its comment \
states the planned arena and weights. Give the same model, --batch, optimizer, --lr, BatchNorm and \
--init-weights flags to `pock compile` (the parameter names and the memory depend on them). Fine-tuning a pretrained model \
(--init-weights) is where the analysis means most: on random weights the gradients say what helps first, not what helps most.";

/// A plan, the weights to use with it, and the data to run it on (eval, infer).
#[derive(Args)]
struct TrainedModel {
    plan: PathBuf,
    /// Input data (.npz).
    #[arg(long)]
    data: PathBuf,
    /// Trained weights (a checkpoint from `pock train --save`); without it, the plan's initial weights.
    #[arg(long)]
    weights: Option<PathBuf>,
    #[command(flatten)]
    run: RunArgs,
}

impl TrainedModel {
    fn open(&self, need_targets: bool, quiet: bool) -> Result<(Session, Dataset), PockError> {
        let mut s = self.run.load(&self.plan, quiet)?;
        if let Some(w) = &self.weights {
            s.load_weights(w)?;
        }
        let d = load_data(&s, &self.data, need_targets)?;
        Ok((s, d))
    }
}

#[derive(Args, Clone)]
struct RunArgs {
    /// Threads for the fast kernels (convolutions, matrix products, BatchNorm, activations), 1 to the number of cores; default 1 (see BENCHMARKS.md "Threads").
    #[arg(long)]
    threads: Option<usize>,
    /// Refuse a plan whose arena exceeds this many bytes (1048576, 512M, 64MiB, 2G; default: the machine's physical memory).
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    memory_budget: Option<u64>,
    /// fast: gemm-based matmul and convolution (their sums are grouped per CPU, so results differ
    /// in the last bits between ISAs); reference: the portable kernels alone, slower, with the
    /// same arithmetic in the same order everywhere, so every ISA gives the same bits.
    #[arg(long, value_enum, default_value = "fast")]
    kernels: KernelsArg,
    /// cpu: the CPU kernels (--kernels, --threads); wgpu: the whole plan on the GPU through wgpu
    /// (Vulkan, Metal, DX12; on Linux without a GPU, Mesa's lavapipe from mesa-vulkan-drivers).
    /// A plan with an op that has no GPU kernel yet is refused, naming the op.
    #[arg(long, value_enum, default_value = "cpu")]
    backend: BackendArg,
}

#[derive(Clone, Copy, ValueEnum)]
enum KernelsArg {
    Fast,
    Reference,
}

#[derive(Clone, Copy, ValueEnum)]
enum BackendArg {
    Cpu,
    Wgpu,
}

impl RunArgs {
    /// The session options, saying on stderr when `--threads` is outside `1..=cores`.
    fn session_options(&self, quiet: bool) -> SessionOptions {
        let backend = match self.backend {
            BackendArg::Cpu => BackendChoice::Cpu,
            BackendArg::Wgpu => BackendChoice::Wgpu,
        };
        let mut o =
            SessionOptions { reference_kernels: matches!(self.kernels, KernelsArg::Reference), backend, ..SessionOptions::default() };
        if let Some(t) = self.threads {
            let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
            o.threads = t.clamp(1, cores);
            if o.threads != t {
                progress(quiet, format!("note: --threads {t} is outside 1..={cores} (the cores of this machine); using {}", o.threads));
            }
        }
        o
    }

    fn load(&self, plan: &Path, quiet: bool) -> Result<Session, PockError> {
        Ok(Session::load_with_budget(plan, self.session_options(quiet), self.memory_budget)?)
    }
}

/// A byte count with an optional K, M or G suffix, also written KB/KiB, MB/MiB, GB/GiB (all
/// powers of 1024, any case): `1048576`, `512M`, `64MiB`.
fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let unit_start = lower.find(|c: char| !c.is_ascii_digit() && !c.is_whitespace()).unwrap_or(lower.len());
    let shift = match lower[unit_start..].trim() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(format!("'{s}' is not a byte count such as 1048576, 512M, 64MiB or 2G")),
    };
    let n: u64 = t[..unit_start].trim().parse().map_err(|_| format!("'{s}' is not a byte count such as 1048576, 512M, 64MiB or 2G"))?;
    n.checked_mul(1 << shift).ok_or_else(|| format!("'{s}' is more bytes than fit in 64 bits"))
}

#[derive(Args)]
struct ExportArgs {
    plan: PathBuf,
    /// Trained weights (a checkpoint from `pock train --save`); without it, the plan's initial weights.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Write the ONNX graph the plan was compiled from, with the trained initializer values.
    #[arg(long, value_name = "OUT.onnx")]
    onnx: Option<PathBuf>,
    /// The .onnx file the plan was compiled from (default: the path the plan records); it must be the same file.
    #[arg(long, value_name = "SRC.onnx", requires = "onnx")]
    model: Option<PathBuf>,
    /// Write the ONNX graph for inference: BatchNormalization with its running statistics, Dropout off.
    #[arg(long, requires = "onnx")]
    inference: bool,
    /// Write the parameters and running statistics alone, as safetensors.
    #[arg(long, value_name = "OUT.safetensors")]
    safetensors: Option<PathBuf>,
}

#[derive(Args)]
#[command(allow_negative_numbers = true)]
struct TrainArgs {
    plan: PathBuf,
    /// Training data (.npz with x and y).
    #[arg(long)]
    data: PathBuf,
    /// Epochs to train; with --resume, a run stopped inside an epoch finishes it as the first of these.
    #[arg(long, default_value_t = 1)]
    epochs: u64,
    /// Learning rate, finite and > 0 (default: the checkpoint's with --resume, else the one given at compile time).
    #[arg(long)]
    lr: Option<f32>,
    /// constant | step:every=N,gamma=G | cosine[:total=N,min=LR]; add warmup=N to any (default: the checkpoint's with --resume, else constant).
    #[arg(long)]
    lr_schedule: Option<String>,
    /// Seed of the per-epoch shuffling (default: the checkpoint's with --resume, else 0).
    #[arg(long)]
    seed: Option<u64>,
    /// Continue from a checkpoint (weights, optimizer state, step counters, learning rate and schedule).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Write a checkpoint (safetensors) at the end of every epoch, on SIGINT/SIGTERM, and every --save-every steps.
    #[arg(long)]
    save: Option<PathBuf>,
    /// Also write the --save checkpoint every N micro-batches.
    #[arg(long, value_name = "N", requires = "save")]
    save_every: Option<u64>,
    /// Write one JSON object per step: step, epoch, loss, lr, ms (appended with --resume).
    #[arg(long)]
    log_json: Option<PathBuf>,
    /// Evaluate on this .npz after each epoch.
    #[arg(long)]
    eval_data: Option<PathBuf>,
    /// Stop when a loss exceeds X times the first epoch's median loss (0 turns the check off).
    #[arg(long, value_name = "X", default_value_t = 100.0)]
    max_loss_growth: f64,
    /// After training, print the process's peak resident memory (VmHWM, Linux) next to what the
    /// plan accounts for (arena and weights) and the training data held in memory.
    #[arg(long)]
    report_rss: bool,
    /// Read the training loss back every N steps instead of every step (one host-device sync
    /// per N steps with --backend wgpu, instead of three per step). Per-step logs, the
    /// divergence check and --save-every then see each window's steps when it is read; a step
    /// right after a wholly skipped one (non-finite gradient) inside a window uses an optimizer
    /// step number one higher than with N = 1.
    #[arg(long, value_name = "N", default_value_t = 1)]
    loss_every: usize,
    #[command(flatten)]
    run: RunArgs,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = e.to_string().replace('\n', " ");
            // Nothing useful can be done if stderr is gone too.
            let _ = writeln!(std::io::stderr(), "error: {msg}");
            match e {
                // The shell's convention for a run stopped by a signal.
                PockError::Interrupted { .. } => ExitCode::from(130),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PockError + '_ {
    move |source| PockError::Io { path: path.display().to_string(), source }
}

/// Prints a result on stdout, failing loudly (not panicking) when stdout cannot be written.
fn out(text: &str) -> Result<(), PockError> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|_| stdout.flush())
        .map_err(|source| PockError::Io { path: "standard output".into(), source })
}

/// Prints progress on stderr unless `--quiet`. Progress that cannot be shown is dropped rather
/// than ending the run (`eprintln!` would panic), since results and files do not depend on it.
fn progress(quiet: bool, text: impl std::fmt::Display) {
    if !quiet {
        let _ = writeln!(std::io::stderr(), "{text}");
    }
}

/// Loads an .npz and checks it against the plan, naming the file in any mismatch.
fn load_data(session: &Session, path: &Path, need_targets: bool) -> Result<Dataset, PockError> {
    let data = pock::train::load_for(session, path)?;
    pock::train::check_data(session, &data, need_targets).map_err(|e| match e {
        PockError::Data(d) => PockError::Data(d.in_file(path)),
        e => e,
    })?;
    Ok(data)
}

fn run(cli: Cli) -> Result<(), PockError> {
    let quiet = cli.quiet;
    match cli.command {
        Command::Compile(a) => compile(a, quiet),
        Command::Scheme(a) => scheme(a, quiet),
        Command::Inspect { plan, json, ops } => {
            let bytes = std::fs::read(&plan).map_err(io_err(&plan))?;
            let (p, _) =
                pock::engine::decode_plan(&bytes).map_err(|source| pock::engine::SessionError::Format { path: plan.clone(), source })?;
            let r = pock::inspect::report(&p);
            if json {
                let text =
                    serde_json::to_string_pretty(&r).map_err(|e| PockError::Io { path: "standard output".into(), source: e.into() })?;
                out(&format!("{text}\n"))
            } else {
                out(&pock::inspect::table(&p, &r, ops))
            }
        }
        Command::Train(a) => train(a, quiet),
        Command::Export(a) => export(a),
        Command::Eval { model, json } => {
            let (mut s, d) = model.open(true, quiet)?;
            let r = pock::train::evaluate(&mut s, &d)?;
            if json {
                let text = serde_json::to_string(&r).map_err(|e| PockError::Io { path: "standard output".into(), source: e.into() })?;
                out(&format!("{text}\n"))
            } else {
                match r.accuracy {
                    Some(a) => out(&format!("{} samples: loss {:.6}, accuracy {:.2}%\n", r.samples, r.loss, 100.0 * a)),
                    None => out(&format!("{} samples: loss {:.6}\n", r.samples, r.loss)),
                }
            }
        }
        Command::Infer { model, out: path } => {
            let mut inputs = vec![("plan", model.plan.as_path()), ("data", model.data.as_path())];
            if let Some(w) = &model.weights {
                inputs.push(("weights", w.as_path()));
            }
            check_outputs(&inputs, &[("--out", path.as_path())])?;
            let (mut s, d) = model.open(false, quiet)?;
            let (y, shape) = pock::train::predict(&mut s, &d)?;
            pock::data::write_predictions(&path, &y, &shape)?;
            out(&format!("wrote {} outputs of shape {} to {}\n", shape[0], pock::inspect::shape_text(&shape[1..]), path.display()))
        }
        Command::Bench { plan, steps, warmup, profile, slowest, loss_every, json, run } => {
            if loss_every == 0 {
                return Err(PockError::Usage("--loss-every must be at least 1".into()));
            }
            let options = SessionOptions { loss_every, ..run.session_options(quiet) };
            let mut s = Session::load_with_budget(&plan, options, run.memory_budget)?;
            let threads = options.threads;
            let r = pock::bench::run(&mut s, threads, &pock::bench::BenchConfig { steps, warmup, profile, slowest, loss_every })?;
            if json {
                let text =
                    serde_json::to_string_pretty(&r).map_err(|e| PockError::Io { path: "standard output".into(), source: e.into() })?;
                out(&format!("{text}\n"))
            } else {
                out(&pock::bench::table(&r))
            }
        }
        Command::Demo { epochs, samples, save_data, run } => {
            let options = run.session_options(quiet);
            let cfg = pock::demo::DemoConfig {
                epochs,
                train_samples: samples,
                threads: options.threads,
                reference_kernels: options.reference_kernels,
                ..Default::default()
            };
            if let Some(dir) = &save_data {
                std::fs::create_dir_all(dir).map_err(io_err(dir))?;
                let (train, test) = pock::demo::datasets(&cfg);
                train.save_npz(&dir.join("train.npz"))?;
                test.save_npz(&dir.join("test.npz"))?;
                out(&format!("wrote {} and {}\n", dir.join("train.npz").display(), dir.join("test.npz").display()))?;
            }
            let started = Instant::now();
            let mut stdout = std::io::stdout();
            pock::demo::run(&cfg, &mut stdout)?;
            out(&format!("demo finished in {:.1} s\n", started.elapsed().as_secs_f64()))
        }
    }
}

fn export(a: ExportArgs) -> Result<(), PockError> {
    if a.onnx.is_none() && a.safetensors.is_none() {
        return Err(PockError::Usage("nothing to export: give --onnx OUT.onnx, --safetensors OUT.safetensors, or both".into()));
    }
    let mut session = Session::load(&a.plan, SessionOptions::default())?;
    let recorded = match &session.plan().source {
        pock::engine::plan::ModelSource::Onnx { path, .. } => Some(PathBuf::from(path)),
        _ => None,
    };
    let mut inputs = vec![("plan", a.plan.as_path())];
    if let Some(w) = &a.weights {
        inputs.push(("weights", w.as_path()));
    }
    if let Some(m) = a.model.as_deref().or(recorded.as_deref()) {
        inputs.push(("source model", m));
    }
    let mut outputs = Vec::new();
    if let Some(p) = &a.onnx {
        outputs.push(("--onnx", p.as_path()));
    }
    if let Some(p) = &a.safetensors {
        outputs.push(("--safetensors", p.as_path()));
    }
    check_outputs(&inputs, &outputs)?;
    if a.onnx.is_some() {
        // Refused before anything is written: a zoo plan has no graph, and the source must be the
        // file the plan was compiled from.
        pock::export::source_model(&session, a.model.as_deref())?;
    }
    if let Some(w) = &a.weights {
        session.load_weights(w)?;
    }
    if let Some(p) = &a.onnx {
        let e = pock::export::write_onnx(&session, a.model.as_deref(), p, ExportOptions { inference: a.inference })?;
        let mut line = format!("wrote {} ({}): {} trained initializers", p.display(), pock::human_bytes(e.bytes.len() as u64), e.replaced);
        if e.inlined > 0 {
            line += &format!(", {} tensors of external data inlined", e.inlined);
        }
        if a.inference {
            line += &format!(", {} nodes switched to inference mode", e.switched);
        }
        out(&format!("{line}\n"))?;
    }
    if let Some(p) = &a.safetensors {
        let n = pock::export::write_safetensors(&session, p)?;
        out(&format!("wrote {}: {n} tensors\n", p.display()))?;
    }
    Ok(())
}

/// Checks, before any work, that every output can be written and that none of them names an
/// input (directly, through a symlink or as a hard link) or another output.
fn check_outputs(inputs: &[(&str, &Path)], outputs: &[(&str, &Path)]) -> Result<(), PockError> {
    let mut targets: Vec<(&str, &Path, PathBuf)> = Vec::new();
    for &(flag, path) in outputs {
        let target = pock::engine::atomic::check_writable(path)
            .map_err(|e| PockError::Usage(format!("cannot write {flag} {}: {e}", path.display())))?;
        for &(what, input) in inputs {
            if pock::same_file(&target, input) {
                return Err(PockError::Usage(format!(
                    "{flag} {} is the {what} file {}; writing it would destroy an input, choose another path",
                    path.display(),
                    input.display()
                )));
            }
        }
        let canonical = canonical_target(&target);
        if let Some((other, other_path, _)) = targets.iter().find(|(_, _, t)| *t == canonical) {
            return Err(PockError::Usage(format!(
                "{flag} {} and {other} {} name the same file; give each output its own path",
                path.display(),
                other_path.display()
            )));
        }
        targets.push((flag, path, canonical));
    }
    Ok(())
}

/// An output's resolved target with its directory made absolute, to compare outputs that do
/// not exist yet.
fn canonical_target(target: &Path) -> PathBuf {
    let dir = target.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    match (std::fs::canonicalize(dir), target.file_name()) {
        (Ok(d), Some(name)) => d.join(name),
        _ => target.to_path_buf(),
    }
}

/// Checks optimizer settings against their valid ranges, naming the range.
fn check_hyperparameters(a: &ModelArgs) -> Result<(), PockError> {
    let bad = |flag: &str, value: f32, range: &str| PockError::Usage(format!("{flag} {value} is out of range: it must be {range}"));
    if !(a.lr.is_finite() && a.lr > 0.0) {
        return Err(bad("--lr", a.lr, "a finite number > 0"));
    }
    if !(a.weight_decay.is_finite() && a.weight_decay >= 0.0) {
        return Err(bad("--weight-decay", a.weight_decay, "a finite number >= 0"));
    }
    match a.optimizer {
        OptimizerArg::Sgd => {
            if !(0.0..1.0).contains(&a.momentum) {
                return Err(bad("--momentum", a.momentum, "in [0, 1)"));
            }
            if !(0.0..=1.0).contains(&a.dampening) {
                return Err(bad("--dampening", a.dampening, "in [0, 1]"));
            }
            if a.nesterov && (a.momentum == 0.0 || a.dampening != 0.0) {
                return Err(PockError::Usage("--nesterov needs --momentum > 0 and --dampening 0 (as in torch.optim.SGD)".into()));
            }
        }
        OptimizerArg::Adam | OptimizerArg::Adamw => {
            if !(0.0..1.0).contains(&a.beta1) {
                return Err(bad("--beta1", a.beta1, "in [0, 1)"));
            }
            if !(0.0..1.0).contains(&a.beta2) {
                return Err(bad("--beta2", a.beta2, "in [0, 1)"));
            }
            if !(a.eps.is_finite() && a.eps > 0.0) {
                return Err(bad("--eps", a.eps, "a finite number > 0"));
            }
        }
    }
    if let Some(c) = a.clip_grad_norm {
        if !(c.is_finite() && c > 0.0) {
            return Err(bad("--clip-grad-norm", c, "a finite number > 0"));
        }
    }
    if a.accumulate == 0 {
        return Err(PockError::Usage("--accumulate 0 is out of range: it must be at least 1".into()));
    }
    Ok(())
}

/// The update scheme of `--scheme FILE`, `--update` and `--train` together (their union).
fn update_scheme(a: &CompileArgs) -> Result<pock::compiler::UpdateScheme, PockError> {
    let flags =
        pock::compiler::UpdateScheme { preset: a.update.as_deref().map(str::parse).transpose()?, train: a.train.clone(), channels: vec![] };
    let Some(path) = &a.scheme else { return Ok(flags) };
    let text = std::fs::read_to_string(path).map_err(|source| PockError::Io { path: path.display().to_string(), source })?;
    let file = pock::compiler::UpdateScheme::from_toml(&text, &path.display().to_string())?;
    Ok(file.union(flags)?)
}

impl ModelArgs {
    /// The compile options these flags give (checked), training what `update` selects.
    fn options(&self, update: pock::compiler::UpdateScheme) -> Result<CompileOptions, PockError> {
        let a = self;
        let optimizer = match a.optimizer {
            OptimizerArg::Sgd => {
                OptimizerKind::Sgd { momentum: a.momentum, dampening: a.dampening, nesterov: a.nesterov, weight_decay: a.weight_decay }
            }
            OptimizerArg::Adam => OptimizerKind::Adam { beta1: a.beta1, beta2: a.beta2, eps: a.eps, weight_decay: a.weight_decay },
            OptimizerArg::Adamw => OptimizerKind::AdamW { beta1: a.beta1, beta2: a.beta2, eps: a.eps, weight_decay: a.weight_decay },
        };
        if !matches!(a.optimizer, OptimizerArg::Sgd) && (a.momentum != 0.0 || a.nesterov || a.dampening != 0.0) {
            return Err(PockError::Usage("--momentum, --dampening and --nesterov apply to --optimizer sgd only".into()));
        }
        check_hyperparameters(a)?;
        pock::check_target(&a.target)?;
        Ok(CompileOptions {
            optimizer,
            learning_rate: a.lr,
            accumulate: a.accumulate,
            clip_grad_norm: a.clip_grad_norm,
            batch_norm: match a.batch_norm {
                BatchNormArg::Fold => BatchNormMode::Fold,
                BatchNormArg::Train => BatchNormMode::Train,
                BatchNormArg::Frozen => BatchNormMode::Frozen,
            },
            target: a.target.clone(),
            reorder: !a.no_reorder,
            activation_masks: !a.no_activation_masks,
            fuse: !a.no_fuse,
            update,
            quantize: None,
            placement: Default::default(),
        })
    }

    /// Builds the zoo model or imports the ONNX file once (with --init-weights' values): the
    /// forward graph, its source for the plan, and the importer's notes.
    fn forward(&self) -> Result<(pock::compiler::ForwardGraph, pock::engine::plan::ModelSource, Vec<String>), PockError> {
        let a = self;
        let init = a.init_weights.as_deref();
        if a.model.ends_with(".onnx") {
            let import = ImportOptions {
                shapes: ShapeOverrides::parse(a.batch, &a.input_shape)?,
                output: a.output.clone(),
                loss: match a.loss {
                    LossArg::CrossEntropy => LossKind::CrossEntropy,
                    LossArg::Mse => LossKind::Mse,
                },
                dropout: match a.dropout {
                    DropoutArg::On => DropoutMode::On,
                    DropoutArg::Off => DropoutMode::Off,
                },
                seed: a.seed,
            };
            return pock::onnx_forward(Path::new(&a.model), &import, init);
        }
        if !a.input_shape.is_empty() || a.output.is_some() || !matches!(a.loss, LossArg::CrossEntropy) {
            return Err(PockError::Usage(
                "--input-shape, --output and --loss apply to ONNX models; a zoo model's task is a key of its spec (zoo:mlp:task=regression)".into(),
            ));
        }
        let forward = pock::zoo_forward(&a.model, a.batch.unwrap_or(32), a.seed, init)?;
        Ok((forward, pock::engine::plan::ModelSource::Zoo { spec: a.model.clone() }, Vec::new()))
    }

    /// The input files these flags name.
    fn inputs(&self) -> Vec<(&str, &Path)> {
        self.init_weights.iter().map(|p| ("--init-weights", p.as_path())).collect()
    }
}

fn compile(a: CompileArgs, quiet: bool) -> Result<(), PockError> {
    let mut options = a.m.options(Default::default())?;
    let inputs: Vec<(&str, &Path)> = a.m.inputs().into_iter().chain(a.calib.iter().map(|p| ("--calib", p.as_path()))).collect();
    check_outputs(&inputs, &[("-o", a.plan.as_path())])?;
    options.update = update_scheme(&a)?;
    options.placement = pock::compiler::placement::PlacementOptions {
        mode: match a.placement {
            PlacementArg::Auto => pock::compiler::placement::PlacementMode::Auto,
            PlacementArg::Cpu => pock::compiler::placement::PlacementMode::Cpu,
            PlacementArg::Gpu => pock::compiler::placement::PlacementMode::Gpu,
        },
        force_cpu: a.place_cpu.clone(),
    };
    options.quantize = match (a.quantize, &a.calib) {
        (QuantizeArg::Int8, Some(path)) => {
            let data = pock::data::Dataset::load_npz(path)?;
            Some(pock::compiler::quantize::Int8Options { sample_shape: data.x_shape[1..].to_vec(), calibration: data.x, qas: !a.no_qas })
        }
        (QuantizeArg::Int8, None) => {
            return Err(PockError::Usage(
                "--quantize int8 needs --calib DATA.npz: samples of the model's input to calibrate the activations' int8 ranges (the training data will do)".into(),
            ))
        }
        (QuantizeArg::None, _) if a.calib.is_some() || a.no_qas => {
            return Err(PockError::Usage("--calib and --no-qas apply to --quantize int8 only".into()))
        }
        (QuantizeArg::None, _) => None,
    };
    let started = Instant::now();
    let (forward, source, notes) = a.m.forward()?;
    for note in notes {
        progress(quiet, format!("note: {note}"));
    }
    let compiled = pock::compile_forward(forward, options, source)?;
    pock::check_memory(&compiled.plan, a.memory_budget)?;
    // Folding fixes the running statistics; a model whose statistics are all still the initial
    // ones (mean 0, variance 1) has never been trained, and frozen statistics do not normalise it.
    let folds = &compiled.plan.folded_norms;
    if !folds.is_empty()
        && folds.iter().all(|f| f.running_mean.values.iter().all(|&m| m == 0.0) && f.running_var.values.iter().all(|&v| v == 1.0))
    {
        progress(
            quiet,
            format!(
                "note: {} BatchNorm layers were frozen and folded into their convolutions (--batch-norm fold, the default, for \
                 fine-tuning), but their running statistics are the initial ones; to train from scratch, compile with --batch-norm train",
                folds.len()
            ),
        );
    }
    let bytes = compiled.to_bytes();
    // Atomic, so a plan that a session has mapped is never modified in place.
    pock::engine::atomic::write_bytes(&a.plan, &bytes).map_err(io_err(&a.plan))?;
    let r = pock::inspect::report(&compiled.plan);
    progress(quiet, format!("compiled {} in {:.2} s", a.m.model, started.elapsed().as_secs_f64()));
    if let Some(p) = &compiled.plan.placement {
        let train = &compiled.plan.programs.train.nodes;
        let mut on_cpu: Vec<&str> =
            train.iter().zip(&p.train).filter(|(_, s)| **s == pock::engine::placement::Side::Cpu).map(|(n, _)| n.op.name()).collect();
        on_cpu.sort_unstable();
        on_cpu.dedup();
        let cpu = p.train.iter().filter(|s| **s == pock::engine::placement::Side::Cpu).count();
        progress(
            quiet,
            format!(
                "placement ({}): train program {} nodes on the GPU, {cpu} on the CPU{}; `pock inspect` shows the sides and the copies",
                p.mode,
                train.len() - cpu,
                if on_cpu.is_empty() { String::new() } else { format!(" ({})", on_cpu.join(", ")) }
            ),
        );
    }
    out(&format!(
        "wrote {} ({}): {} trainable parameters, arena {}, {} forward / {} backward / {} optimizer ops\n",
        a.plan.display(),
        pock::human_bytes(bytes.len() as u64),
        r.trainable_params,
        pock::human_bytes(r.arena_bytes),
        r.ops.forward,
        r.ops.backward,
        r.ops.optimizer
    ))
}

fn scheme(a: SchemeArgs, quiet: bool) -> Result<(), PockError> {
    let options = a.m.options(Default::default())?;
    let mut inputs = a.m.inputs();
    inputs.push(("calibration data", a.data.as_path()));
    check_outputs(&inputs, &[("-o", a.out.as_path())])?;
    let (forward, source, notes) = a.m.forward()?;
    for note in notes {
        progress(quiet, format!("note: {note}"));
    }
    let run = RunArgs { threads: a.threads, memory_budget: None, kernels: KernelsArg::Fast, backend: BackendArg::Cpu };
    let cfg = pock::scheme_search::SearchConfig {
        budget: a.memory_budget,
        batches: a.calibration_batches,
        session: run.session_options(quiet),
        progress: !quiet && std::io::stderr().is_terminal(),
        horizon: a.horizon,
    };
    if a.horizon == 0 {
        return Err(PockError::Usage("--horizon 0 predicts no loss drop; give the steps the plan will train for (at least 1)".into()));
    }
    let found = pock::scheme_search::search(&forward, &source, &options, &a.data, &cfg)?;
    let command: Vec<String> = std::env::args().map(|s| shell_word(&s)).collect();
    pock::engine::atomic::write_bytes(&a.out, found.toml(&command.join(" ")).as_bytes()).map_err(io_err(&a.out))?;
    progress(
        quiet,
        format!(
            "analysed {} parameters on {} calibration batches (mean loss {:.4}) and compiled {} plans in {:.1} s",
            found.candidates.len(),
            found.calibration_losses.len(),
            found.calibration_losses.iter().map(|&l| l as f64).sum::<f64>() / found.calibration_losses.len().max(1) as f64,
            found.compiles,
            found.seconds
        ),
    );
    let partial = found.chosen.iter().filter(|c| !c.whole()).count();
    out(&format!(
        "wrote {}: {} parameters ({} in part), {} trainable values, arena {} + weights {} = {} of the {} budget; predicted loss drop over {} steps {:.3e} (every parameter whole: {:.3e})\n",
        a.out.display(),
        found.chosen.len(),
        partial,
        found.trainable_params,
        pock::human_bytes(found.arena_bytes),
        pock::human_bytes(found.weight_bytes),
        pock::human_bytes(found.arena_bytes + found.weight_bytes),
        pock::human_bytes(found.budget),
        a.horizon,
        found.predicted_drop,
        found.full_drop
    ))
}

/// A command-line word as a shell would need it (for the scheme file's comment).
fn shell_word(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// What a resumed checkpoint says about the run it came from (written by `train`'s saves).
struct RunState<'m> {
    meta: &'m HashMap<String, String>,
}

impl RunState<'_> {
    fn get<T: std::str::FromStr>(&self, key: &str) -> Option<T> {
        self.meta.get(key).and_then(|v| v.parse().ok())
    }
}

fn train(a: TrainArgs, quiet: bool) -> Result<(), PockError> {
    // Every check that can fail comes before the first step: paths, flags, plan, data.
    let mut inputs = vec![("plan", a.plan.as_path()), ("data", a.data.as_path())];
    if let Some(e) = &a.eval_data {
        inputs.push(("eval data", e.as_path()));
    }
    let mut outputs = Vec::new();
    if let Some(p) = &a.save {
        outputs.push(("--save", p.as_path()));
    }
    if let Some(p) = &a.log_json {
        outputs.push(("--log-json", p.as_path()));
    }
    // Saving over the checkpoint resumed from is allowed (it is read whole first, and saves are
    // atomic), so the log is the only output that may not name it.
    let mut log_inputs = inputs.clone();
    if let Some(r) = &a.resume {
        log_inputs.push(("--resume checkpoint", r.as_path()));
        if let Some(p) = &a.log_json {
            check_outputs(&log_inputs, &[("--log-json", p.as_path())])?;
        }
    }
    check_outputs(&inputs, &outputs)?;
    if let Some(lr) = a.lr {
        if !(lr.is_finite() && lr > 0.0) {
            return Err(PockError::Usage(format!("--lr {lr} is out of range: it must be a finite number > 0")));
        }
    }
    if a.save_every == Some(0) {
        return Err(PockError::Usage("--save-every 0 is out of range: it must be at least 1".into()));
    }
    if !(a.max_loss_growth == 0.0 || (a.max_loss_growth.is_finite() && a.max_loss_growth > 1.0)) {
        return Err(PockError::Usage(format!(
            "--max-loss-growth {} is out of range: it must be a finite number > 1, or 0 to turn the check off",
            a.max_loss_growth
        )));
    }
    if let Some(spec) = &a.lr_schedule {
        LrSchedule::parse(spec)?;
    }

    if a.loss_every == 0 {
        return Err(PockError::Usage("--loss-every 0 is out of range: it must be at least 1".into()));
    }
    let options = SessionOptions { loss_every: a.loss_every, ..a.run.session_options(quiet) };
    let mut session = Session::load_with_budget(&a.plan, options, a.run.memory_budget)?;
    let resumed = match &a.resume {
        Some(r) => {
            let meta = session.resume(r)?;
            progress(
                quiet,
                format!(
                    "resumed from {} at micro-step {} (optimizer step {})",
                    r.display(),
                    session.micro_steps(),
                    session.optimizer_steps()
                ),
            );
            Some(meta)
        }
        None => None,
    };
    let state = resumed.as_ref().map(|meta| RunState { meta });
    let data = load_data(&session, &a.data, true)?;
    let eval_data = a.eval_data.as_deref().map(|p| load_data(&session, p, true)).transpose()?;

    // The learning rate, schedule and shuffling seed: the flags, else the checkpoint's, else the
    // plan's defaults.
    let from_ckpt = |key: &str| state.as_ref().and_then(|s| s.meta.get(key).cloned());
    let base_lr = match (a.lr, state.as_ref().and_then(|s| s.get::<f32>("lr_base"))) {
        (Some(lr), _) => lr,
        (None, Some(lr)) => lr,
        (None, None) => session.plan().training.learning_rate,
    };
    if !(base_lr.is_finite() && base_lr > 0.0) {
        return Err(PockError::Usage(format!("the learning rate is {base_lr} (from the checkpoint or the plan); give a finite --lr > 0")));
    }
    let schedule_spec = a.lr_schedule.clone().or_else(|| from_ckpt("lr_schedule")).unwrap_or_else(|| "constant".into());
    let schedule = LrSchedule::parse(&schedule_spec)?;
    let seed = a.seed.or_else(|| state.as_ref().and_then(|s| s.get("shuffle_seed"))).unwrap_or(0);
    let span = pock::train::run_span(&session, data.len(), a.epochs)?;
    let k = session.plan().training.accumulate.max(1) as u64;
    // A run that was stopped before its end keeps its schedule's horizon, so a cosine decay
    // continues exactly; a finished run's checkpoint starts a new horizon.
    let interrupted_before = state.as_ref().is_some_and(|s| s.get::<u64>("run_end_step").is_some_and(|end| end > session.micro_steps()));
    let schedule_end = match state.as_ref().and_then(|s| s.get::<u64>("lr_schedule_end")) {
        Some(end) if interrupted_before && a.lr_schedule.is_none() => end,
        _ => span.end_step / k,
    };
    if let Some(s) = &state {
        if let Some(spe) = s.get::<u64>("steps_per_epoch").filter(|&spe| spe != span.steps_per_epoch) {
            progress(
                quiet,
                format!(
                    "note: the checkpoint was written with {spe} steps per epoch and this data gives {}; epochs are counted from micro-step {}",
                    span.steps_per_epoch,
                    session.micro_steps()
                ),
            );
        }
        progress(quiet, format!("continuing with learning rate {base_lr}, schedule {schedule}, shuffling seed {seed}"));
    }
    let first_lr = schedule.rate(base_lr, session.optimizer_steps(), schedule_end);
    let last_lr = schedule.rate(base_lr, (span.end_step / k).saturating_sub(1), schedule_end);
    if last_lr == 0.0 || first_lr == 0.0 {
        progress(
            quiet,
            format!("warning: the schedule {schedule} reaches learning rate 0 within this run (from {first_lr} to {last_lr}); those steps change nothing"),
        );
    }
    let batch = session.batch();
    if data.len() % batch != 0 {
        progress(
            quiet,
            format!("note: {} samples per epoch are dropped ({} is not a multiple of the batch {batch})", data.len() % batch, data.len()),
        );
    }

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second signal ends the process at once, for a user who does not want to wait for
        // the step and the checkpoint.
        signal_hook::flag::register_conditional_shutdown(signal, 130, Arc::clone(&stop)).map_err(io_err(Path::new("signal handler")))?;
        signal_hook::flag::register(signal, Arc::clone(&stop)).map_err(io_err(Path::new("signal handler")))?;
    }
    let cfg = TrainConfig {
        schedule_end: Some(schedule_end),
        divergence: DivergenceGuard { growth: (a.max_loss_growth > 0.0).then_some(a.max_loss_growth), ..DivergenceGuard::default() },
        stop: Some(Arc::clone(&stop)),
        ..TrainConfig::new(a.epochs, seed, base_lr, schedule)
    };

    let mut log = match &a.log_json {
        Some(p) => {
            let mut o = std::fs::OpenOptions::new();
            if a.resume.is_some() {
                o.append(true).create(true);
            } else {
                o.write(true).create(true).truncate(true);
            }
            Some(o.open(p).map_err(io_err(p))?)
        }
        None => None,
    };
    let total = span.end_step - span.start_step;
    let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::new(total);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} steps  epoch {prefix}  {msg}  [{elapsed_precise}<{eta_precise}]")
                .expect("valid template"),
        );
        b
    });
    let spe = span.steps_per_epoch;
    let run_end_step = span.end_step;
    let save_state = |session: &Session| -> Result<Option<u64>, PockError> {
        let Some(p) = &a.save else { return Ok(None) };
        let step = session.micro_steps();
        let extra = [
            ("lr_base", base_lr.to_string()),
            ("lr_schedule", schedule_spec.clone()),
            ("lr_schedule_end", schedule_end.to_string()),
            ("shuffle_seed", seed.to_string()),
            ("epoch", (step / spe).to_string()),
            ("step_in_epoch", (step % spe).to_string()),
            ("steps_per_epoch", spe.to_string()),
            ("run_end_step", run_end_step.to_string()),
        ];
        session.save_with(p, &extra)?;
        Ok(Some(step))
    };
    let mut last_saved: Option<u64> = None;
    let save_every = a.save_every;
    let mut on_step = |session: &mut Session, r: &pock::train::StepRecord| -> Result<(), PockError> {
        if let (Some(f), Some(p)) = (log.as_mut(), a.log_json.as_ref()) {
            // One write per line, so the log only ever ends with a whole line.
            let mut line = serde_json::to_string(r).map_err(|e| PockError::Io { path: p.display().to_string(), source: e.into() })?;
            line.push('\n');
            f.write_all(line.as_bytes()).map_err(io_err(p))?;
        }
        if r.skipped > 0 {
            let line = format!("warning: step {}: {} parameter update(s) skipped because a gradient was not finite", r.step, r.skipped);
            match &bar {
                Some(b) => b.println(line),
                None => progress(quiet, line),
            }
        }
        if let Some(b) = &bar {
            b.inc(1);
            b.set_prefix(format!("{}", r.epoch + 1));
            b.set_message(format!("loss {:.4} lr {:.3e} {:.1} ms/step", r.loss, r.lr, r.ms));
        }
        // A checkpoint is only written from a finite loss, so it never replaces a good one
        // with the state of a diverging run.
        if save_every.is_some_and(|n| r.step.is_multiple_of(n)) && r.loss.is_finite() && !r.diverging {
            last_saved = save_state(session)?.or(last_saved);
        }
        Ok(())
    };
    let mut epoch_saved: Option<u64> = None;
    let on_epoch = |session: &mut Session, e: &pock::train::EpochRecord| -> Result<(), PockError> {
        let mut line = format!("epoch {}: train loss {:.4}, {:.2} ms/step", e.epoch + 1, e.mean_loss, e.ms_per_step);
        if let Some(d) = &eval_data {
            let r = pock::train::evaluate(session, d)?;
            line += &format!(", eval loss {:.4}", r.loss);
            if let Some(acc) = r.accuracy {
                line += &format!(", eval accuracy {:.2}%", 100.0 * acc);
            }
        }
        if e.mean_loss.is_finite() {
            epoch_saved = save_state(session)?.or(epoch_saved);
        }
        match &bar {
            Some(b) => b.println(line),
            None => progress(quiet, line),
        }
        Ok(())
    };
    let result = pock::train::train_epochs(&mut session, &data, &cfg, &mut on_step, on_epoch);
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    if let (Some(f), Some(p)) = (log.as_mut(), a.log_json.as_ref()) {
        f.sync_all().map_err(io_err(p))?;
    }
    let last_saved = last_saved.max(epoch_saved);
    let summary = match result {
        Ok(s) => s,
        Err(e @ PockError::Diverged { .. }) => {
            let note = match (&a.save, last_saved) {
                (Some(p), Some(step)) => format!("the last checkpoint, {} at step {step}, is from before the divergence", p.display()),
                _ => "no checkpoint was written".into(),
            };
            return Err(PockError::Stopped { error: Box::new(e), note });
        }
        Err(e) => return Err(e),
    };
    let step = session.micro_steps();
    if last_saved != Some(step) {
        save_state(&session)?;
    }
    if summary.interrupted {
        let remaining = summary.end_step.div_ceil(spe) - step / spe;
        let how = match &a.save {
            Some(p) => format!(
                "saved {} at step {step}; continue with: pock train {} --data {} --resume {} --save {} --epochs {remaining}",
                p.display(),
                a.plan.display(),
                a.data.display(),
                p.display(),
                p.display()
            ),
            None => "nothing was saved because --save was not given; pass --save FILE to make a run resumable".into(),
        };
        return Err(PockError::Interrupted { step, message: how });
    }
    if a.report_rss {
        out(&rss_report(&session, &data)?)?;
    }
    out(&format!(
        "trained {} epoch(s), {} steps, {:.2} ms/step; final epoch loss {:.4}{}{}\n",
        summary.epoch_losses.len(),
        summary.steps,
        summary.mean_ms,
        summary.epoch_losses.last().copied().unwrap_or(f64::NAN),
        match summary.skipped_updates {
            0 => String::new(),
            n => format!("; {n} parameter update(s) skipped on non-finite gradients"),
        },
        a.save.as_ref().map(|p| format!("; saved {}", p.display())).unwrap_or_default()
    ))
}

/// `--report-rss`: the peak resident set size of this process (`VmHWM` of `/proc/self/status`)
/// and the bytes the plan and the data account for, one line with exact byte counts.
fn rss_report(session: &Session, data: &Dataset) -> Result<String, PockError> {
    let unavailable = |why: String| {
        PockError::Usage(format!(
            "--report-rss: {why}; the peak resident memory is read from /proc/self/status (Linux), run without --report-rss elsewhere"
        ))
    };
    let status = std::fs::read_to_string("/proc/self/status").map_err(|e| unavailable(format!("cannot read /proc/self/status ({e})")))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| unavailable("/proc/self/status has no VmHWM line".into()))?;
    let peak = kib * 1024;
    let plan = session.plan();
    Ok(format!(
        "peak RSS {peak} bytes ({}); plan: arena {} bytes + weights {} bytes ({}); data in memory {} bytes ({})\n",
        pock::human_bytes(peak),
        plan.arena_bytes,
        plan.weight_bytes,
        pock::human_bytes(plan.arena_bytes + plan.weight_bytes),
        data_bytes(data),
        pock::human_bytes(data_bytes(data))
    ))
}

/// Bytes a dataset's values take in memory.
fn data_bytes(data: &Dataset) -> u64 {
    use pock::data::{ColumnValues, Targets};
    let targets = match &data.y {
        Some(Targets::Labels(l)) | Some(Targets::PositionLabels { data: l, .. }) => l.len() * 8,
        Some(Targets::Values { data, .. }) => data.len() * 4,
        None => 0,
    };
    let columns: usize = data
        .inputs
        .iter()
        .map(|c| match &c.values {
            ColumnValues::F32(v) => v.len() * 4,
            ColumnValues::I64(v) => v.len() * 8,
            ColumnValues::Bool(v) => v.len(),
        })
        .sum();
    (data.x.len() * 4 + targets + columns) as u64
}
