//! Policy chains (the cert-manager shape): "should this organisation get a new key pair?" and
//! "is the resource ready?" are ordered lists of pure functions over an input with the time
//! passed in, so every rule is testable without I/O or sleeping.

use jiff::{SignedDuration, Span, Timestamp, ToSpan, tz::TimeZone};

use crate::crd::{KmsKeyChangePolicy, RotationPeriod};
use crate::kms::KeyPairSpec;

/// Why a key pair is made (CamelCase in history and events).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RotationReason {
    NoActiveKeyPair,
    SpecChanged,
    KmsKeyChanged,
    /// The active pair failed the custody check: its private key blob no longer decrypts
    /// through KMS to the recorded public key.
    IntegrityCheckFailed,
    RotateNowRequested,
    PeriodElapsed,
}

impl RotationReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RotationReason::NoActiveKeyPair => "NoActiveKeyPair",
            RotationReason::SpecChanged => "SpecChanged",
            RotationReason::KmsKeyChanged => "KmsKeyChanged",
            RotationReason::IntegrityCheckFailed => "IntegrityCheckFailed",
            RotationReason::RotateNowRequested => "RotateNowRequested",
            RotationReason::PeriodElapsed => "PeriodElapsed",
        }
    }
}

impl std::fmt::Display for RotationReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the active key pair of one organisation was made with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActivePair<'a> {
    pub created_at: Timestamp,
    pub kms_key_arn: &'a str,
    /// The alias ARN the pair was made under (recorded on the pair); `None` when unknown, and
    /// then the alias is not compared (docs/design.md, "The alias a pair was made under").
    pub kms_key_alias_arn: Option<&'a str>,
    pub key_pair_spec: KeyPairSpec,
    pub encryption_context_key: &'a str,
}

/// Everything the rotation triggers look at for one organisation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RotationInput<'a> {
    pub now: Timestamp,
    pub active: Option<ActivePair<'a>>,
    /// The spec's alias ARN.
    pub alias_arn: &'a str,
    /// The KMS key ARN the alias resolves to now, when known.
    pub alias_key_arn: Option<&'a str>,
    pub key_pair_spec: KeyPairSpec,
    pub encryption_context_key: &'a str,
    pub period: RotationPeriod,
    pub on_kms_key_change: KmsKeyChangePolicy,
    /// The `kekeeper.io/rotate-now` annotation's token.
    pub rotate_now_token: Option<&'a str>,
    /// The last token honoured (`status.rotateNowToken`).
    pub honoured_token: Option<&'a str>,
    /// The active pair failed the custody check.
    pub integrity_failed: bool,
}

/// A fired trigger: the reason (CamelCase) and a message for people.
pub type Trigger = (RotationReason, String);

pub type RotationPolicy = fn(&RotationInput) -> Option<Trigger>;

/// The rotation triggers, in order; the first that fires names the reason.
pub const ROTATION_CHAIN: &[RotationPolicy] = &[
    no_active_key_pair,
    integrity_check_failed,
    spec_changed,
    kms_key_changed,
    rotate_now_requested,
    period_elapsed,
];

/// Runs the chain: `Some((reason, message))` when the organisation needs a new key pair.
pub fn rotation_needed(input: &RotationInput) -> Option<Trigger> {
    ROTATION_CHAIN.iter().find_map(|policy| policy(input))
}

pub fn no_active_key_pair(input: &RotationInput) -> Option<Trigger> {
    input.active.is_none().then(|| {
        (
            RotationReason::NoActiveKeyPair,
            "the organisation has no active key pair".to_owned(),
        )
    })
}

pub fn integrity_check_failed(input: &RotationInput) -> Option<Trigger> {
    (input.active.is_some() && input.integrity_failed).then(|| {
        (
            RotationReason::IntegrityCheckFailed,
            "the active key pair failed the custody check: recordings encrypted with it could not be decrypted"
                .to_owned(),
        )
    })
}

pub fn spec_changed(input: &RotationInput) -> Option<Trigger> {
    let active = input.active.as_ref()?;
    // The pair's own alias, not a summary of all pairs: an alias change cut short (a KMS
    // failure, a crash) replaces only the pairs still under the old alias.
    if let Some(previous) = active.kms_key_alias_arn
        && previous != input.alias_arn
    {
        return Some((
            RotationReason::SpecChanged,
            format!(
                "kmsKeyAliasArn changed from {previous} to {}",
                input.alias_arn
            ),
        ));
    }
    if active.key_pair_spec != input.key_pair_spec {
        return Some((
            RotationReason::SpecChanged,
            format!(
                "keyPairSpec changed from {} to {}",
                active.key_pair_spec, input.key_pair_spec
            ),
        ));
    }
    if active.encryption_context_key != input.encryption_context_key {
        return Some((
            RotationReason::SpecChanged,
            format!(
                "encryptionContextKey changed from {} to {}",
                active.encryption_context_key, input.encryption_context_key
            ),
        ));
    }
    None
}

pub fn kms_key_changed(input: &RotationInput) -> Option<Trigger> {
    let active = input.active.as_ref()?;
    let now_key = input.alias_key_arn?;
    (input.on_kms_key_change == KmsKeyChangePolicy::Rotate && now_key != active.kms_key_arn).then(
        || {
            (
                RotationReason::KmsKeyChanged,
                format!(
                    "the alias now points at KMS key {now_key}, the active key pair was made under {}",
                    active.kms_key_arn
                ),
            )
        },
    )
}

pub fn rotate_now_requested(input: &RotationInput) -> Option<Trigger> {
    let token = input.rotate_now_token.filter(|t| !t.is_empty())?;
    (input.honoured_token != Some(token)).then(|| {
        (
            RotationReason::RotateNowRequested,
            format!("rotation requested with token {token}"),
        )
    })
}

pub fn period_elapsed(input: &RotationInput) -> Option<Trigger> {
    let active = input.active.as_ref()?;
    let due = rotation_due(active.created_at, input.period)?;
    (input.now >= due).then(|| {
        (
            RotationReason::PeriodElapsed,
            format!(
                "the {:?} rotation period since {} elapsed at {due}",
                input.period, active.created_at
            ),
        )
    })
}

/// When a key pair made at `from` is due for rotation: calendar-exact in UTC (Jan 31 + 1 month
/// is the last day of February; Feb 29 + 1 year is Feb 28). `None` for `Never`.
pub fn rotation_due(from: Timestamp, period: RotationPeriod) -> Option<Timestamp> {
    let span: Span = match period {
        RotationPeriod::Daily => 1.day(),
        RotationPeriod::Weekly => 1.week(),
        RotationPeriod::Monthly => 1.month(),
        RotationPeriod::Yearly => 1.year(),
        RotationPeriod::Never => return None,
    };
    from.to_zoned(TimeZone::UTC)
        .checked_add(span)
        .ok()
        .map(|z| z.timestamp())
}

/// `spec.recordingRetention`: whole days (`2555d`) or hours (`48h`).
pub fn parse_retention(value: &str) -> Result<SignedDuration, String> {
    let (number, unit_hours) = if let Some(days) = value.strip_suffix('d') {
        (days, 24)
    } else if let Some(hours) = value.strip_suffix('h') {
        (hours, 1)
    } else {
        return Err(format!(
            "{value:?} must be a number of days or hours, e.g. 2555d or 48h"
        ));
    };
    let n: i64 = number
        .parse()
        .ok()
        .filter(|_| !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| format!("{value:?} must be a number of days or hours, e.g. 2555d or 48h"))?;
    n.checked_mul(unit_hours)
        .and_then(|h| h.checked_mul(3600))
        .filter(|s| *s <= SignedDuration::MAX.as_secs())
        .map(SignedDuration::from_secs)
        .ok_or_else(|| format!("{value:?} is too long"))
}

/// A retired key pair may be pruned once it has been retired longer than the retention, and
/// never earlier than one full rotation period after its retirement (one day for `Never`):
/// recorders may still encrypt with it until they see the new key, and recordings made with it
/// may still be in flight.
pub fn prune_due(
    retired_at: Timestamp,
    retention: SignedDuration,
    period: RotationPeriod,
) -> Option<Timestamp> {
    let by_retention = retired_at.checked_add(retention).ok()?;
    let floor = match period {
        RotationPeriod::Never => retired_at.checked_add(SignedDuration::from_hours(24)).ok(),
        period => rotation_due(retired_at, period),
    }?;
    Some(by_retention.max(floor))
}

/// What the health chain looks at: the situation after this reconcile's work.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HealthInput<'a> {
    pub suspended: bool,
    /// The spec's problem, if it is invalid (field and fix).
    pub config_error: Option<&'a str>,
    /// The KMS key cannot root key pairs (disabled, missing, wrong type or region):
    /// (reason, message).
    pub key_unusable: Option<(&'a str, &'a str)>,
    /// The last KMS call failed: (code, message, transient).
    pub kms_error: Option<(&'a str, &'a str, bool)>,
    /// A self-test failed for a reason other than KMS.
    pub self_test_failed: Option<&'a str>,
    /// The key store could not be read or did not take a new pair: its message.
    pub store_unavailable: Option<&'a str>,
    pub organizations: usize,
    /// Organisations whose active pair was made under the current spec, alias key and
    /// rotate-now token.
    pub up_to_date: usize,
}

/// (status, reason, message) of a condition.
pub type ConditionVerdict = (bool, &'static str, String);

/// The three kstatus-facing conditions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    pub ready: ConditionVerdict,
    /// Abnormal-true: work is pending and being retried.
    pub reconciling: ConditionVerdict,
    /// Abnormal-true: nothing changes until someone fixes the spec, the key or its policy.
    pub stalled: ConditionVerdict,
}

pub type HealthPolicy = fn(&HealthInput) -> Option<ConditionVerdict>;

/// The reasons `Ready` is False, in order; the first that objects names it.
pub const READINESS_CHAIN: &[HealthPolicy] = &[
    suspended,
    config_invalid,
    kms_key_unusable,
    kms_failed_for_good,
    kms_unavailable_with_work_pending,
    store_unavailable_with_work_pending,
    self_test_failed,
    rotating,
];

/// The health of the resource: `Ready` from the chain; `Stalled` when the objection will not
/// clear by retrying; `Reconciling` while work is pending and being retried.
pub fn health(input: &HealthInput) -> Health {
    let progress = progress(input);
    let objection = READINESS_CHAIN.iter().find_map(|policy| policy(input));
    let Some((_, reason, message)) = objection else {
        return Health {
            ready: (true, "KeyPairsActive", progress),
            reconciling: (false, "ReconcileComplete", "nothing pending".to_owned()),
            stalled: (
                false,
                "NotStalled",
                "nothing needs a change by someone".to_owned(),
            ),
        };
    };
    let stalled = matches!(reason, "ConfigInvalid" | "KmsKeyUnusable")
        || (reason == "KmsUnavailable" && input.kms_error.is_some_and(|(_, _, t)| !t));
    let reconciling = !stalled && reason != "Suspended";
    Health {
        ready: (false, reason, message.clone()),
        reconciling: if reconciling {
            (true, reason, format!("{progress}; {message}"))
        } else {
            (
                false,
                "ReconcileComplete",
                "no work is being retried".to_owned(),
            )
        },
        stalled: if stalled {
            (true, stalled_reason(input, reason), message)
        } else {
            (
                false,
                "NotStalled",
                "nothing needs a change by someone".to_owned(),
            )
        },
    }
}

/// `Stalled`'s reason: the KMS code for a KMS refusal (`AccessDeniedException`), else the
/// Ready reason.
fn stalled_reason(input: &HealthInput, ready_reason: &'static str) -> &'static str {
    match (ready_reason, input.kms_error) {
        ("KmsUnavailable", Some(("AccessDeniedException", _, _))) => "AccessDeniedException",
        _ => ready_reason,
    }
}

fn progress(input: &HealthInput) -> String {
    format!(
        "{}/{} organisations have a key pair under the current spec",
        input.up_to_date, input.organizations
    )
}

fn pending(input: &HealthInput) -> bool {
    input.up_to_date < input.organizations
}

pub fn suspended(input: &HealthInput) -> Option<ConditionVerdict> {
    input.suspended.then(|| {
        (
            false,
            "Suspended",
            format!(
                "spec.suspend is true: no KMS calls and no key changes; {}",
                progress(input)
            ),
        )
    })
}

pub fn config_invalid(input: &HealthInput) -> Option<ConditionVerdict> {
    // Every pair may still be active (recorders keep working); still not Ready, since the
    // spec the user asked for is not in effect.
    input
        .config_error
        .map(|message| (false, "ConfigInvalid", message.to_owned()))
}

pub fn kms_key_unusable(input: &HealthInput) -> Option<ConditionVerdict> {
    input
        .key_unusable
        .map(|(reason, message)| (false, "KmsKeyUnusable", format!("{reason}: {message}")))
}

pub fn kms_failed_for_good(input: &HealthInput) -> Option<ConditionVerdict> {
    match input.kms_error {
        Some((code, message, false)) => {
            Some((false, "KmsUnavailable", format!("{code}: {message}")))
        }
        _ => None,
    }
}

/// A transient KMS failure matters only while work waits on KMS: the active pairs are
/// honoured and recorders keep encrypting.
pub fn kms_unavailable_with_work_pending(input: &HealthInput) -> Option<ConditionVerdict> {
    match input.kms_error {
        Some((code, message, true)) if pending(input) => Some((
            false,
            "KmsUnavailable",
            format!("{code}: {message}; retrying with backoff"),
        )),
        _ => None,
    }
}

/// Like KMS: an unreachable key store matters only while a key pair waits on it (a restore, or
/// a new pair that may not become active before its object is stored).
pub fn store_unavailable_with_work_pending(input: &HealthInput) -> Option<ConditionVerdict> {
    input
        .store_unavailable
        .filter(|_| pending(input))
        .map(|message| {
            (
                false,
                "KeyStoreUnavailable",
                format!("{message}; retrying with backoff"),
            )
        })
}

pub fn self_test_failed(input: &HealthInput) -> Option<ConditionVerdict> {
    input
        .self_test_failed
        .filter(|_| pending(input))
        .map(|message| (false, "SelfTestFailed", message.to_owned()))
}

pub fn rotating(input: &HealthInput) -> Option<ConditionVerdict> {
    pending(input).then(|| (false, "Rotating", progress(input)))
}

/// The instant the next reconcile is due: the earliest of every organisation's rotation, the
/// next KMS key check and the next retention prune.
pub fn next_due(
    rotations: impl IntoIterator<Item = Option<Timestamp>>,
    last_kms_key_check: Option<Timestamp>,
    kms_key_check_interval: SignedDuration,
    prunes: impl IntoIterator<Item = Option<Timestamp>>,
    now: Timestamp,
) -> Timestamp {
    let check = last_kms_key_check
        .and_then(|t| t.checked_add(kms_key_check_interval).ok())
        .unwrap_or(now);
    rotations
        .into_iter()
        .chain(prunes)
        .flatten()
        .chain(std::iter::once(check))
        .min()
        .unwrap_or(check)
}

/// Whether the alias and the retained key pairs' KMS keys are due for a DescribeKey check.
pub fn kms_key_check_due(
    last_check: Option<Timestamp>,
    interval: SignedDuration,
    now: Timestamp,
) -> bool {
    match last_check.and_then(|t| t.checked_add(interval).ok()) {
        Some(due) => now >= due,
        None => true,
    }
}

/// Until when a resource waits after `failed_attempts` consecutive failures, the last at
/// `last_failure` (both from status, so the backoff survives restarts and leader changes).
pub fn backoff_until(failed_attempts: u32, last_failure: Option<Timestamp>) -> Option<Timestamp> {
    if failed_attempts == 0 {
        return None;
    }
    let delay = SignedDuration::try_from(backoff(failed_attempts)).ok()?;
    last_failure?.checked_add(delay).ok()
}

/// Capped exponential backoff for a resource's consecutive failures: 5 s, 10 s, 20 s, ...,
/// at most 5 minutes.
pub fn backoff(consecutive_failures: u32) -> std::time::Duration {
    const BASE: u64 = 5;
    const CAP: u64 = 300;
    let exp = consecutive_failures.saturating_sub(1).min(16);
    std::time::Duration::from_secs(BASE.saturating_mul(1 << exp).min(CAP))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "arn:aws:kms:us-east-1:111122223333:key/a";
    const KEY_B: &str = "arn:aws:kms:us-east-1:111122223333:key/b";
    const ALIAS: &str = "arn:aws:kms:us-east-1:111122223333:alias/recordings";
    const CTX: &str = "genesys-cloud-organization-id";

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn input<'a>() -> RotationInput<'a> {
        RotationInput {
            now: ts("2026-01-15T00:00:00Z"),
            active: Some(ActivePair {
                created_at: ts("2026-01-01T00:00:00Z"),
                kms_key_arn: KEY_A,
                kms_key_alias_arn: Some(ALIAS),
                key_pair_spec: KeyPairSpec::Rsa3072,
                encryption_context_key: CTX,
            }),
            alias_arn: ALIAS,
            alias_key_arn: Some(KEY_A),
            key_pair_spec: KeyPairSpec::Rsa3072,
            encryption_context_key: CTX,
            period: RotationPeriod::Monthly,
            on_kms_key_change: KmsKeyChangePolicy::Rotate,
            rotate_now_token: None,
            honoured_token: None,
            integrity_failed: false,
        }
    }

    #[test]
    fn integrity_check_failed_rotates_before_anything_else_but_a_missing_pair() {
        let mut i = input();
        i.integrity_failed = true;
        i.rotate_now_token = Some("t9");
        assert_eq!(
            rotation_needed(&i).unwrap().0,
            RotationReason::IntegrityCheckFailed
        );
        i.active = None;
        assert_eq!(
            rotation_needed(&i).unwrap().0,
            RotationReason::NoActiveKeyPair
        );
    }

    #[test]
    fn prune_due_is_never_before_one_rotation_period() {
        let retired = ts("2026-01-31T00:00:00Z");
        let zero = SignedDuration::ZERO;
        // Calendar month from Jan 31: Feb 28.
        assert_eq!(
            prune_due(retired, zero, RotationPeriod::Monthly),
            Some(ts("2026-02-28T00:00:00Z"))
        );
        assert_eq!(
            prune_due(retired, zero, RotationPeriod::Never),
            Some(ts("2026-02-01T00:00:00Z"))
        );
        let long = SignedDuration::from_hours(24 * 2555);
        assert_eq!(
            prune_due(retired, long, RotationPeriod::Daily),
            retired.checked_add(long).ok()
        );
    }

    #[test]
    fn steady_state_fires_nothing() {
        assert_eq!(rotation_needed(&input()), None);
    }

    #[test]
    fn no_active_key_pair_table() {
        let mut i = input();
        assert_eq!(no_active_key_pair(&i), None);
        i.active = None;
        assert_eq!(
            no_active_key_pair(&i).unwrap().0,
            RotationReason::NoActiveKeyPair
        );
        // First in the chain: nothing else is asked about a missing pair.
        assert_eq!(
            rotation_needed(&i).unwrap().0,
            RotationReason::NoActiveKeyPair
        );
    }

    #[test]
    fn spec_changed_table() {
        let other_alias = "arn:aws:kms:us-east-1:111122223333:alias/other";
        type Change = Box<dyn Fn(&mut RotationInput)>;
        let cases: Vec<(&str, Change, bool)> = vec![
            ("unchanged", Box::new(|_| {}), false),
            ("alias", Box::new(move |i| i.alias_arn = other_alias), true),
            (
                "unknown previous alias",
                Box::new(move |i| {
                    i.alias_arn = other_alias;
                    if let Some(active) = i.active.as_mut() {
                        active.kms_key_alias_arn = None;
                    }
                }),
                false,
            ),
            (
                "pair already made under the new alias",
                Box::new(move |i| {
                    i.alias_arn = other_alias;
                    if let Some(active) = i.active.as_mut() {
                        active.kms_key_alias_arn = Some(other_alias);
                    }
                }),
                false,
            ),
            (
                "key spec",
                Box::new(|i| i.key_pair_spec = KeyPairSpec::Rsa4096),
                true,
            ),
            (
                "context key",
                Box::new(|i| i.encryption_context_key = "tenant"),
                true,
            ),
            ("no active pair", Box::new(|i| i.active = None), false),
        ];
        for (name, change, fires) in cases {
            let mut i = input();
            change(&mut i);
            let got = spec_changed(&i);
            assert_eq!(got.is_some(), fires, "{name}: {got:?}");
            if let Some((r, _)) = got {
                assert_eq!(r, RotationReason::SpecChanged);
            }
        }
    }

    #[test]
    fn kms_key_changed_table() {
        let cases = [
            (Some(KEY_A), KmsKeyChangePolicy::Rotate, false),
            (Some(KEY_B), KmsKeyChangePolicy::Rotate, true),
            (Some(KEY_B), KmsKeyChangePolicy::Ignore, false),
            (None, KmsKeyChangePolicy::Rotate, false),
        ];
        for (alias_key, policy, fires) in cases {
            let mut i = input();
            i.alias_key_arn = alias_key;
            i.on_kms_key_change = policy;
            assert_eq!(
                kms_key_changed(&i).map(|t| t.0),
                fires.then_some(RotationReason::KmsKeyChanged),
                "{alias_key:?} {policy:?}"
            );
        }
    }

    #[test]
    fn rotate_now_table() {
        let cases = [
            (None, None, false),
            (Some(""), None, false),
            (Some("t1"), None, true),
            (Some("t1"), Some("t1"), false),
            (Some("t2"), Some("t1"), true),
        ];
        for (token, honoured, fires) in cases {
            let mut i = input();
            i.rotate_now_token = token;
            i.honoured_token = honoured;
            assert_eq!(
                rotate_now_requested(&i).map(|t| t.0),
                fires.then_some(RotationReason::RotateNowRequested),
                "{token:?} {honoured:?}"
            );
        }
    }

    #[test]
    fn rotation_due_is_calendar_exact() {
        use RotationPeriod::*;
        let cases = [
            (
                "2026-01-31T10:00:00Z",
                Monthly,
                Some("2026-02-28T10:00:00Z"),
            ),
            (
                "2028-01-31T10:00:00Z",
                Monthly,
                Some("2028-02-29T10:00:00Z"),
            ),
            (
                "2026-03-31T00:00:00Z",
                Monthly,
                Some("2026-04-30T00:00:00Z"),
            ),
            (
                "2026-12-15T23:59:59Z",
                Monthly,
                Some("2027-01-15T23:59:59Z"),
            ),
            ("2028-02-29T12:00:00Z", Yearly, Some("2029-02-28T12:00:00Z")),
            ("2026-06-01T00:00:00Z", Yearly, Some("2027-06-01T00:00:00Z")),
            ("2026-02-28T08:00:00Z", Daily, Some("2026-03-01T08:00:00Z")),
            ("2028-02-28T08:00:00Z", Daily, Some("2028-02-29T08:00:00Z")),
            ("2026-12-29T00:00:00Z", Weekly, Some("2027-01-05T00:00:00Z")),
            ("2026-01-01T00:00:00Z", Never, None),
        ];
        for (from, period, due) in cases {
            assert_eq!(
                rotation_due(ts(from), period),
                due.map(ts),
                "{from} + {period:?}"
            );
        }
    }

    #[test]
    fn period_elapsed_table() {
        use RotationPeriod::*;
        let cases = [
            (Monthly, "2026-01-31T23:59:59Z", false),
            (Monthly, "2026-02-01T00:00:00Z", true),
            (Daily, "2026-01-01T23:59:59Z", false),
            (Daily, "2026-01-02T00:00:00Z", true),
            (Weekly, "2026-01-08T00:00:00Z", true),
            (Yearly, "2026-12-31T00:00:00Z", false),
            (Never, "2099-01-01T00:00:00Z", false),
        ];
        for (period, now, fires) in cases {
            let mut i = input();
            i.period = period;
            i.now = ts(now);
            assert_eq!(
                period_elapsed(&i).map(|t| t.0),
                fires.then_some(RotationReason::PeriodElapsed),
                "{period:?} at {now}"
            );
        }
    }

    #[test]
    fn chain_order_names_the_first_reason() {
        let mut i = input();
        i.now = ts("2027-01-01T00:00:00Z");
        i.rotate_now_token = Some("t");
        i.alias_key_arn = Some(KEY_B);
        i.key_pair_spec = KeyPairSpec::Rsa2048;
        assert_eq!(rotation_needed(&i).unwrap().0, RotationReason::SpecChanged);
        i.key_pair_spec = KeyPairSpec::Rsa3072;
        assert_eq!(
            rotation_needed(&i).unwrap().0,
            RotationReason::KmsKeyChanged
        );
        i.alias_key_arn = Some(KEY_A);
        assert_eq!(
            rotation_needed(&i).unwrap().0,
            RotationReason::RotateNowRequested
        );
        i.rotate_now_token = None;
        assert_eq!(
            rotation_needed(&i).unwrap().0,
            RotationReason::PeriodElapsed
        );
    }

    #[test]
    fn retention_parsing() {
        assert_eq!(
            parse_retention("2555d").unwrap(),
            SignedDuration::from_hours(2555 * 24)
        );
        assert_eq!(
            parse_retention("48h").unwrap(),
            SignedDuration::from_hours(48)
        );
        for bad in ["", "d", "10", "10m", "-1d", "1.5d", "99999999999999999999d"] {
            assert!(parse_retention(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn health_table() {
        let base = HealthInput {
            organizations: 2,
            up_to_date: 2,
            ..HealthInput::default()
        };
        let verdict = |input: &HealthInput| {
            let h = health(input);
            (
                h.ready.0,
                h.ready.1,
                h.reconciling.0,
                h.stalled.0,
                h.stalled.1,
            )
        };
        let ready = health(&base);
        assert_eq!(
            ready.ready,
            (
                true,
                "KeyPairsActive",
                "2/2 organisations have a key pair under the current spec".to_owned()
            )
        );
        assert!(!ready.reconciling.0 && !ready.stalled.0);

        let rotating = HealthInput {
            up_to_date: 1,
            ..base.clone()
        };
        assert_eq!(
            verdict(&rotating),
            (false, "Rotating", true, false, "NotStalled")
        );
        assert!(
            health(&rotating)
                .reconciling
                .2
                .starts_with("1/2 organisations")
        );

        let invalid = HealthInput {
            config_error: Some("spec.homeRegion: differs"),
            ..base.clone()
        };
        assert_eq!(
            verdict(&invalid),
            (false, "ConfigInvalid", false, true, "ConfigInvalid")
        );

        let key = HealthInput {
            key_unusable: Some(("KmsKeyNotEnabled", "disabled")),
            ..base.clone()
        };
        assert_eq!(
            verdict(&key),
            (false, "KmsKeyUnusable", false, true, "KmsKeyUnusable")
        );

        let denied = HealthInput {
            kms_error: Some(("AccessDeniedException", "no", false)),
            ..base.clone()
        };
        assert_eq!(
            verdict(&denied),
            (
                false,
                "KmsUnavailable",
                false,
                true,
                "AccessDeniedException"
            )
        );

        // A transient failure with nothing pending leaves the honoured spec Ready.
        let throttled = HealthInput {
            kms_error: Some(("ThrottlingException", "slow down", true)),
            ..base.clone()
        };
        assert_eq!(
            verdict(&throttled),
            (true, "KeyPairsActive", false, false, "NotStalled")
        );
        let throttled_pending = HealthInput {
            up_to_date: 0,
            ..throttled
        };
        assert_eq!(
            verdict(&throttled_pending),
            (false, "KmsUnavailable", true, false, "NotStalled")
        );

        let store_down = HealthInput {
            store_unavailable: Some("key store s3://b: PutObject k: ServiceUnavailable: down"),
            ..base.clone()
        };
        assert!(verdict(&store_down).0, "no work waits on the store");
        let store_down_pending = HealthInput {
            up_to_date: 1,
            ..store_down
        };
        assert_eq!(
            verdict(&store_down_pending),
            (false, "KeyStoreUnavailable", true, false, "NotStalled")
        );

        let test_failed = HealthInput {
            self_test_failed: Some("mismatch"),
            up_to_date: 1,
            ..base.clone()
        };
        assert_eq!(
            verdict(&test_failed),
            (false, "SelfTestFailed", true, false, "NotStalled")
        );

        let suspended = HealthInput {
            suspended: true,
            config_error: Some("x"),
            ..base
        };
        assert_eq!(
            verdict(&suspended),
            (false, "Suspended", false, false, "NotStalled")
        );
    }

    #[test]
    fn next_due_is_the_earliest() {
        let now = ts("2026-01-01T00:00:00Z");
        let hour = SignedDuration::from_hours(1);
        // Rotation before the key check.
        assert_eq!(
            next_due(
                [Some(ts("2026-01-01T00:30:00Z")), None],
                Some(now),
                hour,
                [],
                now
            ),
            ts("2026-01-01T00:30:00Z")
        );
        // Key check first; Never rotations contribute nothing.
        assert_eq!(
            next_due([None], Some(now), hour, [None], now),
            ts("2026-01-01T01:00:00Z")
        );
        // A prune before both.
        assert_eq!(
            next_due(
                [Some(ts("2026-02-01T00:00:00Z"))],
                Some(now),
                hour,
                [Some(ts("2026-01-01T00:10:00Z"))],
                now
            ),
            ts("2026-01-01T00:10:00Z")
        );
        // Never checked: due now.
        assert_eq!(next_due([None], None, hour, [], now), now);
    }

    #[test]
    fn kms_key_check_due_table() {
        let now = ts("2026-01-01T01:00:00Z");
        let hour = SignedDuration::from_hours(1);
        assert!(kms_key_check_due(None, hour, now));
        assert!(kms_key_check_due(
            Some(ts("2026-01-01T00:00:00Z")),
            hour,
            now
        ));
        assert!(!kms_key_check_due(
            Some(ts("2026-01-01T00:00:01Z")),
            hour,
            now
        ));
    }

    #[test]
    fn backoff_until_counts_from_the_last_failure() {
        let at = ts("2026-01-01T00:00:00Z");
        assert_eq!(backoff_until(0, Some(at)), None);
        assert_eq!(backoff_until(1, None), None);
        assert_eq!(backoff_until(1, Some(at)), Some(ts("2026-01-01T00:00:05Z")));
        assert_eq!(backoff_until(3, Some(at)), Some(ts("2026-01-01T00:00:20Z")));
        assert_eq!(
            backoff_until(30, Some(at)),
            Some(ts("2026-01-01T00:05:00Z"))
        );
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let secs: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(backoff(0).as_secs(), 5);
        assert_eq!(backoff(u32::MAX).as_secs(), 300);
    }
}
