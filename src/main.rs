//! The `mxkeys` binary: everything lives in the library; see `mxkeys::cli`.

fn main() -> std::process::ExitCode {
    mxkeys::cli::main()
}
