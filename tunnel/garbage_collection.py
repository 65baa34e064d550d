"""Garbage-collector settings for the long-running daemons (edge and connector).

Both daemons allocate many short-lived objects per request (heads, frames, events) on top of
tens of thousands of long-lived ones (imported modules, configuration, the rule tables). With
CPython's defaults a full collection walks all of them again and again, which showed up as
2-8% of the CPU of a small-request load and as millisecond stalls in the latency tail.

Once a daemon is ready, :func:`settle_after_startup` moves everything alive into the permanent
generation (``gc.freeze``), so later collections never scan it, and raises the first
generation's threshold so that short-lived garbage is collected in fewer, larger passes. Reference
counting still frees almost everything at once; these settings only matter for cycles.
"""

from __future__ import annotations

import gc

YOUNG_GENERATION_THRESHOLD = 20_000
"""Allocations (net of frees) between two collections of the youngest generation (default 700)."""
OLDER_GENERATION_THRESHOLDS = (20, 50)


def settle_after_startup() -> None:
    """Freeze what start-up allocated and space out collections; call once, when ready."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_GENERATION_THRESHOLD, *OLDER_GENERATION_THRESHOLDS)


__all__ = ["OLDER_GENERATION_THRESHOLDS", "YOUNG_GENERATION_THRESHOLD", "settle_after_startup"]
