//! Node roles as operators type them (`ConsensusMember` or `cm`, any case) and as tables
//! show them.

use std::fmt;
use std::str::FromStr;

use proto::common::NodeRoles;

/// A role the cluster assigns to nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Runs an etcd member and a curator.
    ConsensusMember,
    /// Runs the Kubernetes control plane; needs ConsensusMember.
    KubernetesController,
    /// Runs Kubernetes workloads.
    KubernetesWorker,
}

impl Role {
    /// Every role, in display order (alphabetical, as upstream sorts them).
    pub const ALL: [Role; 3] = [
        Role::ConsensusMember,
        Role::KubernetesController,
        Role::KubernetesWorker,
    ];

    /// The canonical name (upstream's).
    pub fn name(self) -> &'static str {
        match self {
            Role::ConsensusMember => "ConsensusMember",
            Role::KubernetesController => "KubernetesController",
            Role::KubernetesWorker => "KubernetesWorker",
        }
    }

    /// The short name accepted on the command line.
    pub fn short(self) -> &'static str {
        match self {
            Role::ConsensusMember => "cm",
            Role::KubernetesController => "kc",
            Role::KubernetesWorker => "kw",
        }
    }

    /// Whether `roles` contains this role.
    pub fn held_in(self, roles: Option<&NodeRoles>) -> bool {
        let Some(r) = roles else { return false };
        match self {
            Role::ConsensusMember => r.consensus_member.is_some(),
            Role::KubernetesController => r.kubernetes_controller.is_some(),
            Role::KubernetesWorker => r.kubernetes_worker.is_some(),
        }
    }

    /// The roles in `roles`, sorted.
    pub fn list(roles: Option<&NodeRoles>) -> Vec<Role> {
        Role::ALL.into_iter().filter(|r| r.held_in(roles)).collect()
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_lowercase().replace(['-', '_'], "");
        Role::ALL
            .into_iter()
            .find(|r| wanted == r.name().to_ascii_lowercase() || wanted == r.short())
            .ok_or_else(|| {
                format!(
                    "unknown role {s:?}; roles are ConsensusMember (cm), KubernetesController (kc) \
                     and KubernetesWorker (kw)"
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::common::node_roles::{ConsensusMember, KubernetesWorker};

    #[test]
    fn long_and_short_names_in_any_case() {
        for (input, role) in [
            ("ConsensusMember", Role::ConsensusMember),
            ("consensusmember", Role::ConsensusMember),
            ("cm", Role::ConsensusMember),
            ("CM", Role::ConsensusMember),
            ("KubernetesController", Role::KubernetesController),
            ("kc", Role::KubernetesController),
            ("kubernetes-worker", Role::KubernetesWorker),
            ("kubernetes_worker", Role::KubernetesWorker),
            ("kw", Role::KubernetesWorker),
            (" kw ", Role::KubernetesWorker),
        ] {
            assert_eq!(input.parse::<Role>(), Ok(role), "{input}");
        }
    }

    #[test]
    fn unknown_names_list_the_valid_ones() {
        let err = "worker".parse::<Role>().expect_err("unknown");
        assert!(err.contains("KubernetesWorker (kw)"), "{err}");
        assert!("".parse::<Role>().is_err());
    }

    #[test]
    fn roles_are_listed_sorted() {
        let roles = NodeRoles {
            kubernetes_worker: Some(KubernetesWorker {}),
            consensus_member: Some(ConsensusMember::default()),
            kubernetes_controller: None,
        };
        assert_eq!(
            Role::list(Some(&roles)),
            vec![Role::ConsensusMember, Role::KubernetesWorker]
        );
        assert!(Role::list(None).is_empty());
        assert!(!Role::KubernetesController.held_in(Some(&roles)));
    }
}
