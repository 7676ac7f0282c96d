"""SQLite: one writer task, group commit, shielded units of work, one thread hop per batch.

Why a writer task rather than a lock: with ``synchronous=FULL`` every commit is an fsync,
so units that arrive together (two sessions' turns committing at once) share one
transaction, each inside its own savepoint so that one unit's failure rolls back only that
unit. Callers wait for their unit's outcome inside a shield: a cancelled request can stop
waiting only after the unit has committed or rolled back, so nothing is left half-open and
the caller never has to guess whether its write happened.

Why not aiosqlite (the listed package): it hands every *statement* to its thread and back,
~90 µs each on these machines, and a tool round trip commits two units of six statements:
over a millisecond in hand-offs alone. Here a whole batch (BEGIN … COMMIT) runs in one
worker-thread call. Units keep an awaitable interface (``Connection``) whose coroutines
never suspend, so ``tables`` reads the same either way and a unit is driven to completion
synchronously on the thread.

Reads: small ones (a session, a page) run inline on the event loop on a connection that
never waits for a lock; large ones (a whole history) run on a worker thread on a third
connection. An ``--ephemeral`` store is a shared-cache in-memory database, so the same holds.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sqlite3
from pathlib import Path
from typing import Any, Awaitable, Callable, Coroutine, TypeVar

import msgspec
import anyio

from .. import errors
from .migrations import migrate
from ..logs import get_logger

log = get_logger("warren.store")

T = TypeVar("T")
Unit = Callable[["Connection"], Awaitable[T]]

MAX_BATCH = 64

_REASONS = {
    sqlite3.SQLITE_BUSY: ("locked", True, "The database is locked by another process; retry shortly"),
    sqlite3.SQLITE_LOCKED: ("locked", True, "The database is locked; retry shortly"),
    sqlite3.SQLITE_READONLY: ("read_only", False, "The database is read-only: check the file's permissions and its file system"),
    sqlite3.SQLITE_FULL: ("full", False, "The disk is full: free some space, then retry"),
    sqlite3.SQLITE_IOERR: ("io", True, "The database had an I/O error"),
    sqlite3.SQLITE_CORRUPT: ("corrupt", False, "The database file is corrupt: restore it from a backup or move it aside"),
    sqlite3.SQLITE_NOTADB: ("corrupt", False, "The file is not a Warren database: move it aside or pass another --db"),
    sqlite3.SQLITE_CANTOPEN: ("cant_open", False, "The database file cannot be opened: check the path and permissions"),
    sqlite3.SQLITE_PERM: ("permission", False, "Permission denied on the database"),
}


def store_error(exc: BaseException) -> errors.Store:
    """Translate a sqlite3 or OS error into the service's ``Store`` error."""
    if isinstance(exc, errors.Store):
        return exc
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        reason, retryable, message = _REASONS.get(code & 0xFF, ("error", False, "The database failed"))
        return errors.Store(f"{message} ({getattr(exc, 'sqlite_errorname', code)})", reason=reason, retryable=retryable)
    if isinstance(exc, OSError):
        if exc.errno == errno.ENOSPC:
            return errors.Store("The disk is full: free some space, then retry", reason="full", retryable=False)
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return errors.Store(f"Cannot write the database: {exc.strerror}", reason="read_only", retryable=False)
        return errors.Store(f"The database failed: {exc.strerror}", reason="io", retryable=True)
    return errors.Store("The database failed", reason="error", retryable=False)


def _is_store_failure(exc: BaseException) -> bool:
    return isinstance(exc, (sqlite3.Error, OSError))


class _Job(msgspec.Struct):
    fn: Unit[Any]
    readonly: bool = False
    done: anyio.Event = msgspec.field(default_factory=anyio.Event)
    result: Any = None
    error: BaseException | None = None


class Connection:
    """A sqlite3 connection behind the awaitable interface that ``tables`` and the units
    use. Its coroutines never suspend: ``drive`` runs a unit over it to completion, on
    whichever thread calls it (never two threads at once)."""

    def __init__(self, target: str, *, uri: bool = False, busy_timeout_ms: int = 0, query_only: bool = False) -> None:
        self.raw = sqlite3.connect(target, isolation_level=None, check_same_thread=False, uri=uri)
        self.raw.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        self.raw.execute("PRAGMA foreign_keys = ON")
        if query_only:
            self.raw.execute("PRAGMA query_only = ON")

    async def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        return self.raw.execute(sql, params)

    async def executemany(self, sql: str, rows: Any) -> sqlite3.Cursor:
        return self.raw.executemany(sql, rows)

    async def execute_fetchall(self, sql: str, params: Any = ()) -> list[Any]:
        return self.raw.execute(sql, params).fetchall()

    @property
    def in_transaction(self) -> bool:
        return self.raw.in_transaction

    def close(self) -> None:
        try:
            self.raw.close()
        except sqlite3.Error:
            pass


def drive(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (a unit over a ``Connection``) to its result."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError("a store unit awaited something other than its Connection")


def default_db_path(env: dict[str, str] | os._Environ[str] = os.environ) -> Path:
    base = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "warren" / "warren.db"


class OwnerLock:
    """Proves this process is alive to other daemons sharing the database file.

    Each daemon holds an exclusive ``flock`` on its own file in ``<db>.owners/``. A turn row
    records its owner's id; another daemon finding that row ``running`` tries the owner's
    lock: if it can take it, the owner is dead and the turn can be closed. Unlike a pid,
    this survives pid reuse and works on every POSIX system.
    """

    def __init__(self, db_path: Path | None) -> None:
        self.owner_id = os.urandom(16).hex()
        self._dir = None if db_path is None else db_path.with_name(db_path.name + ".owners")
        self._fd: int | None = None

    def acquire(self) -> None:
        if self._dir is None:
            return
        self._dir.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(self._dir / self.owner_id, os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None and self._dir is not None:
            try:
                os.unlink(self._dir / self.owner_id)
            except OSError:
                pass
            os.close(self._fd)
            self._fd = None

    def is_alive(self, owner_id: str | None) -> bool:
        if owner_id is None:
            return False
        if owner_id == self.owner_id:
            return True
        if self._dir is None:
            return False
        path = self._dir / owner_id
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        try:
            os.unlink(path)
        except OSError:
            pass
        return False


class Store:
    """The database. ``write`` and ``read`` run units of work; everything else is plumbing."""

    def __init__(self, path: Path | None, *, busy_timeout_ms: int = 5000, on_open: Unit[Any] | None = None) -> None:
        self.path = path
        #: Runs once in a write transaction right after migrations, before any other unit:
        #: the service closes turns whose process died here, so no request sees them.
        self.on_open = on_open
        self.busy_timeout_ms = busy_timeout_ms
        self.owner = OwnerLock(path)
        self._writer: Connection | None = None
        self._reader: Connection | None = None
        self._inline: Connection | None = None
        self._read_limiter = anyio.CapacityLimiter(1)
        self._send: Any = None
        self._receive: Any = None
        self._opened = anyio.Event()
        self._wanted = anyio.Event()
        self._open_error: errors.Store | None = None
        self._open_lock = anyio.Lock()

    def want_open(self) -> None:
        """Open the database soon (``run`` waits for this, or for the first unit)."""
        self._wanted.set()

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """Open the database and serve units until cancelled; the writer task itself.

        Opening waits until it is wanted (the first input line, or the first unit), so that
        connecting and migrating never delay the answer to ``initialize``.
        """
        self._send, self._receive = anyio.create_memory_object_stream[_Job](1024)
        task_status.started()
        await self._wanted.wait()
        await self._try_open()
        try:
            await self._serve_writes()
        finally:
            self._close_connections()

    async def _try_open(self) -> None:
        # Shielded: an open cancelled half-way would leave connections nobody closes.
        with anyio.CancelScope(shield=True):
            await self._try_open_shielded()

    async def _try_open_shielded(self) -> None:
        async with self._open_lock:
            if self._writer is not None:
                return
            try:
                await anyio.to_thread.run_sync(self._open)
                self._open_error = None
            except Exception as exc:  # noqa: BLE001 - every open failure is a store error
                self._close_connections()
                self._open_error = store_error(exc) if _is_store_failure(exc) else errors.Store(
                    f"Cannot open the database: {exc}", reason="error", retryable=False
                )
                log.error("store_open_failed", path=str(self.path), reason=self._open_error.reason,
                          error=self._open_error.message)
            finally:
                self._opened.set()

    def _open(self) -> None:
        """Connect, migrate and recover (on a worker thread: it may wait for a lock)."""
        busy = self.busy_timeout_ms
        if self.path is None:
            # A named shared-cache memory database, so reads can also run inline on a
            # second connection (a table a write holds answers "locked": then they queue).
            uri = f"file:warren-{os.urandom(16).hex()}?mode=memory&cache=shared"
            self._writer = Connection(uri, uri=True, busy_timeout_ms=busy)
            self._inline = Connection(uri, uri=True, query_only=True)
        else:
            for parent in reversed(self.path.parents):  # every missing parent 0700, like the default
                if not parent.exists():
                    parent.mkdir(mode=0o700, exist_ok=True)
            if not self.path.exists():
                os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
            self._writer = Connection(str(self.path), busy_timeout_ms=busy)
            mode = self._writer.raw.execute("PRAGMA journal_mode = WAL").fetchone()
            if mode and str(mode[0]).lower() != "wal":
                log.warning("store_not_wal", journal_mode=mode[0])
            self._reader = Connection(str(self.path), busy_timeout_ms=busy, query_only=True)
            self._inline = Connection(str(self.path), query_only=True)
            self.owner.acquire()
        self._writer.raw.execute("PRAGMA synchronous = FULL")
        drive(migrate(self._writer))
        if self.on_open is not None:
            self._writer.raw.execute("BEGIN IMMEDIATE")
            try:
                drive(self.on_open(self._writer))
                self._writer.raw.execute("COMMIT")
            except BaseException:
                self._writer.raw.execute("ROLLBACK")
                raise

    def _close_connections(self) -> None:
        for conn in (self._inline, self._reader, self._writer):
            if conn is not None:
                conn.close()
        self._inline = self._reader = self._writer = None
        self.owner.release()

    async def _ready(self) -> None:
        self._wanted.set()
        await self._opened.wait()
        if self._writer is None:
            await self._try_open()
            if self._writer is None:
                assert self._open_error is not None
                raise self._open_error

    async def write(self, fn: Unit[T], *, readonly: bool = False) -> T:
        """Run ``fn`` in a write transaction and return its result or raise its error.

        Shielded: once submitted, the unit's outcome is awaited even if the caller is
        cancelled; the cancellation takes effect at the caller's next checkpoint.
        """
        with anyio.CancelScope(shield=True):
            await self._ready()
            job = _Job(fn, readonly)
            await self._send.send(job)
            await job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[no-any-return]

    async def read(self, fn: Unit[T], *, small: bool = True) -> T:
        """Run a read-only unit.

        A ``small`` read (one indexed statement: a session, a page) runs inline on the
        event loop: it takes tens of microseconds, less than handing it to a thread. Its
        connection never waits for a lock (``busy_timeout = 0``): if SQLite says busy or
        locked, the read goes to a worker thread, which may wait, off the loop. Large
        reads (a whole history) always go there.
        """
        await self._ready()
        if small:
            try:
                return self.read_now(fn)
            except anyio.WouldBlock:
                pass
            except sqlite3.OperationalError as exc:
                raise store_error(exc) from exc
        reader = self._reader
        if reader is None:
            return await self.write(fn, readonly=True)
        try:
            return await anyio.to_thread.run_sync(lambda: drive(fn(reader)), limiter=self._read_limiter)
        except errors.WarrenError:
            raise
        except Exception as exc:
            if _is_store_failure(exc):
                raise store_error(exc) from exc
            raise

    def read_now(self, fn: Unit[T]) -> T:
        """A small read, here and now, with no await: for the event bus, whose catch-up
        read and registration must not be split by another task. Raises
        ``anyio.WouldBlock`` when the store is not open or SQLite says busy or locked."""
        if self._inline is None:
            raise anyio.WouldBlock
        try:
            return drive(fn(self._inline))
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                raise anyio.WouldBlock from exc
            raise

    def data_version(self) -> int:
        """SQLite's ``data_version``: it changes when another connection commits. Polling
        it costs microseconds, which is how other daemons' events are noticed."""
        if self._inline is None:
            raise anyio.WouldBlock
        return int(self._inline.raw.execute("PRAGMA data_version").fetchone()[0])

    async def _serve_writes(self) -> None:
        async with self._receive:
            async for job in self._receive:
                batch = [job]
                while len(batch) < MAX_BATCH:
                    try:
                        batch.append(self._receive.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                with anyio.CancelScope(shield=True):
                    if self._writer is None:
                        try:
                            await self._ready()
                        except errors.Store as exc:
                            self._fail(batch, exc)
                    if self._writer is not None:
                        await anyio.to_thread.run_sync(self._run_batch, batch)
                for job in batch:
                    job.done.set()
                failed = next((j.error for j in batch if isinstance(j.error, errors.Store)), None)
                if failed is not None:
                    log.warning("store_write_failed", reason=failed.reason, error=failed.message, units=len(batch))

    def _run_batch(self, batch: list[_Job]) -> None:
        """One transaction for the batch's write units, each in a savepoint (on a worker
        thread). Read units of an ephemeral store run first, outside any transaction."""
        db = self._writer
        assert db is not None
        writes = []
        for job in batch:
            if not job.readonly:
                writes.append(job)
                continue
            try:
                job.result = drive(job.fn(db))
            except Exception as exc:  # noqa: BLE001 - delivered to the caller
                job.error = store_error(exc) if _is_store_failure(exc) else exc
        if not writes:
            return
        raw = db.raw
        try:
            raw.execute("BEGIN IMMEDIATE")
        except Exception as exc:  # noqa: BLE001
            self._fail(writes, exc)
            return
        try:
            # One unit needs no savepoint: if it fails, the whole transaction rolls back.
            alone = len(writes) == 1
            for job in writes:
                if not alone:
                    raw.execute("SAVEPOINT unit")
                try:
                    job.result = drive(job.fn(db))
                except Exception as exc:  # noqa: BLE001 - the unit's own error, delivered to its caller
                    if _is_store_failure(exc):
                        raise
                    job.error = exc
                    raw.execute("ROLLBACK" if alone else "ROLLBACK TO unit")
                    if alone:
                        return
                if not alone:
                    raw.execute("RELEASE unit")
            raw.execute("COMMIT")
        except Exception as exc:  # noqa: BLE001
            try:
                if raw.in_transaction:
                    raw.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            self._fail(writes, exc)

    def _fail(self, batch: list[_Job], exc: BaseException) -> None:
        err = store_error(exc) if _is_store_failure(exc) else exc
        for job in batch:
            job.error = err
            job.result = None
