//! Leader election on a coordination.k8s.io/v1 Lease: get, then create or replace with the
//! read resourceVersion (optimistic concurrency), so two replicas never both believe they lead.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tracing::{debug, info};

#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub name: String,
    pub namespace: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_period: Duration,
}

pub struct LeaderElector {
    api: Api<Lease>,
    settings: LeaseSettings,
}

impl LeaderElector {
    pub fn new(client: Client, settings: LeaseSettings) -> Self {
        LeaderElector {
            api: Api::namespaced(client, &settings.namespace),
            settings,
        }
    }

    pub fn settings(&self) -> &LeaseSettings {
        &self.settings
    }

    /// One round: acquires the lease if it is free or expired, renews it if held. `Ok(true)`
    /// while this replica leads.
    pub async fn try_acquire_or_renew(&self, now: Timestamp) -> Result<bool, kube::Error> {
        let s = &self.settings;
        let existing = match self.api.get_opt(&s.name).await? {
            Some(lease) => lease,
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(s.name.clone()),
                        namespace: Some(s.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(self.spec(now, now, 0)),
                };
                return match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => {
                        info!(lease = %s.name, identity = %s.identity, "acquired leadership (new lease)");
                        Ok(true)
                    }
                    Err(kube::Error::Api(status)) if status.is_already_exists() => Ok(false),
                    Err(err) => Err(err),
                };
            }
        };
        let spec = existing.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let held_by_me = holder == s.identity;
        let duration = spec
            .lease_duration_seconds
            .map_or(s.lease_duration, |d| Duration::from_secs(d.max(0) as u64));
        let expired = spec.renew_time.as_ref().is_none_or(|renewed| {
            renewed
                .0
                .checked_add(SignedDuration::try_from(duration).unwrap_or(SignedDuration::ZERO))
                .is_ok_and(|until| until < now)
        });
        if !held_by_me && !holder.is_empty() && !expired {
            debug!(lease = %s.name, holder = %holder, "another replica leads");
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!held_by_me);
        let acquired = if held_by_me {
            spec.acquire_time.map_or(now, |t| t.0)
        } else {
            now
        };
        let mut lease = existing;
        lease.spec = Some(self.spec(acquired, now, transitions));
        // `replace` sends the resourceVersion we read: a concurrent writer makes this a 409.
        match self
            .api
            .replace(&s.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                if !held_by_me {
                    info!(lease = %s.name, identity = %s.identity, previous = %holder, "acquired leadership");
                }
                Ok(true)
            }
            Err(kube::Error::Api(status)) if status.is_conflict() => Ok(false),
            Err(err) => Err(err),
        }
    }

    fn spec(&self, acquired: Timestamp, renewed: Timestamp, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.settings.identity.clone()),
            lease_duration_seconds: Some(self.settings.lease_duration.as_secs() as i32),
            acquire_time: Some(MicroTime(acquired)),
            renew_time: Some(MicroTime(renewed)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }
}
