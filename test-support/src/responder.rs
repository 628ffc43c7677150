//! Tiny TCP and UDP servers and clients for reachability tests, run inside namespaces with
//! Python (present wherever the tests run): a server answers every connection or datagram with
//! the address it came from, so a test sees both that it got through and whether it was
//! NATed on the way.

use std::process::{Child, Command, Stdio};

use crate::Netns;

const SERVER: &str = r#"
import socket, sys, threading
port, proto = int(sys.argv[1]), sys.argv[2]
fam = socket.AF_INET6
def tcp():
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port)); s.listen(64)
    print("ready", flush=True)
    while True:
        c, a = s.accept()
        try:
            c.sendall((a[0].removeprefix("::ffff:") + "\n").encode())
        finally:
            c.close()
def udp():
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    print("ready", flush=True)
    while True:
        d, a = s.recvfrom(2048)
        s.sendto((a[0].removeprefix("::ffff:") + "\n").encode(), a)
(tcp if proto == "tcp" else udp)()
"#;

const CLIENT: &str = r#"
import socket, sys
host, port, proto, sport = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
s.settimeout(float(sys.argv[5]) if len(sys.argv) > 5 else 3)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
if sport:
    s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", sport))
try:
    if proto == "tcp":
        s.connect((host, port)); print(s.recv(200).decode().strip())
    else:
        s.sendto(b"hi", (host, port)); print(s.recvfrom(200)[0].decode().strip())
except Exception as e:
    print("FAIL", e); sys.exit(1)
"#;

const CLIENTS: &str = r#"
import json, socket, sys, threading
targets = json.loads(sys.argv[1])
seen = [None] * len(targets)
def ask(i, host, port, proto):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    s.settimeout(2.5)
    try:
        if proto == "tcp":
            s.connect((host, port)); seen[i] = s.recv(200).decode().strip()
        else:
            for _ in range(3):
                s.sendto(b"hi", (host, port))
                try:
                    seen[i] = s.recvfrom(200)[0].decode().strip(); break
                except socket.timeout:
                    pass
    except Exception:
        pass
    finally:
        s.close()
threads = [threading.Thread(target=ask, args=(i, *t)) for i, t in enumerate(targets)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(seen))
"#;

/// A server in a namespace, stopped (by pid) on drop.
pub struct Responder {
    child: Child,
    /// Kept open while the server runs (it would die of SIGPIPE otherwise).
    _stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl Responder {
    pub fn start(ns: &Netns, port: u16, proto: &str) -> Responder {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "python3", "-c", SERVER])
            .arg(port.to_string())
            .arg(proto)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting a responder");
        let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        use std::io::BufRead;
        let ready = stdout.read_line(&mut line).is_ok() && line.trim() == "ready";
        assert!(
            ready,
            "the responder on {port}/{proto} in {} did not start",
            ns.name
        );
        Responder {
            child,
            _stdout: stdout,
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects (TCP) or sends a datagram (UDP) from `ns` to `host:port`; the address the server
/// saw, or None when nothing answered within 3 s (a TCP SYN is sent twice in that time).
/// `source_port` 0 lets the kernel choose.
pub fn ask(ns: &Netns, host: &str, port: u16, proto: &str, source_port: u16) -> Option<String> {
    let out = ns.try_exec(&[
        "python3",
        "-c",
        CLIENT,
        host,
        &port.to_string(),
        proto,
        &source_port.to_string(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

/// [`ask`] for many `(host, port, protocol)` targets at once, from one process: for each, the
/// address the server saw, or None when nothing answered (TCP within 2.5 s; UDP to one of three
/// datagrams 2.5 s apart).
pub fn ask_all(ns: &Netns, targets: &[(String, u16, &str)]) -> Vec<Option<String>> {
    let list: Vec<serde_json::Value> = targets
        .iter()
        .map(|(host, port, proto)| serde_json::json!([host, port, proto]))
        .collect();
    let out = ns.try_exec(&[
        "python3",
        "-c",
        CLIENTS,
        &serde_json::Value::Array(list).to_string(),
    ]);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "the clients in {} printed no answer ({e}): {}",
            ns.name,
            String::from_utf8_lossy(&out.stderr)
        )
    })
}
