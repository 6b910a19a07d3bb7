//! The fault simulation, tested: 1,000 seeds keep every promise, a seed replays exactly, a
//! failure is shrunk and says how to replay it, and each planted bug is found.

use super::*;
use crate::sim::planted::{self, Bug};

/// Seeds run by CI: each is a whole run with faults, healing and the final checks.
const CI_SEEDS: u64 = 1000;

/// Run `seeds` over two threads with `bug` planted; the seeds that broke a promise.
fn failing(seeds: std::ops::Range<u64>, bug: Option<Bug>, stop_at_first: bool) -> Vec<u64> {
    let next = std::sync::atomic::AtomicU64::new(seeds.start);
    let found = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                planted::plant(bug);
                let options = Options::default();
                loop {
                    if stop_at_first && found.lock().is_ok_and(|f| !f.is_empty()) {
                        break;
                    }
                    let seed = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if seed >= seeds.end {
                        break;
                    }
                    if run(seed, &options).violation.is_some()
                        && let Ok(mut f) = found.lock()
                    {
                        f.push(seed);
                    }
                }
                planted::plant(None);
            });
        }
    });
    let mut found = found.into_inner().unwrap_or_default();
    found.sort();
    found
}

#[test]
fn a_thousand_seeds_of_faults_keep_every_promise() {
    let failed = failing(0..CI_SEEDS, None, false);
    if let Some(&seed) = failed.first() {
        let outcome = shrink(seed, &Options::default());
        panic!(
            "{} of {CI_SEEDS} seeds broke a promise ({failed:?}); the first, shrunk:\n{}",
            failed.len(),
            report(&outcome)
        );
    }
}

#[test]
fn a_seed_replays_exactly() {
    let options = Options {
        trace: true,
        ..Options::default()
    };
    let (a, b) = (run(7, &options), run(7, &options));
    assert!(a.events > 1000, "a run does something: {} events", a.events);
    assert_eq!(a.trace, b.trace);
    assert_ne!(a.trace, run(8, &options).trace);
}

#[test]
fn a_failure_is_shrunk_to_the_fewest_actions_and_says_how_to_replay_it() {
    let seeds = failing(0..CI_SEEDS, Some(Bug::FailedStopNotRetried), true);
    let seed = *seeds.first().expect("the planted bug is found");
    planted::plant(Some(Bug::FailedStopNotRetried));
    let full = run(seed, &Options::default());
    let shrunk = shrink(seed, &Options::default());
    planted::plant(None);
    assert!(shrunk.violation.is_some());
    assert!(shrunk.actions <= full.actions);
    assert!(!shrunk.trace.is_empty());
    let text = report(&shrunk);
    assert!(
        text.contains(&format!("--seed {seed} --actions {}", shrunk.actions)),
        "{text}"
    );
}

fn finds(bug: Bug) {
    let seeds = failing(0..CI_SEEDS, Some(bug), true);
    assert!(
        !seeds.is_empty(),
        "{bug:?} planted, yet {CI_SEEDS} seeds kept every promise"
    );
    planted::plant(Some(bug));
    let outcome = shrink(seeds[0], &Options::default());
    planted::plant(None);
    eprintln!(
        "{bug:?} found by seed {}: {}",
        seeds[0],
        outcome.violation.map(|v| v.what).unwrap_or_default()
    );
}

#[test]
fn the_simulation_finds_a_report_of_an_older_attempt_taken_as_current() {
    finds(Bug::StaleReportIsCurrent);
}

#[test]
fn the_simulation_finds_a_stop_answered_and_then_forgotten() {
    finds(Bug::EarlyStopForgotten);
}

#[test]
fn the_simulation_finds_a_failed_docker_stop_never_retried() {
    finds(Bug::FailedStopNotRetried);
}

#[test]
fn the_simulation_finds_a_worker_dead_at_the_managers_start_never_down() {
    finds(Bug::SilentFromStartNeverDown);
}

#[test]
fn the_simulation_finds_a_worker_dropping_what_the_manager_never_acknowledged() {
    finds(Bug::DropUnacknowledged);
}
