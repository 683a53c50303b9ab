//! `pock bench`: the report's figures hang together, and the profile accounts for every node of
//! the train program.

mod common;
use common::{fails, pock, s, workdir};

#[test]
fn bench_reports_step_time_and_a_profile_of_every_train_node() {
    let dir = workdir("bench");
    let plan = dir.join("cnn.pock");
    let out = pock(&["compile", "zoo:cnn:channels=1,size=12,classes=4,width=4", "--batch", "4", "-o", s(&plan), "-q"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bytes = std::fs::read(&plan).unwrap();
    let (p, _) = pock::engine::decode_plan(&bytes).unwrap();
    let train_nodes = p.programs.train.nodes.len();

    for threads in ["1", "2"] {
        let out = pock(&["bench", s(&plan), "--steps", "5", "--warmup", "1", "--threads", threads, "--profile", "--json", "-q"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let median = r["median_ms"].as_f64().unwrap();
        assert!(median > 0.0 && r["min_ms"].as_f64().unwrap() <= median && median <= r["max_ms"].as_f64().unwrap(), "{r}");
        assert_eq!(r["steps"], 5);
        assert_eq!(r["arena_bytes"].as_u64().unwrap(), p.arena_bytes);
        assert!(r["step_flops"].as_u64().unwrap() > 0 && r["gflops"].as_f64().unwrap() > 0.0, "{r}");
        let rows = r["profile"].as_array().unwrap();
        let count: u64 = rows.iter().map(|row| row["count"].as_u64().unwrap()).sum();
        assert_eq!(count as usize, train_nodes, "every train node is counted once");
        let percent: f64 = rows.iter().map(|row| row["percent"].as_f64().unwrap()).sum();
        assert!((percent - 100.0).abs() < 0.01, "shares add up to 100%, got {percent}");
        assert!(rows.windows(2).all(|w| w[0]["ms"].as_f64() >= w[1]["ms"].as_f64()), "slowest first");
        // Forward convolutions are fused with their bias and activation by default.
        let conv = |row: &serde_json::Value| ["Conv2d ", "Conv2dBiasAct "].iter().any(|k| row["kind"].as_str().unwrap().starts_with(k));
        assert!(rows.iter().any(conv), "convolutions are named by kind");
        // The gemm ceiling is measured in the same run; convolutions get their share of it, other
        // ops none.
        let ceiling = r["gemm_ceiling_gflops"].as_f64().unwrap();
        assert!(ceiling > 0.0, "{r}");
        for row in rows {
            let product = row["kind"].as_str().unwrap().starts_with("Conv2d") || row["kind"].as_str().unwrap().contains("MatMul");
            let share = row["ceiling_percent"].as_f64();
            assert_eq!(share.is_some(), product, "{row}");
            if let Some(share) = share {
                let expected = 100.0 * row["gflops"].as_f64().unwrap() / ceiling;
                assert!((share - expected).abs() <= 1e-6 * expected.max(1.0), "{row}: {share} against {expected}");
            }
        }
    }

    // Without --profile there is no table; with text output the summary lines are there.
    let out = pock(&["bench", s(&plan), "--steps", "2", "-q"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("ms median of 2") && text.contains("GFLOP/s") && text.contains("peak RSS"), "{text}");
    assert!(text.contains("ceiling    gemm ") && text.contains("1024x1024x1024, same threads"), "{text}");
    assert!(!text.contains("ms/step"), "no profile table without --profile:\n{text}");

    assert!(fails(&["bench", s(&plan), "--steps", "0"]).contains("--steps must be at least 1"));
}

#[test]
fn bench_slowest_lists_single_nodes_that_agree_with_the_profile() {
    let dir = workdir("bench-slowest");
    let plan = dir.join("cnn.pock");
    let out = pock(&["compile", "zoo:cnn:channels=1,size=12,classes=4,width=4", "--batch", "4", "-o", s(&plan), "-q"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bytes = std::fs::read(&plan).unwrap();
    let (p, _) = pock::engine::decode_plan(&bytes).unwrap();
    let train = &p.programs.train.nodes;

    let out = pock(&["bench", s(&plan), "--steps", "3", "--warmup", "1", "--profile", "--slowest", "4", "--json", "-q"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let nodes = r["slowest"].as_array().unwrap();
    assert_eq!(nodes.len(), 4, "{r}");
    assert!(nodes.windows(2).all(|w| w[0]["ms"].as_f64() >= w[1]["ms"].as_f64()), "slowest first: {r}");
    let kinds = r["profile"].as_array().unwrap();
    for n in nodes {
        // A node of the plan, with its first output's shape, within its kind's total time.
        let node = train.iter().find(|t| t.name == n["name"].as_str().unwrap()).unwrap_or_else(|| panic!("{n} is no train node"));
        let shape: Vec<usize> = n["output_shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
        assert_eq!(shape, p.tensor(node.outputs[0]).shape, "{n}");
        let kind = kinds.iter().find(|k| k["kind"] == n["kind"]).unwrap_or_else(|| panic!("{n}: its kind is in the profile"));
        assert!(n["ms"].as_f64().unwrap() <= kind["ms"].as_f64().unwrap() * (1.0 + 1e-9), "{n} against {kind}");
    }
    // The slowest node takes at least the average node time of the slowest kind.
    let largest = &kinds[0];
    let per_node = largest["ms"].as_f64().unwrap() / largest["count"].as_f64().unwrap();
    assert!(nodes[0]["ms"].as_f64().unwrap() >= per_node * (1.0 - 1e-9), "{r}");

    let text = String::from_utf8(pock(&["bench", s(&plan), "--steps", "2", "--profile", "--slowest", "3", "-q"]).stdout).unwrap();
    assert!(text.contains("slowest nodes") && text.lines().filter(|l| train.iter().any(|t| l.starts_with(&t.name))).count() == 3, "{text}");
    // --slowest needs --profile (clap's usage error).
    let out = pock(&["bench", s(&plan), "--slowest", "3"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--profile"), "{out:?}");
}
