"""paramiko's banner errors (with their line-by-line traceback) stay out of the log; its
other records pass."""

from __future__ import annotations

import logging
import threading

import pytest

from gateway.protocols.sshlog import LOGGER, BannerErrors, quiet_banner_errors


def banner_failure(logger: logging.Logger) -> None:
    """What paramiko's transport thread logs when a banner cannot be read."""
    logger.error("Exception (server): Error reading SSH protocol banner[Errno 9] Bad fd")
    chained = [
        "Traceback (most recent call last):",
        '  File "packet.py", line 663, in _read_timeout',
        "OSError: [Errno 9] Bad file descriptor",
        "",
        "During handling of the above exception, another exception occurred:",
        "",
        "Traceback (most recent call last):",
        "paramiko.ssh_exception.SSHException: Error reading SSH protocol banner",
        "",
    ]
    for line in chained:
        logger.error(line)
    logger.debug("EOF in transport thread")  # below errors: its level decides


def test_a_banner_error_and_its_traceback_are_dropped_other_records_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("test.sshlog")
    logger.addFilter(BannerErrors())
    caplog.set_level(logging.DEBUG, logger="test.sshlog")
    threads = [threading.Thread(target=banner_failure, args=(logger,)) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    logger.error("Exception (server): Incompatible ssh peer (no acceptable kex algorithm)")
    assert [r.getMessage() for r in caplog.records] == [
        *["EOF in transport thread"] * 20,
        "Exception (server): Incompatible ssh peer (no acceptable kex algorithm)",
    ]


def test_installed_once_on_paramikos_transport_logger() -> None:
    quiet_banner_errors()
    quiet_banner_errors()
    filters = logging.getLogger(LOGGER).filters
    assert sum(isinstance(f, BannerErrors) for f in filters) == 1
