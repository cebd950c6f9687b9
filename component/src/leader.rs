//! Leader election on `coordination.k8s.io/v1` Leases, with upstream client-go's semantics
//! and flags: a candidate takes the Lease when it is absent or its holder has not renewed it
//! within `leaseDurationSeconds`; the leader renews every retry period and gives up (its work
//! is cancelled) when it cannot renew within the renew deadline. Every write is a
//! compare-and-swap on the Lease's resourceVersion, so two candidates never both win.
//!
//! Leases do not fence: work done under a lost lease can still land, so the components that
//! use this stay idempotent and write with resourceVersion preconditions (API-NOTES.md).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::Client;
use tokio_util::sync::CancellationToken;

/// Upstream's leader-election flags.
#[derive(Debug, Clone, clap::Args)]
pub struct LeaderElectionArgs {
    /// Elect a leader among replicas before doing any work.
    #[arg(long = "leader-elect", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// How long a non-renewed lease stays valid.
    #[arg(long = "leader-elect-lease-duration", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before it gives up.
    #[arg(long = "leader-elect-renew-deadline", default_value = "10s", value_parser = parse_duration)]
    pub renew_deadline: Duration,
    /// How often candidates retry and the leader renews.
    #[arg(long = "leader-elect-retry-period", default_value = "2s", value_parser = parse_duration)]
    pub retry_period: Duration,
    /// Namespace of the Lease.
    #[arg(
        long = "leader-elect-resource-namespace",
        default_value = "kube-system"
    )]
    pub namespace: String,
}

impl LeaderElectionArgs {
    pub fn disabled() -> Self {
        LeaderElectionArgs {
            leader_elect: false,
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
            namespace: "kube-system".into(),
        }
    }
}

/// A flag's duration: a Go duration (`15s`, `1m30s`, `500ms`) or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    // kaze's leniency: a bare number is seconds
    if !t.is_empty() && t.chars().all(|c| c.is_ascii_digit() || c == '.') {
        let n: f64 = t.parse().map_err(|_| format!("invalid duration {t:?}"))?;
        return Ok(Duration::from_secs_f64(n));
    }
    parse_go_duration(t)
}

/// Parse a Go duration, as Go's `time.ParseDuration` and so upstream's flags and config
/// files: a sequence of decimal numbers with units `ns`, `us`, `ms`, `s`, `m`, `h` (`1m30s`,
/// `2.5s`, `0`). Negative durations are refused: no setting takes one.
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let bad = |why: &str| format!("invalid duration {s:?}: {why}");
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    if t.is_empty() {
        return Err(bad("empty"));
    }
    if t.starts_with('-') {
        return Err(bad("must not be negative"));
    }
    let mut rest = t.strip_prefix('+').unwrap_or(t);
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(|| bad("missing unit (ns, us, ms, s, m or h)"))?;
        let (num, tail) = rest.split_at(num_end);
        let n: f64 = num.parse().map_err(|_| bad("expected a number"))?;
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            other => return Err(bad(&format!("unknown unit {other:?}"))),
        };
        total += n * scale;
        rest = tail;
    }
    Ok(Duration::from_secs_f64(total))
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("lost the {name} lease: could not renew within {deadline:?}")]
    Lost { name: String, deadline: Duration },
    #[error("leader election for {name}: {source}")]
    Api {
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// A candidate for one Lease.
#[derive(Clone)]
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    args: LeaderElectionArgs,
    health: LeaderHealth,
}

/// Upstream's `leaderElection` health check (client-go's `HealthzAdaptor`): healthy unless
/// this process leads and has not renewed its Lease for longer than the lease duration plus
/// a tolerance (20 s in kube-scheduler and kube-controller-manager).
#[derive(Debug, Clone)]
pub struct LeaderHealth {
    /// When this process last renewed the Lease while leading; None when not leading.
    renewed: std::sync::Arc<std::sync::Mutex<Option<tokio::time::Instant>>>,
    lease: String,
    tolerance: Duration,
}

/// The tolerance kube-scheduler and kube-controller-manager give their leader check.
pub const HEALTH_TOLERANCE: Duration = Duration::from_secs(20);

impl LeaderHealth {
    fn set(&self, renewed: Option<tokio::time::Instant>) {
        *self.renewed.lock().unwrap_or_else(|p| p.into_inner()) = renewed;
    }

    /// Whether this process leads (as far as it knows).
    pub fn is_leader(&self) -> bool {
        self.renewed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// `Err` when leading with a Lease not renewed for longer than `lease_duration` plus
    /// the tolerance.
    pub fn check(&self, lease_duration: Duration) -> Result<(), String> {
        let renewed = *self.renewed.lock().unwrap_or_else(|p| p.into_inner());
        match renewed {
            Some(at) if at.elapsed() > lease_duration + self.tolerance => Err(format!(
                "failed election to renew leadership on lease {}",
                self.lease
            )),
            _ => Ok(()),
        }
    }
}

impl std::fmt::Debug for Elector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Elector")
            .field("name", &self.name)
            .field("identity", &self.identity)
            .finish()
    }
}

/// A unique identity for this process: host name plus a random suffix, as upstream does.
pub fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "kaze".into());
    let nanos = Timestamp::now().as_nanosecond();
    format!(
        "{host}_{:x}{:x}",
        std::process::id(),
        nanos as u64 & 0xffff_ffff
    )
}

enum Outcome {
    Held,
    HeldByOther,
}

impl Elector {
    pub fn new(client: Client, name: &str, identity: &str, args: LeaderElectionArgs) -> Self {
        Elector {
            api: Api::namespaced(client, &args.namespace),
            name: name.to_string(),
            identity: identity.to_string(),
            args,
            health: LeaderHealth {
                renewed: Default::default(),
                lease: name.to_string(),
                tolerance: HEALTH_TOLERANCE,
            },
        }
    }

    /// This candidate's `leaderElection` health check.
    pub fn health(&self) -> LeaderHealth {
        self.health.clone()
    }

    /// The flags it was made with.
    pub fn args(&self) -> &LeaderElectionArgs {
        &self.args
    }

    /// Wait until this candidate leads, then run `work` with a token that is cancelled if
    /// leadership is lost. Returns when `work` returns, `shutdown` fires, or the lease is lost
    /// (an error: upstream components exit then, so another replica takes over cleanly).
    pub async fn run<F, Fut, T>(
        &self,
        shutdown: CancellationToken,
        work: F,
    ) -> Result<Option<T>, LeaderError>
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        if !self.args.leader_elect {
            return Ok(Some(work(shutdown).await));
        }
        // Acquire.
        loop {
            match self.try_acquire_or_renew().await {
                Ok(Outcome::Held) => break,
                Ok(Outcome::HeldByOther) => {}
                Err(e) => {
                    tracing::warn!(error = %e, lease = %self.name, "leader election attempt failed")
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(None),
                _ = tokio::time::sleep(self.args.retry_period) => {}
            }
        }
        tracing::info!(lease = %self.name, identity = %self.identity, "became leader");
        self.health.set(Some(tokio::time::Instant::now()));
        let lost = shutdown.child_token();
        let work_token = lost.clone();
        let renew = async {
            let mut last_renew = tokio::time::Instant::now();
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(self.args.retry_period) => {}
                }
                match self.try_acquire_or_renew().await {
                    Ok(Outcome::Held) => {
                        last_renew = tokio::time::Instant::now();
                        self.health.set(Some(last_renew));
                    }
                    Ok(Outcome::HeldByOther) => {
                        lost.cancel();
                        return Err(LeaderError::Lost {
                            name: self.name.clone(),
                            deadline: self.args.renew_deadline,
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, lease = %self.name, "renewing the lease failed")
                    }
                }
                if last_renew.elapsed() > self.args.renew_deadline {
                    lost.cancel();
                    return Err(LeaderError::Lost {
                        name: self.name.clone(),
                        deadline: self.args.renew_deadline,
                    });
                }
            }
        };
        tokio::pin!(renew);
        let work = work(work_token);
        tokio::pin!(work);
        let result = tokio::select! {
            out = &mut work => Ok(Some(out)),
            r = &mut renew => match r {
                Ok(()) => Ok(Some(work.await)),
                Err(e) => Err(e),
            },
        };
        self.health.set(None);
        if shutdown.is_cancelled() {
            self.release().await;
        }
        result
    }

    fn lease_spec(&self, transitions: i32, acquire: Option<MicroTime>) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.args.lease_duration.as_secs().max(1) as i32),
            acquire_time: Some(acquire.unwrap_or_else(|| now.clone())),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    async fn try_acquire_or_renew(&self) -> Result<Outcome, kube::Error> {
        let existing = self.api.get_opt(&self.name).await?;
        let Some(mut lease) = existing else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    namespace: Some(self.args.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(self.lease_spec(0, None)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Outcome::Held),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Outcome::HeldByOther),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let ours = holder == self.identity;
        if !ours && !holder.is_empty() {
            let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
            let renewed = spec.renew_time.as_ref().map_or(0, |t| t.0.as_second());
            if renewed + duration > Timestamp::now().as_second() {
                return Ok(Outcome::HeldByOther);
            }
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
        let acquire = if ours {
            spec.acquire_time.clone()
        } else {
            None
        };
        lease.spec = Some(self.lease_spec(transitions, acquire));
        // replace() sends the resourceVersion we read: a racing candidate gets 409.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(Outcome::Held),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Outcome::HeldByOther),
            Err(e) => Err(e),
        }
    }

    /// On a clean shutdown, hand the lease back so a standby takes over at once.
    async fn release(&self) {
        if let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await {
            let held = lease
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.as_deref())
                == Some(self.identity.as_str());
            if held {
                if let Some(spec) = lease.spec.as_mut() {
                    spec.holder_identity = None;
                    spec.lease_duration_seconds = Some(1);
                }
                let _ = self
                    .api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        // Go's compound form, as upstream's flags take it
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h0m0s"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["3 days", "", "-1s", "1x", "1m30"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
