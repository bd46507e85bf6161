//! The Kubernetes objects both proxies serve: service `i` is a selectorless Service `bench/svc-NNNNNN` with
//! a fixed ClusterIP and an Endpoints object naming the same two backends the socket-LB bench uses, written
//! straight to the apiserver with many requests in flight (kubectl, one object per request, would take
//! minutes for 10k).

use crate::workload;
use anyhow::Context;
use futures::{stream, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, Namespace, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::{Api, Client};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;

pub const NAMESPACE: &str = "bench";
/// ClusterIPs start past the apiserver's own `kubernetes` service (10.96.0.1).
const VIP_BASE: u32 = u32::from_be_bytes([10, 96, 1, 0]);
/// The most services this address plan holds inside the test apiserver's 10.96.0.0/16.
pub const MAX_SERVICES: usize = 60_000;
const IN_FLIGHT: usize = 32;

/// Service `i`'s ClusterIP and port.
pub fn vip(i: usize) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(VIP_BASE + i as u32), workload::VIP_PORT)
}

/// Service `i`'s backends (the socket-LB bench's: the backend netns answers for the whole pod range).
pub fn backends(i: usize) -> Vec<SocketAddrV4> {
    workload::backends(i)
}

fn name(i: usize) -> String {
    workload::name(i).1
}

pub async fn client(kubeconfig: &Path) -> anyhow::Result<Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).context("reading the kubeconfig")?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.context("kubeconfig")?;
    Client::try_from(config).context("building the Kubernetes client")
}

pub async fn ensure_namespace(client: &Client) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns =
        Namespace { metadata: ObjectMeta { name: Some(NAMESPACE.into()), ..Default::default() }, ..Default::default() };
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e).context("creating namespace bench"),
    }
}

/// A Node object for a proxy's node: kube-proxy looks its own Node up at start (and waits for it), as it
/// would on a real node where the kubelet registered it.
pub async fn ensure_node(client: &Client, name: &str, internal_ip: &str) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeStatus};
    let api: Api<Node> = Api::all(client.clone());
    let node = Node {
        metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
        status: Some(NodeStatus {
            addresses: Some(vec![NodeAddress { type_: "InternalIP".into(), address: internal_ip.into() }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    ignore_exists(api.create(&PostParams::default(), &node).await).with_context(|| format!("creating node {name}"))
}

fn service(i: usize) -> Service {
    Service {
        metadata: ObjectMeta { name: Some(name(i)), namespace: Some(NAMESPACE.into()), ..Default::default() },
        spec: Some(ServiceSpec {
            cluster_ip: Some(vip(i).ip().to_string()),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: i32::from(workload::VIP_PORT),
                target_port: Some(IntOrString::Int(i32::from(workload::BACKEND_PORT))),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn endpoints(i: usize) -> Endpoints {
    Endpoints {
        metadata: ObjectMeta { name: Some(name(i)), namespace: Some(NAMESPACE.into()), ..Default::default() },
        subsets: Some(vec![EndpointSubset {
            addresses: Some(
                backends(i).iter().map(|b| EndpointAddress { ip: b.ip().to_string(), ..Default::default() }).collect(),
            ),
            ports: Some(vec![EndpointPort {
                name: Some("http".into()),
                port: i32::from(workload::BACKEND_PORT),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }]),
    }
}

/// Creates service `i` and its endpoints (Endpoints first: a proxy never sees the service without backends).
pub async fn create(client: &Client, i: usize) -> anyhow::Result<()> {
    let eps: Api<Endpoints> = Api::namespaced(client.clone(), NAMESPACE);
    let svcs: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    ignore_exists(eps.create(&PostParams::default(), &endpoints(i)).await).with_context(|| format!("endpoints {i}"))?;
    ignore_exists(svcs.create(&PostParams::default(), &service(i)).await).with_context(|| format!("service {i}"))?;
    Ok(())
}

pub async fn delete(client: &Client, i: usize) -> anyhow::Result<()> {
    let eps: Api<Endpoints> = Api::namespaced(client.clone(), NAMESPACE);
    let svcs: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    ignore_missing(svcs.delete(&name(i), &DeleteParams::default()).await.map(|_| ()))?;
    ignore_missing(eps.delete(&name(i), &DeleteParams::default()).await.map(|_| ()))?;
    Ok(())
}

/// Creates services `range` with `IN_FLIGHT` requests at a time.
pub async fn create_many(client: &Client, range: std::ops::Range<usize>) -> anyhow::Result<()> {
    stream::iter(range.map(|i| create(client, i))).buffer_unordered(IN_FLIGHT).try_collect::<Vec<()>>().await?;
    Ok(())
}

fn ignore_exists<T>(r: Result<T, kube::Error>) -> anyhow::Result<()> {
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn ignore_missing(r: Result<(), kube::Error>) -> anyhow::Result<()> {
    match r {
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        other => Ok(other?),
    }
}
