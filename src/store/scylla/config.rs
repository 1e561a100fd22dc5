//! How to reach and use the cluster: contact points, keyspace and its replication,
//! consistency, retention, queue sizes (from the `[store]` configuration).

use std::collections::BTreeMap;

use scylla::statement::Consistency;

use crate::config::{Retention, StoreSettings};
use crate::store::commit::WriteTimer;

/// Replication of the keyspace.
#[derive(Debug, Clone)]
pub enum Replication {
    /// One node or a test cluster.
    Simple(u32),
    /// Production: replicas per data centre.
    NetworkTopology(BTreeMap<String, u32>),
}

impl Replication {
    pub(super) fn cql(&self) -> String {
        match self {
            Replication::Simple(rf) => format!("{{'class': 'SimpleStrategy', 'replication_factor': {rf}}}"),
            Replication::NetworkTopology(dcs) => {
                let dcs: Vec<String> = dcs.iter().map(|(dc, n)| format!("'{dc}': {n}")).collect();
                format!("{{'class': 'NetworkTopologyStrategy', {}}}", dcs.join(", "))
            }
        }
    }
}

/// How to reach and use the cluster.
#[derive(Debug, Clone)]
pub struct ScyllaStoreConfig {
    /// Contact points, `host:port`.
    pub nodes: Vec<String>,
    /// Keyspace.
    pub keyspace: String,
    /// Keyspace replication.
    pub replication: Replication,
    /// Consistency of every read and write.
    pub consistency: Consistency,
    /// TTLs.
    pub retention: Retention,
    /// Writes queued ahead of the committer before appenders wait.
    pub queue_capacity: usize,
    /// Most writes per commit round.
    pub max_batch: usize,
    /// Wait for schema agreement after DDL (on for real clusters; kassandra's system tables
    /// break it, so its test support turns it off).
    pub await_schema_agreement: bool,
    /// Times each batch's writes (the `store_write` stage on /metrics).
    pub write_timer: WriteTimer,
}

impl ScyllaStoreConfig {
    /// From the `[store]` configuration.
    pub fn from_settings(settings: &StoreSettings) -> Self {
        let s = &settings.scylla;
        ScyllaStoreConfig {
            nodes: s.nodes.clone(),
            keyspace: s.keyspace.clone(),
            replication: if s.datacenters.is_empty() {
                Replication::Simple(s.replication_factor)
            } else {
                Replication::NetworkTopology(s.datacenters.clone())
            },
            consistency: parse_consistency(&s.consistency).unwrap_or(Consistency::LocalQuorum),
            retention: settings.retention,
            queue_capacity: 16_384,
            max_batch: 1_024,
            await_schema_agreement: s.await_schema_agreement,
            write_timer: WriteTimer::default(),
        }
    }

    /// A single-node configuration (tests, benchmarks).
    pub fn single_node(node: &str, keyspace: &str) -> Self {
        ScyllaStoreConfig {
            nodes: vec![node.to_string()],
            keyspace: keyspace.to_string(),
            replication: Replication::Simple(1),
            consistency: Consistency::LocalQuorum,
            retention: Retention::default(),
            queue_capacity: 16_384,
            max_batch: 1_024,
            await_schema_agreement: true,
            write_timer: WriteTimer::default(),
        }
    }
}

/// `local_quorum`, `quorum`, `one`, ... (case-insensitive).
pub fn parse_consistency(name: &str) -> Option<Consistency> {
    Some(match name.to_ascii_lowercase().as_str() {
        "one" => Consistency::One,
        "two" => Consistency::Two,
        "three" => Consistency::Three,
        "quorum" => Consistency::Quorum,
        "all" => Consistency::All,
        "local_quorum" => Consistency::LocalQuorum,
        "each_quorum" => Consistency::EachQuorum,
        "local_one" => Consistency::LocalOne,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{OPEN_BUCKETS, open_bucket};
    use super::*;

    #[test]
    fn replication_and_consistency_come_from_configuration() {
        assert_eq!(Replication::Simple(1).cql(), "{'class': 'SimpleStrategy', 'replication_factor': 1}");
        let nts = Replication::NetworkTopology([("dc1".to_string(), 3), ("dc2".to_string(), 2)].into());
        assert_eq!(nts.cql(), "{'class': 'NetworkTopologyStrategy', 'dc1': 3, 'dc2': 2}");
        assert_eq!(parse_consistency("LOCAL_QUORUM"), Some(Consistency::LocalQuorum));
        assert_eq!(parse_consistency("nope"), None);
        assert_eq!(open_bucket("a"), open_bucket("a"));
        assert!((0..OPEN_BUCKETS as i32).contains(&open_bucket("some-alert")));
    }
}
