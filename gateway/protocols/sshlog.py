"""paramiko's banner errors: not a traceback in the gateway's log per unauthenticated peer.

paramiko's transport thread logs a failure to read the client's SSH banner (a peer that
closed or sent garbage before it, or one the front door closed at its login deadline) at
ERROR with its traceback, one record per line: about twenty lines that any peer can cause at
will, a slowloris a hundred times a second. The SSH door already audits each such connection
(`ssh.refused`, reason "handshake: ..."), so those records are dropped here, traceback
included; paramiko's other errors pass.
"""

from __future__ import annotations

import logging
import threading

BANNER_ERROR = "Error reading SSH protocol banner"
LOGGER = "paramiko.transport"


class BannerErrors(logging.Filter):
    """Drops a banner error and every error its thread logs after it: paramiko logs the
    traceback line by line (chained ones hold blank lines), and the transport thread ends
    with the failed banner, so all it says after is that traceback."""

    def __init__(self) -> None:
        super().__init__()
        self._local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if BANNER_ERROR in message:
            self._local.dropping = True
            return False
        return not (getattr(self._local, "dropping", False) and record.levelno >= logging.ERROR)


def quiet_banner_errors() -> None:
    """Install the filter on paramiko's transport logger (once)."""
    logger = logging.getLogger(LOGGER)
    if not any(isinstance(f, BannerErrors) for f in logger.filters):
        logger.addFilter(BannerErrors())
