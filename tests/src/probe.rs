//! What the lab's backends answer and what `lab-client` prints: one contract
//! shared by the server side, the client binary and the tests that parse it.
//!
//! A backend answers every TCP connection with `"<name>\n"` followed by an
//! echo of whatever the client sends, and every UDP datagram with
//! `"<name>\n"` followed by the datagram itself (so a client can match a reply
//! to its request). The client prints one JSON object per line.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One request by `lab-client tcp|udp`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub seq: u32,
    pub ok: bool,
    /// The backend's name, from the first line of its answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    /// `getpeername()` of the client socket after connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// Source address of the UDP reply, as `recvfrom()` reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Whether the echoed payload came back intact (echo requests only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub echo_ok: Option<bool>,
    /// Which step failed: `socket`, `connect`, `send`, `recv`, `reply`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno: Option<i32>,
    /// Wall time of the whole attempt.
    pub micros: u64,
}

/// What `lab-client load` prints once at the end.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadSummary {
    pub ok: u64,
    pub failed: u64,
    /// The first few failures, `"<seq>: <stage>: <error>"`.
    pub errors: Vec<String>,
    /// Answers per backend name.
    pub answers: BTreeMap<String, u64>,
    pub max_micros: u64,
    pub elapsed_ms: u64,
}

/// What `lab-client env` prints: where the client process really runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientEnv {
    /// The cgroup2 path of the process (the `0::` line of `/proc/self/cgroup`).
    pub cgroup: String,
    /// Inode of the process's network namespace.
    pub netns_inode: u64,
}

/// The bytes a backend sends back for `payload`.
pub fn reply(name: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + 1 + payload.len());
    out.extend_from_slice(name.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(payload);
    out
}

/// Splits an answer into the backend's name and the echoed rest.
pub fn split_reply(data: &[u8]) -> Option<(String, &[u8])> {
    let nl = data.iter().position(|&b| b == b'\n')?;
    let name = std::str::from_utf8(&data[..nl]).ok()?.to_string();
    Some((name, &data[nl + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_round_trips() {
        let r = reply("backend-2", b"ping 7");
        let (name, rest) = split_reply(&r).expect("split");
        assert_eq!(name, "backend-2");
        assert_eq!(rest, b"ping 7");
        assert!(split_reply(b"no newline").is_none());
    }
}
