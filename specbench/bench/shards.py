"""Where the runner's per-item work runs: in this process (``LocalPool``) or on N Ray workers (``RayPool``).

The runner's steps are written once against the pool interface (``call_all``, ``imap``): the per-item
functions (``ItemGenerator.generate_item``, ``ItemScorer.score_chunk`` ...) run inside the pool, their
results come back to the caller, and the CALLER (the driver) is the only writer of the run folder. With
``--shards 1`` (default) the pool is one object in this process and Ray is never imported.

With ``--shards N`` (or ``--ray-address``) the pool is N Ray actors, one per shard: each holds one GPU
(``num_gpus=1`` when the step's device is CUDA, else one CPU and one torch thread unless ``threads`` says
otherwise) and builds its models ONCE. ``imap`` keeps exactly one item in flight per worker and hands the
next missing item to whichever worker finishes first (``ray.wait``), so the split follows the workers'
speed; results are independent of which worker ran what because every row's randomness is seeded from
(seed, utterance, repeat). A failure is reported as one line naming the item and the error, and the
item is left for a rerun: an exception in an item leaves its worker working on the next ones; a worker
whose process died is retired and the others take the remaining items. The step raises
:class:`~specbench.errors.WorkerError` once everything else is done.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from specbench.errors import ConfigError, DependencyError, WorkerError

#: Test hook: ``METHOD:K`` makes shard 0 call ``os._exit(1)`` when it is handed its (K+1)-th ``METHOD`` item
#: (a worker killed mid-run). Read by the driver and passed to the actor, so it needs no Ray env propagation.
EXIT_HOOK_ENV = "SPECBENCH_TEST_WORKER_EXIT"
RAY_INSTALL = "pip install -e '.[ray]'"
#: Thread variables a worker copies from the driver (see ShardActor): same variables + same torch threads = same floats.
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

Report = Callable[[str], None]


@dataclass
class Failure:
    """One worker failure: which shard, on which item (``describe(item)``), and the error in one line."""

    shard: int
    item: str
    error: str

    def line(self) -> str:
        return f"shard {self.shard} failed on {self.item}: {self.error}"


def one_line(text: str, limit: int = 400) -> str:
    """The first non-empty line of ``text``, shortened to ``limit`` characters."""
    first = next((ln.strip() for ln in str(text).splitlines() if ln.strip()), "")
    return first if len(first) <= limit else first[: limit - 1] + "…"


def raise_failures(step: str, failures: list[Failure], unstarted: int, done: int) -> None:
    """The step's one-line WorkerError when rows failed on workers (the finished rows are already written)."""
    if not failures and not unstarted:
        return
    n = len(failures)
    left = f"; {unstarted} more not started (no worker left)" if unstarted else ""
    raise WorkerError(
        f"{step}: {n} item{'s' if n != 1 else ''} failed on workers (first: {failures[0].line()}){left}; "
        f"the {done} finished rows are saved: rerun the same command to do the missing ones"
    )


MAX_REPORTED = 20  # failure lines printed per step; further failures are only counted (the final error has the total)


# ---- the one-process pool ----------------------------------------------------------------------------
class LocalPool:
    """The pool of the default ``--shards 1``: one object in this process; exceptions propagate (as before)."""

    shards = 1

    def __init__(self, factory: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.obj = factory(*args)
        self.failures: list[Failure] = []
        self.unstarted = 0

    def workers(self) -> list[dict[str, Any]]:
        return []

    def call_all(self, method: str, *args: Any) -> list[Any]:
        return [getattr(self.obj, method)(*args)]

    def imap(
        self,
        method: str,
        items: Iterable[Any],
        *,
        args: Callable[[Any], tuple[Any, ...]] = lambda item: (item,),
        describe: Callable[[Any], str] = str,
        on_start: Callable[[Any], None] | None = None,
        report: Report = print,
    ) -> Iterator[tuple[Any, Any]]:
        for item in items:
            if on_start is not None:
                on_start(item)
            yield item, getattr(self.obj, method)(*args(item))

    def close(self) -> None:
        self.obj = None


# ---- Ray ---------------------------------------------------------------------------------------------
def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise DependencyError(f"--shards N > 1 and --ray-address need Ray: install it with `{RAY_INSTALL}`") from None
    return ray


@contextlib.contextmanager
def session(shards: int, ray_address: str | None) -> Iterator[None]:
    """Connect to Ray for a sharded run (nothing for ``--shards 1`` without an address).

    No address: a local Ray instance starts inside this process and stops at the end. ``ray_address``
    (``auto`` or ``HOST:PORT``, else ``$RAY_ADDRESS``) joins a running cluster. An already initialised Ray (e.g. a test's
    ``ray.init``) is used as it is and left running. Nested sessions are no-ops.
    """
    if shards == 1 and ray_address is None:
        yield
        return
    ray = _ray()
    started = False
    if not ray.is_initialized():
        # no address: a NEW local instance ("local"), never a stale or foreign `ray start` cluster found on this
        # machine; RAY_ADDRESS (set e.g. by `ray job submit`) counts as an address
        address = ray_address or os.environ.get("RAY_ADDRESS") or "local"
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
        except ConnectionError as exc:
            raise ConfigError(
                f"--ray-address {address}: cannot join a Ray cluster there: start one with `ray start --head` "
                f"or drop --ray-address to start one inside this process (Ray: {one_line(exc)})"
            ) from None
        started = True
    try:
        yield
    finally:
        if started:
            ray.shutdown()


class ShardActor:
    """One shard's process: builds the step's per-item object once and runs its methods (wrapped by ray.remote)."""

    def __init__(self, shard: int, cwd: str, thread_env: dict[str, str | None], exit_hook: tuple[str, int] | None = None) -> None:
        self.shard, self.exit_hook, self.counts = shard, exit_hook, {}
        self.thread_env_in_time = "torch" not in sys.modules  # else OpenMP already read Ray's OMP_NUM_THREADS
        if os.path.isdir(cwd):  # recipe paths are relative to the driver's folder (same path on every node)
            os.chdir(cwd)
        # Ray sets OMP_NUM_THREADS=<num_cpus> in workers; OpenMP/MKL read it when torch loads (not yet: torch is
        # imported by setup) and it changes CPU kernels' floats even at one torch thread (a speaker embedding
        # differed in the 7th digit), so the worker gets the driver's thread variables, unset ones unset
        for name, value in thread_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self.obj: Any = None

    def setup(self, factory: Callable[..., Any], args: tuple[Any, ...], threads: int | None) -> dict[str, Any]:
        import torch

        if threads is not None:
            torch.set_num_threads(threads)
        self.obj = factory(*args)
        return {
            "shard": self.shard,
            "node": platform.node(),
            "pid": os.getpid(),
            "torch_threads": torch.get_num_threads(),
            "thread_env": {name: os.environ.get(name) for name in THREAD_ENV},
            "thread_env_in_time": self.thread_env_in_time,
        }

    def call(self, method: str, *args: Any) -> Any:
        return getattr(self.obj, method)(*args)

    def item(self, method: str, *args: Any) -> Any:
        n = self.counts.get(method, 0)
        if self.exit_hook is not None and self.exit_hook == (method, n):
            os._exit(1)  # test hook (EXIT_HOOK_ENV): die holding this item, like a killed worker
        self.counts[method] = n + 1
        return getattr(self.obj, method)(*args)


def _exit_hook() -> tuple[str, int] | None:
    spec = os.environ.get(EXIT_HOOK_ENV)
    if not spec:
        return None
    method, _, k = spec.rpartition(":")
    return method, int(k)


def _cause(exc: BaseException) -> BaseException:
    """The worker-side exception behind a Ray error (RayTaskError.cause), else ``exc`` itself."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def _describe_error(exc: BaseException) -> str:
    ray = _ray()
    if isinstance(exc, ray.exceptions.RayActorError):
        return "the worker process died (killed, out of memory or crashed; Ray's logs are in /tmp/ray/session_latest/logs)"
    cause = _cause(exc)
    return f"{type(cause).__name__}: {one_line(cause)}"


class RayPool:
    """N Ray actors, one per shard, each holding the step's object; one item in flight per worker."""

    def __init__(self, factory: Callable[..., Any], args: tuple[Any, ...], shards: int, *, gpu: bool, threads: int | None, what: str) -> None:
        ray = _ray()
        self.shards, self.failures, self.unstarted = shards, [], 0
        res = ray.cluster_resources()
        kind, have = ("GPU", res.get("GPU", 0)) if gpu else ("CPU", res.get("CPU", 0))
        if have < shards:
            fix = f"use --shards {int(have)} or add nodes" if have >= 1 else "use a CPU device or add GPU nodes"
            raise ConfigError(
                f"--shards {shards} needs {shards} {kind}s for {what} (one {kind} per shard) but the Ray cluster has {have:g}: "
                f"{fix} (`ray start --address=...` on them)"
            )
        remote = ray.remote(ShardActor).options(num_cpus=1, num_gpus=1 if gpu else 0, max_restarts=0, max_task_retries=0)
        hook = _exit_hook()
        thread_env = {name: os.environ.get(name) for name in THREAD_ENV}
        self.actors = [remote.remote(i, os.getcwd(), thread_env, hook if i == 0 else None) for i in range(shards)]
        self.live = list(range(shards))
        self._workers: list[dict[str, Any]] = []
        try:
            self._workers = self._get([a.setup.remote(factory, args, threads) for a in self.actors])
        except BaseException:
            self.close()
            raise

    def _get(self, refs: list[Any]) -> list[Any]:
        """``ray.get`` that re-raises a worker's own exception (e.g. a one-line SpecbenchError) on the driver."""
        ray = _ray()
        try:
            return ray.get(refs)
        except ray.exceptions.RayTaskError as exc:
            raise _cause(exc) from None
        except ray.exceptions.RayActorError as exc:
            raise WorkerError(f"a Ray worker died while loading ({one_line(exc)}); finished rows are saved: rerun the same command") from None

    def workers(self) -> list[dict[str, Any]]:
        return self._workers

    def call_all(self, method: str, *args: Any) -> list[Any]:
        """``method(*args)`` on every live worker (arguments are put in the object store once)."""
        ray = _ray()
        refs = [ray.put(a) for a in args]
        return self._get([self.actors[i].call.remote(method, *refs) for i in self.live])

    def imap(
        self,
        method: str,
        items: Iterable[Any],
        *,
        args: Callable[[Any], tuple[Any, ...]] = lambda item: (item,),
        describe: Callable[[Any], str] = str,
        on_start: Callable[[Any], None] | None = None,
        report: Report = print,
    ) -> Iterator[tuple[Any, Any]]:
        """Yield ``(item, method(*args(item)))`` as workers finish them (completion order).

        ``args(item)`` is built on the driver when the item is handed out (e.g. reading its audio), so
        only in-flight items are in memory. A failing worker is reported (``report``, one line) and retired.
        """
        ray = _ray()
        queue = deque(items)
        inflight: dict[Any, tuple[int, Any]] = {}

        def submit(shard: int) -> None:
            if queue:
                item = queue.popleft()
                if on_start is not None:
                    on_start(item)
                inflight[self.actors[shard].item.remote(method, *args(item))] = (shard, item)

        for shard in self.live:
            submit(shard)
        while inflight:
            ready, _ = ray.wait(list(inflight), num_returns=1)
            shard, item = inflight.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except ray.exceptions.RayError as exc:
                self._failed(Failure(shard, describe(item), _describe_error(exc)), report)
                if isinstance(exc, ray.exceptions.RayActorError):
                    self._retire(shard)  # the process is gone: the others take the remaining items
                else:
                    submit(shard)  # an exception in one item: the worker itself is fine
                continue
            submit(shard)  # the worker starts its next item while the driver writes this one
            yield item, result
        self.unstarted += len(queue)

    def _failed(self, failure: Failure, report: Report) -> None:
        self.failures.append(failure)
        if len(self.failures) <= MAX_REPORTED:
            report(failure.line())
        elif len(self.failures) == MAX_REPORTED + 1:
            report(f"more than {MAX_REPORTED} failures: the rest are counted, not printed")

    def _retire(self, shard: int) -> None:
        self.live.remove(shard)
        with contextlib.suppress(Exception):
            _ray().kill(self.actors[shard])  # frees its GPU; a dead actor is already gone

    def close(self) -> None:
        for shard in list(self.live):
            self._retire(shard)


@contextlib.contextmanager
def open_pool(
    factory: Callable[..., Any],
    args: tuple[Any, ...],
    shards: int = 1,
    ray_address: str | None = None,
    *,
    gpu: Callable[[dict[str, float]], bool] | None = None,
    worker_args: Callable[[bool], tuple[Any, ...]] | None = None,
    threads: Callable[[bool], int | None] | None = None,
    what: str = "this step",
) -> Iterator[LocalPool | RayPool]:
    """A pool running ``factory(*args)``: local for one shard without an address, else Ray actors.

    For Ray: ``gpu(cluster_resources)`` says whether each shard takes a GPU, ``worker_args(gpu)`` gives the
    workers' constructor arguments (e.g. the config with the device each worker should use) and
    ``threads(gpu)`` their torch thread count.
    """
    if shards == 1 and ray_address is None:
        local = LocalPool(factory, args)
        try:
            yield local
        finally:
            local.close()
        return
    with session(shards, ray_address):
        use_gpu = bool(gpu(_ray().cluster_resources())) if gpu else False
        pool = RayPool(factory, worker_args(use_gpu) if worker_args else args, shards, gpu=use_gpu, threads=threads(use_gpu) if threads else None, what=what)
        try:
            yield pool
        finally:
            pool.close()


def wants_gpu(spec: str, resources: dict[str, float]) -> bool:
    """Whether a shard of a step on device ``spec`` takes a GPU: ``cuda*`` yes, ``cpu`` no, ``auto`` when the cluster has one."""
    if spec.startswith("cuda"):
        return True
    return spec == "auto" and resources.get("GPU", 0) >= 1


def worker_device(spec: str, gpu: bool) -> str:
    """The device a shard uses for ``spec``: ``cpu`` stays; on a GPU shard Ray makes its one GPU ``cuda`` (so ``cuda:N`` → ``cuda``)."""
    return "cuda" if gpu and spec != "cpu" else "cpu"
