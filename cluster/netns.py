"""Hosts on a private network of Linux network namespaces, for tests and benchmarks (SHELL).

:class:`VirtualNetwork` builds, for one run, a switch (a namespace holding a bridge)
and one namespace per "host", each joined to the switch by a veth pair and given its
own address in a private /24; this process (in the root namespace) joins through one
more veth pair, so it can talk to every host as a client would. Processes run on a
host with ``ip netns exec``, which execs the command: the pid is the process's own.
Links are cut and restored per host (:meth:`cut`, :meth:`restore`), two hosts are
partitioned from each other alone (:meth:`partition`, :meth:`heal`), and, where the
kernel has ``sch_netem``, links are delayed and lossy (:meth:`impair`).

All names carry a per-run tag, so that parallel runs never collide, and stay within
Linux's 15-character interface names. :meth:`close` removes everything the run made
(deleting a namespace deletes its veth ends and their peers), and runs even when a
test fails; it never touches a name without this run's tag. Needs root and ``ip``:
:func:`unavailable` says why not, for a skip message.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Final

from nets.errors import CpnError

IP_TIMEOUT_S: Final = 10.0
NAME_CHARS_MAX: Final = 15  # IFNAMSIZ - 1
HOSTS_MAX: Final = 200
SUBNET_TRIES_MAX: Final = 50


def unavailable() -> str | None:
    """Why namespaces cannot be made here (None: they can)."""
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    tag = f"cpnp{os.getpid() % 100_000:05d}"
    made = subprocess.run(["ip", "netns", "add", tag], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        return f"`ip netns add` fails here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", tag], capture_output=True, check=False)
    return None


def _ip(*args: str, namespace: str | None = None, check: bool = True) -> str:
    argv = ["ip", *(("-n", namespace) if namespace else ()), *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=IP_TIMEOUT_S, check=False)
    if check and done.returncode != 0:
        raise CpnError(f"`{' '.join(argv)}` failed: {done.stderr.strip()}")
    return done.stdout


@dataclass
class VirtualNetwork:
    """A switch and hosts (see the module docstring); use as a context manager."""

    hosts: tuple[str, ...]
    tag: str = field(default_factory=lambda: f"c{random.SystemRandom().randrange(16**6):06x}")
    subnet: ipaddress.IPv4Network = field(init=False)
    addresses: dict[str, str] = field(init=False, default_factory=dict)
    namespaces: dict[str, str] = field(init=False, default_factory=dict)
    _made: list[str] = field(init=False, default_factory=list)  # namespaces, in order
    _root_link: str = field(init=False, default="")

    def __post_init__(self) -> None:
        assert 0 < len(self.hosts) <= HOSTS_MAX, self.hosts
        assert len(set(self.hosts)) == len(self.hosts), self.hosts

    @property
    def switch(self) -> str:
        return f"{self.tag}sw"

    def _link(self, index: int, side: str) -> str:
        name = f"{self.tag}{side}{index}"
        assert len(name) <= NAME_CHARS_MAX, name
        return name

    def __enter__(self) -> VirtualNetwork:
        try:
            self.open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def open(self) -> None:
        """Make the switch, the hosts and this process's link.

        Raises:
            CpnError: an ``ip`` command failed (the message quotes it).
        """
        self.subnet = self._free_subnet()
        addresses = list(self.subnet.hosts())
        _ip("netns", "add", self.switch)
        self._made.append(self.switch)
        _ip("link", "add", "br0", "type", "bridge", namespace=self.switch)
        _ip("link", "set", "br0", "up", namespace=self.switch)
        # This process's side: the root namespace joins the switch like a host.
        self._root_link = self._link(0, "r")
        _ip("link", "add", self._root_link, "type", "veth", "peer", "name", "up0",
            "netns", self.switch)  # fmt: skip
        self._attach("up0")
        _ip("addr", "add", f"{addresses[0]}/{self.subnet.prefixlen}", "dev", self._root_link)
        _ip("link", "set", self._root_link, "up")
        for index, host in enumerate(self.hosts, start=1):
            namespace = f"{self.tag}h{index}"
            _ip("netns", "add", namespace)
            self._made.append(namespace)
            self.namespaces[host] = namespace
            _ip("link", "add", f"up{index}", "type", "veth", "peer", "name", "eth0",
                "netns", namespace, namespace=self.switch)  # fmt: skip
            self._attach(f"up{index}")
            address = str(addresses[index])
            self.addresses[host] = address
            _ip("addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", "eth0",
                namespace=namespace)  # fmt: skip
            _ip("link", "set", "eth0", "up", namespace=namespace)
            _ip("link", "set", "lo", "up", namespace=namespace)

    def _attach(self, port: str) -> None:
        _ip("link", "set", port, "master", "br0", namespace=self.switch)
        _ip("link", "set", port, "up", namespace=self.switch)

    def _free_subnet(self) -> ipaddress.IPv4Network:
        """A random 10.x.y.0/24 that no route or address of this host overlaps."""
        taken = _ip("-4", "route", "show", "table", "all") + _ip("-4", "addr", "show")
        rng = random.SystemRandom()
        for _ in range(SUBNET_TRIES_MAX):
            subnet = ipaddress.IPv4Network(
                f"10.{rng.randrange(200, 250)}.{rng.randrange(256)}.0/24"
            )
            if f"10.{subnet.network_address.packed[1]}." not in taken:
                return subnet
        raise CpnError("no free 10.200-249.x.0/24 subnet for the test network")

    # -- running and breaking -------------------------------------------------------------

    def exec_prefix(self, host: str) -> list[str]:
        """The argv prefix that runs a command on ``host``."""
        return ["ip", "netns", "exec", self.namespaces[host]]

    def _switch_port(self, host: str) -> str:
        return f"up{self.hosts.index(host) + 1}"

    def cut(self, host: str) -> None:
        """Take ``host``'s link down: nothing reaches it, nothing leaves it."""
        _ip("link", "set", self._switch_port(host), "down", namespace=self.switch)

    def restore(self, host: str) -> None:
        """Bring ``host``'s link back up."""
        _ip("link", "set", self._switch_port(host), "up", namespace=self.switch)

    def partition(self, host: str, other: str) -> None:
        """Drop everything between ``host`` and ``other`` only (a blackhole route on each
        side); both keep talking to every other host."""
        for here, there in ((host, other), (other, host)):
            _ip("route", "add", "blackhole", f"{self.addresses[there]}/32",
                namespace=self.namespaces[here])  # fmt: skip

    def heal(self, host: str, other: str) -> None:
        """Undo :meth:`partition`."""
        for here, there in ((host, other), (other, host)):
            _ip("route", "del", "blackhole", f"{self.addresses[there]}/32",
                namespace=self.namespaces[here])  # fmt: skip

    def impair(self, host: str, *, delay_ms: int, loss_pct: float) -> str | None:
        """Delay and drop ``host``'s outgoing packets (netem); why not, if the kernel can't."""
        done = subprocess.run(
            [*self.exec_prefix(host), "tc", "qdisc", "replace", "dev", "eth0", "root", "netem",
             "delay", f"{delay_ms}ms", "loss", f"{loss_pct}%"],
            capture_output=True, text=True, timeout=IP_TIMEOUT_S, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            return f"tc netem is not available here: {done.stderr.strip() or done.returncode}"
        return None

    def close(self) -> None:
        """Delete every namespace (and so every link) this run made; never fails."""
        if self._root_link:
            _ip("link", "del", self._root_link, check=False)
        for namespace in reversed(self._made):
            with contextlib.suppress(CpnError, subprocess.TimeoutExpired):
                _ip("netns", "del", namespace, check=False)
        self._made.clear()
