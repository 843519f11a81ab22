//! Leader election on a coordination.k8s.io Lease (crate `kube-leader-election`). Only the leader
//! runs the deleter. The crate can briefly let two replicas believe they lead (it takes an expired
//! Lease with an unconditional patch), so leadership here is only a gate for *trying*: every delete
//! is still guarded by uid and resourceVersion preconditions.
//!
//! A replica counts itself leader only until the Lease it last renewed would expire (measured from
//! before the renewing request was sent), so a replica cut off from the API server stops deleting
//! on its own, before another can take over.

use std::time::{Duration, Instant};

use kube::Client;

use crate::k8s::clock::Clock;
use crate::metrics::Metrics;
use kube_leader_election::{LeaseLock, LeaseLockParams, LeaseLockResult};
use tokio::sync::watch;

/// Who may delete, and until when.
#[derive(Clone)]
pub struct Leadership {
    until: watch::Receiver<Option<Instant>>,
}

impl Leadership {
    /// A fixed answer, for running a deleter without an election (tests, one-replica setups).
    pub fn fixed(leading: bool) -> Leadership {
        let until = leading.then(|| Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600));
        let (_tx, rx) = watch::channel(until);
        Leadership { until: rx }
    }

    pub fn is_leading(&self) -> bool {
        self.is_leading_at(Instant::now())
    }

    /// Whether it leads at `now`: only before the deadline of its last renewal.
    pub fn is_leading_at(&self, now: Instant) -> bool {
        matches!(*self.until.borrow(), Some(t) if now < t)
    }

    /// Resolves when leadership may have changed.
    pub async fn changed(&mut self) {
        let _ = self.until.changed().await;
    }
}

/// Until when a replica may count on a Lease it renewed with a request sent at `sent`: a fifth of
/// the Lease's duration before it expires for everyone else (whose clocks start later, when they
/// see the renewal), and well after the next renewal is due (every third of the duration), so a
/// replica that keeps renewing never has a gap.
pub fn lease_deadline(sent: Instant, ttl: Duration) -> Instant {
    sent + ttl - ttl / 5
}

/// How often the Lease is renewed.
pub fn renew_every(ttl: Duration) -> Duration {
    ttl / 3
}

pub struct Election {
    pub namespace: String,
    pub lease_name: String,
    pub identity: String,
    pub ttl: Duration,
    /// A replica whose clock is too far off the API server's does not even try to lead (the
    /// Lease's times, and every delete-at, are judged by clocks).
    pub clock: Clock,
    pub metrics: Metrics,
}

impl Election {
    /// Starts the election; the task ends (releasing the Lease if it led) once `shutdown` changes,
    /// so the caller awaits its handle before exiting.
    pub fn start(
        self,
        client: Client,
        mut shutdown: watch::Receiver<bool>,
    ) -> (Leadership, tokio::task::JoinHandle<()>) {
        let (tx, rx) = watch::channel(None);
        let lock = LeaseLock::new(
            client,
            &self.namespace,
            LeaseLockParams {
                holder_id: self.identity.clone(),
                lease_name: self.lease_name.clone(),
                lease_ttl: self.ttl,
            },
        );
        let period = renew_every(self.ttl);
        let task = tokio::spawn(async move {
            let mut was_leading = false;
            loop {
                let sent = Instant::now();
                let attempt = match self.clock.fit_to_lead() {
                    Ok(()) => Some(lock.try_acquire_or_renew().await),
                    Err(offset) => {
                        if was_leading {
                            tracing::warn!(offset_ms = ?offset.map(|o| o.as_millis()), "clock too far off the API server's: stepping down");
                            self.metrics.leadership_changed(false);
                            let _ = lock.step_down().await;
                        }
                        None
                    }
                };
                let Some(attempt) = attempt else {
                    was_leading = false;
                    let _ = tx.send(None);
                    tokio::select! {
                        _ = tokio::time::sleep(period) => continue,
                        _ = shutdown.changed() => return,
                    }
                };
                match attempt {
                    Ok(LeaseLockResult::Acquired(_)) => {
                        if !was_leading {
                            tracing::info!(identity = %self.identity, "leading: the deleter runs here");
                            self.metrics.leadership_changed(true);
                        }
                        was_leading = true;
                        let _ = tx.send(Some(lease_deadline(sent, self.ttl)));
                    }
                    Ok(LeaseLockResult::NotAcquired(_)) => {
                        if was_leading {
                            tracing::warn!("lost the lease: the deleter stops here");
                            self.metrics.leadership_changed(false);
                        }
                        was_leading = false;
                        let _ = tx.send(None);
                    }
                    // Keep the last deadline: it expires by itself if renewals keep failing.
                    Err(e) => tracing::warn!(error = %e, "lease renewal failed"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(period) => {}
                    _ = shutdown.changed() => {
                        let _ = tx.send(None);
                        if was_leading {
                            match lock.step_down().await {
                                Ok(()) => tracing::info!("lease released"),
                                Err(e) => tracing::warn!(error = %e, "could not release the lease"),
                            }
                        }
                        return;
                    }
                }
            }
        });
        (Leadership { until: rx }, task)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leading_until(until: Option<Instant>) -> (watch::Sender<Option<Instant>>, Leadership) {
        let (tx, rx) = watch::channel(until);
        (tx, Leadership { until: rx })
    }

    #[test]
    fn a_fixed_answer_is_kept() {
        assert!(Leadership::fixed(true).is_leading());
        assert!(!Leadership::fixed(false).is_leading());
    }

    #[test]
    fn leadership_ends_at_the_deadline_of_the_last_renewal() {
        let sent = Instant::now();
        let ttl = Duration::from_secs(15);
        let (_tx, l) = leading_until(Some(lease_deadline(sent, ttl)));
        assert!(l.is_leading_at(sent));
        assert!(l.is_leading_at(sent + Duration::from_secs(11)));
        assert!(
            !l.is_leading_at(sent + Duration::from_secs(12)),
            "12 s = ttl - ttl/5"
        );
        assert!(!l.is_leading_at(sent + ttl));
        let (_tx, none) = leading_until(None);
        assert!(!none.is_leading_at(sent));
    }

    #[test]
    fn the_deadline_falls_after_the_next_renewal_and_before_the_lease_expires() {
        for secs in [3, 15, 60] {
            let ttl = Duration::from_secs(secs);
            let sent = Instant::now();
            let deadline = lease_deadline(sent, ttl);
            assert!(deadline > sent + renew_every(ttl) * 2, "ttl {ttl:?}");
            assert!(deadline < sent + ttl, "ttl {ttl:?}");
        }
    }

    #[tokio::test]
    async fn a_renewal_or_a_loss_wakes_whoever_waits() {
        let (tx, mut l) = leading_until(None);
        let later = Instant::now() + Duration::from_secs(60);
        let waiter = tokio::spawn(async move {
            l.changed().await;
            l.is_leading()
        });
        tx.send(Some(later)).unwrap();
        assert!(waiter.await.unwrap(), "leads after the renewal");
    }
}
