//! `kekeeper crd`: prints the RecordingKeyConfig CRD YAML (what `crds/` holds).

use std::process::ExitCode;

use crate::crd::crd_yaml;

pub fn execute() -> ExitCode {
    match crd_yaml() {
        Ok(yaml) => {
            print!("{yaml}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: cannot serialise the CRD: {err}");
            ExitCode::FAILURE
        }
    }
}
