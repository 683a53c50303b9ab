//! Transfer learning with sparse updates (issue 7, "Accuracy" and "Speed"): zoo:mobilenetv2
//! pretrained on one synthetic distribution and fine-tuned on a shifted one with the full,
//! bias-only and paper-like update schemes. Prints each scheme's accuracy, memory, step time and
//! training FLOPs, with the ratios of time and FLOPs to the full scheme's.
//!
//! Run with `cargo run --release --example transfer`: zoo:cnn with a cnn analogue of the paper's
//! scheme, the setup of `tests/transfer.rs`. `-- --mobilenetv2` runs zoo:mobilenetv2 with the
//! paper-like scheme itself (at this budget MobileNetV2 does not learn A from scratch, so its
//! accuracies mean nothing; its memory, step times and FLOPs do). `-- --threads N` sets the
//! kernels' threads (default 1).

mod experiment;

use experiment::Setup;
use pock::compiler::stages::BatchNormMode;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (mut mobilenetv2, mut threads) = (false, 1);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--mobilenetv2" => mobilenetv2 = true,
            "--threads" => {
                threads = args.next().and_then(|v| v.parse().ok()).ok_or("--threads takes a number of threads, e.g. --threads 2")?
            }
            other => return Err(format!("unknown argument '{other}'; use --mobilenetv2 and --threads N").into()),
        }
    }
    let setup = if mobilenetv2 { mobilenetv2_setup(threads) } else { experiment::quick_setup(threads) };
    println!(
        "{} batch {}; A: {} samples x {} epochs; B: {} samples x {} epochs; {} test samples each",
        setup.model,
        setup.batch,
        setup.pretrain_samples,
        setup.pretrain_epochs,
        setup.finetune_samples,
        setup.finetune_epochs,
        setup.test_samples
    );
    let dir = std::env::temp_dir().join(format!("pock-transfer-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = experiment::run(&setup, &dir, |line| println!("{line}"));
    let _ = std::fs::remove_dir_all(&dir);
    print!("{}", experiment::table(&result?));
    Ok(())
}

/// zoo:mobilenetv2 with its paper-like scheme, at a size where it runs in minutes.
fn mobilenetv2_setup(threads: usize) -> Setup {
    Setup {
        model: "zoo:mobilenetv2:classes=4,channels=1,size=32,width=0.25".into(),
        paper_scheme: experiment::MOBILENETV2_PAPER_SCHEME,
        paper_channels: experiment::MOBILENETV2_PAPER_CHANNELS,
        size: 32,
        batch: 16,
        pretrain_samples: 2048,
        pretrain_epochs: 5,
        pretrain_lr: 0.05,
        finetune_samples: 512,
        test_samples: 512,
        finetune_epochs: 6,
        finetune_lr: 0.02,
        finetune_schedule: "cosine:warmup=16",
        finetune_batch_norm: BatchNormMode::Fold,
        train_mode_lr: 0.02,
        train_mode_sparse_lr: 0.1,
        train_mode_paper_scheme: experiment::MOBILENETV2_PAPER_SCHEME_BN_TRAINING,
        threads,
        seed: 7,
    }
}
