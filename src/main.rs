//! The `kedge` binary: hands argv to the CLI and turns its outcome into an exit code (64 for a
//! bad configuration, as sysexits).

fn main() -> std::process::ExitCode {
    kedge::cli::main()
}
