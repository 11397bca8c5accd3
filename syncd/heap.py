"""The garbage collector tuned for a process that builds a large, lasting heap once (botocore's models,
the AWS libraries) and then makes many short-lived objects per file.

With CPython's default thresholds the collector ran hundreds of times in a `syncd once` of 5,000 files and
walked the start-up heap on every full pass (figures: bench/README.md). Young objects are now collected
after GEN0 more allocations than frees instead of 700, and what start-up built is frozen out of later
collections (gc.freeze) until the pipeline that built it ends. Until the S3 client is built (the imports
and botocore's models: ~85,000 lasting objects, ~2,000 of them garbage) nothing is collected at all, and
what is there then is frozen: the collections that ran during it cost 25-40 ms of every command's start-up.
"""

from __future__ import annotations

import gc

GEN0 = 10_000  # net allocations between young collections (CPython's default: 700)


def tune() -> None:
    """At process start: no collections until built(), then fewer young ones (the older generations keep
    CPython's ratios)."""
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0, gen1, gen2)
    gc.disable()


def built() -> None:
    """An S3 client is built. The first after tune(): what the imports and the client made lasts (frozen,
    so the first collection does not walk all of it), and from here on garbage is collected (a command may
    now wait on the server for long, retrying, and each failed attempt leaves cycles behind). Later clients
    (a reload's) change nothing."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def started() -> None:
    """Start-up is done: what it built lasts as long as the pipeline, so later collections skip it."""
    gc.freeze()


def ended() -> None:
    """A pipeline ended (a reload builds a new one): its start-up objects can be collected again."""
    gc.unfreeze()
