"""Runs the independent envelope reader (reader.py) against kekeeper:

- every valid test vector decrypts to its plaintext (and the reader's header digest and data key
  agree with the debugging values in index.json);
- every must-reject vector is rejected with the name index.json gives;
- envelopes made now by `kekeeper encrypt` (the built binary, public key only, no KMS) decrypt
  to what went in, and damaged copies of them are rejected.

    python check.py VECTORS_DIR KEKEEPER_BINARY

Prints one line per case and closes with `envelope-reader: N passed, M failed`; exits 1 on any
failure. Used by scripts/envelope-reader-test.sh.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import reader

SEGMENT = reader.SEGMENT_SIZE
FRAME = reader.PREFIX_LEN + SEGMENT + reader.TAG_LEN


class Results:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def record(self, name: str, error: str | None) -> None:
        if error is None:
            self.passed += 1
            print(f"PASS {name}")
        else:
            self.failed += 1
            print(f"FAIL {name}: {error}")


def open_envelope(key, data: bytes) -> tuple[reader.Header, bytes]:
    out = io.BytesIO()
    header = reader.decrypt(key, io.BytesIO(data), out)
    return header, out.getvalue()


def expect_plaintext(key, envelope: bytes, plaintext: bytes) -> str | None:
    try:
        _, opened = open_envelope(key, envelope)
    except reader.Rejected as rejected:
        return f"rejected a valid envelope: {rejected}"
    if opened != plaintext:
        return f"plaintext differs ({len(opened)} bytes, expected {len(plaintext)})"
    return None


def expect_rejection(key, envelope: bytes, expected: str) -> str | None:
    try:
        open_envelope(key, envelope)
    except reader.Rejected as rejected:
        if rejected.name != expected:
            return f"rejected as {rejected.name} ({rejected.detail}), expected {expected}"
        return None
    return f"accepted, expected rejection as {expected}"


def check_vectors(directory: Path, key, results: Results) -> None:
    index = json.loads((directory / "index.json").read_text())
    for case in index["valid"]:
        envelope = (directory / case["envelope"]).read_bytes()
        plaintext = (directory / case["plaintext"]).read_bytes()
        error = expect_plaintext(key, envelope, plaintext)
        if error is None:
            header = reader.read_header(io.BytesIO(envelope))
            data_key = reader.unwrap_data_key(key, header)
            if header.key_pair_id != index["key_pair_id"]:
                error = f"key pair id {header.key_pair_id!r}"
            elif header.digest.hex() != case["header_sha256"]:
                error = "header digest differs from index.json"
            elif data_key.hex() != case["data_key"]:
                error = "data key differs from index.json"
            elif header.nonce_prefix.hex() != case["nonce_prefix"]:
                error = "nonce prefix differs from index.json"
        results.record(f"vector {case['name']}", error)
    for case in index["reject"]:
        envelope = (directory / case["envelope"]).read_bytes()
        results.record(
            f"reject vector {case['name']}", expect_rejection(key, envelope, case["error"])
        )


def kekeeper_encrypt(binary: str, public_key: Path, key_pair_id: str, plaintext: bytes, work: Path) -> bytes:
    """`kekeeper encrypt` from file to file, or stdin to stdout for the first case."""
    plain_path = work / "plain"
    sealed_path = work / "sealed"
    plain_path.write_bytes(plaintext)
    args = [binary, "encrypt", "--public-key", str(public_key), "--key-pair-id", key_pair_id]
    subprocess.run(
        args + ["-i", str(plain_path), "-o", str(sealed_path)],
        check=True,
        stderr=subprocess.DEVNULL,
    )
    return sealed_path.read_bytes()


def kekeeper_encrypt_piped(binary: str, public_key: Path, key_pair_id: str, plaintext: bytes) -> bytes:
    args = [binary, "encrypt", "--public-key", str(public_key), "--key-pair-id", key_pair_id]
    done = subprocess.run(
        args + ["-i", "-", "-o", "-"], input=plaintext, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=True
    )
    return done.stdout


def check_fresh(directory: Path, binary: str, key, results: Results) -> None:
    public_key = directory / "vector-public-key.pem"
    with tempfile.TemporaryDirectory(prefix="envelope-reader-") as tmp:
        work = Path(tmp)
        multi = None
        for size in (0, 1, SEGMENT - 1, SEGMENT, SEGMENT + 1, 2 * SEGMENT, 3 * SEGMENT + 12345):
            plaintext = os.urandom(size)
            key_pair_id = str(uuid.uuid4())
            name = f"kekeeper encrypt, {size} bytes"
            try:
                envelope = kekeeper_encrypt(binary, public_key, key_pair_id, plaintext, work)
            except subprocess.CalledProcessError as e:
                results.record(name, f"kekeeper encrypt failed: {e}")
                continue
            # Header length by the page: 22 + L + W, W being the modulus length in bytes.
            header_len = 22 + len(key_pair_id.encode()) + key.key_size // 8
            error = expect_plaintext(key, envelope, plaintext)
            if error is None:
                header = reader.read_header(io.BytesIO(envelope))
                segments = max(1, -(-size // SEGMENT))
                if header.key_pair_id != key_pair_id:
                    error = f"header names {header.key_pair_id!r}, expected {key_pair_id!r}"
                elif len(envelope) != header_len + size + 25 * segments:
                    error = f"envelope is {len(envelope)} bytes, the page's formula says {header_len + size + 25 * segments}"
            results.record(name, error)
            if size == 3 * SEGMENT + 12345:
                multi = (envelope, header_len)

        plaintext = os.urandom(SEGMENT + 77)
        try:
            envelope = kekeeper_encrypt_piped(binary, public_key, str(uuid.uuid4()), plaintext)
            results.record("kekeeper encrypt, stdin to stdout", expect_plaintext(key, envelope, plaintext))
        except subprocess.CalledProcessError as e:
            results.record("kekeeper encrypt, stdin to stdout", f"kekeeper encrypt failed: {e}")

        if multi is None:
            results.record("damaged fresh envelopes", "no multi-segment envelope was made")
            return
        envelope, header_len = multi
        damaged = {
            "truncated after segment 1": (envelope[: header_len + 2 * FRAME], "truncated"),
            "last byte removed": (envelope[:-1], "truncated"),
            "segments 1 and 2 swapped": (
                envelope[: header_len + FRAME]
                + envelope[header_len + 2 * FRAME : header_len + 3 * FRAME]
                + envelope[header_len + FRAME : header_len + 2 * FRAME]
                + envelope[header_len + 3 * FRAME :],
                "reordered",
            ),
            "tag bit of segment 0 flipped": (
                flip(envelope, header_len + FRAME - 1, 0x01),
                "tampered",
            ),
            "version 2": (envelope[:6] + b"\x02" + envelope[7:], "unknown_version"),
            "trailing byte": (envelope + b"\x00", "trailing_data"),
        }
        for name, (data, expected) in damaged.items():
            results.record(f"fresh envelope, {name}", expect_rejection(key, data, expected))


def flip(data: bytes, at: int, mask: int) -> bytes:
    changed = bytearray(data)
    changed[at] ^= mask
    return bytes(changed)


def main() -> int:
    directory = Path(sys.argv[1])
    binary = sys.argv[2]
    key = reader.load_private_key((directory / "vector-private-key.pem").read_bytes())
    results = Results()
    check_vectors(directory, key, results)
    check_fresh(directory, binary, key, results)
    print(f"envelope-reader: {results.passed} passed, {results.failed} failed")
    return 1 if results.failed or results.passed == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
