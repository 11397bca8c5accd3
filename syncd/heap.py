"""The garbage collector tuned for a process that builds a large, lasting heap once (botocore's models,
the AWS libraries) and then makes many short-lived objects per file.

With CPython's default thresholds the collector ran hundreds of times in a `syncd once` of 5,000 files and
walked the start-up heap on every full pass (figures: bench/README.md). Young objects are now collected
after GEN0 more allocations than frees instead of 700, and what start-up built is frozen out of later
collections (gc.freeze) until the pipeline that built it ends.
"""

from __future__ import annotations

import gc

GEN0 = 10_000  # net allocations between young collections (CPython's default: 700)


def tune() -> None:
    """At process start: fewer young collections (the older generations keep CPython's ratios)."""
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0, gen1, gen2)


def started() -> None:
    """Start-up is done: what it built lasts as long as the pipeline, so later collections skip it."""
    gc.freeze()


def ended() -> None:
    """A pipeline ended (a reload builds a new one): its start-up objects can be collected again."""
    gc.unfreeze()
