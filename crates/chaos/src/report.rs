//! CHAOS.md: one table row per scenario and the notes of each run below it.

use std::fmt::Write as _;

use crate::Outcome;

/// Renders the report of a campaign run on `cores` cores on `date`.
pub fn render(outcomes: &[Outcome], date: &str, cores: usize, command: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Chaos campaign\n");
    let _ = writeln!(
        s,
        "Written by `{command}`: every node a test host (its own network namespace and address \
         on a bridge), faults applied for real (nftables inside a host's namespace, links down, \
         SIGSTOP/SIGKILL). Recovery is what each scenario defines below; records lost counts \
         acknowledged writes and node records missing afterwards.\n"
    );
    let _ = writeln!(
        s,
        "| scenario | runs | passed | records lost | worst recovery | took | date | cores |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
    for o in outcomes {
        let recovery = o
            .worst_recovery
            .map_or_else(|| "-".to_string(), |d| format!("{:.1} s", d.as_secs_f64()));
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {:.0} s | {} | {} |",
            o.scenario,
            o.runs,
            o.passed,
            o.records_lost,
            recovery,
            o.took.as_secs_f64(),
            date,
            cores
        );
    }
    let _ = writeln!(s);
    for o in outcomes {
        let _ = writeln!(s, "## {}\n", o.scenario);
        if o.notes.is_empty() {
            let _ = writeln!(s, "(no notes)\n");
            continue;
        }
        for note in &o.notes {
            let _ = writeln!(s, "- {note}");
        }
        let _ = writeln!(s);
    }
    s
}
