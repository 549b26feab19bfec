//! Resolves a model spec and prints the local path.
//!
//! `cargo run -p foehn-hub --example fetch -- [--no-hub] [--no-mirror] [SPEC]`
//! SPEC is a path, `hf://owner/repo/file.gguf` or a catalog id (default: the default model);
//! `--list` prints the catalog.

use std::time::Instant;

fn main() -> std::process::ExitCode {
    let mut opts = foehn_hub::FetchOptions::default();
    let mut spec = None;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--no-hub" => opts.hub = false,
            "--no-mirror" => opts.mirror = false,
            "--list" => {
                let cat = match foehn_hub::catalog() {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("error: {e}");
                        return std::process::ExitCode::FAILURE;
                    }
                };
                for m in &cat.models {
                    let mark = if m.id == cat.default { "*" } else { " " };
                    println!("{mark} {:<46} {}/{}", m.id, m.hf_repo, m.hf_file);
                }
                return std::process::ExitCode::SUCCESS;
            }
            _ => spec = Some(arg),
        }
    }
    let started = Instant::now();
    match foehn_hub::resolve_model(spec.as_deref(), &opts) {
        Ok(path) => {
            println!("{}", path.display());
            eprintln!("resolved in {:.2}s", started.elapsed().as_secs_f64());
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error after {:.2}s: {e}", started.elapsed().as_secs_f64());
            std::process::ExitCode::FAILURE
        }
    }
}
