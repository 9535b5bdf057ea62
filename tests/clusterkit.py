"""A real Dask cluster on loopback for the engine tests: ``dask scheduler`` and ``cloakd worker`` as
subprocesses, each in a session of its own, so that a kill takes a worker's Nanny and its worker process
together. Certificates for TLS are made with openssl: a CA and one certificate it signs for 127.0.0.1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import CLOAKD

DASK = CLOAKD.with_name("dask")
#: the environment of the cluster's processes: one thread each, as on this shared 2-core machine
QUIET = {"OMP_NUM_THREADS": "1", "CLOAKD_THREADS": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_certificates(folder: Path) -> dict[str, Path]:
    """A CA and a certificate for 127.0.0.1 signed by it (the scheduler, the workers and the service all
    show this one): {"ca": ..., "cert": ..., "key": ...}."""
    if not Path("/usr/bin/openssl").exists():
        pytest.fail("openssl is needed to make the test certificates (apt-get install openssl)")
    folder.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    (folder / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    steps = [
        ["req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=cloakd test CA"],
        ["req", *ec, "-keyout", "member.key", "-out", "member.csr", "-subj", "/CN=127.0.0.1"],
        [
            "x509",
            "-req",
            "-in",
            "member.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "member.pem",
            "-days",
            "2",
            "-extfile",
            "san.cnf",
        ],
    ]
    for step in steps:
        subprocess.run(["openssl", *step], cwd=folder, check=True, capture_output=True)
    return {"ca": folder / "ca.pem", "cert": folder / "member.pem", "key": folder / "member.key"}


def tls_options(tls: dict[str, Path] | None) -> list[str]:
    if tls is None:
        return []
    return ["--tls-ca-file", str(tls["ca"]), "--tls-cert", str(tls["cert"]), "--tls-key", str(tls["key"])]


class Proc:
    """A subprocess in its own session, its output in ``log_path``."""

    def __init__(self, args: list[str], log_path: Path):
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **QUIET}
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def kill9(self) -> None:
        """SIGKILL to the whole session (a worker's Nanny and its worker process alike)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
        self.kill9()


class Cluster:
    """``dask scheduler`` on 127.0.0.1:``port`` and named ``cloakd worker``s, with or without TLS."""

    def __init__(self, folder: Path, tls: dict[str, Path] | None = None):
        self.folder, self.tls = folder, tls
        self.port = free_port()
        self.address = f"{'tls' if tls else 'tcp'}://127.0.0.1:{self.port}"
        self.scheduler: Proc | None = None
        self.workers: dict[str, Proc] = {}

    def start_scheduler(self) -> None:
        protocol = ["--protocol", "tls"] if self.tls else []
        self.scheduler = Proc(
            [
                str(DASK),
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--no-dashboard",
                *protocol,
                *tls_options(self.tls),
            ],
            self.folder / "scheduler.log",
        )

    def start_worker(self, name: str) -> None:
        self.workers[name] = Proc(
            [
                str(CLOAKD),
                "worker",
                "--scheduler",
                self.address,
                "--device",
                "cpu",
                "--name",
                name,
                *tls_options(self.tls),
            ],
            self.folder / f"{name}.log",
        )

    def client(self):
        from distributed import Client
        from distributed.security import Security

        security = None
        if self.tls:
            security = Security(
                tls_ca_file=str(self.tls["ca"]),
                tls_client_cert=str(self.tls["cert"]),
                tls_client_key=str(self.tls["key"]),
                require_encryption=True,
            )
        return Client(self.address, security=security, timeout=30, set_as_default=False)

    def wait_workers(self, count: int, timeout: float = 180) -> None:
        """Until ``count`` cloakd workers (models loaded) are registered with the scheduler."""
        deadline = time.monotonic() + timeout
        with self.client() as client:
            while time.monotonic() < deadline:
                if len(client.scheduler_info()["workers"]) >= count:
                    return
                time.sleep(0.5)
        raise AssertionError(
            f"{count} workers did not join within {timeout} s:\n" + "\n".join(w.log() for w in self.workers.values())
        )

    def busy_worker(self, client, timeout: float = 120) -> str:
        """The name of a worker that has one of cloakd's tasks in hand (waits for one)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            names = {a: w["name"] for a, w in client.scheduler_info()["workers"].items()}
            for address, keys in client.processing().items():
                if any(str(k).startswith("cloakd-") for k in keys):
                    return names[address]
            time.sleep(0.1)
        raise AssertionError("no cloakd task started on a worker")

    def stop(self) -> None:
        for worker in self.workers.values():
            worker.stop()
        if self.scheduler is not None:
            self.scheduler.stop()
