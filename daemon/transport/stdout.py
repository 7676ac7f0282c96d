"""Keeping stdout for protocol lines, from the first moment.

Its own module because it runs before anything else is imported (the answer to
``initialize`` may be written before anyio is loaded; see ``frontends.handshake``).
"""

from __future__ import annotations

import os
import sys


def protect_stdout() -> int:
    """Keep the real stdout for protocol lines and point fd 1 at stderr.

    After this, a stray ``print`` or a chatty library writes to stderr and can never
    corrupt the protocol stream.
    """
    sys.stdout.flush()
    proto_fd = os.dup(1)
    os.dup2(2, 1)
    return proto_fd
