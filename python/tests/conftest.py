"""A real ``featmux serve`` for the tests: a temp data directory, tokens,
ports chosen by the OS (read back from its "listening" log line). The
binary is ``$FEATMUX_BIN``, else the debug build ``./dev test`` made."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ADMIN = "py-admin"
DATA = "py-data"


def featmux_binary() -> str:
    if "FEATMUX_BIN" in os.environ:
        return os.environ["FEATMUX_BIN"]
    target = os.environ.get("CARGO_TARGET_DIR", "/var/tmp/featmux-target")
    return str(Path(target) / "debug" / "featmux")


class Server:
    def __init__(self, tmp: Path, extra_config: str = ""):
        config = tmp / "featmux.toml"
        config.write_text(
            f'data_dir = "{tmp / "data"}"\n'
            'grpc_addr = "127.0.0.1:0"\nhttp_addr = "127.0.0.1:0"\nlog_format = "json"\n'
            f'grpc_unix_socket = "{tmp / "grpc.sock"}"\n'
            f'[auth]\nadmin_token = "{ADMIN}"\ndata_token = "{DATA}"\n'
            "[limits]\nmax_memory_bytes = 268435456\n" + extra_config
        )
        self.log = open(tmp / "server.log", "w+")
        self.process = subprocess.Popen(
            [featmux_binary(), "serve", "--config", str(config)], stderr=self.log, stdout=subprocess.DEVNULL
        )
        self.grpc, self.http = self._addresses()
        self.unix = f"unix://{tmp / 'grpc.sock'}"
        self._wait_ready()

    def _addresses(self) -> tuple[str, str]:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"featmux serve exited: {self._log_text()}"
            for line in self._log_text().splitlines():
                record = json.loads(line) if line.startswith("{") else {}
                fields = {**record, **record.get("fields", {})}
                if fields.get("message") == "listening":
                    return f"http://{fields['grpc']}", f"http://{fields['http']}"
            time.sleep(0.05)
        raise AssertionError(f"featmux serve did not listen: {self._log_text()}")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.http}/readyz") as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"featmux serve not ready: {self._log_text()}")

    def _log_text(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> None:
        self.process.terminate()
        assert self.process.wait(timeout=30) == 0, self._log_text()


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("featmux"))
    yield server
    server.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """One etcd member and three ``featmux serve`` shards joined to it."""

    PREFIX = "/featmux/pytest"

    def __init__(self, tmp: Path):
        client, peer = free_port(), free_port()
        self.etcd = f"127.0.0.1:{client}"
        self.etcd_log = open(tmp / "etcd.log", "w")
        self.etcd_process = subprocess.Popen(
            ["etcd", "--name", "e0", "--data-dir", str(tmp / "etcd"),
             "--listen-client-urls", f"http://{self.etcd}", "--advertise-client-urls", f"http://{self.etcd}",
             "--listen-peer-urls", f"http://127.0.0.1:{peer}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
             "--initial-cluster", f"e0=http://127.0.0.1:{peer}"],
            stdout=subprocess.DEVNULL, stderr=self.etcd_log,
        )
        self.shards = []
        for i in range(3):
            shard_dir = tmp / f"shard{i}"
            shard_dir.mkdir()
            config = (f'[cluster]\netcd = ["{self.etcd}"]\nprefix = "{self.PREFIX}"\n'
                      f'shard_id = "s{i}"\npartitions = 48\n')
            self.shards.append(Server(shard_dir, config))

    def stop(self) -> None:
        for shard in self.shards:
            shard.stop()
        self.etcd_process.terminate()
        self.etcd_process.wait(timeout=30)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    cluster = Cluster(tmp_path_factory.mktemp("cluster"))
    yield cluster
    cluster.stop()
