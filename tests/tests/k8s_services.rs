//! The agent's Kubernetes source end to end: Services and Endpoints created
//! with kubectl in a real kube-apiserver 1.20.2 (which serves EndpointSlices
//! only as v1beta1, so the agent takes the core/v1 Endpoints path) are served
//! with real TCP and UDP through the socket-LB; scale, update, delete, bad
//! input, an apiserver restart and an agent restart lose nothing. The
//! discovery.k8s.io/v1 EndpointSlice path (terminating endpoints, relist
//! after lost history) runs against the local stand-in (`kube_standin`).

mod common;

use axon_api::{BackendState, Service};
use axon_lab::check::{answers, assert_spread, show};
use axon_lab::kube::KubeCluster;
use axon_lab::kube_standin::KubeStandin;
use axon_lab::{Agent, AgentOptions, Lab, UdpMode};
use serde_json::json;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

const BACKEND_PORT: u16 = 8080;
const REQUESTS: u32 = 40;
const WAIT: Duration = Duration::from_secs(20);

fn agent_for(lab: &Lab, kubeconfig: &std::path::Path) -> Agent {
    let opts = AgentOptions {
        k8s_kubeconfig: Some(kubeconfig.to_path_buf()),
        node_name: Some("node-1".into()),
        ..AgentOptions::default()
    };
    lab.start_agent_with(opts).expect("agent")
}

/// Polls the agent's services until `pred` holds; panics with the last list.
fn wait_services(agent: &Agent, what: &str, pred: impl Fn(&[Service]) -> bool) -> Vec<Service> {
    let start = Instant::now();
    loop {
        let list = agent.list_services().unwrap_or_default();
        if pred(&list) {
            return list;
        }
        if start.elapsed() > WAIT {
            panic!("{what}: not reached within {WAIT:?}; services: {list:#?}\nagent log:\n{}", agent.log());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn named<'a>(list: &'a [Service], name: &str) -> Vec<&'a Service> {
    list.iter().filter(|s| s.name.as_deref() == Some(name)).collect()
}

fn active_backends(list: &[Service], name: &str) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = named(list, name)
        .iter()
        .flat_map(|s| s.backends.iter())
        .filter(|b| b.state == BackendState::Active)
        .map(|b| b.socket_addr())
        .collect();
    out.sort();
    out.dedup();
    out
}

fn cluster_ip(kube: &KubeCluster, ns: &str, name: &str) -> IpAddr {
    let out = kube.kubectl(&["-n", ns, "get", "service", name, "-o", "jsonpath={.spec.clusterIP}"]).expect("kubectl");
    out.stdout.trim().parse().unwrap_or_else(|_| panic!("clusterIP of {ns}/{name}: {out}"))
}

/// Selectorless Endpoints `name` with `ips` on ports http (TCP) and dns (UDP).
fn endpoints_yaml(ns: &str, name: &str, ips: &[IpAddr]) -> String {
    let addresses: Vec<_> = ips.iter().map(|ip| json!({"ip": ip.to_string(), "nodeName": "node-1"})).collect();
    let subsets = if ips.is_empty() {
        json!([])
    } else {
        json!([{"addresses": addresses, "ports": [
            {"name": "http", "port": BACKEND_PORT, "protocol": "TCP"},
            {"name": "dns", "port": BACKEND_PORT, "protocol": "UDP"}]}])
    };
    json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": name, "namespace": ns}, "subsets": subsets})
        .to_string()
}

fn service_yaml(ns: &str, name: &str, http_port: u16) -> String {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
           "spec": {"ports": [{"name": "http", "port": http_port, "targetPort": BACKEND_PORT, "protocol": "TCP"},
                              {"name": "dns", "port": 53, "targetPort": BACKEND_PORT, "protocol": "UDP"}]}})
    .to_string()
}

fn backend_ips(lab: &Lab, which: &[usize]) -> Vec<IpAddr> {
    which.iter().map(|i| lab.backend(*i + 1).ipv4().into()).collect()
}

fn spread(lab: &Lab, vip: SocketAddr, want: &[&str], what: &str) {
    assert_spread(&lab.tcp(vip, REQUESTS).expect("tcp client"), want, &format!("tcp {what}"));
    let dns = SocketAddr::new(vip.ip(), 53);
    assert_spread(&lab.udp(dns, REQUESTS, UdpMode::Unconnected).expect("udp client"), want, &format!("udp {what}"));
}

/// Events the apiserver holds for one object.
fn events_for(kube: &KubeCluster, ns: &str, name: &str) -> String {
    let selector = format!("involvedObject.name={name}");
    kube.kubectl(&["-n", ns, "get", "events", "--field-selector", &selector, "-o", "jsonpath={.items[*].message}"])
        .map(|o| o.stdout)
        .unwrap_or_default()
}

#[test]
fn kubectl_services_are_served_and_followed_through_restarts() {
    let mut kube = KubeCluster::start().expect("kube-apiserver");
    let lab = Lab::new("k8ssvc", 3).expect("lab");
    let _servers = lab.serve_all(BACKEND_PORT).expect("backends");
    let ns = "shop";
    kube.apply(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}).to_string())
        .expect("namespace");
    kube.apply(&service_yaml(ns, "web", 80)).expect("service");
    kube.apply(&endpoints_yaml(ns, "web", &backend_ips(&lab, &[0, 1]))).expect("endpoints");
    let mut agent = agent_for(&lab, kube.kubeconfig());
    let vip = cluster_ip(&kube, ns, "web");

    // Created with kubectl: served under its Kubernetes name.
    wait_services(&agent, "web served", |l| active_backends(l, "shop/web:http").len() == 2);
    spread(&lab, SocketAddr::new(vip, 80), &["backend-1", "backend-2"], "created");
    let listed = agent.agentctl(&["service", "list"]).expect("agentctl");
    assert!(listed.stdout.contains("shop/web:http") && listed.stdout.contains("shop/web:dns"), "{listed}");
    // Owned by Kubernetes: the local API refuses to change it, naming the owner.
    let id = named(&agent.list_services().expect("list"), "shop/web:http")[0].id;
    let (status, body) = agent.request("DELETE", &format!("/v1/services/{id}"), None).expect("delete request");
    assert_eq!(status, 409, "{body}");
    assert!(body.to_string().contains("shop/web"), "{body}");

    // Scale up, then down.
    kube.apply(&endpoints_yaml(ns, "web", &backend_ips(&lab, &[0, 1, 2]))).expect("scale up");
    wait_services(&agent, "scaled up", |l| active_backends(l, "shop/web:http").len() == 3);
    spread(&lab, SocketAddr::new(vip, 80), &["backend-1", "backend-2", "backend-3"], "scaled up");
    kube.apply(&endpoints_yaml(ns, "web", &backend_ips(&lab, &[2]))).expect("scale down");
    wait_services(&agent, "scaled down", |l| active_backends(l, "shop/web:http").len() == 1);
    spread(&lab, SocketAddr::new(vip, 80), &["backend-3"], "scaled down");

    // Update: the http port moves 80 → 81; the old frontend goes with it.
    kube.apply(&service_yaml(ns, "web", 81)).expect("update");
    wait_services(&agent, "port moved", |l| named(l, "shop/web:http").iter().all(|s| s.frontend.port == 81));
    assert_spread(&lab.tcp(SocketAddr::new(vip, 81), REQUESTS).expect("tcp"), &["backend-3"], "after update");
    let old = lab.tcp(SocketAddr::new(vip, 80), 2).expect("tcp");
    assert!(old.iter().all(|a| a.answer.is_none()), "port 80 still served:\n{}", show(&old));

    // Bad input: an SCTP port is skipped (the TCP one served) and an
    // externalIP overlapping web's frontend makes its Service unservable;
    // both get an Event naming the problem, and web keeps working.
    let sctp = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "sig", "namespace": ns},
        "spec": {"ports": [{"name": "diameter", "port": 3868, "protocol": "SCTP"},
                           {"name": "http", "port": 80, "targetPort": BACKEND_PORT, "protocol": "TCP"}]}});
    kube.apply(&sctp.to_string()).expect("sctp service");
    kube.apply(&endpoints_yaml(ns, "sig", &backend_ips(&lab, &[0]))).expect("sig endpoints");
    let clash = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "clash", "namespace": ns},
        "spec": {"externalIPs": [vip.to_string()],
                 "ports": [{"name": "http", "port": 81, "targetPort": BACKEND_PORT, "protocol": "TCP"}]}});
    kube.apply(&clash.to_string()).expect("clash service");
    kube.apply(&endpoints_yaml(ns, "clash", &backend_ips(&lab, &[0]))).expect("clash endpoints");
    wait_services(&agent, "sig's TCP port served", |l| active_backends(l, "shop/sig:http").len() == 1);
    let sig_vip = cluster_ip(&kube, ns, "sig");
    assert_spread(&lab.tcp(SocketAddr::new(sig_vip, 80), REQUESTS).expect("tcp"), &["backend-1"], "sig http");
    let start = Instant::now();
    while !(events_for(&kube, ns, "sig").contains("SCTP") && events_for(&kube, ns, "clash").contains("already")) {
        assert!(
            start.elapsed() < WAIT,
            "no Events: sig {:?} clash {:?}\n{}",
            events_for(&kube, ns, "sig"),
            events_for(&kube, ns, "clash"),
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(named(&agent.list_services().expect("list"), "shop/clash:http").is_empty());
    assert_spread(&lab.tcp(SocketAddr::new(vip, 81), REQUESTS).expect("tcp"), &["backend-3"], "web beside bad input");

    // The apiserver restarts: the datapath serves throughout, and changes
    // made after it is back arrive (the watch resumes).
    kube.stop_apiserver();
    assert_spread(&lab.tcp(SocketAddr::new(vip, 81), REQUESTS).expect("tcp"), &["backend-3"], "apiserver down");
    kube.start_apiserver().expect("apiserver back");
    kube.apply(&endpoints_yaml(ns, "web", &backend_ips(&lab, &[0, 2]))).expect("scale after restart");
    wait_services(&agent, "change after apiserver restart", |l| active_backends(l, "shop/web:http").len() == 2);
    spread(&lab, SocketAddr::new(vip, 81), &["backend-1", "backend-3"], "after apiserver restart");

    // The agent is down while the cluster changes: sig is deleted and web
    // scaled. The pinned datapath keeps serving; the restarted agent's
    // relist removes sig and applies the scale.
    agent.stop().expect("stop agent");
    assert_spread(
        &lab.tcp(SocketAddr::new(vip, 81), REQUESTS).expect("tcp"),
        &["backend-1", "backend-3"],
        "agent down",
    );
    kube.kubectl(&["-n", ns, "delete", "service", "sig"]).expect("delete sig");
    kube.apply(&endpoints_yaml(ns, "web", &backend_ips(&lab, &[1]))).expect("scale while agent down");
    agent.start_again().expect("agent again");
    wait_services(&agent, "resync after agent restart", |l| {
        named(l, "shop/sig:http").is_empty() && active_backends(l, "shop/web:http").len() == 1
    });
    spread(&lab, SocketAddr::new(vip, 81), &["backend-2"], "after agent restart");

    // Deleted: its frontends go.
    kube.kubectl(&["-n", ns, "delete", "service", "web"]).expect("delete web");
    wait_services(&agent, "web deleted", |l| {
        named(l, "shop/web:http").is_empty() && named(l, "shop/web:dns").is_empty()
    });
    let gone = lab.tcp(SocketAddr::new(vip, 81), 2).expect("tcp");
    assert!(gone.iter().all(|a| a.answer.is_none()), "deleted service still served:\n{}", show(&gone));
}

fn slice(name: &str, endpoints: serde_json::Value) -> serde_json::Value {
    // Shaped as `kubectl get endpointslice -o json` prints a controller-made slice.
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "shop", "generateName": "web-",
                     "labels": {"endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                                "kubernetes.io/service-name": "web"},
                     "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": "web",
                                          "uid": "standin-service-shop-web", "controller": true,
                                          "blockOwnerDeletion": true}]},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": BACKEND_PORT, "protocol": "TCP"}]
    })
}

fn endpoint(ip: IpAddr, ready: bool, serving: bool, terminating: bool) -> serde_json::Value {
    json!({"addresses": [ip.to_string()], "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
           "nodeName": "node-1", "targetRef": {"kind": "Pod", "namespace": "shop", "name": format!("web-{ip}")}})
}

#[test]
fn discovery_v1_slices_with_terminating_endpoints_from_the_standin() {
    let standin = KubeStandin::start().expect("stand-in");
    let lab = Lab::new("k8sslice", 3).expect("lab");
    let _servers = lab.serve_all(BACKEND_PORT).expect("backends");
    let ips = backend_ips(&lab, &[0, 1, 2]);
    let vip: IpAddr = "10.96.77.10".parse().expect("vip");
    standin
        .apply(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"},
                      "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.1"}]}}))
        .expect("node");
    standin
        .apply(json!({"apiVersion": "v1", "kind": "Service",
                      "metadata": {"name": "web", "namespace": "shop"},
                      "spec": {"type": "ClusterIP", "clusterIP": vip.to_string(), "clusterIPs": [vip.to_string()],
                               "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack", "sessionAffinity": "None",
                               "selector": {"app": "web"},
                               "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "web"},
                                         {"name": "sig", "port": 3868, "protocol": "SCTP", "targetPort": 3868}]},
                      "status": {"loadBalancer": {}}}))
        .expect("service");
    let ready = |ip: IpAddr| endpoint(ip, true, true, false);
    standin.apply(slice("web-abcde", json!([ready(ips[0]), ready(ips[1])]))).expect("slice");
    let agent = agent_for(&lab, standin.kubeconfig());
    let status = agent.status().expect("status");
    assert!(status.source.contains("kubernetes"), "{status:?}");

    wait_services(&agent, "served from the v1 slice", |l| active_backends(l, "shop/web:http").len() == 2);
    let vip80 = SocketAddr::new(vip, 80);
    assert_spread(&lab.tcp(vip80, REQUESTS).expect("tcp"), &["backend-1", "backend-2"], "from the slice");
    // The SCTP port is reported as an Event on the Service.
    let start = Instant::now();
    while !standin.events().iter().any(|e| e["message"].as_str().is_some_and(|m| m.contains("SCTP"))) {
        assert!(start.elapsed() < WAIT, "no SCTP Event: {:?}", standin.events());
        std::thread::sleep(Duration::from_millis(100));
    }
    let event = standin.events().into_iter().find(|e| e["message"].as_str().is_some_and(|m| m.contains("SCTP")));
    let event = event.expect("event");
    assert_eq!(event["involvedObject"]["name"], json!("web"), "{event}");
    assert_eq!(event["type"], json!("Warning"), "{event}");

    // Bad ports a real apiserver would refuse but a buggy controller or
    // client could still produce: the bad parts are skipped by name, the rest served.
    let odd_vip: IpAddr = "10.96.77.11".parse().expect("vip");
    standin
        .apply(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "odd", "namespace": "shop"},
                      "spec": {"clusterIP": odd_vip.to_string(), "clusterIPs": [odd_vip.to_string()],
                               "ports": [{"name": "http", "port": 70000, "protocol": "TCP"},
                                         {"name": "ok", "port": 81, "protocol": "TCP"},
                                         {"name": "zero", "port": 82, "protocol": "TCP"}]}}))
        .expect("odd service");
    let mut odd = slice("odd-abcde", json!([ready(ips[2])]));
    odd["metadata"]["labels"]["kubernetes.io/service-name"] = json!("odd");
    odd["ports"] = json!([{"name": "ok", "port": BACKEND_PORT, "protocol": "TCP"},
                          {"name": "zero", "port": 0, "protocol": "TCP"}]);
    standin.apply(odd).expect("odd slice");
    wait_services(&agent, "odd's good port served", |l| active_backends(l, "shop/odd:ok").len() == 1);
    assert_spread(&lab.tcp(SocketAddr::new(odd_vip, 81), REQUESTS).expect("tcp"), &["backend-3"], "odd:ok");
    let start = Instant::now();
    let odd_event = loop {
        let found = standin.events().into_iter().find(|e| e["involvedObject"]["name"] == json!("odd"));
        if let Some(e) = found {
            break e;
        }
        assert!(start.elapsed() < WAIT, "no Event for odd: {:?}", standin.events());
        std::thread::sleep(Duration::from_millis(100));
    };
    let message = odd_event["message"].as_str().unwrap_or_default();
    assert!(message.contains("spec.ports[0].port: 70000") && message.contains("\"zero\": 0"), "{odd_event}");

    // backend-1 terminates (a second slice brings backend-3): no new
    // connection picks it, but it stays in the backend map so flows on it drain.
    standin
        .apply(slice("web-abcde", json!([endpoint(ips[0], false, true, true), ready(ips[1])])))
        .expect("terminating");
    standin.apply(slice("web-fghij", json!([ready(ips[2])]))).expect("second slice");
    let list = wait_services(&agent, "terminating endpoint drains", |l| {
        active_backends(l, "shop/web:http").len() == 2
            && named(l, "shop/web:http").iter().any(|s| s.backends.iter().any(|b| b.state == BackendState::Terminating))
    });
    assert_spread(&lab.tcp(vip80, REQUESTS).expect("tcp"), &["backend-2", "backend-3"], "terminating skipped");
    let dump = agent.lb_maps().expect("lb maps");
    let in_backend_map = dump.backends4.iter().any(|(_, b)| IpAddr::from(b.ip()) == ips[0]);
    assert!(in_backend_map, "the terminating backend left the backend map: {list:#?}");
    let listed = agent.agentctl(&["service", "list"]).expect("agentctl");
    assert!(listed.stdout.contains("terminating"), "{listed}");
    let lb = agent.agentctl(&["bpf", "lb", "list"]).expect("agentctl bpf lb list");
    let draining = format!("{}:{BACKEND_PORT}/TCP", ips[0]);
    assert!(lb.stdout.lines().any(|l| l.contains(&draining) && l.contains("terminating")), "{lb}");

    // History lost while the watch is down (compaction, apiserver restart):
    // the watch gets 410 Gone, relists, and the relist removes what was
    // deleted in between.
    standin.delete("EndpointSlice", "shop", "web-fghij");
    standin.compact();
    standin.apply(slice("web-abcde", json!([ready(ips[0])]))).expect("update during the gap");
    standin.compact();
    standin.drop_watches();
    wait_services(&agent, "relist after 410", |l| {
        active_backends(l, "shop/web:http") == vec![SocketAddr::new(ips[0], BACKEND_PORT)]
    });
    let a = lab.tcp(vip80, REQUESTS).expect("tcp");
    assert_eq!(answers(&a).into_keys().collect::<Vec<_>>(), vec!["backend-1".to_string()], "{}", show(&a));

    standin.delete("Service", "shop", "web");
    wait_services(&agent, "service deleted", |l| named(l, "shop/web:http").is_empty());
}

/// Makes the apiserver (on the host's loopback) reachable on the same port
/// of `netns`'s loopback, where a node's agent runs: a TCP relay whose
/// listening socket is created inside the namespace.
fn relay_into(netns: &axon_lab::Netns, port: u16, target: SocketAddr) {
    let listener = netns
        .run(move || std::net::TcpListener::bind(("127.0.0.1", port)))
        .expect("enter netns")
        .unwrap_or_else(|e| panic!("relay listener in {}: {e}", netns.label()));
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(upstream) = std::net::TcpStream::connect(target) else { continue };
            let (Ok(mut c2), Ok(mut u2)) = (client.try_clone(), upstream.try_clone()) else { continue };
            let (mut c, mut u) = (client, upstream);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c2, &mut u2);
                let _ = u2.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut u, &mut c);
                let _ = c.shutdown(std::net::Shutdown::Write);
            });
        }
    });
}

#[test]
fn node_port_from_the_apiserver_with_external_traffic_policy_local() {
    use common::{assert_answered, Ns, BACKEND_PORT as NS_BACKEND_PORT};
    let kube = KubeCluster::start().expect("kube-apiserver");
    let shape = axon_lab::MultiNodeOptions { nodes: 2, backends_per_node: 1, ..Default::default() };
    let lab = axon_lab::MultiNodeLab::with_options("k8snp", &shape).expect("lab");
    let servers = lab.serve_all(NS_BACKEND_PORT).expect("backends");
    // The agents run inside the node namespaces: relay the apiserver into each.
    let target: SocketAddr = kube.server().trim_start_matches("https://").parse().expect("apiserver address");
    for node in lab.nodes() {
        relay_into(node.netns(), target.port(), target);
    }
    let opts = AgentOptions {
        k8s_kubeconfig: Some(kube.kubeconfig().to_path_buf()),
        xdp_mode: Some(axon_lab::XdpSetting::Disabled),
        ..AgentOptions::default()
    };
    let cluster = lab.start_agents(&opts).expect("agents");
    let ns = Ns { cluster, servers, lab };

    let addresses: Vec<_> =
        ns.lab.backends().iter().map(|b| json!({"ip": b.ip(false).to_string(), "nodeName": b.node_name()})).collect();
    let service = |policy: &str| {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "np", "namespace": "default"},
               "spec": {"type": "NodePort", "externalTrafficPolicy": policy,
                        "ports": [{"name": "http", "port": 80, "nodePort": 30080, "targetPort": NS_BACKEND_PORT,
                                   "protocol": "TCP"}]}})
        .to_string()
    };
    kube.apply(&service("Cluster")).expect("service");
    kube.apply(
        &json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "np", "namespace": "default"},
                "subsets": [{"addresses": addresses, "ports": [{"name": "http", "port": NS_BACKEND_PORT, "protocol": "TCP"}]}]})
        .to_string(),
    )
    .expect("endpoints");
    for agent in ns.cluster.agents() {
        wait_services(agent, "NodePort served", |l| {
            named(l, "default/np:http")
                .iter()
                .any(|s| s.svc_type == axon_api::ServiceType::NodePort && s.backends.len() == 2)
        });
    }
    // Cluster: either node reaches every backend.
    let via1 = ns.probe_ok(&axon_lab::Probe::tcp(ns.lab.node(1).addr(false, 30080)).count(40), "NodePort via node-1");
    assert_answered(&via1, &ns.all_names(), "eTP=Cluster via node-1");

    // Local: each node only its own backend.
    kube.apply(&service("Local")).expect("eTP=Local");
    for agent in ns.cluster.agents() {
        wait_services(agent, "eTP=Local", |l| {
            named(l, "default/np:http").iter().any(|s| {
                s.svc_type == axon_api::ServiceType::NodePort
                    && s.options.external_traffic_policy == axon_api::TrafficPolicy::Local
            })
        });
    }
    for i in [1, 2] {
        let what = format!("eTP=Local via node-{i}");
        let attempts = ns.probe_ok(&axon_lab::Probe::tcp(ns.lab.node(i).addr(false, 30080)).count(20), &what);
        assert_answered(&attempts, &ns.names_of(i), &what);
    }
}

#[test]
fn a_burst_of_changes_is_coalesced_into_few_reconciles() {
    const SERVICES: usize = 60;
    let standin = KubeStandin::start().expect("stand-in");
    let lab = Lab::new("k8sburst", 2).expect("lab");
    let _servers = lab.serve_all(BACKEND_PORT).expect("backends");
    let ips = backend_ips(&lab, &[0, 1]);
    standin.apply(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}})).expect("node");
    let opts = AgentOptions {
        k8s_kubeconfig: Some(standin.kubeconfig().to_path_buf()),
        node_name: Some("node-1".into()),
        extra_args: vec!["--log-level".into(), "info,axon_agent::k8s=debug".into()],
        ..AgentOptions::default()
    };
    let agent = lab.start_agent_with(opts).expect("agent");
    let reconciles = |agent: &Agent| agent.log().matches("Kubernetes services reconciled").count();
    wait_services(&agent, "first list reconciled", |_| reconciles(&agent) >= 1);
    let before = reconciles(&agent);

    // 60 Services and their slices, 120 watch events, as fast as the test can write them.
    for i in 0..SERVICES {
        let name = format!("svc-{i}");
        let vip = format!("10.96.88.{}", i + 1);
        standin
            .apply(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "shop"},
                          "spec": {"clusterIP": vip, "clusterIPs": [vip],
                                   "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}))
            .expect("service");
        let mut s = slice(&format!("{name}-x"), json!([endpoint(ips[i % 2], true, true, false)]));
        s["metadata"]["labels"]["kubernetes.io/service-name"] = json!(name);
        standin.apply(s).expect("slice");
    }
    wait_services(&agent, "the burst served", |l| {
        (0..SERVICES).all(|i| active_backends(l, &format!("shop/svc-{i}:http")).len() == 1)
    });
    let used = reconciles(&agent) - before;
    assert!(used <= 10, "{} watch events took {used} reconciles (want a few):\n{}", 2 * SERVICES, agent.log());
    let a = lab.tcp("10.96.88.2:80".parse().expect("vip"), 5).expect("tcp");
    assert_spread(&a, &["backend-2"], "a service from the burst");
}

#[test]
fn a_terminating_endpoint_keeps_its_node_port_flow_but_gets_no_new_ones() {
    use common::{assert_answered, Ns};
    use std::io::{BufRead, BufReader, Write};
    let standin = KubeStandin::start().expect("stand-in");
    let shape = axon_lab::MultiNodeOptions { nodes: 1, backends_per_node: 2, ..Default::default() };
    let lab = axon_lab::MultiNodeLab::with_options("k8sdrain", &shape).expect("lab");
    let servers = lab.serve_all(BACKEND_PORT).expect("backends");
    let target: SocketAddr = standin.server().trim_start_matches("http://").parse().expect("stand-in address");
    relay_into(lab.node(1).netns(), target.port(), target);
    let opts = AgentOptions {
        k8s_kubeconfig: Some(standin.kubeconfig().to_path_buf()),
        xdp_mode: Some(axon_lab::XdpSetting::Disabled),
        ..AgentOptions::default()
    };
    let cluster = lab.start_agents(&opts).expect("agents");
    let ns = Ns { cluster, servers, lab };
    let ips: Vec<IpAddr> = ns.lab.backends().iter().map(|b| b.ip(false)).collect();
    let names: Vec<String> = ns.lab.backends().iter().map(|b| b.name().to_string()).collect();
    standin.apply(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}})).expect("node");
    standin
        .apply(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "shop"},
                      "spec": {"type": "NodePort", "clusterIP": "10.96.77.20", "clusterIPs": ["10.96.77.20"],
                               "ports": [{"name": "http", "port": 80, "nodePort": 30090, "protocol": "TCP"}]}}))
        .expect("service");
    let ready = |ip: IpAddr| endpoint(ip, true, true, false);
    standin.apply(slice("web-abcde", json!([ready(ips[0]), ready(ips[1])]))).expect("slice");
    let agent = ns.cluster.agent(1);
    wait_services(agent, "NodePort served", |l| {
        named(l, "shop/web:http").iter().any(|s| s.svc_type == axon_api::ServiceType::NodePort && s.backends.len() == 2)
    });

    // An established flow through the NodePort...
    let node_port = ns.lab.node(1).addr(false, 30090);
    let stream = ns
        .lab
        .client()
        .netns()
        .run(move || std::net::TcpStream::connect_timeout(&node_port, Duration::from_secs(2)))
        .expect("client netns")
        .expect("connect to the NodePort");
    stream.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut first = String::new();
    reader.read_line(&mut first).expect("first line");
    let held = names
        .iter()
        .position(|n| first.split_whitespace().next() == Some(n.as_str()))
        .unwrap_or_else(|| panic!("answer {first:?}"));
    let other = 1 - held;

    // ...whose endpoint now terminates.
    let mut eps = vec![json!(null), json!(null)];
    eps[held] = endpoint(ips[held], false, true, true);
    eps[other] = ready(ips[other]);
    standin.apply(slice("web-abcde", json!(eps))).expect("terminating");
    wait_services(agent, "terminating", |l| {
        named(l, "shop/web:http").iter().all(|s| s.backends.iter().any(|b| b.state == BackendState::Terminating))
    });
    // New connections: only the other backend.
    let attempts = ns.probe_ok(&axon_lab::Probe::tcp(node_port).count(20), "new connections while draining");
    assert_answered(&attempts, &std::collections::BTreeSet::from([names[other].clone()]), "while draining");
    // The established one still works, on its backend.
    let mut writer = stream;
    writer.write_all(b"still there\n").expect("write on the draining flow");
    let mut echo = String::new();
    reader.read_line(&mut echo).expect("echo on the draining flow");
    assert_eq!(echo, "still there\n", "the draining flow broke (held {})", names[held]);

    // Gone from the slice: gone from the service.
    standin.apply(slice("web-abcde", json!([ready(ips[other])]))).expect("removed");
    wait_services(agent, "removed", |l| {
        named(l, "shop/web:http").iter().all(|s| s.backends.len() == 1 && s.backends[0].address == ips[other])
    });
}
