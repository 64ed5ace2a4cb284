//! `bitnetd bench` end to end on the tiny reference model.

use std::process::Command;

use crate::common::reference;

fn bench(extra: &[&str]) -> std::process::Output {
    crate::common::succeeds(
        Command::new(env!("CARGO_BIN_EXE_bitnetd"))
            .arg("bench")
            .arg("-m")
            .arg(reference("tiny-i2_s.gguf"))
            .args(["-p", "8", "-n", "3", "-r", "2", "-t", "2"])
            .args(extra),
    )
}

#[test]
fn json_report_has_both_tests_and_the_bandwidths() {
    let out = bench(&["--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["n_threads"], 2);
    assert_eq!(v["model_size"], 28_314_400);
    assert!(v["memory_read_gib_s"].as_f64().unwrap() > 0.0);
    // Every tensor once per token: the tied embedding (50257 x 256 F16) and the rest.
    assert!(v["bytes_per_token"].as_u64().unwrap() > 50257 * 256 * 2);
    let results = v["results"].as_array().unwrap();
    let tests: Vec<&str> = results
        .iter()
        .map(|r| r["test"].as_str().unwrap())
        .collect();
    assert_eq!(tests, ["pp8", "tg3"]);
    for r in results {
        assert_eq!(r["samples_ts"].as_array().unwrap().len(), 2);
        assert!(r["avg_ts"].as_f64().unwrap() > 0.0);
    }
    // The bandwidth beside each decode repetition; none for the prompt test.
    assert!(results[0].get("memory_read_gib_s").is_none());
    let beside = results[1]["memory_read_gib_s"].as_array().unwrap();
    assert_eq!(beside.len(), 2);
    assert!(beside.iter().all(|b| b.as_f64().unwrap() > 0.0));
}

#[test]
fn markdown_table_has_llama_bench_columns() {
    let out = bench(&[]);
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next().unwrap(),
        "| model | size | params | backend | threads | test | t/s |"
    );
    let rows: Vec<&str> = text.lines().filter(|l| l.contains("| CPU | 2 |")).collect();
    assert_eq!(rows.len(), 2);
    assert!(rows[0].contains("| 27.00 MiB |") && rows[0].contains("| pp8 |"));
    assert!(rows[1].contains("| tg3 |") && rows[1].contains(" ± "));
    assert!(text.contains("tg3: ") && text.contains("memory read bandwidth: "));
    assert!(text.contains("bandwidth measured after each repetition"));
}
