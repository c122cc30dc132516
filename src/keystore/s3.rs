//! The S3 [`ObjectStore`] through the AWS SDK. Credentials, region and endpoint come from the
//! standard AWS SDK chain (IRSA included); `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` point it
//! elsewhere (LocalStack in the tests).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_s3::Client;
use aws_sdk_s3::config::interceptors::BeforeDeserializationInterceptorContextRef;
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_s3::error::{BoxError, DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, DateTime, DateTimeFormat};
use futures::future::BoxFuture;

use super::{Condition, Fetched, Listed, ListedObject, ObjectError, ObjectStore, Put, Swap};
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

    fn put_if<'a>(
        &'a self,
        key: &'a str,
        body: Vec<u8>,
        condition: Condition,
    ) -> BoxFuture<'a, Result<Swap, ObjectError>> {
        Box::pin(async move {
            let request = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(key)
                .content_type("application/json")
                .body(ByteStream::from(body));
            let request = match condition {
                Condition::Absent => request.if_none_match("*"),
                Condition::Unchanged(etag) => request.if_match(etag),
            };
            match request.send().await {
                Ok(output) => Ok(Swap::Written(output.e_tag().map(str::to_owned))),
                // 412: the condition failed; 409: a concurrent conditional write of the same
                // name; 404: If-Match on an object that is gone.
                Err(SdkError::ServiceError(service))
                    if matches!(service.raw().status().as_u16(), 412 | 409 | 404) =>
                {
                    Ok(Swap::Lost)
                }
                Err(err) => Err(error("PutObject", &err)),
            }
        })
    }

    fn get<'a>(
        &'a self,
        key: &'a str,
        max_bytes: usize,
    ) -> BoxFuture<'a, Result<Option<Fetched>, ObjectError>> {
        Box::pin(async move {
            let date = ServerDate::default();
            let result = self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(key)
                .customize()
                .interceptor(date.clone())
                .send()
                .await;
            let output = match result {
                Ok(output) => output,
                Err(SdkError::ServiceError(service)) if service.err().is_no_such_key() => {
                    return Ok(None);
                }
                Err(err) => return Err(error("GetObject", &err)),
            };
            let age = match (date.get(), output.last_modified()) {
                (Some(now), Some(written)) => {
                    let seconds = now.secs().saturating_sub(written.secs());
                    Some(jiff::SignedDuration::from_secs(seconds))
                }
                _ => None,
            };
            let etag = output.e_tag().map(str::to_owned);
            let too_large = |length: usize| length > max_bytes;
            // Known too large from its length: the connection is dropped unread.
            if output
                .content_length()
                .is_some_and(|length| too_large(usize::try_from(length).unwrap_or(usize::MAX)))
            {
                return Ok(Some(Fetched {
                    body: None,
                    etag,
                    age,
                }));
            }
            let mut stream = output.body;
            let mut body = Vec::new();
            while let Some(chunk) = stream.try_next().await.map_err(|e| ObjectError {
                operation: "GetObject",
                code: "NetworkError".to_owned(),
                message: e.to_string(),
            })? {
                if too_large(body.len() + chunk.len()) {
                    return Ok(Some(Fetched {
                        body: None,
                        etag,
                        age,
                    }));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(Some(Fetched {
                body: Some(body),
                etag,
                age,
            }))
        })
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        max_objects: usize,
    ) -> BoxFuture<'a, Result<Listed, ObjectError>> {
        Box::pin(async move {
            let mut listed = Listed::default();
            let mut pages = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|err| error("ListObjectsV2", &err))?;
                for object in page.contents() {
                    let Some(key) = object.key() else { continue };
                    if listed.objects.len() == max_objects {
                        listed.more = true;
                        return Ok(listed);
                    }
                    listed.objects.push(ListedObject {
                        key: key.to_owned(),
                        size: object.size().map_or(0, |s| u64::try_from(s).unwrap_or(0)),
                    });
                }
            }
            Ok(listed)
        })
    }
}

/// Keeps the `Date` header of a response: the store's clock, by which a claim's age is judged.
#[derive(Clone, Debug, Default)]
struct ServerDate(Arc<Mutex<Option<DateTime>>>);

impl ServerDate {
    fn get(&self) -> Option<DateTime> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Intercept for ServerDate {
    fn name(&self) -> &'static str {
        "ServerDate"
    }

    fn read_after_transmit(
        &self,
        context: &BeforeDeserializationInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let date = context
            .response()
            .headers()
            .get("date")
            .and_then(|d| DateTime::from_str(d, DateTimeFormat::HttpDate).ok());
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = date;
        Ok(())
    }
}
