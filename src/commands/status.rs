//! `kekeeper status NAME [-n NS] [-o json|yaml]`: one screen with what a key-custody team asks
//! first (cmctl's `status certificate` is the model): conditions, active key pairs with their
//! age, the KMS key, the published ConfigMap, the last custody check, the next rotation, the
//! last KMS error, recent history and the resource's events.
//!
//! `kekeeper status [-n NS | -A]` without a name: one line per RecordingKeyConfig with its
//! verdict. `--exit-code` exits [`EXIT_NOT_READY`] unless every resource shown is Ready.

use std::io::{self, Write};
use std::process::ExitCode;

use jiff::Timestamp;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use serde::Serialize;

use super::cluster::{Cluster, connect, not_found};
use super::common::{EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, fail};
use crate::cli::{OutputFormat, StatusArgs};
use crate::controller::report::public_keys_config_map_name;
use crate::controller::status::{
    KEY_PAIR_INTEGRITY, KEY_STORE_SYNCED, READY, RECONCILING, STALLED,
};
use crate::crd::{RecordingKeyConfig, RecordingKeyConfigStatus};

/// Events shown: the newest ones, oldest first as `kubectl describe` lists them.
const RECENT_EVENTS: usize = 10;

/// `--exit-code`: a resource shown is not Ready (the status itself was read and printed).
pub const EXIT_NOT_READY: u8 = 3;

pub async fn execute(args: StatusArgs) -> ExitCode {
    let cluster = match connect(&args.kube).await {
        Ok(c) => c,
        Err(e) => return fail(EXIT_BAD_INPUT, e),
    };
    match args.name.clone() {
        Some(name) => one(&args, cluster, &name).await,
        None => list(&args, cluster).await,
    }
}

/// The exit code once everything was printed: [`EXIT_NOT_READY`] with `--exit-code` when a
/// resource is not Ready.
fn verdict_exit(args: &StatusArgs, all_ready: bool) -> ExitCode {
    if args.exit_code && !all_ready {
        ExitCode::from(EXIT_NOT_READY)
    } else {
        ExitCode::from(EXIT_OK)
    }
}

fn print_as(format: OutputFormat, value: &impl Serialize) -> Result<(), String> {
    let text = match format {
        OutputFormat::Json => serde_json::to_string_pretty(value).map_err(|e| e.to_string())?,
        OutputFormat::Yaml => serde_yaml::to_string(value).map_err(|e| e.to_string())?,
    };
    writeln!(io::stdout().lock(), "{}", text.trim_end()).map_err(|e| e.to_string())
}

async fn one(args: &StatusArgs, cluster: Cluster, name: &str) -> ExitCode {
    let namespace = cluster.namespace.as_str();
    let api: Api<RecordingKeyConfig> = Api::namespaced(cluster.client.clone(), namespace);
    let rkc = match api.get_opt(name).await {
        Ok(Some(rkc)) => rkc,
        Ok(None) => {
            return fail(
                EXIT_BAD_INPUT,
                not_found("recordingkeyconfig", name, namespace),
            );
        }
        Err(e) => {
            return fail(EXIT_FAILED, format!("cannot read {namespace}/{name}: {e}"));
        }
    };
    let ready = verdict(&rkc).is_ready();
    if let Some(format) = args.output {
        let status = rkc.status.clone().unwrap_or_default();
        return match print_as(format, &status) {
            Ok(()) => verdict_exit(args, ready),
            Err(e) => fail(EXIT_FAILED, e),
        };
    }
    let events_api: Api<Event> = Api::namespaced(cluster.client, namespace);
    let selector = format!("regarding.uid={}", rkc.uid().unwrap_or_default());
    let events = match events_api
        .list(&ListParams::default().fields(&selector))
        .await
    {
        Ok(list) => list.items,
        Err(e) => {
            eprintln!("kekeeper: warning: cannot list the events of {namespace}/{name}: {e}");
            Vec::new()
        }
    };
    match render(&mut io::stdout().lock(), &rkc, &events, Timestamp::now()) {
        Ok(()) => verdict_exit(args, ready),
        Err(e) => fail(EXIT_FAILED, format!("cannot write the status: {e}")),
    }
}

async fn list(args: &StatusArgs, cluster: Cluster) -> ExitCode {
    let namespace = cluster.namespace.as_str();
    let api: Api<RecordingKeyConfig> = if args.all_namespaces {
        Api::all(cluster.client)
    } else {
        Api::namespaced(cluster.client, namespace)
    };
    let mut items = match api.list(&ListParams::default()).await {
        Ok(list) => list.items,
        Err(e) if args.all_namespaces => {
            return fail(EXIT_FAILED, format!("cannot list RecordingKeyConfigs: {e}"));
        }
        Err(e) => {
            return fail(
                EXIT_FAILED,
                format!("cannot list the RecordingKeyConfigs in namespace {namespace:?}: {e}"),
            );
        }
    };
    items.sort_by_key(|r| (r.namespace(), r.name_any()));
    let verdicts: Vec<Verdict> = items.iter().map(verdict).collect();
    let all_ready = verdicts.iter().all(Verdict::is_ready);
    if let Some(format) = args.output {
        return match print_as(format, &verdicts) {
            Ok(()) => verdict_exit(args, all_ready),
            Err(e) => fail(EXIT_FAILED, e),
        };
    }
    if verdicts.is_empty() {
        if args.all_namespaces {
            eprintln!("No RecordingKeyConfigs found.");
        } else {
            eprintln!("No RecordingKeyConfigs found in namespace {namespace:?}.");
        }
        return verdict_exit(args, true);
    }
    match render_list(&mut io::stdout().lock(), &verdicts, args.all_namespaces) {
        Ok(()) => verdict_exit(args, all_ready),
        Err(e) => fail(EXIT_FAILED, format!("cannot write the status: {e}")),
    }
}

/// A RecordingKeyConfig's verdict, one line of `kekeeper status` without a name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub namespace: String,
    pub name: String,
    /// `Ready`; `Suspended`; `Stalled` (needs a person: the reason says why); `InProgress`
    /// (work pending, or status not yet written for this generation); `NotReady`.
    pub verdict: &'static str,
    /// The Ready condition's reason.
    pub reason: String,
    /// The Ready condition's message.
    pub message: String,
    pub organizations: usize,
    /// The KeyStoreSynced condition's reason, `None` without a key store.
    #[serde(rename = "keyStore")]
    pub key_store: Option<String>,
}

impl Verdict {
    pub fn is_ready(&self) -> bool {
        self.verdict == "Ready"
    }
}

fn condition<'a>(status: &'a RecordingKeyConfigStatus, type_: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

/// The verdict the way kstatus reads the conditions (docs/status.md#conditions): Ready only
/// when Ready is True for the resource's current generation.
pub fn verdict(rkc: &RecordingKeyConfig) -> Verdict {
    let empty = RecordingKeyConfigStatus::default();
    let status = rkc.status.as_ref().unwrap_or(&empty);
    let ready = condition(status, READY);
    let is_true = |type_: &str| condition(status, type_).is_some_and(|c| c.status == "True");
    let generation = rkc.metadata.generation;
    let current = generation.is_none()
        || (status.observed_generation >= generation
            && ready.is_some_and(|c| c.observed_generation.is_none_or(|g| Some(g) >= generation)));
    let reason = ready.map(|c| c.reason.clone()).unwrap_or_default();
    let verdict = if is_true(READY) && current {
        "Ready"
    } else if reason == "Suspended" && current {
        "Suspended"
    } else if is_true(STALLED) && current {
        "Stalled"
    } else if !current || is_true(RECONCILING) {
        "InProgress"
    } else {
        "NotReady"
    };
    Verdict {
        namespace: rkc.namespace().unwrap_or_default(),
        name: rkc.name_any(),
        verdict,
        reason: if ready.is_none() {
            "NoStatusYet".to_owned()
        } else {
            reason
        },
        message: ready.map(|c| c.message.clone()).unwrap_or_default(),
        organizations: rkc.spec.organization_ids.len(),
        key_store: condition(status, KEY_STORE_SYNCED).map(|c| c.reason.clone()),
    }
}

/// One line per RecordingKeyConfig.
pub fn render_list(
    out: &mut impl Write,
    verdicts: &[Verdict],
    all_namespaces: bool,
) -> io::Result<()> {
    let rows: Vec<Vec<String>> = verdicts
        .iter()
        .map(|v| {
            let mut row = Vec::new();
            if all_namespaces {
                row.push(v.namespace.clone());
            }
            row.extend([
                v.name.clone(),
                v.verdict.to_owned(),
                v.reason.clone(),
                v.organizations.to_string(),
                v.key_store.clone().unwrap_or_else(|| "none".to_owned()),
                v.message.clone(),
            ]);
            row
        })
        .collect();
    let mut headers = Vec::new();
    if all_namespaces {
        headers.push("NAMESPACE");
    }
    headers.extend(["NAME", "VERDICT", "REASON", "ORGS", "KEY STORE", "MESSAGE"]);
    columns(out, &headers, &rows, "")
}

/// The readable screen.
pub fn render(
    out: &mut impl Write,
    rkc: &RecordingKeyConfig,
    events: &[Event],
    now: Timestamp,
) -> io::Result<()> {
    let spec = &rkc.spec;
    let empty = RecordingKeyConfigStatus::default();
    let status = rkc.status.as_ref().unwrap_or(&empty);
    writeln!(out, "Name:           {}", rkc.name_any())?;
    writeln!(
        out,
        "Namespace:      {}",
        rkc.namespace().unwrap_or_default()
    )?;
    writeln!(out, "Alias:          {}", spec.kms_key_alias_arn)?;
    writeln!(
        out,
        "Rotation:       {:?} (on KMS key change: {:?}){}",
        spec.rotation.period,
        spec.rotation.on_kms_key_change,
        if spec.suspend { ", SUSPENDED" } else { "" }
    )?;
    writeln!(
        out,
        "Organisations:  {} ({}, encryption context key {})",
        spec.organization_ids.len(),
        spec.key_pair_spec,
        spec.encryption_context_key
    )?;
    writeln!(
        out,
        "Generation:     {} (status observed {})",
        rkc.metadata.generation.unwrap_or_default(),
        status
            .observed_generation
            .map_or("none yet".to_owned(), |g| g.to_string())
    )?;
    writeln!(out, "Key store:      {}", key_store(status))?;
    writeln!(
        out,
        "KMS key:        {}",
        match (&status.kms_key_arn, status.last_kms_key_check_time) {
            (Some(arn), Some(t)) => format!("{arn} (alias checked {} ago)", age(t, now)),
            (Some(arn), None) => arn.clone(),
            (None, _) => "not resolved yet".to_owned(),
        }
    )?;
    // Which KMS keys the retained pairs still depend on (docs/design.md, "Rewrap"); only
    // when it is not just the current key.
    if status.kms_keys.len() > 1
        || status
            .kms_keys
            .iter()
            .any(|k| Some(&k.kms_key_arn) != status.kms_key_arn.as_ref())
    {
        let keys: Vec<String> = status
            .kms_keys
            .iter()
            .map(|k| format!("{}: {}", k.kms_key_arn, k.key_pairs))
            .collect();
        writeln!(out, "Key pairs by KMS key: {}", keys.join(", "))?;
    }
    writeln!(
        out,
        "Public keys:    ConfigMap {} ({} active key pairs; docs/recorders.md)",
        public_keys_config_map_name(&rkc.name_any()),
        status.active_key_pairs.len()
    )?;
    writeln!(out, "Custody check:  {}", custody(status, now))?;
    write_conditions(out, status, now)?;
    write_key_pairs(out, status, now)?;
    write_problems(out, status, now)?;
    write_rotation_and_kms(out, status, now)?;
    write_history(out, status, spec.history_limit, now)?;
    write_events(out, events, now)
}

/// The `KeyStoreSynced` condition in one line; without it (the operator runs without
/// `--key-store`) where the key pairs live and what to do about it.
fn key_store(status: &RecordingKeyConfigStatus) -> String {
    match status
        .conditions
        .iter()
        .find(|c| c.type_ == KEY_STORE_SYNCED)
    {
        Some(c) => format!("{} {}: {}", c.status, c.reason, c.message),
        None => "none \u{2014} key pairs live only in this cluster; back them up with kekeeper \
                 backup (docs/disaster-recovery.md)"
            .to_owned(),
    }
}

/// The last custody check (every active pair's blob decrypted through KMS and compared with
/// its recorded fingerprint) and the KeyPairIntegrity verdict.
fn custody(status: &RecordingKeyConfigStatus, now: Timestamp) -> String {
    let verdict = condition(status, KEY_PAIR_INTEGRITY)
        .map(|c| format!("{} {}", c.status, c.reason))
        .unwrap_or_else(|| "no KeyPairIntegrity condition yet".to_owned());
    // Which Region answered, when a replica did (docs/design.md, "Multi-Region reads").
    let through = status
        .last_key_verify_replica_read
        .as_ref()
        .map(|read| format!(", {read}"))
        .unwrap_or_default();
    match status.last_key_verify_time {
        Some(t) => format!(
            "{} ago ({t}){through}; KeyPairIntegrity {verdict}",
            age(t, now)
        ),
        None => format!("none yet; KeyPairIntegrity {verdict}"),
    }
}

fn write_problems(
    out: &mut impl Write,
    status: &RecordingKeyConfigStatus,
    now: Timestamp,
) -> io::Result<()> {
    writeln!(out, "\nKey pair problems:")?;
    let rows: Vec<Vec<String>> = status
        .key_pair_problems
        .iter()
        .map(|p| {
            vec![
                p.reason.clone(),
                p.key_pair_id.clone(),
                p.secret_name.clone(),
                age(p.since, now),
                p.message.clone(),
            ]
        })
        .collect();
    table(
        out,
        &["REASON", "KEY PAIR", "SECRET", "SINCE", "MESSAGE"],
        &rows,
        "none",
    )
}

fn write_conditions(
    out: &mut impl Write,
    status: &RecordingKeyConfigStatus,
    now: Timestamp,
) -> io::Result<()> {
    writeln!(out, "\nConditions:")?;
    let rows: Vec<Vec<String>> = status
        .conditions
        .iter()
        .map(|c| {
            vec![
                c.type_.clone(),
                c.status.clone(),
                c.reason.clone(),
                age(c.last_transition_time.0, now),
                c.message.clone(),
            ]
        })
        .collect();
    table(
        out,
        &["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"],
        &rows,
        "none yet",
    )
}

fn write_key_pairs(
    out: &mut impl Write,
    status: &RecordingKeyConfigStatus,
    now: Timestamp,
) -> io::Result<()> {
    writeln!(out, "\nActive key pairs:")?;
    let rows: Vec<Vec<String>> = status
        .active_key_pairs
        .iter()
        .map(|p| {
            vec![
                p.organization_id.clone(),
                p.key_pair_id.clone(),
                age(p.created_at, now),
                p.key_pair_spec.to_string(),
                p.public_key_fingerprint.clone(),
                p.secret_name.clone(),
            ]
        })
        .collect();
    table(
        out,
        &[
            "ORGANISATION",
            "KEY PAIR",
            "AGE",
            "SPEC",
            "FINGERPRINT",
            "SECRET",
        ],
        &rows,
        "none",
    )
}

fn write_rotation_and_kms(
    out: &mut impl Write,
    status: &RecordingKeyConfigStatus,
    now: Timestamp,
) -> io::Result<()> {
    writeln!(out)?;
    let when = |t: Option<Timestamp>| match t {
        Some(t) if t > now => format!("{t} (in {})", age(now, t)),
        Some(t) => format!("{t} ({} ago)", age(t, now)),
        None => "none".to_owned(),
    };
    writeln!(out, "Last rotation:  {}", when(status.last_rotation_time))?;
    writeln!(out, "Next rotation:  {}", when(status.next_rotation_time))?;
    match &status.last_kms_error {
        Some(e) => writeln!(
            out,
            "Last KMS error: {} {}: {} ({} ago{})\n                {}",
            e.operation,
            e.code,
            e.time,
            age(e.time, now),
            e.resolved_at
                .map(|t| format!(", resolved {} ago", age(t, now)))
                .unwrap_or_default(),
            e.message
        )?,
        None => writeln!(out, "Last KMS error: none")?,
    }
    if let Some(failed) = status.failed_attempts.filter(|n| *n > 0) {
        writeln!(
            out,
            "Failed attempts: {failed} in a row{} (retried with backoff)",
            status
                .last_failure_time
                .map(|t| format!(", the last {} ago", age(t, now)))
                .unwrap_or_default()
        )?;
    }
    match &status.last_test {
        Some(t) => writeln!(
            out,
            "Last self-test: {} {} ago: {}",
            if t.passed { "passed" } else { "FAILED" },
            age(t.time, now),
            t.message
        ),
        None => writeln!(out, "Last self-test: none"),
    }
}

fn write_history(
    out: &mut impl Write,
    status: &RecordingKeyConfigStatus,
    limit: u32,
    now: Timestamp,
) -> io::Result<()> {
    writeln!(out, "\nHistory (newest first, historyLimit {limit}):")?;
    let rows: Vec<Vec<String>> = status
        .key_pair_history
        .iter()
        .take(limit as usize)
        .map(|h| {
            vec![
                age(h.created_at, now),
                h.organization_id.clone(),
                h.key_pair_id.clone(),
                h.reason.clone(),
                match (h.missing, h.retired_at) {
                    (true, _) => "MISSING (Secret gone)".to_owned(),
                    (false, None) => "active".to_owned(),
                    (false, Some(t)) => format!("retired {} ago", age(t, now)),
                },
                h.secret_name.clone(),
            ]
        })
        .collect();
    table(
        out,
        &[
            "AGE",
            "ORGANISATION",
            "KEY PAIR",
            "REASON",
            "STATE",
            "SECRET",
        ],
        &rows,
        "none",
    )
}

/// When an event last happened: its series' last observation, else its time.
fn event_time(event: &Event) -> Option<Timestamp> {
    event
        .series
        .as_ref()
        .map(|s| s.last_observed_time.0)
        .or(event.event_time.as_ref().map(|t| t.0))
        .or(event.deprecated_last_timestamp.as_ref().map(|t| t.0))
}

fn write_events(out: &mut impl Write, events: &[Event], now: Timestamp) -> io::Result<()> {
    writeln!(out, "\nEvents:")?;
    let mut events: Vec<&Event> = events.iter().collect();
    events.sort_by_key(|e| event_time(e));
    let recent = &events[events.len().saturating_sub(RECENT_EVENTS)..];
    let rows: Vec<Vec<String>> = recent
        .iter()
        .map(|e| {
            let count = e.series.as_ref().map_or(1, |s| s.count);
            vec![
                e.type_.clone().unwrap_or_default(),
                e.reason.clone().unwrap_or_default(),
                event_time(e).map_or("?".to_owned(), |t| age(t, now)),
                if count > 1 {
                    format!("x{count}")
                } else {
                    String::new()
                },
                e.note.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(
        out,
        &["TYPE", "REASON", "AGE", "COUNT", "MESSAGE"],
        &rows,
        "none",
    )
}

/// Left-aligned columns two spaces apart, indented; `empty` when there are no rows.
fn table(
    out: &mut impl Write,
    headers: &[&str],
    rows: &[Vec<String>],
    empty: &str,
) -> io::Result<()> {
    if rows.is_empty() {
        return writeln!(out, "  {empty}");
    }
    aligned(out, headers, rows, "  ")
}

/// Left-aligned columns three spaces apart, not indented, as `kubectl get` prints them.
fn columns(
    out: &mut impl Write,
    headers: &[&str],
    rows: &[Vec<String>],
    empty: &str,
) -> io::Result<()> {
    if rows.is_empty() {
        return writeln!(out, "{empty}");
    }
    aligned(out, headers, rows, "")
}

fn aligned(
    out: &mut impl Write,
    headers: &[&str],
    rows: &[Vec<String>],
    indent: &str,
) -> io::Result<()> {
    let widths: Vec<usize> = (0..headers.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([headers[i].len()])
                .max()
                .unwrap_or_default()
        })
        .collect();
    // kubectl separates its columns by three spaces; the indented tables by two.
    let gap = if indent.is_empty() { 3 } else { 2 };
    let line = |cells: Vec<&str>| {
        let mut text = String::from(indent);
        for (cell, width) in cells.iter().zip(&widths) {
            text.push_str(cell);
            text.extend(std::iter::repeat_n(' ', width - cell.chars().count() + gap));
        }
        text.trim_end().to_owned()
    };
    writeln!(out, "{}", line(headers.to_vec()))?;
    for row in rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

/// kubectl's short ages: 45s, 12m, 5h, 3d, 2y.
pub fn age(from: Timestamp, to: Timestamp) -> String {
    let seconds = to.as_second().saturating_sub(from.as_second()).max(0);
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 180 * 60 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s if s < 730 * 86400 => format!("{}d", s / 86400),
        s => format!("{}y", s / (365 * 86400)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ActiveKeyPair, KeyPairHistoryEntry, LastKmsError};
    use crate::kms::KeyPairSpec;
    use k8s_openapi::api::events::v1::EventSeries;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, MicroTime, Time};

    const ORG: &str = "3fa85f64-5717-4562-b3fc-2c963f66afa6";

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn rkc() -> RecordingKeyConfig {
        let spec = serde_json::from_value(serde_json::json!({
            "kmsKeyAliasArn": "arn:aws:kms:us-east-1:111122223333:alias/recordings",
            "organizationIds": [ORG],
            "historyLimit": 1,
        }))
        .unwrap();
        let mut rkc = RecordingKeyConfig::new("recordings", spec);
        rkc.metadata.namespace = Some("telephony".into());
        rkc.metadata.generation = Some(3);
        let condition = |type_: &str, status: &str, reason: &str| Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: format!("{type_} message"),
            observed_generation: Some(3),
            last_transition_time: Time(ts("2026-11-30T09:55:00Z")),
        };
        let entry = |created: &str, retired: Option<&str>, reason: &str| KeyPairHistoryEntry {
            organization_id: ORG.into(),
            key_pair_id: format!("kp-{created}"),
            created_at: ts(created),
            retired_at: retired.map(ts),
            reason: reason.into(),
            kms_key_arn: "arn:aws:kms:us-east-1:111122223333:key/k".into(),
            kms_key_alias_arn: None,
            public_key_fingerprint: "SHA256:abc".into(),
            secret_name: "recordings-secret".into(),
            sequence: None,
            missing: false,
            rewrapped_kms_key_arn: None,
            rewrapped_at: None,
        };
        rkc.status = Some(RecordingKeyConfigStatus {
            observed_generation: Some(3),
            conditions: vec![
                condition("Ready", "True", "KeyPairsActive"),
                condition("Stalled", "False", "NotStalled"),
            ],
            active_key_pairs: vec![ActiveKeyPair {
                organization_id: ORG.into(),
                key_pair_id: "kp-2".into(),
                created_at: ts("2026-11-28T10:00:00Z"),
                kms_key_arn: "arn:aws:kms:us-east-1:111122223333:key/k".into(),
                kms_key_alias_arn: None,
                key_pair_spec: KeyPairSpec::Rsa3072,
                public_key_fingerprint: "SHA256:abc".into(),
                secret_name: "recordings-secret".into(),
                rewrapped_kms_key_arn: None,
                rewrapped_at: None,
            }],
            key_pair_history: vec![
                entry("2026-11-28T10:00:00Z", None, "RotateNowRequested"),
                entry(
                    "2026-10-01T10:00:00Z",
                    Some("2026-11-28T10:00:00Z"),
                    "NoActiveKeyPair",
                ),
            ],
            next_rotation_time: Some(ts("2026-12-28T10:00:00Z")),
            last_kms_error: Some(LastKmsError {
                time: ts("2026-11-30T09:00:00Z"),
                operation: "DescribeKey".into(),
                code: "ThrottlingException".into(),
                message: "Rate exceeded".into(),
                resolved_at: Some(ts("2026-11-30T09:30:00Z")),
            }),
            failed_attempts: Some(2),
            last_failure_time: Some(ts("2026-11-30T09:00:00Z")),
            ..RecordingKeyConfigStatus::default()
        });
        rkc
    }

    fn event(reason: &str, at: &str, count: i32) -> Event {
        Event {
            type_: Some("Normal".into()),
            reason: Some(reason.into()),
            note: Some(format!("{reason} note")),
            event_time: Some(MicroTime(ts(at))),
            series: (count > 1).then(|| EventSeries {
                count,
                last_observed_time: MicroTime(ts(at)),
            }),
            ..Event::default()
        }
    }

    #[test]
    fn the_screen_shows_conditions_pairs_rotation_errors_history_and_events() {
        let events = [
            event("KeyPairRotated", "2026-11-28T10:00:00Z", 1),
            event("KmsUnavailable", "2026-11-30T09:00:00Z", 3),
        ];
        let mut out = Vec::new();
        render(&mut out, &rkc(), &events, ts("2026-11-30T10:00:00Z")).unwrap();
        let text = String::from_utf8(out).unwrap();
        for expected in [
            "Namespace:      telephony",
            "Generation:     3 (status observed 3)",
            "Key store:      none \u{2014} key pairs live only in this cluster; back them up with kekeeper backup (docs/disaster-recovery.md)",
            "Ready    True    KeyPairsActive  5m",
            "Stalled  False   NotStalled",
            "kp-2      2d",
            "Next rotation:  2026-12-28T10:00:00Z (in 28d)",
            "Last KMS error: DescribeKey ThrottlingException: 2026-11-30T09:00:00Z (60m ago, resolved 30m ago)",
            "Failed attempts: 2 in a row, the last 60m ago",
            "Rate exceeded",
            "History (newest first, historyLimit 1):",
            "RotateNowRequested",
            "KmsUnavailable  60m  x3     KmsUnavailable note",
        ] {
            assert!(text.contains(expected), "{expected:?} missing in:\n{text}");
        }
        assert!(
            !text.contains("NoActiveKeyPair"),
            "history beyond the limit:\n{text}"
        );
        let rotated = text.find("KeyPairRotated").unwrap();
        assert!(
            rotated < text.find("KmsUnavailable  ").unwrap(),
            "oldest first:\n{text}"
        );
    }

    #[test]
    fn the_key_store_line_shows_its_condition() {
        let mut rkc = rkc();
        let status = rkc.status.as_mut().unwrap();
        status.conditions.push(Condition {
            type_: KEY_STORE_SYNCED.into(),
            status: "False".into(),
            reason: "KeyStoreUnavailable".into(),
            message: "key store s3://acme/prod: ListObjectsV2: AccessDenied".into(),
            observed_generation: Some(3),
            last_transition_time: Time(ts("2026-11-30T09:55:00Z")),
        });
        let mut out = Vec::new();
        render(&mut out, &rkc, &[], ts("2026-11-30T10:00:00Z")).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains(
                "Key store:      False KeyStoreUnavailable: key store s3://acme/prod: ListObjectsV2: AccessDenied\n"
            ),
            "{text}"
        );
        assert!(!text.contains("live only in this cluster"), "{text}");
    }

    #[test]
    fn a_resource_without_status_says_so() {
        let mut rkc = rkc();
        rkc.status = None;
        let mut out = Vec::new();
        render(&mut out, &rkc, &[], Timestamp::UNIX_EPOCH).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("status observed none yet"), "{text}");
        assert!(text.contains("Conditions:\n  none yet"), "{text}");
        assert!(text.contains("Last KMS error: none"), "{text}");
    }

    #[test]
    fn the_screen_names_the_kms_key_the_configmap_the_custody_check_and_problems() {
        let mut rkc = rkc();
        let status = rkc.status.as_mut().unwrap();
        status.kms_key_arn = Some("arn:aws:kms:us-east-1:111122223333:key/k".into());
        status.last_kms_key_check_time = Some(ts("2026-11-30T09:50:00Z"));
        status.last_key_verify_time = Some(ts("2026-11-30T05:00:00Z"));
        status.conditions.push(Condition {
            type_: KEY_PAIR_INTEGRITY.into(),
            status: "False".into(),
            reason: "KeyPairMissing".into(),
            message: String::new(),
            observed_generation: Some(3),
            last_transition_time: Time(ts("2026-11-30T09:55:00Z")),
        });
        status.key_pair_problems.push(
            serde_json::from_value(serde_json::json!({
                "organizationId": ORG, "keyPairId": "kp-1", "secretName": "recordings-old",
                "reason": "KeyPairMissing", "message": "the Secret is gone",
                "since": "2026-11-30T08:00:00Z",
            }))
            .unwrap(),
        );
        let mut out = Vec::new();
        render(&mut out, &rkc, &[], ts("2026-11-30T10:00:00Z")).unwrap();
        let text = String::from_utf8(out).unwrap();
        for expected in [
            "KMS key:        arn:aws:kms:us-east-1:111122223333:key/k (alias checked 10m ago)\n",
            "Public keys:    ConfigMap recordings-public-keys (1 active key pairs; docs/recorders.md)\n",
            "Custody check:  5h ago (2026-11-30T05:00:00Z); KeyPairIntegrity False KeyPairMissing\n",
            "Key pair problems:\n  REASON          KEY PAIR  SECRET          SINCE  MESSAGE\n  KeyPairMissing  kp-1      recordings-old  120m   the Secret is gone\n",
        ] {
            assert!(text.contains(expected), "{expected:?} missing in:\n{text}");
        }

        // A check a replica answered says which Region, and why.
        rkc.status.as_mut().unwrap().last_key_verify_replica_read =
            Some(crate::crd::ReplicaReadStatus {
                region: "eu-west-1".into(),
                home_region: "us-east-1".into(),
                home_error: "NetworkError".into(),
            });
        let mut out = Vec::new();
        render(&mut out, &rkc, &[], ts("2026-11-30T10:00:00Z")).unwrap();
        let text = String::from_utf8(out).unwrap();
        let expected = "Custody check:  5h ago (2026-11-30T05:00:00Z), through replica in eu-west-1: the home Region us-east-1 failed with NetworkError; KeyPairIntegrity False KeyPairMissing\n";
        assert!(text.contains(expected), "{expected:?} missing in:\n{text}");
    }

    fn with_ready(status: &str, reason: &str, observed: i64) -> RecordingKeyConfig {
        let mut rkc = rkc();
        let s = rkc.status.as_mut().unwrap();
        s.observed_generation = Some(observed);
        s.conditions[0].status = status.into();
        s.conditions[0].reason = reason.into();
        s.conditions[0].observed_generation = Some(observed);
        rkc
    }

    /// Ready only when Ready is True for the current generation, as kstatus reads it.
    #[test]
    fn the_verdict_reads_ready_for_the_current_generation() {
        let cases = [
            (with_ready("True", "KeyPairsActive", 3), "Ready"),
            (with_ready("True", "KeyPairsActive", 2), "InProgress"),
            (with_ready("False", "Suspended", 3), "Suspended"),
            (with_ready("False", "KmsUnavailable", 3), "NotReady"),
        ];
        for (rkc, expected) in cases {
            let v = verdict(&rkc);
            assert_eq!(v.verdict, expected, "{v:?}");
            assert_eq!(v.is_ready(), expected == "Ready");
        }
        let mut stalled = with_ready("False", "ConfigInvalid", 3);
        stalled.status.as_mut().unwrap().conditions[1] = Condition {
            status: "True".into(),
            reason: "ConfigInvalid".into(),
            ..stalled.status.as_ref().unwrap().conditions[1].clone()
        };
        assert_eq!(verdict(&stalled).verdict, "Stalled");
        let mut fresh = rkc();
        fresh.status = None;
        let v = verdict(&fresh);
        assert_eq!(
            (v.verdict, v.reason.as_str()),
            ("InProgress", "NoStatusYet")
        );
    }

    #[test]
    fn the_list_has_one_line_per_resource() {
        let mut other = with_ready("False", "Suspended", 3);
        other.metadata.namespace = Some("billing".into());
        other.metadata.name = Some("archive".into());
        let verdicts = [
            verdict(&with_ready("True", "KeyPairsActive", 3)),
            verdict(&other),
        ];
        let mut out = Vec::new();
        render_list(&mut out, &verdicts, true).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "NAMESPACE   NAME         VERDICT     REASON           ORGS   KEY STORE   MESSAGE\n\
             telephony   recordings   Ready       KeyPairsActive   1      none        Ready message\n\
             billing     archive      Suspended   Suspended        1      none        Ready message\n"
        );
        let mut out = Vec::new();
        render_list(&mut out, &verdicts[..1], false).unwrap();
        assert!(
            String::from_utf8(out)
                .unwrap()
                .starts_with("NAME         VERDICT")
        );
    }

    #[test]
    fn ages_read_like_kubectl() {
        let t0 = ts("2026-01-01T00:00:00Z");
        let after = |s: i64| age(t0, t0 + jiff::SignedDuration::from_secs(s));
        assert_eq!(after(59), "59s");
        assert_eq!(after(3600), "60m");
        assert_eq!(after(5 * 3600), "5h");
        assert_eq!(after(3 * 86400), "3d");
        assert_eq!(after(800 * 86400), "2y");
        assert_eq!(age(t0, ts("2025-01-01T00:00:00Z")), "0s");
    }
}
