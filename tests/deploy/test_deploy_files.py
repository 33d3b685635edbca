"""deploy/ checked offline: the image's Dockerfile and entry point, the compose file, the
Kubernetes manifests and the systemd units.

No container is built or run here (these machines have a Docker client but no engine):
the Dockerfile is linted (hadolint) and read, the entry point is run as it would run in
the image, the compose file is validated against the compose spec's schema and its
wiring checked, its demo config goes through the control plane's own validation, every
Kubernetes manifest (and the kustomize build) is validated with `kubernetes-validate
--strict`, and the systemd units with `systemd-analyze verify`.
"""

from __future__ import annotations

import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
from typing import Any

import pytest
import yaml

from controlplane.cli.fluxctl import build_parser as fluxctl_parser
from controlplane.main import parse_args as controlplane_args
from controlplane.spec import KINDS, ConfigSet
from controlplane.validation import check_config
from dataplane.main import build_parser as node_parser
from fluxcommon.version import package_version

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BIN = pathlib.Path(sys.executable).parent
K8S = DEPLOY / "kubernetes" / "base"


def tool(name: str) -> str:
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        raise AssertionError(f"{name} is not installed: pip install -e '.[dev]' (pinned in pyproject.toml)")
    return found


def run(*cmd: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False, **kw)


# -- the image ------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of deploy/Dockerfile, continuation lines joined."""
    text = (DEPLOY / "Dockerfile").read_text()
    out = []
    for line in re.sub(r"\\\n", " ", text).splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_lints_clean() -> None:
    done = run(tool("hadolint"), str(DEPLOY / "Dockerfile"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_image_is_multi_stage_non_root_with_the_entry_point() -> None:
    steps = dockerfile()
    stages = [i for i, (word, _) in enumerate(steps) if word == "FROM"]
    assert len(stages) >= 2, "a build stage and a slim runtime stage"
    final = steps[stages[-1] :]
    users = [arg for word, arg in final if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root"), users
    assert ("ENTRYPOINT", '["/usr/local/bin/flux"]') in final
    assert not any(word == "RUN" and "build-essential" in arg for word, arg in final), "no compiler in the image"
    for word, arg in steps:
        if word == "COPY" and "--from" not in arg:
            for source in shlex.split(arg)[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    ignored = (ROOT / ".dockerignore").read_text().split()
    for needed in ("flux", "fluxcommon", "controlplane", "dataplane", "tunnelclient", "scripts", "pyproject.toml"):
        assert needed not in ignored


def test_entry_point_runs_the_four_commands() -> None:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
    entry = str(DEPLOY / "docker" / "entrypoint.sh")
    done = run("sh", entry, "version", env=env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["flux-controlplane", "flux-node", "flux-tunnel", "fluxctl"]
    assert all(package_version() in line for line in lines), lines
    for name, prog in (("controlplane", "flux-controlplane"), ("node", "flux-node"), ("ctl", "fluxctl")):
        done = run("sh", entry, name, "--help", env=env)
        assert done.returncode == 0 and f"usage: {prog}" in done.stdout, (name, done.stdout, done.stderr)
    assert "controlplane" in run("sh", entry, env=env).stdout  # no argument: the help
    assert run("sh", entry, "sh", "-c", "exit 7", env=env).returncode == 7  # anything else runs as given


# -- compose --------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())  # merge keys (<<) resolved


def test_compose_file_matches_the_compose_spec() -> None:
    done = run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(DEPLOY / "compose.yaml"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_stack_is_wired_as_the_issue_asks() -> None:
    doc = compose()
    services: dict[str, Any] = doc["services"]
    assert {"mariadb", "redis", "controlplane-1", "controlplane-2", "node-1", "node-2", "edge", "demo",
            "tunnel-agent", "bootstrap"} <= set(services)  # fmt: skip
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown {dep}"
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source} missing"
            else:
                assert source in doc["volumes"], f"{name}: volume {source} not declared"
    published = {name: svc["ports"] for name, svc in services.items() if svc.get("ports")}
    assert set(published) == {"edge", "controlplane-1"}, published  # nodes sit behind the edge's one port
    assert any(p.startswith("8080:") for p in published["edge"])
    for cp in ("controlplane-1", "controlplane-2"):
        db = services[cp]["environment"]["FLUX_DB"]
        assert db.startswith("mysql+pymysql://") and "@mariadb:3306/" in db
        controlplane_args([a for a in services[cp]["command"][1:]])  # flags the real parser takes
    assert services["controlplane-2"]["depends_on"]["controlplane-1"]["condition"] == "service_healthy"
    for node in ("node-1", "node-2"):
        svc = services[node]
        assert svc["depends_on"]["bootstrap"]["condition"] == "service_completed_successfully"
        script = svc["command"][-1]
        assert "/var/lib/flux/bootstrap/join.token" in script
        argv = shlex.split(script.replace("$$", "$"))[2:]  # after "exec flux-node"
        args = node_parser().parse_args([a if not a.startswith("$") else "x" for a in argv])
        assert args.control_plane == "controlplane-1:18000,controlplane-2:18000"
    edge = (DEPLOY / "compose" / "edge-nginx.conf").read_text()
    assert "server node-1:8080" in edge and "server node-2:8080" in edge


def test_compose_demo_config_passes_the_control_planes_validation() -> None:
    raw = (DEPLOY / "compose" / "flux.yaml").read_text().replace("@TUNNEL_USER_TOKEN@", "a-generated-token")
    cfg = ConfigSet()
    for plural, items in yaml.safe_load(raw).items():
        for item in items:
            cfg = cfg.with_put(plural, KINDS[plural].spec.model_validate(item))
    assert check_config(cfg) == []
    assert {"listeners", "clusters", "routes", "policies", "tunnels"} <= {p for p, _ in cfg.iter_all()}


def test_compose_bootstrap_script_parses_and_calls_real_fluxctl_commands() -> None:
    script = DEPLOY / "compose" / "bootstrap.sh"
    assert run("sh", "-n", str(script)).returncode == 0
    calls = [line.strip() for line in script.read_text().splitlines() if line.strip().startswith("fluxctl ")]
    assert len(calls) >= 4, calls
    parser = fluxctl_parser()
    for call in calls:
        words = shlex.split(call.split(">")[0])[1:]
        parser.parse_args([re.sub(r"\$\{?\w+[^\s]*", "x", w) if "$" in w else w for w in words])


# -- Kubernetes -----------------------------------------------------------------------------


def manifests() -> list[pathlib.Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def documents() -> list[dict[str, Any]]:
    return [d for p in manifests() for d in yaml.safe_load_all(p.read_text()) if d]


def test_every_manifest_validates_strictly_offline() -> None:
    done = run(tool("kubernetes-validate"), "--strict", "--no-warn", *map(str, manifests()))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("passed") == len(documents())


def test_strict_validation_catches_an_unknown_field(tmp_path: pathlib.Path) -> None:
    doc = yaml.safe_load((K8S / "node-service.yaml").read_text())
    doc["spec"]["portz"] = doc["spec"]["ports"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    assert run(tool("kubernetes-validate"), "--strict", "--no-warn", str(bad)).returncode != 0


def test_kustomization_lists_every_manifest_and_builds(tmp_path: pathlib.Path) -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in manifests())
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (its built-in kustomize) is not installed: the build is not checked here")
    built = run(kubectl, "kustomize", str(K8S))
    assert built.returncode == 0, built.stderr
    out = tmp_path / "built.yaml"
    out.write_text(built.stdout)
    done = run(tool("kubernetes-validate"), "--strict", "--no-warn", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    assert all(d["metadata"].get("namespace", "flux-system") == "flux-system" for d in yaml.safe_load_all(built.stdout))


def test_workloads_have_probes_resources_and_matching_services() -> None:
    docs = documents()
    by_kind: dict[str, dict[str, Any]] = {f"{d['kind']}/{d['metadata']['name']}": d for d in docs}
    cp, node = by_kind["Deployment/flux-controlplane"], by_kind["Deployment/flux-node"]
    assert cp["spec"]["replicas"] == 2
    probes = {
        "flux-controlplane": ("/healthz", "/healthz"),
        "flux-node": ("/ready", "/healthz"),
    }
    for deployment in (cp, node):
        name = deployment["metadata"]["name"]
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod["containers"]:
            assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
            ready, live = probes[name]
            assert container["readinessProbe"]["httpGet"]["path"] == ready
            assert container["livenessProbe"]["httpGet"]["path"] == live
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        service = by_kind[f"Service/{name}"]
        assert service["spec"]["selector"].items() <= labels.items()
    assert cp["spec"]["template"]["spec"]["containers"][0]["args"][0] == "controlplane"
    controlplane_args(cp["spec"]["template"]["spec"]["containers"][0]["args"][1:])
    node_parser().parse_args(node["spec"]["template"]["spec"]["containers"][0]["args"][1:])
    assert by_kind["PodDisruptionBudget/flux-controlplane"]["spec"]["selector"]["matchLabels"].items() <= (
        cp["spec"]["template"]["metadata"]["labels"].items()
    )
    assert by_kind["HorizontalPodAutoscaler/flux-node"]["spec"]["scaleTargetRef"]["name"] == "flux-node"
    assert {"NetworkPolicy/flux-controlplane", "NetworkPolicy/flux-node", "ConfigMap/flux-settings"} <= set(by_kind)
    secrets = {k for k in by_kind if k.startswith("Secret/")}
    assert secrets == {"Secret/flux-controlplane", "Secret/flux-node-join"}


# -- systemd --------------------------------------------------------------------------------


def test_systemd_units_verify(tmp_path: pathlib.Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed: the units are not verified here")
    units = []
    for unit in sorted((DEPLOY / "systemd").glob("*.service")):
        text = unit.read_text().replace("/opt/flux/bin/", f"{BIN}/")  # where this checkout's commands are
        name = unit.name.replace("@.service", "@edge-1.service")
        (tmp_path / name).write_text(text)
        units.append(str(tmp_path / name))
    done = run(analyze, "verify", *units)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


def test_systemd_units_pass_flags_the_commands_take() -> None:
    unit = (DEPLOY / "systemd" / "flux-node@.service").read_text()
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    argv = shlex.split(exec_start.removeprefix("ExecStart="))[1:]
    values = {"${FLUX_GROUP}": "default", "${FLUX_ADMIN}": "127.0.0.1:9901", "${FLUX_WORKERS}": "auto"}
    node_parser().parse_args([values.get(a, a.replace("%i", "edge-1")) for a in argv])
    unit = (DEPLOY / "systemd" / "flux-controlplane.service").read_text()
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    argv = shlex.split(exec_start.removeprefix("ExecStart="))[1:]
    controlplane_args([{"${FLUX_HTTP}": "127.0.0.1:9080", "${FLUX_GRPC}": "127.0.0.1:18000"}.get(a, a) for a in argv])
