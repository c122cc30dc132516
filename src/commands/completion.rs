//! `kekeeper completion SHELL`: the shell completion script, generated from the command line's
//! definition by clap_complete (so it never falls behind a new flag).

use std::process::ExitCode;

use clap::CommandFactory;

use super::common::{EXIT_FAILED, EXIT_OK, fail};
use crate::cli::{Cli, CompletionArgs};

pub fn execute(args: CompletionArgs) -> ExitCode {
    let mut command = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, "kekeeper", &mut script);
    match std::io::Write::write_all(&mut std::io::stdout().lock(), &script) {
        Ok(()) => ExitCode::from(EXIT_OK),
        Err(e) => fail(
            EXIT_FAILED,
            format!("cannot write the completion script: {e}"),
        ),
    }
}
