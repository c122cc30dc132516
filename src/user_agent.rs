//! The `User-Agent` of every Kubernetes API and AWS request kekeeper makes: `kekeeper/VERSION`
//! for the operator, `kekeeper/VERSION (COMMAND)` for a CLI command, so that the API server's
//! audit log and CloudTrail tell kekeeper's requests apart (docs/design.md, "User-Agent").

use std::sync::OnceLock;

use aws_sdk_kms::config::interceptors::BeforeTransmitInterceptorContextMut;
use aws_sdk_kms::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_kms::error::BoxError;

/// The CLI command the process runs, set once at start-up; unset for the operator and for
/// code that runs in a test.
static COMMAND: OnceLock<&'static str> = OnceLock::new();

/// Names the CLI command in the User-Agent from now on (`None`: the operator, `kekeeper run`).
/// Start-up only: a second call is ignored.
pub fn set_command(command: Option<&'static str>) {
    if let Some(command) = command {
        let _ = COMMAND.set(command);
    }
}

/// `kekeeper/VERSION`, with ` (COMMAND)` when a CLI command runs.
pub fn user_agent() -> String {
    of(COMMAND.get().copied())
}

fn of(command: Option<&str>) -> String {
    let version = env!("CARGO_PKG_VERSION");
    match command {
        Some(command) => format!("kekeeper/{version} ({command})"),
        None => format!("kekeeper/{version}"),
    }
}

/// A Kubernetes client configuration that sends [`user_agent`] with every request (kube sends
/// none of its own).
pub fn kube_config(mut config: kube::Config) -> kube::Config {
    if let Ok(value) = axum::http::HeaderValue::from_str(&user_agent()) {
        config
            .headers
            .retain(|(name, _)| name != axum::http::header::USER_AGENT);
        config.headers.push((axum::http::header::USER_AGENT, value));
    }
    config
}

/// The AWS SDK's app name: `app/kekeeper` in the `x-amz-user-agent` header of the clients built
/// from the loaded configuration (KMS, S3; the credential chain's own STS client does not get
/// it).
pub fn aws_app_name() -> Option<aws_sdk_kms::config::AppName> {
    aws_sdk_kms::config::AppName::new("kekeeper").ok()
}

/// Puts [`user_agent`] first in the `User-Agent` header of every request of an AWS SDK client
/// (KMS, S3), before the SDK's own `aws-sdk-rust/...` product tokens. After signing: SigV4 does
/// not sign the User-Agent (proxies change it), so the signature stays valid.
#[derive(Debug, Default)]
pub struct UserAgentInterceptor;

impl Intercept for UserAgentInterceptor {
    fn name(&self) -> &'static str {
        "KekeeperUserAgent"
    }

    fn modify_before_transmit(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let headers = context.request_mut().headers_mut();
        let value = match headers.get("user-agent") {
            Some(sdk) => format!("{} {sdk}", user_agent()),
            None => user_agent(),
        };
        headers.try_insert("user-agent", value)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_agent_names_the_version_and_the_command() {
        let version = env!("CARGO_PKG_VERSION");
        assert_eq!(of(None), format!("kekeeper/{version}"));
        assert_eq!(of(Some("rotate")), format!("kekeeper/{version} (rotate)"));
        assert_eq!(aws_app_name().unwrap().as_ref(), "kekeeper");
    }
}
