//! The Axon agent's REST API: the wire types every client and the agent share,
//! their validation (every rejection names the field that is wrong), and a
//! small HTTP-over-unix-socket client used by `agentctl` and the tests.

pub mod client;
pub mod identity;
pub mod mesh;
pub mod model;
pub mod status;
pub mod validate;

pub use client::{Client, ClientError};
pub use model::{
    Backend, BackendState, Cidr, L4Addr, LbAlgorithm, LbMode, Protocol, Service, ServiceOptions, ServiceSpec,
    ServiceType, SessionAffinity, TrafficPolicy,
};
pub use status::Status;
pub use validate::FieldError;

/// Paths of the API, relative to the socket.
pub mod paths {
    pub const SERVICES: &str = "/v1/services";
    pub const APPLY: &str = "/v1/services/apply";
    pub const STATUS: &str = "/v1/status";
    pub const HEALTHZ: &str = "/v1/healthz";

    pub fn service(id: u32) -> String {
        format!("{SERVICES}/{id}")
    }
}

/// Body of every 4xx/5xx answer.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    /// Human-readable, starts with the field when one is to blame.
    pub error: String,
    /// The field that was wrong (`frontend.port`, `services[3].backends[0].address`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// Body of `POST /v1/services/apply`.
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct ApplyRequest {
    pub services: Vec<ServiceSpec>,
}

/// Answer of `POST /v1/services/apply`: the services as stored, in request order.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ApplyResponse {
    pub services: Vec<Service>,
}
