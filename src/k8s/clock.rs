//! One clock for every replica: the API server's. A delete-at written by one replica is judged by
//! another, so a replica whose wall clock runs ahead would delete early. Each replica measures its
//! offset from the `Date` header of the API server's answers (whole seconds: every sample bounds
//! the offset to an interval, and the intervals are intersected), reads time as its own clock
//! corrected by that offset, and judges "is it due yet" by the earliest the true time can be. A
//! replica whose offset exceeds a bound refuses to lead (its clock is broken; it says so).
//!
//! [`Skew`] (in `core`) is the pure estimator; [`Clock`] samples the API server.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use kube::Client;

use crate::core::skew::Skew;

/// How often the offset is sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(30);

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
        let skew = self.skew().ok_or(None)?;
        skew.fit(self.max_skew).map_err(Some)
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

    #[test]
    fn a_replica_far_off_is_not_fit_to_lead() {
        let c = Clock::new(SignedDuration::ZERO, Duration::from_secs(5));
        assert_eq!(c.fit_to_lead(), Err(None), "nothing measured yet");
        c.state.write().unwrap().skew = Some(Skew::between(
            SignedDuration::from_millis(-200),
            SignedDuration::from_millis(800),
        ));
        assert_eq!(c.fit_to_lead(), Ok(()));
        c.state.write().unwrap().skew = Some(Skew::between(
            SignedDuration::from_secs(-61),
            SignedDuration::from_secs(-60),
        ));
        assert_eq!(c.fit_to_lead(), Err(Some(SignedDuration::from_secs(-61))));
    }
}
