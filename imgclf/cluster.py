"""The Dask cluster the sweep runs on (issue 39): a local one on this machine, or the running scheduler that Dask's
own config names, checked before any entry is handed to it.

- No scheduler named (`DASK_SCHEDULER_ADDRESS`, Dask's `scheduler-address` config): `local_cluster` starts one
  worker process per environment of `imgclf.parallel.worker_envs` (each with its own `CUDA_VISIBLE_DEVICES`, and
  a `GPU` resource of 1 / the workers sharing its GPU), one thread each, everything bound to 127.0.0.1, no
  dashboard. Dask sets no `CUDA_VISIBLE_DEVICES` itself, so each worker's nanny gets it in its environment.
- A scheduler named: `connect` joins it; its workers are whatever that cluster runs.
- `check_cluster`: the workers have the resources the entries ask for, and the libraries that compute a result
  (`imgclf.common.library_versions`) at the driver's versions; otherwise one line that names the fix.

Not yet the runner of `make sweep`: imgclf/parallel.py still uses imgclf/pool.py (see the branch's report).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from imgclf.common import PipelineError, library_versions

log = logging.getLogger(__name__)

HOST = "127.0.0.1"  # the local cluster listens on loopback only
CONNECT_TIMEOUT_S = 10


def gpu_resources(envs: list[dict[str, str]]) -> list[dict[str, float]]:
    """Each worker's Dask resources: on a GPU, `GPU` = 1 / the number of workers that share that GPU (so an entry
    asking for a whole GPU fits only a worker that has one alone), none on the CPU."""
    gpus = [env.get("CUDA_VISIBLE_DEVICES") for env in envs]
    return [{"GPU": 1 / gpus.count(gpu)} if gpu else {} for gpu in gpus]


def worker_specs(envs: list[dict[str, str]]) -> dict[int, dict[str, Any]]:
    """The SpecCluster worker specs: a nanny (which restarts a dead worker) per environment, one thread, on
    loopback, with its GPU resource."""
    from distributed import Nanny

    return {
        k: {
            "cls": Nanny,
            "options": {"nthreads": 1, "host": HOST, "env": env, "resources": res, "dashboard_address": None},
        }
        for k, (env, res) in enumerate(zip(envs, gpu_resources(envs), strict=True))
    }


@contextlib.contextmanager
def local_cluster(envs: list[dict[str, str]]) -> Iterator:
    """A cluster on this machine, one worker per environment in `envs`, closed at the end of the block."""
    from distributed import Scheduler, SpecCluster

    scheduler = {"cls": Scheduler, "options": {"host": HOST, "dashboard_address": None}}
    with SpecCluster(workers=worker_specs(envs), scheduler=scheduler, silence_logs=logging.WARNING) as cluster:
        yield cluster


def scheduler_address() -> str | None:
    """The scheduler Dask's config names (`scheduler-address`, set by `DASK_SCHEDULER_ADDRESS`), or None."""
    import dask

    return dask.config.get("scheduler-address", None) or None


@contextlib.contextmanager
def connect(envs: list[dict[str, str]]) -> Iterator:
    """A Client of the named scheduler, or of a local cluster of `envs` when none is named. An unreachable
    scheduler is one line naming the address and the fix."""
    from distributed import Client

    address = scheduler_address()
    if address is None:
        with local_cluster(envs) as cluster, Client(cluster) as client:
            yield client
        return
    try:
        client = Client(address, timeout=f"{CONNECT_TIMEOUT_S}s")
    except OSError as e:
        raise PipelineError(
            f"no Dask scheduler answers at {address} (DASK_SCHEDULER_ADDRESS) within {CONNECT_TIMEOUT_S} s: "
            f"start it (`dask scheduler`) or unset DASK_SCHEDULER_ADDRESS to run on this machine. ({e})"
        ) from None
    with client:
        yield client


def check_cluster(client, needs: dict[str, float], driver: dict[str, str | None] | None = None) -> None:
    """Raise one line when no worker has the resources `needs` (e.g. {"GPU": 1}) or a worker's computing
    libraries are not at the driver's versions (`driver`, default: this process's)."""
    workers = client.scheduler_info(n_workers=-1)["workers"]
    if not workers:
        raise PipelineError("the Dask cluster has no worker: start `dask worker <scheduler address>` on a machine.")
    if needs and not any(
        all(info.get("resources", {}).get(name, 0) >= amount for name, amount in needs.items())
        for info in workers.values()
    ):
        have = sorted({str(info.get("resources") or {}) for info in workers.values()})
        raise PipelineError(
            f"no Dask worker has the resources an entry needs ({needs}; the workers have {', '.join(have)}): start "
            "workers with them (`dask worker ... --resources GPU=1`), or train on the CPU."
        )
    driver = library_versions() if driver is None else driver
    for address, versions in client.run(library_versions).items():
        if differ := {n: (v, versions.get(n)) for n, v in driver.items() if versions.get(n) != v}:
            names = ", ".join(f"{n} {w} (here {v})" for n, (v, w) in differ.items())
            raise PipelineError(
                f"the Dask worker at {address} has other library versions: {names}. Install requirements.txt "
                "there: results computed with other versions are not comparable."
            )
