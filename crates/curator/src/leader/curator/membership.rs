//! GetConsensusStatus (later upstream Monogon, not in the 8456ddf0 baseline): the etcd members and
//! whether each is a learner, so operators (and the HA tests) can wait for a new consensus member
//! to be promoted.

use proto::curator_api::GetConsensusStatusResponse;
use proto::curator_api::get_consensus_status_response::EtcdMember;
use proto::curator_api::get_consensus_status_response::etcd_member::Status as MemberStatus;
use tonic::Status;

use crate::leader::Leader;

/// GetConsensusStatus: one entry per etcd member.
pub(super) async fn get_consensus_status(
    leader: &Leader,
) -> Result<GetConsensusStatusResponse, Status> {
    let members = leader
        .consensus
        .client()
        .member_list()
        .await
        .map_err(|e| Status::unavailable(format!("etcd: {e}")))?;
    let etcd_member = members
        .members()
        .iter()
        .map(|m| EtcdMember {
            id: member_id(m.name(), m.peer_urls()),
            status: if m.is_learner() {
                MemberStatus::Learner
            } else {
                MemberStatus::Full
            } as i32,
        })
        .collect();
    Ok(GetConsensusStatusResponse { etcd_member })
}

/// A member's node ID: its name, or — for a learner that has not started yet and so has no
/// name — the host part of its first peer URL (which is what AddNode registered it with).
fn member_id(name: &str, peer_urls: &[String]) -> String {
    if !name.is_empty() {
        return name.to_string();
    }
    peer_urls
        .first()
        .map(|u| url_host(u).to_string())
        .unwrap_or_default()
}

/// The host of `scheme://host:port` (brackets of an IPv6 literal removed).
fn url_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_ids() {
        assert_eq!(member_id("metropolis-ab", &[]), "metropolis-ab");
        assert_eq!(
            member_id("", &["https://127.86.1.2:7834".into()]),
            "127.86.1.2"
        );
        assert_eq!(
            member_id("", &["https://metropolis-cd:7834".into()]),
            "metropolis-cd"
        );
        assert_eq!(member_id("", &["https://[fd00::1]:7834".into()]), "fd00::1");
        assert_eq!(member_id("", &[]), "");
    }
}
