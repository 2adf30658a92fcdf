"""The SSH relay's frames as a `shared.relay` peer, for both halves: the gateway's side
delivers the agent's frames to the client's channels, the agent's side the gateway's frames
to the target's. Channel data reaches the tunnel from the channels' own threads, so `read`
only waits for the connection to end; an SSH session has no half-close."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from shared.relay import Refused
from shared.sshwire import frames as f
from shared.sshwire.codec import FrameDecoder, SshWireError
from shared.sshwire.window import WindowError


class FramePeer:
    def __init__(
        self,
        deliver: Callable[[f.Frame], Awaitable[None]],
        ended: Callable[[], Awaitable[object]],
        sender: str,
    ) -> None:
        self._deliver = deliver
        self._ended = ended
        self._sender = sender  # who sends the frames, named when they break the protocol
        self._decoder = FrameDecoder()

    async def read(self) -> bytes | None:
        await self._ended()
        return None

    async def write(self, data: bytes) -> None:
        self._decoder.receive_data(data)
        try:
            for frame in self._decoder.frames():
                await self._deliver(frame)
        except (SshWireError, WindowError) as exc:
            raise Refused(f"{self._sender} broke the SSH relay protocol: {exc}") from exc

    async def write_eof(self) -> None:
        raise AssertionError("an SSH session has no half-close")

    async def wait_gone(self) -> None:
        raise AssertionError("an SSH session has no half-close")
