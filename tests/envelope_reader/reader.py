"""An independent reader of the kekeeper recording envelope, version 1.

Written from docs/envelope.md alone (not from kekeeper's Rust code), with the `cryptography`
package, to prove that the page specifies the format completely. It streams: one segment in
memory at a time, plaintext released only after its segment authenticated.

    python reader.py --private-key KEY.pem -i ENVELOPE -o PLAINTEXT

exits 0 on success, 1 with the rejection's name (docs/envelope.md#what-a-reader-must-reject)
on stderr otherwise; a rejected envelope leaves no output file.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import struct
import sys
from dataclasses import dataclass
from typing import BinaryIO

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.exceptions import InvalidTag

MAGIC = b"KEKREC"
VERSION = 1
MAX_FIELD_LEN = 1024
MIN_WRAPPED_LEN = 256  # RSA 2048 bits
SEGMENT_SIZE = 65536
NONCE_PREFIX_LEN = 7
PREFIX_LEN = 9
TAG_LEN = 16
DATA_KEY_LEN = 32
FLAG_MORE = 0x00
FLAG_FINAL = 0x01


class Rejected(Exception):
    """The envelope must be rejected; `name` is the page's name for the reason."""

    def __init__(self, name: str, detail: str):
        super().__init__(f"{name}: {detail}")
        self.name = name
        self.detail = detail


@dataclass
class Header:
    version: int
    key_pair_id: str
    wrapped_key: bytes
    nonce_prefix: bytes
    segment_size: int
    digest: bytes  # H = SHA-256 of the header bytes


def _read(stream: BinaryIO, n: int) -> bytes:
    """Up to n bytes; fewer only at the end of the input."""
    out = bytearray()
    while len(out) < n:
        chunk = stream.read(n - len(out))
        if not chunk:
            break
        out += chunk
    return bytes(out)


def _field(stream: BinaryIO, n: int, what: str, raw: bytearray) -> bytes:
    data = _read(stream, n)
    if len(data) != n:
        raise Rejected("truncated", f"the input ends inside the header's {what}")
    raw += data
    return data


def read_header(stream: BinaryIO) -> Header:
    raw = bytearray()
    magic = _read(stream, len(MAGIC))
    if magic != MAGIC:
        raise Rejected("not_an_envelope", "the input does not start with KEKREC")
    raw += magic
    (version,) = _field(stream, 1, "version", raw)
    if version != VERSION:
        raise Rejected("unknown_version", f"version {version}; this reader reads version 1")
    (id_len,) = struct.unpack(">H", _field(stream, 2, "key pair id length", raw))
    if not 1 <= id_len <= MAX_FIELD_LEN:
        raise Rejected("malformed_header", f"key pair id length {id_len}")
    id_bytes = _field(stream, id_len, "key pair id", raw)
    try:
        key_pair_id = id_bytes.decode("utf-8")
    except UnicodeDecodeError:
        raise Rejected("malformed_header", "the key pair id is not UTF-8") from None
    (wrapped_len,) = struct.unpack(">H", _field(stream, 2, "wrapped key length", raw))
    if not MIN_WRAPPED_LEN <= wrapped_len <= MAX_FIELD_LEN:
        raise Rejected("malformed_header", f"wrapped key length {wrapped_len}")
    wrapped_key = _field(stream, wrapped_len, "wrapped key", raw)
    nonce_prefix = _field(stream, NONCE_PREFIX_LEN, "nonce prefix", raw)
    (segment_size,) = struct.unpack(">I", _field(stream, 4, "segment size", raw))
    if segment_size != SEGMENT_SIZE:
        raise Rejected("malformed_header", f"segment size {segment_size}, not 65536")
    return Header(
        version=version,
        key_pair_id=key_pair_id,
        wrapped_key=wrapped_key,
        nonce_prefix=nonce_prefix,
        segment_size=segment_size,
        digest=hashlib.sha256(bytes(raw)).digest(),
    )


OAEP = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def unwrap_data_key(private_key: rsa.RSAPrivateKey, header: Header) -> bytes:
    if len(header.wrapped_key) != private_key.key_size // 8:
        raise Rejected("wrong_key", "the wrapped key is not the modulus length of this key")
    try:
        data_key = private_key.decrypt(header.wrapped_key, OAEP)
    except ValueError:
        raise Rejected("wrong_key", "RSA-OAEP decryption of the wrapped data key failed") from None
    if len(data_key) != DATA_KEY_LEN:
        raise Rejected("malformed_header", f"the data key is {len(data_key)} bytes, not 32")
    return data_key


def decrypt_body(data_key: bytes, header: Header, stream: BinaryIO, out: BinaryIO) -> int:
    """Decrypts the segments after the header into `out`; returns the plaintext length."""
    aead = AESGCM(data_key)
    total = 0
    index = 0
    while True:
        prefix = _read(stream, PREFIX_LEN)
        if len(prefix) != PREFIX_LEN:
            raise Rejected("truncated", f"the input ends before segment {index} is complete")
        stored_index, flags, length = struct.unpack(">IBI", prefix)
        if stored_index != index:
            raise Rejected("reordered", f"segment {stored_index} where segment {index} belongs")
        if flags not in (FLAG_MORE, FLAG_FINAL):
            raise Rejected("tampered", f"segment {index} has flags {flags:#04x}")
        final = flags == FLAG_FINAL
        if length > header.segment_size or (not final and length != header.segment_size):
            raise Rejected("tampered", f"segment {index} has length {length}")
        if final and length == 0 and index > 0:
            raise Rejected("tampered", f"segment {index} is an empty final segment after a full one")
        sealed = _read(stream, length + TAG_LEN)
        if len(sealed) != length + TAG_LEN:
            raise Rejected("truncated", f"the input ends inside segment {index}")
        nonce = header.nonce_prefix + struct.pack(">IB", index, flags)
        aad = header.digest + prefix
        try:
            plaintext = aead.decrypt(nonce, sealed, aad)
        except InvalidTag:
            raise Rejected("tampered", f"segment {index} failed authentication") from None
        out.write(plaintext)
        total += len(plaintext)
        if final:
            break
        index += 1
        if index >= 2**32:
            raise Rejected("tampered", "more than 2^32 segments")
    if stream.read(1):
        raise Rejected("trailing_data", "bytes follow the final segment")
    return total


def load_private_key(pem: bytes) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("not an RSA private key")
    return key


def decrypt(private_key: rsa.RSAPrivateKey, stream: BinaryIO, out: BinaryIO) -> Header:
    """Reads a whole envelope from `stream`, writing the plaintext to `out`. Raises `Rejected`;
    the caller must discard `out` then."""
    header = read_header(stream)
    data_key = unwrap_data_key(private_key, header)
    decrypt_body(data_key, header, stream, out)
    return header


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--private-key", required=True, help="PKCS#8 PEM private key")
    parser.add_argument("-i", "--input", required=True)
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args()
    with open(args.private_key, "rb") as f:
        private_key = load_private_key(f.read())
    try:
        with open(args.input, "rb") as src, open(args.output, "wb") as dst:
            header = decrypt(private_key, src, dst)
    except Rejected as rejected:
        os.remove(args.output)
        print(f"rejected: {rejected}", file=sys.stderr)
        return 1
    print(f"decrypted with key pair {header.key_pair_id}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
