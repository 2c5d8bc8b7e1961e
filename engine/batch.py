"""Scale-out: decloud many scenes on a Dask distributed cluster, one scene per task, with retries and a summary.

A manifest CSV lists the scenes (columns ``id, optical, sar, out`` and optionally ``landcover, mask, reference,
model, weights``, and the inputs of temporal and DEM models: ``optical_prev, sar_prev, optical_next, sar_next,
date, date_prev, date_next, dem``, ``qa`` and ``confidence`` (where to write the scene's QA and confidence
rasters) — the ``engine run`` flags of
the same names; relative paths are relative to the
manifest's folder, an empty cell means "not given", dates are ISO 8601 and checked when the manifest is read). The
``sar`` cell may be empty only for a row whose model takes no SAR (``model`` = ``gapfill``, or such weights), or
whose ``sar_vv`` and ``sar_vh`` cells give the polarisations as two files. Input cells may hold any product or GDAL
dataset name ``engine run`` takes (:mod:`engine.sources.resolve`: a SAFE, a zip, ``/vsizip/…``), and ``mask`` may be
``auto``. Each scene is one task that calls :func:`engine.stream.pipeline.run` on a worker; the client collects outcomes
as they finish and rewrites the summary CSV (``id, status, output, seconds, error, attempts, warnings, model_percent,
scene_check_db``)
atomically after each one, so even an interrupted batch leaves an accurate record of what is done — and which
scenes deserve a second look (a partial SAR cover, a SAR acquired far from the optical image).

Failure policy (why it is split this way):

* A scene that fails with an :class:`~engine.errors.EngineError` (bad input, unwritable output, wrong weights)
  fails the same way every time: it is recorded as ``failed`` with its one-line message at once, without
  retries, and the other scenes go on.
* Anything else — a worker process that dies (out of host memory, a segfault in a driver, a pre-empted node), a
  lost connection, an unexpected exception — is retried up to ``retries`` more times as a new task. The
  scheduler's own silent rescheduling after a worker death is turned off (``allowed-failures = 0``) for the
  local cluster so that every attempt is counted in ``attempts``; on a remote scheduler its configuration rules.
* Outputs are never half-written: the engine writes into a hidden temporary file beside the output and renames it
  only when the scene is complete (:class:`engine.outputs.writer.AtomicGeoTIFFWriter`). A worker killed mid-scene can
  leave such a temporary file behind; the next attempt of that scene removes it before starting — only once its
  owner process is gone, and matching the output's name literally
  (:func:`engine.outputs.writer.remove_stale_temporaries`).
* Before any scene runs, :func:`check_batch_paths` rejects outputs that would overwrite the manifest, the summary,
  another scene's output or any file a scene's input opens. When the batch stops — done, failed, or asked to stop by
  SIGTERM or SIGHUP (a closed terminal) — the temporaries its killed workers left are removed once the cluster is
  down (:func:`remove_leftovers`).

Workers: ``scheduler="local"`` starts a :class:`distributed.LocalCluster` of ``workers`` processes with one task
thread each, and gives each worker's torch ``cpu_count // workers`` threads, so the cores are shared rather than
oversubscribed. ``dask://HOST:PORT`` (or ``tcp://HOST:PORT``) connects to a running scheduler instead.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from engine.errors import EngineError, InputError
from engine.names import temporary_stem

log = logging.getLogger("engine")

REQUIRED_COLUMNS = ("id", "optical", "sar", "out")  # the sar cell may be empty for a model without SAR (gapfill)
TEMPORAL_COLUMNS = ("optical_prev", "sar_prev", "optical_next", "sar_next")
DATE_COLUMNS = ("date", "date_prev", "date_next")
OPTIONAL_COLUMNS = ("landcover", "mask", "reference", "model", "weights", *TEMPORAL_COLUMNS, *DATE_COLUMNS, "dem",
                    "qa", "confidence", "sar_vv", "sar_vh")  # fmt: skip
PATH_COLUMNS = ("optical", "sar", "out", "landcover", "mask", "reference", "weights", *TEMPORAL_COLUMNS, "dem", "qa",
                "confidence", "sar_vv", "sar_vh")  # fmt: skip
SUMMARY_COLUMNS = ("id", "status", "output", "seconds", "error", "attempts", "warnings", "model_percent",
                   "scene_check_db")


class ManifestError(InputError):
    """The manifest CSV is missing, malformed or inconsistent."""


@dataclass(frozen=True)
class SceneJob:
    """One row of the manifest, paths resolved."""

    id: str
    optical: Path
    sar: Path | None
    out: Path
    landcover: Path | None = None
    mask: Path | None = None
    reference: Path | None = None
    model: str | None = None
    weights: Path | None = None
    optical_prev: Path | None = None
    sar_prev: Path | None = None
    optical_next: Path | None = None
    sar_next: Path | None = None
    date: datetime | None = None
    date_prev: datetime | None = None
    date_next: datetime | None = None
    dem: Path | None = None
    qa: Path | None = None  # the QA raster of the scene (engine run --qa)
    confidence: Path | None = None  # the confidence raster of the scene (engine run --confidence)
    sar_vv: Path | str | None = None  # split polarisations instead of ``sar`` (engine.sources.resolve)
    sar_vh: Path | str | None = None


@dataclass
class SceneOutcome:
    """One row of the summary CSV."""

    id: str
    status: str  # ok | failed
    output: str
    seconds: float
    error: str = ""
    attempts: int = 0
    warnings: str = ""  # the run's warnings (partial SAR cover, a far SAR date, ...) joined by " | "
    model_percent: str = ""  # share of the valid pixels holding the model's output (empty when it failed)
    scene_check_db: str = ""  # --scene-check: the model's margin over the better baseline on the scene's ground


@dataclass(frozen=True)
class BatchConfig:
    """How to run a batch: where (scheduler, workers), how often to retry, and the per-scene run settings."""

    scheduler: str = "local"  # local | dask://HOST:PORT | tcp://HOST:PORT
    workers: int = 2
    retries: int = 1
    summary: Path | None = None  # default: <manifest stem>.summary.csv beside the manifest
    run: dict[str, Any] = field(default_factory=dict)  # RunConfig fields applied to every scene (tile, device, ...)
    accel: dict[str, Any] = field(default_factory=dict)  # AccelConfig fields (dtype, compile, threads)

    def validate(self) -> None:
        cores = os.cpu_count() or 1
        if self.workers < 1 or (self.scheduler == "local" and self.workers > cores):
            raise InputError(f"--workers must be 1 to {cores} (the CPU cores of this machine) for the local cluster, "
                             f"got {self.workers}")  # fmt: skip
        if self.retries < 0:
            raise InputError(f"--retries must be 0 or more, got {self.retries}")
        scheme = self.scheduler.split("://", 1)[0] if "://" in self.scheduler else self.scheduler
        if scheme not in ("local", "dask", "tcp", "tls"):
            raise InputError(f"--scheduler must be local or dask://HOST:PORT, got '{self.scheduler}'")


def read_manifest(path: Path) -> list[SceneJob]:
    """Parse and check the manifest; raises :class:`ManifestError` naming the first problem (row numbers 1-based
    counting the header as row 1, as a spreadsheet shows them)."""
    path = Path(path)
    columns, rows = _read_rows(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise ManifestError(f"manifest {path.name} lacks column(s) {', '.join(missing)} (needs id, optical, sar, out)")
    unknown = [c for c in columns if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    if unknown:
        raise ManifestError(f"manifest {path.name} has unknown column(s) {', '.join(unknown)}")
    if not rows:
        raise ManifestError(f"manifest {path.name} lists no scene")
    jobs: list[SceneJob] = []
    ids: set[str] = set()
    outs: dict[Path, str] = {}
    for n, row in enumerate(rows, start=2):
        for c in REQUIRED_COLUMNS:
            split = c == "sar" and bool(row.get("sar_vv") or row.get("sar_vh"))  # VV and VH as two files
            if not row.get(c) and not split and not (c == "sar" and _takes_no_sar(row, path)):
                hint = " (only a model without SAR input, e.g. gapfill, may leave it empty)" if c == "sar" else ""
                raise ManifestError(f"manifest {path.name} row {n}: empty '{c}'{hint}")
        if row["id"] in ids:
            raise ManifestError(f"manifest {path.name} row {n}: duplicate id '{row['id']}'")
        ids.add(row["id"])
        values: dict[str, Any] = {"id": row["id"]}
        for c in REQUIRED_COLUMNS[1:] + OPTIONAL_COLUMNS:
            v = row.get(c) or None
            if v is not None and c in PATH_COLUMNS:
                v = _resolve(v, path)
            elif v is not None and c in DATE_COLUMNS:
                v = _parse_date(v, f"manifest {path.name} row {n}: '{c}'")
            values[c] = v
        job = SceneJob(**values)
        if job.out in outs:
            raise ManifestError(f"manifest {path.name} row {n}: output {job.out} is also scene '{outs[job.out]}''s")
        outs[job.out] = job.id
        jobs.append(job)
    return jobs


def _read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The header and the rows of a manifest, every problem one :class:`ManifestError` line (issue 15: a trailing
    comma, a Latin-1 or a binary file gave tracebacks)."""
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"manifest {path.name} is not UTF-8 text (byte {exc.start} is not UTF-8): save it as a "
                            "UTF-8 CSV") from None  # fmt: skip
    except OSError as exc:
        raise ManifestError(f"cannot read the manifest {path}: {exc.strerror or exc}") from None
    if "\x00" in text:
        raise ManifestError(f"manifest {path.name} is a binary file, not a CSV")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = reader.fieldnames or []
        rows = list(reader)
    except csv.Error as exc:
        raise ManifestError(f"manifest {path.name} line {reader.line_num}: not a valid CSV ({exc})") from None
    columns = [c.strip() for c in header]
    if "" in columns:
        raise ManifestError(f"manifest {path.name}: the header has an empty column name (a trailing comma?)")
    out = []
    for n, row in enumerate(rows, start=2):
        if None in row:  # more cells than the header has columns
            raise ManifestError(f"manifest {path.name} row {n} has {len(columns) + len(row[None])} cells but the "
                                f"header has {len(columns)} columns (a trailing comma, or a comma in an unquoted "
                                "path?)")  # fmt: skip
        out.append({k.strip(): (v or "").strip() for k, v in row.items()})
    return columns, out


def check_batch_paths(jobs: list[SceneJob], summary: Path, manifest: Path | None = None) -> None:
    """Reject, before any scene runs, a batch that would overwrite its own files (issues 15, 25): an output (``out``,
    ``qa``, ``confidence``) that is the manifest, the summary, another scene's output, a file any scene's input opens
    or a name GDAL reads beside one (:func:`engine.sources.footprint.run_footprint`: VRT sources, archives, sidecars;
    it also refuses an input that reaches the network), a summary that is the manifest or an input, and an output that
    exists as a non-regular file (a device, FIFO, socket or folder)."""
    from engine.outputs.guard import clash_message, file_kind
    from engine.sources.footprint import Footprint, run_footprint

    inputs = Footprint()
    for job in jobs:
        inputs.add(run_footprint(dataclasses.asdict(job)))
    taken: dict[object, str] = {}  # path (resolved) or (device, inode) of an existing file → what it is

    def keys(p: Path) -> list[object]:
        found: list[object] = [Path(p).resolve()]
        try:
            st = os.stat(p)
            found.append((st.st_dev, st.st_ino))
        except OSError:
            pass
        return found

    def claim(p: Path, what: str, where: str) -> None:
        for key in keys(p):
            if key in taken:
                raise ManifestError(f"{where}: {p} would overwrite {taken[key]}")
        clash = clash_message(Path(p), where, inputs)
        if clash is not None:
            raise ManifestError(clash)
        for key in keys(p):
            taken[key] = what

    if manifest is not None:
        claim(Path(manifest), "the manifest", "manifest")
    claim(Path(summary), "the summary", "--summary")
    for job in jobs:
        for target, name in ((job.out, "output"), (job.qa, "QA output"), (job.confidence, "confidence output")):
            if target is None:
                continue
            kind = file_kind(target)
            if kind is not None:
                raise ManifestError(f"scene '{job.id}': {name} {target} exists and is {kind}, not a regular file")
            claim(target, f"the {name} of scene '{job.id}'", f"scene '{job.id}' {name}")


def remove_leftovers(jobs: list[SceneJob]) -> list[Path]:
    """The temporaries of the scenes' outputs whose writers are gone (a worker killed with its cluster by SIGTERM or
    SIGHUP, a crash): removed once the cluster has stopped (only the writer's exact names, only dead owners)."""
    from engine.outputs.writer import remove_stale_temporaries

    removed: list[Path] = []
    for job in jobs:
        for target in (job.out, job.qa, job.confidence):
            if target is not None:
                removed += remove_stale_temporaries(target)
    return removed


def _resolve(value: str, manifest: Path) -> Path | str:
    """A path relative to the manifest's folder, absolute; GDAL dataset names and ``--mask``'s words as they are."""
    from engine.config import is_gdal_name, is_mask_word

    if is_gdal_name(value) or is_mask_word(value):
        return value
    p = Path(value).expanduser()
    return (p if p.is_absolute() else manifest.parent / p).resolve()


def _parse_date(value: str, where: str) -> datetime:
    from engine.config import parse_datetime

    try:
        return parse_datetime(value)
    except EngineError as exc:
        raise ManifestError(f"{where}: {exc}") from None


def _takes_no_sar(row: dict[str, str], manifest: Path) -> bool:
    """The row's model (``model`` and/or ``weights`` cell) is known to take no SAR (gapfill)."""
    if not row.get("model") and not row.get("weights"):
        return False
    from engine.models.roles import model_inputs
    from engine.stream.mode import default_model

    weights = _resolve(row["weights"], manifest) if row.get("weights") else None
    declared = model_inputs(row.get("model") or None, weights, default_model())
    return declared is not None and not declared.uses_sar


def run_scene(job: SceneJob, run_settings: dict[str, Any], accel_settings: dict[str, Any]) -> dict[str, Any]:
    """Run one scene (on a worker). EngineErrors come back as a ``failed`` record; anything else is raised so the
    client can retry it."""
    from engine.config import RunConfig
    from engine.outputs.writer import remove_stale_temporaries
    from engine.stream.accel import AccelConfig
    from engine.stream.pipeline import run

    t0 = time.perf_counter()
    record = {"id": job.id, "output": ""}
    try:
        for target in (job.out, job.qa, job.confidence):
            if target is not None:
                remove_stale_temporaries(target)  # only a dead attempt's: see engine.outputs.writer
        paths = {k: v for k, v in dataclasses.asdict(job).items() if k != "id" and v is not None}
        config = RunConfig(**{**run_settings, **paths})
        result = run(config, accel=AccelConfig(**accel_settings))
    except EngineError as exc:
        return {**record, "status": "failed", "seconds": time.perf_counter() - t0, "error": str(exc)}
    return {**record, "status": "ok", "output": str(result.output), "seconds": result.seconds, "error": "",
            "warnings": " | ".join(result.warnings), "model_percent": f"{100 * result.model_fraction:.2f}",
            "scene_check_db": f"{result.scene_check.margin_db:.2f}" if result.scene_check is not None else ""}


def _scheduler_address(spec: str) -> str:
    return "tcp://" + spec.split("://", 1)[1] if spec.startswith("dask://") else spec


@contextmanager
def open_client(config: BatchConfig) -> Iterator[Any]:
    """A ``distributed.Client`` for ``config.scheduler`` (a LocalCluster that is shut down afterwards for ``local``)."""
    try:
        import dask
        from distributed import Client, LocalCluster
    except ImportError:
        raise EngineError("batch needs dask and distributed: pip install 'aligncr[scale]'") from None
    if config.scheduler == "local":
        with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
            cluster = LocalCluster(
                n_workers=config.workers, threads_per_worker=1, processes=True, dashboard_address=None
            )
            try:
                with Client(cluster) as client:
                    yield client
            finally:
                cluster.close()
        return
    address = _scheduler_address(config.scheduler)
    try:
        client = Client(address, timeout="20s")
    except OSError as exc:
        raise EngineError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
    with client:
        yield client


def write_summary(path: Path, outcomes: list[SceneOutcome]) -> None:
    """Write the summary CSV atomically (temporary file + rename), in manifest order."""
    path = Path(path)
    tmp = path.with_name(f".{temporary_stem(path.name)}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS)
        w.writeheader()
        for o in outcomes:
            row = dataclasses.asdict(o)
            row["seconds"] = f"{o.seconds:.2f}"
            w.writerow(row)
    os.replace(tmp, path)


def default_summary_path(manifest: Path) -> Path:
    return Path(manifest).with_name(Path(manifest).stem + ".summary.csv")


def run_batch(
    jobs: list[SceneJob],
    config: BatchConfig,
    summary: Path,
    client: Any | None = None,
    on_outcome: Callable[[SceneOutcome, int, int], None] | None = None,
    manifest: Path | None = None,
) -> list[SceneOutcome]:
    """Run every job on the cluster (``client`` if given, else one opened from ``config``); returns the outcomes
    in manifest order and keeps ``summary`` up to date. ``on_outcome(outcome, finished, total)`` reports each.
    Paths that would overwrite the batch's own files are rejected first (:func:`check_batch_paths`)."""
    config.validate()
    check_batch_paths(jobs, summary, manifest)
    if client is None:
        try:
            with open_client(config) as own:
                return run_batch(jobs, config, summary, own, on_outcome, manifest)
        finally:  # after the cluster stopped (also on SIGTERM / SIGHUP): what its killed workers left
            remove_leftovers(jobs)
    from distributed import as_completed

    run_settings = dict(config.run)
    accel_settings = dict(config.accel)
    if config.scheduler == "local" and accel_settings.get("threads") is None:
        accel_settings["threads"] = max(1, (os.cpu_count() or 1) // config.workers)
    outcomes: dict[str, SceneOutcome] = {}
    attempts = {job.id: 0 for job in jobs}
    by_key: dict[str, SceneJob] = {}

    def submit(job: SceneJob) -> Any:
        attempts[job.id] += 1
        fut = client.submit(
            run_scene, job, run_settings, accel_settings, key=f"scene-{job.id}-{attempts[job.id]}", pure=False
        )
        by_key[fut.key] = job
        return fut

    pending = as_completed([submit(job) for job in jobs])
    for fut in pending:
        job = by_key.pop(fut.key)
        outcome: SceneOutcome | None = None
        if fut.status == "finished":
            rec = fut.result()
            outcome = SceneOutcome(rec["id"], rec["status"], rec["output"], rec["seconds"], rec["error"],
                                   warnings=rec.get("warnings", ""), model_percent=rec.get("model_percent", ""),
                                   scene_check_db=rec.get("scene_check_db", ""))
        else:
            exc = fut.exception()
            message = f"{type(exc).__name__}: {exc}".strip()
            if attempts[job.id] <= config.retries:
                log.warning("scene %s attempt %d failed (%s); retrying", job.id, attempts[job.id], message)
                pending.add(submit(job))
            else:
                outcome = SceneOutcome(job.id, "failed", "", 0.0, message)
        fut.release()
        if outcome is not None:
            outcome.attempts = attempts[job.id]
            outcomes[job.id] = outcome
            write_summary(summary, [outcomes[j.id] for j in jobs if j.id in outcomes])
            if on_outcome is not None:
                on_outcome(outcome, len(outcomes), len(jobs))
    return [outcomes[j.id] for j in jobs]
