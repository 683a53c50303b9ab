//! The `pock` command line.

use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Parser, Subcommand, ValueEnum};
use pock::compiler::stages::BatchNormMode;
use pock::compiler::CompileOptions;
use pock::data::Dataset;
use pock::engine::plan::OptimizerKind;
use pock::engine::{Session, SessionOptions};
use pock::schedule::LrSchedule;
use pock::train::TrainConfig;
use pock::PockError;

#[derive(Parser)]
#[command(
    name = "pock",
    version,
    about = "Compiled on-device training: compile a model into a static training plan, then train it anywhere."
)]
#[command(
    after_help = "Typical use:\n  pock compile zoo:cnn --batch 32 --optimizer sgd --lr 0.05 --momentum 0.9 -o cnn.pock\n  pock inspect cnn.pock\n  pock train cnn.pock --data train.npz --epochs 3 --save cnn.ckpt.safetensors\n  pock eval cnn.pock --weights cnn.ckpt.safetensors --data test.npz --json\n  pock demo"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Compile a model into a training plan (forward, backward and optimizer, memory planned).
    #[command(after_help = pock_models_help())]
    Compile(CompileArgs),
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

fn pock_models_help() -> String {
    format!("{}\nOptimizers: sgd (--momentum, --dampening, --nesterov, --weight-decay), adam and adamw (--beta1, --beta2, --eps, --weight-decay).", pock::models::help_text())
}

#[derive(Clone, Copy, ValueEnum)]
enum OptimizerArg {
    Sgd,
    Adam,
    Adamw,
}

#[derive(Clone, Copy, ValueEnum)]
enum BatchNormArg {
    /// Batch statistics; running statistics updated (PyTorch train()).
    Train,
    /// Running statistics used and kept fixed (gamma and beta still learn).
    Frozen,
}

#[derive(Args)]
struct CompileArgs {
    /// The model: zoo:NAME or zoo:NAME:key=value,... (see the list below).
    model: String,
    /// Output plan file.
    #[arg(short, long)]
    output: PathBuf,
    /// Samples per training step (shapes are static).
    #[arg(long, default_value_t = 32)]
    batch: usize,
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
    #[arg(long, value_enum, default_value = "train")]
    batch_norm: BatchNormArg,
    /// Board the plan is for (host, rpi4, rpi5, jetson-nano, cortex-m7).
    #[arg(long, default_value = "host")]
    target: String,
    /// Seed of the parameter initialisation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Keep the optimizer at the end of the step instead of right after each gradient.
    #[arg(long)]
    no_reorder: bool,
}

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
    fn open(&self, need_targets: bool) -> Result<(Session, Dataset), PockError> {
        let mut s = Session::load(&self.plan, self.run.session_options())?;
        if let Some(w) = &self.weights {
            s.load_weights(w)?;
        }
        let d = load_data(&s, &self.data, need_targets)?;
        Ok((s, d))
    }
}

#[derive(Args, Clone)]
struct RunArgs {
    /// Threads for the matrix products (default 1: only gemm runs in parallel so far, which did not pay off on 2 cores).
    #[arg(long)]
    threads: Option<usize>,
}

impl RunArgs {
    fn session_options(&self) -> SessionOptions {
        let mut o = SessionOptions::default();
        if let Some(t) = self.threads {
            o.threads = t.max(1);
        }
        o
    }
}

#[derive(Args)]
struct TrainArgs {
    plan: PathBuf,
    /// Training data (.npz with x and y).
    #[arg(long)]
    data: PathBuf,
    #[arg(long, default_value_t = 1)]
    epochs: u64,
    /// Learning rate (default: the one given at compile time).
    #[arg(long)]
    lr: Option<f32>,
    /// constant | step:every=N,gamma=G | cosine[:total=N,min=LR]; add warmup=N to any.
    #[arg(long, default_value = "constant")]
    lr_schedule: String,
    /// Seed of the per-epoch shuffling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Continue from a checkpoint (weights, optimizer state, step counters).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Write a checkpoint (safetensors) at the end.
    #[arg(long)]
    save: Option<PathBuf>,
    /// Write one JSON object per step: step, epoch, loss, lr, ms.
    #[arg(long)]
    log_json: Option<PathBuf>,
    /// Evaluate on this .npz after each epoch.
    #[arg(long)]
    eval_data: Option<PathBuf>,
    /// No progress bar or per-epoch lines.
    #[arg(long, short)]
    quiet: bool,
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
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PockError + '_ {
    move |source| PockError::Io { path: path.display().to_string(), source }
}

/// Loads an .npz and checks it against the plan, naming the file in any mismatch.
fn load_data(session: &Session, path: &Path, need_targets: bool) -> Result<Dataset, PockError> {
    let data = Dataset::load_npz(path)?;
    pock::train::check_data(session, &data, need_targets).map_err(|e| match e {
        PockError::Data(d) => PockError::Data(d.in_file(path)),
        e => e,
    })?;
    Ok(data)
}

fn run(cli: Cli) -> Result<(), PockError> {
    match cli.command {
        Command::Compile(a) => compile(a),
        Command::Inspect { plan, json, ops } => {
            let bytes = std::fs::read(&plan).map_err(io_err(&plan))?;
            let (p, _) =
                pock::engine::decode_plan(&bytes).map_err(|source| pock::engine::SessionError::Format { path: plan.clone(), source })?;
            let r = pock::inspect::report(&p);
            if json {
                println!("{}", serde_json::to_string_pretty(&r).expect("report serialises"));
            } else {
                print!("{}", pock::inspect::table(&p, &r, ops));
            }
            Ok(())
        }
        Command::Train(a) => train(a),
        Command::Eval { model, json } => {
            let (mut s, d) = model.open(true)?;
            let r = pock::train::evaluate(&mut s, &d)?;
            if json {
                println!("{}", serde_json::to_string(&r).expect("report serialises"));
            } else {
                match r.accuracy {
                    Some(a) => println!("{} samples: loss {:.6}, accuracy {:.2}%", r.samples, r.loss, 100.0 * a),
                    None => println!("{} samples: loss {:.6}", r.samples, r.loss),
                }
            }
            Ok(())
        }
        Command::Infer { model, out } => {
            let (mut s, d) = model.open(false)?;
            let (y, shape) = pock::train::predict(&mut s, &d)?;
            pock::data::write_predictions(&out, &y, &shape)?;
            eprintln!("wrote {} outputs of shape {:?} to {}", shape[0], &shape[1..], out.display());
            Ok(())
        }
        Command::Demo { epochs, samples, save_data, run } => {
            let cfg =
                pock::demo::DemoConfig { epochs, train_samples: samples, threads: run.session_options().threads, ..Default::default() };
            if let Some(dir) = &save_data {
                std::fs::create_dir_all(dir).map_err(io_err(dir))?;
                let (train, test) = pock::demo::datasets(&cfg);
                train.save_npz(&dir.join("train.npz"))?;
                test.save_npz(&dir.join("test.npz"))?;
                println!("wrote {} and {}", dir.join("train.npz").display(), dir.join("test.npz").display());
            }
            let started = Instant::now();
            let mut stdout = std::io::stdout();
            pock::demo::run(&cfg, &mut stdout)?;
            println!("demo finished in {:.1} s", started.elapsed().as_secs_f64());
            Ok(())
        }
    }
}

fn compile(a: CompileArgs) -> Result<(), PockError> {
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
    let options = CompileOptions {
        optimizer,
        learning_rate: a.lr,
        accumulate: a.accumulate,
        clip_grad_norm: a.clip_grad_norm,
        batch_norm: match a.batch_norm {
            BatchNormArg::Train => BatchNormMode::Train,
            BatchNormArg::Frozen => BatchNormMode::Frozen,
        },
        target: a.target.clone(),
        reorder: !a.no_reorder,
    };
    let started = Instant::now();
    let compiled = pock::compile_model(&a.model, a.batch, a.seed, options)?;
    let bytes = compiled.to_bytes();
    // Write then rename, so a plan that a session has mapped is never modified in place.
    let tmp = a.output.with_extension("pock.tmp");
    std::fs::write(&tmp, &bytes).and_then(|_| std::fs::rename(&tmp, &a.output)).map_err(io_err(&a.output))?;
    let r = pock::inspect::report(&compiled.plan);
    eprintln!(
        "compiled {} in {:.2} s -> {} ({}): {} trainable parameters, arena {}, {} forward / {} backward / {} optimizer ops",
        a.model,
        started.elapsed().as_secs_f64(),
        a.output.display(),
        pock::human_bytes(bytes.len() as u64),
        r.trainable_params,
        pock::human_bytes(r.arena_bytes),
        r.ops.forward,
        r.ops.backward,
        r.ops.optimizer
    );
    Ok(())
}

fn train(a: TrainArgs) -> Result<(), PockError> {
    let mut session = Session::load(&a.plan, a.run.session_options())?;
    if let Some(r) = &a.resume {
        session.resume(r)?;
        eprintln!("resumed from {} at micro-step {} (optimizer step {})", r.display(), session.micro_steps(), session.optimizer_steps());
    }
    let data = load_data(&session, &a.data, true)?;
    let eval_data = a.eval_data.as_deref().map(|p| load_data(&session, p, true)).transpose()?;
    let schedule = LrSchedule::parse(&a.lr_schedule)?;
    let base_lr = a.lr.unwrap_or(session.plan().training.learning_rate);
    let cfg = TrainConfig { epochs: a.epochs, seed: a.seed, base_lr, schedule };
    let batch = session.batch();
    let steps_per_epoch = data.len() / batch;
    if data.len() % batch != 0 && steps_per_epoch > 0 {
        eprintln!("note: {} samples per epoch are dropped ({} is not a multiple of the batch {batch})", data.len() % batch, data.len());
    }
    let mut log = match &a.log_json {
        Some(p) => Some(BufWriter::new(File::create(p).map_err(io_err(p))?)),
        None => None,
    };
    let total = a.epochs * steps_per_epoch as u64;
    let bar = (!a.quiet && std::io::stderr().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::new(total);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} steps  epoch {prefix}  {msg}  [{elapsed_precise}<{eta_precise}]")
                .expect("valid template"),
        );
        b
    });
    let mut log_error = None;
    let on_step = |r: &pock::train::StepRecord| {
        if let Some(w) = log.as_mut() {
            if let Err(e) = serde_json::to_writer(&mut *w, r).map_err(std::io::Error::from).and_then(|_| w.write_all(b"\n")) {
                log_error.get_or_insert(e);
            }
        }
        if let Some(b) = &bar {
            b.inc(1);
            b.set_prefix(format!("{}", r.epoch + 1));
            b.set_message(format!("loss {:.4} lr {:.3e} {:.1} ms/step", r.loss, r.lr, r.ms));
        }
    };
    let on_epoch = |session: &mut Session, e: &pock::train::EpochRecord| -> Result<(), PockError> {
        let mut line = format!("epoch {}: train loss {:.4}, {:.2} ms/step", e.epoch + 1, e.mean_loss, e.ms_per_step);
        if let Some(d) = &eval_data {
            let r = pock::train::evaluate(session, d)?;
            line += &format!(", eval loss {:.4}", r.loss);
            if let Some(acc) = r.accuracy {
                line += &format!(", eval accuracy {:.2}%", 100.0 * acc);
            }
        }
        match &bar {
            Some(b) => b.println(line),
            None if !a.quiet => eprintln!("{line}"),
            None => {}
        }
        Ok(())
    };
    let summary = pock::train::train_epochs(&mut session, &data, &cfg, on_step, on_epoch)?;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    if let Some(e) = log_error {
        return Err(PockError::Io { path: a.log_json.as_ref().expect("log set").display().to_string(), source: e });
    }
    if let Some(mut w) = log {
        w.flush().map_err(io_err(a.log_json.as_ref().expect("log set")))?;
    }
    if let Some(p) = &a.save {
        session.save(p)?;
    }
    eprintln!(
        "trained {} epoch(s), {} steps, {:.2} ms/step; final epoch loss {:.4}{}",
        summary.epoch_losses.len(),
        summary.steps,
        summary.mean_ms,
        summary.epoch_losses.last().copied().unwrap_or(f64::NAN),
        a.save.as_ref().map(|p| format!("; saved {}", p.display())).unwrap_or_default()
    );
    Ok(())
}
