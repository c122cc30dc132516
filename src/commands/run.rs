//! `kekeeper run`

use std::process::ExitCode;

use crate::cli::RunArgs;

pub async fn execute(_args: RunArgs) -> ExitCode {
    todo!("controller")
}
