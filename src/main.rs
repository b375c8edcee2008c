/// mimalloc instead of the system allocator: decoding a webhook allocates many small strings
/// and maps, and the system allocator's free lists were a tenth of the time per event
/// (`benches/ingest.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    watchstate::cli::main()
}
