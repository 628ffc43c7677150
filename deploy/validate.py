#!/usr/bin/env python3
"""Offline checks of deploy/: every manifest against the Kubernetes API schemas
(kubernetes-validate, strict), every command, flag and environment variable that a
manifest gives Tether's own image against the built binaries' --help, and every CSI sidecar
image against deploy/sidecars.json (the one list of sidecar versions, which
csi-driver/tests/sidecars.rs checks against the capabilities tether-csi advertises).

    python3 deploy/validate.py --bin-dir target/x86_64-unknown-linux-gnu/debug
"""

import argparse
import glob
import json
import os
import re
import subprocess
import sys

import kubernetes_validate
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUR_IMAGE = re.compile(r"^[^ ]*/tether:[^ ]+$")
KUBERNETES_VERSIONS = ["1.30.0", "1.33.0", "1.37.0"]


KUBECTL = os.environ.get("TETHER_KUBECTL", "/usr/local/lib/tether/kubectl-1.37.1")
# Every kustomization an operator may apply, and the single file dist/ holds of each.
BUILDS = {
    "deploy": None,
    "deploy/overlays/kubeadm": "dist/tether.yaml",
    "deploy/overlays/k3s": "dist/tether-k3s.yaml",
    "deploy/overlays/rke2": "dist/tether-rke2.yaml",
    "deploy/optional/snapshots": "dist/tether-snapshots.yaml",
    "deploy/optional/monitoring": "dist/tether-monitoring.yaml",
    "deploy/uninstall": "dist/tether-uninstall.yaml",
    "deploy/uninstall/k3s": "dist/tether-uninstall-k3s.yaml",
}


def kustomize(directory):
    if not os.path.exists(KUBECTL):
        raise SystemExit(f"{KUBECTL} is missing: run scripts/setup.sh")
    done = subprocess.run([KUBECTL, "kustomize", os.path.join(ROOT, directory)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"kustomize {directory}: {done.stderr.strip()}")
    return done.stdout


def documents():
    """(where, object) of every object of every kustomize build."""
    for directory in BUILDS:
        for doc in yaml.safe_load_all(kustomize(directory)):
            if doc:
                yield directory, doc


def check_dist():
    """dist/ must be exactly what scripts/build-dist.sh writes."""
    done = subprocess.run([os.path.join(ROOT, "scripts", "build-dist.sh"), "--check"],
                          capture_output=True, text=True, env={**os.environ, "TETHER_KUBECTL": KUBECTL})
    return [line for line in done.stderr.splitlines() if line.strip()] if done.returncode else []


def check_rollout(doc):
    """A rolling update of a node DaemonSet may take down one node's pod at a time, with no
    surge (two pods of one DaemonSet on a node would fight over host ports and the conflist);
    the CNI daemon keeps the conflist and routes across its restart
    (cni-overlay/tests/kubernetes.rs) and must be ready before the next node goes."""
    problems = []
    strategy = doc.get("spec", {}).get("updateStrategy", {})
    rolling = strategy.get("rollingUpdate", {})
    if strategy.get("type") != "RollingUpdate" or rolling.get("maxUnavailable") != 1:
        problems.append("updateStrategy must be RollingUpdate with maxUnavailable: 1")
    if rolling.get("maxSurge", 0) not in (0, "0", "0%"):
        problems.append("maxSurge must be 0")
    pod = doc["spec"]["template"]["spec"]
    for container in pod.get("containers", []):
        if container.get("lifecycle", {}).get("preStop"):
            problems.append(f"container {container['name']} has a preStop hook")
    if doc["metadata"]["name"] == "tether-overlay":
        if not any("readinessProbe" in c for c in pod.get("containers", [])):
            problems.append("tether-overlayd needs a readiness probe (the rollout waits for it)")
    return problems


def check_service_monitor(doc):
    """The Prometheus Operator's CRD is not part of the API schemas: check the fields we use."""
    problems = []
    if doc.get("apiVersion") != "monitoring.coreos.com/v1":
        problems.append("apiVersion must be monitoring.coreos.com/v1")
    spec = doc.get("spec", {})
    if not isinstance(spec.get("selector", {}).get("matchLabels"), dict):
        problems.append("spec.selector.matchLabels is required")
    for endpoint in spec.get("endpoints", []):
        if set(endpoint) - {"port", "interval", "path", "scheme"} or "port" not in endpoint:
            problems.append(f"endpoint {endpoint} has unknown fields or no port")
    return problems


def check_prometheus_rule(doc):
    """The Prometheus Operator's PrometheusRule: groups of alerts, each with what an operator
    reads (severity, summary, description). tests/monitoring.rs runs promtool on the rules."""
    problems = []
    if doc.get("apiVersion") != "monitoring.coreos.com/v1":
        problems.append("apiVersion must be monitoring.coreos.com/v1")
    groups = doc.get("spec", {}).get("groups")
    if not isinstance(groups, list) or not groups:
        return problems + ["spec.groups is required"]
    for group in groups:
        for rule in group.get("rules", []):
            name = rule.get("alert") or rule.get("record")
            if not isinstance(rule.get("expr"), str):
                problems.append(f"rule {name}: expr is required")
            if "alert" in rule:
                if rule.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
                    problems.append(f"alert {name}: labels.severity must be critical, warning or info")
                for key in ("summary", "description"):
                    if not rule.get("annotations", {}).get(key):
                        problems.append(f"alert {name}: annotations.{key} is required")
    return problems


def check_snapshot_class(doc):
    """The snapshot CRDs are not part of the API schemas: check their documented shape."""
    problems = []
    allowed = {"apiVersion", "kind", "metadata", "driver", "deletionPolicy", "parameters"}
    if doc.get("apiVersion") != "snapshot.storage.k8s.io/v1":
        problems.append("apiVersion must be snapshot.storage.k8s.io/v1")
    if not isinstance(doc.get("metadata", {}).get("name"), str):
        problems.append("metadata.name is required")
    if not isinstance(doc.get("driver"), str):
        problems.append("driver is required")
    if doc.get("deletionPolicy") not in ("Delete", "Retain"):
        problems.append("deletionPolicy must be Delete or Retain")
    extra = set(doc) - allowed
    if extra:
        problems.append(f"unknown fields {sorted(extra)}")
    return problems


def sidecar_images():
    """image -> (tag, documented flags), from deploy/sidecars.json."""
    with open(os.path.join(HERE, "sidecars.json")) as f:
        return {s["image"]: (s["tag"], set(s["flags"])) for s in json.load(f)["sidecars"]}


def check_sidecar_rbac(roles):
    """Every verb each controller sidecar's own RBAC grants (deploy/sidecars.json) is granted by
    its ClusterRole in deploy/."""
    problems = []
    with open(os.path.join(HERE, "sidecars.json")) as f:
        listed = json.load(f)["sidecars"]
    for sidecar in listed:
        if "rbac" not in sidecar:
            continue
        role = sidecar["clusterRole"]
        rules = roles.get(role)
        if rules is None:
            problems.append(f"ClusterRole {role} (for {sidecar['name']}) is missing")
            continue
        for need in sidecar["rbac"]:
            granted = set()
            for rule in rules:
                if need["apiGroup"] in rule.get("apiGroups", []) and (
                        need["resource"] in rule.get("resources", []) or "*" in rule.get("resources", [])):
                    granted |= set(rule.get("verbs", []))
            missing = [v for v in need["verbs"] if v not in granted and "*" not in granted]
            if missing:
                group = need["apiGroup"] or "core"
                problems.append(f"ClusterRole {role} does not grant {sidecar['name']}:{sidecar['tag']} "
                                f"{', '.join(missing)} on {need['resource']} ({group})")
    return problems


def help_text(bin_dir, binary, cache={}):
    if binary not in cache:
        path = os.path.join(bin_dir, binary)
        if not os.path.exists(path):
            raise SystemExit(f"{path} is missing: build the workspace first")
        cache[binary] = subprocess.run([path, "--help"], capture_output=True, text=True, check=True).stdout
    return cache[binary]


def pod_specs(doc):
    spec = doc.get("spec", {})
    template = spec.get("template", {}).get("spec")
    if template:
        yield template


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin-dir", required=True)
    args = parser.parse_args()
    failures = check_dist()
    config_maps = {}
    checked = 0
    images = set()
    sidecars = sidecar_images()
    used_sidecars = set()
    cluster_roles = {}
    for path, doc in documents():
        kind, name = doc.get("kind"), doc.get("metadata", {}).get("name")
        where = f"{path}: {kind}/{name}"
        if kind == "VolumeSnapshotClass":
            failures += [f"{where}: {p}" for p in check_snapshot_class(doc)]
        elif kind == "ServiceMonitor":
            failures += [f"{where}: {p}" for p in check_service_monitor(doc)]
        elif kind == "PrometheusRule":
            failures += [f"{where}: {p}" for p in check_prometheus_rule(doc)]
        else:
            for version in KUBERNETES_VERSIONS:
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                except kubernetes_validate.ValidationError as e:
                    failures.append(f"{where} (Kubernetes {version}): {e.message} at {'/'.join(map(str, e.path))}")
                except kubernetes_validate.SchemaNotFoundError as e:
                    failures.append(f"{where}: no schema ({e})")
        if kind == "DaemonSet" and name in ("tether-overlay", "tether-csi-node"):
            failures += [f"{where}: {p}" for p in check_rollout(doc)]
        checked += 1
        if kind == "ConfigMap":
            config_maps[name] = doc.get("data", {})
        if kind == "ClusterRole" and path == "deploy":
            cluster_roles[name] = doc.get("rules", [])
        for pod in pod_specs(doc):
            for container in pod.get("initContainers", []) + pod.get("containers", []):
                image = container.get("image", "")
                if "/sig-storage/" in image:
                    name, _, tag = image.rpartition(":")
                    used_sidecars.add(name)
                    listed_tag, documented = sidecars.get(name, (None, set()))
                    if listed_tag != tag:
                        failures.append(f"{where}: container {container['name']} uses {image}; "
                                        f"deploy/sidecars.json lists {name}:{listed_tag}")
                    for word in container.get("args", []):
                        flag = word.split("=", 1)[0]
                        if flag.startswith("--") and flag not in documented:
                            failures.append(f"{where}: {name}:{tag} documents no flag {flag}")
                if not OUR_IMAGE.match(image):
                    continue
                images.add(container["image"])
                command = container.get("command", []) + container.get("args", [])
                if not command or not command[0].startswith("/opt/tether/bin/"):
                    failures.append(f"{where}: container {container['name']} must run a binary in /opt/tether/bin")
                    continue
                binary = os.path.basename(command[0])
                text = help_text(args.bin_dir, binary)
                for word in command[1:]:
                    if word.startswith("--"):
                        flag = word.split("=", 1)[0]
                        if not re.search(rf"(^|[\s,]){re.escape(flag)}([\s=<,]|$)", text, re.M):
                            failures.append(f"{where}: {binary} has no flag {flag}")
                env_names = [e["name"] for e in container.get("env", [])]
                for source in container.get("envFrom", []):
                    ref = source.get("configMapRef", {}).get("name")
                    env_names += list(config_maps.get(ref, {}))
                for env in env_names:
                    if f"env: {env}=" not in text:
                        failures.append(f"{where}: {binary} reads no environment variable {env}")
    failures += check_sidecar_rbac(cluster_roles)
    for unused in sorted(set(sidecars) - used_sidecars):
        failures.append(f"deploy/sidecars.json lists {unused}, which no manifest uses")
    if len(images) > 1:
        failures.append(f"the manifests use several Tether images: {sorted(images)}")
    for failure in failures:
        print("FAIL", failure)
    print(f"deploy/: {checked} objects checked against Kubernetes {', '.join(KUBERNETES_VERSIONS)}; "
          f"image {', '.join(sorted(images))}; {len(failures)} problem(s)")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
