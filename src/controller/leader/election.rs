//! The leader-election state machine, without I/O: given the Lease as read and the time, what to
//! write. Time comes in as values (a monotonic `Instant` for every judgement, a wall-clock
//! `Timestamp` only for the fields written), so it is tested without sleeping.
//!
//! As client-go's leaderelection: a standby judges expiry by its own clock, from the moment it
//! last saw the Lease change, never by comparing the holder's `renewTime` with its wall clock
//! (the nodes' clocks may disagree); a leader stops acting once it has gone `renew_deadline`
//! without a successful renewal, which is before any standby may take over.

use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

/// How long a Lease lasts, how long a leader may go without renewing it, and how often each
/// replica tries (client-go's defaults: 15 s, 10 s, 2 s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTiming {
    lease_duration: Duration,
    renew_deadline: Duration,
    retry_period: Duration,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TimingError {
    #[error(
        "--lease-duration must be a whole number of seconds, at least 1s (the Lease stores \
         seconds); got {0:?}"
    )]
    LeaseDuration(Duration),
    #[error(
        "--renew-deadline ({renew_deadline:?}) must be shorter than --lease-duration \
         ({lease_duration:?}), so a leader stops before a standby may take over"
    )]
    RenewDeadline {
        renew_deadline: Duration,
        lease_duration: Duration,
    },
    #[error(
        "--retry-period ({retry_period:?}) must be above zero and shorter than \
         --renew-deadline ({renew_deadline:?}), so a leader retries before it gives up"
    )]
    RetryPeriod {
        retry_period: Duration,
        renew_deadline: Duration,
    },
}

impl Default for LeaseTiming {
    fn default() -> Self {
        LeaseTiming {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

impl LeaseTiming {
    pub fn new(
        lease_duration: Duration,
        renew_deadline: Duration,
        retry_period: Duration,
    ) -> Result<Self, TimingError> {
        if lease_duration < Duration::from_secs(1) || lease_duration.subsec_nanos() != 0 {
            return Err(TimingError::LeaseDuration(lease_duration));
        }
        if renew_deadline >= lease_duration {
            return Err(TimingError::RenewDeadline {
                renew_deadline,
                lease_duration,
            });
        }
        if retry_period.is_zero() || retry_period >= renew_deadline {
            return Err(TimingError::RetryPeriod {
                retry_period,
                renew_deadline,
            });
        }
        Ok(LeaseTiming {
            lease_duration,
            renew_deadline,
            retry_period,
        })
    }

    pub fn lease_duration(&self) -> Duration {
        self.lease_duration
    }

    pub fn renew_deadline(&self) -> Duration {
        self.renew_deadline
    }

    pub fn retry_period(&self) -> Duration {
        self.retry_period
    }
}

/// What one round decided.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// No Lease yet: create it, held by this replica.
    Create(LeaseSpec),
    /// Write the Lease as read (its resourceVersion guards the write) with a new spec: an
    /// acquisition or a renewal.
    Write(Box<Lease>),
    /// Another replica holds the Lease, and this replica saw it change less than its
    /// `leaseDurationSeconds` ago.
    StandBy { holder: String },
}

/// What identifies one version of the Lease record: any write by the holder changes it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Record {
    holder: Option<String>,
    renew_time: Option<Timestamp>,
    resource_version: Option<String>,
}

/// The record last seen to change, and when (by this replica's monotonic clock).
#[derive(Clone, Debug)]
struct Observation {
    record: Record,
    at: Instant,
    lease_duration: Duration,
}

#[derive(Clone, Debug)]
pub struct Election {
    identity: String,
    timing: LeaseTiming,
    observed: Option<Observation>,
    /// When the last successful acquisition or renewal was sent (while leading).
    renewed_at: Option<Instant>,
}

impl Election {
    pub fn new(identity: String, timing: LeaseTiming) -> Self {
        Election {
            identity,
            timing,
            observed: None,
            renewed_at: None,
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    pub fn timing(&self) -> &LeaseTiming {
        &self.timing
    }

    /// One round: what to do with the Lease as read (`None`: it does not exist) at `now`.
    pub fn step(&mut self, lease: Option<&Lease>, now: Instant, wall: Timestamp) -> Step {
        let Some(lease) = lease else {
            return Step::Create(self.spec(wall, wall, 0));
        };
        let spec = lease.spec.clone().unwrap_or_default();
        self.observe(lease, now);
        let transitions = spec.lease_transitions.unwrap_or(0);
        let spec = match holder(lease) {
            Some(holder) if holder == self.identity => {
                let acquired = spec.acquire_time.map_or(wall, |t| t.0);
                self.spec(acquired, wall, transitions)
            }
            Some(holder) if self.seen_valid(now) => return Step::StandBy { holder },
            // Free (released), or its holder went quiet for a whole lease duration.
            _ => self.spec(wall, wall, transitions + 1),
        };
        Step::Write(Box::new(Lease {
            metadata: lease.metadata.clone(),
            spec: Some(spec),
        }))
    }

    /// The write decided by `step` succeeded; `sent` is when it was sent (the server wrote it
    /// later, so the renew deadline counted from `sent` errs on the safe side).
    pub fn written(&mut self, lease: &Lease, sent: Instant, now: Instant) {
        self.observe(lease, now);
        self.renewed_at = Some(sent);
    }

    /// This replica no longer leads (it released the Lease, or saw another holder).
    pub fn stepped_down(&mut self) {
        self.renewed_at = None;
    }

    /// While leading: the instant by which the Lease must have been renewed again, or this
    /// replica has to stop acting.
    pub fn renew_deadline(&self) -> Option<Instant> {
        self.renewed_at.map(|at| at + self.timing.renew_deadline)
    }

    /// The spec that gives the Lease up (client-go's ReleaseOnCancel): no holder, and a
    /// one-second duration for electors that look only at the time. `None` when this replica
    /// does not hold `lease`.
    pub fn release(&self, lease: &Lease, wall: Timestamp) -> Option<LeaseSpec> {
        if holder(lease).as_deref() != Some(self.identity.as_str()) {
            return None;
        }
        let transitions = lease.spec.as_ref().and_then(|s| s.lease_transitions);
        Some(LeaseSpec {
            holder_identity: None,
            lease_duration_seconds: Some(1),
            acquire_time: Some(MicroTime(wall)),
            renew_time: Some(MicroTime(wall)),
            lease_transitions: transitions,
            ..LeaseSpec::default()
        })
    }

    fn observe(&mut self, lease: &Lease, now: Instant) {
        let spec = lease.spec.as_ref();
        let record = Record {
            holder: holder(lease),
            renew_time: spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0),
            resource_version: lease.metadata.resource_version.clone(),
        };
        if self.observed.as_ref().is_some_and(|o| o.record == record) {
            return;
        }
        let lease_duration = spec
            .and_then(|s| s.lease_duration_seconds)
            .map_or(self.timing.lease_duration, |s| {
                Duration::from_secs(s.max(0) as u64)
            });
        self.observed = Some(Observation {
            record,
            at: now,
            lease_duration,
        });
    }

    /// Whether the holder seen last could still be acting, judged from when this replica saw
    /// its record change.
    fn seen_valid(&self, now: Instant) -> bool {
        self.observed
            .as_ref()
            .is_some_and(|o| now < o.at + o.lease_duration)
    }

    fn spec(&self, acquired: Timestamp, renewed: Timestamp, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.timing.lease_duration.as_secs() as i32),
            acquire_time: Some(MicroTime(acquired)),
            renew_time: Some(MicroTime(renewed)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }
}

/// The Lease's holder; an empty identity (client-go's release) counts as none.
fn holder(lease: &Lease) -> Option<String> {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.clone())
        .filter(|h| !h.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;

    const SECOND: Duration = Duration::from_secs(1);

    fn election() -> Election {
        Election::new("pod-a".into(), LeaseTiming::default())
    }

    fn wall() -> Timestamp {
        "2026-01-15T10:00:00Z".parse().unwrap()
    }

    fn lease(holder: Option<&str>, renewed: &str, version: &str) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some("kekeeper-leader".into()),
                resource_version: Some(version.into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_owned),
                lease_duration_seconds: Some(15),
                renew_time: Some(MicroTime(renewed.parse().unwrap())),
                acquire_time: Some(MicroTime(renewed.parse().unwrap())),
                lease_transitions: Some(3),
                ..LeaseSpec::default()
            }),
        }
    }

    fn is_acquisition(step: &Step) -> bool {
        let Step::Write(lease) = step else {
            return false;
        };
        let spec = lease.spec.as_ref().unwrap();
        spec.holder_identity.as_deref() == Some("pod-a") && spec.lease_transitions == Some(4)
    }

    #[test]
    fn timing_defaults_are_client_gos_and_bad_timings_are_refused() {
        let timing = LeaseTiming::default();
        assert_eq!(
            (
                timing.lease_duration(),
                timing.renew_deadline(),
                timing.retry_period()
            ),
            (15 * SECOND, 10 * SECOND, 2 * SECOND)
        );
        assert_eq!(
            LeaseTiming::new(15 * SECOND, 10 * SECOND, 2 * SECOND),
            Ok(timing)
        );
        let cases = [
            (15 * SECOND, 15 * SECOND, 2 * SECOND, "--renew-deadline"),
            (15 * SECOND, 10 * SECOND, 10 * SECOND, "--retry-period"),
            (15 * SECOND, 10 * SECOND, Duration::ZERO, "--retry-period"),
            (Duration::from_millis(1500), SECOND, SECOND / 2, "whole"),
            (Duration::ZERO, SECOND, SECOND / 2, "--lease-duration"),
        ];
        for (lease, renew, retry, named) in cases {
            let err = LeaseTiming::new(lease, renew, retry).unwrap_err();
            assert!(err.to_string().contains(named), "{err}");
        }
    }

    #[test]
    fn creates_an_absent_lease() {
        let step = election().step(None, Instant::now(), wall());
        let Step::Create(spec) = step else {
            panic!("{step:?}")
        };
        assert_eq!(spec.holder_identity.as_deref(), Some("pod-a"));
        assert_eq!(spec.lease_duration_seconds, Some(15));
        assert_eq!(spec.lease_transitions, Some(0));
    }

    #[test]
    fn waits_a_whole_lease_duration_from_its_own_first_sight() {
        let mut election = election();
        let t0 = Instant::now();
        // Renewed an hour "ago" by the holder's clock: irrelevant, this replica just saw it.
        let stale = lease(Some("pod-b"), "2026-01-15T09:00:00Z", "7");
        for elapsed in [0, 2, 14] {
            assert_eq!(
                election.step(Some(&stale), t0 + elapsed * SECOND, wall()),
                Step::StandBy {
                    holder: "pod-b".into()
                },
                "{elapsed}s after first sight"
            );
        }
        assert!(is_acquisition(&election.step(
            Some(&stale),
            t0 + 15 * SECOND,
            wall()
        )));
    }

    #[test]
    fn a_holder_that_keeps_renewing_is_never_overtaken_whatever_its_clock_says() {
        let mut election = election();
        let t0 = Instant::now();
        // The holder's clock is an hour behind ours: its renewTime always looks expired.
        for round in 0..20u32 {
            let renewed = lease(Some("pod-b"), "2026-01-15T09:00:00Z", &round.to_string());
            let step = election.step(Some(&renewed), t0 + round * 2 * SECOND, wall());
            assert!(matches!(step, Step::StandBy { .. }), "round {round}");
        }
    }

    #[test]
    fn a_holder_whose_clock_runs_ahead_is_overtaken_once_it_goes_quiet() {
        let mut election = election();
        let t0 = Instant::now();
        // renewTime an hour in our future: a wall-clock comparison would wait an hour.
        let ahead = lease(Some("pod-b"), "2026-01-15T11:00:00Z", "9");
        assert!(matches!(
            election.step(Some(&ahead), t0, wall()),
            Step::StandBy { .. }
        ));
        assert!(is_acquisition(&election.step(
            Some(&ahead),
            t0 + 15 * SECOND,
            wall()
        )));
    }

    #[test]
    fn a_change_restarts_the_wait() {
        let mut election = election();
        let t0 = Instant::now();
        let first = lease(Some("pod-b"), "2026-01-15T10:00:00Z", "10");
        let renewed = lease(Some("pod-b"), "2026-01-15T10:00:10Z", "11");
        election.step(Some(&first), t0, wall());
        election.step(Some(&renewed), t0 + 10 * SECOND, wall());
        assert!(matches!(
            election.step(Some(&renewed), t0 + 24 * SECOND, wall()),
            Step::StandBy { .. }
        ));
        assert!(is_acquisition(&election.step(
            Some(&renewed),
            t0 + 25 * SECOND,
            wall()
        )));
    }

    #[test]
    fn a_released_lease_is_taken_at_once() {
        let mut election = election();
        let t0 = Instant::now();
        let held = lease(Some("pod-b"), "2026-01-15T10:00:00Z", "10");
        election.step(Some(&held), t0, wall());
        let mut released = lease(None, "2026-01-15T10:00:01Z", "11");
        released.spec.as_mut().unwrap().lease_duration_seconds = Some(1);
        assert!(is_acquisition(&election.step(
            Some(&released),
            t0 + SECOND,
            wall()
        )));
        // client-go writes an empty identity rather than none.
        let mut emptied = released.clone();
        emptied.spec.as_mut().unwrap().holder_identity = Some(String::new());
        assert!(is_acquisition(&election.step(
            Some(&emptied),
            t0 + SECOND,
            wall()
        )));
    }

    #[test]
    fn renews_its_own_lease_keeping_acquire_time_and_transitions() {
        let mut election = election();
        let own = lease(Some("pod-a"), "2026-01-15T09:59:58Z", "12");
        let step = election.step(Some(&own), Instant::now(), wall());
        let Step::Write(written) = step else {
            panic!("{step:?}")
        };
        assert_eq!(written.metadata.resource_version.as_deref(), Some("12"));
        let spec = written.spec.clone().unwrap();
        assert_eq!(spec.lease_transitions, Some(3), "no transition on renewal");
        assert_eq!(
            spec.acquire_time.unwrap().0,
            "2026-01-15T09:59:58Z".parse::<Timestamp>().unwrap()
        );
        assert_eq!(spec.renew_time.unwrap().0, wall());
    }

    #[test]
    fn the_renew_deadline_counts_from_when_the_last_renewal_was_sent() {
        let mut election = election();
        assert_eq!(election.renew_deadline(), None, "not leading");
        let t0 = Instant::now();
        let own = lease(Some("pod-a"), "2026-01-15T10:00:00Z", "13");
        election.written(&own, t0, t0 + SECOND / 2);
        assert_eq!(election.renew_deadline(), Some(t0 + 10 * SECOND));
        election.written(&own, t0 + 2 * SECOND, t0 + 3 * SECOND);
        assert_eq!(election.renew_deadline(), Some(t0 + 12 * SECOND));
        election.stepped_down();
        assert_eq!(election.renew_deadline(), None);
    }

    #[test]
    fn the_leader_stops_before_any_standby_may_take_over() {
        // The leader's last renewal is sent at t0 and written by the server at t0 + w (w ≥ 0);
        // a standby sees the write at t0 + w + s (s ≥ 0) and waits the lease duration from
        // there. The leader's deadline is earlier by at least lease − renew deadline.
        let mut leader = election();
        let mut standby = Election::new("pod-b".into(), LeaseTiming::default());
        let t0 = Instant::now();
        let written = lease(Some("pod-a"), "2026-01-15T10:00:00Z", "20");
        leader.written(&written, t0, t0 + SECOND);
        let seen = t0 + SECOND;
        standby.step(Some(&written), seen, wall());
        let deadline = leader.renew_deadline().unwrap();
        let mut takeover = seen;
        while matches!(
            standby.step(Some(&written), takeover, wall()),
            Step::StandBy { .. }
        ) {
            takeover += SECOND / 10;
        }
        assert!(
            takeover - deadline >= 5 * SECOND,
            "the leader stops {:?} before the takeover",
            takeover - deadline
        );
    }

    #[test]
    fn releases_only_its_own_lease() {
        let election = election();
        let own = lease(Some("pod-a"), "2026-01-15T09:59:58Z", "14");
        let spec = election.release(&own, wall()).expect("held by pod-a");
        assert_eq!(spec.holder_identity, None);
        assert_eq!(spec.lease_duration_seconds, Some(1));
        assert_eq!(spec.lease_transitions, Some(3));
        assert_eq!(spec.renew_time.unwrap().0, wall());
        let other = lease(Some("pod-b"), "2026-01-15T09:59:58Z", "14");
        assert_eq!(election.release(&other, wall()), None);
    }
}
