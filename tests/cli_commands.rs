//! The `kekeeper` binary against the KMS emulator and the fault proxy: exit codes (0 pass,
//! 1 KMS or crypto failure, 2 bad input) and what the user reads.

mod common;

use std::path::Path;
use std::process::Stdio;

use common::proxy::FaultProxy;
use common::{REGION, admin, create_key, kms_endpoint, manifest};
use tokio::io::AsyncWriteExt;

const ORG_A: &str = "3fa85f64-5717-4562-b3fc-2c963f66afa6";
const ORG_B: &str = "7c9e6679-7425-40de-944b-e07fc1f90ae7";

struct Run {
    code: i32,
    stdout: String,
    stdout_bytes: Vec<u8>,
    stderr: String,
}

/// Runs `kekeeper ARGS` with the emulator's (or proxy's) endpoint in the standard variables and
/// nothing else of the environment's AWS settings.
async fn kekeeper(endpoint: &str, args: &[&str], stdin: Option<&[u8]>) -> Run {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_kekeeper"));
    command
        .args(args)
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_PROFILE")
        .env("AWS_ENDPOINT_URL_KMS", endpoint)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", REGION)
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_MAX_ATTEMPTS", "2")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().expect("spawn kekeeper");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(input).await.expect("write stdin");
        drop(pipe);
    }
    let output = child.wait_with_output().await.expect("kekeeper output");
    let run = Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stdout_bytes: output.stdout.clone(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    eprintln!(
        "$ kekeeper {}\nexit {}\n--- stdout\n{}--- stderr\n{}",
        args.join(" "),
        run.code,
        if run.stdout.len() > 4000 {
            "(long)\n"
        } else {
            run.stdout.as_str()
        },
        run.stderr
    );
    run
}

/// `kekeeper decrypt` of `input` into `output` with the key pair Secret in the file `secret`.
async fn decrypt(endpoint: &str, secret: &str, input: &str, output: &str) -> Run {
    kekeeper(endpoint, &decrypt_args(secret, input, output), None).await
}

fn decrypt_args<'a>(secret: &'a str, input: &'a str, output: &'a str) -> [&'a str; 7] {
    [
        "decrypt",
        "--key-pair-secret",
        secret,
        "-i",
        input,
        "-o",
        output,
    ]
}

fn write(dir: &Path, name: &str, contents: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path.to_str().unwrap().to_owned()
}

#[tokio::test]
#[ignore = "needs the KMS emulator: scripts/test.sh starts it and runs ignored tests"]
async fn test_passes_for_every_organisation_and_reads_stdin() {
    let endpoint = kms_endpoint();
    let key = create_key(&endpoint, REGION, false).await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = manifest(key.alias.as_str(), &[ORG_A, ORG_B], "RSA_2048");
    let file = write(dir.path(), "config.yaml", &yaml);

    let run = kekeeper(&endpoint, &["test", "-f", &file], None).await;
    assert_eq!(run.code, 0);
    assert!(run.stdout.contains("PASSED: 2/2 organisations passed"));
    assert!(run.stdout.contains(&key.key_arn));
    assert_eq!(
        run.stdout
            .matches("ok    decrypt the private key (KMS Decrypt)")
            .count(),
        2
    );
    assert!(run.stdout.contains(" ms\n"));

    let run = kekeeper(&endpoint, &["test", "-f", "-"], Some(yaml.as_bytes())).await;
    assert_eq!(run.code, 0);

    // `kubectl get rkc -o yaml` output: each resource under its own heading.
    let list = rkc_list(key.alias.as_str(), &[ORG_A], &[ORG_B]);
    let run = kekeeper(&endpoint, &["test", "-f", "-"], Some(list.as_bytes())).await;
    assert_eq!(run.code, 0);
    for heading in [
        "RecordingKeyConfig telephony/first: ",
        "RecordingKeyConfig telephony/second: ",
    ] {
        assert_eq!(run.stdout.matches(heading).count(), 1, "{heading}");
    }
    assert_eq!(
        run.stdout
            .matches("PASSED: 1/1 organisations passed")
            .count(),
        2
    );
    assert!(
        run.stdout
            .contains("2 RecordingKeyConfigs tested: all passed")
    );
}

#[tokio::test]
#[ignore = "needs the KMS emulator: scripts/test.sh starts it and runs ignored tests"]
async fn test_fails_with_the_kms_error_for_a_disabled_key_or_unknown_alias() {
    let endpoint = kms_endpoint();
    let key = create_key(&endpoint, REGION, false).await;
    admin(&endpoint, REGION)
        .await
        .disable_key()
        .key_id(&key.key_id)
        .send()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "c.yaml",
        &manifest(key.alias.as_str(), &[ORG_A], "RSA_2048"),
    );
    let run = kekeeper(&endpoint, &["test", "-f", &file], None).await;
    assert_eq!(run.code, 1);
    assert!(run.stdout.contains("DisabledException"), "{}", run.stdout);
    assert!(run.stdout.contains("KmsKeyNotEnabled"));
    assert!(run.stdout.contains("FAILED: 0/1 organisations passed"));

    let missing = format!(
        "arn:aws:kms:{REGION}:{}:alias/{}",
        common::ACCOUNT,
        common::unique("missing")
    );
    let file = write(
        dir.path(),
        "m.yaml",
        &manifest(&missing, &[ORG_A], "RSA_2048"),
    );
    let run = kekeeper(&endpoint, &["test", "-f", &file], None).await;
    assert_eq!(run.code, 1);
    assert!(
        run.stdout.contains("DescribeKey: NotFoundException"),
        "{}",
        run.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the KMS emulator: scripts/test.sh starts it and runs ignored tests"]
async fn test_reports_access_denied_and_throttling_from_kms() {
    let endpoint = kms_endpoint();
    let key = create_key(&endpoint, REGION, false).await;
    let proxy = FaultProxy::start(&endpoint).await;
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "c.yaml",
        &manifest(key.alias.as_str(), &[ORG_A], "RSA_2048"),
    );

    proxy.fail(
        "GenerateDataKeyPairWithoutPlaintext",
        400,
        "AccessDeniedException",
        "not authorized to perform kms:GenerateDataKeyPairWithoutPlaintext",
    );
    let run = kekeeper(&proxy.endpoint(), &["test", "-f", &file], None).await;
    assert_eq!(run.code, 1);
    assert!(
        run.stdout
            .contains("GenerateDataKeyPairWithoutPlaintext: AccessDeniedException: not authorized"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("request id kekeeper-fault-proxy-"));
    proxy.clear();

    proxy.fail("Decrypt", 400, "ThrottlingException", "Rate exceeded");
    let run = kekeeper(&proxy.endpoint(), &["test", "-f", &file], None).await;
    assert_eq!(run.code, 1);
    assert!(
        run.stdout
            .contains("Decrypt: ThrottlingException: Rate exceeded"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("FAIL  decrypt the private key"));
}

/// `kekeeper version` and `kekeeper --version` print the same line, with the crate's version
/// (the one scripts/versions.py checks against the chart and CHANGELOG.md).
#[tokio::test]
async fn version_and_dash_dash_version_print_the_crate_version() {
    let expected = format!("kekeeper {}\n", env!("CARGO_PKG_VERSION"));
    for args in [&["version"][..], &["--version"][..]] {
        let run = kekeeper("http://127.0.0.1:9", args, None).await;
        assert_eq!(run.code, 0, "{args:?}");
        assert_eq!(run.stdout, expected, "{args:?}");
    }
}

#[tokio::test]
async fn bad_input_exits_2_naming_the_problem() {
    // No KMS call is made for any of these; the endpoint is never contacted.
    let endpoint = "http://127.0.0.1:9";
    let dir = tempfile::tempdir().unwrap();
    let key_arn = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
    let file = write(
        dir.path(),
        "key.yaml",
        &manifest(key_arn, &[ORG_A], "RSA_2048"),
    );
    let run = kekeeper(endpoint, &["test", "-f", &file], None).await;
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("spec.kmsKeyAliasArn"), "{}", run.stderr);
    assert!(run.stderr.contains("use the alias ARN"), "{}", run.stderr);

    let run = kekeeper(endpoint, &["test", "-f", "/nonexistent/config.yaml"], None).await;
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("cannot read /nonexistent/config.yaml"),
        "{}",
        run.stderr
    );

    let alias = "arn:aws:kms:us-east-1:111122223333:alias/recordings";
    let dup = write(
        dir.path(),
        "dup.yaml",
        &manifest(alias, &[ORG_A, ORG_A], "RSA_2048"),
    );
    let run = kekeeper(endpoint, &["test", "-f", &dup], None).await;
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("spec.organizationIds[1]"),
        "{}",
        run.stderr
    );

    let bad_spec = write(
        dir.path(),
        "spec.yaml",
        &manifest(alias, &[ORG_A], "RSA_1024"),
    );
    let run = kekeeper(endpoint, &["test", "-f", &bad_spec], None).await;
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("RSA_1024"), "{}", run.stderr);

    let not_rkc = write(
        dir.path(),
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
    );
    let run = kekeeper(endpoint, &["test", "-f", &not_rkc], None).await;
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("expected RecordingKeyConfig"),
        "{}",
        run.stderr
    );

    let good = write(
        dir.path(),
        "good.yaml",
        &manifest(alias, &[ORG_A], "RSA_2048"),
    );
    let out = dir.path().join("secret.yaml");
    let run = kekeeper(
        endpoint,
        &[
            "keypair",
            "generate",
            "-f",
            &good,
            "--org",
            "org-z",
            "-o",
            out.to_str().unwrap(),
        ],
        None,
    )
    .await;
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("--org \"org-z\" is not one of"),
        "{}",
        run.stderr
    );
    assert!(!out.exists());
}

#[tokio::test]
async fn policy_prints_valid_json_statements() {
    let run = kekeeper(
        "http://127.0.0.1:9",
        &[
            "policy",
            "--principal",
            "arn:aws:iam::111122223333:role/kekeeper",
            "--org-id",
            "o1",
            "--org-id",
            "o2",
        ],
        None,
    )
    .await;
    assert_eq!(run.code, 0);
    let statements: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        statements[0]["Condition"]["StringEquals"]["kms:EncryptionContext:genesys-cloud-organization-id"],
        serde_json::json!(["o1", "o2"])
    );
    // Only what the operator calls: no Encrypt, no GenerateDataKey* (issue 25).
    assert_eq!(
        statements[0]["Action"],
        serde_json::json!([
            "kms:GenerateDataKeyPairWithoutPlaintext",
            "kms:Decrypt",
            "kms:ReEncryptFrom",
            "kms:ReEncryptTo"
        ])
    );
    assert_eq!(statements[1]["Action"], "kms:DescribeKey");
    assert_eq!(statements.as_array().unwrap().len(), 2);

    let run = kekeeper(
        "http://127.0.0.1:9",
        &["policy", "--principal", "me", "--org-id", "o1"],
        None,
    )
    .await;
    assert_eq!(run.code, 2);
}

#[tokio::test]
#[ignore = "needs the KMS emulator: scripts/test.sh starts it and runs ignored tests"]
async fn keypair_generate_encrypt_decrypt_round_trip() {
    let endpoint = kms_endpoint();
    let key = create_key(&endpoint, REGION, false).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "c.yaml",
        &manifest(key.alias.as_str(), &[ORG_A, ORG_B], "RSA_3072"),
    );
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();

    for (org, file) in [(ORG_A, "org-a.yaml"), (ORG_B, "org-b.yaml")] {
        let out = path(file);
        let run = kekeeper(
            &endpoint,
            &[
                "keypair", "generate", "-f", &config, "--org", org, "-o", &out,
            ],
            None,
        )
        .await;
        assert_eq!(run.code, 0);
        assert!(run.stderr.contains("PASSED"), "{}", run.stderr);
    }
    let secret: k8s_openapi::api::core::v1::Secret =
        serde_yaml::from_str(&std::fs::read_to_string(path("org-a.yaml")).unwrap()).unwrap();
    let record = kekeeper::keypair::KeyPairSecret::from_secret(&secret).unwrap();
    assert_eq!(record.sequence, 1);
    assert_eq!(record.state, kekeeper::keypair::KeyPairState::Active);
    assert_eq!(record.kms_key_arn, key.key_arn);
    assert_eq!(record.namespace, "telephony");
    assert_eq!(
        secret.metadata.name.as_deref(),
        Some(kekeeper::keypair::KeyPairRecord::secret_name("recordings", ORG_A, 1).as_str())
    );

    // Three segments and a bit, through stdin and stdout.
    let recording: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let run = kekeeper(
        &endpoint,
        &[
            "encrypt",
            "--key-pair-secret",
            &path("org-a.yaml"),
            "-i",
            "-",
            "-o",
            &path("rec.enc"),
        ],
        Some(&recording),
    )
    .await;
    assert_eq!(run.code, 0);
    let run = decrypt(
        &endpoint,
        &path("org-a.yaml"),
        &path("rec.enc"),
        &path("rec.out"),
    )
    .await;
    assert_eq!(run.code, 0);
    assert_eq!(std::fs::read(path("rec.out")).unwrap(), recording);

    // With the public key and id instead of the Secret.
    std::fs::write(path("pub.pem"), record.public_key_pem()).unwrap();
    let run = kekeeper(
        &endpoint,
        &[
            "encrypt",
            "--public-key",
            &path("pub.pem"),
            "--key-pair-id",
            &record.key_pair_id,
            "-i",
            &path("rec.out"),
            "-o",
            &path("rec2.enc"),
        ],
        None,
    )
    .await;
    assert_eq!(run.code, 0);
    let run = decrypt(&endpoint, &path("org-a.yaml"), &path("rec2.enc"), "-").await;
    assert_eq!(run.code, 0);
    assert!(run.stdout_bytes == recording, "decrypted stdout differs");

    // The wrong Secret: named clearly, nothing written.
    let run = decrypt(
        &endpoint,
        &path("org-b.yaml"),
        &path("rec.enc"),
        &path("wrong.out"),
    )
    .await;
    assert_eq!(run.code, 2);
    assert!(
        run.stderr
            .contains(&format!("encrypted with key pair {}", record.key_pair_id)),
        "{}",
        run.stderr
    );
    assert!(!dir.path().join("wrong.out").exists());

    // A truncated recording: exit 1 naming the truncation, no partial plaintext left behind.
    let sealed = std::fs::read(path("rec.enc")).unwrap();
    std::fs::write(path("cut.enc"), &sealed[..sealed.len() - 1000]).unwrap();
    let run = decrypt(
        &endpoint,
        &path("org-a.yaml"),
        &path("cut.enc"),
        &path("cut.out"),
    )
    .await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("decryption failed"), "{}", run.stderr);
    assert!(!dir.path().join("cut.out").exists());

    // Not a recording.
    let run = decrypt(&endpoint, &path("org-a.yaml"), &config, &path("x.out")).await;
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("recording header"), "{}", run.stderr);

    // KMS refuses once the key is disabled: exit 1 with the KMS code, no output left behind.
    admin(&endpoint, REGION)
        .await
        .disable_key()
        .key_id(&key.key_id)
        .send()
        .await
        .unwrap();
    let run = decrypt(
        &endpoint,
        &path("org-a.yaml"),
        &path("rec.enc"),
        &path("d.out"),
    )
    .await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("DisabledException"), "{}", run.stderr);
    assert!(!dir.path().join("d.out").exists());
}

#[tokio::test]
async fn oversized_and_deeply_nested_inputs_are_refused_before_parsing() {
    // Refused before any KMS call: the endpoint is never contacted.
    let endpoint = "http://127.0.0.1:9";
    let dir = tempfile::tempdir().unwrap();
    // 400 KB of nested `[` took the YAML parser 93 s of CPU before the limits.
    let nested = write(dir.path(), "nested.yaml", &"[".repeat(400_000));
    let large = write(
        dir.path(),
        "large.yaml",
        &format!("# {}\n", "x".repeat(2 * 1024 * 1024)),
    );
    let out = dir.path().join("out").to_str().unwrap().to_owned();
    for (file, message) in [
        (
            &nested,
            "nests [ or { 65 levels deep; at most 64 are accepted",
        ),
        (&large, "is larger than 1 MiB"),
    ] {
        let commands: [Vec<&str>; 4] = [
            vec!["test", "-f", file],
            vec![
                "keypair", "generate", "-f", file, "--org", ORG_A, "-o", &out,
            ],
            vec!["encrypt", "--key-pair-secret", file, "-i", file, "-o", &out],
            decrypt_args(file, file, &out).to_vec(),
        ];
        for args in commands {
            let run = kekeeper(endpoint, &args, None).await;
            assert_eq!(run.code, 2, "{args:?}");
            assert!(run.stderr.contains(message), "{args:?}: {}", run.stderr);
            assert!(!Path::new(&out).exists());
        }
    }
    // Also through stdin.
    let run = kekeeper(
        endpoint,
        &["test", "-f", "-"],
        Some("{".repeat(100).as_bytes()),
    )
    .await;
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("stdin nests"), "{}", run.stderr);
}

/// Two RecordingKeyConfigs as `kubectl get rkc -o yaml` prints them.
fn rkc_list(alias: &str, first_ids: &[&str], second_ids: &[&str]) -> String {
    let item = |name: &str, ids: &[&str]| {
        let ids: Vec<String> = ids.iter().map(|id| format!("      - {id}\n")).collect();
        format!(
            "- apiVersion: kekeeper.io/v1alpha1\n  kind: RecordingKeyConfig\n  metadata:\n    name: {name}\n    namespace: telephony\n  spec:\n    kmsKeyAliasArn: {alias}\n    keyPairSpec: RSA_2048\n    organizationIds:\n{}  status: {{}}\n",
            ids.concat()
        )
    };
    format!(
        "apiVersion: v1\nkind: List\nmetadata:\n  resourceVersion: \"\"\nitems:\n{}{}",
        item("first", first_ids),
        item("second", second_ids)
    )
}

#[tokio::test]
async fn test_takes_lists_and_several_documents_and_exits_with_the_worst() {
    // The valid resource meets no KMS (nothing listens on port 9): exit 1 for it, 2 overall.
    let endpoint = "http://127.0.0.1:9";
    let dir = tempfile::tempdir().unwrap();
    let alias = "arn:aws:kms:us-east-1:111122223333:alias/recordings";
    let list = write(
        dir.path(),
        "list.yaml",
        &rkc_list(alias, &[ORG_A], &["org-a"]),
    );
    let run = kekeeper(endpoint, &["test", "-f", &list], None).await;
    assert_eq!(run.code, 2);
    assert!(
        run.stdout.contains("RecordingKeyConfig telephony/first: "),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains(
            "RecordingKeyConfig telephony/second: INVALID: spec.organizationIds[0]: \"org-a\" is not a UUID"
        ),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("2 RecordingKeyConfigs tested: some are INVALID"),
        "{}",
        run.stdout
    );

    // Several documents; other kinds are skipped with a note.
    let documents = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: telephony}}\n---\n{}---\n{}",
        manifest(alias, &["org-a"], "RSA_2048"),
        manifest(alias, &["org-b"], "RSA_2048"),
    );
    let file = write(dir.path(), "docs.yaml", &documents);
    let run = kekeeper(endpoint, &["test", "-f", &file], None).await;
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("skipped document 1 (kind Namespace"),
        "{}",
        run.stderr
    );
    assert_eq!(
        run.stdout.matches(": INVALID: ").count(),
        2,
        "{}",
        run.stdout
    );

    // Ten skipped documents are named; the rest are counted.
    let many = format!(
        "{}{}",
        "kind: ConfigMap\n---\n".repeat(25),
        manifest(alias, &["org-a"], "RSA_2048")
    );
    let file = write(dir.path(), "many.yaml", &many);
    let run = kekeeper(endpoint, &["test", "-f", &file], None).await;
    assert_eq!(run.code, 2);
    assert_eq!(
        run.stderr.matches("skipped document ").count(),
        10,
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("skipped 15 more documents that are not RecordingKeyConfigs"),
        "{}",
        run.stderr
    );

    // keypair generate takes exactly one.
    let run = kekeeper(
        endpoint,
        &["keypair", "generate", "-f", &list, "--org", ORG_A],
        None,
    )
    .await;
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("holds 2 RecordingKeyConfigs"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn policy_takes_several_principals_and_a_manifest() {
    let endpoint = "http://127.0.0.1:9";
    let dir = tempfile::tempdir().unwrap();
    let alias = "arn:aws:kms:us-east-1:111122223333:alias/recordings";
    let list = write(
        dir.path(),
        "list.yaml",
        &rkc_list(alias, &[ORG_A], &[ORG_B, ORG_A]),
    );
    let genesys = "arn:aws:iam::765628985471:root";
    let role = "arn:aws:iam::111122223333:role/kekeeper";
    let run = kekeeper(
        endpoint,
        &[
            "policy",
            "--seed-principal",
            genesys,
            "--principal",
            role,
            "-f",
            &list,
        ],
        None,
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let statements: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let statements = statements.as_array().unwrap();
    assert_eq!(statements.len(), 3, "{statements:?}");
    for statement in &statements[..2] {
        assert_eq!(
            statement["Condition"]["StringEquals"]["kms:EncryptionContext:genesys-cloud-organization-id"],
            serde_json::json!([ORG_A, ORG_B])
        );
    }
    // The operator: the key-pair operations only; Genesys Cloud: the seed's, in its own
    // statement; DescribeKey for both.
    assert_eq!(statements[0]["Principal"]["AWS"], role);
    assert_eq!(
        statements[0]["Action"],
        serde_json::json!([
            "kms:GenerateDataKeyPairWithoutPlaintext",
            "kms:Decrypt",
            "kms:ReEncryptFrom",
            "kms:ReEncryptTo"
        ])
    );
    assert_eq!(statements[1]["Principal"]["AWS"], genesys);
    assert_eq!(
        statements[1]["Action"],
        serde_json::json!(["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey*"])
    );
    assert_eq!(
        statements[2]["Principal"]["AWS"],
        serde_json::json!([role, genesys])
    );
    assert_eq!(statements[2]["Action"], "kms:DescribeKey");

    // Genesys Cloud's account as the operator's principal (how earlier versions were told to
    // print both) is refused, naming the flag it needs.
    let run = kekeeper(
        endpoint,
        &[
            "policy",
            "--principal",
            genesys,
            "--principal",
            role,
            "-f",
            &list,
        ],
        None,
    )
    .await;
    assert_eq!(run.code, 2, "{}", run.stdout);
    assert!(
        run.stderr.contains("pass it as --seed-principal"),
        "{}",
        run.stderr
    );

    // The manifest's own context key is used; `aws:` keys are refused like the CRD does.
    let tenant = write(
        dir.path(),
        "tenant.yaml",
        &manifest(alias, &["t1"], "RSA_2048").replace(
            "  keyPairSpec:",
            "  encryptionContextKey: tenant-id\n  keyPairSpec:",
        ),
    );
    let run = kekeeper(
        endpoint,
        &["policy", "--principal", role, "-f", &tenant],
        None,
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("kms:EncryptionContext:tenant-id"),
        "{}",
        run.stdout
    );
    let run = kekeeper(
        endpoint,
        &[
            "policy",
            "--principal",
            role,
            "--org-id",
            "o",
            "--context-key",
            "aws:x",
        ],
        None,
    )
    .await;
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("KMS reserves"), "{}", run.stderr);
    let run = kekeeper(endpoint, &["policy", "--help"], None).await;
    assert!(
        run.stdout.contains("KMS key policy statements")
            && run.stdout.contains("--seed-principal")
            && run.stdout.contains("--identity-policy"),
        "{}",
        run.stdout
    );
}

#[tokio::test]
async fn policy_with_a_key_store_adds_the_role_policy_as_a_second_document() {
    let endpoint = "http://127.0.0.1:9";
    let role = "arn:aws:iam::111122223333:role/kekeeper";
    let base = ["policy", "--principal", role, "--org-id", "o1"];
    let without = kekeeper(endpoint, &base, None).await;
    assert_eq!(without.code, 0, "{}", without.stderr);
    let mut args = base.to_vec();
    args.extend(["--key-store", "s3://acme-kekeeper/prod-eu"]);
    let run = kekeeper(endpoint, &args, None).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    // The key policy first, unchanged; then the identity policy, as `jq -s` reads them.
    assert!(run.stdout.starts_with(&without.stdout), "{}", run.stdout);
    let documents: Vec<serde_json::Value> = serde_json::Deserializer::from_str(&run.stdout)
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(documents.len(), 2, "{}", run.stdout);
    let statements = documents[1]["Statement"].as_array().unwrap();
    assert_eq!(
        statements[0]["Resource"],
        "arn:aws:s3:::acme-kekeeper/prod-eu/*"
    );
    assert_eq!(
        statements[1]["Condition"]["StringLike"]["s3:prefix"],
        "prod-eu/*"
    );
    assert!(
        run.stderr
            .contains("IAM identity policy for the operator's role"),
        "{}",
        run.stderr
    );

    let mut bad = base.to_vec();
    bad.extend(["--key-store", "https://acme-kekeeper"]);
    let run = kekeeper(endpoint, &bad, None).await;
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("only s3:// key stores are supported"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn test_takes_its_configs_from_a_file_or_the_cluster() {
    let endpoint = "http://127.0.0.1:9";
    let run = kekeeper(endpoint, &["test"], None).await;
    assert_eq!(run.code, 2, "{}", run.stdout);
    let run = kekeeper(endpoint, &["test", "-f", "c.yaml", "--all"], None).await;
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("cannot be used with"), "{}", run.stderr);
    let run = kekeeper(endpoint, &["test", "-A", "-n", "team-a"], None).await;
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("cannot be used with"), "{}", run.stderr);
    // By name from one namespace only; checked before any connection is made.
    let run = kekeeper(endpoint, &["test", "rec", "-n", "a", "-n", "b"], None).await;
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("at most one -n"), "{}", run.stderr);
    let run = kekeeper(endpoint, &["test", "--help"], None).await;
    assert!(
        run.stdout.contains("--all-namespaces") && run.stdout.contains("--max-organizations"),
        "{}",
        run.stdout
    );
}

#[tokio::test]
async fn policy_identity_policy_scopes_the_kms_operations_to_the_configs_keys() {
    let endpoint = "http://127.0.0.1:9";
    let dir = tempfile::tempdir().unwrap();
    let alias = "arn:aws:kms:us-east-1:111122223333:alias/recordings";
    let config = write(dir.path(), "c.yaml", &manifest(alias, &[ORG_A], "RSA_2048"));
    let role = "arn:aws:iam::111122223333:role/kekeeper";
    let base = ["policy", "--principal", role, "-f", &config];
    let key_policy = kekeeper(endpoint, &base, None).await;
    assert_eq!(key_policy.code, 0, "{}", key_policy.stderr);

    let mut args = base.to_vec();
    args.extend([
        "--identity-policy",
        "--key-store",
        "s3://acme-kekeeper/prod-us",
    ]);
    let run = kekeeper(endpoint, &args, None).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    // The key policy first, unchanged; then one identity policy: KMS, then the key store.
    assert!(run.stdout.starts_with(&key_policy.stdout), "{}", run.stdout);
    let documents: Vec<serde_json::Value> = serde_json::Deserializer::from_str(&run.stdout)
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(documents.len(), 2, "{}", run.stdout);
    let statements = documents[1]["Statement"].as_array().unwrap();
    assert_eq!(
        statements[0],
        serde_json::json!({
            "Sid": "KekeeperKmsKeys",
            "Effect": "Allow",
            "Action": ["kms:GenerateDataKeyPairWithoutPlaintext", "kms:Decrypt", "kms:ReEncryptFrom", "kms:ReEncryptTo", "kms:DescribeKey"],
            "Resource": "arn:aws:kms:us-east-1:111122223333:key/*",
            "Condition": {"ForAnyValue:StringEquals": {"kms:ResourceAliases": ["alias/recordings"]}}
        })
    );
    assert_eq!(statements[1]["Sid"], "KekeeperKeyStoreObjects");
    assert_eq!(statements[2]["Sid"], "KekeeperKeyStoreList");
    assert!(run.stderr.contains("kms:ResourceAliases"), "{}", run.stderr);

    // Exact keys by --key-arn.
    let key = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
    let mut pinned = base.to_vec();
    pinned.extend(["--identity-policy", "--key-arn", key]);
    let run = kekeeper(endpoint, &pinned, None).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let documents: Vec<serde_json::Value> = serde_json::Deserializer::from_str(&run.stdout)
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        documents[1]["Statement"][0]["Resource"],
        serde_json::json!([key])
    );

    // No keys to scope to, or an alias where a key ARN belongs: exit 2, saying what to give.
    let run = kekeeper(
        endpoint,
        &[
            "policy",
            "--principal",
            role,
            "--org-id",
            ORG_A,
            "--identity-policy",
        ],
        None,
    )
    .await;
    assert_eq!(run.code, 2, "{}", run.stdout);
    assert!(run.stderr.contains("--key-arn"), "{}", run.stderr);
    let mut alias_as_key = base.to_vec();
    alias_as_key.extend(["--identity-policy", "--key-arn", alias]);
    let run = kekeeper(endpoint, &alias_as_key, None).await;
    assert_eq!(run.code, 2, "{}", run.stdout);
    assert!(
        run.stderr.contains("is not a KMS key ARN"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn backup_and_restore_say_what_the_file_holds_and_check_their_input() {
    let endpoint = "http://127.0.0.1:9";
    let run = kekeeper(endpoint, &["backup", "--help"], None).await;
    assert!(
        run.stdout.contains("Nothing in the file is plaintext"),
        "{}",
        run.stdout
    );
    // Neither a name nor --all; --all-namespaces without --all.
    assert_eq!(
        kekeeper(endpoint, &["backup", "-o", "x.json"], None)
            .await
            .code,
        2
    );
    assert_eq!(
        kekeeper(
            endpoint,
            &["backup", "recordings", "-A", "-o", "x.json"],
            None
        )
        .await
        .code,
        2
    );
    let dir = tempfile::tempdir().unwrap();
    let not_backup = write(dir.path(), "secret.yaml", "apiVersion: v1\nkind: Secret\n");
    let run = kekeeper(endpoint, &["restore", "-f", &not_backup], None).await;
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("is not a kekeeper backup file"),
        "{}",
        run.stderr
    );
    let run = kekeeper(endpoint, &["restore", "-f", "/nonexistent/b.json"], None).await;
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("-f /nonexistent/b.json"),
        "{}",
        run.stderr
    );
}

/// `kekeeper completion SHELL` prints a script the shell accepts, naming the subcommands.
#[tokio::test]
async fn completion_prints_a_script_for_bash_zsh_and_fish() {
    let endpoint = "http://127.0.0.1:9";
    for (shell, marker) in [
        ("bash", "complete -F _kekeeper"),
        ("zsh", "#compdef kekeeper"),
        ("fish", "complete -c kekeeper"),
    ] {
        let run = kekeeper(endpoint, &["completion", shell], None).await;
        assert_eq!(run.code, 0, "{shell}: {}", run.stderr);
        assert!(run.stdout.contains(marker), "{shell}:\n{}", run.stdout);
        for subcommand in ["status", "rotate", "backup", "restore", "completion"] {
            assert!(run.stdout.contains(subcommand), "{shell}: {subcommand}");
        }
    }
    // bash itself takes the script and registers the completion.
    let run = kekeeper(endpoint, &["completion", "bash"], None).await;
    let dir = tempfile::tempdir().unwrap();
    let script = write(dir.path(), "kekeeper.bash", &run.stdout);
    let registered = std::process::Command::new("bash")
        .args(["-c", &format!("source {script} && complete -p kekeeper")])
        .output()
        .expect("bash");
    assert!(registered.status.success());
    assert!(String::from_utf8_lossy(&registered.stdout).contains("_kekeeper kekeeper"));
    let run = kekeeper(endpoint, &["completion", "tcsh"], None).await;
    assert_eq!(run.code, 2, "{}", run.stderr);
}
