//! The `bench` example (llama-bench's tests, table and JSON) on the tiny-mistral fixture.

mod common;

use std::process::{Command, Output};

use common::{example_bin, fixture};

fn bench(args: &[&str]) -> Output {
    Command::new(example_bin("bench"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("run bench")
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

/// The tests of `bench -o json` on the tiny Q8_0 model (path returned too):
/// pp8 then tg4 on 2 threads, `-r reps`, with `extra` arguments.
fn json_tests(reps: &str, extra: &[&str]) -> (std::path::PathBuf, Vec<serde_json::Value>) {
    let model = fixture("tiny-mistral/gguf/tiny-mistral-Q8_0.gguf");
    let mut args = vec![
        "-m",
        model.to_str().unwrap(),
        "-p",
        "8",
        "-n",
        "4",
        "-r",
        reps,
        "-t",
        "2",
        "-o",
        "json",
    ];
    args.extend_from_slice(extra);
    let out = stdout(&bench(&args));
    let tests: Vec<serde_json::Value> = serde_json::from_str(&out).expect("one JSON array");
    assert_eq!(tests.len(), 2, "pp8 then tg4");
    (model, tests)
}

#[test]
fn json_has_llama_bench_fields() {
    let (model, tests) = json_tests("1", &[]);
    let file_bytes = std::fs::metadata(&model).unwrap().len();
    for (t, (n_prompt, n_gen)) in tests.iter().zip([(8, 0), (0, 4)]) {
        assert_eq!(t["n_prompt"], n_prompt);
        assert_eq!(t["n_gen"], n_gen);
        assert_eq!(t["n_threads"], 2);
        assert_eq!(t["model_filename"], model.to_str().unwrap());
        assert_eq!(t["backends"], "CPU");
        assert_eq!(t["model_type"], "llama 2M Q8_0");
        // All tensors as stored: a bit less than the file (metadata, tokenizer).
        let size = t["model_size"].as_u64().unwrap();
        assert!(
            size < file_bytes && size > file_bytes * 9 / 10,
            "{size} vs file {file_bytes}"
        );
        // 2 layers of 256 × (256 + 2·128 + 256) + 3 · 256 × 512, two 1024 × 256
        // matrices, five norms of 256.
        let params = 2 * (256 * (256 + 128 + 128 + 256) + 3 * 256 * 512) + 2 * 1024 * 256 + 5 * 256;
        assert_eq!(t["model_n_params"], params);
        let samples_ns = t["samples_ns"].as_array().unwrap();
        let samples_ts = t["samples_ts"].as_array().unwrap();
        assert_eq!((samples_ns.len(), samples_ts.len()), (1, 1));
        let ns = samples_ns[0].as_u64().unwrap();
        assert!(ns > 0);
        assert_eq!(t["avg_ns"].as_u64().unwrap(), ns);
        assert_eq!(t["stddev_ns"], 0);
        assert_eq!(t["stddev_ts"], 0.0);
        let ts = t["avg_ts"].as_f64().unwrap();
        let want = 1e9 * (n_prompt + n_gen) as f64 / ns as f64;
        assert!((ts - want).abs() <= 1e-6 * want, "{ts} vs {want}");
        assert!(t["load_ms"].as_f64().unwrap() > 0.0);
        let time = t["test_time"].as_str().unwrap();
        assert!(
            time.len() == 20 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
            "{time}"
        );
        for key in [
            "build_commit",
            "cpu_info",
            "type_k",
            "type_v",
            "n_batch",
            "n_ubatch",
            "n_depth",
        ] {
            assert!(!t[key].is_null(), "{key}");
        }
    }
}

#[test]
fn read_bw_pairs_tg_segments_with_reads() {
    let (_, tests) = json_tests("2", &["--read-bw"]);
    // A prompt test reads nothing around itself.
    assert!(tests[0]["read_gbps"].is_null() && tests[0]["read_share"].is_null());
    // tg: a read before the first segment and one after each, at least one
    // segment per repetition.
    let reads = tests[1]["read_gbps"].as_array().expect("reads");
    assert!(reads.len() >= 3, "{reads:?}");
    assert!(reads.iter().all(|r| r.as_f64().unwrap() > 0.0), "{reads:?}");
    let share = tests[1]["read_share"].as_f64().unwrap();
    assert!(share.is_finite() && share > 0.0, "{share}");
}

#[test]
fn markdown_table_with_isq_and_repetitions() {
    let hf = fixture("tiny-mistral/hf");
    let out = stdout(&bench(&[
        "-m",
        hf.to_str().unwrap(),
        "--isq",
        "q4_0",
        "-p",
        "4",
        "-n",
        "2",
        "-r",
        "2",
        "-t",
        "1",
    ]));
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("| model") && lines[0].trim_end().ends_with("t/s |"),
        "{out}"
    );
    assert!(lines[1].starts_with("| ---"), "{out}");
    let rows: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.contains("mistral 2M Q4_0"))
        .collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert!(
        rows[0].contains(" pp4 ") && rows[1].contains(" tg2 "),
        "{out}"
    );
    assert!(rows.iter().all(|r| r.contains(" ± ")), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("load: ") && l.ends_with(" ms")),
        "{out}"
    );
}

#[test]
fn bad_arguments_are_one_line_errors() {
    let gguf = fixture("tiny-mistral/gguf/tiny-mistral-Q8_0.gguf");
    let gguf = gguf.to_str().unwrap();
    for (what, args) in [
        (
            "isq on a GGUF",
            vec!["-m", gguf, "--isq", "q4k", "-p", "4", "-n", "0"],
        ),
        (
            "prompt longer than the context",
            vec!["-m", gguf, "-p", "64", "-n", "0", "--ctx", "16"],
        ),
        ("zero repetitions", vec!["-m", gguf, "-r", "0"]),
        ("missing model", vec!["-m", "/nonexistent.gguf"]),
    ] {
        let o = bench(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{what}: succeeded");
        assert!(
            err.starts_with("error: ") && err.trim_end().lines().count() == 1,
            "{what}: {err}"
        );
    }
}
