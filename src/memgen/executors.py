"""Where a sweep's per-K work runs: here, in a local process pool, or as Ray tasks.

Every executor runs the same task, :func:`run_K_task`: it loads the data pool itself, runs
the stages of one K into ``RUN/cache`` (cached and atomic, see :mod:`memgen.sweep`) and
sends back only the small :class:`~memgen.sweep.StageResult`. The driver then aggregates
across K. Workers therefore need to see the run folder — on a Ray cluster, put it on a
file system that every node mounts — and to have memgen installed.

Tasks of different K write to different cache folders, so they never collide; a killed
sweep resumes from whatever every task had finished, whichever executor ran it.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from memgen.config import SweepConfig
from memgen.errors import UserError
from memgen.sweep import StageResult, load_pool, run_K


def run_K_task(config: SweepConfig, run: str, K: int) -> StageResult:
    """One K's stages in a worker: the worker's torch threads match its CPU share."""
    torch.set_num_threads(max(1, int(config.executor.cpus_per_task)))
    return run_K(Path(run), load_pool(config), K, config)


def execute(config: SweepConfig, run: Path, pool: np.ndarray,
            progress: bool = True) -> list[StageResult]:
    """Every K of the config, by the executor it names; results sorted by K."""
    from tqdm.auto import tqdm

    Ks = sorted(config.Ks)
    ex = config.executor
    bar = tqdm(total=len(Ks), desc=f"sweep ({ex.kind})", unit="K", disable=not progress)
    if ex.kind == "ray":
        results = _ray(config, run, Ks, bar)
    elif ex.workers > 1:
        results = _process_pool(config, run, Ks, bar)
    else:
        results = _here(config, run, pool, Ks, bar)
    bar.close()
    return sorted(results, key=lambda r: r.K)


def _here(config: SweepConfig, run: Path, pool: np.ndarray, Ks: Iterable[int],
          bar) -> list[StageResult]:
    """In this process, with torch's threads set to the task's CPU share meanwhile (two
    threads on a core that another process holds wait on each other: 20–40× slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(config.executor.cpus_per_task)))
    try:
        results = []
        for K in Ks:
            results.append(run_K(run, pool, K, config, progress=not bar.disable))
            bar.update(1)
        return results
    finally:
        torch.set_num_threads(before)


def _process_pool(config: SweepConfig, run: Path, Ks: Iterable[int], bar) -> list[StageResult]:
    # spawn, not fork: a forked child of a process that has used torch's thread pools hangs
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(config.executor.workers,
                                                mp_context=context) as workers:
        futures = [workers.submit(run_K_task, config, str(run), K) for K in Ks]
        results = []
        for future in concurrent.futures.as_completed(futures):
            results.append(future.result())
            bar.update(1)
    return results


def _ray(config: SweepConfig, run: Path, Ks: Iterable[int], bar) -> list[StageResult]:
    import ray

    ex = config.executor
    started = not ray.is_initialized()
    if started and ex.address:
        ray.init(address=ex.address, log_to_driver=False, configure_logging=False)
    elif started:  # a private local instance with CPUs for the requested workers
        ray.init(num_cpus=int(np.ceil(ex.workers * ex.cpus_per_task)),
                 object_store_memory=256 * 2**20, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        if ex.gpus_per_task > gpus:  # the task could never be scheduled: fail, do not wait
            raise UserError(f"executor.gpus_per_task = {ex.gpus_per_task} but the Ray "
                             f"cluster has {gpus:g} GPUs")
        task = ray.remote(num_cpus=ex.cpus_per_task, num_gpus=ex.gpus_per_task,
                          max_retries=0)(run_K_task)
        pending = [task.remote(config, str(run.resolve()), K) for K in Ks]
        results = []
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            results.extend(ray.get(done))
            bar.update(len(done))
        return results
    finally:
        if started:
            ray.shutdown()
