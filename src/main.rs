//! The `cube` binary: everything it does is a library call (see `cube::cli`).
//!
//! It keeps the system allocator: mimalloc and jemalloc made the simulation faster, but under
//! wrk they added 25–130 ms stalls to the p99 of `POST /tasks` (BENCHMARKS.md).

fn main() -> std::process::ExitCode {
    cube::cli::main()
}
