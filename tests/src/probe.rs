//! What the lab's backends answer and what `lab-client` prints: one contract
//! shared by the server side, the client binary and the tests that parse it.
//!
//! A backend answers every TCP connection with `"<name>\n"` followed by an
//! echo of whatever the client sends, and every UDP datagram with
//! `"<name>\n"` followed by the datagram itself (so a client can match a reply
//! to its request). A backend that reports its peer (the north-south lab)
//! makes the first line `"<name> from <peer addr:port>\n"`: the address it saw
//! the connection or datagram come from, which tells SNAT (a node's address)
//! from DSR or a local backend (the client's). The client prints one JSON
//! object per line.

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
    /// The peer address the backend saw (`ip:port`), when it reports one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen_from: Option<String>,
    /// The client socket's own address (`getsockname()`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<String>,
    /// `getpeername()` of the client socket after connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// Source address of the UDP reply, as `recvfrom()` reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Whether the echoed payload came back intact (echo requests only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub echo_ok: Option<bool>,
    /// Bytes sent and echoed back (echo requests only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recv_bytes: Option<u64>,
    /// FNV-1a 64 of what was sent and of the echo received ([`checksum`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_sum: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recv_sum: Option<String>,
    /// Which step failed: `socket`, `bind`, `connect`, `send`, `recv`, `reply`.
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

impl Attempt {
    /// The IP part of [`Attempt::seen_from`].
    pub fn seen_ip(&self) -> Option<std::net::IpAddr> {
        self.seen_from.as_deref()?.parse::<std::net::SocketAddr>().ok().map(|a| a.ip())
    }
}

/// What `lab-client http` prints: one plain HTTP/1.0 GET.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpAnswer {
    pub ok: bool,
    /// The status code of the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default)]
    pub body: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno: Option<i32>,
    pub micros: u64,
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

/// The bytes a peer-reporting backend sends back for `payload` from `peer`.
pub fn reply_from(name: &str, peer: std::net::SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut out = format!("{name} from {peer}\n").into_bytes();
    out.extend_from_slice(payload);
    out
}

/// Splits a first line into the backend's name and, when reported, the peer it saw.
pub fn split_name_line(line: &str) -> (String, Option<String>) {
    match line.split_once(" from ") {
        Some((name, peer)) => (name.to_string(), Some(peer.trim().to_string())),
        None => (line.to_string(), None),
    }
}

/// 64-bit FNV-1a, streaming: the content checksum of large transfers.
#[derive(Debug, Clone, Copy)]
pub struct Checksum(u64);

impl Default for Checksum {
    fn default() -> Self {
        Checksum(0xcbf2_9ce4_8422_2325)
    }
}

impl Checksum {
    pub fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    /// As printed in [`Attempt::sent_sum`]: 16 hex digits.
    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

/// The checksum of `data` in one go.
pub fn checksum(data: &[u8]) -> String {
    let mut c = Checksum::default();
    c.update(data);
    c.hex()
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

    #[test]
    fn reporting_reply_carries_the_peer() {
        let peer: std::net::SocketAddr = "10.77.0.2:41234".parse().expect("addr");
        let r = reply_from("backend-2", peer, b"x");
        let (line, rest) = split_reply(&r).expect("split");
        assert_eq!(split_name_line(&line), ("backend-2".to_string(), Some("10.77.0.2:41234".to_string())));
        assert_eq!(rest, b"x");
        assert_eq!(split_name_line("backend-1"), ("backend-1".to_string(), None));
    }

    #[test]
    fn checksum_streams_like_one_shot() {
        let mut c = Checksum::default();
        c.update(b"hello ");
        c.update(b"world");
        assert_eq!(c.hex(), checksum(b"hello world"));
        assert_ne!(checksum(b"a"), checksum(b"b"));
        assert_eq!(checksum(b""), "cbf29ce484222325");
    }
}
