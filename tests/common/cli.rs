//! Running the `kekeeper` binary from the tests.

use std::path::Path;
use std::process::Stdio;

/// A finished `kekeeper` command: its exit code and output.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The run of `kekeeper ARGS`, printed to the test's log.
    pub fn of(args: &[&str], output: &std::process::Output) -> Run {
        let run = Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        };
        eprintln!(
            "$ kekeeper {}\nexit {}\n--- stdout\n{}--- stderr\n{}",
            args.join(" "),
            run.code,
            run.stdout,
            run.stderr
        );
        run
    }
}

/// `kekeeper ARGS` against the cluster of `kubeconfig` and the test KMS, with the test
/// credentials and no AWS profile.
pub async fn kekeeper_in(kubeconfig: &Path, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_kekeeper"))
        .args(args)
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_PROFILE")
        .env("KUBECONFIG", kubeconfig)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", super::REGION)
        .env("AWS_ENDPOINT_URL_KMS", super::kms_endpoint())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .expect("run kekeeper")
}
