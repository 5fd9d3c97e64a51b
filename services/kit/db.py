"""Database plumbing shared by every process: engines, metadata conventions, column types, retries.

Every database is a SQLAlchemy URL. SQLite (the embedded default) gets WAL, a busy timeout and a
single pooled connection per process, so transactions of one process are serialised in the pool
instead of fighting over the file lock. PostgreSQL gets a real pool whose connections are pinged
before use, so a restarted server costs a reconnect, not a failed call. A URL without a driver
(`postgresql://`, `sqlite:///`) is given the ones tripmesh uses: asyncpg / aiosqlite for the
AsyncEngine, psycopg / pysqlite for the participants' worker threads.

Two ways in. `make_engine` gives the AsyncEngine the coordinator, the catalogue queries and the tests
use. `Database` is the participants' hot path: a synchronous engine behind its own worker thread(s),
so that a whole Reserve/Confirm/Cancel transaction is ONE hop from the event loop instead of one per
statement (aiosqlite hands every cursor call to its thread and back; that hand-off was two thirds of a
participant's CPU per call). This is how DBOS runs its transactions, too.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

from sqlalchemy import BigInteger, DateTime, MetaData, String, create_engine, event
from sqlalchemy.engine import URL, Connection, Dialect, Engine, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import mapped_column
from sqlalchemy.types import TypeDecorator

from services.kit.errors import TransientError

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite drops the zone; this puts it back)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


Id = Annotated[str, mapped_column(String(128), primary_key=True)]
Timestamp = Annotated[datetime, mapped_column(UTCDateTime())]
MinorUnits = Annotated[int, mapped_column(BigInteger)]


def new_metadata() -> MetaData:
    """A MetaData with the naming convention; each database gets its own (services share no tables)."""
    return MetaData(naming_convention=NAMING_CONVENTION)


ASYNC_DRIVERS = {"sqlite": "aiosqlite", "postgresql": "asyncpg"}
POSTGRES_POOL_SIZE = 10


def database_url(url: str | URL) -> URL:
    """The URL with the async driver tripmesh uses for its backend (`postgresql://` -> asyncpg)."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend not in ASYNC_DRIVERS:
        raise ValueError(f"unsupported database {backend!r} in {parsed!r}: use sqlite or postgresql")
    if parsed.get_driver_name() != ASYNC_DRIVERS[backend]:
        parsed = parsed.set(drivername=f"{backend}+{ASYNC_DRIVERS[backend]}")
    return parsed


def make_engine(url: str | URL, *, synchronous: str = "FULL", pool_size: int = POSTGRES_POOL_SIZE) -> AsyncEngine:
    parsed = database_url(url)
    if parsed.get_backend_name() == "postgresql":
        # READ COMMITTED (the default) is enough: every counter moves by a conditional UPDATE, which
        # PostgreSQL re-checks against the newest row version once it holds the row lock.
        return create_async_engine(
            parsed, pool_size=pool_size, max_overflow=pool_size // 2, pool_timeout=30, pool_pre_ping=True
        )
    if parsed.database and parsed.database != ":memory:" and not parsed.database.startswith("file:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(parsed, pool_size=1, max_overflow=0, pool_timeout=60)
    event.listen(engine.sync_engine, "connect", _sqlite_pragmas(synchronous))
    return engine


# The synchronous driver for each async one a URL may name (settings speak async URLs everywhere).
_SYNC_DRIVERS = {"aiosqlite": "pysqlite", "asyncpg": "psycopg", "psycopg_async": "psycopg"}


def sync_url(url: str | URL) -> URL:
    """The same database as `url`, through the synchronous driver of its backend."""
    parsed = database_url(url)
    backend, driver = parsed.get_backend_name(), parsed.get_driver_name()
    return parsed.set(drivername=f"{backend}+{_SYNC_DRIVERS.get(driver, driver)}")


def _sqlite_pragmas(synchronous: str) -> Callable[[Any, Any], None]:
    def pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return pragmas


class Database:
    """A synchronous engine driven from asyncio through worker threads: one hop per transaction.

    SQLite gets one worker and one connection (its writes are serialised anyway) and opens every
    transaction with BEGIN IMMEDIATE, so a read-then-write transaction never loses its snapshot to a
    concurrent writer; a server database gets one worker per pooled connection.

    On SQLite, transactions that queue while the worker is busy are group-committed: the worker runs
    them one after another in ONE transaction, each inside a savepoint of its own (so one that raises
    is rolled back alone, as if it had run by itself), commits once, and only then answers them all.
    One fsync and one hop for the lot instead of one each; each caller still hears only after its
    writes are durable. Alone in the queue (no load), a transaction runs exactly as before.
    """

    def __init__(self, url: str, *, synchronous: str = "FULL", pool_size: int = 8) -> None:
        target = sync_url(url)
        self.is_sqlite = target.get_backend_name() == "sqlite"
        if self.is_sqlite:
            if target.database and target.database != ":memory:":
                Path(target.database).parent.mkdir(parents=True, exist_ok=True)
            self.engine: Engine = create_engine(target, pool_size=1, max_overflow=0, pool_timeout=60)
            event.listen(self.engine, "connect", _sqlite_pragmas(synchronous))
            event.listen(self.engine, "connect", _no_pysqlite_begin)
            event.listen(self.engine, "begin", _begin_immediate)
            workers = 1
        else:
            self.engine = create_engine(target, pool_size=pool_size, max_overflow=0, pool_pre_ping=True)
            workers = pool_size
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="db")
        self._local = threading.local()  # each worker keeps its connection: no pool checkout per call
        self._opened: list[Connection] = []
        self._queued: list[_Queued] = []  # SQLite: transactions waiting for the worker (group commit)
        self._queue_lock = threading.Lock()
        self._draining = False

    async def transaction(self, work: Callable[[Connection], T]) -> T:
        """Run `work` in one transaction on a worker thread: committed if it returns, rolled back if it raises."""
        loop = asyncio.get_running_loop()
        if not self.is_sqlite:
            return await loop.run_in_executor(self._executor, functools.partial(self._in_transaction, work))
        future: asyncio.Future[T] = loop.create_future()
        with self._queue_lock:
            self._queued.append((work, future))
            start, self._draining = not self._draining, True
        if start:
            try:
                loop.run_in_executor(self._executor, self._drain, loop)
            except RuntimeError:  # the executor is shut down (disposed): fail what waits, do not hang it
                with self._queue_lock:
                    queued, self._queued, self._draining = self._queued, [], False
                _answer([(waiting, False, TransientError("the database is closing")) for _work, waiting in queued])
        return await future

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        """The SQLite worker: commit what is queued, a batch at a time, until nothing is."""
        while True:
            with self._queue_lock:
                batch, self._queued = self._queued, []
                if not batch:
                    self._draining = False
                    return
            answers = self._commit_batch(batch)
            try:
                loop.call_soon_threadsafe(_answer, answers)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                return

    def _commit_batch(self, batch: list[_Queued]) -> list[tuple[asyncio.Future[Any], bool, Any]]:
        # A caller that gave up before its turn (cancelled: its deadline passed, its client left) is not
        # run, as an executor job not yet started is not (reading the flag from this thread is benign).
        batch = [(work, future) for work, future in batch if not future.cancelled()]
        if not batch:
            return []
        if len(batch) == 1:  # alone: no savepoint needed, the transaction is the unit
            work, future = batch[0]
            try:
                return [(future, True, self._in_transaction(work))]
            except Exception as error:  # noqa: BLE001 - handed to the caller
                return [(future, False, error)]
        answers: list[tuple[asyncio.Future[Any], bool, Any]] = []
        try:
            conn = self._connection()  # inside: a database that cannot be opened fails the batch, not the worker
            with conn.begin():
                for work, future in batch:
                    try:
                        with conn.begin_nested():
                            answers.append((future, True, work(conn)))
                    except Exception as error:  # noqa: BLE001 - rolled back to its savepoint, handed to its caller
                        answers.append((future, False, error))
        except Exception as error:  # noqa: BLE001 - connect, BEGIN or COMMIT failed: nothing of the batch is durable
            return [(future, False, error) for _work, future in batch]
        return answers

    async def read(self, work: Callable[[Connection], T]) -> T:
        """Run `work` on a connection without a write transaction (queries only)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(self._on_connection, work))

    def _connection(self) -> Connection:
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = self._local.conn = self.engine.connect()
            self._opened.append(conn)
        return conn

    def _in_transaction(self, work: Callable[[Connection], T]) -> T:
        conn = self._connection()
        with conn.begin():
            return work(conn)

    def _on_connection(self, work: Callable[[Connection], T]) -> T:
        conn = self._connection()
        try:
            return work(conn)
        finally:
            if conn.in_transaction():
                conn.rollback()  # SQLAlchemy "autobegins" even for reads; end it so no snapshot is kept

    async def dispose(self) -> None:
        await asyncio.to_thread(self._executor.shutdown, wait=True)
        for conn in self._opened:
            conn.close()
        self.engine.dispose()


_Queued = tuple[Callable[[Connection], Any], "asyncio.Future[Any]"]


def _answer(answers: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    """On the event loop: hand each transaction of a committed batch its result or its error."""
    for future, ok, value in answers:
        if future.done():
            continue  # its caller was cancelled meanwhile (what it wrote is committed all the same)
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


def _no_pysqlite_begin(dbapi_connection: Any, _record: Any) -> None:
    # pysqlite's own implicit BEGIN (deferred) is switched off so the "begin" event below decides.
    dbapi_connection.isolation_level = None


def _begin_immediate(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


T = TypeVar("T")

# PostgreSQL SQLSTATEs worth a retry of the whole transaction: serialization failure, deadlock (the
# server rolled us back), lock not available, the server shutting down or not accepting connections
# yet, too many connections; and class 08, connection exceptions. Every other SQLSTATE (a constraint,
# a syntax error, a missing table) is a bug or a refusal, and retrying cannot help.
PG_RETRIABLE_SQLSTATES = frozenset({"40001", "40P01", "55P03", "57P01", "57P02", "57P03", "53300"})


def sqlstate(error: DBAPIError) -> str | None:
    code = getattr(error.orig, "sqlstate", None) or getattr(error.orig, "pgcode", None)
    return str(code) if code else None


def is_retriable(error: BaseException) -> bool:
    """Is `error` one that the same transaction, run again, may well not meet?"""
    if isinstance(error, OSError):
        return True  # the server could not be reached (refused, reset) before any DBAPI error
    if not isinstance(error, DBAPIError):
        return False
    if error.connection_invalidated:
        return True
    code = sqlstate(error)
    if code is not None:
        return code in PG_RETRIABLE_SQLSTATES or code.startswith("08")
    # SQLite ("database is locked", disk I/O) and driver-level connection errors carry no SQLSTATE.
    return isinstance(error, OperationalError | InterfaceError)


async def db_retry(work: Callable[[], Awaitable[T]], *, attempts: int = 4, first_delay: float = 0.02) -> T:
    """Run a transaction, retrying retriable database errors; past the budget raise TransientError."""
    delay = first_delay
    for attempt in range(1, attempts + 1):
        try:
            return await work()
        except (DBAPIError, OSError) as error:
            if not is_retriable(error):
                raise
            if attempt == attempts:
                cause = error.orig if isinstance(error, DBAPIError) else error
                raise TransientError(f"database unavailable: {cause}") from error
            await asyncio.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")
