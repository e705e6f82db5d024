"""`--shard auto`: which part of the hash partition this process is, read from the launcher's environment.

Slurm job arrays and torchrun-style launchers (torchrun, torch.distributed.run, most Lightning/accelerate setups)
already number their processes; we read those numbers and nothing else. No process group is formed and no
DistributedSampler is used (it pads with duplicates): `pipeline.sources.shard_items` stays the only partition, so a
part written under Slurm is the same part that `--shard i/N` would write, and a rerun resumes it.

An array task that itself runs torchrun (one array task per multi-GPU node) is part `task * WORLD_SIZE + RANK` of
`tasks * WORLD_SIZE`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

from featstore.errors import FramecacheError

ENGINES = ("local", "ray")  # how `extract` runs: this process (alone or as one part of a launcher), or Ray tasks

LOOKED_FOR = ("SLURM_ARRAY_TASK_ID with SLURM_ARRAY_TASK_COUNT or SLURM_ARRAY_TASK_MIN/MAX (a Slurm job array), "
              "RANK with WORLD_SIZE (torchrun)")


class LaunchError(FramecacheError, ValueError):
    """`--shard auto` found no launcher, or one whose numbers do not make a partition."""


@dataclass(frozen=True)
class Launch:
    """Where this process sits among its siblings."""

    engine: str                        # 'slurm-array', 'torchrun' or 'slurm-array+torchrun'
    index: int                         # this process's part: 0 <= index < count
    count: int                         # how many parts the launcher started
    found: str                         # the variables read, e.g. 'SLURM_ARRAY_TASK_ID=3, SLURM_ARRAY_TASK_COUNT=64'
    local_rank: int | None = None      # torchrun: this rank's place on its node (chooses its GPU)
    local_world_size: int | None = None  # torchrun: ranks on this node (they share its CPU cores)

    @property
    def shard(self) -> tuple[int, int]:
        return self.index, self.count

    def device(self, requested: str, visible_gpus: int) -> str:
        """The device for `--device requested`: under torchrun, 'auto' becomes this rank's own GPU.

        A launcher that already gave each rank one GPU (CUDA_VISIBLE_DEVICES of one device) leaves cuda:0."""
        if requested != "auto" or self.local_rank is None or visible_gpus == 0:
            return requested
        if visible_gpus == 1:
            return "cuda:0"
        if self.local_rank >= visible_gpus:
            raise LaunchError(f"LOCAL_RANK={self.local_rank} but this process sees {visible_gpus} GPUs: start at most "
                              f"{visible_gpus} ranks per node (--nproc-per-node) or pass --device")
        return f"cuda:{self.local_rank}"

    def cores(self, node_cores: int) -> int | None:
        """CPU cores this process may use for decoding: the node's, split between the ranks on it."""
        if not self.local_world_size:
            return None
        return max(1, node_cores // self.local_world_size)

    def describe(self) -> str:
        return f"{self.engine} ({self.found}) → part {self.index}/{self.count}"


def _int(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise LaunchError(f"{name}={value!r} is not an integer") from None


def _slurm_array(env: Mapping[str, str]) -> tuple[int, int, str] | None:
    task = _int(env, "SLURM_ARRAY_TASK_ID")
    if task is None:
        return None
    count, low, high = (_int(env, f"SLURM_ARRAY_TASK_{k}") for k in ("COUNT", "MIN", "MAX"))
    step = _int(env, "SLURM_ARRAY_TASK_STEP") or 1
    if low is not None and high is not None:
        span = (high - low) // step + 1
        # A list array (--array=1,5,9) has ids that are no range: the numbers would not make a partition.
        if (task - low) % step or (count is not None and count != span):
            raise LaunchError(f"the job array is not a range (SLURM_ARRAY_TASK_ID={task}, MIN={low}, MAX={high}, "
                              f"STEP={step}, COUNT={count}): use --array=0-N or pass --shard i/N")
        index, count = (task - low) // step, span
        found = f"SLURM_ARRAY_TASK_ID={task}, SLURM_ARRAY_TASK_MIN={low}, SLURM_ARRAY_TASK_MAX={high}"
    elif count is not None:
        index, found = task, f"SLURM_ARRAY_TASK_ID={task}, SLURM_ARRAY_TASK_COUNT={count}"
    else:
        raise LaunchError(f"SLURM_ARRAY_TASK_ID={task} is set but neither SLURM_ARRAY_TASK_COUNT nor "
                          "SLURM_ARRAY_TASK_MIN/MAX: cannot tell how many parts there are; pass --shard i/N")
    if not 0 <= index < count:
        raise LaunchError(f"{found} is not a part of {count}: pass --shard i/N")
    return index, count, found


def _torchrun(env: Mapping[str, str]) -> tuple[int, int, str, int | None, int | None] | None:
    rank, world = _int(env, "RANK"), _int(env, "WORLD_SIZE")
    if rank is None and world is None:
        return None
    if rank is None or world is None or not 0 <= rank < world:
        raise LaunchError(f"RANK={env.get('RANK')} and WORLD_SIZE={env.get('WORLD_SIZE')} do not make a part: "
                          "torchrun sets both, with 0 <= RANK < WORLD_SIZE")
    local_rank, local_world = _int(env, "LOCAL_RANK"), _int(env, "LOCAL_WORLD_SIZE")
    found = f"RANK={rank}, WORLD_SIZE={world}" + (f", LOCAL_RANK={local_rank}" if local_rank is not None else "") \
        + (f", LOCAL_WORLD_SIZE={local_world}" if local_world is not None else "")
    return rank, world, found, local_rank, local_world


def detect_launch(env: Mapping[str, str] | None = None) -> Launch:
    """The launcher this process runs under (`os.environ` by default); LaunchError when there is none."""
    env = os.environ if env is None else env
    array, ranks = _slurm_array(env), _torchrun(env)
    if array is None and ranks is None:
        raise LaunchError(f"--shard auto found no launcher: looked for {LOOKED_FOR}; outside a launcher pass "
                          "--shard i/N")
    if ranks is None:
        return Launch("slurm-array", *array)
    rank, world, found, local_rank, local_world = ranks
    if array is None:
        return Launch("torchrun", rank, world, found, local_rank, local_world)
    task, tasks, array_found = array
    return Launch("slurm-array+torchrun", task * world + rank, tasks * world, f"{array_found}, {found}",
                  local_rank, local_world)


def configure(cfg, launch: Launch):
    """`cfg` (an ExtractConfig) as this launched process runs it: its part, its GPU, its share of the node's cores."""
    import dataclasses

    import torch

    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return dataclasses.replace(cfg, shard=launch.shard, device=launch.device(cfg.device, visible),
                               cores=launch.cores(len(os.sched_getaffinity(0))))
