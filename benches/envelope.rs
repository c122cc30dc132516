//! Envelope benchmark (not a timed test): `cargo bench --bench envelope -- <mode>`.
//!
//! - `throughput [MiB]` (default 256): generates an RSA-2048 key pair, encrypts a generated
//!   buffer into a sink and decrypts a ciphertext of it back into a sink, timing each (best of
//!   three runs, since the machine is shared).
//! - `stream <bytes>`: encrypts a generated stream into an in-process pipe while another thread decrypts
//!   the pipe into a verifying sink, so no side ever holds the whole input; prints the peak RSS
//!   (VmHWM) at the end, to show memory does not grow with the input size.

use std::io::{self, Read, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeySize, PrivateDecryptingKey};
use kekeeper::envelope::{Header, decrypt, encrypt};

const MIB: usize = 1024 * 1024;
/// A block length that is not a multiple of the segment size, so segments differ.
const PATTERN_LEN: usize = 65_537;
const KEY_PAIR_ID: &str = "bench-key-pair";

fn main() {
    // `cargo bench` passes `--bench`; everything starting with `--` is ignored.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let mode = args.first().map(String::as_str).unwrap_or("throughput");
    let (public_der, private_pkcs8) = key_pair();
    match mode {
        "throughput" => {
            let mib = args.get(1).map_or(256, |s| s.parse().expect("size in MiB"));
            throughput(&public_der, &private_pkcs8, mib * MIB);
        }
        "stream" => {
            let bytes: u64 = args.get(1).expect("stream <bytes>").parse().expect("bytes");
            stream(public_der, &private_pkcs8, bytes);
        }
        other => panic!("unknown mode {other}; use throughput [MiB] or stream <bytes>"),
    }
}

fn key_pair() -> (Vec<u8>, Vec<u8>) {
    let private = PrivateDecryptingKey::generate(KeySize::Rsa2048).expect("RSA key generation");
    let public_der = private
        .public_key()
        .as_der()
        .expect("public DER")
        .as_ref()
        .to_vec();
    let private_pkcs8 = private.as_der().expect("PKCS#8").as_ref().to_vec();
    (public_der, private_pkcs8)
}

fn pattern() -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..PATTERN_LEN)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn mb_per_s(bytes: usize, elapsed: Duration) -> f64 {
    bytes as f64 / 1e6 / elapsed.as_secs_f64()
}

fn best_of<F: FnMut() -> Duration>(runs: usize, mut f: F) -> Duration {
    (0..runs).map(|_| f()).min().expect("at least one run")
}

fn throughput(public_der: &[u8], private_pkcs8: &[u8], len: usize) {
    let block = pattern();
    let plaintext: Vec<u8> = block.iter().copied().cycle().take(len).collect();

    let encrypt_time = best_of(3, || {
        let start = Instant::now();
        let n = encrypt(public_der, KEY_PAIR_ID, &plaintext[..], io::sink()).expect("encrypt");
        let elapsed = start.elapsed();
        assert_eq!(n as usize, len);
        elapsed
    });

    let mut sealed = Vec::with_capacity(len + len / 1000 + 4096);
    encrypt(public_der, KEY_PAIR_ID, &plaintext[..], &mut sealed).expect("encrypt");
    let decrypt_time = best_of(3, || {
        let start = Instant::now();
        let mut input = &sealed[..];
        let header = Header::read_from(&mut input).expect("header");
        let n = decrypt(private_pkcs8, &header, input, io::sink()).expect("decrypt");
        let elapsed = start.elapsed();
        assert_eq!(n as usize, len);
        elapsed
    });

    // Correctness of the timed path, once, outside the timing.
    let mut input = &sealed[..];
    let header = Header::read_from(&mut input).expect("header");
    let mut roundtrip = Vec::with_capacity(len);
    decrypt(private_pkcs8, &header, input, &mut roundtrip).expect("decrypt");
    assert!(roundtrip == plaintext, "round trip differs");

    println!(
        "envelope encrypt {} MiB: {:.1} ms, {:.0} MB/s",
        len / MIB,
        encrypt_time.as_secs_f64() * 1e3,
        mb_per_s(len, encrypt_time)
    );
    println!(
        "envelope decrypt {} MiB: {:.1} ms, {:.0} MB/s",
        len / MIB,
        decrypt_time.as_secs_f64() * 1e3,
        mb_per_s(len, decrypt_time)
    );
}

/// A reader producing `remaining` bytes of the repeating pattern.
struct PatternReader<'a> {
    block: &'a [u8],
    offset: usize,
    remaining: u64,
}

impl Read for PatternReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf
            .len()
            .min(self.block.len() - self.offset)
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        buf[..n].copy_from_slice(&self.block[self.offset..self.offset + n]);
        self.offset = (self.offset + n) % self.block.len();
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// A writer that checks it receives the pattern, and keeps nothing.
struct PatternChecker<'a> {
    block: &'a [u8],
    offset: usize,
}

impl Write for PatternChecker<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(self.block.len() - self.offset);
        if buf[..n] != self.block[self.offset..self.offset + n] {
            return Err(io::Error::other(
                "decrypted stream differs from the plaintext",
            ));
        }
        self.offset = (self.offset + n) % self.block.len();
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The writing end of an in-process pipe: a bounded channel of chunks, so the two sides of
/// the stream hold at most a few segments between them (`std::io::pipe` is above our MSRV).
struct PipeWriter(SyncSender<Vec<u8>>);

impl Write for PipeWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .send(buf.to_vec())
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The reading end; end of input once the writer is dropped.
struct PipeReader {
    chunks: Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl Read for PipeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.chunk.len() {
            match self.chunks.recv() {
                Ok(chunk) => {
                    self.chunk = chunk;
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn stream(public_der: Vec<u8>, private_pkcs8: &[u8], bytes: u64) {
    let (sender, receiver) = sync_channel(4);
    let pipe_writer = PipeWriter(sender);
    let mut pipe_reader = PipeReader {
        chunks: receiver,
        chunk: Vec::new(),
        pos: 0,
    };
    let start = Instant::now();
    let sealer = std::thread::spawn(move || {
        let block = pattern();
        let input = PatternReader {
            block: &block,
            offset: 0,
            remaining: bytes,
        };
        encrypt(&public_der, KEY_PAIR_ID, input, pipe_writer).expect("encrypt")
    });
    let block = pattern();
    let header = Header::read_from(&mut pipe_reader).expect("header");
    let checker = PatternChecker {
        block: &block,
        offset: 0,
    };
    let opened = decrypt(private_pkcs8, &header, pipe_reader, checker).expect("decrypt");
    let sealed = sealer.join().expect("encrypt thread");
    let elapsed = start.elapsed();
    assert_eq!(sealed, bytes);
    assert_eq!(opened, bytes);
    println!(
        "stream {} bytes ({} MiB) encrypt→pipe→decrypt, verified, in {:.2} s; peak RSS (VmHWM) {}",
        bytes,
        bytes / MIB as u64,
        elapsed.as_secs_f64(),
        vm_hwm()
    );
}

fn vm_hwm() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l["VmHWM:".len()..].trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}
