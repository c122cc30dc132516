#!/usr/bin/env python3
"""Writes the seed inputs of every fuzz target into DIR/<target>/, from the repository's test
fixtures: the envelope test vectors, the ARNs the sources and docs name, the example manifests
and status fixtures, key pair Secrets in the layout the controller stores. scripts/fuzz.sh
--seed runs this and minimises the result with `cargo fuzz cmin` into fuzz/corpus/.

Usage: fuzz/seed.py DIR
"""

import base64
import glob
import hashlib
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(path):
    with open(os.path.join(ROOT, path), "rb") as f:
        return f.read()


def write(out, target, name, data):
    folder = os.path.join(out, target)
    os.makedirs(folder, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)


def fingerprint(der):
    """As kekeeper::keypair::fingerprint: SHA256: + unpadded base64 of SHA-256."""
    digest = hashlib.sha256(der).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def envelope(out):
    for path in sorted(glob.glob(os.path.join(ROOT, "tests/vectors/envelope/*/*.kekrec"))):
        kind = os.path.basename(os.path.dirname(path))
        write(out, "envelope", f"{kind}-{os.path.basename(path)}", read(path))


def alias_arn(out):
    arns = set()
    for pattern in ["src/**/*.rs", "tests/**/*.rs", "tests/**/*.py", "docs/*.md", "examples/**/*",
                    "charts/**/*", "README.md"]:
        for path in glob.glob(os.path.join(ROOT, pattern), recursive=True):
            if os.path.isfile(path):
                text = read(path).decode(errors="replace")
                arns.update(re.findall(r"arn:aws[a-z-]*:kms:[^\"'`\s),]*", text))
    for i, arn in enumerate(sorted(arns)):
        write(out, "alias_arn", f"arn-{i:03}", arn)


def manifest(out):
    paths = ["examples/recordingkeyconfig.yaml", "examples/flux/kustomization.yaml",
             "crds/recordingkeyconfigs.kekeeper.io.yaml", "tests/fixtures/rbac/bootstrap-user-roles.yaml"]
    paths += sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "tests/fixtures/status/*.json")))
    for path in paths:
        write(out, "manifest", path.replace("/", "-"), read(path))
    example = read("examples/recordingkeyconfig.yaml").decode()
    # Several documents, a List (`kubectl get rkc -o yaml`), a document that is not one.
    write(out, "manifest", "documents.yaml", example + "\n---\n" + example.replace("name: recordings", "name: second")
          + "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: other\n")
    fixture = json.loads(read("tests/fixtures/status/ready.json"))
    write(out, "manifest", "list.json", json.dumps({"apiVersion": "v1", "kind": "List", "items": [fixture, fixture]}))
    write(out, "manifest", "flow.yaml", "{apiVersion: kekeeper.io/v1alpha1, kind: RecordingKeyConfig, "
          "metadata: {name: r}, spec: {kmsKeyAliasArn: 'arn:aws:kms:us-east-1:111122223333:alias/r', "
          "organizationIds: [a], encryptionContextKey: tenant, recordingRetention: 30d, homeRegion: us-east-1}}\n")


def key_pair_secrets():
    """Secrets in the layout of KeyPairSecret::to_secret (src/keypair.rs)."""
    public_pem = read("tests/vectors/envelope/vector-public-key.pem").decode()
    org = "3fa85f64-5717-4562-b3fc-2c963f66afa6"
    for state, retired in [("active", None), ("retired", "2026-12-01T07:00:00Z")]:
        metadata = {
            "keyPairId": "0b7e5c1a-9d2f-4e8b-a6c3-5f1d2e3c4b5a",
            "organizationId": org,
            "kmsKeyArn": "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            "kmsKeyAliasArn": "arn:aws:kms:us-east-1:111122223333:alias/recordings",
            "keyPairSpec": "RSA_3072",
            "encryptionContext": {"genesys-cloud-organization-id": org},
            "createdAt": "2026-11-29T07:00:00Z",
            "reason": "Created",
            "sequence": 3,
        }
        annotations = {"kekeeper.io/organization-id": org,
                       "kekeeper.io/public-key-fingerprint": "SHA256:jFk7b69YeJrle6b9AMvzyOdYw5ZKkU/t7WwUyD8nDPM"}
        if retired:
            annotations["kekeeper.io/retired-at"] = retired
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kekeeper.io/key-pair",
            "metadata": {
                "name": f"recordings-6c1d0b8a2e-000{3 if state == 'active' else 2}",
                "namespace": "telephony",
                "labels": {"kekeeper.io/config": "recordings", "kekeeper.io/organization-id": org,
                           "kekeeper.io/state": state, "kekeeper.io/key-pair-id": metadata["keyPairId"],
                           "app.kubernetes.io/managed-by": "kekeeper"},
                "annotations": annotations,
            },
            "data": {
                "publicKey.pem": base64.b64encode(public_pem.encode()).decode(),
                "privateKey.kms": base64.b64encode(bytes(range(1, 200))).decode(),
                "metadata.json": base64.b64encode(json.dumps(metadata, indent=2).encode()).decode(),
            },
        }
        yield state, secret, metadata, public_pem


def to_yaml(value, indent=0):
    """Block YAML for the dicts of strings above (keys and values quoted as JSON strings)."""
    lines = []
    for key, item in value.items():
        if isinstance(item, dict):
            lines.append(" " * indent + json.dumps(key) + ":")
            lines.append(to_yaml(item, indent + 2))
        else:
            lines.append(" " * indent + json.dumps(key) + ": " + json.dumps(item))
    return "\n".join(lines)


def key_pair_secret(out):
    for state, secret, metadata, public_pem in key_pair_secrets():
        write(out, "key_pair_secret", f"{state}.json", json.dumps(secret, indent=2))
        write(out, "key_pair_secret", f"{state}.yaml", to_yaml(secret) + "\n")
        # Hand-written: stringData instead of data.
        hand = dict(secret)
        hand["stringData"] = {"publicKey.pem": public_pem, "metadata.json": json.dumps(metadata),
                              "privateKey.kms": "blob"}
        del hand["data"]
        write(out, "key_pair_secret", f"{state}-string-data.yaml", to_yaml(hand) + "\n")


def key_ring_status(out):
    """The status fixtures, with each recorded fingerprint made from the key pair id's bytes
    (the public key the target gives a pair's Secret), behind the byte that picks the Secrets."""
    for path in sorted(glob.glob(os.path.join(ROOT, "tests/fixtures/status/*.json"))):
        fixture = json.loads(read(path))
        status = fixture.get("status") or {}
        for entry in status.get("activeKeyPairs", []) + status.get("keyPairHistory", []):
            entry["publicKeyFingerprint"] = fingerprint(entry["keyPairId"].encode())
        body = json.dumps(fixture, separators=(",", ":")).encode()
        name = os.path.splitext(os.path.basename(path))[0]
        for present in (0x00, 0x7F, 0xD5, 0xFF):
            write(out, "key_ring_status", f"{name}-{present:02x}", bytes([present]) + body)


def key_store_object(out):
    """Key store objects (src/keystore.rs, StoredKeyPair) of the vector public key, and a backup
    file of them (src/backup.rs)."""
    public_pem = read("tests/vectors/envelope/vector-public-key.pem").decode()
    der = base64.b64decode("".join(l for l in public_pem.splitlines() if not l.startswith("-----")))
    objects = []
    for org, sequence, token in [("3fa85f64-5717-4562-b3fc-2c963f66afa6", 1, None),
                                 ("3fa85f64-5717-4562-b3fc-2c963f66afa6", 2, "t1"),
                                 ("org/with spaces ä", 7, None)]:
        name = f"recordings-{hashlib.sha256(org.encode()).hexdigest()[:10]}-{sequence:04}"
        obj = {
            "format": "kekeeper.io/key-pair/v1", "namespace": "telephony", "config": "recordings",
            "secretName": name, "organizationId": org,
            "keyPairId": f"0b7e5c1a-9d2f-4e8b-a6c3-5f1d2e3c4b{sequence:02}",
            "sequence": sequence, "createdAt": "2026-11-29T07:00:00Z",
            "kmsKeyArn": "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            "kmsKeyAliasArn": "arn:aws:kms:us-east-1:111122223333:alias/recordings",
            "keyPairSpec": "RSA_3072",
            "encryptionContext": {"genesys-cloud-organization-id": org},
            "reason": "NoActiveKeyPair", "publicKeyFingerprint": fingerprint(der),
            "publicKeyPem": public_pem,
            "privateKeyKms": base64.b64encode(bytes(range(1, 200))).decode(),
        }
        if token:
            obj["rotateNowToken"] = token
        objects.append(obj)
        write(out, "key_store_object", f"object-{sequence}", json.dumps(obj, indent=2).encode())
    backup = {"format": "kekeeper.io/key-pair-backup/v1", "createdAt": "2026-12-01T00:00:00Z",
              "keyPairs": [dict(objects[0], retiredAt="2026-12-01T07:00:00Z"), objects[1], objects[2]]}
    write(out, "key_store_object", "backup", json.dumps(backup, indent=2).encode())


def key_store_marker_claim(out):
    """Retirement and prune markers (src/keystore.rs, Marker: with the pair's fingerprint, without
    one as written before it existed, naming another key) and writer claims (WriterClaim)."""
    marker = {"format": "kekeeper.io/key-pair-marker/v1", "secretName": "recordings-6c1d0b8a2e-0003",
              "keyPairId": "0b7e5c1a-9d2f-4e8b-a6c3-5f1d2e3c4b5a", "at": "2026-12-01T07:00:00Z"}
    write(out, "key_store_marker_claim", "marker-old", json.dumps(marker, indent=2))
    marker["publicKeyFingerprint"] = "SHA256:jFk7b69YeJrle6b9AMvzyOdYw5ZKkU/t7WwUyD8nDPM"
    write(out, "key_store_marker_claim", "marker", json.dumps(marker, indent=2))
    marker["publicKeyFingerprint"] = fingerprint(b"another key")
    write(out, "key_store_marker_claim", "marker-other-key", json.dumps(marker, indent=2))
    claim = {"format": "kekeeper.io/key-store-writer/v1", "clusterId": "3c1e1f4e-8a0b-4c55-9d1c-6f1d2e3c4b5a",
             "holder": "kekeeper-7d9f8b6c5-x2x9q", "renewedAt": "2026-12-01T07:00:00Z"}
    write(out, "key_store_marker_claim", "claim", json.dumps(claim, indent=2))
    claim["clusterId"] = "this-cluster-\u0000"
    write(out, "key_store_marker_claim", "claim-this-cluster", json.dumps(claim, indent=2))


def key_store_name(out):
    """Object names under a config's prefix as the operator writes them (src/keystore.rs: a pair,
    its markers, wraps under a UUID and an mrk- key), a KMS key ARN, and a wrap object whose
    fingerprint is the fuzz target's pair's (public key bytes 01 02 03)."""
    key_id = "0b7c2a34-5d6e-4f70-8a9b-0c1d2e3f4a5b"
    write(out, "key_store_name", "pair", "org-1/0000000001.json")
    write(out, "key_store_name", "retired", "org-1/0000000001.retired.json")
    write(out, "key_store_name", "wrap", f"org-1/0000000001.wrap-{key_id}.json")
    write(out, "key_store_name", "wrap-mrk",
          "org-1/0000000001.wrap-mrk-0123456789abcdef0123456789abcdef.json")
    key_arn = f"arn:aws:kms:us-east-1:111122223333:key/{key_id}"
    write(out, "key_store_name", "key-arn", key_arn)
    wrap = {"format": "kekeeper.io/key-pair-wrap/v1", "namespace": "telephony", "config": "recordings",
            "secretName": "recordings-x-0001", "organizationId": "org-1", "keyPairId": "k",
            "sequence": 1, "publicKeyFingerprint": fingerprint(bytes([1, 2, 3])),
            "kmsKeyArn": key_arn, "privateKeyKms": "AQID", "createdAt": "2026-06-01T00:00:00Z"}
    write(out, "key_store_name", "wrap-object", json.dumps(wrap))


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    for seed in (envelope, alias_arn, manifest, key_pair_secret, key_ring_status, key_store_object,
                 key_store_marker_claim, key_store_name):
        seed(out)


if __name__ == "__main__":
    main()
