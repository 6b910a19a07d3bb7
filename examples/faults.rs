//! The soak runner of the seeded fault simulation: run any number of seeds, print seeds per
//! second, and for a failing seed the shortest trace found and the command that replays it.
//!
//! ```sh
//! cargo run --release --example faults -- --seeds 100000          # a soak
//! cargo run --release --example faults -- --seed 42 --trace       # one seed, every event
//! cargo run --release --example faults -- --seed 42 --actions 17  # a shrunk failure, replayed
//! ```
//!
//! Seeds are spread over every core; a run is a pure function of its seed, so the order they
//! finish in does not matter. Exits non-zero when any seed breaks a promise.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cube::sim::faults::{self, Options, Outcome};

struct Args {
    seeds: u64,
    from: u64,
    seed: Option<u64>,
    actions: Option<usize>,
    trace: bool,
    threads: usize,
}

fn parse() -> anyhow::Result<Args> {
    let mut args = Args {
        seeds: 1000,
        from: 0,
        seed: None,
        actions: None,
        trace: false,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match flag.as_str() {
            "--seeds" => args.seeds = value("--seeds")?.parse()?,
            "--from" => args.from = value("--from")?.parse()?,
            "--seed" => args.seed = Some(value("--seed")?.parse()?),
            "--actions" => args.actions = Some(value("--actions")?.parse()?),
            "--threads" => args.threads = value("--threads")?.parse::<usize>()?.max(1),
            "--trace" => args.trace = true,
            "-h" | "--help" => {
                println!(
                    "usage: faults [--seeds N] [--from S] [--threads T] | --seed S [--actions N] [--trace]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}; try --help"),
        }
    }
    Ok(args)
}

fn main() -> anyhow::Result<ExitCode> {
    let args = parse()?;
    if let Some(seed) = args.seed {
        let options = Options {
            max_actions: args.actions,
            trace: args.trace,
            ..Options::default()
        };
        let outcome = faults::run(seed, &options);
        if args.trace {
            for line in &outcome.trace {
                println!("{line}");
            }
        }
        return Ok(match &outcome.violation {
            None => {
                println!(
                    "seed {seed}: every promise kept ({} actions, {} events)",
                    outcome.actions, outcome.events
                );
                ExitCode::SUCCESS
            }
            Some(_) => {
                print!("{}", faults::report(&faults::shrink(seed, &options)));
                ExitCode::FAILURE
            }
        });
    }

    let next = Arc::new(AtomicU64::new(args.from));
    let end = args.from + args.seeds;
    let failures: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    let totals: Arc<Mutex<BTreeMap<&'static str, u64>>> = Arc::default();
    let events = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let threads: Vec<_> = (0..args.threads)
        .map(|_| {
            let (next, failures, totals, events) = (
                next.clone(),
                failures.clone(),
                totals.clone(),
                events.clone(),
            );
            std::thread::spawn(move || {
                let options = Options::default();
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= end {
                        break;
                    }
                    let outcome = faults::run(seed, &options);
                    events.fetch_add(outcome.events, Ordering::Relaxed);
                    if let Ok(mut t) = totals.lock() {
                        for (k, v) in &outcome.counts {
                            *t.entry(k).or_insert(0) += v;
                        }
                    }
                    if outcome.violation.is_some()
                        && let Ok(mut f) = failures.lock()
                    {
                        f.push(outcome);
                    }
                }
            })
        })
        .collect();
    let mut last = Instant::now();
    while threads.iter().any(|t| !t.is_finished()) {
        std::thread::sleep(Duration::from_millis(100));
        if last.elapsed() >= Duration::from_secs(10) {
            let done = next.load(Ordering::Relaxed).min(end) - args.from;
            eprintln!(
                "{done}/{} seeds, {:.0} seeds/s",
                args.seeds,
                done as f64 / started.elapsed().as_secs_f64()
            );
            last = Instant::now();
        }
    }
    for t in threads {
        let _ = t.join();
    }
    let seconds = started.elapsed().as_secs_f64();
    let failures = failures.lock().map(|f| f.clone()).unwrap_or_default();
    println!(
        "{} seeds ({}..{}) in {seconds:.1} s: {:.0} seeds/s, {:.0} events/s, {} broke a promise",
        args.seeds,
        args.from,
        end,
        args.seeds as f64 / seconds,
        events.load(Ordering::Relaxed) as f64 / seconds,
        failures.len()
    );
    if let Ok(t) = totals.lock() {
        let summary: Vec<String> = t.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("faults injected: {}", summary.join(", "));
    }
    let mut failures = failures;
    failures.sort_by_key(|o| o.seed);
    if let Some(first) = failures.first() {
        let seeds: Vec<String> = failures.iter().map(|o| o.seed.to_string()).collect();
        println!("failing seeds: {}", seeds.join(" "));
        print!(
            "{}",
            faults::report(&faults::shrink(first.seed, &Options::default()))
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
