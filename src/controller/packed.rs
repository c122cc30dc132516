//! RecordingKeyConfigs as the controller's cache keeps them: the metadata as it is, the spec and
//! status as deflated JSON, unpacked for the one reconcile that reads them. A parsed resource
//! with its status (conditions, active pairs, history, last test) costs about 4 KiB of heap;
//! packed, about 1.5 KiB. Unpacking costs tens of microseconds, and a steady-state operator
//! reconciles rarely.

use std::borrow::Cow;
use std::sync::Arc;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::{Deserialize, Deserializer};

use crate::crd::{RecordingKeyConfig, RecordingKeyConfigSpec, RecordingKeyConfigStatus};

/// One RecordingKeyConfig, packed. The same API resource as [`RecordingKeyConfig`]: it is
/// what the controller watches and caches; it deserializes from the resource's JSON.
#[derive(Clone, Debug)]
pub struct PackedConfig {
    pub metadata: ObjectMeta,
    /// Deflated JSON of `(spec, status)`.
    body: Arc<[u8]>,
}

/// What is packed: the spec and the status, borrowed when packing.
#[derive(serde::Serialize)]
struct Body<'a> {
    spec: &'a RecordingKeyConfigSpec,
    status: &'a Option<RecordingKeyConfigStatus>,
}

#[derive(Deserialize)]
struct OwnedBody {
    spec: RecordingKeyConfigSpec,
    status: Option<RecordingKeyConfigStatus>,
}

/// A packed body that does not unpack: a bug, since only [`PackedConfig::pack`] makes one.
#[derive(Debug, thiserror::Error)]
#[error("the cached copy of {name} cannot be unpacked: {message}")]
pub struct UnpackError {
    name: String,
    message: String,
}

/// Fast, and small inputs gain little from more effort.
const LEVEL: u8 = 1;

impl PackedConfig {
    pub fn pack(rkc: RecordingKeyConfig) -> Self {
        let body = Body {
            spec: &rkc.spec,
            status: &rkc.status,
        };
        // Serializing these types into memory cannot fail.
        let json = serde_json::to_vec(&body).unwrap_or_default();
        PackedConfig {
            metadata: rkc.metadata,
            body: miniz_oxide::deflate::compress_to_vec(&json, LEVEL).into(),
        }
    }

    pub fn unpack(&self) -> Result<RecordingKeyConfig, UnpackError> {
        let fail = |message: String| UnpackError {
            name: self.metadata.name.clone().unwrap_or_default(),
            message,
        };
        let json = miniz_oxide::inflate::decompress_to_vec(&self.body)
            .map_err(|err| fail(format!("{err:?}")))?;
        let body: OwnedBody = serde_json::from_slice(&json).map_err(|e| fail(e.to_string()))?;
        let mut rkc =
            RecordingKeyConfig::new(self.metadata.name.as_deref().unwrap_or_default(), body.spec);
        rkc.metadata = self.metadata.clone();
        rkc.status = body.status;
        Ok(rkc)
    }

    /// Bytes of the packed spec and status.
    #[cfg(test)]
    fn packed_len(&self) -> usize {
        self.body.len()
    }
}

impl<'de> Deserialize<'de> for PackedConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        RecordingKeyConfig::deserialize(deserializer).map(PackedConfig::pack)
    }
}

impl Resource for PackedConfig {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        RecordingKeyConfig::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        RecordingKeyConfig::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        RecordingKeyConfig::version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        RecordingKeyConfig::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resource_unpacks_as_it_was_packed_and_smaller() {
        let text = include_str!("../../tests/fixtures/status/ready.json");
        let rkc: RecordingKeyConfig = serde_json::from_str(text).unwrap();
        let packed: PackedConfig = serde_json::from_str(text).unwrap();
        assert_eq!(
            serde_json::to_value(packed.unpack().unwrap()).unwrap(),
            serde_json::to_value(&rkc).unwrap()
        );
        assert_eq!(packed.metadata, rkc.metadata);
        let json = serde_json::to_vec(&(&rkc.spec, &rkc.status)).unwrap();
        assert!(
            packed.packed_len() * 2 < json.len(),
            "{} packed of {} bytes",
            packed.packed_len(),
            json.len()
        );
        assert_eq!(
            PackedConfig::kind(&()),
            RecordingKeyConfig::kind(&()),
            "the same API resource"
        );
        assert_eq!(
            PackedConfig::url_path(&(), Some("ns")),
            RecordingKeyConfig::url_path(&(), Some("ns"))
        );
    }
}
