"""`servicex-joiner join`: a whole join on files, in parallel processes, with no servers.

Builds the key indexes once (cached in a local directory), checks duplicates across each dataset, then runs
one task per input file (`joiner.engine.join_file`) on a process pool: primary files, and the friend files
of a right/outer join. A file that fails is listed in the summary and does not stop the others.
Exit codes: 0 all good, 1 some file failed, 2 the spec or the datasets are unusable (nothing written).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from joiner.engine import (
    ColumnProducer,
    FileResult,
    OutputFormat,
    Role,
    join_file,
    resolve_friend_indexes,
    resolve_primary_index,
)
from joiner.errors import JoinError
from joiner.index import DatasetIndex
from joiner.sources import expand_paths
from joiner.spec import How, JoinSpec, load_spec
from transformer.commands.local_cache import LocalFragmentStore, default_cache_dir
from transformer.naming import object_name
from transformer.process_memory import keep_freed_memory

log = logging.getLogger("servicex_joiner.join")


@dataclass(frozen=True)
class Task:
    """One input file of the join and where its output goes."""

    role: Role
    path: str
    output: Path


@dataclass(frozen=True)
class Outcome:
    task: Task
    result: FileResult | None
    error: str | None
    seconds: float


def plan_tasks(spec: JoinSpec, primary_paths: Sequence[str], indexes: dict[str, DatasetIndex], out: Path) -> list[Task]:
    """Tasks of the per-file decomposition (DESIGN §4): output named by ServiceX's object-name rule."""
    tasks: list[Task] = []
    outer_like = [f for f in spec.friends if f.how in (How.RIGHT, How.OUTER)]
    if not outer_like or outer_like[0].how is How.OUTER:
        tasks += [Task(Role.PRIMARY, p, out / object_name(p, parquet=True)) for p in primary_paths]
    if outer_like:
        friend = outer_like[0]
        role = Role.RIGHT if friend.how is How.RIGHT else Role.ANTI
        suffix = ".parquet" if role is Role.RIGHT else ".anti.parquet"
        for path in indexes[friend.name].paths:
            name = object_name(path, parquet=False) + suffix
            tasks.append(Task(role, path, out / name))
    return tasks


@cache
def _producers(spec_json: str, triton_url: str | None) -> list[ColumnProducer]:
    """Inference producers, built once per process (gRPC channels do not survive a fork)."""
    from joiner.spec import parse_spec_text
    from transformer.inference import build_producers

    spec = parse_spec_text(spec_json)
    return list(build_producers(spec, triton_url))


def run_task(
    spec: JoinSpec,
    task: Task,
    indexes: dict[str, DatasetIndex],
    output_format: OutputFormat,
    chunk_entries: int | None,
    triton_url: str | None,
) -> Outcome:
    """Join one file; any failure becomes the outcome's error (the other files go on)."""
    started = time.perf_counter()
    try:
        producers = _producers(spec.canonical_json(), triton_url) if spec.inference else []
        result = join_file(
            spec,
            task.path,
            task.output,
            role=task.role,
            output_format=output_format,
            producers=producers,
            chunk_entries=chunk_entries,
            indexes=indexes,
        )
        return Outcome(task, result, None, time.perf_counter() - started)
    except JoinError as error:
        return Outcome(task, None, str(error), time.perf_counter() - started)
    except Exception as error:  # noqa: BLE001 - one broken file must not stop the others; reported per file
        return Outcome(task, None, f"{type(error).__name__}: {error}", time.perf_counter() - started)


def check_inference(spec: JoinSpec, triton_url: str | None) -> None:
    """Check the spec's models against the server once, before any file: a mismatch is a bad spec.

    Raises InferenceConfigError (no TRITON_URL) or ModelMismatchError, both ValueErrors. A server that is
    only unreachable is waited for briefly, then each file tries again and fails clearly.
    """
    if not spec.inference:
        return
    from transformer.inference import build_producers

    for producer in build_producers(spec, triton_url, startup_deadline_s=10.0):
        close = getattr(producer, "close", None)
        if close is not None:
            close()


def prepare(spec: JoinSpec, cache_dir: Path | None) -> tuple[list[str], dict[str, DatasetIndex]]:
    """Expand files, build (or load) every key index and refuse duplicate keys across datasets."""
    if not spec.primary.files:
        raise JoinError("primary.files is empty: a local join needs the primary files (paths, globs or URLs)")
    store = LocalFragmentStore(cache_dir) if cache_dir is not None else None
    primary_paths = expand_paths(spec.primary.files)
    indexes = resolve_friend_indexes(spec, fragment_store=store)
    primary = resolve_primary_index(spec, fragment_store=store)
    for index in [primary, *indexes.values()]:
        index.check_duplicates(spec.duplicates)
    indexes["primary"] = primary
    return primary_paths, indexes


def _format_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"


def _summary(spec: JoinSpec, outcomes: list[Outcome], wall: float, out: Path, output_format: OutputFormat) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=False)
    table = Table(title=f"servicex-joiner: {len(outcomes)} file(s) in {wall:.1f} s")
    table.add_column("input", overflow="fold")
    table.add_column("part")
    table.add_column("in", justify="right", overflow="fold")
    table.add_column("out", justify="right", overflow="fold")
    for friend in spec.friends:
        table.add_column(f"{friend.name}\nmatched / missing", justify="right", overflow="fold")
    table.add_column("size", justify="right", overflow="fold")
    table.add_column("events/s", justify="right", overflow="fold")
    events = 0
    for outcome in outcomes:
        name = Path(outcome.task.path).name
        if outcome.result is None:
            table.add_row(name, outcome.task.role.value, "[red]failed[/red]", "", *[""] * len(spec.friends), "", "")
            continue
        result = outcome.result
        events += result.events_in
        rate = result.events_in / outcome.seconds if outcome.seconds > 0 else 0.0
        table.add_row(
            name,
            outcome.task.role.value,
            f"{result.events_in:,}",
            f"{result.events_out:,}",
            *[f"{result.matched.get(f.name, 0):,}/{result.unmatched.get(f.name, 0):,}" for f in spec.friends],
            _format_bytes(result.output_bytes),
            f"{rate:,.0f}",
        )
    console.print(table)
    failed = [o for o in outcomes if o.error is not None]
    for outcome in failed:
        console.print(f"[red]FAILED[/red] {outcome.task.path}: {outcome.error}", soft_wrap=True)
    console.print(
        f"{len(outcomes) - len(failed)} of {len(outcomes)} file(s) joined, {events:,} events "
        f"({events / wall if wall > 0 else 0:,.0f} events/s); "
        f"{'ROOT files' if output_format is OutputFormat.ROOT else 'Parquet'} in {out}"
    )


def run(args: argparse.Namespace) -> int:
    """Handler of `servicex-joiner join`."""
    started = time.perf_counter()
    keep_freed_memory()  # this process (and each pool process) joins file after file
    triton_url = os.environ.get("TRITON_URL")
    try:
        spec = load_spec(args.spec)
        check_inference(spec, triton_url)
        cache_dir = Path(args.index_cache) if args.index_cache else default_cache_dir()
        primary_paths, indexes = prepare(spec, cache_dir)
    except (JoinError, ValueError) as error:  # ValueError: inference not configured or not fitting the model
        print(f"servicex-joiner: error: {error}", file=sys.stderr)
        return 2
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    tasks = plan_tasks(spec, primary_paths, indexes, out)
    output_format = OutputFormat(args.format)
    if output_format is OutputFormat.ROOT:
        tasks = [
            Task(t.role, t.path, t.output.with_suffix("") if t.output.suffix == ".parquet" else t.output) for t in tasks
        ]
    workers = max(1, min(args.workers or (os.cpu_count() or 1), len(tasks) or 1))
    outcomes = _execute(
        spec, tasks, indexes, output_format, args.chunk_entries, triton_url, workers, progress=not args.no_progress
    )
    _summary(spec, outcomes, time.perf_counter() - started, out, output_format)
    return 1 if any(o.error for o in outcomes) else 0


@dataclass(frozen=True)
class _TaskContext:
    """What every task of one join shares."""

    spec: JoinSpec
    indexes: dict[str, DatasetIndex]
    output_format: OutputFormat
    chunk_entries: int | None
    triton_url: str | None
    threads: int  # engine threads per worker process: the cores shared out, unless JOINER_THREADS says


_WORKER_CONTEXT: dict[str, _TaskContext] = {}  # filled once in each worker process by its initializer


def _install_context(context: _TaskContext) -> None:
    from joiner.threads import THREADS_VARIABLE

    _WORKER_CONTEXT["join"] = context
    keep_freed_memory()
    os.environ.setdefault(THREADS_VARIABLE, str(context.threads))  # before this process makes its pool


def _run_in_worker(task: Task) -> Outcome:
    context = _WORKER_CONTEXT["join"]
    return run_task(
        context.spec, task, context.indexes, context.output_format, context.chunk_entries, context.triton_url
    )


def _execute(
    spec: JoinSpec,
    tasks: list[Task],
    indexes: dict[str, DatasetIndex],
    output_format: OutputFormat,
    chunk_entries: int | None,
    triton_url: str | None,
    workers: int,
    *,
    progress: bool,
) -> list[Outcome]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    outcomes: list[Outcome] = []
    columns = (TextColumn("joining"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, disable=not progress, transient=False) as bar:
        job = bar.add_task("files", total=len(tasks))
        if workers == 1:
            for task in tasks:
                outcomes.append(run_task(spec, task, indexes, output_format, chunk_entries, triton_url))
                bar.advance(job)
            return outcomes
        from joiner.threads import thread_count

        threads = max(1, thread_count() // workers)
        context = _TaskContext(spec, indexes, output_format, chunk_entries, triton_url, threads)
        # the context (key indexes: tens of MB) goes to each worker process once, not with every task
        with ProcessPoolExecutor(max_workers=workers, initializer=_install_context, initargs=(context,)) as pool:
            futures: list[Future[Outcome]] = [pool.submit(_run_in_worker, task) for task in tasks]
            for future in futures:
                future.add_done_callback(lambda _f: bar.advance(job))
            outcomes = [f.result() for f in futures]
    return outcomes
