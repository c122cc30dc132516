//! Decoding of the Kubernetes protobuf envelope for the built-in kinds kubectl's typed clients
//! send as `application/vnd.kubernetes.protobuf` (create secret/configmap/namespace/
//! serviceaccount/role/rolebinding/clusterrole/clusterrolebinding, create token).

use base64::Engine;
use serde_json::{Map, Value, json};

#[derive(Clone, Copy)]
enum Ty {
    Str,
    Int,
    Bool,
    Msg(fn() -> &'static [Field]),
    MapStr,
    MapBytes,
}

struct Field {
    num: u64,
    name: &'static str,
    ty: Ty,
    repeated: bool,
}

const fn f(num: u64, name: &'static str, ty: Ty) -> Field {
    Field {
        num,
        name,
        ty,
        repeated: false,
    }
}

const fn r(num: u64, name: &'static str, ty: Ty) -> Field {
    Field {
        num,
        name,
        ty,
        repeated: true,
    }
}

fn object_meta() -> &'static [Field] {
    const FIELDS: &[Field] = &[
        f(1, "name", Ty::Str),
        f(2, "generateName", Ty::Str),
        f(3, "namespace", Ty::Str),
        f(5, "uid", Ty::Str),
        f(6, "resourceVersion", Ty::Str),
        f(7, "generation", Ty::Int),
        f(11, "labels", Ty::MapStr),
        f(12, "annotations", Ty::MapStr),
        r(13, "ownerReferences", Ty::Msg(owner_reference)),
        r(14, "finalizers", Ty::Str),
    ];
    FIELDS
}

fn owner_reference() -> &'static [Field] {
    const FIELDS: &[Field] = &[
        f(1, "kind", Ty::Str),
        f(3, "name", Ty::Str),
        f(4, "uid", Ty::Str),
        f(5, "apiVersion", Ty::Str),
        f(6, "controller", Ty::Bool),
        f(7, "blockOwnerDeletion", Ty::Bool),
    ];
    FIELDS
}

fn object_reference() -> &'static [Field] {
    const FIELDS: &[Field] = &[
        f(1, "kind", Ty::Str),
        f(2, "namespace", Ty::Str),
        f(3, "name", Ty::Str),
        f(4, "uid", Ty::Str),
        f(5, "apiVersion", Ty::Str),
        f(6, "resourceVersion", Ty::Str),
        f(7, "fieldPath", Ty::Str),
    ];
    FIELDS
}

fn local_object_reference() -> &'static [Field] {
    const FIELDS: &[Field] = &[f(1, "name", Ty::Str)];
    FIELDS
}

fn secret() -> &'static [Field] {
    const FIELDS: &[Field] = &[
        f(1, "metadata", Ty::Msg(object_meta)),
        f(2, "data", Ty::MapBytes),
        f(3, "type", Ty::Str),
        f(4, "stringData", Ty::MapStr),
        f(5, "immutable", Ty::Bool),
    ];
    FIELDS
}

fn config_map() -> &'static [Field] {
    const FIELDS: &[Field] = &[
        f(1, "metadata", Ty::Msg(object_meta)),
        f(2, "data", Ty::MapStr),
        f(3, "binaryData", Ty::MapBytes),
        f(4, "immutable", Ty::Bool),
    ];
    FIELDS
}

fn namespace_spec() -> &'static [Field] {
    const FIELDS: &[Field] = &[r(1, "finalizers", Ty::Str)];
    FIELDS
}

fn namespace() -> &'static [Field] {
    const FIELDS: &[Field] = &[
        f(1, "metadata", Ty::Msg(object_meta)),
        f(2, "spec", Ty::Msg(namespace_spec)),
    ];
    FIELDS
}

fn service_account() -> &'static [Field] {
    const FIELDS: &[Field] = &[
        f(1, "metadata", Ty::Msg(object_meta)),
        r(2, "secrets", Ty::Msg(object_reference)),
        r(3, "imagePullSecrets", Ty::Msg(local_object_reference)),
        f(4, "automountServiceAccountToken", Ty::Bool),
    ];
    FIELDS
}

fn bound_object_reference() -> &'static [Field] {
    const FIELDS: &[Field] = &[
        f(1, "kind", Ty::Str),
        f(2, "apiVersion", Ty::Str),
        f(3, "name", Ty::Str),
        f(4, "uid", Ty::Str),
    ];
    FIELDS
}

fn token_request_spec() -> &'static [Field] {
    const FIELDS: &[Field] = &[
        r(1, "audiences", Ty::Str),
        f(3, "boundObjectRef", Ty::Msg(bound_object_reference)),
        f(4, "expirationSeconds", Ty::Int),
    ];
    FIELDS
}

fn token_request() -> &'static [Field] {
    const FIELDS: &[Field] = &[
        f(1, "metadata", Ty::Msg(object_meta)),
        f(2, "spec", Ty::Msg(token_request_spec)),
    ];
    FIELDS
}

fn policy_rule() -> &'static [Field] {
    const FIELDS: &[Field] = &[
        r(1, "verbs", Ty::Str),
        r(2, "apiGroups", Ty::Str),
        r(3, "resources", Ty::Str),
        r(4, "resourceNames", Ty::Str),
        r(5, "nonResourceURLs", Ty::Str),
    ];
    FIELDS
}

fn role() -> &'static [Field] {
    const FIELDS: &[Field] = &[
        f(1, "metadata", Ty::Msg(object_meta)),
        r(2, "rules", Ty::Msg(policy_rule)),
    ];
    FIELDS
}

fn subject() -> &'static [Field] {
    const FIELDS: &[Field] = &[
        f(1, "kind", Ty::Str),
        f(2, "apiGroup", Ty::Str),
        f(3, "name", Ty::Str),
        f(4, "namespace", Ty::Str),
    ];
    FIELDS
}

fn role_ref() -> &'static [Field] {
    const FIELDS: &[Field] = &[
        f(1, "apiGroup", Ty::Str),
        f(2, "kind", Ty::Str),
        f(3, "name", Ty::Str),
    ];
    FIELDS
}

fn role_binding() -> &'static [Field] {
    const FIELDS: &[Field] = &[
        f(1, "metadata", Ty::Msg(object_meta)),
        r(2, "subjects", Ty::Msg(subject)),
        f(3, "roleRef", Ty::Msg(role_ref)),
    ];
    FIELDS
}

fn resource_attributes() -> &'static [Field] {
    const FIELDS: &[Field] = &[
        f(1, "namespace", Ty::Str),
        f(2, "verb", Ty::Str),
        f(3, "group", Ty::Str),
        f(4, "version", Ty::Str),
        f(5, "resource", Ty::Str),
        f(6, "subresource", Ty::Str),
        f(7, "name", Ty::Str),
    ];
    FIELDS
}

fn non_resource_attributes() -> &'static [Field] {
    const FIELDS: &[Field] = &[f(1, "path", Ty::Str), f(2, "verb", Ty::Str)];
    FIELDS
}

fn access_review_spec() -> &'static [Field] {
    const FIELDS: &[Field] = &[
        f(1, "resourceAttributes", Ty::Msg(resource_attributes)),
        f(2, "nonResourceAttributes", Ty::Msg(non_resource_attributes)),
    ];
    FIELDS
}

fn access_review() -> &'static [Field] {
    const FIELDS: &[Field] = &[
        f(1, "metadata", Ty::Msg(object_meta)),
        f(2, "spec", Ty::Msg(access_review_spec)),
    ];
    FIELDS
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut out = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or("truncated varint")?;
            self.pos += 1;
            out |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(out);
            }
        }
        Err("varint too long".into())
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let len = self.varint()? as usize;
        let end = self
            .pos
            .checked_add(len)
            .filter(|e| *e <= self.buf.len())
            .ok_or("truncated field")?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn skip(&mut self, wire: u64) -> Result<(), String> {
        match wire {
            0 => self.varint().map(|_| ()),
            1 => {
                self.pos += 8;
                Ok(())
            }
            2 => self.bytes().map(|_| ()),
            5 => {
                self.pos += 4;
                Ok(())
            }
            w => Err(format!("unsupported wire type {w}")),
        }
    }
}

fn utf8(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn map_entry(b: &[u8], bytes_value: bool) -> Result<(String, Value), String> {
    let mut rd = Reader { buf: b, pos: 0 };
    let (mut k, mut v) = (String::new(), Value::String(String::new()));
    while rd.pos < rd.buf.len() {
        let key = rd.varint()?;
        match (key >> 3, key & 7) {
            (1, 2) => k = utf8(rd.bytes()?),
            (2, 2) => {
                let raw = rd.bytes()?;
                v = if bytes_value {
                    Value::String(base64::engine::general_purpose::STANDARD.encode(raw))
                } else {
                    Value::String(utf8(raw))
                };
            }
            (_, w) => rd.skip(w)?,
        }
    }
    Ok((k, v))
}

fn decode_message(b: &[u8], fields: &[Field]) -> Result<Value, String> {
    let mut rd = Reader { buf: b, pos: 0 };
    let mut out = Map::new();
    while rd.pos < rd.buf.len() {
        let key = rd.varint()?;
        let (num, wire) = (key >> 3, key & 7);
        let Some(field) = fields.iter().find(|f| f.num == num) else {
            rd.skip(wire)?;
            continue;
        };
        let value = match field.ty {
            Ty::Str => {
                let text = utf8(rd.bytes()?);
                if text.is_empty() && !field.repeated {
                    continue;
                }
                Value::String(text)
            }
            Ty::Int => Value::from(rd.varint()? as i64),
            Ty::Bool => Value::Bool(rd.varint()? != 0),
            Ty::Msg(sub) => decode_message(rd.bytes()?, sub())?,
            Ty::MapStr | Ty::MapBytes => {
                let (k, v) = map_entry(rd.bytes()?, matches!(field.ty, Ty::MapBytes))?;
                let entry = out.entry(field.name).or_insert_with(|| json!({}));
                if let Some(m) = entry.as_object_mut() {
                    m.insert(k, v);
                }
                continue;
            }
        };
        if field.repeated {
            let entry = out.entry(field.name).or_insert_with(|| json!([]));
            if let Some(a) = entry.as_array_mut() {
                a.push(value);
            }
        } else {
            out.insert(field.name.to_string(), value);
        }
    }
    Ok(Value::Object(out))
}

/// Decodes a `k8s\0`-prefixed `runtime.Unknown` envelope into a JSON object.
pub fn decode(body: &[u8]) -> Result<Value, String> {
    let inner = body
        .strip_prefix(b"k8s\0")
        .ok_or("missing protobuf envelope prefix")?;
    let mut rd = Reader { buf: inner, pos: 0 };
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    while rd.pos < rd.buf.len() {
        let key = rd.varint()?;
        match (key >> 3, key & 7) {
            (1, 2) => {
                let tm = decode_message(
                    rd.bytes()?,
                    &[f(1, "apiVersion", Ty::Str), f(2, "kind", Ty::Str)],
                )?;
                api_version = tm["apiVersion"].as_str().unwrap_or_default().to_string();
                kind = tm["kind"].as_str().unwrap_or_default().to_string();
            }
            (2, 2) => raw = rd.bytes()?,
            (_, w) => rd.skip(w)?,
        }
    }
    let fields: &[Field] = match kind.as_str() {
        "Secret" => secret(),
        "ConfigMap" => config_map(),
        "Namespace" => namespace(),
        "ServiceAccount" => service_account(),
        "TokenRequest" => token_request(),
        "Role" | "ClusterRole" => role(),
        "RoleBinding" | "ClusterRoleBinding" => role_binding(),
        "SelfSubjectAccessReview" => access_review(),
        other => {
            return Err(format!(
                "protobuf decoding of kind {other:?} is not supported by kube-sim; send JSON"
            ));
        }
    };
    let mut obj = decode_message(raw, fields)?;
    obj["apiVersion"] = json!(api_version);
    obj["kind"] = json!(kind);
    Ok(obj)
}
