//! The flags of `kekeeper run` and `kekeeper rotate`.

use clap::Parser;
use jiff::SignedDuration;
use kekeeper::cli::{Cli, Command};

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
    assert_eq!(args.kms_keypair_rate, 1.0);
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
    assert_eq!(args.kms_keypair_rate, 0.2);
    assert_eq!(args.kms_key_check_interval, SignedDuration::from_mins(30));
    assert_eq!(args.lease_duration, SignedDuration::from_secs(4));
    assert_eq!(args.renew_deadline, SignedDuration::from_secs(2));
    assert_eq!(args.retry_period, SignedDuration::from_millis(500));
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
