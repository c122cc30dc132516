//! `kekeeper decrypt`

use std::process::ExitCode;

use crate::cli::DecryptArgs;

pub async fn execute(_args: DecryptArgs) -> ExitCode {
    todo!("engine")
}
