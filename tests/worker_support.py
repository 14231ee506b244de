"""Helpers for the worker tests and benchmark: NanoAOD-like files, friends, and worker subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import uproot

REPO = Path(__file__).resolve().parents[1]
KEYS = ("run", "luminosityBlock", "event")


def write_nano_like(path: Path, events: int, *, seed: int, first_event: int = 1, lzma: bool = True) -> None:
    """A NanoAOD-like file: key branches, a Muon and a Jet collection with counters, an event weight."""
    rng = np.random.default_rng(seed)
    n_muon = rng.poisson(1.5, events).astype(np.int32)
    n_jet = rng.poisson(4.0, events).astype(np.int32)
    offsets_m = np.concatenate([[0], np.cumsum(n_muon)])
    offsets_j = np.concatenate([[0], np.cumsum(n_jet)])
    import awkward as ak

    def jagged(offsets: np.ndarray, values: np.ndarray) -> ak.Array:
        return ak.unflatten(values, np.diff(offsets))

    branches = {
        "run": np.full(events, 1, dtype=np.uint32),
        "luminosityBlock": (np.arange(events) // 1000 + 1).astype(np.uint32),
        "event": np.arange(first_event, first_event + events, dtype=np.uint64),
        "genWeight": rng.normal(1.0, 0.1, events).astype(np.float32),
        "Muon": ak.zip({
            "pt": jagged(offsets_m, rng.exponential(30, offsets_m[-1]).astype(np.float32)),
            "eta": jagged(offsets_m, rng.normal(0, 1.5, offsets_m[-1]).astype(np.float32)),
        }),
        "Jet": ak.zip({
            "pt": jagged(offsets_j, rng.exponential(40, offsets_j[-1]).astype(np.float32)),
            "eta": jagged(offsets_j, rng.normal(0, 2, offsets_j[-1]).astype(np.float32)),
            "btag": jagged(offsets_j, rng.uniform(0, 1, offsets_j[-1]).astype(np.float32)),
        }),
    }
    compression = uproot.LZMA(6) if lzma else uproot.ZLIB(1)
    with uproot.recreate(path, compression=compression) as out:
        out.mktree(
            "Events",
            {name: value.type if isinstance(value, ak.Array) else value.dtype for name, value in branches.items()},
            field_name=lambda outer, inner: inner if outer == "" else outer + "_" + inner,
            counter_name=lambda counted: "n" + counted,
        )
        out["Events"].extend(branches)


def write_friend(primary: Path, path: Path, *, seed: int, reorder: bool, duplicate: bool = False,
                 lzma: bool = True) -> np.ndarray:
    """A friend tree with the primary's keys and a float column `sf` (= a function of `event`).

    Returns the permutation used (identity when aligned).
    """
    keys = uproot.open(primary)["Events"].arrays(list(KEYS), library="np")
    n = len(keys["event"])
    order = np.random.default_rng(seed).permutation(n) if reorder else np.arange(n)
    if duplicate and n > 1:
        order = order.copy()
        order[1] = order[0]
    columns = {name: keys[name][order] for name in KEYS}
    columns["sf"] = (keys["event"][order] % 1000).astype(np.float32) / 1000
    with uproot.recreate(path, compression=uproot.LZMA(6) if lzma else uproot.ZLIB(1)) as out:
        # mktree: a TTree (assigning a dict writes an RNTuple in uproot >= 5.7)
        out.mktree("Events", {name: value.dtype for name, value in columns.items()})
        out["Events"].extend(columns)
    return order


def truncated_copy(source: Path, target: Path, fraction: float = 0.5) -> None:
    """A corrupt ROOT file: the first part of a real one."""
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * fraction)])


def write_spec(path: Path, friends: Sequence[Mapping[str, Any]], columns: Sequence[str] = ("Muon_pt", "nMuon")) -> Path:
    """A join spec (JSON) with the cms key."""
    path.write_text(json.dumps({"primary": {"columns": list(columns)}, "key": "cms", "friends": list(friends)}))
    return path


class WorkerProcess:
    """`servicex-joiner worker` in a subprocess, with its log in a file."""

    def __init__(self, *, request_id: str, rabbit_url: str, spec: Path, env: Mapping[str, str], log: Path,
                 probe_port: int, extra_args: Sequence[str] = ()) -> None:
        self.log_path = log
        self.probe_port = probe_port
        full_env = {**os.environ, **env, "JOINER_METRICS_HOST": "127.0.0.1", "JOINER_METRICS_PORT": str(probe_port)}
        full_env.pop("LOG_LEVEL", None)
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "transformer.cli", "worker", "--request-id", request_id,
                 "--rabbit-uri", rabbit_url, "--spec", str(spec), *extra_args],
                stdout=out, stderr=subprocess.STDOUT, env=full_env, cwd=REPO,
            )

    def log(self) -> str:
        """The log so far."""
        return self.log_path.read_text(errors="replace")

    def probe(self, path: str) -> httpx.Response:
        """GET a probe path."""
        return httpx.get(f"http://127.0.0.1:{self.probe_port}{path}", timeout=5)

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Wait until /readyz answers 200."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}:\n{self.log()}")
            try:
                if self.probe("/readyz").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"worker not ready after {timeout_s} s:\n{self.log()}")

    def wait_log(self, text: str, timeout_s: float = 60.0) -> None:
        """Wait until `text` appears in the log."""
        deadline = time.monotonic() + timeout_s
        while text not in self.log():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{text!r} not logged after {timeout_s} s:\n{self.log()}")
            time.sleep(0.05)

    def terminate(self, timeout_s: float = 60.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout_s)

    def kill(self) -> None:
        """SIGKILL and wait."""
        self.process.kill()
        self.process.wait(30)
