//! One module per subcommand; each returns the process exit code (0 ok, 1 failure, 2 bad input).

use std::process::ExitCode;

use crate::cli::{Cli, Command, KeypairCommand};

pub async fn dispatch(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Run(_args) => todo!("controller"),
        Command::Crd => todo!("controller"),
        Command::Test(_args) => todo!("engine"),
        Command::Policy(_args) => todo!("engine"),
        Command::Rotate(_args) => todo!("controller"),
        Command::Keypair(KeypairCommand::Generate(_args)) => todo!("engine"),
        Command::Encrypt(_args) => todo!("engine"),
        Command::Decrypt(_args) => todo!("engine"),
    }
}
