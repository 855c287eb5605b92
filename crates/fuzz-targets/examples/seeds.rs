//! Writes seed inputs for every target into `<corpus dir>/<target>/seed-<n>`: valid
//! certificates, CRLs, keys, parameters and log lines, from which libFuzzer mutates its way to
//! the rejections. Run once when a target is added; `cargo fuzz cmin` keeps what matters.
//!
//! Usage: `cargo run -p fuzz-targets --example seeds -- fuzz/corpus`

use std::path::Path;

use fuzz_targets::certs::cluster;
use identity::{templates, verify};
use prost::Message;
use proto::api::NodeParameters;
use proto::api::node_parameters::{Cluster, ClusterBootstrap, ClusterRegister};
use proto::common::ClusterDirectory;
use proto::common::cluster_directory::{Node, node::Address};
use proto::private::SealedConfiguration;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).ok_or("usage: seeds CORPUS_DIR")?;
    let c = cluster();
    let mut seeds: Vec<(&str, Vec<u8>)> = Vec::new();

    for der in [&c.ca, &c.node, &c.user, &c.ephemeral] {
        seeds.push(("cert_verify", der.clone()));
    }
    let serial = verify::cert_serial(&c.node)?;
    seeds.push(("crl", templates::crl(&c.ca_key, &c.ca, &[], 1)?));
    seeds.push((
        "crl",
        templates::crl(&c.ca_key, &c.ca, &[serial, vec![1, 2, 3]], 2)?,
    ));

    let k = &c.node_key;
    seeds.push(("pkcs8", k.to_pkcs8_der().to_vec()));
    seeds.push(("pkcs8", k.to_pkcs8_pem().as_bytes().to_vec()));
    seeds.push(("pkcs8", k.to_owner_key_pem().as_bytes().to_vec()));
    seeds.push(("pkcs8", k.to_keypair_bytes().to_vec()));
    seeds.push(("pkcs8", k.public_key().to_string().into_bytes()));

    for mode in 0u8..3 {
        let mut input = vec![mode, b'a', b'b', 7, 0, 0, 0, 0, 0, 0, 0, 0x80];
        input.extend_from_slice(b"data/node.pem plaintext");
        input.push(12);
        seeds.push(("crypt_open", input));
    }

    let directory = ClusterDirectory {
        nodes: vec![Node {
            public_key: k.public_key().as_ref().to_vec(),
            addresses: vec![
                Address {
                    host: "10.0.0.1".into(),
                },
                Address {
                    host: "fd00::1".into(),
                },
            ],
            id: identity::node_id(&k.public_key()),
        }],
    };
    let bootstrap = NodeParameters {
        cluster: Some(Cluster::ClusterBootstrap(ClusterBootstrap {
            owner_public_key: k.public_key().as_ref().to_vec(),
            ..Default::default()
        })),
        ..Default::default()
    };
    let register = NodeParameters {
        cluster: Some(Cluster::ClusterRegister(ClusterRegister {
            cluster_directory: Some(directory.clone()),
            register_ticket: b"ticket".to_vec(),
            ca_certificate: c.ca.clone(),
            ..Default::default()
        })),
        ..Default::default()
    };
    let sealed = SealedConfiguration {
        node_unlock_key: vec![9; 32],
        join_key: k.to_keypair_bytes().to_vec(),
        cluster_ca: c.ca.clone(),
        storage_security: 2,
    };
    for (kind, message) in [
        (0u8, bootstrap.encode_to_vec()),
        (0, register.encode_to_vec()),
        (1, sealed.encode_to_vec()),
        (2, directory.encode_to_vec()),
    ] {
        seeds.push(("node_params", [&[kind][..], &message].concat()));
    }

    for dn in ["root.role.curator\nleader", "a\nb", "\nroot", "a..b\nc"] {
        seeds.push(("logtree_dn", dn.as_bytes().to_vec()));
    }
    seeds.push(("logtree_read", (0u8..=255).cycle().take(600).collect()));
    seeds.push((
        "logtree_read",
        b"\x00\x05root.\x02ab\x01hi\x02\x00root\x01\x01".to_vec(),
    ));

    for line in [
        r#"{"level":"info","ts":"2024-05-01T10:00:00.123Z","caller":"etcdserver/server.go:2042","msg":"published local member","local-member-id":"8e9e05c52164694d"}"#,
        r#"{"level":"warn","ts":"2024-05-01T10:00:00.123+0100","caller":"x.go:1","msg":"slow","took":1.5,"stacktrace":"a\nb"}"#,
        r#"{"level":"error","ts":1714557600.25,"msg":{"nested":[1,2]}}"#,
        "plain text line\nsecond",
    ] {
        seeds.push(("etcd_log_line", line.as_bytes().to_vec()));
    }

    let mut table = Vec::new();
    let mut bios = vec![0u8, 0x18, 0, 0];
    bios.resize(0x18, 0);
    bios[0x13] = 1 << 3;
    table.extend_from_slice(&bios);
    table.extend_from_slice(&[0, 0]);
    let mut system = vec![1u8, 0x1b, 1, 0, 1, 2, 0, 3];
    system.resize(0x1b, 0);
    table.extend_from_slice(&system);
    table.extend_from_slice(b"ACME\0Box\0SN123\0\0");
    let mut memory = vec![17u8, 0x28, 2, 0];
    memory.resize(0x28, 0);
    memory[0x0c..0x0e].copy_from_slice(&0x7fffu16.to_le_bytes());
    memory[0x1c..0x20].copy_from_slice(&65536u32.to_le_bytes());
    table.extend_from_slice(&memory);
    table.extend_from_slice(&[0, 0]);
    table.extend_from_slice(&[127, 4, 3, 0, 0, 0]);
    seeds.push(("smbios", table));

    for text in [
        "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 23\nmodel\t\t: 49\nmodel name\t: AMD EPYC 7402P 24-Core Processor\nstepping\t: 0\nphysical id\t: 0\ncore id\t\t: 0\ncpu cores\t: 24\nsiblings\t: 48\n\nprocessor\t: 1\nphysical id\t: 0\ncore id\t\t: 0\n",
        "MemTotal:       32768000 kB\nMemFree:         1000 kB\n",
        "52:54:00:12:34:56",
        "naa.5000c500a1b2c3d4",
        "eui.0025385b71b0a2c4",
    ] {
        seeds.push(("hwreport_text", text.as_bytes().to_vec()));
    }

    for f in [
        "node.state == NODE_STATE_UP && has(node.roles.kubernetes_worker)",
        "node.labels.pairs.exists(p, p.key == 'example.com/key-1' && p.value == 'value-1')",
        "node.time_since_heartbeat < duration('6s') || node.health == HEARTBEAT_TIMEOUT",
        "node.id in ['metropolis-a', 'metropolis-c'] && size(node.pubkey) == 32",
        "has(node.status) && node.status.timestamp > timestamp('2023-01-01T00:00:00Z')",
        "node.labels.pairs.map(p, p.value + p.key).filter(v, v.startsWith('value')).size() > 2",
    ] {
        seeds.push(("filter", f.as_bytes().to_vec()));
    }

    for (mode, der) in [
        (0u8, &c.node),
        (1, &c.user),
        (2, &c.node),
        (3, &c.user),
        (4, &c.node),
    ] {
        let data = if mode == 0 { der.clone() } else { vec![] };
        seeds.push(("authz", [&[mode][..], &data].concat()));
    }
    seeds.push(("authz", [&[0u8][..], &c.ephemeral].concat()));
    seeds.push(("authz", [&[0u8][..], &c.removed_node].concat()));

    let record = proto::curator_private::Node {
        public_key: k.public_key().as_ref().to_vec(),
        join_key: vec![5; 32],
        fsm_state: 3,
        ..Default::default()
    }
    .encode_to_vec();
    seeds.push(("node_record", [&[1u8][..], &record].concat()));
    let id = identity::node_id(&k.public_key());
    seeds.push((
        "node_record",
        [&[0u8][..], id.as_bytes(), &[0], &record].concat(),
    ));
    seeds.push((
        "watch_event",
        [&[1u8, 0x10][..], &record, &[1, 0x30]].concat(),
    ));
    seeds.push((
        "watch_event",
        b"\x00/nodes/metropolis-x\x01\x00\x01".to_vec(),
    ));

    let mut clusternet = Vec::new();
    for s in [
        "10.192.1.0/24",
        "203.0.113.7",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    ] {
        clusternet.extend_from_slice(s.as_bytes());
    }
    seeds.push(("clusternet", clusternet));

    for (target, data) in seeds {
        let dir = Path::new(&dir).join(target);
        std::fs::create_dir_all(&dir)?;
        let n = std::fs::read_dir(&dir)?.count();
        std::fs::write(dir.join(format!("seed-{n}")), data)?;
    }
    Ok(())
}
