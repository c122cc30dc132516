//! `kekeeper rotate`

use std::process::ExitCode;

use crate::cli::RotateArgs;

pub async fn execute(_args: RotateArgs) -> ExitCode {
    todo!("controller")
}
