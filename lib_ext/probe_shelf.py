"""Probe a shelf of checkpoints: the same probe (lib_ext/probe.py) on each, one row per checkpoint.

Host-free: the host resolves the names, loads each checkpoint its own way and hands `probe_shelf` a function
that probes the loaded one. This module decides the order (the model loaded before the run first, so that it
costs no load, then the checkpoints as asked, each once), keeps going past a checkpoint that fails (its error
goes into its row), stops after the current checkpoint when interrupted, and formats the table, CSV and JSON.

Columns (`SHELF_COLUMNS`, one value per checkpoint): `checkpoint` (the WebUI's title), `hash` (its short sha256),
`score` (the probe's score, None after an error), `null_token_norm_mean` and `null_pooled_norm` (the norms of
te(""), the latter None for SD1/SD2), `unet_calls` (what the probe cost; as first computed when cached), `error`
(None, or why the checkpoint has no score).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from lib_ext.probe import RESULT_FORMAT, ProbeError, ProbeResult, ProbeSettings, _csv_text, _json_float

SHELF_COLUMNS = ("checkpoint", "hash", "score", "null_token_norm_mean", "null_pooled_norm", "unet_calls", "error")
MAX_CHECKPOINTS = 64
INTERRUPTED = "interrupted"


@dataclass(frozen=True)
class ShelfEntry:
    """A checkpoint to probe, as the host names it: `title` is what the WebUI lists, `hash` its short sha256
    (None when the WebUI does not hash)."""
    title: str
    hash: str | None = None


@dataclass(frozen=True)
class CheckpointKey:
    """A probe's cache key before the checkpoint is loaded: the file's content (hash), the probe settings, and
    what else the host knows changes the numbers (CLIP skip, emphasis, noise-schedule options)."""
    file: str
    settings: ProbeSettings
    variant: str = ""


@dataclass(frozen=True)
class ShelfRow:
    checkpoint: str
    hash: str | None
    result: ProbeResult | None = None
    error: str | None = None
    cached: bool = False
    seconds: float = 0.0  # the wall time of this row (loading included)

    @property
    def score(self) -> float | None:
        """The probe's score; None without a result or when an Interrupt left no level to average."""
        if self.result is None or not math.isfinite(self.result.score):
            return None
        return self.result.score

    def summary(self) -> dict[str, Any]:
        """The row as `SHELF_COLUMNS`."""
        embedding = self.result.embedding if self.result is not None else {}
        return {"checkpoint": self.checkpoint, "hash": self.hash, "score": self.score,
                "null_token_norm_mean": embedding.get("null_token_norm_mean"),
                "null_pooled_norm": embedding.get("null_pooled_norm"),
                "unet_calls": None if self.result is None else self.result.unet_calls, "error": self.error}


@dataclass(frozen=True)
class ShelfProbe:
    """The rows in probing order; `not_probed` the checkpoints an interrupt left out."""
    rows: tuple[ShelfRow, ...]
    interrupted: bool = False
    not_probed: tuple[str, ...] = ()

    def ranked(self) -> list[ShelfRow]:
        """Highest score first (the models that depend most on zero vs null uncond), rows without a score last."""
        return sorted(self.rows, key=lambda row: (row.score is None, -(row.score or 0.0)))

    def csv_rows(self) -> list[dict[str, Any]]:
        """One row per checkpoint, ranked, columns `SHELF_COLUMNS`."""
        return [row.summary() for row in self.ranked()]

    def to_csv(self) -> str:
        return _csv_text(SHELF_COLUMNS, self.csv_rows())

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, in probing order: `columns` (one value per checkpoint), the full `results` (None after an
        error), `cached` per checkpoint, `interrupted`, `not_probed`."""
        summaries = [row.summary() for row in self.rows]
        return {"format": RESULT_FORMAT + "/checkpoints",
                "columns": {name: [_json_float(s[name]) if isinstance(s[name], float) else s[name]
                                   for s in summaries] for name in SHELF_COLUMNS},
                "results": [None if row.result is None else row.result.to_dict() for row in self.rows],
                "cached": [row.cached for row in self.rows],
                "interrupted": self.interrupted, "not_probed": list(self.not_probed)}


def shelf_order(loaded: ShelfEntry | None, requested: Iterable[ShelfEntry]) -> list[ShelfEntry]:
    """The loaded model first (no load), then the requested checkpoints in the order asked, each once."""
    order: list[ShelfEntry] = [] if loaded is None else [loaded]
    for entry in requested:
        if all(entry.title != seen.title for seen in order):
            order.append(entry)
    if len(order) > MAX_CHECKPOINTS:
        raise ProbeError(f"Uncond Lab probe: at most {MAX_CHECKPOINTS} checkpoints per run, got {len(order)}")
    return order


def checkpoint_names(value: Any) -> list[str]:
    """The API's `checkpoints`: a list of names (a single name is accepted as a list of one)."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(name, str) and name.strip() for name in value):
        raise ProbeError(f"Uncond Lab probe: 'checkpoints' must be a list of checkpoint names, got {value!r:.200}")
    return [name.strip() for name in value]


def eta_seconds(row_seconds: Sequence[float], remaining: int) -> float | None:
    """The time left: the mean time of the rows probed so far (cached ones excluded) times the rows left."""
    if not row_seconds:
        return None
    return sum(row_seconds) / len(row_seconds) * remaining


def progress_text(index: int, total: int, title: str, eta: float | None) -> str:
    """'Model 2/4: name.safetensors [hash], ETA 12 s' (index from 0)."""
    left = "" if eta is None else f", ETA {max(eta, 0.0):.0f} s"
    return f"Model {index + 1}/{total}: {title}{left}"


def probe_shelf(entries: Sequence[ShelfEntry], probe_one: Callable[[ShelfEntry], tuple[ProbeResult, bool]],
                interrupted: Callable[[], bool] = lambda: False,
                on_model: Callable[[int, int, ShelfEntry, float | None], None] | None = None,
                clock: Callable[[], float] = time.monotonic) -> ShelfProbe:
    """Probe each entry with `probe_one(entry) -> (result, cached)` (it loads the checkpoint when needed).

    An exception from `probe_one` becomes that row's error and the run goes on; a result marked `interrupted`
    (the levels finished before an Interrupt) is kept with the error "interrupted"; when `interrupted()` is true
    after a row, the run stops there and the rest is listed in `not_probed`.
    `on_model(index, total, entry, eta)` is called before each row."""
    rows: list[ShelfRow] = []
    timings: list[float] = []
    for index, entry in enumerate(entries):
        if on_model is not None:
            on_model(index, len(entries), entry, eta_seconds(timings, len(entries) - index))
        start = clock()
        try:
            result, cached = probe_one(entry)
            error = INTERRUPTED if result.interrupted else result.non_finite_text()  # interrupted: levels kept
            row = ShelfRow(entry.title, entry.hash, result, error=error, cached=cached, seconds=clock() - start)
        except Exception as error:  # noqa: BLE001  (reported in its row; the other checkpoints still run)
            message = INTERRUPTED if interrupted() else _error_text(error)
            row = ShelfRow(entry.title, entry.hash, error=message, seconds=clock() - start)
        rows.append(row)
        if not row.cached:
            timings.append(row.seconds)
        if interrupted():
            return ShelfProbe(tuple(rows), True, tuple(e.title for e in entries[index + 1:]))
    return ShelfProbe(tuple(rows))


def _error_text(error: Exception) -> str:
    """Our own messages as they are; anything else with its type (a bare KeyError says only the key)."""
    text = str(error)
    return text if text.startswith("Uncond Lab") else f"{type(error).__name__}: {text}"


def resident_mb() -> float | None:
    """This process's resident memory (VmRSS, MiB), or None where /proc is not there."""
    try:
        with open(f"/proc/{os.getpid()}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def significant(value: Any, digits: int = 4) -> Any:
    """A float to `digits` significant digits for display (CSV and JSON keep full precision)."""
    if isinstance(value, float) and math.isfinite(value) and value != 0.0:
        return float(f"{value:.{digits}g}")
    return value
