//! The AWS SDK implementation of [`super::Kms`].
//!
//! Credentials and settings come from the standard AWS SDK chain (environment, profile, IRSA
//! web identity). The SDK itself honours `AWS_ENDPOINT_URL_KMS` / `AWS_ENDPOINT_URL`, which is
//! how tests and the demo point kekeeper at LocalStack.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_kms::Client;
use aws_sdk_kms::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_kms::operation::RequestId;
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::DataKeyPairSpec;
use zeroize::Zeroizing;

use super::{
    EncryptionContext, GeneratedKeyPair, KeyDescription, KeyPairSpec, Kms, KmsError, KmsErrorKind,
    KmsOperation, MultiRegionKey,
};
use crate::arn::AliasArn;
use crate::user_agent::UserAgentInterceptor;

/// KMS through the AWS SDK; one client per region (the region comes from the alias or key
/// ARN), built lazily from one shared `SdkConfig`. Cloning shares the clients.
#[derive(Clone, Debug)]
pub struct SdkKms {
    sdk_config: SdkConfig,
    clients: Arc<Mutex<HashMap<String, Client>>>,
}

impl SdkKms {
    /// Loads the standard AWS configuration once, with timeouts so a hung endpoint surfaces as
    /// a `Timeout` KMS error instead of a stuck reconcile.
    pub async fn from_env() -> Self {
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(5))
            .operation_attempt_timeout(Duration::from_secs(20))
            .operation_timeout(Duration::from_secs(60))
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).timeout_config(timeouts);
        if let Some(app_name) = crate::user_agent::aws_app_name() {
            loader = loader.app_name(app_name);
        }
        Self::new(loader.load().await)
    }

    /// From an explicit configuration (tests point it at an emulator or a fault proxy).
    pub fn new(sdk_config: SdkConfig) -> Self {
        SdkKms {
            sdk_config,
            clients: Arc::default(),
        }
    }

    pub fn sdk_config(&self) -> &SdkConfig {
        &self.sdk_config
    }

    /// The region the AWS chain resolved (`AWS_REGION`, profile, IMDS): the operator's region
    /// and the default homeRegion.
    pub fn operator_region(&self) -> Option<&str> {
        self.sdk_config.region().map(Region::as_ref)
    }

    /// The KMS client for `region`, created on first use.
    pub fn client(&self, region: &str) -> Client {
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        clients
            .entry(region.to_owned())
            .or_insert_with(|| {
                let config = aws_sdk_kms::config::Builder::from(&self.sdk_config)
                    .region(Region::new(region.to_owned()))
                    .interceptor(UserAgentInterceptor)
                    .build();
                Client::from_conf(config)
            })
            .clone()
    }

    /// The client for the region named in a key ARN; the default region if it names none.
    fn client_for_key(&self, key_arn: &str) -> Client {
        match key_arn.split(':').nth(3).filter(|r| !r.is_empty()) {
            Some(region) => self.client(region),
            None => self.client(self.operator_region().unwrap_or("us-east-1")),
        }
    }
}

/// The operator's region from the standard chain, without building a client.
pub async fn operator_region() -> Option<String> {
    aws_config::default_provider::region::DefaultRegionChain::builder()
        .build()
        .region()
        .await
        .map(|r| r.to_string())
}

fn data_key_pair_spec(spec: KeyPairSpec) -> DataKeyPairSpec {
    match spec {
        KeyPairSpec::Rsa2048 => DataKeyPairSpec::Rsa2048,
        KeyPairSpec::Rsa3072 => DataKeyPairSpec::Rsa3072,
        KeyPairSpec::Rsa4096 => DataKeyPairSpec::Rsa4096,
    }
}

/// Turns an SDK error into the classes the controller reacts to, keeping the AWS error code,
/// message and request id.
pub fn classify<E, R>(operation: KmsOperation, err: SdkError<E, R>) -> KmsError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
    SdkError<E, R>: RequestId + ProvideErrorMetadata,
{
    let request_id = err.request_id().map(str::to_owned);
    let detail = || error_chain(&err);
    let (kind, code, message) = match &err {
        SdkError::ServiceError(_) => {
            let code = err.code().unwrap_or("UnknownError").to_owned();
            let message = err.message().map(str::to_owned).unwrap_or_else(detail);
            (KmsErrorKind::from_code(&code), code, message)
        }
        SdkError::TimeoutError(_) => (KmsErrorKind::Timeout, "Timeout".to_owned(), detail()),
        SdkError::DispatchFailure(failure) => {
            let message = detail();
            if failure.is_timeout() {
                (KmsErrorKind::Timeout, "Timeout".to_owned(), message)
            } else if failure.is_io() {
                (KmsErrorKind::Network, "NetworkError".to_owned(), message)
            } else if message.contains("credentials") {
                (
                    KmsErrorKind::AccessDenied,
                    "CredentialsNotLoaded".to_owned(),
                    message,
                )
            } else {
                (KmsErrorKind::Network, "DispatchFailure".to_owned(), message)
            }
        }
        SdkError::ResponseError(_) => (KmsErrorKind::Network, "ResponseError".to_owned(), detail()),
        SdkError::ConstructionFailure(_) => (
            KmsErrorKind::Other,
            "ConstructionFailure".to_owned(),
            detail(),
        ),
        _ => (KmsErrorKind::Other, "UnknownError".to_owned(), detail()),
    };
    KmsError {
        operation,
        kind,
        code,
        message,
        request_id,
    }
}

/// "outer: inner: innermost", without the Debug dump `DisplayErrorContext` appends.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current = Some(err);
    while let Some(e) = current {
        let text = e.to_string();
        if !text.is_empty() && parts.last() != Some(&text) {
            parts.push(text);
        }
        current = e.source();
    }
    if parts.is_empty() {
        DisplayErrorContext(err).to_string()
    } else {
        parts.join(": ")
    }
}

fn missing(operation: KmsOperation, field: &str) -> KmsError {
    KmsError::new(
        operation,
        KmsErrorKind::Other,
        format!("the KMS response has no {field}"),
    )
}

impl SdkKms {
    async fn describe(&self, client: Client, key_id: &str) -> Result<KeyDescription, KmsError> {
        const OP: KmsOperation = KmsOperation::DescribeKey;
        let output = client
            .describe_key()
            .key_id(key_id)
            .send()
            .await
            .map_err(|e| classify(OP, e))?;
        let metadata = output
            .key_metadata()
            .ok_or_else(|| missing(OP, "KeyMetadata"))?;
        let key_arn = metadata
            .arn()
            .ok_or_else(|| missing(OP, "KeyMetadata.Arn"))?;
        let region = key_arn.split(':').nth(3).unwrap_or_default().to_owned();
        let multi_region = if metadata.multi_region() == Some(true) {
            metadata
                .multi_region_configuration()
                .map(|mrc| MultiRegionKey {
                    primary_region: mrc
                        .primary_key()
                        .and_then(|k| k.region())
                        .unwrap_or_default()
                        .to_owned(),
                    replica_regions: mrc
                        .replica_keys()
                        .iter()
                        .filter_map(|k| k.region().map(str::to_owned))
                        .collect(),
                })
        } else {
            None
        };
        Ok(KeyDescription {
            key_arn: key_arn.to_owned(),
            key_id: metadata.key_id().to_owned(),
            key_state: metadata
                .key_state()
                .map(|s| s.as_str().to_owned())
                .unwrap_or_default(),
            key_spec: metadata
                .key_spec()
                .map(|s| s.as_str().to_owned())
                .unwrap_or_default(),
            key_usage: metadata
                .key_usage()
                .map(|s| s.as_str().to_owned())
                .unwrap_or_default(),
            key_manager: metadata
                .key_manager()
                .map(|s| s.as_str().to_owned())
                .unwrap_or_default(),
            region,
            multi_region,
            age: std::time::Duration::ZERO,
        })
    }
}

impl Kms for SdkKms {
    #[tracing::instrument(level = "debug", skip_all, fields(alias = %alias), err(level = "debug", Display))]
    async fn describe_key(&self, alias: &AliasArn) -> Result<KeyDescription, KmsError> {
        self.describe(self.client(alias.region()), alias.as_str())
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(key = %key_arn), err(level = "debug", Display))]
    async fn describe_key_arn(&self, key_arn: &str) -> Result<KeyDescription, KmsError> {
        self.describe(self.client_for_key(key_arn), key_arn).await
    }
    #[tracing::instrument(
        level = "debug",
        skip_all,
        fields(alias = %alias, spec = %spec, organization_id = %context.organization_id),
        err(level = "debug", Display)
    )]
    async fn generate_key_pair(
        &self,
        alias: &AliasArn,
        spec: KeyPairSpec,
        context: &EncryptionContext,
    ) -> Result<GeneratedKeyPair, KmsError> {
        const OP: KmsOperation = KmsOperation::GenerateDataKeyPairWithoutPlaintext;
        let output = self
            .client(alias.region())
            .generate_data_key_pair_without_plaintext()
            .key_id(alias.as_str())
            .key_pair_spec(data_key_pair_spec(spec))
            .encryption_context(&context.key, &context.organization_id)
            .send()
            .await
            .map_err(|e| classify(OP, e))?;
        Ok(GeneratedKeyPair {
            kms_key_arn: output
                .key_id()
                .ok_or_else(|| missing(OP, "KeyId"))?
                .to_owned(),
            spec,
            public_key_der: output
                .public_key()
                .ok_or_else(|| missing(OP, "PublicKey"))?
                .as_ref()
                .to_vec(),
            private_key_ciphertext: output
                .private_key_ciphertext_blob()
                .ok_or_else(|| missing(OP, "PrivateKeyCiphertextBlob"))?
                .as_ref()
                .to_vec(),
        })
    }

    // Never the ciphertext or the plaintext in a span.
    #[tracing::instrument(
        level = "debug",
        skip_all,
        fields(key = %kms_key_arn, organization_id = %context.organization_id),
        err(level = "debug", Display)
    )]
    async fn decrypt_private_key(
        &self,
        kms_key_arn: &str,
        ciphertext: &[u8],
        context: &EncryptionContext,
    ) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        const OP: KmsOperation = KmsOperation::Decrypt;
        let output = self
            .client_for_key(kms_key_arn)
            .decrypt()
            .key_id(kms_key_arn)
            .ciphertext_blob(Blob::new(ciphertext))
            .encryption_context(&context.key, &context.organization_id)
            .send()
            .await
            .map_err(|e| classify(OP, e))?;
        let plaintext = output.plaintext.ok_or_else(|| missing(OP, "Plaintext"))?;
        Ok(Zeroizing::new(plaintext.into_inner()))
    }

    /// `ReEncrypt` with `SourceKeyId` (optional for symmetric keys on AWS; passed, so KMS
    /// refuses a blob under any other key) and the same encryption context on both sides
    /// (docs/design.md, "Rewrap").
    async fn re_encrypt(
        &self,
        source_key_arn: &str,
        ciphertext: &[u8],
        context: &EncryptionContext,
        destination_key_arn: &str,
    ) -> Result<Vec<u8>, KmsError> {
        const OP: KmsOperation = KmsOperation::ReEncrypt;
        let output = self
            .client_for_key(destination_key_arn)
            .re_encrypt()
            .source_key_id(source_key_arn)
            .destination_key_id(destination_key_arn)
            .ciphertext_blob(Blob::new(ciphertext))
            .source_encryption_context(&context.key, &context.organization_id)
            .destination_encryption_context(&context.key, &context.organization_id)
            .send()
            .await
            .map_err(|e| classify(OP, e))?;
        let blob = output
            .ciphertext_blob
            .ok_or_else(|| missing(OP, "CiphertextBlob"))?;
        Ok(blob.into_inner())
    }
}
