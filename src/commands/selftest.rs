//! `kekeeper test`

use std::process::ExitCode;

use crate::cli::TestArgs;

pub async fn execute(_args: TestArgs) -> ExitCode {
    todo!("engine")
}
