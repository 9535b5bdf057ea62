"""Who runs each photo's protect(): the service's own threads (``kind: local``) or a Dask cluster.

The service stays the one writer: it reads each photo with the user's rights, builds the request, and
delivers. An engine only turns (photo bytes, request) into verified bytes:

- local.py: in-process, as the service always did;
- cluster.py: the service side of a Dask cluster (connection, capacity, fallback, re-verification of what
  comes back); remote.py: what runs on a Dask worker (the models, loaded once per worker process, and the
  task), started by ``cloakd worker`` (daemon/cli/worker.py); security.py: TLS; address.py: the
  transport rule;
- factory.py: the engine the configuration asks for; status.py: the engine's state as the service
  publishes it and ``cloakd status`` shows it; device.py: CPU or CUDA.

Nothing here imports distributed at import time: with ``kind: local`` the service runs without it.
"""
