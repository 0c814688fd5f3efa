"""End the simulator when the process that started it is gone, however that process ended.

``ebc demo`` runs the simulator as a child in a session of its own (so that Ctrl-C reaches the
daemon first, which then switches the simulated terminals off) and stops it last. If the demo is
killed outright — SIGKILL, the OOM killer, a crash — nothing stops the simulator: it would run on
for ever, holding its ports and pty links. So the starter makes a pipe the simulator's standard
input and never writes to it; the kernel closes the starter's end when the starter ends, whichever
way, and the simulator reads end-of-file and stops as cleanly as on SIGTERM.

(Linux's ``PR_SET_PDEATHSIG`` is not used: it fires when the parent *thread* that started the
child ends, not the process, and needs ``preexec_fn``, which is unsafe in a threaded parent.)
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable


def watch_lifeline(fd: int, on_gone: Callable[[], None]) -> Callable[[], None]:
    """Call ``on_gone`` once when ``fd`` (a pipe or terminal) reaches end-of-file or fails.

    Bytes read from it are ignored. Returns a function that stops watching. Raises ``ValueError``
    when ``fd`` cannot be watched (a regular file or ``/dev/null`` never signals its end).
    """
    loop = asyncio.get_running_loop()
    done = False

    def stop() -> None:
        nonlocal done
        if not done:
            done = True
            loop.remove_reader(fd)

    def readable() -> None:
        try:
            data = os.read(fd, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            stop()
            on_gone()

    try:
        loop.add_reader(fd, readable)
    except (PermissionError, ValueError, OSError) as exc:
        raise ValueError(f"file descriptor {fd} cannot be watched for end-of-file "
                         f"(it must be a pipe or a terminal): {exc}") from None
    return stop
