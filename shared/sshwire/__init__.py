"""SSH channel traffic inside a tunnel session's Data payloads (sans-I/O).

One Wardgate SSH session is one client SSH connection: the gateway terminates the client's
SSH (paramiko server) and the agent opens its own SSH connection to the target (paramiko
client). Between them, everything that crosses is one of the typed frames in
`shared.sshwire.frames`, each naming the channel it belongs to, encoded by
`shared.sshwire.codec` into the tunnel's byte stream:

    gateway -> agent   ChannelOpen, PtyRequest, EnvRequest, ShellRequest, ExecRequest,
                       SubsystemRequest, WindowChange, SignalRequest, ChannelData, Eof,
                       ChannelClose
    agent -> gateway   OpenResult, RequestResult, ChannelData, ExtendedData, Eof,
                       ExitStatus, ExitSignal, ChannelClose

Requests carry an id the answer repeats, so a waiting SSH request is matched to its result.
Both directions carry WindowAdjust: per channel, a sender keeps at most CHANNEL_WINDOW
unacknowledged data bytes in flight (like SSH's own channel windows, or h2's per-stream
windows), so each side reads the tunnel without ever blocking on one slow channel.
"""
