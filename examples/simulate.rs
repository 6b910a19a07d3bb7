//! Simulate a cluster: the real Manager, Scheduler and WorkerProxy actors with a durable store
//! and many in-process workers on the fake runtime.
//!
//! ```sh
//! cargo run --release --example simulate -- --workers 1000 --tasks 100000 --scheduler epvm
//! ```
//!
//! Progress goes to stderr; the last line on stdout is one JSON object:
//! `{"workers":N,"tasks":T,"running":R,"seconds":S,"tasks_per_s":X,"scheduler":"epvm"}`, where S
//! runs from the first submission until all T are Running.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use cube::actors::policy::PolicyKind;
use cube::node::Capacity;
use cube::sim::{SimConfig, run};

/// mimalloc: with a million tasks and ten thousand in-process workers, allocation is the largest
/// cost, and mimalloc halves it (BENCHMARKS.md). The `cube` binary keeps the system allocator
/// for its HTTP tail latency.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "Simulate a Cube cluster with in-process fake workers")]
struct Args {
    #[arg(long, default_value_t = 100)]
    workers: usize,
    #[arg(long, default_value_t = 10_000)]
    tasks: usize,
    /// epvm, roundrobin, binpack or spread.
    #[arg(long, default_value = "epvm")]
    scheduler: PolicyKind,
    /// Where the manager's store goes [default: a fresh temporary directory].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Cores each task reserves.
    #[arg(long, default_value_t = 0.01)]
    task_cpu: f64,
    /// Bytes of memory each task reserves.
    #[arg(long, default_value_t = 16 << 20)]
    task_memory: u64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
}

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = Args::parse();
    let tmp = tempfile::tempdir()?;
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| tmp.path().join("manager"));
    let config = SimConfig {
        workers: args.workers,
        tasks: args.tasks,
        scheduler: args.scheduler,
        data_dir,
        capacity: Capacity {
            cpus: 64.0,
            memory: 256 << 30,
            disk: 1 << 40,
        },
        task_cpu: args.task_cpu,
        task_memory: args.task_memory,
        timeout: Duration::from_secs(args.timeout),
        progress: true,
    };
    let report = actix_web::rt::System::new().block_on(async move {
        let (report, _cluster) = run(&config).await?;
        anyhow::Ok(report)
    })?;
    if let Some(peak) = peak_rss_bytes() {
        eprintln!(
            "peak resident memory {:.0} MiB ({:.0} bytes per task, manager and workers together)",
            peak as f64 / (1 << 20) as f64,
            peak as f64 / args.tasks.max(1) as f64
        );
    }
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// The process's peak resident set (VmHWM), from /proc.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
