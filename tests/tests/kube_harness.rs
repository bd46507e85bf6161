//! The control-plane harness itself: a real etcd cluster survives losing a member, and a real kube-apiserver
//! stores what kubectl creates across its own restart.

use axon_lab::etcd::EtcdCluster;
use axon_lab::kube::KubeCluster;

#[test]
fn three_member_etcd_keeps_serving_with_one_member_down() {
    let mut etcd = EtcdCluster::start(3).expect("etcd cluster");
    assert_eq!(etcd.endpoints().len(), 3);
    etcd.stop_member(1).expect("stop member");
    let ep = etcd.endpoints()[0].clone();
    // The lost member may have been the leader: the other two elect a new one first.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let put = std::process::Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &ep, "--command-timeout", "3s", "put", "axon-harness", "still-here"])
            .output()
            .expect("etcdctl put");
        if put.status.success() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", String::from_utf8_lossy(&put.stderr));
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    etcd.start_member(1).expect("restart member");
    let ep1 = etcd.endpoints()[1].clone();
    let get = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &ep1, "get", "axon-harness", "--print-value-only"])
        .output()
        .expect("etcdctl get");
    assert_eq!(String::from_utf8_lossy(&get.stdout).trim(), "still-here");
}

#[test]
fn apiserver_keeps_objects_across_its_restart() {
    let mut kube = KubeCluster::start().expect("kube-apiserver");
    kube.apply(
        "apiVersion: v1\nkind: Service\nmetadata: {name: harness, namespace: default}\n\
         spec: {clusterIP: 10.96.7.7, ports: [{name: http, port: 80, protocol: TCP}]}\n",
    )
    .expect("create service");
    kube.restart_apiserver().expect("restart");
    let out = kube.kubectl(&["get", "service", "harness", "-o", "jsonpath={.spec.clusterIP}"]).expect("kubectl");
    assert_eq!(out.stdout.trim(), "10.96.7.7", "{out}");
    let version = kube.kubectl(&["version", "-o", "json"]).expect("version");
    assert!(version.stdout.contains("\"gitVersion\": \"v1.20.2\""), "{version}");
}
