//! `axon-agent`: loads the datapath, restores the desired state from the
//! embedded store, reconciles it into the pinned maps and serves the API
//! until SIGTERM/SIGINT. Programs and maps stay pinned after it exits.

use anyhow::Context;
use axon_agent::api::{self, ApiState, StatusProvider};
use axon_agent::config::{Config, Flags};
use axon_agent::datapath::{self, Datapath};
use axon_agent::service::reconciler::LbSettings;
use axon_agent::service::{Limits, ServiceManager};
use axon_agent::store::Store;
use axon_api::Status;
use clap::Parser;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::signal::unix::{signal, SignalKind};
use tracing::info;

fn main() -> anyhow::Result<()> {
    axon_agent::memory::limit_arenas();
    let flags = Flags::parse();
    let config = Config::from_flags(&flags)?;
    init_logging(&config.log_level);
    let mesh = axon_agent::mesh::MeshConfig::from_flags(
        flags.mesh_mode.as_deref(),
        flags.mesh_outbound_port,
        flags.mesh_inbound_port,
        flags.mesh_proxy_uid,
        flags.mesh_bypass.as_deref(),
    )?;
    if flags.cleanup {
        axon_agent::mesh::loader::cleanup(&config.bpffs_root)?;
        let report = datapath::cleanup(&config.bpffs_root)
            .with_context(|| format!("cleaning up {}", config.bpffs_root.display()))?;
        println!("{report}");
        return Ok(());
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(run(config, mesh))
}

fn init_logging(filter: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

struct DatapathStatus(Mutex<Datapath>);

impl StatusProvider for DatapathStatus {
    fn fill(&self, status: &mut Status) {
        let dp = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let s = dp.status();
        status.programs = s.programs;
        status.maps = s.maps;
        status.kernel = s.kernel;
        status.counters = s.counters;
        status.devices = s
            .devices
            .into_iter()
            .map(|d| axon_api::status::DeviceStatus {
                name: d.name,
                ifindex: d.ifindex,
                mac: d.mac,
                ipv4: d.ipv4.map(|a| a.to_string()),
                ipv6: d.ipv6.map(|a| a.to_string()),
                tc: d.tc.to_string(),
                xdp: d.xdp.map(str::to_string),
            })
            .collect();
        status.node_addresses = s
            .node_addresses
            .into_iter()
            .map(|a| axon_api::status::NodeAddressStatus { address: a.address.to_string(), device: a.device })
            .collect();
    }
}

async fn run(config: Config, mesh: Option<axon_agent::mesh::MeshConfig>) -> anyhow::Result<()> {
    let started = Instant::now();
    let (dp, maps) = Datapath::load(&config.datapath).context("loading the datapath")?;
    tokio::spawn(datapath::run_ct_gc(config.bpffs_root.clone(), config.ct_gc_interval));
    let store = Store::open(&config.state_dir).context("opening the state store")?;
    if let Some(mesh) = mesh {
        let manager =
            axon_agent::mesh::MeshManager::start(mesh, &config.bpffs_root, &config.cgroup_root, &config.state_dir)
                .context("starting mesh acceleration")?;
        axon_agent::mesh::install(manager);
    }
    let limits =
        Limits { max_backends_per_service: config.max_backends_per_service, nodeport_range: config.nodeport_range };
    let settings = LbSettings {
        node_name: config.node_name.clone(),
        default_mode: config.lb_mode,
        default_algorithm: config.lb_algorithm,
        maglev_table_size: config.maglev_table_size,
    };
    let manager = ServiceManager::start(store, Box::new(maps), limits, settings).context("restoring services")?;
    let manager = Arc::new(Mutex::new(manager));
    // Start-up held every service three times (store, snapshot, model).
    axon_agent::memory::release_free_memory();
    tokio::spawn(axon_agent::health::run(manager.clone()));
    let source = start_kubernetes(&config, &manager).await?;
    axon_agent::identity::start(&config).await.context("starting security identities")?;
    let listener = api::bind(&config.api_socket)?;
    let state = Arc::new(ApiState {
        manager,
        status_provider: Box::new(DatapathStatus(Mutex::new(dp))),
        status_template: Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            bpffs_root: config.bpffs_root.display().to_string(),
            cgroup_root: config.cgroup_root.display().to_string(),
            api_socket: config.api_socket.display().to_string(),
            state_dir: config.state_dir.display().to_string(),
            source,
            ..Status::default()
        },
        started,
    });
    info!(
        socket = %config.api_socket.display(),
        cgroup = %config.cgroup_root.display(),
        bpffs = %config.bpffs_root.display(),
        startup_ms = started.elapsed().as_millis() as u64,
        "axon-agent ready"
    );
    api::serve(listener, state, shutdown_signal()).await;
    let _ = std::fs::remove_file(&config.api_socket);
    info!("axon-agent stopped; programs and maps stay pinned and keep serving");
    Ok(())
}

/// With Kubernetes configured, starts its source (Services come from the
/// cluster; the embedded store keeps them across restarts). Answers the
/// source's name for the status.
async fn start_kubernetes(config: &Config, manager: &Arc<Mutex<ServiceManager>>) -> anyhow::Result<String> {
    if !config.k8s_enabled {
        return Ok("embedded store".to_string());
    }
    let client = axon_agent::k8s::connect(config.k8s_kubeconfig.as_deref()).await?;
    let source_config = axon_agent::k8s::source::SourceConfig {
        node_name: config.node_name.clone(),
        proxy_name: config.k8s_service_proxy_name.clone(),
        batch_delay: std::time::Duration::from_millis(20),
    };
    let manager = manager.clone();
    tokio::spawn(async move {
        if let Err(e) = axon_agent::k8s::source::run(client, manager, source_config).await {
            tracing::error!(error = %e, "the Kubernetes source stopped");
        }
    });
    Ok(match &config.k8s_kubeconfig {
        Some(path) => format!("kubernetes (kubeconfig {})", path.display()),
        None => "kubernetes (in-cluster)".to_string(),
    })
}

async fn shutdown_signal() {
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        // Without signal handlers, run until killed.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = int.recv() => info!("SIGINT received"),
    }
}
