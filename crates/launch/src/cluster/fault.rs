//! Faults and power: rebooting one node, killing and restarting all of them, shutting the
//! cluster down.

use super::*;

impl Cluster {
    /// Reboots node `index` (clean stop, start on the same state) and waits until it is ready
    /// again (joined) and the leader has received a heartbeat from its new boot.
    pub async fn reboot_node(&self, index: usize) -> Result<()> {
        let node = &self.nodes[index];
        node.stop().await?;
        let started = Instant::now();
        node.start()?;
        node.wait_ready(self.options.timeouts.rejoin).await?;
        self.wait_heartbeat_since(index, started, self.options.timeouts.health)
            .await
    }

    /// Powers off every node not removed at once (SIGKILL).
    pub async fn kill_all(&self) -> Result<Vec<Exit>> {
        let removed = self.removed();
        let nodes: Vec<&Node> = self
            .nodes
            .iter()
            .filter(|n| !removed.contains(&n.index()))
            .collect();
        futures::future::try_join_all(nodes.iter().map(|n| n.kill())).await
    }

    /// Powers on every node not removed and waits until all are ready.
    pub async fn start_all(&self) -> Result<()> {
        let removed = self.removed();
        let nodes: Vec<&Node> = self
            .nodes
            .iter()
            .filter(|n| !removed.contains(&n.index()))
            .collect();
        for node in &nodes {
            node.start()?;
        }
        let timeout = self.options.timeouts.rejoin;
        futures::future::try_join_all(nodes.iter().map(|n| n.wait_ready(timeout))).await?;
        Ok(())
    }

    /// Stops every running node cleanly (SIGTERM, SIGKILL after the grace period), all at
    /// once, and returns how each ended.
    pub async fn shutdown(self) -> Vec<(usize, Result<Exit>)> {
        let exits = futures::future::join_all(
            self.nodes
                .iter()
                .filter(|n| n.is_running())
                .map(|n| async { (n.index(), n.stop().await) }),
        )
        .await;
        drop(self);
        exits
    }
}
