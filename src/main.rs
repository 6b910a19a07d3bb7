//! The `cube` binary: everything it does is a library call (see `cube::cli`).

fn main() -> std::process::ExitCode {
    cube::cli::main()
}
