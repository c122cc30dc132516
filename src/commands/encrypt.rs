//! `kekeeper encrypt`

use std::process::ExitCode;

use crate::cli::EncryptArgs;

pub async fn execute(_args: EncryptArgs) -> ExitCode {
    todo!("engine")
}
