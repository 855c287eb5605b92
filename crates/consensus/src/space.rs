//! The space keeper: what clears etcd's NOSPACE alarm.
//!
//! When a write would take a member's database past its backend quota, etcd raises a NOSPACE
//! alarm for that member and, from then on, the whole cluster refuses every write (reads,
//! compaction, defragmentation and alarm changes still work). etcd never disarms the alarm by
//! itself, even once space is free again. So each member's node watches for an alarm on its
//! own member, says so in its log, compacts the history down to the current revision,
//! defragments its database (compaction frees pages inside the file; only defragmentation
//! gives them back and lowers the size the quota is checked against), and disarms the alarm
//! once the database is below the quota again. If the live data itself exceeds the quota,
//! nothing below it can be reached this way: the alarm stays and the log says what would
//! clear it.

use kv::etcd_client::{AlarmAction, AlarmOptions, AlarmType, Client, CompactionOptions};
use logtree::LeveledLogger;

use crate::error::Error;

/// What one check found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpaceCheck {
    /// No NOSPACE alarm on this member.
    Clear,
    /// The alarm was raised; the database was compacted and defragmented and the alarm
    /// disarmed. Sizes in bytes before and after.
    Disarmed { before: i64, after: i64 },
    /// The alarm was raised; after compacting and defragmenting the database is still at or
    /// above the quota, so the alarm stays.
    StillFull { size: i64 },
}

/// One round of the space keeper for member `member_id` on `client` (connected to that
/// member), whose quota is `quota` bytes.
pub async fn keep_once(
    client: &Client,
    member_id: u64,
    quota: u64,
    log: &LeveledLogger,
) -> Result<SpaceCheck, Error> {
    let mut c = client.clone();
    let alarms = c.alarm(AlarmAction::Get, AlarmType::None, None).await?;
    let raised = alarms
        .alarms()
        .iter()
        .any(|a| a.member_id() == member_id && a.alarm() == AlarmType::Nospace);
    if !raised {
        return Ok(SpaceCheck::Clear);
    }
    let status = c.status().await?;
    let before = status.db_size();
    let revision = status.header().map_or(0, |h| h.revision());
    log.error(
        &logtree::caller_location(),
        format!(
            "etcd NOSPACE alarm on member {member_id:x}: its database ({before} bytes) reached \
             the backend quota ({quota} bytes) and the cluster refuses every write; compacting \
             to revision {revision}, defragmenting and disarming"
        ),
    );
    // Keep only the current revision: the history is what fills a database that only ever
    // overwrites the same keys. A watcher behind this revision is cancelled and re-reads.
    match c
        .compact(revision, Some(CompactionOptions::new().with_physical()))
        .await
    {
        Ok(_) => {}
        // Compacted already (by etcd's own auto-compaction, or another member's keeper).
        Err(e)
            if e.to_string()
                .contains("required revision has been compacted") => {}
        Err(e) => return Err(e.into()),
    }
    c.defragment().await?;
    let after = c.status().await?.db_size();
    if u64::try_from(after).unwrap_or(u64::MAX) >= quota {
        log.error(
            &logtree::caller_location(),
            format!(
                "etcd NOSPACE alarm on member {member_id:x} stays: after compaction and \
                 defragmentation the database still holds {after} bytes, at or above the quota \
                 ({quota} bytes); the live data needs a larger quota or fewer records"
            ),
        );
        return Ok(SpaceCheck::StillFull { size: after });
    }
    let mut member = AlarmOptions::new();
    member.with_member(member_id);
    c.alarm(AlarmAction::Deactivate, AlarmType::Nospace, Some(member))
        .await?;
    log.info(
        &logtree::caller_location(),
        format!(
            "etcd NOSPACE alarm on member {member_id:x} disarmed: database {before} -> {after} \
             bytes (quota {quota}); writes are accepted again"
        ),
    );
    Ok(SpaceCheck::Disarmed { before, after })
}
