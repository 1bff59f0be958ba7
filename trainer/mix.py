"""Several data sources mixed by weight (`data.mix`), a thin layer over `trainer.data.prepare`.

Each source is read, cleaned, deduplicated and split on its own (`prepare`), streamed to its own
Arrow files like `data.path` (trainer/rowstore.py), so a held-out row keeps its source. Only the training rows
are mixed: source i gets the share w_i / sum(w) of `data.mix_rows` rows; with mix_rows 0, the most
rows that repeat none (the source that runs out first at its share sets the total). Counts are
exact (largest remainder), and the rows drawn are a seeded shuffle of each source's training split,
so a seed gives the same rows every run. (Hand-written rather than `datasets.interleave_datasets`:
that draws each row's source at random, so counts only approach the weights, and it works on
Datasets, not on our rows on disk.)

Held-out rows are not sampled: every source's validation and test rows are kept, the test rows
interleaved across sources so that `eval.max_examples` takes an even share of each; `MixReport.heldout` names each held-out row's
source, and the evaluation reports metrics per source (`per_source_metrics`).

Memory: the rows stay in their sources' files; the mix holds per row a source number and a position
(trainer.rowstore.Interleaved).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from trainer.config import DataConfig
from trainer.data import DataReport, Example, prepare
from trainer.errors import DataError
from trainer.rowstore import Interleaved, Rows

Splits = dict[str, Sequence[Example]]


@dataclass
class MixReport:
    """What the mix drew from each source (recorded in the lineage as `data_mix`)."""

    seed: int
    rows: int
    """The training rows asked for (`data.mix_rows`; 0: the most without repeating a row)."""
    sources: list[dict[str, Any]] = field(default_factory=list)
    """Per source: path, weight, share, sha256, shape, rows read, training rows available and drawn,
    rows drawn twice or more (`repeated`), held-out rows kept."""
    heldout: dict[str, Any] = field(default_factory=dict, repr=False)
    """`val`/`test`: each held-out row's source (an index into `sources`), in the split's order."""

    def record(self) -> dict[str, Any]:
        return {"seed": self.seed, "rows": self.rows, "sources": self.sources}

    def paths(self, which: Any) -> list[str]:
        """The source path of each row of a split whose source indices are `which`."""
        return [self.sources[int(i)]["path"] for i in which]


def sample_counts(available: list[int], weights: list[float], total: int = 0) -> list[int]:
    """Rows to draw from each source: exactly proportional to `weights` (largest remainder) for
    `total` rows, or with total 0 for the most rows that need no source to repeat a row."""
    shares = [w / sum(weights) for w in weights]
    if total <= 0:
        total = int(min(n / s for n, s in zip(available, shares, strict=True)) + 1e-9)
    exact = [s * total for s in shares]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: (counts[i] - exact[i], i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def _rng(seed: int, path: str) -> Any:
    """A generator of its own per source, so adding a source does not change another's rows."""
    import numpy as np

    return np.random.default_rng(int.from_bytes(hashlib.sha256(f"{seed}:{path}".encode()).digest()[:8]))


def draw(available: int, count: int, rng: Any) -> Any:
    """Positions of `count` rows of a seeded shuffle of `available`, going round again (reshuffled)
    when it asks for more; ascending, so the rows on disk are read in order."""
    import numpy as np

    rounds = [rng.permutation(available) for _ in range(-(-count // available))] if available else []
    return np.sort(np.concatenate([*rounds, np.zeros(0, dtype=np.int64)])[:count])


def pick(rows: Sequence[Example], positions: Any) -> Sequence[Example]:
    """The rows at `positions` (ascending, repeats allowed); rows on disk stay there."""
    if isinstance(rows, Rows):
        return rows.select(positions)
    return [rows[int(i)] for i in positions]


def prepare_mix(
    sources: list[tuple[str, float]], seed: int, total: int = 0, **split: Any
) -> tuple[Splits, DataReport, MixReport]:
    """Prepare each (path, weight) source, draw the training rows by weight, keep held-out rows by
    source. `split` goes to `prepare` (fractions, dedup, drop_leaked)."""
    import numpy as np

    prepared = [(path, weight, *prepare(path, **split)) for path, weight in sources]
    parts: list[Splits] = [p for _, _, p, _ in prepared]
    counts = sample_counts([len(p["train"]) for p in parts], [w for _, w in sources], total)
    if not sum(counts):
        raise DataError(["data.mix drew no training rows; raise data.mix_rows or the weights"], "data.mix")
    mix = MixReport(seed=seed, rows=total)
    drawn = []
    for (path, weight, part, report), count in zip(prepared, counts, strict=True):
        drawn.append(pick(part["train"], draw(len(part["train"]), count, _rng(seed, path))))
        mix.sources.append(
            {
                "path": path,
                "weight": weight,
                "share": round(weight / sum(w for _, w in sources), 6),
                "sha256": report.sha256,
                "shape": report.shape,
                "rows_read": report.rows_read,
                "available": len(part["train"]),
                "sampled": count,
                "repeated": max(0, count - len(part["train"])),
                "heldout": {"val": len(part["val"]), "test": len(part["test"])},
            }
        )
    labels = np.repeat(np.arange(len(parts)), counts)
    np.random.default_rng(seed).shuffle(labels)
    mix.heldout = {
        "val": np.repeat(np.arange(len(parts)), [len(p["val"]) for p in parts]),
        "test": _round_robin([len(p["test"]) for p in parts]),
    }
    splits: Splits = {"train": Interleaved(drawn, labels)}
    for name in ("val", "test"):
        splits[name] = Interleaved([p[name] for p in parts], mix.heldout[name])
    return splits, combined_report(prepared, splits), mix


def _round_robin(sizes: list[int]) -> Any:
    """Source numbers taking turns (0, 1, 2, 0, 1, 2, ...), each until its `sizes` rows are used."""
    import numpy as np

    turn = np.concatenate([np.arange(n) for n in sizes] + [np.zeros(0, dtype=np.int64)])
    part = np.repeat(np.arange(len(sizes)), sizes)
    return part[np.lexsort((part, turn))]


def prepare_data(d: DataConfig, seed: int) -> tuple[Splits, DataReport, MixReport | None]:
    """The splits of `data.path`, or of the `data.mix` sources (with the mix's report)."""
    split: dict[str, Any] = {
        "val_fraction": d.val_fraction,
        "test_fraction": d.test_fraction,
        "do_dedup": d.dedup,
        "drop_leaked": d.drop_leaked,
    }
    if not d.mix:
        return (*prepare(d.path, test_spec=d.test_path, **split), None)
    return prepare_mix([(s.path, s.weight) for s in d.mix], seed, d.mix_rows, **split)


def summary(mix: MixReport) -> str:
    """One line for the console: what each source gave."""
    parts = [
        f"{s['path']} (weight {s['weight']:g}): {s['sampled']} of {s['available']} rows" for s in mix.sources
    ]
    return "; ".join(parts)


def combined_report(prepared: list[Any], splits: Splits) -> DataReport:
    """One DataReport for the mix: the sources' counts summed. (No held-out row's prompt is in
    another source's training rows: the split goes by a hash of the prompt, whatever its source.)"""
    reports: list[DataReport] = [r for _, _, _, r in prepared]
    h = hashlib.sha256()
    for path, weight, _, report in prepared:
        h.update(f"{path}\x00{weight}\x00{report.sha256}\n".encode())
    leakage: dict[str, int] = {}
    for r in reports:
        for k, v in r.leakage.items():
            leakage[k] = leakage.get(k, 0) + v
    return DataReport(
        source="mix(" + ", ".join(f"{path} x{weight:g}" for path, weight, _, _ in prepared) + ")",
        shape="+".join(sorted({r.shape for r in reports})),
        rows_read=sum(r.rows_read for r in reports),
        duplicates_dropped=sum(r.duplicates_dropped for r in reports),
        leaked_dropped=sum(r.leaked_dropped for r in reports),
        leakage=leakage,
        splits={k: len(v) for k, v in splits.items()},
        sha256=h.hexdigest(),
    )


def per_source_metrics(
    rows: list[Example], predictions: dict[str, list[str]], sources: list[str]
) -> dict[str, dict[str, dict[str, float]]]:
    """Text metrics per source of the held-out rows (`sources`: each row's source path):
    {source: {side: metrics}} (side: base, prompted, adapter), with each source's row count as `rows`."""
    from trainer.evaluate import text_metrics

    out: dict[str, dict[str, dict[str, float]]] = {}
    for source in dict.fromkeys(sources):
        idx = [i for i, s in enumerate(sources) if s == source]
        refs = [rows[i].completion for i in idx]
        out[source] = {
            side: {"rows": float(len(idx)), **text_metrics([preds[i] for i in idx], refs)}
            for side, preds in predictions.items()
        }
    return out
