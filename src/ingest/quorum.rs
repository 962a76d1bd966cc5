//! Per-series write quorum over the replica writes of one request.

use crate::model::ErrorClass;

/// Thanos's quorum: a majority of replicas, except that RF 2 needs only one.
pub fn quorum(rf: usize) -> usize {
    if rf == 2 {
        1
    } else {
        rf / 2 + 1
    }
}

/// Counts, per series, the replica writes that succeeded and the ones that failed, split by
/// whether a retry can help (unavailable, timeout, internal) or not (conflict, bad request).
#[derive(Debug)]
pub struct Tracker {
    need: u8,
    /// Replica writes per series that may still fail before quorum is out of reach.
    slack: u8,
    ok: Vec<u8>,
    permanent: Vec<u8>,
    transient: Vec<u8>,
    /// Worst permanent class seen, for the verdict.
    permanent_class: Option<ErrorClass>,
    /// Series still undecided (neither at quorum nor out of reach).
    open: usize,
}

/// How a request's replica writes ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every series reached quorum.
    Written,
    /// Some series cannot reach quorum and retrying cannot change that (409 / 400).
    Permanent(ErrorClass),
    /// Some series missed quorum for reasons a retry may fix (503).
    Retry,
}

impl Tracker {
    /// `series` series, each written to `rf` replicas of which `need` must succeed.
    pub fn new(series: usize, rf: usize, need: usize) -> Self {
        let (rf, need) = (rf.min(255) as u8, need.min(255) as u8);
        Self {
            need,
            slack: rf.saturating_sub(need),
            ok: vec![0; series],
            permanent: vec![0; series],
            transient: vec![0; series],
            permanent_class: None,
            open: series,
        }
    }

    fn decided(&self, s: usize) -> bool {
        self.ok[s] >= self.need || self.permanent[s] + self.transient[s] > self.slack
    }

    /// Records one replica write covering `series` (positions in the tracker).
    pub fn record(&mut self, series: &[u32], outcome: Result<(), ErrorClass>) {
        if let Err(c @ (ErrorClass::Conflict | ErrorClass::BadRequest)) = outcome {
            // A conflict is the more useful answer: valid samples were written.
            if self.permanent_class != Some(ErrorClass::Conflict) {
                self.permanent_class = Some(c);
            }
        }
        for &s in series {
            let s = s as usize;
            if s >= self.ok.len() {
                continue;
            }
            let was = self.decided(s);
            match outcome {
                Ok(()) => self.ok[s] += 1,
                Err(ErrorClass::Conflict | ErrorClass::BadRequest) => self.permanent[s] += 1,
                Err(_) => self.transient[s] += 1,
            }
            if !was && self.decided(s) {
                self.open -= 1;
            }
        }
    }

    /// True once every series is at quorum or can no longer reach it: waiting longer cannot
    /// change the answer.
    pub fn settled(&self) -> bool {
        self.open == 0
    }

    /// Series in the request.
    pub fn len(&self) -> usize {
        self.ok.len()
    }

    /// Series below quorum.
    pub fn failed(&self) -> usize {
        self.ok.iter().filter(|&&ok| ok < self.need).count()
    }

    /// The answer for the request; series still waiting count as not at quorum (timeout).
    pub fn verdict(&self) -> Verdict {
        let mut permanent = false;
        for s in 0..self.ok.len() {
            if self.ok[s] >= self.need {
                continue;
            }
            // Out of reach because of conflicts alone: a retry meets the same conflicts.
            if self.permanent[s] > self.slack {
                permanent = true;
            } else {
                return Verdict::Retry;
            }
        }
        match (permanent, self.permanent_class) {
            (false, _) => Verdict::Written,
            (true, c) => Verdict::Permanent(c.unwrap_or(ErrorClass::Conflict)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ErrorClass::*;

    #[test]
    fn quorum_sizes_match_thanos() {
        let q: Vec<usize> = (1..=5).map(quorum).collect();
        assert_eq!(q, [1, 1, 2, 3, 3]);
    }

    #[test]
    fn rf3_tolerates_one_failure_per_series() {
        let mut t = Tracker::new(2, 3, 2);
        t.record(&[0, 1], Ok(()));
        t.record(&[0, 1], Err(Unavailable));
        assert!(!t.settled());
        t.record(&[0], Ok(()));
        assert!(!t.settled());
        t.record(&[1], Ok(()));
        assert!(t.settled());
        assert_eq!(t.verdict(), Verdict::Written);
    }

    #[test]
    fn two_unavailable_replicas_mean_retry() {
        let mut t = Tracker::new(1, 3, 2);
        t.record(&[0], Err(Unavailable));
        t.record(&[0], Err(Internal));
        assert!(t.settled());
        assert_eq!(t.verdict(), Verdict::Retry);
    }

    #[test]
    fn conflicts_that_block_quorum_are_permanent_even_beside_an_unavailable_replica() {
        // Thanos answered 503 here and Prometheus retried forever (thanos#8727).
        let mut t = Tracker::new(1, 3, 2);
        t.record(&[0], Err(Unavailable));
        t.record(&[0], Err(Conflict));
        t.record(&[0], Err(Conflict));
        assert_eq!(t.verdict(), Verdict::Permanent(Conflict));
    }

    #[test]
    fn unanswered_replicas_count_as_missing() {
        let mut t = Tracker::new(1, 3, 2);
        t.record(&[0], Ok(()));
        assert!(!t.settled());
        assert_eq!(t.verdict(), Verdict::Retry);
    }

    #[test]
    fn rf1_conflict_and_rf2_single_success() {
        let mut t = Tracker::new(1, 1, 1);
        t.record(&[0], Err(Conflict));
        assert_eq!(t.verdict(), Verdict::Permanent(Conflict));
        let mut t = Tracker::new(1, 2, quorum(2));
        t.record(&[0], Ok(()));
        assert!(t.settled());
        assert_eq!(t.verdict(), Verdict::Written);
    }
}
