use std::process::ExitCode;

use clap::Parser;
use kekeeper::cli::Cli;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    kekeeper::telemetry::init(cli.log_json);
    kekeeper::commands::dispatch(cli).await
}
