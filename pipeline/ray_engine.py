"""`extract --engine ray`: one Ray task per part of the hash partition, each running the local extraction.

The driver works out what is still to do (`pending_items`), splits it with `shard_items` into N parts and submits one
task per non-empty part. A task calls `pipeline.extract.extract` on its items with `shard=(i, N)`, exactly what
`cli.py extract --shard i/N` runs, so it writes shards `s<i>of<N>-*.h5` straight into the store directory, which must
be on a filesystem every node sees. Frames and features never travel through Ray's object store: a task receives item
metadata and returns a small `ExtractResult`.

A worker process that dies (OOM killer, preempted node, kill -9) is retried by Ray (`max_retries`); the retry opens
the store, skips every item its predecessor had already written, and carries on, so each item ends up in the store
once. Exceptions raised by the extraction itself (a store of other settings, a missing weights file) are not retried.

Progress: each task reports to one small actor (`_ProgressBoard`, no CPU reserved), which the driver polls. The
closing summary is read from the store itself, the one source of truth whatever was retried.

Ray is imported only when this engine is used. When this module starts or joins the cluster, the workers get this
very code (`runtime_env()`: `py_modules`), so a task runs the driver's version whatever is installed on the nodes.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from featstore import open_store
from featstore.errors import FramecacheError
from pipeline.extract import ExtractConfig, ExtractResult, extract, pending_items
from pipeline.sources import Item, shard_items

INSTALL_HINT = 'pip install "framecache[ray]"'
TASKS_PER_GPU = 4  # parts per GPU by default: a lost or slow part costs a quarter of a GPU's share, not all of it


class RayEngineError(FramecacheError, RuntimeError):
    """Ray is missing, unreachable, cannot place the tasks, or a part kept losing its worker."""


@dataclass
class RayOptions:
    address: str | None = None         # None: RAY_ADDRESS or a local cluster started here; 'auto'; 'HOST:PORT'
    tasks: int | None = None           # parts; None = 4 x the cluster's GPUs, or its CPUs / cpus_per_task
    gpus_per_task: float | None = None  # None = 1 when the cluster has GPUs, else 0
    cpus_per_task: float | None = None  # None = a GPU's share of the cluster's CPUs (GPU tasks), else 1
    max_retries: int = 3               # reruns of a part whose worker process died
    connect_timeout: float = 30.0      # seconds an --address may take to answer
    poll_seconds: float = 0.5          # how often the driver refreshes progress

    def __post_init__(self):
        if self.tasks is not None and self.tasks < 1:
            raise RayEngineError("--tasks must be at least 1")
        if self.cpus_per_task is not None and self.cpus_per_task <= 0:
            raise RayEngineError("--cpus-per-task must be positive")
        if self.gpus_per_task is not None and self.gpus_per_task < 0:
            raise RayEngineError("--gpus-per-task must be 0 or more")
        if self.max_retries < 0 or self.connect_timeout <= 0:
            raise RayEngineError("max_retries must be >= 0 and connect_timeout positive")


@dataclass
class PartStatus:
    """What the driver knows about one part: counts include the items earlier attempts wrote."""
    part: int
    first_total: int = -1   # items the first attempt had to do
    done: int = 0
    frames: int = 0
    failed: int = 0
    attempts: int = 0
    pid: int = 0            # worker process of the current attempt
    node: str = ""


class _ProgressBoard:
    """A Ray actor the tasks report to. A retried attempt starts with fewer items: the difference was written."""

    def __init__(self):
        self.parts: dict[int, PartStatus] = {}
        self.frames_before: dict[int, int] = {}

    def start(self, part: int, pid: int, node: str) -> None:
        s = self.parts.setdefault(part, PartStatus(part))
        s.attempts, s.pid, s.node = s.attempts + 1, pid, node
        self.frames_before[part] = s.frames

    def report(self, part: int, done: int, total: int, frames: int, failed: int) -> None:
        s = self.parts[part]
        if s.first_total < 0:
            s.first_total = total
        s.done = s.first_total - total + done
        s.frames, s.failed = self.frames_before[part] + frames, failed

    def snapshot(self) -> list[PartStatus]:
        return list(self.parts.values())


class _Reporter:
    """A task's on_progress: forwards to the board at most twice a second, and always the last item."""

    def __init__(self, board, part: int):
        self.board, self.part, self.last = board, part, 0.0

    def __call__(self, p: dict) -> None:
        now = time.monotonic()
        if now - self.last >= 0.5 or p["done"] == p["total"]:
            self.last = now
            self.board.report.remote(self.part, p["done"], p["total"], p["frames"], p["failed"])


def _extract_part(items: list[Item], store: str, cfg: ExtractConfig, part: int, parts: int, board) -> ExtractResult:
    """The body of one Ray task: a local extraction of part `part` of `parts`."""
    import torch

    board.start.remote(part, os.getpid(), socket.gethostname())
    torch.set_num_threads(cfg.cores or 1)  # the CPUs Ray reserved for this task, not the whole node
    return extract(items, store, replace(cfg, shard=(part, parts), limit=None), _Reporter(board, part))


def import_ray():
    try:
        import ray
    except ImportError:
        raise RayEngineError(f"--engine ray needs Ray: {INSTALL_HINT}") from None
    return ray


# An HTTP/2 client preface and an empty SETTINGS frame: a gRPC server (Ray's GCS, the Ray Client server) answers with
# a SETTINGS frame of its own at once, before any Ray call.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def probe(address: str, timeout: float) -> None:
    """Fail fast and clearly unless a gRPC server answers at HOST:PORT within `timeout` (ray.init would retry for
    minutes, and a connection that is accepted but never answered makes it hang)."""
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise RayEngineError(f"--address {address!r} is not HOST:PORT, ray://HOST:PORT or auto")
    silent = RayEngineError(f"Ray at {address} did not answer within {timeout:g} s: is it the head's port (6379 by "
                            "default; `ray status --address ...` checks)?")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as conn:
            conn.sendall(_H2_PREFACE)
            reply = conn.recv(9)
    except socket.timeout:
        raise silent from None
    except OSError as e:
        raise RayEngineError(f"cannot reach Ray at {address}: {e.strerror or e}; start the head with "
                             "`ray start --head` or fix --address") from None
    if len(reply) < 4 or reply[3] != 0x04:  # frame type 4 = SETTINGS
        raise silent


def connect(ray, options: RayOptions) -> bool:
    """Join or start a cluster; True when this call started the connection (the caller shuts it down)."""
    if ray.is_initialized():
        return False
    address = options.address or os.environ.get("RAY_ADDRESS") or None
    kwargs = dict(address=address, logging_level=logging.WARNING, log_to_driver=False, runtime_env=runtime_env())
    if address is None:  # a local cluster for this run only (started from the main thread, as Ray wants)
        ray.init(include_dashboard=False, **kwargs)
        return True
    if address != "auto":
        probe(address, options.connect_timeout)
    errors: list[BaseException] = []
    thread = threading.Thread(target=_init, args=(ray, kwargs, errors), daemon=True)
    thread.start()
    # Something that accepts connections but is not a Ray head makes ray.init wait for minutes: give up sooner.
    thread.join(options.connect_timeout)
    if thread.is_alive():
        raise RayEngineError(f"Ray at {address} did not answer within {options.connect_timeout:g} s: is it a Ray "
                             "head (`ray status --address ...`)?")
    if errors:
        if isinstance(errors[0], ConnectionError):
            raise RayEngineError(f"no Ray cluster at --address {address}: start one with `ray start --head`, or "
                                 "leave --address out to start a local one") from None
        raise errors[0]
    return True


def runtime_env() -> dict:
    """The job's runtime_env: ships this very code (pipeline/, featstore/) to every worker, so a task runs the
    driver's version whatever the nodes have installed. Pass it to `ray.init` when you start Ray yourself."""
    import featstore
    import pipeline

    return {"py_modules": [str(Path(m.__file__).parent) for m in (pipeline, featstore)]}


def _init(ray, kwargs: dict, errors: list) -> None:
    try:
        ray.init(**kwargs)
    except BaseException as e:  # noqa: BLE001 — handed to the calling thread
        errors.append(e)


@dataclass
class TaskPlan:
    tasks: int      # parts of the hash partition, one Ray task each
    gpus: float     # per task
    cpus: float     # per task


def plan_tasks(ray, options: RayOptions) -> TaskPlan:
    """Parts and per-task resources for this cluster, refusing requests no node can ever satisfy."""
    total = ray.cluster_resources()
    gpus = options.gpus_per_task if options.gpus_per_task is not None else (1.0 if total.get("GPU") else 0.0)
    cpus = options.cpus_per_task
    if cpus is None:  # a GPU task gets its GPU's share of the cores: they feed it with decode workers
        cpus = max(1.0, float(int(total.get("CPU", 1) * gpus / total["GPU"]))) if gpus and total.get("GPU") else 1.0
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if not any(r.get("CPU", 0) >= cpus and r.get("GPU", 0) >= gpus for r in nodes):
        have = ", ".join(f"{r.get('CPU', 0):g} CPUs/{r.get('GPU', 0):g} GPUs" for r in nodes)
        raise RayEngineError(f"no node of the cluster has {cpus:g} CPUs and {gpus:g} GPUs for one task (nodes: {have})"
                             ": lower --cpus-per-task / --gpus-per-task")
    if options.tasks is not None:
        return TaskPlan(options.tasks, gpus, cpus)
    if gpus:
        return TaskPlan(max(1, TASKS_PER_GPU * int(total.get("GPU", 0) / gpus)), gpus, cpus)
    return TaskPlan(max(1, int(total.get("CPU", 1) / cpus)), gpus, cpus)


def extract_on_ray(items: list[Item], store_path: str | Path, cfg: ExtractConfig, options: RayOptions,
                   on_progress: Callable[[dict], None] | None = None) -> ExtractResult:
    """Embed every pending item into the store with one Ray task per part; returns what the store now holds."""
    if cfg.shard is not None:
        raise RayEngineError("--engine ray splits the work itself: drop --shard (or run --shard i/N without Ray)")
    ray = import_ray()
    store_path = Path(store_path).resolve()  # the workers' working directory is not ours
    todo, skipped = pending_items(items, store_path, cfg)
    if not todo:
        return ExtractResult(str(store_path), skipped=skipped)
    started = connect(ray, options)
    try:
        plan = plan_tasks(ray, options)
        start = time.perf_counter()
        results = _run_parts(ray, todo, store_path, cfg, options, plan, on_progress)
        return _summary(todo, skipped, store_path, results, time.perf_counter() - start)
    finally:
        if started:
            ray.shutdown()


def _run_parts(ray, todo: list[Item], store: Path, cfg: ExtractConfig, options: RayOptions, plan: TaskPlan,
               on_progress) -> list[ExtractResult]:
    board = ray.remote(_ProgressBoard).options(num_cpus=0).remote()
    task = ray.remote(_extract_part).options(num_cpus=plan.cpus, num_gpus=plan.gpus,
                                             max_retries=options.max_retries, retry_exceptions=False)
    device = cfg.device if plan.gpus or cfg.device != "auto" else "cpu"  # a task without a GPU must not pick one
    part_cfg = replace(cfg, device=device, cores=max(1, int(plan.cpus)))
    n, refs = plan.tasks, {}
    for i in range(n):
        if part := shard_items(todo, i, n):
            refs[task.remote(part, str(store), part_cfg, i, n, board)] = i
    try:
        return _collect(ray, refs, n, board, len(todo), options, on_progress)
    except BaseException:
        for ref in refs:
            ray.cancel(ref)  # a KeyboardInterrupt in each task: it saves what it finished
        ray.wait(list(refs), num_returns=len(refs), timeout=10)
        raise


def _collect(ray, refs: dict, n: int, board, total: int, options: RayOptions, on_progress) -> list[ExtractResult]:
    results: dict[int, ExtractResult] = {}
    waiting = list(refs)
    while waiting:
        ready, waiting = ray.wait(waiting, num_returns=len(waiting), timeout=options.poll_seconds)
        for ref in ready:
            results[refs[ref]] = _result(ray, ref, refs[ref], n, options)
        if on_progress is not None:
            parts = ray.get(board.snapshot.remote())
            on_progress({"done": sum(p.done for p in parts), "total": total, "frames": sum(p.frames for p in parts),
                         "failed": sum(p.failed for p in parts), "current": f"{len(waiting)} of {len(refs)} tasks",
                         "parts": parts})
    return list(results.values())


def _result(ray, ref, part: int, n: int, options: RayOptions) -> ExtractResult:
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, FramecacheError):
            raise e.cause from None  # a user error in the extraction: the same one line as a local run
        raise
    except ray.exceptions.RayError as e:
        raise RayEngineError(f"part {part}/{n} lost its worker {options.max_retries + 1} times "
                             f"({type(e).__name__}); finished shards are kept: rerun the same command to resume") \
            from None


def _summary(todo: list[Item], skipped: int, store: Path, results: list[ExtractResult], seconds: float) -> ExtractResult:
    """The run's result as the store records it (retried attempts would otherwise count twice or not at all)."""
    out = ExtractResult(str(store), skipped=skipped, seconds=seconds,
                        device=", ".join(sorted({r.device for r in results if r.device})),
                        precision=", ".join(sorted({r.precision for r in results if r.precision})),
                        unit=results[0].unit if results else "frames")
    with open_store(store) as s:
        missing = [item.id for item in todo if item.id not in s]
        if missing:  # every task returned, so this is a bug, and a silent hole is the worst outcome
            raise RuntimeError(f"{len(missing)} items are not in {store} after every part finished: {missing[:5]}")
        for item in todo:
            m = s.meta(item.id)
            out.done += 1
            if m.status == "ok":
                out.frames += m.length
            else:
                out.failed.append((item.id, m.error))
    return out
