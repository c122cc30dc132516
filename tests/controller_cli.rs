//! The flags of `kekeeper run` and `kekeeper rotate`.

use clap::Parser;
use jiff::SignedDuration;
use kekeeper::cli::{Cli, Command};
use kekeeper::controller::ratelimit::{KeyPairRate, KeyPairRates};
use kekeeper::kms::KeyPairSpec;

#[test]
fn run_defaults() {
    let cli = Cli::try_parse_from(["kekeeper", "run"]).unwrap();
    let Command::Run(args) = cli.command else {
        panic!("not run")
    };
    assert!(args.namespace.is_empty(), "all namespaces by default");
    assert_eq!(args.metrics_addr.to_string(), "127.0.0.1:8080");
    assert!(!args.leader_elect);
    assert_eq!(args.lease_name, "kekeeper-leader");
    // No --kms-keypair-rate: every spec at 90 % of AWS's quota.
    assert!(args.kms_keypair_rate.is_empty());
    assert_eq!(
        KeyPairRates::from_flags(&args.kms_keypair_rate),
        KeyPairRates::default()
    );
    assert_eq!(args.kms_symmetric_rate, 100.0);
    assert_eq!(args.kms_key_check_interval, SignedDuration::from_hours(1));
    // client-go's leader-election defaults.
    assert_eq!(args.lease_duration, SignedDuration::from_secs(15));
    assert_eq!(args.renew_deadline, SignedDuration::from_secs(10));
    assert_eq!(args.retry_period, SignedDuration::from_secs(2));
}

#[test]
fn run_flags() {
    let cli = Cli::try_parse_from([
        "kekeeper",
        "run",
        "--namespace",
        "telephony",
        "--namespace",
        "billing,support",
        "--metrics-addr",
        "0.0.0.0:9090",
        "--leader-elect",
        "--lease-name",
        "kk",
        "--lease-namespace",
        "kekeeper-system",
        "--identity",
        "pod-a",
        "--kms-keypair-rate",
        "0.2",
        "--kms-key-check-interval",
        "30m",
        "--lease-duration",
        "4s",
        "--renew-deadline",
        "2s",
        "--retry-period",
        "500ms",
    ])
    .unwrap();
    let Command::Run(args) = cli.command else {
        panic!("not run")
    };
    assert_eq!(args.namespace, ["telephony", "billing", "support"]);
    assert_eq!(args.metrics_addr.port(), 9090);
    assert!(args.leader_elect);
    assert_eq!(args.lease_name, "kk");
    assert_eq!(args.lease_namespace.as_deref(), Some("kekeeper-system"));
    assert_eq!(args.identity.as_deref(), Some("pod-a"));
    assert_eq!(args.kms_keypair_rate, [KeyPairRate::Every(0.2)]);
    assert_eq!(args.kms_key_check_interval, SignedDuration::from_mins(30));
    assert_eq!(args.lease_duration, SignedDuration::from_secs(4));
    assert_eq!(args.renew_deadline, SignedDuration::from_secs(2));
    assert_eq!(args.retry_period, SignedDuration::from_millis(500));
}

/// `--kms-keypair-rate` per spec, repeated or comma-separated, after or before a single number
/// for every spec; a bad value names the flag and the fix.
#[test]
fn key_pair_rates_per_spec() {
    let cli = Cli::try_parse_from([
        "kekeeper",
        "run",
        "--kms-keypair-rate",
        "RSA_3072=0.3,RSA_4096=0.05",
        "--kms-keypair-rate=RSA_2048=0.5",
        "--kms-symmetric-rate=40",
    ])
    .unwrap();
    let Command::Run(args) = cli.command else {
        panic!("not run")
    };
    let rates = KeyPairRates::from_flags(&args.kms_keypair_rate);
    assert_eq!(rates.rate(KeyPairSpec::Rsa2048), 0.5);
    assert_eq!(rates.rate(KeyPairSpec::Rsa3072), 0.3);
    assert_eq!(rates.rate(KeyPairSpec::Rsa4096), 0.05);
    assert_eq!(args.kms_symmetric_rate, 40.0);
    for (flag, says) in [
        ("--kms-keypair-rate=RSA_1024=1", "unknown key pair spec"),
        ("--kms-keypair-rate=RSA_3072=0", "positive"),
        ("--kms-symmetric-rate=0", "positive"),
    ] {
        let err = Cli::try_parse_from(["kekeeper", "run", flag])
            .unwrap_err()
            .to_string();
        assert!(err.contains(says), "{flag}: {err}");
        assert!(err.contains("--kms-"), "{flag}: {err}");
    }
}

/// Lease timings that would let a standby take over while the leader still acts are refused
/// before anything starts (exit 2, the flag named).
#[test]
fn run_refuses_a_renew_deadline_not_below_the_lease_duration() {
    for (flags, named) in [
        (
            ["--lease-duration=10s", "--renew-deadline=10s"],
            "--renew-deadline",
        ),
        (
            ["--renew-deadline=1s", "--retry-period=2s"],
            "--retry-period",
        ),
        (
            ["--lease-duration=2500ms", "--renew-deadline=2s"],
            "--lease-duration",
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kekeeper"))
            .arg("run")
            .args(flags)
            .env("KUBECONFIG", "/nonexistent")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .output()
            .expect("kekeeper run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {stderr}");
        assert!(stderr.contains(named), "{flags:?}: {stderr}");
    }
}

#[test]
fn rotate_takes_names_or_all_or_a_selector_and_kubectl_connection_flags() {
    let cli = Cli::try_parse_from(["kekeeper", "rotate", "recordings", "-n", "telephony"]).unwrap();
    let Command::Rotate(args) = cli.command else {
        panic!("not rotate")
    };
    assert_eq!(args.names, ["recordings"]);
    assert_eq!(args.kube.namespace.as_deref(), Some("telephony"));
    assert!(!args.wait);

    let cli = Cli::try_parse_from([
        "kekeeper",
        "rotate",
        "-l",
        "team=telephony",
        "-A",
        "--wait",
        "--timeout",
        "90s",
        "--kubeconfig",
        "/tmp/kc",
        "--context",
        "prod",
    ])
    .unwrap();
    let Command::Rotate(args) = cli.command else {
        panic!("not rotate")
    };
    assert_eq!(args.selector.as_deref(), Some("team=telephony"));
    assert!(args.all_namespaces && args.wait);
    assert_eq!(args.timeout, SignedDuration::from_secs(90));
    assert_eq!(args.kube.context.as_deref(), Some("prod"));

    for refused in [
        vec!["kekeeper", "rotate"],
        vec!["kekeeper", "rotate", "a", "-A"],
        vec!["kekeeper", "rotate", "a", "--all"],
        vec!["kekeeper", "rotate", "--all", "--timeout", "1m"],
    ] {
        assert!(Cli::try_parse_from(&refused).is_err(), "{refused:?}");
    }
}
