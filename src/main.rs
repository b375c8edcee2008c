/// jemalloc instead of the system allocator: decoding a webhook allocates many small strings
/// and maps, and the system allocator's free lists were a tenth of the time per event
/// (`benches/ingest.rs`: 8k -> 13k durable webhooks/s). It also packs the actors' items
/// tighter (`benches/actors.rs`: 385 -> 367 bytes per item). mimalloc was tried too: faster
/// than the system allocator on ingest, but slower to start actors and 17 % more memory.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    watchstate::cli::main()
}
