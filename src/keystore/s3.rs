//! The S3 [`ObjectStore`] through the AWS SDK. Credentials, region and endpoint come from the
//! standard AWS SDK chain (IRSA included); `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` point it
//! elsewhere (LocalStack in the tests).

use std::time::Duration;

use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_s3::Client;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use futures::future::BoxFuture;

use super::{ObjectError, ObjectStore, Put};
use crate::user_agent::UserAgentInterceptor;

#[derive(Clone, Debug)]
pub struct S3Objects {
    client: Client,
    bucket: String,
}

impl S3Objects {
    /// The store of `bucket`, from an SDK configuration (the operator shares the one it loaded
    /// for KMS). Path-style addressing (`ENDPOINT/BUCKET/KEY`) when the endpoint is overridden
    /// (`AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`: LocalStack, MinIO, where `BUCKET.HOST` does
    /// not resolve), unless `KEKEEPER_S3_FORCE_PATH_STYLE=false`; `=true` forces it.
    pub fn new(sdk_config: &SdkConfig, bucket: &str) -> Self {
        let overridden = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
            .iter()
            .any(|name| std::env::var(name).is_ok_and(|v| !v.is_empty()));
        let path_style = match std::env::var("KEKEEPER_S3_FORCE_PATH_STYLE").as_deref() {
            Ok("true") => true,
            Ok("false") => false,
            _ => overridden,
        };
        let config = aws_sdk_s3::config::Builder::from(sdk_config)
            .force_path_style(path_style)
            .build();
        Self::from_conf(config, bucket)
    }

    /// The store of `bucket` through a client of `config` (tests set path style themselves),
    /// its requests carrying kekeeper's User-Agent.
    pub fn from_conf(config: aws_sdk_s3::Config, bucket: &str) -> Self {
        let config = config
            .to_builder()
            .interceptor(UserAgentInterceptor)
            .build();
        S3Objects {
            client: Client::from_conf(config),
            bucket: bucket.to_owned(),
        }
    }

    /// The standard AWS configuration, with timeouts so an unreachable store surfaces as an
    /// error rather than a stuck reconcile.
    pub async fn sdk_config() -> SdkConfig {
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(5))
            .operation_attempt_timeout(Duration::from_secs(20))
            .operation_timeout(Duration::from_secs(60))
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).timeout_config(timeouts);
        if let Some(app_name) = crate::user_agent::aws_app_name() {
            loader = loader.app_name(app_name);
        }
        loader.load().await
    }
}

fn error<E, R>(operation: &'static str, err: &SdkError<E, R>) -> ObjectError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let (code, message) = match err {
        SdkError::ServiceError(service) => (
            service.err().code().unwrap_or("ServiceError").to_owned(),
            service
                .err()
                .message()
                .map_or_else(|| DisplayErrorContext(err).to_string(), str::to_owned),
        ),
        SdkError::TimeoutError(_) => ("Timeout".to_owned(), DisplayErrorContext(err).to_string()),
        SdkError::DispatchFailure(_) => (
            "NetworkError".to_owned(),
            DisplayErrorContext(err).to_string(),
        ),
        _ => ("Unknown".to_owned(), DisplayErrorContext(err).to_string()),
    };
    ObjectError {
        operation,
        code,
        message,
    }
}

impl ObjectStore for S3Objects {
    fn put_new<'a>(
        &'a self,
        key: &'a str,
        body: Vec<u8>,
    ) -> BoxFuture<'a, Result<Put, ObjectError>> {
        Box::pin(async move {
            let result = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(key)
                .if_none_match("*")
                .content_type("application/json")
                .body(ByteStream::from(body))
                .send()
                .await;
            match result {
                Ok(_) => Ok(Put::Created),
                // 412: an object of that name exists; 409: a concurrent conditional write of
                // the same name is in flight (it will exist).
                Err(SdkError::ServiceError(service))
                    if matches!(service.raw().status().as_u16(), 412 | 409) =>
                {
                    Ok(Put::Exists)
                }
                Err(err) => Err(error("PutObject", &err)),
            }
        })
    }

    fn put<'a>(&'a self, key: &'a str, body: Vec<u8>) -> BoxFuture<'a, Result<(), ObjectError>> {
        Box::pin(async move {
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(key)
                .content_type("application/json")
                .body(ByteStream::from(body))
                .send()
                .await
                .map(|_| ())
                .map_err(|err| error("PutObject", &err))
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, ObjectError>> {
        Box::pin(async move {
            let result = self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await;
            match result {
                Ok(output) => {
                    let body = output.body.collect().await.map_err(|e| ObjectError {
                        operation: "GetObject",
                        code: "NetworkError".to_owned(),
                        message: e.to_string(),
                    })?;
                    Ok(Some(body.into_bytes().to_vec()))
                }
                Err(SdkError::ServiceError(service)) if service.err().is_no_such_key() => Ok(None),
                Err(err) => Err(error("GetObject", &err)),
            }
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>, ObjectError>> {
        Box::pin(async move {
            let mut keys = Vec::new();
            let mut pages = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|err| error("ListObjectsV2", &err))?;
                keys.extend(
                    page.contents()
                        .iter()
                        .filter_map(|o| o.key().map(str::to_owned)),
                );
            }
            Ok(keys)
        })
    }
}
