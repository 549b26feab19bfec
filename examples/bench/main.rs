//! Prompt-processing (pp) and text-generation (tg) speed, measured as
//! llama.cpp's `llama-bench` measures it, with its table and JSON field names,
//! so the two can be run side by side on the same file.
//!
//! ```text
//! cargo run --release --example bench -- -m model.gguf -p 512 -n 128 -r 3 -t 2
//! cargo run --release --example bench -- -m model.gguf -o json
//! cargo run --release --example bench -- -m ./safetensors-dir --isq q4k
//! cargo run --release --example bench -- --backend candle --device cuda:0
//! cargo run --release --example bench -- --texts -n 128 -r 3   # speculative decoding
//! cargo run --release --example bench -- --constrained -n 160 -r 3   # structured output
//! ```
//!
//! Each test runs once as a warm-up (pp: the whole prompt; tg: one token, as
//! llama-bench), then `-r` times, each from an empty KV cache (cleared outside
//! the timing):
//! - `ppN`: N random token ids (BOS first when the model adds one) in one
//!   prefill — chunks of up to 512 tokens, one forward pass each, logits of the
//!   last position only;
//! - `tgN`: N single-token decode steps after no prompt, each fed a random
//!   token (no sampling), as llama-bench does.
//!
//! Before the tests, the packing the model starts in the background at load
//! (CPU backend: the Q8_0 and k-quant matrices) is finished, so decode is timed in its
//! steady state; its time is printed below the table.
//!
//! With `--read-bw`, each tg repetition is timed in segments of about
//! [`READ_SEGMENT`], with a streaming read of 1 GiB on as many threads
//! (best of 2 passes) before the first and after each, outside the timing.
//! Each segment's weight bytes per second (every matrix once per token, the
//! token embedding one row) are a share of the mean of the reads on either
//! side of it, and the median share is reported: a decode's yardstick, on
//! machines whose memory bandwidth moves within seconds (a read around a
//! whole repetition, many seconds away from most of its tokens, made the
//! shares of one sitting range over 76–149 %).
//!
//! Tokenization and sampling are excluded. t/s is the mean ± sample standard
//! deviation over the repetitions. Load time (file open to ready, including
//! `--isq` quantization) is printed below the table and in each JSON object.
//!
//! (`crates/foehn-model/examples/bench_forward.rs` is the older, GGUF-only
//! single-run version of this: it drives `Transformer` directly.)

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// With `--read-bw`, how long a tg repetition decodes (timed) between two
/// streaming reads (untimed): short enough that the reads on either side
/// see the memory as the segment's tokens did, long enough that the reads
/// (tens of milliseconds) do not dominate the run.
const READ_SEGMENT: Duration = Duration::from_millis(500);

#[allow(dead_code)] // the routed-run helpers are not used here
#[path = "../common/mod.rs"]
mod common;
mod constrained;
mod texts;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use foehn::engine::{Backend, CandleDevice};
use foehn::kernels::{Compute, StreamRead};
use foehn::loader::gguf::GgufFile;
use foehn::loader::SafetensorsModel;
use foehn::model::DEFAULT_CHUNK;
use foehn::{LoadOptions, LocalModel};

/// Benchmark prompt processing and text generation, like llama-bench.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Model: a GGUF path, a safetensors directory, a catalog id or hf://owner/repo/file.gguf (default: the default model).
    #[arg(short = 'm', long)]
    model: Option<String>,
    /// Prompt lengths to test, comma-separated (0 = no pp test).
    #[arg(
        short = 'p',
        long = "n-prompt",
        value_delimiter = ',',
        default_value = "512"
    )]
    n_prompt: Vec<usize>,
    /// Generation lengths to test, comma-separated (0 = no tg test).
    #[arg(
        short = 'n',
        long = "n-gen",
        value_delimiter = ',',
        default_value = "128"
    )]
    n_gen: Vec<usize>,
    /// Tokens in the KV cache before each test (llama-bench's -d), prefilled untimed: `-n 128 -d 4096` times decode at a 4k context.
    #[arg(short = 'd', long = "n-depth", default_value_t = 0)]
    depth: usize,
    /// Repetitions of each test.
    #[arg(short = 'r', long = "repetitions", default_value_t = 3)]
    reps: usize,
    /// Worker threads (default: the physical cores available).
    #[arg(short = 't', long)]
    threads: Option<usize>,
    /// Context length of the KV cache (default: the longest test).
    #[arg(long)]
    ctx: Option<usize>,
    #[command(flatten)]
    model_flags: common::ModelFlags,
    /// Skip the warm-up run.
    #[arg(long)]
    no_warmup: bool,
    /// Instead of pp/tg: greedy decode of the first -n length on built-in text prompts (repeat, edit, fill a JSON record, free writing), speculative decoding off and on (as --spec says) alternated -r times, same tokens checked.
    #[arg(long)]
    texts: bool,
    /// Instead of pp/tg: what structured output costs — greedy decode of the first -n length on the document prompt of --texts, unconstrained, under a JSON schema, and under it with forced tokens run one pass each, alternated -r times (speculation off).
    #[arg(long, conflicts_with = "texts")]
    constrained: bool,
    /// Time each tg repetition in segments of about 0.5 s with a streaming read (1 GiB, same threads) between them, untimed, and report the decode's weight bytes per second as a share of the read bandwidth (per segment, of the mean of the reads on either side; median).
    #[arg(long)]
    read_bw: bool,
    /// Output format: a markdown table or a JSON array (llama-bench's field names).
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Md)]
    output: Output,
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// What the table and the JSON say about the model.
struct ModelInfo {
    filename: String,
    /// `arch size type`, as llama-bench's `model_type` (`llama 135M Q4_1`).
    model_type: String,
    /// Bytes of all weights as stored (matrices and norms).
    size: u64,
    /// Bytes of weights a decode step reads: all but the token embedding's
    /// rows (one is read), unless the output projection shares them.
    step_bytes: u64,
    /// Number of weights.
    n_params: u64,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum Output {
    Md,
    Json,
}

/// One test in `-o json`: llama-bench's fields, in its order, plus `isq` and
/// `load_ms`.
#[derive(serde::Serialize)]
struct JsonTest {
    build_commit: String,
    cpu_info: String,
    backends: String,
    model_filename: String,
    model_type: String,
    model_size: u64,
    model_n_params: u64,
    n_batch: usize,
    n_ubatch: usize,
    n_threads: usize,
    type_k: &'static str,
    type_v: &'static str,
    isq: Option<&'static str>,
    n_prompt: usize,
    n_gen: usize,
    n_depth: usize,
    test_time: String,
    load_ms: f64,
    avg_ns: u64,
    stddev_ns: u64,
    avg_ts: f64,
    stddev_ts: f64,
    samples_ns: Vec<u64>,
    samples_ts: Vec<f64>,
    /// `--read-bw`: the streaming reads between the segments, in order,
    /// GB/s.
    #[serde(skip_serializing_if = "Option::is_none")]
    read_gbps: Option<Vec<f64>>,
    /// `--read-bw`: weight bytes a step reads per second, as a share of the
    /// mean of the reads on either side of its segment (median over the
    /// segments of all repetitions).
    #[serde(skip_serializing_if = "Option::is_none")]
    read_share: Option<f64>,
}

/// `--read-bw` on a tg test: the streaming reads and the decode segments
/// between them, in order (segment `k` lies between reads `k` and `k + 1`).
#[derive(Default)]
struct ReadLog {
    /// Bytes per second of each read.
    bps: Vec<f64>,
    /// Tokens and decode time of each segment.
    segments: Vec<(usize, Duration)>,
}

/// One test's measurements.
struct TestResult {
    n_prompt: usize,
    n_gen: usize,
    n_depth: usize,
    samples_ns: Vec<u64>,
    /// `--read-bw` on a tg test: the reads and the segments between them.
    reads: ReadLog,
    test_time: String,
}

impl TestResult {
    fn name(&self) -> String {
        let test = if self.n_prompt > 0 {
            format!("pp{}", self.n_prompt)
        } else {
            format!("tg{}", self.n_gen)
        };
        if self.n_depth > 0 {
            format!("{test} @ d{}", self.n_depth)
        } else {
            test
        }
    }

    fn tokens(&self) -> usize {
        self.n_prompt + self.n_gen
    }

    fn samples_ts(&self) -> Vec<f64> {
        self.samples_ns
            .iter()
            .map(|&ns| 1e9 * self.tokens() as f64 / ns.max(1) as f64)
            .collect()
    }

    /// The reads of `--read-bw`, GB/s (empty without it).
    fn read_gbps(&self) -> Vec<f64> {
        self.reads.bps.iter().map(|b| b / 1e9).collect()
    }

    /// Per segment, weight bytes read per second (`step_bytes` per token)
    /// as a share of the mean of the reads on either side of it; empty
    /// without `--read-bw`.
    fn read_shares(&self, step_bytes: u64) -> Vec<f64> {
        self.reads
            .segments
            .iter()
            .zip(self.reads.bps.windows(2))
            .map(|(&(tokens, t), around)| {
                let bps = (step_bytes * tokens as u64) as f64 / t.as_secs_f64().max(1e-9);
                bps / ((around[0] + around[1]) / 2.0)
            })
            .collect()
    }
}

fn run(args: Args) -> Result<()> {
    if args.reps == 0 {
        bail!("-r must be at least 1");
    }
    let threads = args.threads.unwrap_or_else(physical_cores).max(1);
    let backend = args.model_flags.backend();
    if let Backend::Candle(_) = backend {
        // candle's dense matmuls size their own pool from RAYON_NUM_THREADS;
        // its quantized ones run on the model's pool.
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
    let path = match args.model.as_deref() {
        Some(s) if std::path::Path::new(s).exists() => std::path::PathBuf::from(s),
        spec => {
            foehn::hub::resolve_model(spec, &Default::default()).context("finding the model")?
        }
    };
    let longest = args
        .n_prompt
        .iter()
        .chain(&args.n_gen)
        .copied()
        .max()
        .unwrap_or(0)
        .max(1)
        + args.depth;
    // Text prompts are a few hundred tokens long.
    let longest = if args.texts || args.constrained {
        longest + 1024
    } else {
        longest
    };
    let opts = args.model_flags.apply(LoadOptions {
        ctx_len: Some(args.ctx.unwrap_or(longest)),
        threads: Some(threads),
        ..LoadOptions::default()
    });
    let path_str = path.to_str().context("the model path is not valid UTF-8")?;
    let model = LocalModel::load(Some(path_str), opts).context("loading the model")?;
    let load = model.load_time();
    // The tests time the steady state: the packing the model starts in the
    // background at load (CPU backend: Q8_0 and the k-quants) is finished first.
    let packing_started = Instant::now();
    model.finish_packing();
    let packing = packing_started.elapsed();
    let n = args.n_gen.first().copied().unwrap_or(128).max(1) as u32;
    if args.texts {
        return texts::run(&model, n, args.reps);
    }
    if args.constrained {
        return constrained::run(&model, n, args.reps);
    }
    let info = model_info(&model, &path)?;
    let backend_name = match backend {
        Backend::Cpu => "CPU".to_string(),
        Backend::Candle(CandleDevice::Cpu) => "candle CPU".to_string(),
        Backend::Candle(CandleDevice::Cuda(n)) => format!("candle CUDA{n}"),
        Backend::Candle(CandleDevice::Metal(n)) => format!("candle Metal{n}"),
    };

    let tests: Vec<(usize, usize)> = args
        .n_prompt
        .iter()
        .filter(|&&p| p > 0)
        .map(|&p| (p, 0))
        .chain(args.n_gen.iter().filter(|&&n| n > 0).map(|&n| (0, n)))
        .collect();
    let vocab = model.config().vocab_size as u32;
    let bos = model
        .tokenizer()
        .add_bos()
        .then(|| model.tokenizer().bos_id())
        .flatten();
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut session = model.session()?;
    let mut logits = Vec::new();
    // The streaming read and threads of its own, as many as the model's
    // (idle while the model runs, and the model's while the read runs).
    let reader = args
        .read_bw
        .then(|| (StreamRead::new(1 << 30), Compute::new(threads)));
    let mut results = Vec::new();
    if args.output == Output::Md {
        print_header();
    }
    // `--read-bw`: the streaming read's bytes per second.
    let read_now = || {
        reader
            .as_ref()
            .map(|(read, ctx)| read.bytes_per_second(ctx, 2))
    };
    for (n_prompt, n_gen) in tests {
        let test_time = utc_now();
        // `--read-bw`, tg tests: the reads and the segments between them.
        let interleave = reader.is_some() && n_prompt == 0;
        let mut reads = ReadLog::default();
        // One run, timed; with a log (`--read-bw`, tg): decode in segments
        // with a read after each (a read before the first must be there).
        let mut once =
            |n_prompt: usize, n_gen: usize, mut log: Option<&mut ReadLog>| -> Result<Duration> {
                session.reset();
                let context: Vec<u32> = (0..args.depth).map(|_| rng.below(vocab)).collect();
                if !context.is_empty() {
                    session.prefill_into(&context, &mut logits)?;
                }
                let t = Instant::now();
                if n_prompt > 0 {
                    let tokens: Vec<u32> = (0..n_prompt)
                        .map(|i| {
                            if i == 0 {
                                bos.unwrap_or(rng.below(vocab))
                            } else {
                                rng.below(vocab)
                            }
                        })
                        .collect();
                    session.prefill_into(&tokens, &mut logits)?;
                }
                let mut token = bos.unwrap_or(rng.below(vocab));
                // Time of the segments ended so far, and where this one began.
                let (mut timed, mut t, mut begun) = (Duration::ZERO, t, 0);
                for i in 0..n_gen {
                    session.feed_into(&[token], &mut logits)?;
                    token = rng.below(vocab);
                    if let Some(log) = log.as_deref_mut() {
                        let span = t.elapsed();
                        if span >= READ_SEGMENT || i + 1 == n_gen {
                            log.segments.push((i + 1 - begun, span));
                            log.bps.extend(read_now());
                            (timed, t, begun) = (timed + span, Instant::now(), i + 1);
                        }
                    }
                }
                Ok(timed + t.elapsed())
            };
        if !args.no_warmup {
            once(n_prompt, n_gen.min(1), None)?;
        }
        let mut samples_ns = Vec::with_capacity(args.reps);
        if interleave {
            reads.bps.extend(read_now());
        }
        for _ in 0..args.reps {
            let log = interleave.then_some(&mut reads);
            samples_ns.push(once(n_prompt, n_gen, log)?.as_nanos() as u64);
        }
        let result = TestResult {
            n_prompt,
            n_gen,
            n_depth: args.depth,
            samples_ns,
            reads,
            test_time,
        };
        if args.output == Output::Md {
            print_row(&info, &backend_name, threads, &result);
        }
        results.push(result);
    }
    let commit = build_commit();
    match args.output {
        Output::Md => {
            println!();
            for r in results.iter().filter(|r| !r.reads.bps.is_empty()) {
                let shares = r.read_shares(info.step_bytes);
                let (lo, hi) = min_max(&r.read_gbps());
                let (slo, shi) = min_max(&shares);
                println!(
                    "{}: {:.2} GB of weights per token, {:.1} GB/s; streaming read between \
                     its {} segments {lo:.1}–{hi:.1} GB/s; share {:.0}–{:.0} % (median {:.0} %)",
                    r.name(),
                    info.step_bytes as f64 / 1e9,
                    info.step_bytes as f64 * mean(&r.samples_ts()) / 1e9,
                    r.reads.segments.len(),
                    100.0 * slo,
                    100.0 * shi,
                    100.0 * median(&shares),
                );
            }
            println!("load: {:.0} ms", load.as_secs_f64() * 1e3);
            println!(
                "packing after load, before the tests: {:.0} ms",
                packing.as_secs_f64() * 1e3
            );
            println!("build: {commit}");
        }
        Output::Json => {
            let cpu_info = cpu_info();
            let kv = args.model_flags.kv_types();
            let objects: Vec<JsonTest> = results
                .iter()
                .map(|r| {
                    let ts = r.samples_ts();
                    let ns: Vec<f64> = r.samples_ns.iter().map(|&v| v as f64).collect();
                    JsonTest {
                        build_commit: commit.clone(),
                        cpu_info: cpu_info.clone(),
                        backends: backend_name.clone(),
                        model_filename: info.filename.clone(),
                        model_type: info.model_type.clone(),
                        model_size: info.size,
                        model_n_params: info.n_params,
                        n_batch: DEFAULT_CHUNK,
                        n_ubatch: DEFAULT_CHUNK,
                        n_threads: threads,
                        type_k: kv.k.name(),
                        type_v: kv.v.name(),
                        isq: args.model_flags.isq.map(|i| i.name()),
                        n_prompt: r.n_prompt,
                        n_gen: r.n_gen,
                        n_depth: r.n_depth,
                        test_time: r.test_time.clone(),
                        load_ms: load.as_secs_f64() * 1e3,
                        avg_ns: mean(&ns).round() as u64,
                        stddev_ns: stddev(&ns).round() as u64,
                        avg_ts: mean(&ts),
                        stddev_ts: stddev(&ts),
                        samples_ns: r.samples_ns.clone(),
                        samples_ts: ts,
                        read_gbps: (!r.reads.bps.is_empty()).then(|| r.read_gbps()),
                        read_share: (!r.reads.bps.is_empty())
                            .then(|| median(&r.read_shares(info.step_bytes))),
                    }
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&objects)?);
        }
    }
    Ok(())
}

fn print_header() {
    println!(
        "| {:<30} | {:>10} | {:>10} | {:<10} | {:>7} | {:>15} | {:>20} |",
        "model", "size", "params", "backend", "threads", "test", "t/s"
    );
    let right = |w: usize| format!("{}:", "-".repeat(w - 1));
    println!(
        "| {} | {} | {} | {} | {} | {} | {} |",
        "-".repeat(30),
        right(10),
        right(10),
        "-".repeat(10),
        right(7),
        right(15),
        right(20)
    );
}

fn print_row(info: &ModelInfo, backend: &str, threads: usize, r: &TestResult) {
    let size = info.size as f64;
    let size = if size >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2} GiB", size / (1024.0 * 1024.0 * 1024.0))
    } else {
        format!("{:.2} MiB", size / (1024.0 * 1024.0))
    };
    let params = info.n_params as f64;
    let params = if params >= 1e9 {
        format!("{:.2} B", params / 1e9)
    } else {
        format!("{:.2} M", params / 1e6)
    };
    let ts = r.samples_ts();
    let speed = format!("{:.2} ± {:.2}", mean(&ts), stddev(&ts));
    println!(
        "| {:<30} | {:>10} | {:>10} | {:<10} | {:>7} | {:>15} | {:>20} |",
        info.model_type,
        size,
        params,
        backend,
        threads,
        r.name(),
        speed
    );
}

/// Size, parameter count and `model_type` of the loaded model: from the
/// weights the CPU backend holds (so `--isq` counts as quantized), or from the
/// file's tensor table on the candle backend.
fn model_info(model: &LocalModel, path: &std::path::Path) -> Result<ModelInfo> {
    let cfg = model.config();
    let gguf = if path.is_file() {
        Some(GgufFile::open(path).context("reading the GGUF tensor table")?)
    } else {
        None
    };
    let arch = match &gguf {
        Some(f) => f
            .metadata()
            .get_str("general.architecture")
            .unwrap_or("llama")
            .to_string(),
        None => std::fs::read(path.join("config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["model_type"].as_str().map(str::to_string))
            .unwrap_or_else(|| "llama".into()),
    };
    // Elements per type of the blocks' matrices: the most common one names the model.
    let mut by_type: Vec<(String, u64)> = Vec::new();
    let mut count = |ty: String, n: u64| match by_type.iter_mut().find(|(t, _)| *t == ty) {
        Some((_, c)) => *c += n,
        None => by_type.push((ty, n)),
    };
    // Bytes of the token embedding a decode step does not read (CPU
    // backend; elsewhere the step is taken to read every weight).
    let mut unread = 0u64;
    let (size, n_params) = if let Some(t) = model.cpu_transformer() {
        let norms = (cfg.hidden_size * (2 * cfg.num_hidden_layers + 1)) as u64;
        let (mut size, mut n) = (4 * norms, norms);
        let embed = t.embedding() as *const _;
        let head = t.lm_head() as *const _;
        if embed != head {
            let e = t.embedding();
            unread = ((e.rows() - 1) * e.row_bytes()) as u64;
        }
        for m in t.matrices() {
            size += (m.rows() * m.row_bytes()) as u64;
            n += (m.rows() * m.cols()) as u64;
            let p = m as *const _;
            if p != embed && p != head {
                count(m.ty().name().to_string(), (m.rows() * m.cols()) as u64);
            }
        }
        (size, n)
    } else if let Some(f) = &gguf {
        let (mut size, mut n) = (0u64, 0u64);
        for info in f.tensors() {
            let t = f.tensor(&info.name)?;
            size += t.data.len() as u64;
            n += t.n_elements();
            if info.name.starts_with("blk.") && t.shape.len() == 2 {
                count(t.ty.name().to_string(), t.n_elements());
            }
        }
        (size, n)
    } else {
        let st = SafetensorsModel::open(path)?;
        let (mut size, mut n) = (0u64, 0u64);
        let names: Vec<String> = st.tensor_names().map(str::to_string).collect();
        for name in names {
            let t = st.tensor(&name)?;
            let elements: u64 = t.shape.iter().map(|&d| d as u64).product();
            size += t.data.len() as u64;
            n += elements;
            if name.contains(".layers.") && t.shape.len() == 2 {
                count(format!("{:?}", t.dtype), elements);
            }
        }
        (size, n)
    };
    let ty = by_type
        .iter()
        .max_by_key(|(_, c)| *c)
        .map_or("?".to_string(), |(t, _)| t.clone());
    let label = if n_params >= 1_000_000_000 {
        format!("{:.1}B", n_params as f64 / 1e9)
    } else {
        format!("{}M", (n_params as f64 / 1e6).round())
    };
    Ok(ModelInfo {
        filename: path.display().to_string(),
        model_type: format!("{arch} {label} {ty}"),
        size,
        step_bytes: size - unread,
        n_params,
    })
}

/// The smallest and the largest of `v` (infinities when empty).
fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}

/// The median of `v` (the mean of the middle two for an even count; NaN
/// when empty).
fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// Sample standard deviation (0 for fewer than two samples), as llama-bench.
fn stddev(v: &[f64]) -> f64 {
    if v.len() < 2 {
        return 0.0;
    }
    let m = mean(v);
    (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
}

/// Physical cores available to the process: distinct SMT sibling sets
/// (Linux sysfs), at most the available parallelism; the available
/// parallelism elsewhere.
fn physical_cores() -> usize {
    let logical = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut siblings = std::collections::BTreeSet::new();
    if let Ok(dir) = std::fs::read_dir("/sys/devices/system/cpu") {
        for entry in dir.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name
                .strip_prefix("cpu")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            {
                if let Ok(s) =
                    std::fs::read_to_string(entry.path().join("topology/thread_siblings_list"))
                {
                    siblings.insert(s.trim().to_string());
                }
            }
        }
    }
    if siblings.is_empty() {
        logical
    } else {
        siblings.len().min(logical)
    }
}

/// The CPU's model name (Linux), as llama-bench's `cpu_info`.
fn cpu_info() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default()
}

/// The source tree's commit (`git rev-parse --short HEAD`), or `unknown`.
fn build_commit() -> String {
    std::process::Command::new("git")
        .args([
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "rev-parse",
            "--short",
            "HEAD",
        ])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// The current UTC time as `YYYY-MM-DDTHH:MM:SSZ`.
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A small deterministic generator for the random token ids.
struct XorShift(u64);

impl XorShift {
    /// A value in `0..n` (`n ≥ 1`).
    fn below(&mut self, n: u32) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 32) % u64::from(n.max(1))) as u32
    }
}
