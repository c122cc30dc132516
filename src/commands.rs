//! One module per subcommand; each returns the process exit code (0 ok, 1 failure, 2 bad input).

mod backup;
mod cluster;
mod common;
mod completion;
mod crd;
mod decrypt;
mod encrypt;
mod keypair;
mod policy;
mod restore;
mod rewrap;
mod rotate;
mod run;
mod selftest;
mod status;

use std::process::ExitCode;

/// For the fuzz targets (fuzz/): how a manifest or Secret file is checked and parsed.
pub use common::{Manifest, input_text, parse_manifests};

use crate::cli::{Cli, Command, KeypairCommand};

pub async fn dispatch(cli: Cli) -> ExitCode {
    crate::user_agent::set_command(cli.command.name());
    match cli.command {
        Command::Run(args) => run::execute(args).await,
        Command::Crd => crd::execute(),
        Command::Test(args) => selftest::execute(args).await,
        Command::Policy(args) => policy::execute(args).await,
        Command::Status(args) => status::execute(args).await,
        Command::Rotate(args) => rotate::execute(args).await,
        Command::Rewrap(args) => rewrap::execute(args).await,
        Command::Keypair(KeypairCommand::Generate(args)) => keypair::execute(args).await,
        Command::Encrypt(args) => encrypt::execute(args).await,
        Command::Decrypt(args) => decrypt::execute(args).await,
        Command::Backup(args) => backup::execute(args).await,
        Command::Restore(args) => restore::execute(args).await,
        Command::Completion(args) => completion::execute(args),
        Command::Version => {
            println!("kekeeper {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
    }
}
