"""The version both sides report in the tunnel handshake."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("wardgate")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
