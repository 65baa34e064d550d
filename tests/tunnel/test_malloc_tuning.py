"""The daemons' malloc thresholds: frame-sized buffers reuse heap pages instead of faulting."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tunnel.malloc_tuning import MMAP_THRESHOLD, operator_chose, tune_allocator
from tunnel.protocol.limits import DEFAULT_LIMITS

# A bulk transfer's buffers: a read of a frame's size, its masked copy, a joined payload.
PROBE = """
import json, os, resource, sys
from tunnel.protocol.limits import DEFAULT_LIMITS
from tunnel.malloc_tuning import tune_allocator
tuned = tune_allocator() if sys.argv[1] == "tuned" else False
source = os.urandom(256 * 1024)
def cycle():
    read = bytearray(source)
    masked = bytes(read)
    del read
    joined = masked + b"x"
    del masked, joined
for _ in range(20):
    cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(200):
    cycle()
print(json.dumps({"tuned": tuned,
                  "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _churn(mode: str) -> dict[str, object]:
    # A fresh interpreter each time: mallopt changes the whole process, and glibc's dynamic
    # thresholds depend on what the process allocated before.
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)}
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                          check=True, timeout=60, env=env)
    report: dict[str, object] = json.loads(done.stdout)
    return report


def test_tuned_thresholds_stop_the_page_faults_of_frame_sized_buffers() -> None:
    untuned = _churn("untuned")
    tuned = _churn("tuned")
    assert tuned["tuned"] is True, "glibc refused the thresholds"
    # 200 cycles of three 256 KiB buffers: glibc's defaults fault on every fresh page (64 per
    # buffer); with the thresholds set the heap's pages are reused.
    assert isinstance(untuned["faults"], int)
    assert isinstance(tuned["faults"], int)
    assert untuned["faults"] > 200 * 64, untuned
    assert tuned["faults"] < 200, tuned


@pytest.mark.parametrize(
    "environ",
    [
        {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072"},
        {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.mmap_threshold=65536"},
        {"MALLOC_TRIM_THRESHOLD_": "131072"},
        {"MALLOC_MMAP_THRESHOLD_": "65536"},
    ],
)
def test_an_operators_own_thresholds_win(environ: dict[str, str]) -> None:
    assert operator_chose(environ)
    assert tune_allocator(environ) is False


def test_other_tunables_leave_the_thresholds_to_the_daemon() -> None:
    assert not operator_chose({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
    assert not operator_chose({})


def test_the_heap_serves_a_whole_frame() -> None:
    # A frame's payload plus its header must stay below the threshold, or it goes back to mmap.
    assert DEFAULT_LIMITS.max_frame_size + 1024 < MMAP_THRESHOLD
