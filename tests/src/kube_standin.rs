//! A local stand-in for the parts of a Kubernetes API server the agent's
//! `discovery.k8s.io/v1` path uses, because the real apiserver the lab builds
//! (1.20.2) serves EndpointSlices only as v1beta1. It speaks the real
//! list/watch protocol over plain HTTP on loopback: API discovery documents,
//! lists carrying `metadata.resourceVersion`, `?watch=1` streams of chunked
//! JSON watch events resuming from a resourceVersion, and 410 Gone for
//! resourceVersions older than its history. It serves the objects a test
//! gives it (Services, EndpointSlices, Nodes as `kubectl get -o json` prints
//! them) and records the core/v1 Events clients post. Tests mutate objects
//! while agents watch, so watch events flow as they would from a real server.
//!
//! Not a general apiserver: no auth, no field or label selectors, no
//! validation, no server-side apply. It exists so the v1 path is exercised by
//! a real client (kube's watcher in the agent binary) over real HTTP.

use crate::error::{IoContext, LabError, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The kinds served, by their collection path.
const KINDS: [Kind; 5] = [
    Kind { path: "/api/v1/services", kind: "Service", api_version: "v1", plural: "services", namespaced: true },
    Kind { path: "/api/v1/nodes", kind: "Node", api_version: "v1", plural: "nodes", namespaced: false },
    // Served (empty unless a test adds some) for the agent's identity watchers.
    Kind { path: "/api/v1/pods", kind: "Pod", api_version: "v1", plural: "pods", namespaced: true },
    Kind { path: "/api/v1/namespaces", kind: "Namespace", api_version: "v1", plural: "namespaces", namespaced: false },
    Kind {
        path: "/apis/discovery.k8s.io/v1/endpointslices",
        kind: "EndpointSlice",
        api_version: "discovery.k8s.io/v1",
        plural: "endpointslices",
        namespaced: true,
    },
];

#[derive(Clone, Copy)]
struct Kind {
    path: &'static str,
    kind: &'static str,
    api_version: &'static str,
    plural: &'static str,
    namespaced: bool,
}

#[derive(Default)]
struct Store {
    rv: u64,
    /// (kind, namespace, name) → object.
    objects: BTreeMap<(String, String, String), Value>,
    /// Every change: (resourceVersion, kind, ADDED/MODIFIED/DELETED, object).
    history: Vec<(u64, String, &'static str, Value)>,
    /// History before this resourceVersion is forgotten (410 Gone).
    compacted_before: u64,
    events: Vec<Value>,
}

struct Shared {
    store: Mutex<Store>,
    changed: Condvar,
    stop: AtomicBool,
}

/// The running stand-in; stops (and ends every watch) on drop.
pub struct KubeStandin {
    shared: Arc<Shared>,
    port: u16,
    dir: PathBuf,
    kubeconfig: PathBuf,
}

impl KubeStandin {
    pub fn start() -> Result<KubeStandin> {
        let listener = TcpListener::bind("127.0.0.1:0").ctx(|| "binding the stand-in".to_string())?;
        let port = listener.local_addr().ctx(|| "stand-in address".to_string())?.port();
        let dir = std::env::temp_dir().join(format!("axon-standin-{}", crate::bins::unique_id()));
        std::fs::create_dir_all(&dir).ctx(|| "stand-in dir".to_string())?;
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: standin\n  cluster: {{server: \"http://127.0.0.1:{port}\"}}\n\
                 users:\n- name: standin\n  user: {{}}\ncontexts:\n- name: standin\n  context: {{cluster: standin, user: standin}}\n\
                 current-context: standin\n"
            ),
        )
        .ctx(|| "writing the stand-in kubeconfig".to_string())?;
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let accept_shared = shared.clone();
        listener.set_nonblocking(true).ctx(|| "stand-in listener".to_string())?;
        std::thread::spawn(move || accept_loop(listener, accept_shared));
        Ok(KubeStandin { shared, port, dir, kubeconfig })
    }

    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    pub fn server(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates or replaces an object (its `kind`, `metadata.namespace` and
    /// `metadata.name` say which); watchers see ADDED or MODIFIED.
    pub fn apply(&self, mut object: Value) -> Result<()> {
        let kind = object["kind"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| LabError::Setup("stand-in object without kind".into()))?;
        let kind = kind.as_str();
        let k = KINDS
            .iter()
            .find(|k| k.kind == kind)
            .ok_or_else(|| LabError::Setup(format!("the stand-in does not serve {kind}")))?;
        let ns = if k.namespaced {
            object["metadata"]["namespace"].as_str().unwrap_or("default").to_string()
        } else {
            String::new()
        };
        let name = object["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let mut store = self.lock();
        store.rv += 1;
        let rv = store.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        if object["metadata"]["uid"].is_null() {
            object["metadata"]["uid"] = json!(format!("standin-{kind}-{ns}-{name}").to_lowercase());
        }
        let key = (kind.to_string(), ns, name);
        let verb = if store.objects.insert(key, object.clone()).is_some() { "MODIFIED" } else { "ADDED" };
        store.history.push((rv, kind.to_string(), verb, object));
        drop(store);
        self.shared.changed.notify_all();
        Ok(())
    }

    /// Deletes an object; watchers see DELETED.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) {
        let mut store = self.lock();
        if let Some(mut object) = store.objects.remove(&(kind.to_string(), namespace.to_string(), name.to_string())) {
            store.rv += 1;
            let rv = store.rv;
            object["metadata"]["resourceVersion"] = json!(rv.to_string());
            store.history.push((rv, kind.to_string(), "DELETED", object));
        }
        drop(store);
        self.shared.changed.notify_all();
    }

    /// Forgets the history so far: a watch resuming from before now gets
    /// 410 Gone and must relist (what etcd compaction does to a real server).
    pub fn compact(&self) {
        let mut store = self.lock();
        store.rv += 1;
        store.compacted_before = store.rv;
        store.history.clear();
    }

    /// Ends every open watch stream (as an apiserver restart does).
    pub fn drop_watches(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.changed.notify_all();
        std::thread::sleep(Duration::from_millis(300));
        self.shared.stop.store(false, Ordering::SeqCst);
    }

    /// Events clients posted (core/v1), oldest first.
    pub fn events(&self) -> Vec<Value> {
        self.lock().events.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.shared.store.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for KubeStandin {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Permanent stop: the accept loop checks this flag too.
        self.lock().compacted_before = u64::MAX;
        self.shared.changed.notify_all();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        if shared.store.lock().map(|s| s.compacted_before == u64::MAX).unwrap_or(true) {
            return;
        }
        match listener.accept() {
            Ok((stream, _)) => {
                let shared = shared.clone();
                std::thread::spawn(move || {
                    let _ = serve(stream, &shared);
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

struct Request {
    method: String,
    path: String,
    query: BTreeMap<String, String>,
    body: Vec<u8>,
}

fn read_request(stream: &TcpStream) -> std::io::Result<Option<Request>> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("/").to_string());
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let (path, q) = target.split_once('?').unwrap_or((&target, ""));
    let query = q
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), v.replace("%2F", "/")))
        .collect();
    Ok(Some(Request { method, path: path.to_string(), query, body }))
}

fn respond(mut stream: &TcpStream, status: u16, body: &Value) -> std::io::Result<()> {
    let text = body.to_string();
    let reason = match status {
        200 => "OK",
        201 => "Created",
        404 => "Not Found",
        410 => "Gone",
        _ => "Error",
    };
    write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    )?;
    stream.flush()
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn serve(stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let Some(req) = read_request(&stream)? else { return Ok(()) };
    if req.method == "POST" && req.path.starts_with("/api/v1/namespaces/") && req.path.ends_with("/events") {
        let mut event: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
        let mut store = shared.store.lock().unwrap_or_else(|p| p.into_inner());
        store.rv += 1;
        event["metadata"]["resourceVersion"] = json!(store.rv.to_string());
        let generated = event["metadata"]["generateName"].as_str().unwrap_or("event.").to_string();
        event["metadata"]["name"] = json!(format!("{generated}{}", store.rv));
        store.events.push(event.clone());
        return respond(&stream, 201, &event);
    }
    if req.method != "GET" {
        return respond(&stream, 405, &status(405, "MethodNotAllowed", "the stand-in only lists and watches"));
    }
    match req.path.as_str() {
        "/api" => return respond(&stream, 200, &json!({"kind": "APIVersions", "versions": ["v1"]})),
        "/apis" => {
            let group = json!({"name": "discovery.k8s.io", "versions": [{"groupVersion": "discovery.k8s.io/v1", "version": "v1"}],
                               "preferredVersion": {"groupVersion": "discovery.k8s.io/v1", "version": "v1"}});
            return respond(&stream, 200, &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [group]}));
        }
        "/api/v1" | "/apis/discovery.k8s.io/v1" => {
            let group_version = req.path.trim_start_matches("/apis/").trim_start_matches("/api/");
            let resources: Vec<Value> = KINDS
                .iter()
                .filter(|k| k.api_version == group_version)
                .map(|k| {
                    json!({"name": k.plural, "singularName": "", "namespaced": k.namespaced, "kind": k.kind,
                                "verbs": ["get", "list", "watch"]})
                })
                .collect();
            return respond(
                &stream,
                200,
                &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}),
            );
        }
        _ => {}
    }
    let Some(kind) = KINDS.iter().find(|k| k.path == req.path) else {
        return respond(&stream, 404, &status(404, "NotFound", &format!("the stand-in does not serve {}", req.path)));
    };
    let watching = matches!(req.query.get("watch").map(String::as_str), Some("1" | "true"));
    if watching {
        watch(stream, shared, kind, &req)
    } else {
        list(&stream, shared, kind)
    }
}

fn list(stream: &TcpStream, shared: &Shared, kind: &Kind) -> std::io::Result<()> {
    let store = shared.store.lock().unwrap_or_else(|p| p.into_inner());
    let items: Vec<Value> =
        store.objects.iter().filter(|((k, _, _), _)| k == kind.kind).map(|(_, v)| v.clone()).collect();
    let body = json!({"kind": format!("{}List", kind.kind), "apiVersion": kind.api_version,
                      "metadata": {"resourceVersion": store.rv.to_string()}, "items": items});
    drop(store);
    respond(stream, 200, &body)
}

fn watch(mut stream: TcpStream, shared: &Shared, kind: &Kind, req: &Request) -> std::io::Result<()> {
    let mut since: u64 = req.query.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
    let timeout = req.query.get("timeoutSeconds").and_then(|v| v.parse().ok()).unwrap_or(290u64).min(290);
    let bookmarks = req.query.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    write!(stream, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")?;
    let send = |stream: &mut TcpStream, event: &Value| -> std::io::Result<()> {
        let line = format!("{event}\n");
        write!(stream, "{:x}\r\n{line}\r\n", line.len())?;
        stream.flush()
    };
    let end = Instant::now() + Duration::from_secs(timeout);
    let mut last_bookmark = Instant::now();
    let mut store = shared.store.lock().unwrap_or_else(|p| p.into_inner());
    if since != 0 && since < store.compacted_before {
        let gone = status(410, "Expired", &format!("too old resource version: {since} ({})", store.compacted_before));
        drop(store);
        send(&mut stream, &json!({"type": "ERROR", "object": gone}))?;
        return write!(stream, "0\r\n\r\n");
    }
    loop {
        if store.compacted_before > since {
            // History this stream had not delivered yet is gone: end it, so the client resumes from its
            // last version, gets 410 Gone and relists (an open watch never silently skips events).
            return Ok(());
        }
        let pending: Vec<Value> = store
            .history
            .iter()
            .filter(|(rv, k, _, _)| *rv > since && k == kind.kind)
            .map(|(_, _, verb, obj)| json!({"type": verb, "object": obj}))
            .collect();
        since = since.max(store.rv);
        let rv = store.rv;
        drop(store);
        for event in &pending {
            send(&mut stream, event)?;
        }
        if bookmarks && last_bookmark.elapsed() > Duration::from_secs(1) {
            last_bookmark = Instant::now();
            let bookmark = json!({"type": "BOOKMARK", "object": {"kind": kind.kind, "apiVersion": kind.api_version,
                                  "metadata": {"resourceVersion": rv.to_string()}}});
            send(&mut stream, &bookmark)?;
        }
        if shared.stop.load(Ordering::SeqCst) || Instant::now() >= end {
            // Ending the stream without the terminating chunk: the client sees the connection drop.
            return Ok(());
        }
        store = shared.store.lock().unwrap_or_else(|p| p.into_inner());
        if store.rv <= since {
            store = shared
                .changed
                .wait_timeout(store, Duration::from_millis(500))
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }
}
