//! The offset between this replica's clock and the API server's, as an interval that every sample
//! narrows. Pure: the samples are taken by `k8s::clock`, which reads time through it. A delete-at
//! written by one replica is judged by another, so "is it due yet" is judged by the earliest the
//! server's time can be, and a replica whose offset may exceed a bound must not lead.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

/// What is known of (server time − local time): it lies in `[low, high]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Skew {
    low: SignedDuration,
    high: SignedDuration,
}

impl Skew {
    /// What is known when the offset lies in `[low, high]`.
    pub fn between(low: SignedDuration, high: SignedDuration) -> Skew {
        Skew {
            low: low.min(high),
            high: high.max(low),
        }
    }

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

    /// `Err(worst)` when the offset may exceed `bound`: such a replica must not lead.
    pub fn fit(self, bound: Duration) -> Result<(), SignedDuration> {
        let worst = self.worst();
        if worst.unsigned_abs() > bound {
            Err(worst)
        } else {
            Ok(())
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
    fn an_offset_that_may_exceed_the_bound_is_not_fit_to_lead() {
        let bound = Duration::from_secs(5);
        let near = Skew::between(
            SignedDuration::from_millis(-200),
            SignedDuration::from_millis(800),
        );
        assert_eq!(near.fit(bound), Ok(()));
        let far = Skew::between(
            SignedDuration::from_secs(-61),
            SignedDuration::from_secs(-60),
        );
        assert_eq!(far.fit(bound), Err(SignedDuration::from_secs(-61)));
        // Only possibly too far (the interval straddles the bound) is already too far.
        let straddles = Skew::between(SignedDuration::from_secs(4), SignedDuration::from_secs(6));
        assert_eq!(straddles.fit(bound), Err(SignedDuration::from_secs(6)));
    }
}
