"""The service on a real Dask cluster on loopback (``dask scheduler`` and ``cloakd worker`` subprocesses, TLS
with a self-signed CA): photos are protected on the workers and delivered by the service exactly once,
through a worker killed mid-photo, the service killed with photos in flight, and the scheduler down at start
and mid-burst; with ``fallback: local`` the service works alone while there is no scheduler."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from cloakd.daemon.ledger import DONE, Ledger
from clusterkit import Cluster, free_port, make_certificates
from conftest import CLOAKD
from servicekit import (
    Service,
    copy_as,
    files,
    shared_tmp,
    tiny_photos,
    user_tree,
    wait_for,
    write_config,
)
from test_service_e2e import FACES, accounted, outputs_named

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cluster")
    cluster = Cluster(folder, make_certificates(folder / "tls"))
    cluster.start_scheduler()
    for name in ("w1", "w2"):
        cluster.start_worker(name)
    try:
        cluster.wait_workers(2)
        yield cluster
    finally:
        cluster.stop()


def engine(cluster: Cluster, **settings) -> dict:
    tls = {key: str(path) for key, path in cluster.tls.items()}
    return {"kind": "dask", "scheduler": cluster.address, "tls": tls, **settings}


def status_of(config: Path) -> str:
    return subprocess.run(
        [str(CLOAKD), "status", "--config", str(config)], capture_output=True, text=True, timeout=60
    ).stdout


def engine_of(config: Path) -> dict:
    """The engine in `cloakd status --json`."""
    out = subprocess.run(
        [str(CLOAKD), "status", "--config", str(config), "--json"], capture_output=True, text=True, timeout=60
    ).stdout
    return json.loads(out)["engine"]


def final_rows(base: Path) -> list:
    ledger = Ledger(base / "state", readonly=True)
    try:
        return ledger.rows()
    finally:
        ledger.close()


def test_a_killed_worker_and_a_killed_service_lose_nothing(cluster, owner):
    with shared_tmp("cloakd-cluster-") as base:
        folders = user_tree(base, owner)
        (base / "staging").mkdir()
        names = tiny_photos(base / "staging", owner, 4)
        config = write_config(
            base / "cloakd.yaml", folders, owner.pw_name, engine=engine(cluster), stop_timeout_seconds=1
        )
        with Service(config) as service, cluster.client() as client:
            service.wait_ready()
            wait_for(lambda: "2 cloakd worker threads" in status_of(config), 30, "the engine line", service)
            engine_now = engine_of(config)
            assert engine_now["service_running"] and (engine_now["kind"], engine_now["state"]) == ("dask", "connected")
            assert engine_now["scheduler"] == cluster.address and engine_now["detail"] == "2 cloakd worker threads"
            copy_as(FACES[0], folders["out"] / FACES[0].name, owner)
            victim = cluster.busy_worker(client)
            cluster.workers[victim].kill9()  # mid-photo: the scheduler gives its task to the other worker
            for name in names:
                (base / "staging" / name).rename(folders["out"] / name)
            names.append(FACES[0].name)
            wait_for(lambda: accounted(folders, len(names)), 240, "every photo after a worker was killed", service)
            assert "1 cloakd worker thread" in status_of(config)
            copy_as(FACES[1], folders["out"] / FACES[1].name, owner)
            cluster.busy_worker(client)
            service.kill9()  # with the photo in flight on the cluster
        assert FACES[1].name not in files(folders["ready"])
        names.append(FACES[1].name)
        with Service(config) as service:
            service.wait_ready()
            wait_for(lambda: accounted(folders, len(names)), 180, "the photo in flight, after a restart", service)
            time.sleep(1)
            assert files(folders["ready"]) == outputs_named(names)  # each exactly once, no temporary files
            assert files(folders["archive"]) == sorted(names) and files(folders["held"]) == []
            assert "retry in" not in service.log()
            assert service.stop() == 0
        rows = {Path(r.path).name: r for r in final_rows(base)}
        assert {r.state for r in rows.values()} == {DONE}
        # the killed worker's photo was run again by Dask: the service never saw a failure
        assert rows[FACES[0].name].attempts == 1 and rows[FACES[1].name].attempts == 2
    assert "remove worker" in cluster.scheduler.log().lower()


def test_the_scheduler_down_at_start_and_mid_burst(cluster, owner):
    cluster.scheduler.kill9()
    with shared_tmp("cloakd-cluster-") as base:
        folders = user_tree(base, owner)
        names = tiny_photos(folders["out"], owner, 2)
        config = write_config(base / "cloakd.yaml", folders, owner.pw_name, engine=engine(cluster))
        with Service(config) as service:
            service.wait_ready()
            wait_for(lambda: "photos wait" in status_of(config), 30, "the engine line", service)
            engine_now = engine_of(config)
            assert (engine_now["state"], engine_now["fallback"]) == ("waiting for the scheduler", "wait")
            time.sleep(2)
            assert files(folders["ready"]) == [] and files(folders["held"]) == []  # waiting, not failing
            cluster.start_scheduler()  # the remaining worker joins it again by itself
            wait_for(lambda: accounted(folders, len(names)), 240, "the photos once the scheduler is up", service)
            copy_as(FACES[0], folders["out"] / FACES[0].name, owner)
            with cluster.client() as client:
                cluster.busy_worker(client)
            cluster.scheduler.kill9()  # with the photo in hand on a worker
            wait_for(lambda: f"{FACES[0].name} waits" in service.log(), 60, "the photo put back", service)
            assert files(folders["held"]) == []
            cluster.start_scheduler()
            names.append(FACES[0].name)
            wait_for(lambda: accounted(folders, len(names)), 240, "the photo once the scheduler is back", service)
            time.sleep(1)
            assert files(folders["ready"]) == outputs_named(names) and files(folders["held"]) == []
            assert service.stop() == 0
        assert all(r.state == DONE and r.attempts == 1 for r in final_rows(base))  # waiting is not an attempt


def test_fallback_local_works_alone_while_there_is_no_scheduler(owner):
    with shared_tmp("cloakd-fallback-") as base:
        folders = user_tree(base, owner)
        names = tiny_photos(folders["out"], owner, 2)
        settings = {"kind": "dask", "scheduler": f"tcp://127.0.0.1:{free_port()}", "fallback": "local"}
        config = write_config(base / "cloakd.yaml", folders, owner.pw_name, engine=settings)
        with Service(config) as service:
            service.wait_ready()
            wait_for(lambda: accounted(folders, len(names)), 120, "the photos, protected locally", service)
            assert files(folders["ready"]) == outputs_named(names)
            wait_for(lambda: "scheduler unreachable" in status_of(config), 60, "the connection refused", service)
            [engine] = [line for line in status_of(config).splitlines() if line.startswith("engine: ")]
            assert "working locally (fallback: local)" in engine
            engine_now = engine_of(config)
            assert (engine_now["state"], engine_now["fallback"]) == ("working locally (fallback: local)", "local")
            assert engine_now["detail"].startswith("scheduler unreachable") and engine_now["since"]
            assert service.stop() == 0
