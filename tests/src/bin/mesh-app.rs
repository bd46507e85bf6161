//! `mesh-app`: the application of a mesh lab pod, a real process in the
//! pod's network namespace and cgroup (so the mesh hooks see its sockets).
//!
//! `mesh-app serve NAME PORT`: TCP on [::]:PORT (dual-stack); each connection
//! gets `"NAME from PEER\n"` first, then everything it sends echoed back (the
//! lab's backend protocol). `--http`: HTTP/1.1 keep-alive instead, every
//! request answered `"NAME from PEER\n"` (for wrk).
//! `mesh-app sink PORT [--report FILE]`: reads and discards (message-size
//! sweeps); with a report, checks the `stream` pattern and appends one line per
//! connection to FILE.
//! `mesh-app chat ADDR MILLIS`: one connection kept for MILLIS, a 100-byte
//! echo every 10 ms; prints `{"round_trips":N,"failed":M,"error":...}`.
//! `mesh-app stream ADDR SIZE MILLIS`: writes SIZE-byte messages for MILLIS
//! (to a `sink`), prints `{"bytes":N,"secs":S}`.
//! `mesh-app pattern ADDR COUNT SIZE`: to an echo `serve`, COUNT writes of
//! SIZE bytes of a position-dependent pattern while reading the echo back;
//! prints `{"ok":..,"bytes":N,"first_bad":offset|null}` (checks byte order).
//! `mesh-app probe ADDR COUNT BYTES`: COUNT connections, each reading the
//! first line, sending BYTES and reading them back; one JSON `Attempt` line each.
//!
//! Reads retry on EAGAIN even on blocking sockets, as an event-driven app
//! would: a socket in a sockhash may see a wakeup without data
//! (tcp_bpf_recvmsg then answers EAGAIN to a blocking reader).

use axon_lab::probe::{checksum, Attempt};
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// `read` that waits again after a wakeup without data.
fn read_retry(stream: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match stream.read(buf) {
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                if Instant::now() >= deadline {
                    return Err(e);
                }
                std::thread::sleep(Duration::from_micros(50));
            }
            other => return other,
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1).map(String::as_str) {
        Some("serve") if args.len() >= 4 => serve(&args[2], &args[3], args.iter().any(|a| a == "--http")),
        Some("sink") if args.len() >= 3 => {
            sink(&args[2], flag_value(&args, "--report"), flag_value(&args, "--answer-first").unwrap_or_default())
        }
        Some("probe") if args.len() >= 5 => probe(&args[2], &args[3], &args[4]),
        Some("chat") if args.len() >= 4 => chat(&args[2], &args[3]),
        Some("stream") if args.len() >= 5 => stream(&args[2], &args[3], &args[4], flag_value(&args, "--rpc")),
        Some("pattern") if args.len() >= 5 => pattern(&args[2], &args[3], &args[4]),
        _ => Err("usage: mesh-app serve NAME PORT [--http] | mesh-app sink PORT [--report FILE] [--answer-first N] | \
                  mesh-app stream ADDR SIZE MILLIS [--rpc ROUNDS] | ..."
            .to_string()),
    };
    if let Err(e) = result {
        eprintln!("mesh-app: {e}");
        std::process::exit(1);
    }
}

fn listen(port: &str) -> Result<TcpListener, String> {
    let port: u16 = port.parse().map_err(|_| format!("bad port {port:?}"))?;
    let addr = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
    TcpListener::bind(addr).map_err(|e| format!("binding {addr}: {e}"))
}

fn serve(name: &str, port: &str, http: bool) -> Result<(), String> {
    let listener = listen(port)?;
    println!("ready");
    for stream in listener.incoming().flatten() {
        let name = name.to_string();
        std::thread::spawn(move || {
            let _ = stream.set_nodelay(true);
            let peer = stream.peer_addr().map(|a| SocketAddr::new(a.ip().to_canonical(), a.port()));
            let line = match peer {
                Ok(p) => format!("{name} from {p}\n"),
                Err(_) => format!("{name} from ?\n"),
            };
            if http {
                http_conn(stream, &line);
            } else {
                echo_conn(stream, &line);
            }
        });
    }
    Ok(())
}

fn echo_conn(mut stream: TcpStream, line: &str) {
    if stream.write_all(line.as_bytes()).is_err() {
        return;
    }
    let mut buf = vec![0u8; 65536];
    while let Ok(n) = read_retry(&mut stream, &mut buf) {
        if n == 0 || stream.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

/// Answers every request of a keep-alive connection (requests without a body).
fn http_conn(mut stream: TcpStream, body: &str) {
    let response =
        format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    let mut buf = vec![0u8; 16384];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let n = match read_retry(&mut stream, &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let close = {
                let head = String::from_utf8_lossy(&pending[..end]).to_ascii_lowercase();
                head.contains("connection: close") || (head.contains("http/1.0") && !head.contains("keep-alive"))
            };
            pending.drain(..end + 4);
            if stream.write_all(response.as_bytes()).is_err() || close {
                return;
            }
        }
    }
}

/// The value after `flag` in the arguments, if any.
fn flag_value(args: &[String], flag: &str) -> Option<String> {
    args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned()
}

/// Reads every connection to the end. With `--answer-first N`, the first N
/// reads of a connection are each answered with one byte (request/response),
/// the rest only read.
fn sink(port: &str, report: Option<String>, answer_first: String) -> Result<(), String> {
    let answer_first: usize = if answer_first.is_empty() {
        0
    } else {
        answer_first.parse().map_err(|_| format!("bad count {answer_first:?}"))?
    };
    let listener = listen(port)?;
    println!("ready");
    for mut stream in listener.incoming().flatten() {
        let report = report.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 20];
            let (mut got, mut first_bad) = (0usize, None::<usize>);
            let mut answers_left = answer_first;
            while let Ok(n) = read_retry(&mut stream, &mut buf) {
                if n == 0 {
                    break;
                }
                if answers_left > 0 {
                    answers_left -= 1;
                    if stream.write_all(b".").is_err() {
                        break;
                    }
                }
                if report.is_some() && first_bad.is_none() {
                    first_bad =
                        buf[..n].iter().enumerate().find(|(k, b)| **b != ((got + k) % 251) as u8).map(|(k, _)| got + k);
                }
                got += n;
            }
            // With --report FILE: one line per connection, "ok BYTES" or "bad OFFSET".
            if let Some(path) = report {
                let line = match first_bad {
                    None => format!("ok {got}\n"),
                    Some(at) => format!("bad {at}\n"),
                };
                if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
                    let _ = f.write_all(line.as_bytes());
                }
            }
        });
    }
    Ok(())
}

fn probe(addr: &str, count: &str, bytes: &str) -> Result<(), String> {
    let addr: SocketAddr = addr.parse().map_err(|_| format!("bad address {addr:?}"))?;
    let count: u32 = count.parse().map_err(|_| format!("bad count {count:?}"))?;
    let bytes: usize = bytes.parse().map_err(|_| format!("bad byte count {bytes:?}"))?;
    for seq in 0..count {
        let attempt = one_probe(seq, addr, bytes);
        println!("{}", serde_json::to_string(&attempt).map_err(|e| e.to_string())?);
    }
    Ok(())
}

fn one_probe(seq: u32, addr: SocketAddr, bytes: usize) -> Attempt {
    let started = Instant::now();
    let mut a = Attempt { seq, ..Attempt::default() };
    let fail = |mut a: Attempt, stage: &str, e: std::io::Error| {
        a.stage = Some(stage.into());
        a.errno = e.raw_os_error();
        a.error = Some(e.to_string());
        a.micros = started.elapsed().as_micros() as u64;
        a
    };
    let mut stream = match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        Ok(s) => s,
        Err(e) => return fail(a, "connect", e),
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    a.local = stream.local_addr().ok().map(|x| x.to_string());
    a.peer = stream.peer_addr().ok().map(|x| x.to_string());
    // The first line: "NAME from PEER".
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\n") {
        match read_retry(&mut stream, &mut byte) {
            Ok(0) => return fail(a, "reply", ErrorKind::UnexpectedEof.into()),
            Ok(_) => line.push(byte[0]),
            Err(e) => return fail(a, "reply", e),
        }
    }
    let text = String::from_utf8_lossy(&line).trim().to_string();
    match text.split_once(" from ") {
        Some((name, peer)) => {
            a.answer = Some(name.to_string());
            a.seen_from = Some(peer.to_string());
        }
        None => a.answer = Some(text),
    }
    let payload: Vec<u8> = (0..bytes).map(|i| (i % 251) as u8).collect();
    a.sent_bytes = Some(bytes as u64);
    a.sent_sum = Some(checksum(&payload));
    let writer = match stream.try_clone() {
        Ok(w) => w,
        Err(e) => return fail(a, "send", e),
    };
    // Write from a thread: a large payload echoes back while it is sent.
    let sender = std::thread::spawn(move || {
        let mut w = writer;
        w.write_all(&payload)
    });
    let mut echoed = vec![0u8; bytes];
    let mut got = 0;
    while got < bytes {
        match read_retry(&mut stream, &mut echoed[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => return fail(a, "recv", e),
        }
    }
    if let Ok(Err(e)) = sender.join() {
        return fail(a, "send", e);
    }
    a.recv_bytes = Some(got as u64);
    a.recv_sum = Some(checksum(&echoed[..got]));
    a.echo_ok = Some(got == bytes && a.recv_sum == a.sent_sum);
    a.ok = a.echo_ok == Some(true);
    a.micros = started.elapsed().as_micros() as u64;
    a
}

fn chat(addr: &str, millis: &str) -> Result<(), String> {
    let addr: SocketAddr = addr.parse().map_err(|_| format!("bad address {addr:?}"))?;
    let millis: u64 = millis.parse().map_err(|_| format!("bad duration {millis:?}"))?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut byte = [0u8; 1];
    let mut line = Vec::new();
    while !line.ends_with(b"\n") {
        match read_retry(&mut stream, &mut byte) {
            Ok(1) => line.push(byte[0]),
            Ok(_) => return Err("closed before the first line".into()),
            Err(e) => return Err(format!("first line: {e}")),
        }
    }
    let end = Instant::now() + Duration::from_millis(millis);
    let (mut round_trips, mut failed, mut error) = (0u64, 0u64, String::new());
    let mut seq = 0u8;
    while Instant::now() < end {
        seq = seq.wrapping_add(1);
        let msg = [seq; 100];
        let mut back = [0u8; 100];
        let mut got = 0;
        let result = stream.write_all(&msg).and_then(|()| {
            while got < back.len() {
                match read_retry(&mut stream, &mut back[got..])? {
                    0 => return Err(ErrorKind::UnexpectedEof.into()),
                    n => got += n,
                }
            }
            Ok(())
        });
        match result {
            Ok(()) if back == msg => round_trips += 1,
            Ok(()) => {
                failed += 1;
                error = "echo differs".into();
            }
            Err(e) => {
                failed += 1;
                error = e.to_string();
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    println!("{}", serde_json::json!({"round_trips": round_trips, "failed": failed, "error": error}));
    Ok(())
}

/// Writes `size`-byte messages for `millis`; with `--rpc ROUNDS`, the first
/// ROUNDS messages each wait for a one-byte answer (see `sink --answer-first`).
fn stream(addr: &str, size: &str, millis: &str, rpc: Option<String>) -> Result<(), String> {
    let rounds: usize = match rpc {
        Some(r) => r.parse().map_err(|_| format!("bad rounds {r:?}"))?,
        None => 0,
    };
    let addr: SocketAddr = addr.parse().map_err(|_| format!("bad address {addr:?}"))?;
    let size: usize = size.parse().map_err(|_| format!("bad size {size:?}"))?;
    let millis: u64 = millis.parse().map_err(|_| format!("bad duration {millis:?}"))?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| format!("connect: {e}"))?;
    // The byte at stream offset k is k % 251 (a sink with --report checks it).
    let size = size.max(1);
    let period: Vec<u8> = (0..251 * size).map(|k| (k % 251) as u8).collect();
    let started = Instant::now();
    let end = started + Duration::from_millis(millis);
    let mut bytes = 0u64;
    let mut answer = [0u8; 1];
    for _ in 0..rounds {
        let at = (bytes % 251) as usize;
        s.write_all(&period[at..at + size]).map_err(|e| format!("write: {e}"))?;
        bytes += size as u64;
        match read_retry(&mut s, &mut answer) {
            Ok(1) => {}
            other => return Err(format!("no answer to a request: {other:?}")),
        }
    }
    while Instant::now() < end {
        for _ in 0..16 {
            let at = (bytes % 251) as usize;
            s.write_all(&period[at..at + size]).map_err(|e| format!("write: {e}"))?;
            bytes += size as u64;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!("{}", serde_json::json!({"bytes": bytes, "secs": secs}));
    Ok(())
}

fn pattern(addr: &str, count: &str, size: &str) -> Result<(), String> {
    let addr: SocketAddr = addr.parse().map_err(|_| format!("bad address {addr:?}"))?;
    let count: usize = count.parse().map_err(|_| format!("bad count {count:?}"))?;
    let size: usize = size.parse().map_err(|_| format!("bad size {size:?}"))?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut byte = [0u8; 1];
    let mut line = Vec::new();
    while !line.ends_with(b"\n") {
        match read_retry(&mut stream, &mut byte) {
            Ok(1) => line.push(byte[0]),
            _ => return Err("no first line".into()),
        }
    }
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let sender = std::thread::spawn(move || -> std::io::Result<()> {
        for i in 0..count {
            let msg: Vec<u8> = (0..size).map(|j| ((i * size + j) % 251) as u8).collect();
            writer.write_all(&msg)?;
        }
        Ok(())
    });
    let total = count * size;
    let mut got = 0usize;
    let mut first_bad: Option<usize> = None;
    let mut buf = vec![0u8; 65536];
    while got < total {
        let n = match read_retry(&mut stream, &mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => return Err(format!("read after {got} bytes: {e}")),
        };
        if first_bad.is_none() {
            first_bad = buf[..n].iter().enumerate().find(|(k, b)| **b != ((got + k) % 251) as u8).map(|(k, _)| got + k);
        }
        got += n;
    }
    let sent = sender.join().map_err(|_| "writer panicked".to_string())?;
    let ok = sent.is_ok() && got == total && first_bad.is_none();
    println!("{}", serde_json::json!({"ok": ok, "bytes": got, "first_bad": first_bad}));
    Ok(())
}
