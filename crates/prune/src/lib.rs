//! Retention for the directories fspl fills: zrepl's keep rules
//! ([`rules`], pure: entries in, verdicts out) and the pruning of queue,
//! quarantine, outbox and uploader directories ([`dir`]).

pub mod dir;
pub mod rules;

pub use dir::{DirKind, Judged, Plan, PruneError, TimeSource, detect, plan};
pub use rules::{Entry, Rule, RuleError, Verdict, evaluate};
