"""Overhead benchmarks: the same workloads, in the same run, direct vs `ssh -L` vs Wardgate.

`make bench` (or `python -m bench [--quick] [--out FILE]`) starts everything it measures and
stops all of it on exit, Ctrl-C included:

    pgbench / psql / psycopg ──▶ PostgreSQL (scram-sha-256)                      "direct"
    pgbench / psql / psycopg ──▶ ssh -L ──▶ sshd (loopback bastion) ──▶ PostgreSQL  "ssh_tunnel"
    pgbench / psql / psycopg ──TLS──▶ gateway ──gRPC/TLS──▶ agent ──▶ PostgreSQL    "wardgate"

Modules, in the order a run uses them:

    procs.py      child processes with log files, waiting on conditions with deadlines
    postgres.py   a throw-away cluster (`initdb`, scram-sha-256) with the pgbench tables
    bastion.py    OpenSSH `sshd` on loopback and the `ssh -N -L` tunnel through it
    wardgate.py   gateway and agent as separate processes (TLS, audit), one connection
    routes.py     a Route: how a client reaches the database, and which processes relay it
    workloads.py  one function per workload, one measurement of one route per call
    runner.py     the schedule: every workload, repeated, routes interleaved; medians
    report.py     rows with ratios and targets, the table for people, results.json

Every workload runs against all three routes in the same run, `repeats` times with the route
order rotated, and reports the median. Proxy CPU and memory are read from /proc (psutil) for
the relaying processes: gateway + agent for Wardgate, `ssh` + the `sshd` processes for the
tunnel; the direct route has no relay, so those rows have no direct value. All processes share
the machine's cores, so numbers measured on a small machine include the competition between
client, relay and server for them.
"""
