"""Where a sweep's per-K work runs: here, in a local process pool, or as Ray tasks.

:func:`execute` maps a function of K over the K values, by the executor a config names:
one :class:`Executor` in ``EXECUTORS`` (the sweep config's ``executor.kind`` choices and
checks, and ``memgen sweep --executor``, read it).
The function is passed in (for the pool and Ray it must pickle: a module-level function,
or a ``functools.partial`` of one, such as :func:`memgen.experiments.stages.run_K_task`),
so the executors know nothing of the stages. Each worker's torch threads match its CPU
share. Workers need to see the run folder — on a Ray cluster, put it on a file system
that every node mounts — and to have memgen installed.

Tasks of different K write to different cache folders, so they never collide; a killed
sweep resumes from whatever every task had finished, whichever executor ran it.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import multiprocessing
from dataclasses import dataclass
from typing import Callable, Iterable, TypeVar

import numpy as np
import torch
from tqdm.auto import tqdm

from memgen.errors import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class ExecutorConfig:
    """A sweep's ``executor`` section: which executor of ``EXECUTORS`` and its resources."""

    kind: str = "local"  # a name of EXECUTORS
    workers: int = 1
    address: str | None = None
    cpus_per_task: float = 1.0
    gpus_per_task: float = 0.0


def execute(run_one: Callable[[int], T], Ks: Iterable[int], executor: ExecutorConfig, *,
            here: Callable[[int], T] | None = None, progress: bool = True) -> list[T]:
    """[run_one(K) for K in sorted(Ks)], run by ``executor`` (local: in this process, or
    in ``workers`` processes; ray). ``here``: what to call instead when the work stays in
    this process (e.g. with the data already loaded)."""
    Ks = sorted(Ks)
    bar = tqdm(total=len(Ks), desc=f"sweep ({executor.kind})", unit="K", disable=not progress)
    threads = max(1, int(executor.cpus_per_task))
    results = EXECUTORS[executor.kind].run(run_one, Ks, executor, threads, bar, here)
    bar.close()
    return [results[K] for K in Ks]


def _with_threads(run_one: Callable[[int], T], threads: int, K: int) -> T:
    """The task a worker runs: torch's threads set to the task's CPU share first."""
    torch.set_num_threads(threads)
    return run_one(K)


def _here(run_one, Ks, threads: int, bar) -> dict:
    """In this process, with torch's threads set to the task's CPU share meanwhile (two
    threads on a core that another process holds wait on each other: 20–40× slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        results = {}
        for K in Ks:
            results[K] = run_one(K)
            bar.update(1)
        return results
    finally:
        torch.set_num_threads(before)


def _process_pool(run_one, Ks, workers: int, threads: int, bar) -> dict:
    # spawn, not fork: a forked child of a process that has used torch's thread pools hangs
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = {pool.submit(_with_threads, run_one, threads, K): K for K in Ks}
        results = {}
        try:
            for future in concurrent.futures.as_completed(futures):
                results[futures[future]] = future.result()
                bar.update(1)
        except BaseException:  # one K failed (or Ctrl-C): do not wait for the others
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return results


def _ray(run_one, Ks, ex: ExecutorConfig, threads: int, bar) -> dict:
    import ray  # optional: the ray extra

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
                          max_retries=0)(_with_threads)
        pending = {task.remote(run_one, threads, K): K for K in Ks}
        results = {}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                results[pending.pop(ref)] = ray.get(ref)
            bar.update(len(done))
        return results
    finally:
        if started:
            ray.shutdown()


def _local(run_one, Ks, ex: ExecutorConfig, threads: int, bar, here) -> dict:
    """In ``workers`` processes, or in this process (``here`` where given) for one."""
    if ex.workers > 1:
        return _process_pool(run_one, Ks, ex.workers, threads, bar)
    return _here(here or run_one, Ks, threads, bar)


def _check_nothing(ex: ExecutorConfig, device: str) -> None:
    """An executor with nothing to check before a sweep starts."""


def _check_ray(ex: ExecutorConfig, device: str) -> None:
    """Ray must be installed, and a cuda sweep must declare the GPUs each task uses."""
    if importlib.util.find_spec("ray") is None:
        raise UserError("executor.kind: ray needs the ray package (pip install ray)")
    if device.startswith("cuda") and ex.gpus_per_task == 0:
        raise UserError("executor.gpus_per_task: a cuda sweep on Ray must declare the GPUs "
                        "each task uses (e.g. 1)")


@dataclass(frozen=True)
class Executor:
    """One way to run a sweep's K values: ``run(run_one, Ks, config, threads, bar, here)``
    returns {K: run_one(K)}; ``check(config, device)`` raises UserError, before any work,
    for a config it cannot run; ``help``: one line for ``memgen sweep --help``."""

    name: str
    run: Callable[..., dict]
    help: str
    check: Callable[[ExecutorConfig, str], None] = _check_nothing


EXECUTORS: dict[str, Executor] = {e.name: e for e in (
    Executor("local", _local, "here, or in --workers local processes"),
    Executor("ray", lambda run_one, Ks, ex, threads, bar, here: _ray(run_one, Ks, ex, threads, bar),
             "as Ray tasks", check=_check_ray),
)}
