//! `postern`: see the library for everything it does.

fn main() -> std::process::ExitCode {
    postern_cli::main()
}
