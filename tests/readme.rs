//! The README's "Using it" commands work as written, paths included, run in a fresh directory.

use std::process::Command;

#[test]
fn readme_using_it_commands_run_as_written() {
    let readme = include_str!("../README.md");
    let section = readme.split("## Using it").nth(1).expect("a 'Using it' section");
    let block = section.split("```sh\n").nth(1).and_then(|b| b.split("```").next()).expect("a sh block");
    let dir = std::env::temp_dir().join(format!("pock-readme-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut ran = 0;
    for line in block.lines() {
        let command = line.split('#').next().unwrap().trim();
        let Some(args) = command.strip_prefix("pock ") else {
            assert!(command.is_empty(), "not a pock command: {line}");
            continue;
        };
        let args: Vec<&str> = args.split_whitespace().collect();
        let out = Command::new(env!("CARGO_BIN_EXE_pock")).args(&args).current_dir(&dir).output().unwrap();
        assert!(out.status.success(), "README command failed: {line}\n{}", String::from_utf8_lossy(&out.stderr));
        ran += 1;
    }
    assert!(ran >= 8, "only {ran} commands found");
    for file in [
        "data/train.npz",
        "cnn.pock",
        "cnn.ckpt.safetensors",
        "cnn2.ckpt.safetensors",
        "log.jsonl",
        "pred.npz",
        "mbv2.pock",
        "cnn.scheme.toml",
        "cnn.sparse.pock",
    ] {
        assert!(dir.join(file).is_file(), "{file} was not written");
    }
}
