"""The open-file limit, raised to what the workers need, as Go programs (s5cmd, rclone) raise theirs.

systemd starts services with a soft RLIMIT_NOFILE of 1024 (hard 524288). Each worker may hold a file open
and a connection in each of three pools (the plain client's, the fast path's two), so a few hundred
workers pass 1024 and requests would fail with "Too many open files". The soft limit is raised, never past
the hard one; when the hard one is too low, `open_files_limited` says how to fix it.
"""

from __future__ import annotations

import errno
import resource

from syncd.log import get_logger

OUT_OF_FDS = (errno.EMFILE, errno.ENFILE)  # no descriptor left for the process, or the system
PER_WORKER = 4  # a file being read, and one connection in each of the three pools
SPARE = 64  # the state database, the watcher, the log, a helper process's pipes, the pools' 8 spare each


def raise_for(workers: int) -> None:
    """Raise the soft open-file limit to what `workers` need; a warning when the hard limit is below it."""
    want = PER_WORKER * workers + SPARE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < want:
        get_logger().warning(
            "open_files_limited",
            reason=f"workers: {workers} may need {want} open files and the hard limit is {hard}",
            hint=f"raise it (LimitNOFILE={want} in the unit, ulimit -Hn in a shell) or lower workers",
        )
