//! The command line of the one `kekeeper` binary (SPEC §5).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "kekeeper",
    version,
    about = "Key-encryption-key pairs for call recordings, rooted in your AWS KMS key"
)]
pub struct Cli {
    /// Log lines as JSON instead of text.
    #[arg(long, global = true, env = "KEKEEPER_LOG_JSON")]
    pub log_json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controller.
    Run(RunArgs),
    /// Print the RecordingKeyConfig CRD YAML.
    Crd,
    /// Self-test every organisation of a RecordingKeyConfig manifest against KMS; stores nothing.
    Test(TestArgs),
    /// Print the KMS key policy statement that lets the operator use the key.
    Policy(PolicyArgs),
    /// Change key now: rotate the key pairs of a RecordingKeyConfig once.
    Rotate(RotateArgs),
    /// Key pair operations.
    #[command(subcommand)]
    Keypair(KeypairCommand),
    /// Encrypt a recording with a key pair's public key.
    Encrypt(EncryptArgs),
    /// Decrypt a recording; asks KMS for the key pair's private key.
    Decrypt(DecryptArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Watch only these namespaces (repeat the flag or separate with commas; default: all
    /// namespaces).
    #[arg(long, short = 'n', env = "KEKEEPER_NAMESPACE", value_delimiter = ',')]
    pub namespace: Vec<String>,
    /// Where /healthz, /readyz and /metrics are served.
    #[arg(long, env = "KEKEEPER_METRICS_ADDR", default_value = "127.0.0.1:8080")]
    pub metrics_addr: std::net::SocketAddr,
    /// Run the controller only while holding a coordination.k8s.io/v1 Lease (for several replicas).
    #[arg(long, env = "KEKEEPER_LEADER_ELECT")]
    pub leader_elect: bool,
    /// The Lease's name.
    #[arg(long, env = "KEKEEPER_LEASE_NAME", default_value = "kekeeper-leader")]
    pub lease_name: String,
    /// The Lease's namespace (default: the pod's namespace, else `default`).
    #[arg(long, env = "KEKEEPER_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// This replica's identity in the Lease (default: $POD_NAME, else the host name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// KMS key pair generations per second, shared by all resources (KMS quotas are low).
    #[arg(long, env = "KEKEEPER_KMS_KEYPAIR_RATE", default_value_t = 1.0)]
    pub kms_keypair_rate: f64,
    /// How often the alias and the retained key pairs' KMS keys are checked (e.g. 1h, 30m).
    #[arg(long, env = "KEKEEPER_KMS_KEY_CHECK_INTERVAL", default_value = "1h")]
    pub kms_key_check_interval: jiff::SignedDuration,
    /// How often each active key pair's private key blob is decrypted through KMS and compared
    /// with the fingerprint recorded in status (one KMS Decrypt per active pair; e.g. 24h).
    #[arg(long, env = "KEKEEPER_KEY_VERIFY_INTERVAL", default_value = "24h")]
    pub key_verify_interval: jiff::SignedDuration,
}

#[derive(Debug, Args)]
pub struct TestArgs {
    /// The RecordingKeyConfig manifest (YAML); `-` reads stdin.
    #[arg(short = 'f', long = "filename")]
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// The operator's AWS principal ARN (role or user).
    #[arg(long)]
    pub principal: String,
    /// An organisation id allowed in the encryption context (repeat for several).
    #[arg(long = "org-id", required = true)]
    pub org_ids: Vec<String>,
    /// The encryption context key.
    #[arg(long, default_value = crate::crd::DEFAULT_ENCRYPTION_CONTEXT_KEY)]
    pub context_key: String,
}

#[derive(Debug, Args)]
pub struct RotateArgs {
    /// The RecordingKeyConfig's name.
    pub name: String,
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum KeypairCommand {
    /// Generate one self-tested key pair and write the Secret manifest the controller would store.
    Generate(KeypairGenerateArgs),
}

#[derive(Debug, Args)]
pub struct KeypairGenerateArgs {
    /// The RecordingKeyConfig manifest (YAML).
    #[arg(short = 'f', long = "filename")]
    pub file: PathBuf,
    /// The organisation id (one of the manifest's organizationIds).
    #[arg(long)]
    pub org: String,
    /// Where to write the Secret manifest; `-` is stdout.
    #[arg(short = 'o', long = "output", default_value = "-")]
    pub output: PathBuf,
}

#[derive(Debug, Args)]
pub struct EncryptArgs {
    /// A key pair Secret manifest (as `kekeeper keypair generate` writes or `kubectl get secret -o yaml` shows).
    #[arg(long, conflicts_with_all = ["public_key", "key_pair_id"])]
    pub key_pair_secret: Option<PathBuf>,
    /// A public key PEM (SubjectPublicKeyInfo), with --key-pair-id.
    #[arg(long, requires = "key_pair_id")]
    pub public_key: Option<PathBuf>,
    #[arg(long, requires = "public_key")]
    pub key_pair_id: Option<String>,
    /// Input; `-` is stdin.
    #[arg(short = 'i', long = "input")]
    pub input: PathBuf,
    /// Output; `-` is stdout.
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
}

#[derive(Debug, Args)]
pub struct DecryptArgs {
    /// The key pair Secret manifest named in the recording's header.
    #[arg(long)]
    pub key_pair_secret: PathBuf,
    /// Input; `-` is stdin.
    #[arg(short = 'i', long = "input")]
    pub input: PathBuf,
    /// Output; `-` is stdout.
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
}
