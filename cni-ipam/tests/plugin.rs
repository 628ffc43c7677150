#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

//! cni-ipam executed as a runtime executes it: `CNI_*` environment, config on stdin, JSON on
//! stdout. Every test uses its own data directory.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_cni-ipam");

struct Net {
    dir: tempfile::TempDir,
    conf: Value,
}

struct Out {
    code: i32,
    json: Value,
    stdout: String,
}

impl Out {
    fn ok(self) -> Value {
        assert_eq!(self.code, 0, "expected success, got {}", self.stdout);
        self.json
    }

    fn err(self, code: u64) -> Value {
        assert_ne!(
            self.code, 0,
            "expected error {code}, got success {}",
            self.stdout
        );
        assert_eq!(self.json["code"], code, "wrong error: {}", self.stdout);
        assert!(self.json["msg"].as_str().is_some_and(|m| !m.is_empty()));
        self.json
    }
}

impl Net {
    fn new(ranges: Value) -> Net {
        let dir = tempfile::tempdir().unwrap();
        let conf = json!({
            "cniVersion": "1.1.0",
            "name": "testnet",
            "type": "cni-ipam",
            "ipam": {
                "type": "cni-ipam",
                "dataDir": dir.path(),
                "ranges": ranges,
                "routes": [{"dst": "0.0.0.0/0"}],
            }
        });
        Net { dir, conf }
    }

    fn v4(subnet: &str) -> Net {
        Net::new(json!([[{"subnet": subnet}]]))
    }

    fn lease_dir(&self) -> PathBuf {
        self.dir.path().join("testnet")
    }

    fn with(&self, patch: impl FnOnce(&mut Value)) -> Value {
        let mut conf = self.conf.clone();
        patch(&mut conf);
        conf
    }

    fn add(&self, id: &str) -> Out {
        run("ADD", id, "eth0", &[], &self.conf)
    }

    fn del(&self, id: &str) -> Out {
        run("DEL", id, "eth0", &[], &self.conf)
    }

    fn index_entries(&self) -> BTreeSet<String> {
        std::fs::read_dir(self.lease_dir())
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with("attachment:"))
            .collect()
    }

    fn leases(&self) -> BTreeSet<String> {
        std::fs::read_dir(self.lease_dir())
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn run(command: &str, id: &str, ifname: &str, extra_env: &[(&str, &str)], conf: &Value) -> Out {
    run_raw(
        command,
        id,
        ifname,
        extra_env,
        &serde_json::to_vec(conf).unwrap(),
    )
}

fn run_raw(command: &str, id: &str, ifname: &str, extra_env: &[(&str, &str)], stdin: &[u8]) -> Out {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_IFNAME", ifname)
        .env("CNI_NETNS", "/var/run/netns/test")
        .env("CNI_PATH", "/opt/cni/bin");
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A plugin may exit before it reads its configuration (bad environment): the write then
    // meets a closed pipe, which runtimes ignore too.
    match child.stdin.take().unwrap().write_all(stdin) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        other => other.unwrap(),
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let json = if stdout.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {stdout:?}"))
    };
    Out {
        code: out.status.code().unwrap_or(-1),
        json,
        stdout,
    }
}

fn addresses(result: &Value) -> Vec<String> {
    result["ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ip| ip["address"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn add_returns_address_gateway_routes_and_writes_a_lease() {
    let net = Net::v4("10.10.0.0/24");
    let result = net.add("c1").ok();
    assert_eq!(result["cniVersion"], "1.1.0");
    assert_eq!(addresses(&result), ["10.10.0.2/24"]);
    assert_eq!(result["ips"][0]["gateway"], "10.10.0.1");
    assert_eq!(result["routes"], json!([{"dst": "0.0.0.0/0"}]));
    assert!(
        result.get("interfaces").is_none(),
        "IPAM results carry no interfaces"
    );
    let lease = std::fs::read_to_string(net.lease_dir().join("10.10.0.2")).unwrap();
    assert_eq!(lease, "c1\r\neth0", "lease file in host-local format");
}

#[test]
fn results_in_every_supported_version() {
    for version in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        let net = Net::new(json!([[{"subnet": "10.11.0.0/24"}], [{"subnet": "fd00:11::/64"}]]));
        let conf = net.with(|c| c["cniVersion"] = json!(version));
        let result = run("ADD", "c1", "eth0", &[], &conf).ok();
        assert_eq!(result["cniVersion"], version);
        let ips = result["ips"].as_array().unwrap();
        assert_eq!(ips.len(), 2);
        if version.starts_with('0') {
            assert_eq!(ips[0]["version"], "4");
            assert_eq!(ips[1]["version"], "6");
        } else {
            assert!(ips[0].get("version").is_none());
        }
        run("DEL", "c1", "eth0", &[], &conf).ok();
        assert!(net.leases().is_empty());
    }
}

#[test]
fn version_command_lists_supported_versions() {
    let out = run_raw("VERSION", "", "", &[], b"{\"cniVersion\":\"1.1.0\"}").ok();
    assert_eq!(
        out["supportedVersions"],
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
    // VERSION needs no stdin at all.
    run_raw("VERSION", "", "", &[], b"").ok();
}

#[test]
fn dual_stack_gets_one_address_per_range_set() {
    let net = Net::new(json!([
        [{"subnet": "10.12.0.0/24"}],
        [{"subnet": "fd00:12::/64", "gateway": "fd00:12::1"}]
    ]));
    let result = net.add("c1").ok();
    assert_eq!(addresses(&result), ["10.12.0.2/24", "fd00:12::2/64"]);
    assert_eq!(result["ips"][1]["gateway"], "fd00:12::1");
    assert_eq!(
        net.leases(),
        BTreeSet::from(["10.12.0.2".into(), "fd00:12::2".into()])
    );
}

#[test]
fn legacy_single_range_and_range_limits() {
    let net = Net::v4("10.0.0.0/8");
    let conf = net.with(|c| {
        c["ipam"] = json!({
            "type": "cni-ipam", "dataDir": net.dir.path(),
            "subnet": "10.13.0.0/24", "rangeStart": "10.13.0.100", "rangeEnd": "10.13.0.101",
            "gateway": "10.13.0.254"
        })
    });
    let a = run("ADD", "a", "eth0", &[], &conf).ok();
    let b = run("ADD", "b", "eth0", &[], &conf).ok();
    assert_eq!(addresses(&a), ["10.13.0.100/24"]);
    assert_eq!(addresses(&b), ["10.13.0.101/24"]);
    assert_eq!(a["ips"][0]["gateway"], "10.13.0.254");
    let err = run("ADD", "c", "eth0", &[], &conf).err(110);
    assert!(
        err["msg"].as_str().unwrap().contains("10.13.0.0/24"),
        "names the range: {err}"
    );
}

#[test]
fn exhaustion_names_the_range_and_never_hands_out_reserved_addresses() {
    // A /29 has 8 addresses: network .0, gateway .1, broadcast .7 leave five.
    let net = Net::v4("10.14.0.0/29");
    let mut got = BTreeSet::new();
    for i in 0..5 {
        got.extend(addresses(&net.add(&format!("c{i}")).ok()));
    }
    let expected: BTreeSet<String> = (2..=6).map(|i| format!("10.14.0.{i}/29")).collect();
    assert_eq!(got, expected);
    let err = net.add("c5").err(110);
    assert!(err["msg"].as_str().unwrap().contains("10.14.0.0/29"));
    assert_eq!(net.leases().len(), 5, "a failed ADD leaves nothing behind");
    assert!(!net.index_entries().contains("attachment:c5:eth0"));
}

#[test]
fn allocation_is_round_robin_and_wraps_around() {
    let net = Net::v4("10.15.0.0/29");
    assert_eq!(addresses(&net.add("a").ok()), ["10.15.0.2/29"]);
    assert_eq!(addresses(&net.add("b").ok()), ["10.15.0.3/29"]);
    net.del("a").ok();
    // The just-freed .2 is not reused at once.
    assert_eq!(addresses(&net.add("c").ok()), ["10.15.0.4/29"]);
    assert_eq!(addresses(&net.add("d").ok()), ["10.15.0.5/29"]);
    assert_eq!(addresses(&net.add("e").ok()), ["10.15.0.6/29"]);
    // Past the end it wraps to the free .2.
    assert_eq!(addresses(&net.add("f").ok()), ["10.15.0.2/29"]);
}

#[test]
fn duplicate_add_is_refused_without_a_second_address() {
    let net = Net::v4("10.16.0.0/24");
    net.add("c1").ok();
    let err = net.add("c1").err(111);
    assert!(err["msg"].as_str().unwrap().contains("10.16.0.2"));
    assert_eq!(net.leases().len(), 1);
    // Another interface of the same container is a separate attachment.
    run("ADD", "c1", "net1", &[], &net.conf).ok();
    assert_eq!(net.leases().len(), 2);
}

#[test]
fn del_is_idempotent_and_succeeds_for_unknown_containers() {
    let net = Net::v4("10.17.0.0/24");
    net.del("never-added").ok();
    assert!(!net.lease_dir().exists(), "DEL of nothing creates no state");
    net.add("c1").ok();
    net.del("c1").ok();
    net.del("c1").ok();
    assert!(net.leases().is_empty());
    // DEL without a netns (the runtime may not have one any more).
    net.add("c2").ok();
    run("DEL", "c2", "eth0", &[("CNI_NETNS", "")], &net.conf).ok();
    assert!(net.leases().is_empty());
}

#[test]
fn del_and_gc_need_only_the_lease_directory() {
    let net = Net::v4("10.33.0.0/24");
    net.add("c1").ok();
    // The ranges are gone from the configuration (say, the node's subnet is unknown after a
    // reboot): DEL still frees the lease.
    let bare = net.with(|c| c["ipam"] = json!({"type": "cni-ipam", "dataDir": net.dir.path()}));
    run("DEL", "c1", "eth0", &[], &bare).ok();
    assert!(net.leases().is_empty());
    net.add("c2").ok();
    run("GC", "", "", &[], &bare).ok();
    assert!(net.leases().is_empty());
    run("ADD", "c3", "eth0", &[], &bare).err(7);
}

#[test]
fn del_only_frees_the_named_interface() {
    let net = Net::v4("10.18.0.0/24");
    run("ADD", "c1", "eth0", &[], &net.conf).ok();
    run("ADD", "c1", "net1", &[], &net.conf).ok();
    run("DEL", "c1", "net1", &[], &net.conf).ok();
    assert_eq!(net.leases(), BTreeSet::from(["10.18.0.2".to_string()]));
}

#[test]
fn requested_addresses_from_every_source() {
    let net = Net::new(json!([[{"subnet": "10.19.0.0/24"}], [{"subnet": "fd00:19::/64"}]]));
    let by_runtime =
        net.with(|c| c["runtimeConfig"] = json!({"ips": ["10.19.0.50/24", "fd00:19::50"]}));
    assert_eq!(
        addresses(&run("ADD", "a", "eth0", &[], &by_runtime).ok()),
        ["10.19.0.50/24", "fd00:19::50/64"]
    );
    let by_args = net.with(|c| c["args"] = json!({"cni": {"ips": ["10.19.0.51"]}}));
    assert_eq!(
        addresses(&run("ADD", "b", "eth0", &[], &by_args).ok())[0],
        "10.19.0.51/24"
    );
    let env = [("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=web;IP=10.19.0.52")];
    assert_eq!(
        addresses(&run("ADD", "c", "eth0", &env, &net.conf).ok())[0],
        "10.19.0.52/24"
    );

    // Taken, outside every range, reserved, two for one set.
    let taken = run("ADD", "d", "eth0", &[], &by_runtime).err(112);
    assert!(
        taken["msg"].as_str().unwrap().contains("container a"),
        "{taken}"
    );
    run(
        "ADD",
        "e",
        "eth0",
        &[("CNI_ARGS", "IP=10.99.0.5")],
        &net.conf,
    )
    .err(113);
    run(
        "ADD",
        "f",
        "eth0",
        &[("CNI_ARGS", "IP=10.19.0.1")],
        &net.conf,
    )
    .err(113);
    run(
        "ADD",
        "g",
        "eth0",
        &[("CNI_ARGS", "IP=10.19.0.60,10.19.0.61")],
        &net.conf,
    )
    .err(7);
    run("ADD", "h", "eth0", &[("CNI_ARGS", "IP=banana")], &net.conf).err(7);
    assert_eq!(
        net.leases().len(),
        6,
        "three dual-stack leases; failed requests leave nothing behind"
    );
}

#[test]
fn check_verifies_leases_against_prev_result() {
    let net = Net::new(json!([[{"subnet": "10.20.0.0/24"}], [{"subnet": "fd00:20::/64"}]]));
    let result = net.add("c1").ok();
    let with_prev = net.with(|c| c["prevResult"] = result.clone());
    run("CHECK", "c1", "eth0", &[], &with_prev).ok();
    // A prevResult that lost an address.
    let mut partial = result.clone();
    partial["ips"].as_array_mut().unwrap().pop();
    run(
        "CHECK",
        "c1",
        "eth0",
        &[],
        &net.with(|c| c["prevResult"] = partial),
    )
    .err(114);
    // A prevResult claiming an address someone else holds.
    net.add("c2").ok();
    let mut wrong = result.clone();
    wrong["ips"][0]["address"] = json!("10.20.0.3/24");
    run(
        "CHECK",
        "c1",
        "eth0",
        &[],
        &net.with(|c| c["prevResult"] = wrong),
    )
    .err(114);
    // Unknown container, and a lease that vanished.
    run("CHECK", "nobody", "eth0", &[], &with_prev).err(3);
    std::fs::remove_file(net.lease_dir().join("fd00:20::2")).unwrap();
    run("CHECK", "c1", "eth0", &[], &with_prev).err(114);
    // CHECK does not exist before 0.4.0.
    let old = net.with(|c| c["cniVersion"] = json!("0.3.1"));
    run("CHECK", "c1", "eth0", &[], &old).err(1);
}

#[test]
fn gc_frees_attachments_not_listed_under_either_key() {
    for key in ["cni.dev/valid-attachments", "cni.dev/attachments"] {
        let net = Net::v4("10.21.0.0/24");
        for id in ["keep", "drop1", "drop2"] {
            net.add(id).ok();
        }
        let gc = net.with(|c| c[key] = json!([{"containerID": "keep", "ifname": "eth0"}]));
        run(
            "GC",
            "",
            "",
            &[("CNI_CONTAINERID", ""), ("CNI_IFNAME", "")],
            &gc,
        )
        .ok();
        assert_eq!(
            net.leases(),
            BTreeSet::from(["10.21.0.2".to_string()]),
            "with {key}"
        );
        assert_eq!(
            net.index_entries(),
            BTreeSet::from(["attachment:keep:eth0".to_string()])
        );
        // GC is refused below 1.1.0.
        run(
            "GC",
            "",
            "",
            &[],
            &gc.clone().tap(|c| c["cniVersion"] = json!("1.0.0")),
        )
        .err(1);
    }
}

#[test]
fn status_reports_free_addresses_and_writability() {
    let net = Net::v4("10.23.0.0/30");
    run("STATUS", "", "", &[], &net.conf).ok();
    net.add("only").ok();
    let full = run("STATUS", "", "", &[], &net.conf).err(50);
    assert!(full["msg"].as_str().unwrap().contains("no free address"));
    let unwritable = net.with(|c| c["ipam"]["dataDir"] = json!("/proc/version/nope"));
    run("STATUS", "", "", &[], &unwritable).err(50);
    run(
        "STATUS",
        "",
        "",
        &[],
        &net.with(|c| c["cniVersion"] = json!("1.0.0")),
    )
    .err(1);
}

#[test]
fn environment_errors_are_code_4() {
    let net = Net::v4("10.24.0.0/24");
    let conf = serde_json::to_vec(&net.conf).unwrap();
    run_raw("ADD", "", "eth0", &[], &conf).err(4);
    run_raw("ADD", "c1", "", &[], &conf).err(4);
    run_raw("ADD", "c1", "eth0", &[("CNI_NETNS", "")], &conf).err(4);
    run_raw("ADD", "../../etc", "eth0", &[], &conf).err(4);
    run_raw("ADD", "c1", "eth0/x", &[], &conf).err(4);
    run_raw("ADD", "c1", "much-too-long-ifname", &[], &conf).err(4);
    run_raw("ADD", "c1", "eth0", &[("CNI_ARGS", "FOO=bar")], &conf).err(4);
    run_raw("ADD", "c1", "eth0", &[("CNI_ARGS", "garbage")], &conf).err(4);
    run_raw("FROB", "c1", "eth0", &[], &conf).err(4);
    let mut no_command = Command::new(BIN);
    let out = no_command
        .env_clear()
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap()["code"],
        4
    );
    assert!(net.leases().is_empty());
}

#[test]
fn decode_version_and_config_errors() {
    let net = Net::v4("10.25.0.0/24");
    run_raw("ADD", "c1", "eth0", &[], b"{not json").err(6);
    run_raw("ADD", "c1", "eth0", &[], b"").err(6);
    run("ADD", "c1", "eth0", &[], &json!({"cniVersion": "1.1.0", "name": "x", "type": "cni-ipam", "prevResult": {"ips": "nope"}})).err(6);
    run(
        "ADD",
        "c1",
        "eth0",
        &[],
        &net.with(|c| c["cniVersion"] = json!("0.2.0")),
    )
    .err(1);
    run(
        "ADD",
        "c1",
        "eth0",
        &[],
        &net.with(|c| c["cniVersion"] = json!("9.9.9")),
    )
    .err(1);
    run("ADD", "c1", "eth0", &[], &json!([1, 2])).err(7);
    run(
        "ADD",
        "c1",
        "eth0",
        &[],
        &net.with(|c| {
            c.as_object_mut().unwrap().remove("ipam");
        }),
    )
    .err(7);
    run(
        "ADD",
        "c1",
        "eth0",
        &[],
        &net.with(|c| {
            c.as_object_mut().unwrap().remove("name");
        }),
    )
    .err(7);
    run(
        "ADD",
        "c1",
        "eth0",
        &[],
        &net.with(|c| c["name"] = json!("../escape")),
    )
    .err(7);
    for (ranges, needle) in [
        (json!([[{"subnet": "10.26.0.0/31"}]]), "/31"),
        (json!([[{"subnet": "10.26.0.5/32"}]]), "/32"),
        (json!([[{"subnet": "fd00::/127"}]]), "/127"),
        (json!([[{"subnet": "10.26.0.5/24"}]]), "host bits"),
        (json!([[{"subnet": "banana"}]]), "CIDR"),
        (
            json!([[{"subnet": "10.26.0.0/24", "rangeStart": "10.27.0.1"}]]),
            "outside",
        ),
        (
            json!([[{"subnet": "10.26.0.0/24", "rangeStart": "10.26.0.9", "rangeEnd": "10.26.0.3"}]]),
            "after",
        ),
        (
            json!([[{"subnet": "10.26.0.0/24"}, {"subnet": "fd00::/64"}]]),
            "mixes",
        ),
        (
            json!([[{"subnet": "10.26.0.0/24"}], [{"subnet": "10.26.0.0/25"}]]),
            "overlap",
        ),
        (json!([]), "no address ranges"),
    ] {
        let err = run(
            "ADD",
            "c1",
            "eth0",
            &[],
            &net.with(|c| c["ipam"]["ranges"] = ranges.clone()),
        )
        .err(7);
        assert!(
            err["msg"].as_str().unwrap().contains(needle),
            "{ranges} -> {err}"
        );
    }
    assert!(net.leases().is_empty());
}

#[test]
fn io_errors_are_code_5_and_resolv_conf_feeds_dns() {
    let net = Net::v4("10.28.0.0/24");
    let file = net.dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    run(
        "ADD",
        "c1",
        "eth0",
        &[],
        &net.with(|c| c["ipam"]["dataDir"] = json!(file)),
    )
    .err(5);
    run(
        "ADD",
        "c1",
        "eth0",
        &[],
        &net.with(|c| c["ipam"]["resolvConf"] = json!("/nonexistent/resolv.conf")),
    )
    .err(5);
    let resolv = net.dir.path().join("resolv.conf");
    std::fs::write(
        &resolv,
        "nameserver 10.96.0.10\nsearch svc.cluster.local\noptions ndots:5\n",
    )
    .unwrap();
    let result = run(
        "ADD",
        "c1",
        "eth0",
        &[],
        &net.with(|c| c["ipam"]["resolvConf"] = json!(resolv)),
    )
    .ok();
    assert_eq!(
        result["dns"],
        json!({"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"], "options": ["ndots:5"]})
    );
}

#[test]
fn logs_never_reach_stdout() {
    let net = Net::v4("10.29.0.0/24");
    let log = net.dir.path().join("ipam.log");
    let conf = net.with(|c| {
        c["logLevel"] = json!("debug");
        c["logFile"] = json!(log);
    });
    let out = run("ADD", "c1", "eth0", &[], &conf);
    assert_eq!(out.code, 0);
    assert!(
        out.stdout.starts_with("{\"cniVersion\""),
        "stdout is only the result: {}",
        out.stdout
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("leased"),
        "log file has the lease: {logged}"
    );
}

#[test]
fn sixty_four_parallel_adds_get_distinct_addresses() {
    let net = Net::v4("10.30.0.0/24");
    let conf = serde_json::to_vec(&net.conf).unwrap();
    let children: Vec<_> = (0..64)
        .map(|i| {
            let mut child = Command::new(BIN)
                .env_clear()
                .env("CNI_COMMAND", "ADD")
                .env("CNI_CONTAINERID", format!("par{i}"))
                .env("CNI_IFNAME", "eth0")
                .env("CNI_NETNS", "/var/run/netns/x")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(&conf).unwrap();
            child
        })
        .collect();
    let mut seen = BTreeSet::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(
            seen.insert(addresses(&v)[0].clone()),
            "duplicate address {v}"
        );
    }
    assert_eq!(seen.len(), 64);
    assert_eq!(net.leases().len(), 64);
}

#[test]
fn killed_adds_leave_nothing_gc_cannot_reclaim() {
    let net = Net::v4("10.31.0.0/24");
    let conf = serde_json::to_vec(&net.conf).unwrap();
    // Kill ADDs at staggered moments, so that some die before, during and after the writes.
    for i in 0..40u64 {
        let mut child = Command::new(BIN)
            .env_clear()
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", format!("killed{i}"))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_NETNS", "/var/run/netns/x")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&conf).unwrap();
        std::thread::sleep(std::time::Duration::from_micros(100 * (i % 20)));
        let _ = child.kill();
        let _ = child.wait();
    }
    // A crash right after the index entry was written: an entry whose lease never came.
    std::os::unix::fs::symlink(
        "ips=10.31.0.200",
        net.lease_dir().join("attachment:ghost:eth0"),
    )
    .unwrap();
    std::fs::write(net.lease_dir().join(".10.31.0.201.tmp-99999"), "half").unwrap();

    // Every lease that exists belongs to one of the killed containers.
    for lease in net.leases() {
        let owner = std::fs::read_to_string(net.lease_dir().join(&lease)).unwrap();
        assert!(owner.starts_with("killed"), "{lease}: {owner:?}");
    }
    let keep = net.add("survivor").ok();
    let gc = net.with(|c| {
        c["cni.dev/valid-attachments"] = json!([{"containerID": "survivor", "ifname": "eth0"}])
    });
    run("GC", "", "", &[], &gc).ok();
    let left: Vec<_> = std::fs::read_dir(net.lease_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| {
            !n.starts_with("last_reserved_ip.")
                && !n.starts_with("attachment:")
                && !["lock", ".tether-index"].contains(&n.as_str())
        })
        .collect();
    let kept = addresses(&keep)[0].split('/').next().unwrap().to_string();
    assert_eq!(left, [kept], "only the survivor's lease remains");
    assert_eq!(
        net.index_entries(),
        BTreeSet::from(["attachment:survivor:eth0".to_string()])
    );
}

#[test]
fn takes_over_a_reference_host_local_directory() {
    let host_local = Path::new("/usr/lib/cni/host-local");
    assert!(
        host_local.exists(),
        "the reference host-local plugin is missing: run scripts/setup.sh (containernetworking-plugins)"
    );
    let net = Net::v4("10.32.0.0/24");
    let reference = net.with(|c| {
        c["cniVersion"] = json!("1.0.0");
        c["ipam"]["type"] = json!("host-local");
    });
    for id in ["old1", "old2"] {
        let out = Command::new(host_local)
            .env_clear()
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", id)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_NETNS", "/var/run/netns/x")
            .env("CNI_PATH", "/usr/lib/cni")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                c.stdin
                    .take()
                    .unwrap()
                    .write_all(&serde_json::to_vec(&reference).unwrap())?;
                c.wait_with_output()
            })
            .unwrap();
        assert!(
            out.status.success(),
            "host-local: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    // cni-ipam continues after host-local's last address and can free host-local's leases.
    assert_eq!(addresses(&net.add("new").ok()), ["10.32.0.4/24"]);
    net.add("old1").err(111);
    net.del("old1").ok();
    assert_eq!(
        net.leases(),
        BTreeSet::from(["10.32.0.3".to_string(), "10.32.0.4".to_string()])
    );
    let old2 = net.with(|c| {
        c["prevResult"] = json!({"cniVersion": "1.1.0", "ips": [{"address": "10.32.0.3/24"}]})
    });
    run("CHECK", "old2", "eth0", &[], &old2).ok();
}

trait Tap {
    fn tap(self, f: impl FnOnce(&mut Self)) -> Self;
}

impl Tap for Value {
    fn tap(mut self, f: impl FnOnce(&mut Self)) -> Self {
        f(&mut self);
        self
    }
}

#[test]
fn empty_and_relative_data_dirs_and_cross_family_gateways_are_configuration_errors() {
    let net = Net::v4("10.70.0.0/24");
    let cwd_before: Vec<_> = std::fs::read_dir(".")
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    for dir in ["", "relative/leases"] {
        let conf = net.with(|c| c["ipam"]["dataDir"] = json!(dir));
        let err = run("ADD", "dd1", "eth0", &[], &conf).err(7);
        assert!(err["msg"].as_str().unwrap().contains("absolute"), "{err}");
        run("DEL", "dd1", "eth0", &[], &conf).err(7);
    }
    let cwd_after: Vec<_> = std::fs::read_dir(".")
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        cwd_before, cwd_after,
        "nothing written where the plugin runs"
    );

    let conf = net.with(|c| c["ipam"]["routes"] = json!([{"dst": "0.0.0.0/0", "gw": "fd00::1"}]));
    let err = run("ADD", "dd2", "eth0", &[], &conf).err(7);
    assert!(
        err["msg"]
            .as_str()
            .unwrap()
            .contains("other address family"),
        "{err}"
    );
    assert!(!net.lease_dir().exists() || std::fs::read_dir(net.lease_dir()).unwrap().count() <= 2);
}

#[test]
fn container_ids_and_network_names_past_their_limits() {
    let net = Net::v4("10.71.0.0/24");
    // 128 bytes is the limit and works; one more is refused up front with code 4, and its DEL
    // succeeds (nothing could have been made), so a runtime does not retry it forever.
    let longest = "c".repeat(128);
    net.add(&longest).ok();
    net.del(&longest).ok();
    for len in [129, 250, 300] {
        let id = "d".repeat(len);
        let err = net.add(&id).err(4);
        assert!(err["msg"].as_str().unwrap().contains("128"), "{err}");
        net.del(&id).ok();
    }
    assert_eq!(
        std::fs::read_dir(net.lease_dir())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("10.71."))
            .count(),
        0
    );
    let conf = net.with(|c| c["name"] = json!("n".repeat(300)));
    let err = run("ADD", "nn1", "eth0", &[], &conf).err(7);
    assert!(err["msg"].as_str().unwrap().contains("64"), "{err}");
    run("DEL", "nn1", "eth0", &[], &conf).ok();
}
