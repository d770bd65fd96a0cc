"""Benchmark: the cluster across network namespaces with CURVE, against loopback without it.

``python -m bench.multihost [--quick]`` (root, ``ip netns``) runs, in one invocation,
the measurements of ``bench/cluster.py`` twice, with the same code
(:func:`bench.cluster.time_handoff`, :func:`bench.cluster.time_scraper`):

* **loopback**: every process on 127.0.0.1, no CURVE (as ``bench/cluster.py``);
* **multihost**: the router and each shard on their own "host", a network namespace
  with its own address, joined by veth pairs to a bridge
  (:class:`cluster.netns.VirtualNetwork`), started with ``cpn router --config`` / ``cpn
  shard --config`` from a cluster file with CURVE keys; this process, the client, joins
  the same switch and authenticates with a client key.

Figures: handoff throughput (fsync, two shards: every token crosses from shard 0 to
shard 1), handoff p99 latency under light load, and the scraper decision workload
(two shards, delays 0) in firings per second. Both hosts share this machine's 2 cores:
the namespaces add the veth/bridge path and CURVE's encryption, not real wire time.

The last line is one JSON object with the keys ``handoff_ratio_vs_loopback``,
``handoff_p99_ms`` (multihost), ``workload_ratio_vs_loopback`` (and the raw figures).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

from bench.cluster import ROOT, time_handoff, time_scraper
from cluster.client import use_client_keys
from cluster.netns import VirtualNetwork, unavailable
from cluster.processes import STDERR_FILE, ShardProcess, run_cpn, stop_all, wait_ready
from cluster.security import read_keypair, read_public
from router.shell.curve import CurveKeys

HOSTS: Final = ("router", "shard0", "shard1")
RATIO_MIN: Final = 0.5


class Multihost:
    """Starts clusters on the virtual network's hosts (a :data:`bench.cluster.StartCluster`)."""

    def __init__(self, net: VirtualNetwork, root: Path) -> None:
        self.net = net
        self.root = root
        self.keys_dir = root / "keys"
        self.ports = itertools.count(7000, 10)  # a fresh port pair per cluster
        env = {"PYTHONPATH": str(ROOT)}
        for name in ("server", "client"):
            done = run_cpn("keys", "generate", str(self.keys_dir), "--name", name, env=env)
            if done.returncode != 0:
                raise SystemExit(f"cpn keys generate failed: {done.stderr.strip()}")

    def client_keys(self) -> CurveKeys:
        public, secret = read_keypair(self.keys_dir / "client.key_secret")
        return CurveKeys(public, secret, read_public(self.keys_dir / "server.key"))

    def __call__(self, net: str, root: Path, shards: int, *, durability: str) -> list[ShardProcess]:
        port = next(self.ports)
        a = self.net.addresses
        shard_tables = "".join(
            f'[[shard]]\nid = {k}\nhost = "shard{k}"\n'
            f'endpoint = "tcp://{a[f"shard{k}"]}:{port + 1}"\n'
            for k in range(shards)
        )
        root.mkdir(parents=True, exist_ok=True)
        config = root / "cluster.toml"
        config.write_text(
            f'[cluster]\nid = "bench"\nnet = "{net}"\ndata_dir = "{root}"\n'
            f'durability = "{durability}"\n'
            f'[router]\nhost = "router"\nendpoint = "tcp://{a["router"]}:{port}"\n'
            f"[shards]\ncount = {shards}\n{shard_tables}"
            f'[security]\nserver_key = "{self.keys_dir}/server.key_secret"\n'
            f'client_key = "{self.keys_dir}/client.key_secret"\n'
            f'allowed_clients = ["{self.keys_dir}/client.key"]\n'
        )
        handles: list[ShardProcess] = []
        try:
            handles.append(self._start("router", root / "router", config, ("router",)))
            for k in range(shards):
                args = ("shard", "--shard-id", str(k))
                handles.append(self._start(f"shard{k}", root / f"shard-{k}", config, args))
            for handle in handles:
                wait_ready(handle)
            return handles
        except BaseException:
            stop_all(handles)
            raise

    def _start(
        self, host: str, data_dir: Path, config: Path, args: tuple[str, ...]
    ) -> ShardProcess:
        data_dir.mkdir(parents=True, exist_ok=True)
        argv = [*self.net.exec_prefix(host), sys.executable, "-m", "cluster.cli", *args]
        argv += ["--config", str(config)]
        with (data_dir / STDERR_FILE).open("ab") as stderr:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
        return ShardProcess(data_dir, process, args=argv, role=args[0])


def _measure(
    tokens: int, latency_tokens: int, targets: int, root: Path, start: Any
) -> dict[str, Any]:
    handoff = time_handoff(tokens, latency_tokens, root, start=start)
    scraper = time_scraper(targets, 2, root, start=start)
    return {"handoff": handoff, "scraper": scraper}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer tokens and targets (< 60 s)")
    args = parser.parse_args(argv)
    why_not = unavailable()
    if why_not is not None:
        print(f"bench/multihost.py needs network namespaces: {why_not}", file=sys.stderr)
        return 2
    tokens = 50_000 if args.quick else 400_000
    latency_tokens = 1_000 if args.quick else 10_000
    targets = 4_000 if args.quick else 40_000
    root = Path(tempfile.mkdtemp(prefix="cpn-bench-multihost-"))
    started = time.perf_counter()
    try:
        use_client_keys(None)
        loopback = _measure(tokens, latency_tokens, targets, root / "loopback", None)
        with VirtualNetwork(HOSTS) as net:
            hosts = Multihost(net, root / "multihost")
            use_client_keys(hosts.client_keys())  # every client of this process uses CURVE
            try:
                multihost = _measure(tokens, latency_tokens, targets, root / "multihost", hosts)
            finally:
                use_client_keys(None)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    handoff_ratio = multihost["handoff"]["per_s"] / loopback["handoff"]["per_s"]
    workload_ratio = multihost["scraper"]["per_s"] / loopback["scraper"]["per_s"]
    for name, figures in (("loopback, no CURVE", loopback), ("namespaces + CURVE", multihost)):
        handoff, scraper = figures["handoff"], figures["scraper"]
        print(
            f"{name}: handoff {handoff['per_s']:,.0f} tokens/s ({handoff['tokens']:,} tokens, "
            f"{handoff['tokens_per_message']:,.0f} per message), light-load latency p50 "
            f"{handoff['p50_ms']:.1f} ms p99 {handoff['p99_ms']:.1f} ms; scraper workload "
            f"(2 shards, {targets:,} targets) {scraper['per_s']:,.0f} firings/s"
        )
    verdict = {True: "ok", False: "MISSED"}
    print(
        f"ratios vs loopback: handoff {handoff_ratio:.2f} "
        f"({verdict[handoff_ratio >= RATIO_MIN]}), workload {workload_ratio:.2f} "
        f"({verdict[workload_ratio >= RATIO_MIN]}); target >= {RATIO_MIN}"
    )
    print(
        f"wall time {time.perf_counter() - started:.1f} s, load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print(
        json.dumps(
            {
                "handoff_ratio_vs_loopback": round(handoff_ratio, 3),
                "handoff_p99_ms": multihost["handoff"]["p99_ms"],
                "workload_ratio_vs_loopback": round(workload_ratio, 3),
                "handoff_tokens_per_s": round(multihost["handoff"]["per_s"]),
                "handoff_tokens_per_s_loopback": round(loopback["handoff"]["per_s"]),
                "handoff_p99_ms_loopback": loopback["handoff"]["p99_ms"],
                "workload_firings_per_s": round(multihost["scraper"]["per_s"]),
                "workload_firings_per_s_loopback": round(loopback["scraper"]["per_s"]),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
