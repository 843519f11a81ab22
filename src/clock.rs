//! One clock for every replica: the API server's. A delete-at written by one replica is judged by
//! another, so a replica whose wall clock runs ahead would delete early. Each replica measures its
//! offset from the `Date` header of the API server's answers (whole seconds: every sample bounds
//! the offset to an interval, and the intervals are intersected), reads time as its own clock
//! corrected by that offset, and judges "is it due yet" by the earliest the true time can be. A
//! replica whose offset exceeds a bound refuses to lead (its clock is broken; it says so).
//!
//! [`Skew`] is the pure estimator; [`Clock`] samples the API server.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use kube::Client;

/// How often the offset is sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(30);

/// What is known of (server time − local time): it lies in `[low, high]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Skew {
    low: SignedDuration,
    high: SignedDuration,
}

impl Skew {
    /// The interval one sample gives: the request left at `sent` and its answer came back at
    /// `received` (local clock), carrying the server's `date` truncated to the second.
    pub fn sample(sent: Timestamp, received: Timestamp, date: Timestamp) -> Skew {
        // The server stamped the answer at some t in [date, date + 1 s), between sent and received.
        Skew {
            low: date.duration_since(received),
            high: (date + SignedDuration::from_secs(1)).duration_since(sent),
        }
    }

    /// Combines with a new sample; a sample that contradicts what is known (the local clock was
    /// stepped) starts afresh from it.
    pub fn with(self, sample: Skew) -> Skew {
        let low = self.low.max(sample.low);
        let high = self.high.min(sample.high);
        if low <= high {
            Skew { low, high }
        } else {
            sample
        }
    }

    /// The best single estimate.
    pub fn offset(self) -> SignedDuration {
        self.low + (self.high - self.low) / 2
    }

    /// The offset furthest from zero that is still possible: what a bound is checked against.
    pub fn worst(self) -> SignedDuration {
        if self.low.abs() > self.high.abs() {
            self.low
        } else {
            self.high
        }
    }

    /// The earliest the server's time can be when the local clock reads `local`.
    pub fn earliest(self, local: Timestamp) -> Timestamp {
        local.checked_add(self.low).unwrap_or(local)
    }

    /// The server's time, best estimate, when the local clock reads `local`.
    pub fn estimate(self, local: Timestamp) -> Timestamp {
        local.checked_add(self.offset()).unwrap_or(local)
    }
}

#[derive(Debug, Default)]
struct State {
    skew: Option<Skew>,
}

/// The replica's clock, corrected to the API server's.
#[derive(Clone)]
pub struct Clock {
    /// Added to the system clock: a replica whose clock is wrong, for tests (never in production).
    local_offset: SignedDuration,
    /// Largest offset a leader may have.
    max_skew: Duration,
    state: Arc<RwLock<State>>,
}

impl Clock {
    pub fn new(local_offset: SignedDuration, max_skew: Duration) -> Clock {
        Clock {
            local_offset,
            max_skew,
            state: Default::default(),
        }
    }

    /// A clock that is the system's, uncorrected (for in-process tests).
    pub fn system() -> Clock {
        Clock::new(SignedDuration::ZERO, Duration::from_secs(3600))
    }

    fn local(&self) -> Timestamp {
        Timestamp::now()
            .checked_add(self.local_offset)
            .unwrap_or_else(|_| Timestamp::now())
    }

    fn skew(&self) -> Option<Skew> {
        self.state.read().unwrap_or_else(|e| e.into_inner()).skew
    }

    /// The API server's time, best estimate (what delete-at is written with).
    pub fn now(&self) -> Timestamp {
        let local = self.local();
        self.skew().map_or(local, |s| s.estimate(local))
    }

    /// The earliest the API server's time can be now (what "due yet?" is judged with: never early).
    pub fn earliest(&self) -> Timestamp {
        let local = self.local();
        self.skew().map_or(local, |s| s.earliest(local))
    }

    /// `Err(offset)` while the measured offset exceeds the bound, or nothing is measured yet:
    /// such a replica must not lead.
    pub fn fit_to_lead(&self) -> Result<(), Option<SignedDuration>> {
        let Some(skew) = self.skew() else {
            return Err(None);
        };
        let worst = skew.worst();
        if worst.unsigned_abs() > self.max_skew {
            Err(Some(worst))
        } else {
            Ok(())
        }
    }

    /// One sample: a GET of `/version`, timed by the local clock, against the answer's `Date`.
    pub async fn sample(&self, client: &Client) -> Result<Skew, String> {
        let request = http::Request::get("/version")
            .body(Vec::new())
            .map_err(|e| e.to_string())?;
        let sent = self.local();
        let response = client.send(request.map(kube::client::Body::from)).await;
        let received = self.local();
        let response = response.map_err(|e| e.to_string())?;
        let date = response
            .headers()
            .get(http::header::DATE)
            .and_then(|d| d.to_str().ok())
            .ok_or("the answer carries no Date header")?;
        let date = jiff::fmt::rfc2822::parse(date)
            .map_err(|e| format!("the Date header {date:?}: {e}"))?
            .timestamp();
        let sample = Skew::sample(sent, received, date);
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        let combined = state.skew.map_or(sample, |s| s.with(sample));
        state.skew = Some(combined);
        Ok(combined)
    }

    /// Samples now and every [`SAMPLE_EVERY`] (a few times quickly first, to narrow the interval).
    pub fn spawn(self, client: Client) {
        tokio::spawn(async move {
            let mut was_fit = true;
            for round in 0u64.. {
                match self.sample(&client).await {
                    Ok(skew) => {
                        let fit = self.fit_to_lead().is_ok();
                        if fit != was_fit || round == 0 {
                            let offset_ms = skew.offset().as_millis();
                            if fit {
                                tracing::info!(
                                    offset_ms,
                                    "clock offset from the API server measured"
                                );
                            } else {
                                tracing::warn!(
                                    offset_ms,
                                    max_s = self.max_skew.as_secs(),
                                    "this replica's clock is off the API server's by more than the bound: it refuses to lead"
                                );
                            }
                        }
                        was_fit = fit;
                    }
                    Err(e) => tracing::warn!(error = %e, "could not measure the clock offset"),
                }
                let wait = if round < 5 {
                    Duration::from_millis(300)
                } else {
                    SAMPLE_EVERY
                };
                tokio::time::sleep(wait).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn one_sample_bounds_the_offset_by_the_round_trip_and_the_second() {
        // Local clock 60 s ahead; a 100 ms round trip.
        let s = Skew::sample(
            t("2026-12-01T10:01:00.200Z"),
            t("2026-12-01T10:01:00.300Z"),
            t("2026-12-01T10:00:00Z"),
        );
        assert!(s.offset() < SignedDuration::from_secs(-59));
        assert!(s.offset() > SignedDuration::from_secs(-61));
        assert_eq!(s.worst().as_secs(), -60);
        // Never early: the earliest possible server time is at most the true one.
        let local = t("2026-12-01T10:01:10Z");
        assert!(s.earliest(local) <= t("2026-12-01T10:00:10.2Z"));
    }

    #[test]
    fn samples_narrow_the_interval_and_a_contradiction_starts_afresh() {
        let a = Skew::sample(
            t("2026-12-01T10:00:00.000Z"),
            t("2026-12-01T10:00:00.010Z"),
            t("2026-12-01T10:00:00Z"),
        );
        // Sent just before the server's second ticked over: it bounds the offset from above.
        let b = Skew::sample(
            t("2026-12-01T10:00:05.950Z"),
            t("2026-12-01T10:00:05.960Z"),
            t("2026-12-01T10:00:05Z"),
        );
        let both = a.with(b);
        assert!(both.high - both.low < a.high - a.low);
        assert!(both.high - both.low < SignedDuration::from_millis(200));
        // The local clock was stepped by an hour: the old knowledge is dropped.
        let stepped = Skew::sample(
            t("2026-12-01T11:00:00.000Z"),
            t("2026-12-01T11:00:00.010Z"),
            t("2026-12-01T10:00:10Z"),
        );
        assert_eq!(both.with(stepped), stepped);
    }

    #[test]
    fn a_replica_far_off_is_not_fit_to_lead() {
        let c = Clock::new(SignedDuration::ZERO, Duration::from_secs(5));
        assert_eq!(c.fit_to_lead(), Err(None), "nothing measured yet");
        c.state.write().unwrap().skew = Some(Skew {
            low: SignedDuration::from_millis(-200),
            high: SignedDuration::from_millis(800),
        });
        assert_eq!(c.fit_to_lead(), Ok(()));
        c.state.write().unwrap().skew = Some(Skew {
            low: SignedDuration::from_secs(-61),
            high: SignedDuration::from_secs(-60),
        });
        assert_eq!(c.fit_to_lead(), Err(Some(SignedDuration::from_secs(-61))));
    }
}
