//! RecordingKeyConfigs as the controller's cache keeps them: the name, namespace and
//! resourceVersion as they are (the watch and the cache's keys read them), everything else (the
//! rest of the metadata, the spec and the status) as deflated JSON, unpacked for the one
//! reconcile that reads it. A parsed resource with its status (conditions, active pairs,
//! history, last test) costs about 5 KiB of heap; packed, under 1 KiB. Unpacking costs tens of
//! microseconds, and a steady-state operator reconciles rarely.
//!
//! The deflate stream is primed with a typical resource ([`PRIMER`]): its compressed form is
//! the same every time and is not kept, and what follows it refers back to its text, so only
//! what differs from a typical resource (names, ids, fingerprints, times) costs bytes. Without
//! the primer, the field names, condition messages and repeated ARNs of each resource cost
//! about 1.2 KB.

use std::borrow::Cow;
use std::sync::{Arc, LazyLock};

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use miniz_oxide::deflate::core::{
    CompressorOxide, TDEFLFlush, TDEFLStatus, compress_to_output, create_comp_flags_from_zip_params,
};
use serde::{Deserialize, Deserializer};

use super::{SerializeError, to_json_vec};
use crate::crd::{RecordingKeyConfig, RecordingKeyConfigSpec, RecordingKeyConfigStatus};

/// One RecordingKeyConfig, packed. The same API resource as [`RecordingKeyConfig`]: it is
/// what the controller watches and caches; it deserializes from the resource's JSON.
#[derive(Clone, Debug)]
pub struct PackedConfig {
    /// The name, namespace and resourceVersion only; the rest is in `body`.
    pub metadata: ObjectMeta,
    /// Deflated JSON of the rest, after the primer's.
    body: Arc<[u8]>,
}

/// What is packed, borrowed when packing.
#[derive(serde::Serialize)]
struct Body<'a> {
    metadata: &'a ObjectMeta,
    spec: &'a RecordingKeyConfigSpec,
    status: &'a Option<RecordingKeyConfigStatus>,
}

#[derive(Deserialize)]
struct OwnedBody {
    metadata: ObjectMeta,
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

/// A Ready resource's body as [`PackedConfig::pack`] writes it: that of
/// `tests/fixtures/status/ready.json`, kept equal by a test (`KEKEEPER_WRITE_PRIMER=1 cargo
/// test --lib packed` writes it again). Any text works; the closer to the resources at hand,
/// the smaller they pack.
const PRIMER: &[u8] = include_bytes!("packed_primer.json");

/// Compression level. With the primer, 6 packs a typical resource smaller than 1 (about 250
/// against 355 bytes) and no slower: the fast matcher of level 1 misses the primer's strings.
const LEVEL: u8 = 6;

/// The compressed primer, flushed to a byte boundary: what every packed body follows.
static PRIMER_DEFLATED: LazyLock<Vec<u8>> = LazyLock::new(|| primed_compressor().1);

/// A compressor that has taken the primer, and the primer's compressed bytes.
fn primed_compressor() -> (Box<CompressorOxide>, Vec<u8>) {
    let flags = create_comp_flags_from_zip_params(LEVEL.into(), 0, 0);
    let mut compressor = Box::new(CompressorOxide::new(flags));
    let primer = deflate_into(&mut compressor, PRIMER, TDEFLFlush::Sync);
    (compressor, primer)
}

fn deflate_into(compressor: &mut CompressorOxide, input: &[u8], flush: TDEFLFlush) -> Vec<u8> {
    let mut out = Vec::new();
    let (status, _) = compress_to_output(compressor, input, flush, |bytes| {
        out.extend_from_slice(bytes);
        true
    });
    // Compressing into memory with an output that takes everything cannot fail.
    debug_assert!(matches!(status, TDEFLStatus::Okay | TDEFLStatus::Done));
    out
}

/// What the controller never reads: the field managers and `kubectl apply`'s copy of the object.
fn drop_unread(metadata: &mut ObjectMeta) {
    metadata.managed_fields = None;
    if let Some(annotations) = metadata.annotations.as_mut() {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
        if annotations.is_empty() {
            metadata.annotations = None;
        }
    }
}

/// A resource as the metadata kept as it is (name, namespace, resourceVersion) and the JSON of
/// the rest.
fn split(rkc: RecordingKeyConfig) -> Result<(ObjectMeta, Vec<u8>), SerializeError> {
    let RecordingKeyConfig {
        metadata: mut rest,
        spec,
        status,
        ..
    } = rkc;
    let kept = ObjectMeta {
        name: rest.name.take(),
        namespace: rest.namespace.take(),
        resource_version: rest.resource_version.take(),
        ..ObjectMeta::default()
    };
    drop_unread(&mut rest);
    let body = Body {
        metadata: &rest,
        spec: &spec,
        status: &status,
    };
    // An error, not an empty body: that would unpack as a resource without spec or status
    // (docs/design.md, "Serialisation failures are errors").
    Ok((kept, to_json_vec("the packed resource", &body)?))
}

impl PackedConfig {
    pub fn pack(rkc: RecordingKeyConfig) -> Result<Self, SerializeError> {
        let (metadata, json) = split(rkc)?;
        let (mut compressor, _) = primed_compressor();
        Ok(PackedConfig {
            metadata,
            body: deflate_into(&mut compressor, &json, TDEFLFlush::Finish).into(),
        })
    }

    pub fn unpack(&self) -> Result<RecordingKeyConfig, UnpackError> {
        let fail = |message: String| UnpackError {
            name: self.metadata.name.clone().unwrap_or_default(),
            message,
        };
        let stream = [PRIMER_DEFLATED.as_slice(), &self.body].concat();
        let text = miniz_oxide::inflate::decompress_to_vec(&stream)
            .map_err(|err| fail(format!("{err:?}")))?;
        let json = text
            .strip_prefix(PRIMER)
            .ok_or_else(|| fail("the primer did not come back".into()))?;
        let body: OwnedBody = serde_json::from_slice(json).map_err(|e| fail(e.to_string()))?;
        let mut rkc =
            RecordingKeyConfig::new(self.metadata.name.as_deref().unwrap_or_default(), body.spec);
        rkc.metadata = ObjectMeta {
            name: self.metadata.name.clone(),
            namespace: self.metadata.namespace.clone(),
            resource_version: self.metadata.resource_version.clone(),
            ..body.metadata
        };
        rkc.status = body.status;
        Ok(rkc)
    }

    /// Bytes of the packed body.
    #[cfg(test)]
    fn packed_len(&self) -> usize {
        self.body.len()
    }
}

impl<'de> Deserialize<'de> for PackedConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // A resource that cannot be packed is a watch error for that object, not an empty one.
        let rkc = RecordingKeyConfig::deserialize(deserializer)?;
        PackedConfig::pack(rkc).map_err(serde::de::Error::custom)
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
    use std::collections::BTreeMap;

    const READY: &str = include_str!("../../tests/fixtures/status/ready.json");

    /// Every status fixture (a resource in each state) comes back as it was, less what the
    /// controller never reads.
    #[test]
    fn a_resource_unpacks_as_it_was_packed() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/status");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            let mut rkc: RecordingKeyConfig = serde_json::from_str(&text).unwrap();
            drop_unread(&mut rkc.metadata);
            let packed: PackedConfig = serde_json::from_str(&text).unwrap();
            assert_eq!(
                serde_json::to_value(packed.unpack().unwrap()).unwrap(),
                serde_json::to_value(&rkc).unwrap()
            );
            seen += 1;
        }
        assert!(seen >= 10, "{seen} fixtures");
    }

    #[test]
    fn only_name_namespace_and_resource_version_stay_unpacked() {
        let mut rkc: RecordingKeyConfig = serde_json::from_str(READY).unwrap();
        rkc.metadata.finalizers = Some(vec!["example.com/keep".into()]);
        rkc.metadata.labels = Some(BTreeMap::from([("team".into(), "voice".into())]));
        rkc.metadata.annotations = Some(BTreeMap::from([
            ("kekeeper.io/rotate-now".into(), "t1".into()),
            (
                "kubectl.kubernetes.io/last-applied-configuration".into(),
                READY.into(),
            ),
        ]));
        rkc.metadata.managed_fields = Some(vec![Default::default()]);
        let packed = PackedConfig::pack(rkc.clone()).unwrap();
        assert_eq!(
            packed.metadata,
            ObjectMeta {
                name: Some("recordings".into()),
                namespace: Some("contact-centre".into()),
                resource_version: Some("48213".into()),
                ..ObjectMeta::default()
            }
        );
        // What the controller never reads is dropped; the rest comes back.
        let unpacked = packed.unpack().unwrap().metadata;
        assert_eq!(unpacked.managed_fields, None);
        rkc.metadata.managed_fields = None;
        rkc.metadata
            .annotations
            .as_mut()
            .unwrap()
            .remove("kubectl.kubernetes.io/last-applied-configuration");
        assert_eq!(unpacked, rkc.metadata);
    }

    /// A resource whose ids, names and times all differ from the primer's still packs to a
    /// small part of its JSON: what it shares with the primer is its shape.
    #[test]
    fn a_typical_resource_packs_small() {
        let text = READY
            .replace(
                "5b0e3f0a-8a64-4a4c-9f1e-0d5c1f6a7b21",
                "0c1d2e3f-4a5b-4c6d-8e7f-8091a2b3c4d5",
            )
            .replace(
                "3fa85f64-5717-4562-b3fc-2c963f66afa6",
                "61a7c0de-93b2-4f18-b7e5-2d94c3a8f601",
            )
            .replace(
                "9ea95011-8ffc-41eb-a2ca-5823ae820c4d",
                "d08b5e2a-7c41-4e9b-a3f6-51c2e8d7b940",
            )
            .replace(
                "d5e52ca7573061fd271555dec34b0029429d0fb77be10d8a9b216edbb87161ef",
                "8f3a9c2e71d04b5a96e8c1f72d3b4a5e6c7d8e9f0a1b2c3d4e5f60718293a4b5",
            )
            .replace("recordings-c7aa09cd25-1", "billing-0a9b8c7d6e-1")
            .replace("2026-11-02T09:14:07Z", "2026-11-30T11:42:17Z")
            .replace("\"recordings\"", "\"billing\"");
        let rkc: RecordingKeyConfig = serde_json::from_str(&text).unwrap();
        let json = serde_json::to_vec(&rkc).unwrap();
        let packed = PackedConfig::pack(rkc.clone()).unwrap();
        assert!(
            packed.packed_len() * 8 < json.len(),
            "{} packed of {} bytes",
            packed.packed_len(),
            json.len()
        );
        assert_eq!(
            serde_json::to_value(packed.unpack().unwrap()).unwrap(),
            serde_json::to_value(&rkc).unwrap()
        );
    }

    /// The primer is the Ready fixture as `pack` writes it today, so it stays typical when the
    /// status changes shape.
    #[test]
    fn the_primer_is_the_ready_fixture_packed() {
        let (_, json) = split(serde_json::from_str(READY).unwrap()).unwrap();
        if std::env::var_os("KEKEEPER_WRITE_PRIMER").is_some() {
            let path = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/src/controller/packed_primer.json"
            );
            std::fs::write(path, &json).unwrap();
        }
        assert!(
            PRIMER == json.as_slice(),
            "src/controller/packed_primer.json is out of date: \
             KEKEEPER_WRITE_PRIMER=1 cargo test --lib packed writes it again"
        );
    }

    #[test]
    fn the_same_api_resource() {
        assert_eq!(PackedConfig::kind(&()), RecordingKeyConfig::kind(&()));
        assert_eq!(
            PackedConfig::url_path(&(), Some("ns")),
            RecordingKeyConfig::url_path(&(), Some("ns"))
        );
    }
}
