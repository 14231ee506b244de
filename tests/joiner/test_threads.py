"""How many threads the engine uses: a setting, else the CPUs the process is given (affinity, cgroup quota)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from joiner.threads import THREADS_VARIABLE, available_cpus, thread_count


def test_the_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(THREADS_VARIABLE, "3")
    assert thread_count() == 3


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_a_bad_setting_is_refused_naming_it(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(THREADS_VARIABLE, value)
    with pytest.raises(ValueError, match=THREADS_VARIABLE):
        thread_count()


def test_a_cgroup_quota_caps_the_cpus(tmp_path: Path) -> None:
    cpu_max = tmp_path / "cpu.max"
    affinity = len(os.sched_getaffinity(0))
    cpu_max.write_text("100000 100000\n")  # one CPU, as a pod with `limits.cpu: 1`
    assert available_cpus(cpu_max) == 1
    cpu_max.write_text("150000 100000\n")  # 1.5 CPUs: two threads, each throttled a little
    assert available_cpus(cpu_max) == min(2, affinity)
    cpu_max.write_text("max 100000\n")  # no quota
    assert available_cpus(cpu_max) == affinity
    assert available_cpus(tmp_path / "absent") == affinity
