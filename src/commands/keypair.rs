//! `kekeeper keypair generate`

use std::process::ExitCode;

use crate::cli::KeypairGenerateArgs;

pub async fn execute(_args: KeypairGenerateArgs) -> ExitCode {
    todo!("engine")
}
