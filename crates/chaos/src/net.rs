//! Test hosts: one network namespace per node, each with an address of its own on a bridge
//! the [`TestNet`] creates, so that faults are real network faults (dropped packets, a link
//! down, loss) between hosts, and the launcher in the root namespace still reaches every node
//! through the bridge's own address.
//!
//! Names carry the creating process's ID (`mc<pid>-<seq>…`): a run that was killed leaves its
//! namespaces, bridge and veths behind, and [`TestNet::create`] first removes every such
//! leftover whose process is gone. Everything is removed again on drop.
//!
//! Faults are applied inside a node's namespace, so they never touch the host's own rules:
//! partitions and loss are an nftables table `inet mchaos` there (dropping only traffic between
//! nodes, never the launcher's), a link down is the host side of the veth, delay and loss with
//! `tc netem` where the kernel has it.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Prefix of every name a test net creates.
const PREFIX: &str = "mc";
/// The nftables table faults live in, inside a node's namespace.
const TABLE: &str = "mchaos";
/// Host part of the bridge's (the launcher's) address in the test subnet.
const BRIDGE_HOST: u8 = 254;

/// Test nets created by this process so far (part of their names and subnets).
static SEQ: AtomicU32 = AtomicU32::new(0);

/// What went wrong setting up or changing the test network.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A command could not be run at all.
    #[error("running {command}: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    /// A command failed.
    #[error("{command} failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
    /// Too many hosts for one subnet or for the interface names.
    #[error("a test net holds 1 to 9 hosts, not {0}")]
    Size(usize),
}

/// One node's host: its namespace and its address.
#[derive(Debug, Clone)]
pub struct Host {
    /// The network namespace (`ip netns` name).
    pub netns: String,
    /// The host side of its veth pair, on the bridge.
    pub veth: String,
    /// Its address (on `eth0` inside the namespace).
    pub address: Ipv4Addr,
}

impl Host {
    /// The command prefix that runs a program in this host's namespace.
    pub fn wrapper(&self) -> Vec<String> {
        ["ip", "netns", "exec", &self.netns]
            .map(String::from)
            .to_vec()
    }
}

/// A bridge with one namespace per host; removed on drop.
#[derive(Debug)]
pub struct TestNet {
    bridge: String,
    hosts: Vec<Host>,
    subnet: [u8; 3],
}

impl TestNet {
    /// Creates `count` hosts on a new bridge, after removing the leftovers of dead runs.
    pub fn create(count: usize) -> Result<Self, NetError> {
        if count == 0 || count > 9 {
            return Err(NetError::Size(count));
        }
        remove_stale();
        let pid = std::process::id();
        let seq = SEQ.fetch_add(1, Ordering::Relaxed) % 100;
        let tag = format!("{PREFIX}{pid}-{seq}");
        let subnet = free_subnet(pid, seq);
        let mut net = Self {
            bridge: format!("{tag}b"),
            hosts: Vec::new(),
            subnet,
        };
        // From here on, drop removes whatever was created, also on a failure halfway.
        let bridge = net.bridge.clone();
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", net.bridge_address()),
            "dev",
            &bridge,
        ])?;
        ip(&["link", "set", &bridge, "up"])?;
        for index in 0..count {
            let host = Host {
                netns: format!("{tag}n{index}"),
                veth: format!("{tag}v{index}"),
                address: Ipv4Addr::new(subnet[0], subnet[1], subnet[2], index as u8 + 1),
            };
            net.hosts.push(host.clone());
            let peer = format!("{}p", host.veth);
            let ns = host.netns.as_str();
            ip(&["netns", "add", ns])?;
            ip(&[
                "link", "add", &host.veth, "type", "veth", "peer", "name", &peer,
            ])?;
            ip(&["link", "set", &peer, "netns", ns])?;
            ip(&["link", "set", &host.veth, "master", &bridge])?;
            ip(&["link", "set", &host.veth, "up"])?;
            ip(&["-n", ns, "link", "set", &peer, "name", "eth0"])?;
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/24", host.address),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    /// The hosts, in node order.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Host `index`.
    pub fn host(&self, index: usize) -> &Host {
        &self.hosts[index]
    }

    /// The launcher's address on the bridge.
    pub fn bridge_address(&self) -> Ipv4Addr {
        Ipv4Addr::new(self.subnet[0], self.subnet[1], self.subnet[2], BRIDGE_HOST)
    }

    /// Cuts host `index` off from the hosts `from` in both directions (its namespace drops
    /// their packets and every packet to them); the launcher still reaches it.
    pub fn partition(&self, index: usize, from: &[usize]) -> Result<(), NetError> {
        let peers = self.address_set(from);
        self.apply_rules(
            index,
            &format!("ip saddr {peers} drop"),
            &format!("ip daddr {peers} drop"),
        )
    }

    /// Drops `percent` % of the packets host `index` receives from the other hosts (random,
    /// per packet). Applied on every host, that is loss in both directions of every link.
    pub fn loss(&self, index: usize, percent: u8) -> Result<(), NetError> {
        let others: Vec<usize> = (0..self.hosts.len()).filter(|i| *i != index).collect();
        let peers = self.address_set(&others);
        self.apply_rules(
            index,
            &format!("ip saddr {peers} numgen random mod 100 < {percent} drop"),
            "",
        )
    }

    /// Removes every nftables fault of host `index` (partition, loss).
    pub fn heal(&self, index: usize) -> Result<(), NetError> {
        let ns = &self.hosts[index].netns;
        // Absent table: nothing to heal.
        let listed = run("ip", &["netns", "exec", ns, "nft", "list", "tables"])?;
        if listed.contains(TABLE) {
            run(
                "ip",
                &["netns", "exec", ns, "nft", "delete", "table", "inet", TABLE],
            )?;
        }
        Ok(())
    }

    /// Takes host `index`'s link down (`up == false`) or up again.
    pub fn set_link(&self, index: usize, up: bool) -> Result<(), NetError> {
        let state = if up { "up" } else { "down" };
        ip(&["link", "set", &self.hosts[index].veth, state])
    }

    /// Adds `tc netem` delay and loss on host `index`'s `eth0` (egress). Fails where the
    /// kernel has no netem (`sch_netem`).
    pub fn netem(&self, index: usize, delay_ms: u32, loss_percent: u8) -> Result<(), NetError> {
        run(
            "ip",
            &[
                "netns",
                "exec",
                &self.hosts[index].netns,
                "tc",
                "qdisc",
                "replace",
                "dev",
                "eth0",
                "root",
                "netem",
                "delay",
                &format!("{delay_ms}ms"),
                "loss",
                &format!("{loss_percent}%"),
            ],
        )
        .map(|_| ())
    }

    /// Removes host `index`'s netem qdisc, if any.
    pub fn clear_netem(&self, index: usize) {
        let _ = run(
            "ip",
            &[
                "netns",
                "exec",
                &self.hosts[index].netns,
                "tc",
                "qdisc",
                "del",
                "dev",
                "eth0",
                "root",
            ],
        );
    }

    fn address_set(&self, indices: &[usize]) -> String {
        let addresses: Vec<String> = indices
            .iter()
            .map(|i| self.hosts[*i].address.to_string())
            .collect();
        format!("{{ {} }}", addresses.join(", "))
    }

    /// Replaces host `index`'s fault table with these input and output rules.
    fn apply_rules(&self, index: usize, input: &str, output: &str) -> Result<(), NetError> {
        self.heal(index)?;
        let ruleset = format!(
            "table inet {TABLE} {{\n\
             chain input {{\n type filter hook input priority 0; policy accept;\n {input}\n }}\n\
             chain output {{\n type filter hook output priority 0; policy accept;\n {output}\n }}\n\
             }}\n"
        );
        run_stdin(
            "ip",
            &["netns", "exec", &self.hosts[index].netns, "nft", "-f", "-"],
            &ruleset,
        )
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        for host in &self.hosts {
            // The veth pair goes with either end; both are removed in case one is gone.
            let _ = ip(&["link", "del", &host.veth]);
            let _ = ip(&["netns", "del", &host.netns]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}

/// Whether this machine can run test hosts: `ip netns`, `tc` and `nft` are there and we may
/// create namespaces (root).
pub fn probe() -> Result<(), NetError> {
    run("ip", &["netns", "list"])?;
    run("tc", &["-V"])?;
    run("nft", &["--version"])?;
    Ok(())
}

/// Removes namespaces, bridges and veths of test nets whose process is gone.
pub fn remove_stale() {
    let dead = |name: &str| -> bool {
        let Some(rest) = name.strip_prefix(PREFIX) else {
            return false;
        };
        let Some((pid, tail)) = rest.split_once('-') else {
            return false;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            return false;
        };
        // Our own names (`<seq>` then `b`, `n<i>`, `v<i>` or `v<i>p`) only.
        let tail_ok = tail.chars().next().is_some_and(|c| c.is_ascii_digit())
            && tail.chars().all(|c| c.is_ascii_alphanumeric());
        tail_ok && !std::path::Path::new(&format!("/proc/{pid}")).exists()
    };
    if let Ok(list) = run("ip", &["netns", "list"]) {
        for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if dead(ns) {
                tracing::info!("removing leftover test namespace {ns}");
                let _ = ip(&["netns", "del", ns]);
            }
        }
    }
    if let Ok(list) = run("ip", &["-o", "link", "show"]) {
        for line in list.lines() {
            // `<n>: <name>[@<peer>]: <flags> ...`
            let Some(name) = line
                .split(": ")
                .nth(1)
                .map(|n| n.split('@').next().unwrap_or(n))
            else {
                continue;
            };
            if dead(name) {
                tracing::info!("removing leftover test link {name}");
                let _ = ip(&["link", "del", name]);
            }
        }
    }
}

/// A /24 in 100.64.0.0/10 (shared address space, unused on test machines) derived from the
/// process and sequence number, skipping any that a route of this machine already covers.
fn free_subnet(pid: u32, seq: u32) -> [u8; 3] {
    let routes = run("ip", &["-4", "route", "show"]).unwrap_or_default();
    let mut key = pid.wrapping_mul(7).wrapping_add(seq.wrapping_mul(131)) % 16384;
    loop {
        let subnet = [100, 64 + (key >> 8) as u8, (key & 0xff) as u8];
        let prefix = format!("{}.{}.{}.", subnet[0], subnet[1], subnet[2]);
        if !routes.contains(&prefix) {
            return subnet;
        }
        key = (key + 1) % 16384;
    }
}

fn ip(args: &[&str]) -> Result<(), NetError> {
    run("ip", args).map(|_| ())
}

/// Runs a command, returning its stdout or an error with its stderr.
fn run(program: &str, args: &[&str]) -> Result<String, NetError> {
    let command = format!("{program} {}", args.join(" "));
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| NetError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !output.status.success() {
        return Err(NetError::Failed {
            command,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs a command with `input` on its stdin.
fn run_stdin(program: &str, args: &[&str], input: &str) -> Result<(), NetError> {
    use std::io::Write;
    let command = format!("{program} {}", args.join(" "));
    let spawn_error = |source| NetError::Spawn {
        command: command.clone(),
        source,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(spawn_error)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).map_err(spawn_error)?;
    }
    let output = child.wait_with_output().map_err(spawn_error)?;
    if !output.status.success() {
        return Err(NetError::Failed {
            command,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(())
}
