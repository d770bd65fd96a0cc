"""deploy/ checked statically: every command, option, port, host name and path it names.

No container engine runs here, so the Compose file, the Kubernetes manifests, the
Dockerfile and the systemd units are parsed and checked against the project itself:

* every ``cpn ...`` command line they hold parses with the real click command tree
  (``cluster.cli.cli``): the command exists, every option exists and takes a valid
  value (``--shard-id`` is a shard of the cluster file);
* they agree with ``deploy/cluster.toml``: the ConfigMap holds its exact text, the
  ports and DNS names the file gives are the Services', containers' and Compose
  aliases', the shard count is the StatefulSet's replicas and Compose's shard
  services, and data, config and key paths are where volumes are mounted;
* every file a build or a volume takes from the repository exists.

``cpn worker`` belongs to the crawler (issue 6): its command lines are checked the same
way, once the command exists with the options used here; until then that test skips
and says why.
"""

from __future__ import annotations

import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from cluster.cli import cli
from cluster.config import ClusterFile, load_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CONFIG_PATH = "/etc/cpn/cluster.toml"  # where every container and host reads it
KEYS_DIR = "/etc/cpn/keys"
SHARD_ORDINAL = '"${HOSTNAME##*-}"'  # a StatefulSet pod's ordinal, in a shell command


@pytest.fixture(scope="module")
def config() -> ClusterFile:
    return load_config(DEPLOY / "cluster.toml")


def _yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _k8s() -> list[dict[str, Any]]:
    return [
        doc for path in sorted((DEPLOY / "k8s").glob("*.yaml")) for doc in _yaml_documents(path)
    ]


def _kind(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in _k8s() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name!r} in deploy/k8s, found {len(found)}"
    return found[0]


def _compose() -> dict[str, Any]:
    return _yaml_documents(DEPLOY / "docker-compose.yml")[0]


def _systemd(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


# -- every cpn command line in deploy/ ----------------------------------------------------


def _argv(command: list[str], *, ordinal: str) -> list[str]:
    """A command list as the container runs it; ``sh -c SCRIPT`` is split as sh would."""
    if command[:2] == ["sh", "-c"]:
        script = command[2].replace(SHARD_ORDINAL, ordinal)
        words = shlex.split(script)
        assert words[0] == "exec", f"{script!r}: exec the command so that it gets the signals"
        return words[1:]
    return command


def command_lines(shard_count: int) -> Iterator[tuple[str, list[str]]]:
    """``(where, argv)`` of every command line in deploy/ (a pod's once per ordinal)."""
    compose = _compose()
    for name, service in compose["services"].items():
        yield f"docker-compose.yml {name}", service["command"]
        health = service.get("healthcheck", {}).get("test")
        if health:
            assert health[0] == "CMD", f"{name}: the health check runs the command directly"
            yield f"docker-compose.yml {name} healthcheck", health[1:]
    for doc in _k8s():
        if doc["kind"] not in ("StatefulSet", "Deployment"):
            continue
        replicas = doc["spec"].get("replicas", 1)
        for container in doc["spec"]["template"]["spec"]["containers"]:
            where = f"k8s {doc['kind']} {doc['metadata']['name']}"
            probes = [p for p in ("readinessProbe", "livenessProbe") if p in container]
            commands = [("", container["command"])]
            commands += [(f" {p}", container[p]["exec"]["command"]) for p in probes]
            for suffix, command in commands:
                for ordinal in range(replicas if command[:2] == ["sh", "-c"] else 1):
                    yield f"{where}{suffix} (pod {ordinal})", _argv(command, ordinal=str(ordinal))
    for unit in sorted((DEPLOY / "systemd").glob("*.service")):
        exec_start = shlex.split(_systemd(unit)["ExecStart"])
        assert exec_start[0] == "/usr/local/bin/cpn", f"{unit.name}: where pip installs cpn"
        instances = range(shard_count) if "%i" in exec_start else [0]
        for instance in instances:
            argv = ["cpn", *(w.replace("%i", str(instance)) for w in exec_start[1:])]
            yield f"systemd {unit.name} (instance {instance})", argv
    dockerfile_cmd = [
        line for line in (DEPLOY / "Dockerfile").read_text().splitlines() if line.startswith("CMD")
    ]
    yield "Dockerfile CMD", yaml.safe_load(dockerfile_cmd[0].removeprefix("CMD "))


def parse_cpn(argv: list[str]) -> tuple[str, dict[str, Any]]:
    """Parse ``cpn ...`` with the real command tree, without running it.

    Returns the command's name and its option values (converted by their click
    types, so a bad choice or range fails). Raises click's own errors.
    """
    assert argv[0] == "cpn", argv
    if argv[1:] in (["--help"], ["-h"]):
        return "--help", {}
    group_ctx = click.Context(cli, info_name="cpn")
    command = cli.get_command(group_ctx, argv[1])
    if command is None:
        raise click.UsageError(f"no command {argv[1]!r}")
    ctx = click.Context(command, info_name=argv[1], parent=group_ctx)
    opts, args, _order = command.make_parser(ctx).parse_args(list(argv[2:]))
    values: dict[str, Any] = {}
    for param in command.params:
        if param.name in opts and not isinstance(param.type, click.Path):
            values[param.name] = param.type.convert(opts[param.name], param, ctx)
        elif param.name in opts:
            values[param.name] = opts[param.name]
    if args and not any(isinstance(p, click.Argument) for p in command.params):
        raise click.UsageError(f"unexpected arguments {args}")
    return command.name or argv[1], values


def _is_worker(argv: list[str]) -> bool:
    return argv[1:2] == ["worker"]


def test_every_cpn_command_line_parses_with_the_real_cli(config: ClusterFile) -> None:
    checked = set()
    for where, argv in command_lines(config.shard_count):
        if _is_worker(argv):
            continue  # see test_worker_command_lines
        try:
            name, values = parse_cpn(argv)
        except click.ClickException as exc:
            pytest.fail(f"{where}: {shlex.join(argv)}: {exc.format_message()}")
        checked.add(name)
        if name == "--help":
            continue
        assert values.get("config_path") == CONFIG_PATH, f"{where}: reads {CONFIG_PATH}"
        if "shard_id" in values and values["shard_id"] is not None:
            assert values["shard_id"] < config.shard_count, f"{where}: no such shard"
    assert {"router", "shard", "health"} <= checked


def test_worker_command_lines(config: ClusterFile) -> None:
    lines = [(w, a) for w, a in command_lines(config.shard_count) if _is_worker(a)]
    assert lines, "deploy/ runs fetch workers"
    group_ctx = click.Context(cli, info_name="cpn")
    worker = cli.get_command(group_ctx, "worker")
    options = {opt for p in (worker.params if worker else []) for opt in p.opts}
    wanted = {word for _where, argv in lines for word in argv if word.startswith("--")}
    if worker is None or not wanted <= options:
        pytest.skip(
            "`cpn worker` (issue 6, cluster/commands/crawl.py) does not exist yet or lacks "
            f"{', '.join(sorted(wanted - options))}: deploy/'s worker command lines are "
            "checked once it has them"
        )
    for where, argv in lines:
        try:
            _name, values = parse_cpn(argv)
        except click.ClickException as exc:
            pytest.fail(f"{where}: {shlex.join(argv)}: {exc.format_message()}")
        assert values.get("role") == "fetch", where
    assert {w.role for w in config.workers} == {"fetch"}


# -- agreement with the cluster file -------------------------------------------------------


def _host_port(endpoint: str) -> tuple[str, int]:
    host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
    return host, int(port)


def _metrics_port(metrics: str) -> int:
    """A process's fixed /metrics port (a deployment never leaves it to port 0 or off)."""
    host, port = _host_port(metrics)
    assert int(port) > 0 and host == "0.0.0.0", f"metrics {metrics!r}: a fixed port, all addresses"
    return port


def test_the_configmap_holds_the_cluster_file(config: ClusterFile) -> None:
    configmap = _kind("ConfigMap", "cpn-cluster")
    assert configmap["data"]["cluster.toml"] == (DEPLOY / "cluster.toml").read_text()
    assert config.security is not None
    for path in (config.security.server_key, config.security.client_key, *config.security.allowed):
        assert str(path).startswith(f"{KEYS_DIR}/"), f"key file {path} outside {KEYS_DIR}"
    for spec in config.processes():
        assert str(spec.data_dir).startswith(f"{config.data_dir}/"), spec.name
        assert _host_port(spec.bind)[0] == "0.0.0.0", f"{spec.name} binds its container's address"


def _mounts(pod_spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """mount path -> the volume mounted there (with the mount's subPath)."""
    volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
    found = {}
    for container in pod_spec["containers"]:
        for mount in container.get("volumeMounts", []):
            found[mount["mountPath"]] = {**volumes.get(mount["name"], {}), **mount}
    return found


def test_kubernetes_services_ports_names_and_volumes_match_the_file(config: ClusterFile) -> None:
    router_host, router_port = _host_port(config.router.endpoint)
    router_service = _kind("Service", router_host)
    router_metrics = _metrics_port(config.router.metrics)
    assert [p["port"] for p in router_service["spec"]["ports"]] == [router_port, router_metrics]
    router_set = _kind("StatefulSet", "cpn-router")
    assert router_set["spec"]["replicas"] == 1
    shard_set = _kind("StatefulSet", "cpn-shard")
    assert shard_set["spec"]["replicas"] == config.shard_count
    headless = _kind("Service", shard_set["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    for spec in config.shards:
        host, port = _host_port(spec.endpoint)
        # A StatefulSet pod's DNS name is POD.SERVICE, its pod POD is NAME-ORDINAL.
        assert host == f"cpn-shard-{spec.shard_id}.{headless['metadata']['name']}", spec.name
        ports = [port, _metrics_port(spec.metrics)]
        assert [p["port"] for p in headless["spec"]["ports"]] == ports, spec.name
    for workload, spec in ((router_set, config.router), (shard_set, config.shards[0])):
        pod = workload["spec"]["template"]["spec"]
        ports = [p["containerPort"] for c in pod["containers"] for p in c.get("ports", [])]
        wanted = [_host_port(spec.bind)[1], _metrics_port(spec.metrics)]
        assert ports == wanted, workload["metadata"]["name"]
        mounts = _mounts(pod)
        assert mounts[CONFIG_PATH]["configMap"]["name"] == "cpn-cluster"
        assert mounts[CONFIG_PATH]["subPath"] == "cluster.toml"
        assert "secret" in mounts[KEYS_DIR]
        claims = [c["metadata"]["name"] for c in workload["spec"]["volumeClaimTemplates"]]
        assert mounts[str(config.data_dir)]["name"] in claims, "one persistent volume per pod"
        for container in pod["containers"]:
            assert "readinessProbe" in container
            assert "livenessProbe" in container
    workers = _kind("Deployment", "cpn-fetch")
    assert workers["spec"]["replicas"] == sum(w.count for w in config.workers)
    assert CONFIG_PATH in _mounts(workers["spec"]["template"]["spec"])
    kustomization = _yaml_documents(DEPLOY / "k8s" / "kustomization.yaml")[0]
    on_disk = sorted(p.name for p in (DEPLOY / "k8s").glob("*.yaml") if p.stem != "kustomization")
    assert sorted(kustomization["resources"]) == on_disk


def test_compose_services_match_the_file_and_take_existing_files(config: ClusterFile) -> None:
    services = _compose()["services"]
    router_host, router_port = _host_port(config.router.endpoint)
    assert router_host in services
    shard_services = {}
    for name, service in services.items():
        command = service["command"]
        if command[1] == "shard":
            shard_services[int(command[command.index("--shard-id") + 1])] = (name, service)
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                path = (DEPLOY / source).resolve()
                if path.name == "keys":
                    # Made per deployment by `cpn keys generate deploy/keys`, never committed.
                    assert "keys/" in (DEPLOY / ".gitignore").read_text()
                    assert target == KEYS_DIR
                else:
                    assert path.exists(), f"{name}: volume source {source} does not exist"
            else:
                assert source in _compose()["volumes"], f"{name}: volume {source} undeclared"
                assert target == str(config.data_dir), f"{name}: data volume at {target}"
        assert f"./cluster.toml:{CONFIG_PATH}:ro" in service["volumes"], name
    assert sorted(shard_services) == list(range(config.shard_count))
    for shard_id, (name, service) in shard_services.items():
        host, port = _host_port(config.shard(shard_id).endpoint)
        assert host in service["networks"]["default"]["aliases"], name
        assert service["expose"] == [str(port), str(_metrics_port(config.shard(shard_id).metrics))]
    router_metrics = _metrics_port(config.router.metrics)
    assert services[router_host]["expose"] == [str(router_port), str(router_metrics)]
    build = services[router_host]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve().is_file()


def test_the_dockerfile_copies_what_exists_and_exposes_the_file_s_ports(
    config: ClusterFile,
) -> None:
    lines = (DEPLOY / "Dockerfile").read_text().splitlines()
    for line in lines:
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"Dockerfile: COPY {source}: not in the repo"
    copied = {word for line in lines if line.startswith("COPY ") for word in line.split()[1:-1]}
    # Every package pyproject installs (router.shell, shard.shell, cluster.sim...) comes
    # with its top-level directory.
    listed = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for package in listed["packages"]:
        top = package.split(".")[0]
        assert top in copied, f"the image needs the {package} package (COPY {top})"
    exposed = {int(p) for line in lines if line.startswith("EXPOSE") for p in line.split()[1:]}
    assert {_host_port(s.bind)[1] for s in config.processes()} <= exposed
    metrics = [s.metrics for s in config.processes()] + [w.metrics for w in config.workers]
    assert {_metrics_port(m) for m in metrics} <= exposed
    assert f"ENV CPN_CONFIG={CONFIG_PATH}" in lines
    assert any(line.startswith("VOLUME") and str(config.data_dir) in line for line in lines)


def test_systemd_units_read_the_cluster_file_and_write_only_the_data_directory(
    config: ClusterFile,
) -> None:
    for unit in sorted((DEPLOY / "systemd").glob("*.service")):
        values = _systemd(unit)
        assert values["Environment"] == f"CPN_CONFIG={CONFIG_PATH}", unit.name
        assert values["Restart"] == "always", unit.name
        assert values["User"] == "cpn", unit.name
        if "ReadWritePaths" in values:
            assert values["ReadWritePaths"] == str(config.data_dir), unit.name
            assert values["StateDirectory"] == config.data_dir.name, unit.name


def test_every_process_declares_its_metrics_port_where_prometheus_finds_it(
    config: ClusterFile,
) -> None:
    """The router's, each shard's and each worker's /metrics port: in the file, exposed by
    Compose, a container port of its pod, and in the pod's prometheus.io annotations."""
    services = _compose()["services"]
    workloads = {
        "cpn-router": [config.router.metrics],
        "cpn-shard": [s.metrics for s in config.shards],
        "cpn-fetch": [w.metrics for w in config.workers if w.role == "fetch"],
    }
    for name, metrics in workloads.items():
        ports = {_metrics_port(m) for m in metrics}
        assert len(ports) == 1, f"{name}: its pods share one template, so one metrics port"
        (port,) = ports
        kind = "Deployment" if name == "cpn-fetch" else "StatefulSet"
        template = _kind(kind, name)["spec"]["template"]
        assert template["metadata"]["annotations"] == {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(port),
        }, name
        container_ports = [
            p["containerPort"] for c in template["spec"]["containers"] for p in c.get("ports", [])
        ]
        assert port in container_ports, name
        compose_names = [n for n in services if n == name or n.startswith(f"{name}-")]
        assert compose_names, f"no Compose service for {name}"
        for compose_name in compose_names:
            assert str(port) in services[compose_name]["expose"], compose_name
