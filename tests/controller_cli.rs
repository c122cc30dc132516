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
}

#[test]
fn rotate_takes_a_name_and_namespace() {
    let cli = Cli::try_parse_from(["kekeeper", "rotate", "recordings", "-n", "telephony"]).unwrap();
    let Command::Rotate(args) = cli.command else {
        panic!("not rotate")
    };
    assert_eq!(args.name, "recordings");
    assert_eq!(args.namespace.as_deref(), Some("telephony"));
}
