//! Gold's rejoin after GoldDR's promotion: which writes existed only on
//! Gold's old timeline. Pure: Gold's trail as its Patroni reported it, and
//! GoldDR's timeline history, come in; the report goes out.
//!
//! GoldDR's history says where it left Gold's timeline (the switchpoint).
//! Whatever Gold wrote on that timeline beyond it never reached GoldDR, and
//! the rewind that lets Gold follow GoldDR removes it from Gold too: those
//! are the writes the split lost.

use serde::Serialize;

use crate::observe::wal::{Branch, Lsn, WalPoint};

/// Gold's own WAL, as this guard's member saw it: the timeline it last wrote
/// on as a primary and the furthest position on that timeline. A demoted
/// member still on that timeline replays its own shutdown checkpoint, which
/// is the true end; so positions on the same timeline keep counting after
/// the demotion, and none on a later one does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Trail {
    pub primary: Option<WalPoint>,
}

impl Trail {
    pub fn saw(&mut self, writable: bool, point: Option<WalPoint>) {
        let Some(p) = point else {
            return;
        };
        self.primary = match self.primary {
            None if writable => Some(p),
            Some(q) if writable && p.timeline > q.timeline => Some(p),
            Some(q) if p.timeline == q.timeline && p.lsn > q.lsn => Some(p),
            keep => keep,
        };
    }

    /// The member has moved to a later timeline than the one it wrote on.
    pub fn moved_on(&self, point: Option<WalPoint>) -> bool {
        match (self.primary, point) {
            (Some(q), Some(p)) => p.timeline > q.timeline,
            _ => false,
        }
    }
}

/// The range of WAL only Gold's old timeline had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Lost {
    pub from: Lsn,
    pub to: Lsn,
    pub bytes: u64,
}

/// What the guard reports once Gold follows GoldDR.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejoin {
    pub gold_timeline: Option<u32>,
    /// Gold's last position on that timeline.
    pub gold_last: Option<Lsn>,
    pub golddr_timeline: Option<u32>,
    /// Where GoldDR left Gold's timeline.
    pub switchpoint: Option<Lsn>,
    /// `None` when nothing was lost or it cannot be told.
    pub lost: Option<Lost>,
    pub summary: String,
    /// Why the range could not be told.
    pub error: Option<String>,
}

/// The report from Gold's trail and GoldDR's current timeline and history
/// (or why they could not be read).
pub fn assess(gold: Option<WalPoint>, golddr: Result<(u32, Vec<Branch>), String>) -> Rejoin {
    let mut r = Rejoin {
        gold_timeline: gold.map(|g| g.timeline),
        gold_last: gold.map(|g| g.lsn),
        golddr_timeline: None,
        switchpoint: None,
        lost: None,
        summary: String::new(),
        error: None,
    };
    let history = match golddr {
        Ok((timeline, history)) => {
            r.golddr_timeline = Some(timeline);
            history
        }
        Err(e) => {
            r.summary = format!("Gold follows GoldDR again; the writes only Gold had cannot be told: {e}");
            r.error = Some(e);
            return r;
        }
    };
    let Some(gold) = gold else {
        let e = "this guard never saw its member as Gold's primary, so Gold's last position is unknown";
        r.switchpoint = history.last().map(|b| b.switchpoint);
        r.summary = format!(
            "Gold follows GoldDR again; {e}: look in Gold's WAL archive beyond GoldDR's switchpoint{}",
            r.switchpoint.map(|s| format!(" {s}")).unwrap_or_default()
        );
        r.error = Some(e.into());
        return r;
    };
    let Some(branch) = history.iter().find(|b| b.parent == gold.timeline) else {
        let e = format!(
            "GoldDR's timeline history does not branch from Gold's timeline {}: GoldDR was not following Gold when it was promoted",
            gold.timeline
        );
        r.summary = format!("Gold follows GoldDR again; the writes only Gold had cannot be told: {e}");
        r.error = Some(e);
        return r;
    };
    r.switchpoint = Some(branch.switchpoint);
    if gold.lsn > branch.switchpoint {
        let lost = Lost {
            from: branch.switchpoint,
            to: gold.lsn,
            bytes: gold.lsn.0 - branch.switchpoint.0,
        };
        r.summary = format!(
            "Gold follows GoldDR again. Writes Gold took after GoldDR left its timeline are gone from both sites: \
             WAL {}..{} ({} bytes) on Gold's old timeline {}. To recover them, read that range from Gold's WAL \
             archive (pg_waldump --timeline {} --start {} --end {}) or restore it to a scratch server",
            lost.from, lost.to, lost.bytes, gold.timeline, gold.timeline, lost.from, lost.to
        );
        r.lost = Some(lost);
    } else {
        r.summary = format!(
            "Gold follows GoldDR again; no write was lost: GoldDR left Gold's timeline {} at {}, at or after Gold's last position {}",
            gold.timeline, branch.switchpoint, gold.lsn
        );
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(timeline: u32, lsn: u64) -> Option<WalPoint> {
        Some(WalPoint {
            timeline,
            lsn: Lsn(lsn),
        })
    }

    #[test]
    fn the_trail_keeps_the_end_of_the_timeline_gold_wrote_on() {
        let mut t = Trail::default();
        t.saw(false, at(1, 50));
        assert_eq!(t.primary, None, "a replica's position is not Gold's own");
        t.saw(true, at(1, 100));
        t.saw(true, at(1, 90));
        assert_eq!(t.primary, at(1, 100), "positions only grow");
        t.saw(false, at(1, 120));
        assert_eq!(t.primary, at(1, 120), "the demoted member's shutdown checkpoint");
        t.saw(false, at(2, 80));
        assert_eq!(t.primary, at(1, 120), "GoldDR's timeline is not Gold's");
        assert!(t.moved_on(at(2, 80)));
        assert!(!t.moved_on(at(1, 130)));
        t.saw(false, None);
        assert_eq!(t.primary, at(1, 120));
        // A failover inside Gold: its new primary writes on a new timeline.
        t.saw(true, at(3, 10));
        assert_eq!(t.primary, at(3, 10));
    }

    fn history() -> Vec<Branch> {
        vec![
            Branch {
                parent: 1,
                switchpoint: Lsn(100),
            },
            Branch {
                parent: 2,
                switchpoint: Lsn(200),
            },
        ]
    }

    #[test]
    fn writes_beyond_the_switchpoint_are_reported_lost() {
        let r = assess(at(2, 260), Ok((3, history())));
        assert_eq!(
            r.lost,
            Some(Lost {
                from: Lsn(200),
                to: Lsn(260),
                bytes: 60
            })
        );
        assert_eq!(r.switchpoint, Some(Lsn(200)));
        assert_eq!(r.golddr_timeline, Some(3));
        assert!(
            r.summary
                .contains("0/C8..0/104 (60 bytes) on Gold's old timeline 2"),
            "{}",
            r.summary
        );
        assert_eq!(r.error, None);

        let r = assess(at(2, 200), Ok((3, history())));
        assert_eq!(r.lost, None);
        assert!(r.summary.contains("no write was lost"), "{}", r.summary);
    }

    #[test]
    fn what_cannot_be_told_says_why() {
        let r = assess(at(5, 260), Ok((3, history())));
        assert_eq!((r.lost, r.switchpoint), (None, None));
        assert!(
            r.error
                .unwrap()
                .contains("does not branch from Gold's timeline 5")
        );

        let r = assess(None, Ok((3, history())));
        assert_eq!(r.switchpoint, Some(Lsn(200)));
        assert!(
            r.error
                .unwrap()
                .contains("never saw its member as Gold's primary")
        );

        let r = assess(at(2, 260), Err("permission denied".into()));
        assert_eq!(r.gold_last, Some(Lsn(260)));
        assert_eq!(r.error.as_deref(), Some("permission denied"));
        assert!(r.summary.contains("cannot be told: permission denied"));
    }
}
