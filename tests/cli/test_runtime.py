"""Process tuning the long-running commands apply at start."""

from __future__ import annotations

import platform

import pytest

from cli.runtime import BULK, MANY_CONNECTIONS, tune_malloc


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_malloc_tuning_applies_on_glibc() -> None:
    assert tune_malloc(BULK, {}) is True
    assert tune_malloc(MANY_CONNECTIONS, {}) is True


def test_malloc_tuning_leaves_an_operators_malloc_settings_alone() -> None:
    assert tune_malloc(BULK, {"MALLOC_TRIM_THRESHOLD_": "131072"}) is False


def test_an_import_error_of_the_main_coroutine_is_raised_once() -> None:
    """Not taken for uvloop missing: `main` must not be run a second time."""
    from cli.runtime import run

    async def main() -> None:
        raise ImportError("cannot import name 'x'")

    with pytest.raises(ImportError, match="cannot import name 'x'"):
        run(main())
