//! Bytes produced from upstream's own message definitions decode into ours field for field, and
//! re-encode to the same bytes (nothing lands in unknown fields, which prost would drop).
//!
//! The fixture was encoded by protoc from upstream Monogon's `.proto` files at commit 8456ddf0; its
//! text form and the command line are next to it in `testdata/`.

use prost::Message;
use proto::api::NodeParameters;
use proto::api::node_parameters::Cluster;
use proto::net::proto::{bond, interface, vlan};

const UPSTREAM_NODE_PARAMETERS: &[u8] = include_bytes!("testdata/node_parameters_upstream.pb");

#[test]
fn node_parameters_with_network_config_from_upstream_definitions() {
    let params = NodeParameters::decode(UPSTREAM_NODE_PARAMETERS).expect("decodes");

    let Some(Cluster::ClusterRegister(register)) = &params.cluster else {
        panic!("cluster_register expected, got {:?}", params.cluster);
    };
    assert_eq!(register.register_ticket, b"ticket-0123456789");
    assert_eq!(register.ca_certificate, [0x30, 0x82, 0x01, 0x00]);
    let directory = register.cluster_directory.as_ref().expect("directory");
    assert_eq!(directory.nodes[0].addresses[0].host, "10.0.0.1");

    let net = params.network_config.as_ref().expect("network_config");
    assert_eq!(net.interface.len(), 3);
    let bond0 = &net.interface[0];
    assert_eq!(bond0.name, "bond0");
    let Some(interface::Type::Bond(bond)) = &bond0.r#type else {
        panic!("bond0 is a bond: {bond0:?}");
    };
    assert_eq!(bond.member_interface, ["eth0", "eth1"]);
    assert_eq!(bond.min_links, 1);
    assert_eq!(
        bond.transmit_hash_policy(),
        bond::TransmitHashPolicy::Layer34
    );
    let Some(bond::Mode::Lacp(lacp)) = &bond.mode else {
        panic!("LACP mode expected: {bond:?}");
    };
    assert_eq!(lacp.rate(), bond::lacp::Rate::Fast);
    assert!(bond0.ipv4_autoconfig.is_some());

    let eth0 = &net.interface[1];
    let Some(interface::Type::Device(device)) = &eth0.r#type else {
        panic!("eth0 is a device: {eth0:?}");
    };
    assert_eq!(device.hardware_address, "52:54:00:12:34:56");
    assert_eq!(device.driver, "virtio_net");

    let vlan10 = &net.interface[2];
    let Some(interface::Type::Vlan(vlan)) = &vlan10.r#type else {
        panic!("vlan10 is a VLAN: {vlan10:?}");
    };
    assert_eq!((vlan.parent.as_str(), vlan.id), ("bond0", 10));
    assert_eq!(vlan.protocol(), vlan::Protocol::Cvlan);
    assert_eq!(vlan10.address, ["192.0.2.10/24"]);
    assert_eq!(vlan10.route[0].destination, "0.0.0.0/0");
    assert_eq!(vlan10.route[0].gateway_ip, "192.0.2.1");
    assert_eq!(vlan10.route[0].metric, 100);
    assert_eq!(vlan10.mtu, 9000);
    assert_eq!(net.nameserver[0].ip, "192.0.2.53");

    // Every byte was understood: re-encoding gives back exactly upstream's encoding.
    assert_eq!(params.encode_to_vec(), UPSTREAM_NODE_PARAMETERS);
}
