"""``cloakd worker``: a Dask worker that protects photos for a cloakd service (``engine: kind: dask``).

A thin wrapper around Dask's own Nanny (which restarts the worker process if it dies): one unit of the
``cloakd`` resource per thread, and the plugin that loads the face models once per worker process
(daemon/engine/remote.py). The same transport rule as the service's: plain TCP only over loopback unless
``--insecure``. When the scheduler goes away the worker joins it again as soon as it is back.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from pathlib import Path

from cloakd.core.errors import CloakdError

from ..config import DEVICES
from ..engine.address import EXAMPLE, clear_text_refusal, parse_address
from .options import add_command, number

log = logging.getLogger("distributed.cloakd")
#: pause before joining the scheduler again after it went away
REJOIN_SECONDS = 5.0
TLS_OPTIONS = ("tls_ca_file", "tls_cert", "tls_key")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(
        subparsers,
        "worker",
        summary="protect photos for a cloakd service on this machine (a Dask worker)",
        description="Join the Dask cluster whose scheduler is at ADDRESS and protect photos for the cloakd service "
        "that uses it (engine kind dask). The face models are loaded once; each thread protects one "
        "photo at a time. A worker never sees a user's files, account or configuration: it gets a "
        "photo's bytes and returns the protected bytes, which the service checks again. Start the "
        'scheduler with `dask scheduler` (README, "Several machines"); stop the worker with Ctrl-C.',
        example=f"cloakd worker --scheduler {EXAMPLE} --tls-ca-file ca.pem --tls-cert worker.pem --tls-key worker.key",
    )
    p.add_argument(
        "--scheduler",
        required=True,
        metavar="ADDRESS",
        help="the Dask scheduler: tls://HOST:PORT, or tcp://HOST:PORT on this machine (or with --insecure)",
    )
    p.add_argument(
        "--device",
        choices=DEVICES,
        default="auto",
        help="where the face models run: auto (a CUDA GPU if torch sees one), cpu or cuda (default auto)",
    )
    p.add_argument(
        "--nthreads",
        type=number(int, 1),
        default=1,
        metavar="N",
        help="photos protected at once (default 1; on a GPU several share it)",
    )
    p.add_argument(
        "--torch-threads", type=number(int, 1), default=1, metavar="N", help="CPU threads per photo (default 1)"
    )
    p.add_argument("--tls-ca-file", type=Path, metavar="FILE", help="the cluster's CA certificate (tls://)")
    p.add_argument("--tls-cert", type=Path, metavar="FILE", help="this worker's certificate, signed by the CA")
    p.add_argument("--tls-key", type=Path, metavar="FILE", help="this worker's private key")
    p.add_argument(
        "--insecure",
        action="store_true",
        help="allow plain TCP to a scheduler on another machine: photos cross the network unencrypted",
    )
    p.add_argument(
        "--worker-port",
        type=number(int, 1),
        metavar="PORT",
        help="the port this worker listens on for the scheduler (default: any free one; fix it to open "
        "it in a firewall)",
    )
    p.add_argument("--name", help="this worker's name in the cluster (default: its address)")
    p.set_defaults(func=worker)


def worker(args: argparse.Namespace) -> int:
    from ..engine.factory import dask_missing

    missing = dask_missing()
    if missing:
        raise CloakdError(f"cloakd worker: {missing}")
    address = _address(args)
    from ..engine.device import resolve
    from ..engine.security import security

    resolve(args.device)  # no CUDA here: say so now, not in the worker process
    tls = security(str(address), args.tls_ca_file, args.tls_cert, args.tls_key, "worker")
    asyncio.run(_serve(args, str(address), tls))
    return 0


def _address(args: argparse.Namespace):
    try:
        address = parse_address(args.scheduler)
    except ValueError as e:
        raise CloakdError(f"--scheduler: {e}") from None
    refusal = clear_text_refusal(address, args.insecure)
    if refusal:
        raise CloakdError(
            f"--scheduler: {refusal}; fix: use a tls:// scheduler with --tls-ca-file, --tls-cert and "
            f'--tls-key (README, "Several machines"), or --insecure if this network is yours alone'
        )
    given = [o for o in TLS_OPTIONS if getattr(args, o) is not None]
    if address.protocol == "tls" and len(given) < len(TLS_OPTIONS):
        raise CloakdError("--scheduler is tls://: give --tls-ca-file, --tls-cert and --tls-key")
    if address.protocol == "tcp" and given:
        raise CloakdError("--tls-ca-file, --tls-cert and --tls-key are for a tls:// scheduler")
    for option in given:
        path = getattr(args, option)
        if not (path.is_file() and os.access(path, os.R_OK)):
            raise CloakdError(f"--{option.replace('_', '-')} {path}: not a readable file")
    return address


async def _serve(args: argparse.Namespace, address: str, tls) -> None:
    import dask

    # Dask's Nanny starts its worker process with MALLOC_TRIM_THRESHOLD_=65536: glibc then returns freed
    # memory to the system at once, torch's tensors fault their pages in again at every step, and protect()
    # took 65% longer (an LFW photo: 12.7 s against 7.7 s, on a busy machine). glibc's own default stays.
    dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None})
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    while not stopping.is_set():
        try:
            await _one_membership(args, address, tls, stopping)
        except Exception as e:  # noqa: BLE001 - e.g. the scheduler refused the connection: try again
            log.warning("cannot join the scheduler %s: %s", address, e)
        if stopping.is_set():
            break
        log.warning("not a member of %s's cluster; joining it again in %.0f s", address, REJOIN_SECONDS)
        try:
            await asyncio.wait_for(stopping.wait(), REJOIN_SECONDS)
        except TimeoutError:
            pass


async def _one_membership(args: argparse.Namespace, address: str, tls, stopping: asyncio.Event) -> None:
    """One Nanny, from joining the cluster until the scheduler goes away or we are asked to stop."""
    from distributed import Nanny

    from ..engine.remote import RESOURCE, Models

    nanny = Nanny(
        address,
        nthreads=args.nthreads,
        resources={RESOURCE: args.nthreads},
        security=tls,
        dashboard=False,
        plugins={Models(args.device, args.torch_threads)},
        name=args.name,
        worker_port=args.worker_port or 0,
    )
    async with nanny:
        ended = asyncio.ensure_future(nanny.finished())
        await asyncio.wait([ended, asyncio.ensure_future(stopping.wait())], return_when=asyncio.FIRST_COMPLETED)
        if stopping.is_set():
            await nanny.close()
