//! Leader election on a coordination.k8s.io/v1 Lease, the client-go way: get, then create or
//! replace with the read resourceVersion (optimistic concurrency, so two replicas never both
//! win a round); a standby takes over only after the Lease has stood still for a whole lease
//! duration by its own clock; a leader that cannot renew within the renew deadline stops acting;
//! a leader that shuts down releases the Lease so a standby takes over at its next retry.
//! The decisions are in [`election`]; this module does the API calls and the waiting.

pub mod election;

use std::time::Instant;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::controller::context::{Clock, system_clock};
use election::{Election, LeaseTiming, Step};

#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub name: String,
    pub namespace: String,
    /// This replica's identity in the Lease; unique per process.
    pub identity: String,
    pub timing: LeaseTiming,
}

/// The outcome of one round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Round {
    /// This replica holds the Lease (acquired or renewed just now).
    Leading,
    /// Another replica holds the Lease; `None`: another write won the race (409), holder
    /// unknown until the next read.
    StandBy { holder: Option<String> },
}

/// Why a leader has to stop acting.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LostLeadership {
    #[error("the Lease was not renewed within the renew deadline ({0:?})")]
    RenewDeadline(std::time::Duration),
    #[error("the Lease is held by {0}")]
    TakenBy(String),
}

pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    namespace: String,
    election: Election,
    /// The Lease as last written by this replica, while it leads: its resourceVersion guards
    /// the release against a Lease that changed hands since.
    held: Option<Lease>,
    wall: Clock,
}

/// The monotonic clock every judgement uses: tokio's, so tests can pause and advance it.
fn monotonic_now() -> Instant {
    tokio::time::Instant::now().into_std()
}

impl LeaderElector {
    pub fn new(client: Client, settings: LeaseSettings) -> Self {
        LeaderElector {
            api: Api::namespaced(client, &settings.namespace),
            name: settings.name,
            namespace: settings.namespace,
            election: Election::new(settings.identity, settings.timing),
            held: None,
            wall: system_clock(),
        }
    }

    /// The clock for the times written into the Lease (never used to judge expiry).
    pub fn with_wall_clock(mut self, wall: Clock) -> Self {
        self.wall = wall;
        self
    }

    pub fn identity(&self) -> &str {
        self.election.identity()
    }

    pub fn timing(&self) -> &LeaseTiming {
        self.election.timing()
    }

    /// One round: acquires the Lease if it is free or went quiet for a lease duration, renews
    /// it if held.
    pub async fn try_acquire_or_renew(&mut self) -> Result<Round, kube::Error> {
        let read = self.api.get_opt(&self.name).await?;
        let step = self
            .election
            .step(read.as_ref(), monotonic_now(), (self.wall)());
        let sent = monotonic_now();
        let written = match step {
            Step::StandBy { holder } => {
                debug!(lease = %self.name, holder = %holder, "another replica leads");
                self.step_down();
                return Ok(Round::StandBy {
                    holder: Some(holder),
                });
            }
            Step::Create(spec) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        namespace: Some(self.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(spec),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            // `replace` sends the resourceVersion read: a concurrent writer makes this a 409.
            Step::Write(lease) => {
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match written {
            Ok(lease) => {
                self.election.written(&lease, sent, monotonic_now());
                if self.held.replace(lease).is_none() {
                    info!(lease = %self.name, identity = %self.identity(), "acquired leadership");
                }
                Ok(Round::Leading)
            }
            Err(kube::Error::Api(status)) if status.is_conflict() || status.is_already_exists() => {
                Ok(Round::StandBy { holder: None })
            }
            Err(err) => Err(err),
        }
    }

    fn step_down(&mut self) {
        if self.held.take().is_some() {
            warn!(lease = %self.name, identity = %self.identity(), "lost leadership");
        }
        self.election.stepped_down();
    }

    /// Tries every retry period until this replica leads (`true`), or `stop` turns true first.
    pub async fn acquire(&mut self, stop: &mut watch::Receiver<bool>) -> bool {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(Round::Leading) => return true,
                Ok(Round::StandBy { .. }) => {}
                Err(err) => warn!(error = %err, lease = %self.name, "leader election"),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.timing().retry_period()) => {}
                _ = stop.wait_for(|s| *s) => return false,
            }
        }
    }

    /// Renews the Lease every retry period while leading; returns when this replica must stop
    /// acting: another replica holds the Lease, or the renew deadline passed without a renewal
    /// (a hung request counts as a failed one).
    pub async fn keep_leading(&mut self) -> LostLeadership {
        let renew_deadline = self.timing().renew_deadline();
        loop {
            let Some(deadline) = self.election.renew_deadline() else {
                return LostLeadership::RenewDeadline(renew_deadline);
            };
            let deadline = tokio::time::Instant::from_std(deadline);
            let next = tokio::time::Instant::now() + self.timing().retry_period();
            tokio::time::sleep_until(next.min(deadline)).await;
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            match tokio::time::timeout_at(deadline, self.try_acquire_or_renew()).await {
                Err(_) => break,
                Ok(Ok(Round::Leading)) => {}
                Ok(Ok(Round::StandBy {
                    holder: Some(holder),
                })) => return LostLeadership::TakenBy(holder),
                Ok(Ok(Round::StandBy { holder: None })) => {
                    debug!(lease = %self.name, "renewal lost a race; retrying")
                }
                Ok(Err(err)) => {
                    warn!(error = %err, lease = %self.name, "could not renew the lease")
                }
            }
        }
        self.step_down();
        LostLeadership::RenewDeadline(renew_deadline)
    }

    /// Gives the Lease up (client-go's ReleaseOnCancel) so a standby takes over at its next
    /// retry instead of after a lease duration. Call only once this replica has stopped
    /// acting. `Ok(false)`: nothing to release (not leading, or the Lease changed hands).
    pub async fn release(&mut self) -> Result<bool, kube::Error> {
        let Some(mut lease) = self.held.take() else {
            return Ok(false);
        };
        self.election.stepped_down();
        let Some(spec) = self.election.release(&lease, (self.wall)()) else {
            return Ok(false);
        };
        lease.spec = Some(spec);
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                info!(lease = %self.name, identity = %self.identity(), "released leadership");
                Ok(true)
            }
            Err(kube::Error::Api(status)) if status.is_conflict() => Ok(false),
            Err(err) => Err(err),
        }
    }
}
