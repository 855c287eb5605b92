//! The node lifecycle: the one table of state transitions a node record may make.
//! [`super::node::create`] and [`super::node::set_state`] check every write against it, and
//! nothing else in the curator sets a node's state, so a handler bug cannot move a node
//! along an edge that is not listed here.
//!
//! Handlers still check their RPC's preconditions themselves (they choose the error code and
//! the advice for the operator, and decide what is an idempotent repeat); the table is the
//! invariant behind those checks.
//!
//! Deleting a record is not a transition: DeleteNode's rules depend on its safety bypasses
//! and live with it.

use proto::common::NodeState;

use super::StateError;

/// One allowed transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The state left; `None` for a node that does not exist yet.
    pub from: Option<NodeState>,
    /// The state entered.
    pub to: NodeState,
    /// Who makes it (for readers of the table).
    pub by: &'static str,
}

const fn t(from: Option<NodeState>, to: NodeState, by: &'static str) -> Transition {
    Transition { from, to, by }
}

/// Every transition a node may make. Anything not listed is refused.
pub const TRANSITIONS: &[Transition] = {
    use NodeState::*;
    &[
        t(None, New, "RegisterNode"),
        // The first node of a cluster has no one to approve it.
        t(None, Up, "bootstrap"),
        t(Some(New), Standby, "ApproveNode"),
        t(Some(Standby), Up, "CommitNode"),
        // Ours from here on: upstream's DecommissionNode is Unimplemented.
        t(Some(Up), DecommissionRequested, "DecommissionNode"),
        t(
            Some(DecommissionRequested),
            Decommissioning,
            "ReportDecommission STARTED",
        ),
        t(
            Some(Decommissioning),
            Decommissioned,
            "ReportDecommission DONE",
        ),
        // A node may finish before its STARTED report got through; accepting DONE directly
        // keeps it from being wedged in DECOMMISSION_REQUESTED.
        t(
            Some(DecommissionRequested),
            Decommissioned,
            "ReportDecommission DONE",
        ),
    ]
};

/// Whether the table allows `from` → `to`.
pub fn allowed(from: Option<NodeState>, to: NodeState) -> bool {
    TRANSITIONS.iter().any(|t| t.from == from && t.to == to)
}

/// [`allowed`], as the error the state layer returns for node `id`.
pub fn check(id: &str, from: Option<NodeState>, to: NodeState) -> Result<(), StateError> {
    if allowed(from, to) {
        Ok(())
    } else {
        Err(StateError::InvalidTransition {
            id: id.to_string(),
            from,
            to,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [NodeState; 7] = [
        NodeState::Invalid,
        NodeState::New,
        NodeState::Standby,
        NodeState::Up,
        NodeState::Decommissioned,
        NodeState::DecommissionRequested,
        NodeState::Decommissioning,
    ];

    /// Every (from, to) pair over all states and absence: exactly upstream's lifecycle plus
    /// our decommissioning states are allowed.
    #[test]
    fn transition_table() {
        use NodeState::*;
        let expected: &[(Option<NodeState>, NodeState)] = &[
            (None, New),
            (None, Up),
            (Some(New), Standby),
            (Some(Standby), Up),
            (Some(Up), DecommissionRequested),
            (Some(DecommissionRequested), Decommissioning),
            (Some(DecommissionRequested), Decommissioned),
            (Some(Decommissioning), Decommissioned),
        ];
        let froms = std::iter::once(None).chain(ALL.into_iter().map(Some));
        for from in froms {
            for to in ALL {
                assert_eq!(
                    allowed(from, to),
                    expected.contains(&(from, to)),
                    "{from:?} → {to:?}"
                );
            }
        }
        assert_eq!(TRANSITIONS.len(), expected.len(), "no duplicates");
    }

    #[test]
    fn refusals_name_the_node_and_both_states() {
        let e = check("metropolis-ab", Some(NodeState::Up), NodeState::New).expect_err("refused");
        assert_eq!(
            e,
            StateError::InvalidTransition {
                id: "metropolis-ab".into(),
                from: Some(NodeState::Up),
                to: NodeState::New
            }
        );
        let text = e.to_string();
        assert!(
            text.contains("metropolis-ab") && text.contains("NODE_STATE_UP"),
            "{text}"
        );
        assert!(check("x", None, NodeState::Standby).is_err());
        assert!(check("x", None, NodeState::New).is_ok());
    }
}
