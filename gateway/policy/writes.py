"""What writes: the one classification of built-in functions the read-only check refuses.

Pure and sans-I/O. Both paths read this table: the read-only check (`readonly`) refuses a
statement calling any function here, and the guardrails' facts (`facts`) give the statement
the kind and flag the function's entry names, so that a guarded connection whose rules allow
only reads stops every call a read-only grant stops. Matched on the unqualified name, in any
schema, as PostgreSQL's own parser hands it over (`pg_catalog.nextval` is `nextval`).

Each entry says what the call does and how the guardrails see it:

* kind `write`: it changes data or durable state: sequences (`nextval`, `setval`), large
  objects, a transaction id assigned (`txid_current`), WAL and replication slots, index
  maintenance, statistics reset, remote SQL (dblink), files written on the server.
* kind `utility`: it changes the session or the server without changing data, like the
  statements of that kind: settings (`set_config`, as SET), locks (advisory locks, as
  LOCK), notifications (`pg_notify`, as NOTIFY), backends and configuration.
* no kind, a flag only: it reads outside the database's data (server files, SQL text run by
  XML helpers); the flag (`server_files`, `dynamic_sql`, ...) is what an allow rule must
  name, as for COPY ... TO PROGRAM.

Statements follow the same split in `facts`: LOCK, NOTIFY, LISTEN, CALL, DO, SET are
`utility`; an allow rule for reads (`kinds: [read]`) allows none of them. What a
user-defined function does is not known here: `gateway.policy.functions` asks the catalog.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["write", "utility"]


@dataclass(frozen=True, slots=True)
class FunctionEffect:
    reason: str  # the read-only check's words: "function f() <reason>"
    kind: Kind | None  # the kind a call adds to the statement's facts
    flag: str | None = None  # the guardrail flag a call sets


def _entries(
    names: tuple[str, ...], reason: str, kind: Kind | None, flag: str | None = None
) -> dict[str, FunctionEffect]:
    return dict.fromkeys(names, FunctionEffect(reason, kind, flag))


# Reload or rotate the server's configuration and logs.
SERVER_CONFIG_FUNCTIONS = ("pg_reload_conf", "pg_rotate_logfile")
# Stop backends, drive WAL, replication slots and backups.
SERVER_ADMIN_FUNCTIONS = (
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_switch_wal",
    "pg_create_restore_point",
    "pg_create_physical_replication_slot",
    "pg_create_logical_replication_slot",
    "pg_drop_replication_slot",
    "pg_copy_physical_replication_slot",
    "pg_copy_logical_replication_slot",
    "pg_replication_slot_advance",
    "pg_logical_emit_message",
    "pg_logical_slot_get_changes",
    "pg_logical_slot_get_binary_changes",
    "pg_promote",
    "pg_backup_start",
    "pg_backup_stop",
    "pg_start_backup",
    "pg_stop_backup",
    "pg_wal_replay_pause",
    "pg_wal_replay_resume",
    "pg_log_backend_memory_contexts",
    "pg_log_standby_snapshot",
    "pg_replication_origin_create",
    "pg_replication_origin_drop",
    "pg_replication_origin_advance",
    "pg_replication_origin_session_setup",
    "pg_replication_origin_session_reset",
    "pg_replication_origin_xact_setup",
)
# Those of SERVER_ADMIN_FUNCTIONS that write WAL or replication state (kind write).
_DURABLE_ADMIN = frozenset(
    {
        "pg_switch_wal",
        "pg_create_restore_point",
        "pg_create_physical_replication_slot",
        "pg_create_logical_replication_slot",
        "pg_drop_replication_slot",
        "pg_copy_physical_replication_slot",
        "pg_copy_logical_replication_slot",
        "pg_replication_slot_advance",
        "pg_logical_emit_message",
        "pg_logical_slot_get_changes",
        "pg_logical_slot_get_binary_changes",
        "pg_replication_origin_create",
        "pg_replication_origin_drop",
        "pg_replication_origin_advance",
    }
)
# Server files read (or listed): outside data, but no write.
SERVER_FILE_READERS = (
    "pg_read_file",
    "pg_read_binary_file",
    "pg_ls_dir",
    "pg_stat_file",
    "pg_ls_logdir",
    "pg_ls_waldir",
    "pg_ls_tmpdir",
    "pg_ls_archive_statusdir",
    "pg_ls_logicalsnapdir",
    "pg_ls_logicalmapdir",
    "pg_ls_replslotdir",
    "pg_current_logfile",
    "pg_logdir_ls",
)
# Server files written, renamed or removed (adminpack), or copied to and from large objects.
SERVER_FILE_WRITERS = (
    "pg_file_write",
    "pg_file_rename",
    "pg_file_unlink",
    "pg_file_sync",
    "lo_import",
    "lo_export",
)
SERVER_FILE_FUNCTIONS = SERVER_FILE_READERS + SERVER_FILE_WRITERS
LARGE_OBJECT_WRITERS = (
    "lo_create",
    "lo_creat",
    "lo_unlink",
    "lo_put",
    "lo_from_bytea",
    "lo_open",  # any mode: INV_WRITE is a bit of a runtime argument
    "lowrite",
    "lo_truncate",
    "lo_truncate64",
)
REMOTE_FUNCTIONS = (
    "dblink",
    "dblink_exec",
    "dblink_connect",
    "dblink_connect_u",
    "dblink_send_query",
    "dblink_open",
    "dblink_fetch",
)
SQL_TEXT_FUNCTIONS = (
    "query_to_xml",
    "query_to_xmlschema",
    "query_to_xml_and_xmlschema",
    "cursor_to_xml",
    "cursor_to_xmlschema",
)
ADVISORY_LOCKS = (
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_advisory_xact_lock",
    "pg_advisory_xact_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
    "pg_try_advisory_xact_lock",
    "pg_try_advisory_xact_lock_shared",
)
STATISTICS_RESETS = (
    "pg_stat_reset",
    "pg_stat_reset_shared",
    "pg_stat_reset_single_table_counters",
    "pg_stat_reset_single_function_counters",
    "pg_stat_reset_slru",
    "pg_stat_reset_replication_slot",
    "pg_stat_reset_subscription_stats",
)
INDEX_MAINTENANCE = (
    "brin_summarize_new_values",
    "brin_summarize_range",
    "brin_desummarize_range",
    "gin_clean_pending_list",
)

_STATE = "changes session or database state"
_ADMIN = "administers the server or takes locks"
_FILES = "reads or writes files on the database server"

FUNCTIONS: dict[str, FunctionEffect] = {
    **_entries(("nextval", "setval"), _STATE, "write"),
    **_entries(("txid_current", "pg_current_xact_id"), _STATE, "write"),
    # set_config('role', ...) is SET ROLE by another name: `facts` flags it identity_change
    # unless its first argument is a constant naming another setting.
    **_entries(("set_config",), _STATE, "utility", "identity_change"),
    **_entries(("pg_notify",), _STATE, "utility"),
    **_entries(SERVER_FILE_READERS, _FILES, None, "server_files"),
    **_entries(SERVER_FILE_WRITERS, _FILES, "write", "server_files"),
    **_entries(LARGE_OBJECT_WRITERS, "writes large objects", "write"),
    **_entries(REMOTE_FUNCTIONS, "runs SQL text or connects to another server", "write", "remote"),
    **_entries(
        SQL_TEXT_FUNCTIONS, "runs SQL text or connects to another server", None, "dynamic_sql"
    ),
    **_entries(SERVER_CONFIG_FUNCTIONS, _ADMIN, "utility", "server_config"),
    **_entries(
        tuple(n for n in SERVER_ADMIN_FUNCTIONS if n not in _DURABLE_ADMIN),
        _ADMIN,
        "utility",
        "server_admin",
    ),
    **_entries(tuple(sorted(_DURABLE_ADMIN)), _ADMIN, "write", "server_admin"),
    **_entries(("pg_import_system_collations",), _ADMIN, "write"),
    **_entries(STATISTICS_RESETS, _ADMIN, "write"),
    **_entries(INDEX_MAINTENANCE, _ADMIN, "write"),
    **_entries(ADVISORY_LOCKS, _ADMIN, "utility"),
}
