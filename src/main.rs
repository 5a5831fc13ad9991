//! The `mxkeys` binary: everything lives in the library; see `mxkeys::cli`.

fn main() -> std::process::ExitCode {
    tune_malloc();
    mxkeys::cli::main()
}

/// Grows glibc's heaps 4 MiB at a time instead of page by page: reading a
/// large acme.json allocates a little per entry on two threads, and each
/// growth was an `mprotect` (about 600 at 10,000 entries). 4% faster there
/// (BENCHMARKS.md, "acme.json ingest"); the padding is address space, not
/// memory, until it is used.
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_TOP_PAD, 4 << 20);
    }
}
