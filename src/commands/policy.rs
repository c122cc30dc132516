//! `kekeeper policy`

use std::process::ExitCode;

use crate::cli::PolicyArgs;

pub async fn execute(_args: PolicyArgs) -> ExitCode {
    todo!("engine")
}
