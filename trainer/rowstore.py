"""Prepared rows on disk: an Arrow file per split, read back one record batch at a time.

`prepare` (trainer/data.py) streams a JSONL file once and appends every valid row to the file of
its split; what stays in memory per row is a few fixed-size hashes (dedup, leakage) and, after
dedup, one int64 index. `Rows` is a read-only `Sequence[Example]` over such a file: iteration
reads one record batch (`BATCH_ROWS` rows) at a time, `rows[i]` reads the batch holding row i, and
a slice is a view (an index array), so no split is ever held as Python objects.

The files are written with pyarrow's IPC writer and read through an open file handle, not with
`datasets.Dataset.from_generator`: that one caches by a fingerprint of the generator's code (a
changed JSONL must never be served from a stale cache) and cannot also hand back the hashes and
line-numbered problems collected in the same pass. A file is unlinked as soon as it is opened
(POSIX keeps it readable through the handle), so nothing is left on disk when the process ends.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar, overload

from trainer.data import Example, split_of

T = TypeVar("T")

BATCH_ROWS = 2048
"""Rows per Arrow record batch: the unit written, read and held in memory at a time."""


def _schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            ("roles", pa.list_(pa.string())),
            ("contents", pa.list_(pa.string())),
            ("completion", pa.string()),
            ("source", pa.string()),
        ]
    )


class RowWriter:
    """Appends Examples to one Arrow IPC file, a record batch at a time."""

    def __init__(self, path: Path) -> None:
        import pyarrow as pa

        self.path = path
        self._sink = pa.OSFile(str(path), "wb")
        self._writer = pa.ipc.new_file(self._sink, _schema())
        self._pending: list[Example] = []
        self._sizes: list[int] = []
        self.rows = 0

    def append(self, example: Example) -> None:
        self._pending.append(example)
        self.rows += 1
        if len(self._pending) >= BATCH_ROWS:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if not self._pending:
            return
        rows = self._pending
        batch = pa.record_batch(
            [
                [[r for r, _ in ex.messages] for ex in rows],
                [[c for _, c in ex.messages] for ex in rows],
                [ex.completion for ex in rows],
                [ex.source for ex in rows],
            ],
            schema=_schema(),
        )
        self._writer.write_batch(batch)
        self._sizes.append(len(rows))
        self._pending = []

    def close(self) -> Rows:
        """Finish the file and open it for reading (the file itself is unlinked; the handle keeps it)."""
        self._flush()
        self._writer.close()
        self._sink.close()
        rows = Rows(_Batches(self.path, self._sizes))
        os.unlink(self.path)
        return rows

    def abort(self) -> None:
        self._writer.close()
        self._sink.close()


class _Batches:
    """One open Arrow file: its record batches by number, the last one read kept (sequential access)."""

    def __init__(self, path: Path, sizes: list[int]) -> None:
        import numpy as np
        import pyarrow as pa

        self._source = pa.OSFile(str(path), "rb")
        self._reader = pa.ipc.open_file(self._source)
        self.starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        self._cached: tuple[int, list[Example]] = (-1, [])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def batch(self, number: int) -> list[Example]:
        if self._cached[0] != number:
            cols = self._reader.get_batch(number).to_pydict()
            rows = [
                Example(tuple(zip(roles, contents, strict=True)), completion, source)
                for roles, contents, completion, source in zip(
                    cols["roles"], cols["contents"], cols["completion"], cols["source"], strict=True
                )
            ]
            self._cached = (number, rows)
        return self._cached[1]

    def row(self, index: int) -> Example:
        import numpy as np

        number = int(np.searchsorted(self.starts, index, side="right")) - 1
        return self.batch(number)[index - int(self.starts[number])]


class Rows(Sequence[Example]):
    """A read-only sequence of prepared rows on disk, optionally a subset (an index array) of them."""

    def __init__(self, batches: _Batches, indices: Any = None) -> None:
        self._batches = batches
        self._indices = indices
        """int64 positions in the file, ascending; None: every row."""

    def __len__(self) -> int:
        return len(self._batches) if self._indices is None else len(self._indices)

    @overload
    def __getitem__(self, i: int) -> Example: ...
    @overload
    def __getitem__(self, i: slice) -> Rows: ...
    def __getitem__(self, i: int | slice) -> Example | Rows:
        import numpy as np

        if isinstance(i, slice):
            positions = np.arange(len(self._batches)) if self._indices is None else self._indices
            return Rows(self._batches, positions[i])
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self._batches.row(i if self._indices is None else int(self._indices[i]))

    def __iter__(self) -> Iterator[Example]:
        import numpy as np

        starts = self._batches.starts
        if self._indices is None:
            for number in range(len(starts) - 1):
                yield from self._batches.batch(number)
            return
        numbers = np.searchsorted(starts, self._indices, side="right") - 1
        for position, number in zip(self._indices.tolist(), numbers.tolist(), strict=True):
            yield self._batches.batch(number)[position - int(starts[number])]

    def select(self, keep: Any) -> Rows:
        """The rows at the ascending positions `keep` (an int array over this sequence)."""
        import numpy as np

        keep = np.asarray(keep, dtype=np.int64)
        return Rows(self._batches, keep if self._indices is None else self._indices[keep])

    def __reduce__(self) -> tuple[Any, ...]:
        # sent to another process (torchrun's ranks get rank 0's prepared data) as a plain list:
        # an open Arrow file handle cannot travel, and that rank's file is unlinked already
        return (list, (list(self),))


class Mapped(Sequence[Example]):
    """`fn` applied to every row of `rows` when it is read (the rows stay on disk)."""

    def __init__(self, rows: Sequence[Example], fn: Callable[[Example], Example]) -> None:
        self._rows, self._fn = rows, fn

    def __len__(self) -> int:
        return len(self._rows)

    @overload
    def __getitem__(self, i: int) -> Example: ...
    @overload
    def __getitem__(self, i: slice) -> Mapped: ...
    def __getitem__(self, i: int | slice) -> Example | Mapped:
        if isinstance(i, slice):
            return Mapped(self._rows[i], self._fn)
        return self._fn(self._rows[i])

    def __iter__(self) -> Iterator[Example]:
        return map(self._fn, self._rows)

    def __reduce__(self) -> tuple[Any, ...]:
        return (list, (list(self),))  # as Rows: another process gets the mapped rows as a list


class Interleaved(Sequence[Example]):
    """Rows of several sequences in the order `which` names: the k-th row naming part p is the
    k-th row of `parts[p]` (`data.mix`'s splits over its sources' rows, which stay on disk).
    Per row it holds a part number and a position (10 bytes)."""

    def __init__(self, parts: Sequence[Sequence[Example]], which: Any, at: Any = None) -> None:
        import numpy as np

        self._parts = parts
        self.which = np.asarray(which, dtype=np.int16)
        """Per row, the part it comes from."""
        if at is None:
            at = np.zeros(len(self.which), dtype=np.int64)
            for part in range(len(parts)):
                mine = self.which == part
                at[mine] = np.arange(int(mine.sum()))
        self._at = at

    def __len__(self) -> int:
        return len(self.which)

    @overload
    def __getitem__(self, i: int) -> Example: ...
    @overload
    def __getitem__(self, i: slice) -> Interleaved: ...
    def __getitem__(self, i: int | slice) -> Example | Interleaved:
        if isinstance(i, slice):
            return Interleaved(self._parts, self.which[i], self._at[i])
        return self._parts[int(self.which[i])][int(self._at[i])]

    def __iter__(self) -> Iterator[Example]:
        # each part is read in its own order, so a part on disk reads each record batch once
        for part, position in zip(self.which.tolist(), self._at.tolist(), strict=True):
            yield self._parts[part][position]

    def __reduce__(self) -> tuple[Any, ...]:
        return (list, (list(self),))  # as Rows: another process gets the rows as a list


def map_rows(rows: Sequence[Example], fn: Callable[[Example], Example]) -> Sequence[Example]:
    """`fn` over every row: a list stays a list, rows on disk stay on disk (mapped when read)."""
    return [fn(ex) for ex in rows] if isinstance(rows, list) else Mapped(rows, fn)


SPLITS = ("train", "val", "test")
KEY_BYTES = 16
"""BLAKE2b digest size of a prompt and of a completion: a row costs 32 bytes of keys in memory."""


def _key(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=KEY_BYTES).digest()


class Split:
    """One split's rows on disk and, per row, its prompt and completion keys (in memory, 32 bytes a row)."""

    def __init__(self, rows: Rows, keys: bytes | bytearray) -> None:
        import numpy as np

        self.rows: Rows = rows
        self.keys = np.frombuffer(keys, dtype=f"V{2 * KEY_BYTES}")

    def __len__(self) -> int:
        return len(self.rows)

    def _halves(self, which: int) -> Any:
        return self.keys.view(f"V{KEY_BYTES}")[which::2]

    def _keep(self, keep: Any) -> None:
        self.rows = self.rows.select(keep)
        self.keys = self.keys[keep]

    def dedup(self) -> int:
        """Drop exact duplicates (same prompt and completion), keeping each first row; the number dropped."""
        import numpy as np

        _, first = np.unique(self.keys, return_index=True)  # a stable sort: the first of equal keys
        dropped = len(self.keys) - len(first)
        if dropped:
            self._keep(np.sort(first))
        return dropped

    def prompts_in(self, other: Split) -> Any:
        """Per row: is its prompt one of `other`'s (a bool array)?"""
        import numpy as np

        return np.isin(self._halves(0), np.unique(other._halves(0)))

    def completions_in(self, other: Split) -> Any:
        """Per row: is its completion one of `other`'s (a bool array)?"""
        import numpy as np

        return np.isin(self._halves(1), np.unique(other._halves(1)))

    def drop(self, mask: Any) -> int:
        """Drop the rows where `mask` is true; the number dropped."""
        import numpy as np

        dropped = int(mask.sum())
        if dropped:
            self._keep(np.flatnonzero(~mask))
        return dropped


class SplitWriter:
    """Rows appended, as they are read, to the Arrow file of their split (`trainer.data.split_of`, or `only`)."""

    def __init__(
        self, folder: Path, val_fraction: float = 0.0, test_fraction: float = 0.0, only: str | None = None
    ) -> None:
        folder.mkdir(parents=True)
        self.fractions = (val_fraction, test_fraction)
        self.only = only
        names = (only,) if only else SPLITS
        self.writers = {name: RowWriter(folder / f"{name}.arrow") for name in names}
        self.keys = {name: bytearray() for name in names}

    def add(self, example: Example) -> None:
        name = self.only or split_of(example, *self.fractions)
        self.writers[name].append(example)
        self.keys[name] += _key(example.prompt_key) + _key(example.completion)

    def fill(self, source: Callable[[Callable[[Example], None]], T]) -> T:
        """Run `source(self.add)`; on any error close the files (the caller's folder removes them)."""
        try:
            return source(self.add)
        except BaseException:
            for writer in self.writers.values():
                writer.abort()
            raise

    def close(self) -> dict[str, Split]:
        splits = {name: Split(w.close(), self.keys[name]) for name, w in self.writers.items()}
        self.keys = {}
        return splits


def spread_sample(rows: Sequence[Example], cap: int) -> list[Example]:
    """All rows, or `cap` of them spread evenly over the sequence (deterministic), in memory."""
    import numpy as np

    if len(rows) <= cap:
        return list(rows)
    positions = np.unique(np.linspace(0, len(rows) - 1, max(cap, 1)).astype(np.int64))
    if isinstance(rows, Rows):
        return list(rows.select(positions))
    return [rows[int(i)] for i in positions]
