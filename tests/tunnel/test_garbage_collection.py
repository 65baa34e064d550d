"""The daemons' collector settings: start-up objects frozen, young collections spaced out."""

from __future__ import annotations

import json
import subprocess
import sys

from tunnel.garbage_collection import OLDER_GENERATION_THRESHOLDS, YOUNG_GENERATION_THRESHOLD

PROBE = """
import gc, json
from tunnel.garbage_collection import settle_after_startup
before = gc.get_freeze_count()
settle_after_startup()
print(json.dumps({"before": before, "after": gc.get_freeze_count(),
                  "threshold": list(gc.get_threshold())}))
"""


def test_settling_freezes_what_start_up_allocated_and_raises_the_thresholds() -> None:
    # In a fresh interpreter, so this test process keeps its own collector settings.
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                          check=True, timeout=60)
    report = json.loads(done.stdout)
    assert report["before"] == 0
    assert report["after"] > 1000, "the imported modules' objects are in the permanent generation"
    assert report["threshold"] == [YOUNG_GENERATION_THRESHOLD, *OLDER_GENERATION_THRESHOLDS]
    assert YOUNG_GENERATION_THRESHOLD > 700, "must space out young collections beyond the default"
