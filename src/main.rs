fn main() -> std::process::ExitCode {
    watchstate::cli::main()
}
