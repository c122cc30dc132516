//! `kekeeper XX`

use std::process::ExitCode;

pub fn execute() -> ExitCode {
    todo!("controller")
}
