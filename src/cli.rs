//! The `watchstate` command.

use crate::config::{Config, LogFormat};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "watchstate",
    version,
    about = "Keeps watch state (played, unplayed, resume position) in sync across Plex, Jellyfin and Emby"
)]
pub struct Cli {
    /// The configuration file.
    #[arg(
        long,
        short = 'c',
        global = true,
        default_value = "./config.toml",
        env = "WATCHSTATE_CONFIG"
    )]
    pub config: PathBuf,
    /// Log format: readable text or JSON lines (overrides log.format).
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormatArg>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormatArg {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service (the default).
    Serve,
    /// Validate the configuration and exit (0 when valid).
    CheckConfig,
    /// Ask every configured backend who it is and read the user's library: finds a wrong
    /// url, server_id, token or user_id (0 when every backend answers as configured).
    CheckServers,
    /// Print the API key (generated and stored at first use when server.api_key is unset).
    Apikey,
}

/// Run the command line; the process exits with the returned code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let format = match cli.log_format {
        Some(LogFormatArg::Json) => LogFormat::Json,
        Some(LogFormatArg::Text) => LogFormat::Text,
        None => config.log.format,
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig => {
            let pairs = config.pairs().count();
            println!(
                "{}: ok ({} users, {} backends)",
                cli.config.display(),
                config.users.len(),
                pairs
            );
            ExitCode::SUCCESS
        }
        Command::CheckServers => {
            let rt = match runtime(tokio::runtime::Builder::new_current_thread()) {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            let checks = rt.block_on(crate::check::check_servers(&config));
            for c in &checks {
                println!("{c}");
            }
            if checks.iter().all(|c| c.ok) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Apikey => {
            if let Some(k) = &config.server.api_key {
                println!("{}", k.trim());
                return ExitCode::SUCCESS;
            }
            // The generated key is kept beside the database too: no need to wait for the
            // database lock while the service runs.
            if let Some(k) = crate::store::SledStore::read_key_file(&config.storage.path) {
                println!("{k}");
                return ExitCode::SUCCESS;
            }
            let store = match crate::store::SledStore::open(
                &config.storage.path,
                config.storage.cache_bytes,
            ) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match store.api_key(config.server.api_key.as_deref()) {
                Ok(k) => {
                    println!("{k}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Serve => {
            // Held until the end of `serve`: dropping it writes out the queued log lines.
            let _logs = crate::logging::init(format, config.log.level.as_deref());
            let rt = match runtime(tokio::runtime::Builder::new_multi_thread()) {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            match rt.block_on(crate::app::serve_until_signal(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// The async runtime a command runs on; its failure is said on stderr.
fn runtime(mut builder: tokio::runtime::Builder) -> Result<tokio::runtime::Runtime, ExitCode> {
    builder.enable_all().build().map_err(|e| {
        eprintln!("error: cannot start the async runtime: {e}");
        ExitCode::FAILURE
    })
}
