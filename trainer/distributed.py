"""Rank awareness: which process of a distributed run this is, and the few collectives the recipe needs.

Any launcher that sets the usual `RANK`/`WORLD_SIZE`/`LOCAL_RANK` (torchrun, `accelerate launch`,
Ray Train's `TorchTrainer`) makes a run distributed; without them it is one process and every
collective below is a no-op, so the recipe reads the same either way. The collectives are
torch.distributed's object collectives (pickled Python objects): small things only (a folder, the
prepared rows, evaluation shards), never tensors of the model.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from trainer.errors import RankFailedError

T = TypeVar("T")


@dataclass(frozen=True)
class Dist:
    """This process's place in the run: rank 0 of 1 when nothing launched it distributed."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Dist:
        """The running process group's rank and size when there is one, else RANK/WORLD_SIZE/LOCAL_RANK."""
        import torch.distributed as td

        local = int(os.environ.get("LOCAL_RANK", "0"))
        if td.is_available() and td.is_initialized():
            return cls(td.get_rank(), td.get_world_size(), local)
        return cls(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")), local)

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that creates the run folder, prepares the data, saves and publishes."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @contextlib.contextmanager
    def joined(self) -> Iterator[Dist]:
        """Inside the block this process is in the process group (gloo on CPU, nccl with CUDA).

        A group someone else started (Ray Train, an outer script) is used and left running; one
        started here is destroyed on the way out.
        """
        import torch
        import torch.distributed as td

        if not self.is_distributed or td.is_initialized():
            yield self
            return
        backend = "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(self.local_rank)
            backend = "nccl"
        td.init_process_group(backend=backend, rank=self.rank, world_size=self.world_size)
        try:
            yield self
        finally:
            td.destroy_process_group()

    def on_main(self, fn: Callable[[], T]) -> T:
        """`fn()` run on rank 0 only, its result handed to every rank (a run folder, the prepared data).

        If it raises, rank 0 raises the original error and every other rank a RankFailedError, so no
        rank is left waiting for a result that will not come.
        """
        if not self.is_distributed:
            return fn()
        failure: BaseException | None = None
        result: Any = None
        if self.is_main:
            try:
                result = fn()
            except BaseException as exc:  # handed on below, then raised here as it was
                failure = exc
        ok, result = self.broadcast_object((failure is None, result))
        if failure is not None:
            raise failure
        if not ok:
            raise RankFailedError("rank 0 failed (its error is printed above); this rank stops too")
        return result  # type: ignore[no-any-return]

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if self.is_distributed:
            import torch.distributed as td

            td.barrier()

    def broadcast_object(self, obj: T) -> T:
        """Rank 0's `obj` on every rank (what other ranks pass is ignored)."""
        if not self.is_distributed:
            return obj
        import torch.distributed as td

        box = [obj if self.is_main else None]
        td.broadcast_object_list(box, src=0)
        return box[0]  # type: ignore[return-value]

    def gather_objects(self, obj: T) -> list[T]:
        """Every rank's `obj` in rank order on rank 0; an empty list on the other ranks."""
        if not self.is_distributed:
            return [obj]
        import torch.distributed as td

        out: list[Any] | None = [None] * self.world_size if self.is_main else None
        td.gather_object(obj, out, dst=0)
        return out or []

    def gather_results(self, fn: Callable[[], T]) -> list[T]:
        """`fn()` run on every rank, the results in rank order on rank 0 (an empty list elsewhere).

        A rank whose `fn` raises still takes part in the gather and then raises its error; rank 0
        then raises a RankFailedError that names the failed ranks and their errors.
        """
        if not self.is_distributed:
            return [fn()]
        failure: BaseException | None = None
        result: Any = None
        try:
            result = fn()
        except BaseException as exc:  # handed on below, then raised here as it was
            failure = exc
        error = None if failure is None else f"{type(failure).__name__}: {failure}"
        parts = self.gather_objects((error, result))
        if failure is not None:
            raise failure
        errors = [f"rank {rank}: {err}" for rank, (err, _) in enumerate(parts) if err is not None]
        if errors:
            raise RankFailedError("; ".join(errors))
        return [part for _, part in parts]

    def all_ok(self, ok: bool) -> bool:
        """True on every rank when every rank passed True (a MIN all-reduce of a flag)."""
        if not self.is_distributed:
            return ok
        import torch
        import torch.distributed as td

        flag = torch.tensor([1 if ok else 0], dtype=torch.int32)
        if td.get_backend() == "nccl":
            flag = flag.cuda()
        td.all_reduce(flag, op=td.ReduceOp.MIN)
        return bool(flag.item())

    def shard(self, items: Sequence[T]) -> list[int]:
        """The indices of `items` this rank handles: rank r takes r, r + world_size, ...;
        together the ranks cover every index exactly once."""
        return list(range(self.rank, len(items), self.world_size))


def unshard(parts: list[list[tuple[int, T]]], total: int) -> list[T]:
    """Rank-ordered (index, value) shards from `gather_objects` as one list in index order;
    raises if an index is missing or appears twice (a shard lost or evaluated twice)."""
    merged: dict[int, T] = {}
    for part in parts:
        for index, value in part:
            if index in merged:
                raise RuntimeError(f"row {index} came back from two ranks")
            merged[index] = value
    if sorted(merged) != list(range(total)):
        raise RuntimeError(f"{total - len(merged)} of {total} rows came back from no rank")
    return [merged[i] for i in range(total)]
