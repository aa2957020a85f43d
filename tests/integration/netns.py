"""Hosts made of Linux network namespaces, for the multi-host test.

    NetnsLab.create(n_hosts)   `n_hosts` namespaces, each with one address on a private
                               /24, joined by a bridge that lives in a namespace of its own
                               (the machine's own network is never touched)
    lab.spawn(host, argv, ...) a process inside a host's namespace (`ip netns exec`)
    lab.kill_host(host)        SIGKILL every process started there, delete its namespace
    lab.close()                kill everything, delete every namespace (also on failure)
    netns_unavailable()        why namespaces cannot be made here (None: they can)

Names carry a random tag, so concurrent runs never collide; a crashed run's namespaces
are tagged `orcT` and removed by the next run (`remove_stale`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

TAG = "orcT"
IP = shutil.which("ip")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    assert IP is not None
    return subprocess.run([IP, *args], check=check, capture_output=True, text=True, timeout=20)


def netns_unavailable() -> str | None:
    """Why this machine cannot run the multi-host test, or None."""
    if IP is None:
        return "no `ip` command (iproute2)"
    if os.geteuid() != 0:
        return "network namespaces need root (run as root, as CI does)"
    probe = f"{TAG}probe{uuid.uuid4().hex[:4]}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` is not permitted here: {made.stderr.strip()}"
    _ip("netns", "delete", probe, check=False)
    return None


def remove_stale() -> None:
    """Delete namespaces a crashed earlier run left behind."""
    listed = _ip("netns", "list", check=False).stdout
    for line in listed.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(TAG):
            _ip("netns", "delete", name, check=False)


@dataclass
class Host:
    name: str  # the namespace
    address: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    alive: bool = True


class NetnsLab:
    def __init__(self, tag: str, subnet: str) -> None:
        self.tag = tag
        self.subnet = subnet  # "10.251.N"
        self.hub = f"{TAG}{tag}hub"
        self.hosts: list[Host] = []

    @classmethod
    def create(cls, n_hosts: int) -> NetnsLab:
        tag = uuid.uuid4().hex[:4]
        lab = cls(tag, f"10.251.{int(tag[:2], 16)}")
        try:
            lab._build(n_hosts)
        except BaseException:
            lab.close()
            raise
        return lab

    def _in(self, namespace: str, *args: str) -> None:
        _ip("-n", namespace, *args)

    def _build(self, n_hosts: int) -> None:
        _ip("netns", "add", self.hub)
        self._in(self.hub, "link", "add", "br0", "type", "bridge")
        self._in(self.hub, "link", "set", "br0", "up")
        for index in range(1, n_hosts + 1):
            host = Host(name=f"{TAG}{self.tag}h{index}", address=f"{self.subnet}.{index}")
            self.hosts.append(host)
            _ip("netns", "add", host.name)
            self._in(host.name, "link", "set", "lo", "up")
            inside, outside = f"eth{index}", f"p{self.tag}{index}"
            # The pair is made in the host's namespace; one end moves to the hub's bridge.
            self._in(host.name, "link", "add", inside, "type", "veth", "peer", "name", outside)
            self._in(host.name, "link", "set", outside, "netns", self.hub)
            self._in(self.hub, "link", "set", outside, "master", "br0")
            self._in(self.hub, "link", "set", outside, "up")
            self._in(host.name, "addr", "add", f"{host.address}/24", "dev", inside)
            self._in(host.name, "link", "set", inside, "up")

    def spawn(
        self,
        host: Host,
        argv: list[str],
        *,
        env: dict[str, str],
        log: Path,
        cwd: Path | None = None,
        stdout_pipe: bool = False,
    ) -> subprocess.Popen[bytes]:
        """Start `argv` in the host's namespace (`ip netns exec` execs it: the pid is
        the program's own). Its stderr goes to `log` (and stdout too, unless piped)."""
        assert IP is not None
        with open(log, "ab") as sink:
            proc = subprocess.Popen(
                [IP, "netns", "exec", host.name, *argv],
                env=env,
                cwd=cwd,
                stdout=subprocess.PIPE if stdout_pipe else sink,
                stderr=sink,
                start_new_session=True,
            )
        host.procs.append(proc)
        return proc

    def kill_host(self, host: Host) -> None:
        """The host dies: every process in it gets SIGKILL, then its namespace (and its
        link to the bridge) is deleted."""
        for proc in host.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        _ip("netns", "delete", host.name, check=False)
        host.alive = False

    def close(self) -> None:
        for host in self.hosts:
            if host.alive:
                self.kill_host(host)
        _ip("netns", "delete", self.hub, check=False)
