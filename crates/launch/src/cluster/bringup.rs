//! Bringing a cluster up as upstream's harness does: bootstrap node 0, take
//! ownership, register and approve the other nodes, and add consensus members one at a time.

use super::*;

/// Parts of a cluster in construction: owns the nodes (so an error kills them) and the
/// temporary directory.
pub(super) struct Launch {
    options: ClusterOptions,
    state_dir: PathBuf,
    temp: Option<tempfile::TempDir>,
    nodes: Vec<Node>,
}

impl Cluster {
    /// Launches a cluster as described by `options` and returns once every node is UP and
    /// HEALTHY (and the extra consensus members are voters with running curators).
    pub async fn start(options: ClusterOptions) -> Result<Cluster> {
        options.validate()?;
        let binary = find_node_binary(options.node_binary.as_deref())?;
        let (state_dir, temp) = prepare_state_dir(options.state_dir.as_deref())?;
        let mut launch = Launch {
            options,
            state_dir,
            temp,
            nodes: Vec::new(),
        };
        // The age of the binary: nothing rebuilds it for us, and a stale one explains a lot.
        let age = std::fs::metadata(&binary)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .map_or_else(|| "unknown".to_string(), |d| format!("{}s", d.as_secs()));
        let place = if launch.options.hosts.is_empty() {
            format!("{}.0/24", launch.options.block)
        } else {
            "test hosts".to_string()
        };
        tracing::info!(
            "launching {} nodes on {place} with {} (built {age} ago), state in {}",
            launch.options.nodes,
            binary.display(),
            launch.state_dir.display()
        );
        for index in 0..launch.options.nodes {
            let config = NodeConfig {
                index,
                address: launch.options.address(index)?,
                dir: launch.state_dir.join(format!("node{index}")),
                binary: binary.clone(),
                parameters: Some(
                    launch
                        .state_dir
                        .join(format!("node{index}"))
                        .join(PARAMETERS_FILE),
                ),
                etcd: launch.options.etcd_binary.clone(),
                leader_ttl: launch.options.leader_ttl,
                extra_args: {
                    let mut args = launch.options.node_args.clone();
                    if let Some(ca) = &launch.options.update_ca {
                        args.extend(["--update-ca".to_string(), ca.display().to_string()]);
                    }
                    args
                },
                // On a loopback block every node connects from 127.0.0.1; test hosts each
                // connect from their own address, so etcd's check stays on there.
                skip_peer_client_san_check: launch.options.hosts.is_empty(),
                env: Vec::new(),
                wrapper: launch.options.wrapper(index),
                echo: launch.options.echo_logs,
                restart: launch.options.restart,
            };
            launch.nodes.push(Node::new(config));
        }
        match Self::bring_up(&mut launch).await {
            Ok(mut cluster) => {
                cluster.temp = launch.temp.take();
                Ok(cluster)
            }
            Err(e) => {
                // Everything that explains the failure stays: the nodes are dead by now (the
                // cluster being built was dropped), their logs are on disk.
                for node in launch.nodes.iter().filter(|n| n.boot() > 0) {
                    node.kill_now();
                    eprintln!(
                        "--- node {} ({}) log tail, full log: {}\n{}",
                        node.index(),
                        node.id().unwrap_or_default(),
                        node.log_path().display(),
                        node.tail(40)
                    );
                }
                let dir = match launch.temp.take() {
                    Some(temp) => temp.keep(),
                    None => launch.state_dir.clone(),
                };
                eprintln!(
                    "launching the cluster failed; state kept in {}",
                    dir.display()
                );
                Err(e)
            }
        }
    }

    pub(super) async fn bring_up(launch: &mut Launch) -> Result<Cluster> {
        let timeouts = launch.options.timeouts.clone();
        let state_dir = launch.state_dir.clone();

        // The owner key, in metroctl's format, so metroctl can use this state dir as --config.
        let owner_key = SigningKey::generate().map_err(|source| Error::Identity {
            what: "generating the owner key",
            source,
        })?;
        write_file(
            &state_dir.join(OWNER_KEY_FILE),
            owner_key.to_owner_key_pem().as_bytes(),
            PRIVATE_MODE,
        )?;
        write_file(
            &state_dir.join(OWNER_PKCS8_KEY_FILE),
            owner_key.to_pkcs8_pem().as_bytes(),
            PRIVATE_MODE,
        )?;

        // Node 0 bootstraps the cluster with our owner key.
        let bootstrap = NodeParameters {
            cluster: Some(ClusterParams::ClusterBootstrap(ClusterBootstrap {
                owner_public_key: owner_key.public_key().as_bytes().to_vec(),
                initial_cluster_configuration: Some(ClusterConfiguration {
                    tpm_mode: launch.options.tpm_mode as i32,
                    storage_security_policy: launch.options.storage_policy as i32,
                    ..Default::default()
                }),
                labels: None,
            })),
            network_config: None,
        };
        let node0 = launch.nodes[0].clone();
        set_parameters(&node0, &bootstrap)?;
        node0.start()?;
        let id0 = node0.wait_id(timeouts.node_ready).await?;
        tracing::info!("node 0 is {id0}, bootstrapping");
        node0.wait_ready(timeouts.node_ready).await?;

        // Take ownership, like `metroctl takeownership`.
        let ownership =
            owner::take_ownership(&node0.curator_endpoint(), &owner_key, timeouts.ownership)
                .await?;
        write_file(
            &state_dir.join(OWNER_CERT_FILE),
            identity::files::certificate_to_pem(&ownership.owner_certificate).as_bytes(),
            PUBLIC_MODE,
        )?;
        write_file(
            &state_dir.join(CA_FILE),
            identity::files::certificate_to_pem(&ownership.ca_certificate).as_bytes(),
            PUBLIC_MODE,
        )?;
        tracing::info!(
            "ownership taken, owner certificate in {}",
            state_dir.display()
        );

        let crl = ClusterCrl::new(ownership.ca_certificate.clone());
        let leader = leader_channel(
            &launch.nodes[..1],
            &owner_key,
            &ownership.owner_certificate,
            &crl,
        )?;
        let cluster = Cluster {
            options: launch.options.clone(),
            state_dir: state_dir.clone(),
            // Moved in by `start` on success only, so a failed launch keeps its state.
            temp: None,
            nodes: launch.nodes.clone(),
            owner_key,
            owner_certificate: ownership.owner_certificate,
            ca_certificate: ownership.ca_certificate,
            crl,
            leader: Mutex::new(leader),
            removed: Mutex::new(HashSet::new()),
        };

        if cluster.nodes.len() > 1 {
            cluster.register_others().await?;
        }
        cluster.refresh_leader_channel()?;
        for index in 1..=cluster.options.consensus_members {
            let join = cluster.add_consensus_member(index).await?;
            tracing::info!(
                "node {index} is a consensus member after {:?} (seen as learner: {})",
                join.took,
                join.saw_learner
            );
        }
        cluster.wait_all_healthy(timeouts.health).await?;
        tracing::info!("cluster is up");
        Ok(cluster)
    }

    /// Registers nodes 1.. with a ticket, approves them and waits until they are UP and ready.
    pub(super) async fn register_others(&self) -> Result<()> {
        let timeouts = &self.options.timeouts;
        let management = self.management();
        let ticket = management.register_ticket().await?;
        let info = self.wait_directory(timeouts.directory).await?;
        let register = NodeParameters {
            cluster: Some(ClusterParams::ClusterRegister(ClusterRegister {
                cluster_directory: info.cluster_directory,
                register_ticket: ticket,
                ca_certificate: info.ca_certificate,
                labels: None,
            })),
            network_config: None,
        };
        let others = &self.nodes[1..];
        for node in others {
            set_parameters(node, &register)?;
            node.start()?;
        }
        let ids =
            futures::future::try_join_all(others.iter().map(|n| n.wait_id(timeouts.node_ready)))
                .await?;
        tracing::info!("registering {}", ids.join(", "));

        // Approve each node as soon as it shows up as NEW, until all are UP.
        let pending: HashSet<String> = ids.iter().cloned().collect();
        let mut approved = HashSet::new();
        let deadline = Instant::now() + timeouts.enrolment;
        loop {
            self.check_alive("nodes to register", others)?;
            let nodes = self.poll_nodes().await;
            let mut up = 0;
            if let Ok(nodes) = &nodes {
                for node in nodes.iter().filter(|n| pending.contains(&n.id)) {
                    match node.state() {
                        NodeState::New if !approved.contains(&node.id) => {
                            management.approve(&node.pubkey).await?;
                            tracing::info!("approved {}", node.id);
                            approved.insert(node.id.clone());
                        }
                        NodeState::Up => up += 1,
                        _ => {}
                    }
                }
            }
            if up == pending.len() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("nodes {} to register and become UP", ids.join(", ")),
                    after: timeouts.enrolment,
                    last: describe_result(&nodes),
                });
            }
            tokio::time::sleep(POLL).await;
        }
        futures::future::try_join_all(others.iter().map(|n| n.wait_ready(timeouts.node_ready)))
            .await?;
        Ok(())
    }

    /// Waits until GetClusterInfo lists at least one node with an address (the bootstrap
    /// node has pushed its status), which registering nodes need to find the cluster.
    pub(super) async fn wait_directory(&self, timeout: Duration) -> Result<GetClusterInfoResponse> {
        let deadline = Instant::now() + timeout;
        loop {
            let info = self
                .management()
                .with_deadline(POLL_CALL_DEADLINE)
                .cluster_info()
                .await;
            let last = match info {
                Ok(info)
                    if info
                        .cluster_directory
                        .as_ref()
                        .is_some_and(|d| d.nodes.iter().any(|n| !n.addresses.is_empty())) =>
                {
                    return Ok(info);
                }
                Ok(info) => format!("directory {:?}", info.cluster_directory),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: "the cluster directory to list the bootstrap node's address".into(),
                    after: timeout,
                    last,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Makes node `index` a ConsensusMember and waits until its etcd member is a voter and its
    /// curator serves. etcd admits one learner at a time, so call this for one node after the
    /// other.
    pub async fn add_consensus_member(&self, index: usize) -> Result<ConsensusJoin> {
        let id = self.id_of(index)?;
        let timeout = self.options.timeouts.consensus;
        let start = Instant::now();
        let deadline = start + timeout;
        let management = self.management();
        management.set_roles(&id, Some(true), None, None).await?;

        let mut saw_learner = false;
        let mut last;
        loop {
            self.check_alive(
                &format!("node {index} to become a consensus member"),
                &self.nodes,
            )?;
            match management
                .clone()
                .with_deadline(POLL_CALL_DEADLINE)
                .consensus_status()
                .await
            {
                Ok(members) => {
                    let status = members.iter().find(|m| m.id == id).map(|m| m.status());
                    saw_learner |= status == Some(MemberStatus::Learner);
                    if status == Some(MemberStatus::Full) {
                        break;
                    }
                    last = format!("{members:?}");
                }
                // Without GetConsensusStatus the role is all we can see; the curator check
                // below still proves a voting member (a curator runs only on one).
                Err(e) if e.code() == Code::Unimplemented => break,
                Err(e) => last = e.to_string(),
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("node {index} ({id}) to become a voting etcd member"),
                    after: timeout,
                    last,
                });
            }
            tokio::time::sleep(POLL).await;
        }
        self.wait_curator_serving(index, deadline.saturating_duration_since(Instant::now()))
            .await?;
        Ok(ConsensusJoin {
            saw_learner,
            took: start.elapsed(),
        })
    }
}
