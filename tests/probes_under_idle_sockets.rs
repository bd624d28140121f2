//! Idle and slow clients must not take the probes down: the `orderflow`
//! binary on a real broker, hundreds of idle TCP connections and slow-loris
//! half-written requests held open against `metrics.listen` (re-opened as
//! the listener closes them), and all the while `/health`, `/ready` and
//! `/metrics` must each answer, 200, within a deadline.
//!
//! The listener's bound is asserted where it can be seen exactly, in
//! `telemetry`'s unit tests: at most `MAX_CONNECTIONS` (256) connections
//! held, the oldest still reading its request head shed first.

mod common;

use common::{free_port, wait_for, Broker};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Idle connections: more than the listener's 256 slots, with the
/// slow-loris ones.
const IDLE: usize = 300;
/// Connections that trickle a request head and never finish it.
const SLOW: usize = 100;
/// How long the flood goes on while the probes are checked: longer than
/// the old listener's 10 s connection timeout.
const FLOOD: Duration = Duration::from_secs(12);
/// Each probe must be answered within this (a kubelet's default probe
/// timeout is 1 s; the machine is shared, so some slack).
const ANSWER_DEADLINE: Duration = Duration::from_secs(2);
const START_TIMEOUT: Duration = Duration::from_secs(60);

struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One GET on a fresh connection: the status, or what went wrong.
fn probe(addr: &str, path: &str) -> Result<u16, String> {
    let deadline = Instant::now() + ANSWER_DEADLINE;
    let mut stream = TcpStream::connect_timeout(&addr.parse().unwrap(), ANSWER_DEADLINE)
        .map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(ANSWER_DEADLINE)).unwrap();
    stream.set_write_timeout(Some(ANSWER_DEADLINE)).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|e| format!("read: {e}"))?;
    if Instant::now() > deadline {
        return Err(format!("answered after the {ANSWER_DEADLINE:?} deadline"));
    }
    let text = String::from_utf8_lossy(&response);
    text.split_whitespace()
        .nth(1)
        .and_then(|status| status.parse().ok())
        .ok_or_else(|| format!("no HTTP answer: {text:?}"))
}

/// Whether the server closed `stream` (EOF or reset), without blocking.
fn closed(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 16];
    match stream.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(_) => true,
    }
}

fn connect(addr: &str) -> Option<TcpStream> {
    let stream = TcpStream::connect(addr).ok()?;
    stream.set_nonblocking(true).ok()?;
    Some(stream)
}

/// Holds `IDLE` idle and `SLOW` slow-loris connections open until `stop`,
/// re-opening every one the listener closes.
fn flood(addr: &str, stop: &AtomicBool, opened: &AtomicUsize) {
    let mut idle: Vec<Option<TcpStream>> = (0..IDLE).map(|_| None).collect();
    let mut slow: Vec<Option<TcpStream>> = (0..SLOW).map(|_| None).collect();
    let head = b"GET /metrics HTTP/1.1\r\nHost: slow\r\nX-Slow: ";
    let mut sent = 0usize;
    while !stop.load(Ordering::Relaxed) {
        for conn in idle.iter_mut() {
            if conn.as_mut().is_none_or(closed) {
                *conn = connect(addr);
                opened.fetch_add(1, Ordering::Relaxed);
            }
        }
        for conn in slow.iter_mut() {
            if conn.as_mut().is_none_or(closed) {
                *conn = connect(addr);
                opened.fetch_add(1, Ordering::Relaxed);
            }
            // One more byte of a head that never ends.
            let byte = head.get(sent).copied().unwrap_or(b'a');
            if let Some(stream) = conn {
                if stream.write(&[byte]).is_err() {
                    *conn = None;
                }
            }
        }
        sent += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn probes_answer_while_idle_and_slow_clients_hold_connections() {
    let broker = Broker::start();
    broker.create_contract_topics(2);
    let addr = format!("127.0.0.1:{}", free_port());
    let _processor = Guard(
        Command::new(env!("CARGO_BIN_EXE_orderflow"))
            .args(["run", "--brokers", &broker.addr()])
            .args(["--set", &format!("metrics.listen={addr}")])
            .args(["--set", "log.level=warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("starting orderflow"),
    );
    wait_for("orderflow /ready", START_TIMEOUT, || {
        (probe(&addr, "/ready") == Ok(200)).then_some(())
    });

    let stop = AtomicBool::new(false);
    let opened = AtomicUsize::new(0);
    let failures = std::thread::scope(|scope| {
        let flooder = scope.spawn(|| flood(&addr, &stop, &opened));
        wait_for("the flood's connections", START_TIMEOUT, || {
            (opened.load(Ordering::Relaxed) >= IDLE + SLOW).then_some(())
        });
        let mut failures = Vec::new();
        let mut answered = 0;
        let started = Instant::now();
        while started.elapsed() < FLOOD {
            for path in ["/health", "/ready", "/metrics"] {
                let asked = Instant::now();
                match probe(&addr, path) {
                    Ok(200) => answered += 1,
                    other => failures.push(format!(
                        "{path} at {:.1} s: {other:?} after {:?}",
                        started.elapsed().as_secs_f64(),
                        asked.elapsed()
                    )),
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        stop.store(true, Ordering::Relaxed);
        flooder.join().unwrap();
        println!(
            "{answered} probes answered while {} connections were opened",
            opened.load(Ordering::Relaxed)
        );
        failures
    });
    assert!(
        failures.is_empty(),
        "{} probe(s) failed under {IDLE} idle and {SLOW} slow connections:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // The flood is gone: the probes answer as ever.
    for path in ["/health", "/ready", "/metrics"] {
        assert_eq!(probe(&addr, path), Ok(200), "{path}");
    }
}
