//! Errors LocalStack never produces (AccessDenied, Throttling, network failures, timeouts),
//! through a fault-injecting proxy in front of it, classified by the real `SdkKms`.

mod common;

use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use common::proxy::FaultProxy;
use common::{REGION, create_key, kms_endpoint, sdk_config};
use kekeeper::config::ValidatedConfig;
use kekeeper::kms::sdk::SdkKms;
use kekeeper::kms::{KeyPairSpec, Kms, KmsErrorKind, KmsOperation};
use kekeeper::selftest::{self, SelfTestStep};

fn config(alias: &kekeeper::arn::AliasArn) -> ValidatedConfig {
    ValidatedConfig {
        alias: alias.clone(),
        organization_ids: vec!["org-a".into()],
        key_pair_spec: KeyPairSpec::Rsa2048,
        home_region: REGION.into(),
        encryption_context_key: "genesys-cloud-organization-id".into(),
        replica_regions: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the KMS emulator: scripts/test.sh starts it and runs ignored tests"]
async fn access_denied_and_throttling_are_classified_with_their_request_ids() {
    let endpoint = kms_endpoint();
    let key = create_key(&endpoint, REGION, false).await;
    let proxy = FaultProxy::start(&endpoint).await;
    let kms = SdkKms::new(sdk_config(&proxy.endpoint()).await);

    // Forwarded untouched when no fault is set.
    selftest::run(&kms, &config(&key.alias), "org-a")
        .await
        .unwrap();

    proxy.fail(
        "GenerateDataKeyPairWithoutPlaintext",
        400,
        "AccessDeniedException",
        "User: arn:aws:iam::000000000000:role/kekeeper is not authorized to perform: kms:GenerateDataKeyPairWithoutPlaintext",
    );
    let failure = selftest::run(&kms, &config(&key.alias), "org-a")
        .await
        .unwrap_err();
    assert_eq!(failure.step, SelfTestStep::GenerateKeyPair);
    let err = failure.kms_error().unwrap();
    assert_eq!(err.kind, KmsErrorKind::AccessDenied);
    assert_eq!(err.code, "AccessDeniedException");
    assert_eq!(
        err.operation,
        KmsOperation::GenerateDataKeyPairWithoutPlaintext
    );
    assert!(err.message.contains("is not authorized"), "{}", err.message);
    assert_eq!(
        err.request_id.as_deref(),
        Some(FaultProxy::request_id(1).as_str())
    );
    proxy.clear();

    proxy.fail("Decrypt", 400, "ThrottlingException", "Rate exceeded");
    let failure = selftest::run(&kms, &config(&key.alias), "org-a")
        .await
        .unwrap_err();
    assert_eq!(failure.step, SelfTestStep::DecryptPrivateKey);
    let err = failure.kms_error().unwrap();
    assert_eq!(
        (err.kind, err.code.as_str()),
        (KmsErrorKind::Throttling, "ThrottlingException")
    );
    assert_eq!(
        err.request_id.as_deref(),
        Some(FaultProxy::request_id(2).as_str())
    );
    proxy.clear();

    proxy.fail(
        "DescribeKey",
        400,
        "LimitExceededException",
        "too many requests",
    );
    let err = kms.describe_key(&key.alias).await.unwrap_err();
    assert_eq!(
        (err.kind, err.code.as_str()),
        (KmsErrorKind::Throttling, "LimitExceededException")
    );
    proxy.fail("DescribeKey", 500, "KMSInternalException", "internal");
    let err = kms.describe_key(&key.alias).await.unwrap_err();
    assert_eq!(err.kind, KmsErrorKind::KeyUnavailable);
    assert!(err.kind.is_transient());
    proxy.clear();
    assert!(kms.describe_key(&key.alias).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the KMS emulator: scripts/test.sh starts it and runs ignored tests"]
async fn the_sdk_retries_throttling_and_reports_it_when_retries_run_out() {
    let endpoint = kms_endpoint();
    let key = create_key(&endpoint, REGION, false).await;
    let proxy = FaultProxy::start(&endpoint).await;
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(proxy.endpoint())
        .region(aws_config::Region::new(REGION))
        .credentials_provider(aws_sdk_kms::config::Credentials::new(
            "test", "test", None, None, "t",
        ))
        .retry_config(
            aws_config::retry::RetryConfig::standard()
                .with_max_attempts(3)
                .with_initial_backoff(Duration::from_millis(10)),
        )
        .load()
        .await;
    let kms = SdkKms::new(config);
    proxy.fail("DescribeKey", 400, "ThrottlingException", "Rate exceeded");
    let err = kms.describe_key(&key.alias).await.unwrap_err();
    assert_eq!(err.kind, KmsErrorKind::Throttling);
    assert_eq!(proxy.seen("DescribeKey"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the KMS emulator: scripts/test.sh starts it and runs ignored tests"]
async fn network_failures_and_timeouts_are_classified() {
    let endpoint = kms_endpoint();
    let key = create_key(&endpoint, REGION, false).await;

    // Nothing listens on a port we just released.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let kms = SdkKms::new(sdk_config(&closed).await);
    let err = kms.describe_key(&key.alias).await.unwrap_err();
    assert_eq!(err.kind, KmsErrorKind::Network, "{err:?}");
    assert_eq!(err.code, "NetworkError");
    assert!(err.kind.is_transient());

    let proxy = FaultProxy::start(&endpoint).await;
    proxy.hang("DescribeKey");
    let config = sdk_config(&proxy.endpoint()).await;
    let config = config
        .into_builder()
        .timeout_config(
            TimeoutConfig::builder()
                .operation_timeout(Duration::from_millis(500))
                .build(),
        )
        .build();
    let kms = SdkKms::new(config);
    let err = kms.describe_key(&key.alias).await.unwrap_err();
    assert_eq!(
        (err.kind, err.code.as_str()),
        (KmsErrorKind::Timeout, "Timeout"),
        "{err:?}"
    );
}
