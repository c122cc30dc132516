//! The command line of the one `kekeeper` binary (docs/cli.md; docs/design.md#module-map).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// The file name under which kubectl finds the binary as a plugin (`kubectl kekeeper ...`).
pub const KUBECTL_PLUGIN: &str = "kubectl-kekeeper";

/// The command as the user typed it, for help and error messages: `kubectl kekeeper` when the
/// binary was started as the kubectl plugin (kubectl runs `kubectl-kekeeper` with the
/// arguments after `kekeeper`), else `kekeeper`. Parsing is the same either way.
pub fn bin_name(argv0: Option<&std::ffi::OsStr>) -> &'static str {
    let file = argv0
        .map(std::path::Path::new)
        .and_then(std::path::Path::file_name);
    match file.and_then(|f| f.to_str()) {
        Some(name) if name.trim_end_matches(".exe") == KUBECTL_PLUGIN => "kubectl kekeeper",
        _ => "kekeeper",
    }
}

impl Cli {
    /// Parses the process's arguments (exits with clap's message on an error, as `parse` does).
    pub fn parse_args() -> Cli {
        use clap::{CommandFactory, FromArgMatches};
        let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
        let name = bin_name(args.first().map(|a| a.as_os_str()));
        let matches = Cli::command().bin_name(name).get_matches_from(args);
        Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }
}

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
    /// Self-test every organisation of RecordingKeyConfigs against KMS; stores nothing.
    ///
    /// The configs come from manifests (-f) or from the cluster (NAME..., --all, -A), read
    /// with list only, as the operator's ServiceAccount may (the chart's `helm test` runs it so).
    Test(TestArgs),
    /// Print the KMS key policy statements that let the operator use the key.
    ///
    /// Printed as a JSON array to add to the key policy's Statement list: for the operator only
    /// GenerateDataKeyPairWithoutPlaintext and Decrypt, bound to the organisations by the
    /// encryption context, and DescribeKey without that condition (DescribeKey requests carry
    /// no encryption context, so the condition would deny it). Encrypt and GenerateDataKey*
    /// (what forging a key pair's blob needs) only for --seed-principal. With
    /// --identity-policy and --key-store, the operator role's IAM identity policy follows as a
    /// second JSON document.
    Policy(PolicyArgs),
    /// Show a RecordingKeyConfig's conditions, key pairs, rotation, KMS errors and events, or
    /// one line per RecordingKeyConfig with its verdict.
    Status(StatusArgs),
    /// Change key now: rotate the key pairs of RecordingKeyConfigs once.
    Rotate(RotateArgs),
    /// Rewrap: re-encrypt every retained key pair of a RecordingKeyConfig onto the KMS key its
    /// alias resolves to now (KMS ReEncrypt, proven before use), also with spec.rewrap: Never.
    Rewrap(RewrapArgs),
    /// Key pair operations.
    #[command(subcommand)]
    Keypair(KeypairCommand),
    /// Encrypt a recording with a key pair's public key.
    Encrypt(EncryptArgs),
    /// Decrypt a recording; asks KMS for the key pair's private key.
    Decrypt(DecryptArgs),
    /// Write the key pairs of RecordingKeyConfigs to a file, for `kekeeper restore`.
    ///
    /// One entry per key pair Secret, in the key store's object format: the public key, the KMS
    /// ciphertext blob of the private key and the metadata. Nothing in the file is plaintext:
    /// the private keys decrypt only through the organisations' KMS keys, so the file alone
    /// cannot decrypt a recording. Keep it as you keep the Secrets anyway (it is written with
    /// mode 0600). docs/disaster-recovery.md
    Backup(BackupArgs),
    /// Create the missing key pair Secrets from a `kekeeper backup` file.
    ///
    /// Every entry is checked first (format, names, fingerprint of the public key); one that
    /// fails refuses the whole file. Existing Secrets are never overwritten. Per organisation
    /// only the newest key pair (the highest sequence in the file, the cluster's Secrets and
    /// the RecordingKeyConfig's status) is restored active; older ones are restored retired.
    /// Exit 0 done, 1 an API error or an existing Secret that holds another key pair, 2 bad
    /// input. docs/disaster-recovery.md
    Restore(RestoreArgs),
    /// Print a shell completion script.
    ///
    /// bash: `source <(kekeeper completion bash)`; zsh: `kekeeper completion zsh >
    /// "${fpath[1]}/_kekeeper"`; fish: `kekeeper completion fish >
    /// ~/.config/fish/completions/kekeeper.fish`.
    Completion(CompletionArgs),
    /// Print the version (the same line as --version): the binary, its image and its Helm
    /// chart share one version (CHANGELOG.md).
    Version,
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
    /// This replica's identity in the Lease (default: $POD_NAME, else the host name and a
    /// random suffix, so two processes on one host never share an identity).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// How long a standby waits, after it last saw the Lease change, before it takes over a
    /// silent leader's Lease (whole seconds).
    #[arg(long, env = "KEKEEPER_LEASE_DURATION", default_value = "15s")]
    pub lease_duration: jiff::SignedDuration,
    /// How long a leader keeps acting without renewing the Lease; below --lease-duration.
    #[arg(long, env = "KEKEEPER_RENEW_DEADLINE", default_value = "10s")]
    pub renew_deadline: jiff::SignedDuration,
    /// How often a leader renews and a standby tries to acquire; below --renew-deadline.
    #[arg(long, env = "KEKEEPER_RETRY_PERIOD", default_value = "2s")]
    pub retry_period: jiff::SignedDuration,
    /// KMS key pair generations per second, per key pair spec, for each AWS account and Region
    /// (shared by all resources): SPEC=RATE (repeat the flag or separate with commas), or one
    /// number for every spec. Default: 90 % of AWS's quotas, RSA_2048=0.9, RSA_3072=0.45,
    /// RSA_4096=0.09.
    #[arg(
        long,
        env = "KEKEEPER_KMS_KEYPAIR_RATE",
        value_delimiter = ',',
        value_name = "SPEC=RATE|RATE"
    )]
    pub kms_keypair_rate: Vec<crate::controller::ratelimit::KeyPairRate>,
    /// KMS Decrypt and ReEncrypt calls per second, for the whole operator (custody checks,
    /// self-tests, proofs). AWS's smallest Regions allow 5,500/s for all symmetric operations
    /// of an account together.
    #[arg(long, env = "KEKEEPER_KMS_SYMMETRIC_RATE", default_value_t = crate::controller::ratelimit::DEFAULT_SYMMETRIC_RATE, value_parser = positive_rate)]
    pub kms_symmetric_rate: f64,
    /// How often the alias and the retained key pairs' KMS keys are checked (e.g. 1h, 30m).
    #[arg(long, env = "KEKEEPER_KMS_KEY_CHECK_INTERVAL", default_value = "1h")]
    pub kms_key_check_interval: jiff::SignedDuration,
    /// How often each active key pair's private key blob is decrypted through KMS and compared
    /// with the fingerprint recorded in status (one KMS Decrypt per active pair; e.g. 24h).
    #[arg(long, env = "KEKEEPER_KEY_VERIFY_INTERVAL", default_value = "24h")]
    pub key_verify_interval: jiff::SignedDuration,
    /// Reconciles running at once (across all resources; one resource never runs twice at
    /// once).
    #[arg(long, env = "KEKEEPER_CONCURRENCY", default_value_t = 16)]
    pub concurrency: u16,
    /// Key pairs in flight at once per key pair spec, account and Region (generated by KMS and
    /// not yet self-tested), shared by all resources, so nothing is generated that cannot be
    /// tested before the KMS client's timeout.
    #[arg(long, env = "KEKEEPER_KMS_MAX_IN_FLIGHT", default_value_t = 4)]
    pub kms_max_in_flight: usize,
    /// Where every key pair is written once before it becomes active, and restored from when
    /// its Secret is missing: s3://BUCKET[/PREFIX]; one prefix per cluster (default: none; key
    /// pairs then live only in this cluster). docs/disaster-recovery.md
    #[arg(long, env = "KEKEEPER_KEY_STORE", value_name = "s3://BUCKET[/PREFIX]")]
    pub key_store: Option<crate::keystore::KeyStoreUrl>,
    /// This cluster's id in the key store's writer claim (default: the uid of the kube-system
    /// namespace, which needs `get` on it; set this where that is not granted).
    #[arg(long, env = "KEKEEPER_KEY_STORE_CLUSTER_ID")]
    pub key_store_cluster_id: Option<String>,
    /// How old another cluster's writer claim must be, by the store's clock, before this
    /// cluster takes the prefix over (a rebuilt cluster after its predecessor is gone); renewed
    /// every third of it, and trusted for at most four fifths of it after the last renewal
    /// (docs/design.md, "The key store"). At least 5s.
    #[arg(long, env = "KEKEEPER_KEY_STORE_CLAIM_TTL", default_value = "15m")]
    pub key_store_claim_ttl: jiff::SignedDuration,
}

/// How to reach the cluster, as kubectl does.
#[derive(Debug, Args, Clone, Default)]
pub struct KubeArgs {
    /// The kubeconfig file (default: $KUBECONFIG, else ~/.kube/config, else in-cluster).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context (default: its current-context).
    #[arg(long)]
    pub context: Option<String>,
    /// The namespace (default: the context's namespace, else `default`).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("configs").required(true).multiple(true)
    .args(["file", "names", "all", "all_namespaces"]))]
pub struct TestArgs {
    /// RecordingKeyConfig manifests (YAML; several documents or a `kind: List` as
    /// `kubectl get rkc -o yaml` prints); `-` reads stdin. At most 1 MiB.
    #[arg(short = 'f', long = "filename",
          conflicts_with_all = ["names", "all", "all_namespaces", "namespace", "kubeconfig", "context"])]
    pub file: Option<PathBuf>,
    /// RecordingKeyConfigs read from the cluster, by name (in the namespace of -n).
    pub names: Vec<String>,
    /// Every RecordingKeyConfig of the namespaces (-n, repeat for several; default the
    /// context's), read from the cluster.
    #[arg(long, conflicts_with = "names")]
    pub all: bool,
    /// Every RecordingKeyConfig in every namespace, read from the cluster.
    #[arg(short = 'A', long, conflicts_with_all = ["names", "namespace"])]
    pub all_namespaces: bool,
    /// The namespace (default: the context's namespace, else `default`); with --all, repeat
    /// for several.
    #[arg(long, short = 'n')]
    pub namespace: Vec<String>,
    /// The kubeconfig file (default: $KUBECONFIG, else ~/.kube/config, else in-cluster).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context (default: its current-context).
    #[arg(long)]
    pub context: Option<String>,
    /// Self-test at most this many organisations of each RecordingKeyConfig (the first ones);
    /// 0 tests them all. Each costs one KMS key-pair generation.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub max_organizations: usize,
}

#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// The operator's AWS principal: an IAM role, user or account root ARN, or an account id
    /// (repeat for several). It gets kms:GenerateDataKeyPairWithoutPlaintext and kms:Decrypt
    /// bound to the organisations' encryption context, and kms:DescribeKey.
    #[arg(long, required_unless_present = "seed_principal")]
    pub principal: Vec<String>,
    /// A principal that encrypts with the key itself, e.g. Genesys Cloud's account
    /// arn:aws:iam::765628985471:root (repeat for several): kms:Encrypt, kms:Decrypt and
    /// kms:GenerateDataKey* bound to the encryption context, and kms:DescribeKey. Never the
    /// operator's role: those are what forging a key pair's blob needs.
    #[arg(long, value_name = "ARN")]
    pub seed_principal: Vec<String>,
    /// An organisation id allowed in the encryption context (repeat for several).
    #[arg(long = "org-id", required_unless_present = "file")]
    pub org_ids: Vec<String>,
    /// Take the organisation ids, the encryption context key and the KMS alias ARNs from
    /// RecordingKeyConfig manifests (YAML; `-` reads stdin).
    #[arg(short = 'f', long = "filename")]
    pub file: Option<PathBuf>,
    /// The encryption context key (default: the manifests', else genesys-cloud-organization-id).
    #[arg(long)]
    pub context_key: Option<String>,
    /// Also print the IAM identity policy of the operator's role, with kms:Decrypt,
    /// kms:GenerateDataKeyPairWithoutPlaintext and kms:DescribeKey only on the manifests' KMS
    /// keys (those their alias names, by kms:ResourceAliases), or on the --key-arn keys.
    #[arg(long)]
    pub identity_policy: bool,
    /// With --identity-policy: allow exactly these KMS key ARNs (repeat for several) instead of
    /// the keys the manifests' aliases name.
    #[arg(long, value_name = "ARN", requires = "identity_policy")]
    pub key_arn: Vec<String>,
    /// Also print the IAM identity policy the operator's role needs for this key store (as
    /// `kekeeper run --key-store` takes it): s3:GetObject, s3:PutObject and a prefix-bound
    /// s3:ListBucket.
    #[arg(long, value_name = "s3://BUCKET[/PREFIX]")]
    pub key_store: Option<crate::keystore::KeyStoreUrl>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Json,
    Yaml,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The RecordingKeyConfig's name; without it, one line per RecordingKeyConfig in the
    /// namespace (or, with -A, in every namespace).
    pub name: Option<String>,
    /// Every namespace: one line per RecordingKeyConfig.
    #[arg(short = 'A', long, conflicts_with = "name")]
    pub all_namespaces: bool,
    /// Exit 3 unless every RecordingKeyConfig shown is Ready (for scripts and health checks).
    #[arg(long)]
    pub exit_code: bool,
    /// Print the resource's status as JSON or YAML instead of the readable screen (without a
    /// name: the verdict of each RecordingKeyConfig).
    #[arg(short = 'o', long = "output", value_enum)]
    pub output: Option<OutputFormat>,
    #[command(flatten)]
    pub kube: KubeArgs,
}

#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// The shell: bash, zsh, fish, elvish or powershell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("targets").required(true).args(["names", "all", "selector"]))]
pub struct RotateArgs {
    /// The RecordingKeyConfigs' names.
    pub names: Vec<String>,
    /// Every RecordingKeyConfig in the namespace.
    #[arg(long)]
    pub all: bool,
    /// The RecordingKeyConfigs whose labels match this selector (e.g. `team=telephony`).
    #[arg(short = 'l', long = "selector")]
    pub selector: Option<String>,
    /// In every namespace (with --all or -l).
    #[arg(short = 'A', long, conflicts_with = "names")]
    pub all_namespaces: bool,
    /// Wait until each rotation is honoured and the resource is Ready for its generation.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits for all resources together (e.g. 5m, 90s).
    #[arg(long, default_value = "5m", requires = "wait")]
    pub timeout: jiff::SignedDuration,
    #[command(flatten)]
    pub kube: KubeArgs,
}

#[derive(Debug, Args)]
pub struct RewrapArgs {
    /// The RecordingKeyConfig's name.
    pub name: String,
    /// Wait until the operator has rewrapped every retained key pair (no key pair depends only
    /// on an older KMS key), then print how many key pairs each KMS key holds.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits (e.g. 10m, 90s).
    #[arg(long, default_value = "10m", requires = "wait")]
    pub timeout: jiff::SignedDuration,
    #[command(flatten)]
    pub kube: KubeArgs,
}

impl Command {
    /// The subcommand as the User-Agent names it (`kekeeper/0.2.0 (rotate)`); `None` for the
    /// operator (`run`), whose User-Agent is `kekeeper/VERSION` alone.
    pub fn name(&self) -> Option<&'static str> {
        Some(match self {
            Command::Run(_) => return None,
            Command::Crd => "crd",
            Command::Test(_) => "test",
            Command::Policy(_) => "policy",
            Command::Status(_) => "status",
            Command::Rotate(_) => "rotate",
            Command::Rewrap(_) => "rewrap",
            Command::Keypair(KeypairCommand::Generate(_)) => "keypair generate",
            Command::Encrypt(_) => "encrypt",
            Command::Decrypt(_) => "decrypt",
            Command::Backup(_) => "backup",
            Command::Restore(_) => "restore",
            Command::Completion(_) => "completion",
            Command::Version => "version",
        })
    }
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
    /// The key pair Secret manifest named in the recording's header (default: the Secret
    /// labelled kekeeper.io/key-pair-id=<the header's key pair id>, read from the cluster).
    #[arg(long)]
    pub key_pair_secret: Option<PathBuf>,
    /// Input; `-` is stdin.
    #[arg(short = 'i', long = "input")]
    pub input: PathBuf,
    /// Output; `-` is stdout.
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    /// For a multi-Region KMS key (mrk-...): a Region of one of its replicas, asked when the
    /// home Region's KMS is unreachable, unavailable or throttling (repeatable, or
    /// comma-separated; tried in order).
    #[arg(long = "replica-region", value_name = "REGION", value_delimiter = ',')]
    pub replica_regions: Vec<String>,
    /// Where the key pair Secret is looked up without --key-pair-secret.
    #[command(flatten)]
    pub kube: KubeArgs,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("targets").required(true).args(["name", "all"]))]
pub struct BackupArgs {
    /// The RecordingKeyConfig whose key pairs are written (also after it was deleted: its key
    /// pair Secrets are found by their kekeeper.io/config label).
    pub name: Option<String>,
    /// Every key pair Secret in the namespace.
    #[arg(long, conflicts_with = "name")]
    pub all: bool,
    /// With --all: in every namespace.
    #[arg(short = 'A', long, requires = "all")]
    pub all_namespaces: bool,
    /// Where to write the backup (JSON, mode 0600, replaced only once complete); `-` is stdout.
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    #[command(flatten)]
    pub kube: KubeArgs,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// A file written by `kekeeper backup`.
    #[arg(short = 'f', long = "filename")]
    pub file: PathBuf,
    /// Restore only the key pairs of this namespace (default: every namespace in the file; each
    /// key pair goes back to the namespace it was backed up from).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// Print what would be created; create nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The kubeconfig file (default: $KUBECONFIG, else ~/.kube/config, else in-cluster).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context (default: its current-context).
    #[arg(long)]
    pub context: Option<String>,
}

/// A positive, finite number of calls per second.
fn positive_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!(
            "{text:?}: expected a positive number of calls per second"
        )),
    }
}
