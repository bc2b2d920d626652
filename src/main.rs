//! The `sluice` binary: the command with the built-in connectors.

fn main() -> std::process::ExitCode {
    sluice::run()
}
