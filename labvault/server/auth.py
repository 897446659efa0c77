"""Users, roles and API tokens for the labvault server, kept in a small SQLite file of its own.

Tokens look like ``lv_<id>_<secret>``: ``<id>`` (12 hex digits) is public and finds the token's row at
once; only an argon2 hash of ``<secret>`` is stored, so a stolen auth file reveals no usable token. The
server verifies a token with argon2 the first time it sees it and then remembers a sha256 of the secret
in memory (compared with ``hmac.compare_digest``), so later requests cost a primary-key lookup, which
also makes a revocation or a role change take effect on the very next request.

The id is not a secret (it is printed by ``labvault tokens list`` and names the token in logs and
revocations), so the server looks it up first and spends argon2 work only on tokens that exist: an
unknown id is refused after the lookup. That a caller can tell a known id from an unknown one by the
time of the answer gives them nothing, since the secret alone authenticates. What argon2 work remains
(64 MiB and tens of milliseconds per verification) is bounded by the server: ``FailureLimiter`` answers
429 to an address after a burst of failed authentications, and ``VerifySlots`` lets only a few
verifications run at once (the rest wait briefly, then get 503) and only one per distinct token.

Users may also have a password (``labvault users passwd NAME``; only its argon2 hash is kept): ``POST
/api/v1/auth/token`` exchanges a user name and password for a new token (``labvault login URL --user
NAME``), under the same failure limit and verification slots, so scripts keep storing tokens only.

There are no default users or passwords. Roles are ordered: ``reader`` (read everything), ``writer``
(read and write runs, metrics, artifacts), ``admin`` (also delete experiments, write raw blobs and manage
users and tokens).

The file lives at ``--auth-db`` / ``$LABVAULT_AUTH_DB``, else ``<config dir>/auth.db`` where the config
dir is ``$LABVAULT_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/labvault``, else ``~/.config/labvault``. It is
created with mode 0600 in a 0700 directory.
"""
from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import secrets
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import anyio

from labvault._config import config_dir
from labvault.domain import validation as v
from labvault.errors import (
    AlreadyExistsError,
    AuthenticationError,
    BackendUnavailableError,
    InvalidArgumentError,
    LabvaultError,
    NotFoundError,
    PermissionDeniedError,
)

ROLES: tuple[str, ...] = ("reader", "writer", "admin")
T = TypeVar("T")
_RANK = {role: i for i, role in enumerate(ROLES)}
_USER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@\-]{0,63}")
_TOKEN_RE = re.compile(r"lv_([0-9a-f]{12})_([A-Za-z0-9_\-]{20,128})")
_TOKEN_ID_RE = re.compile(r"[0-9a-f]{12}")
#: Shown instead of a reason: the server never tells a caller which part of a token was wrong.
BAD_TOKEN = "invalid, expired or revoked API token"
#: Likewise for a user name and password (which of the two was wrong is not said).
BAD_LOGIN = "wrong user name or password"
#: Password lengths accepted (characters); longer ones would only cost argon2 more work.
MIN_PASSWORD, MAX_PASSWORD = 8, 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    secret_hash TEXT NOT NULL,
    description TEXT,
    created_at REAL NOT NULL,
    expires_at REAL,
    revoked_at REAL
);
CREATE INDEX IF NOT EXISTS tokens_user ON tokens(user);
"""


def _add_password_column(conn: sqlite3.Connection) -> None:
    """Give an auth store made before passwords existed its ``users.password_hash`` column (NULL: no
    password). Safe when several servers start at once: a column another process added meanwhile is kept."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(users)")}
    if "password_hash" not in columns:
        with contextlib.suppress(sqlite3.OperationalError):  # "duplicate column name": someone was first
            conn.execute("ALTER TABLE users ADD COLUMN password_hash TEXT")


def check_password(password: object) -> str:
    """A password: text of 8 to 1024 characters (never echoed in the error)."""
    if not isinstance(password, str) or not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise InvalidArgumentError(f"a password is text of {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    try:
        v.check_text(password, "password")
    except InvalidArgumentError:
        raise InvalidArgumentError("a password cannot hold NUL characters or lone surrogates") from None
    return password


def default_auth_db() -> Path:
    """``$LABVAULT_AUTH_DB``, else ``<config dir>/auth.db``."""
    explicit = os.environ.get("LABVAULT_AUTH_DB")
    return Path(explicit).expanduser() if explicit else config_dir() / "auth.db"


@dataclass(frozen=True)
class Principal:
    """Who a request acts as."""

    user: str
    role: str
    token_id: str | None = None

    def allows(self, role: str) -> bool:
        """Whether this principal's role includes ``role``."""
        return _RANK[self.role] >= _RANK[role]

    def require(self, role: str) -> None:
        """Raise ``PermissionDeniedError`` unless the principal has at least ``role``."""
        if not self.allows(role):
            raise PermissionDeniedError(
                f"user {self.user!r} has role {self.role!r}; this needs the {role!r} role"
            )


#: The principal of a server started with ``--insecure`` (no authentication at all).
ANONYMOUS_ADMIN = Principal("anonymous", "admin", None)


@dataclass(frozen=True)
class TokenRecord:
    """A token as listed (never with its secret)."""

    id: str
    user: str
    description: str | None
    created_at: float
    expires_at: float | None
    revoked_at: float | None


def check_role(role: object) -> str:
    """Return ``role`` when it is one of reader, writer, admin."""
    if role not in _RANK:
        raise InvalidArgumentError(f"role {v.show(role)} is not one of {', '.join(ROLES)}")
    assert isinstance(role, str)
    return role


def check_user_name(name: object) -> str:
    """User names: 1-64 letters, digits, '_', '.', '@' and '-', starting with a letter or digit."""
    if not isinstance(name, str) or not _USER_RE.fullmatch(name):
        raise InvalidArgumentError(
            f"invalid user name {v.show(name)}: use 1-64 letters, digits, '_', '.', '@' and '-', "
            "starting with a letter or digit"
        )
    return name


def parse_token(token: str) -> tuple[str, str]:
    """Split ``lv_<id>_<secret>`` into (id, secret); ``AuthenticationError`` when malformed."""
    match = _TOKEN_RE.fullmatch(token) if isinstance(token, str) else None
    if match is None:
        raise AuthenticationError(BAD_TOKEN)
    return match.group(1), match.group(2)


class AuthStore:
    """The server's users and tokens in one SQLite file (safe to share between server processes)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser()
        self._local = threading.local()
        self._verified: dict[str, bytes] = {}  # token id -> sha256(secret) of a secret argon2 accepted
        self._verified_lock = threading.Lock()
        self._hasher: Any = None
        self._ready = False
        self._ready_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"AuthStore({str(self.path)!r})"

    # -- plumbing ---------------------------------------------------------------------------------------
    def _ph(self) -> Any:
        if self._hasher is None:
            from argon2 import PasswordHasher  # lazy: optional driver (extra [server]), ~15 ms

            self._hasher = PasswordHasher()
        return self._hasher

    def _connect(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            if not self._ready:
                self._create()
            conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
            conn.execute("PRAGMA foreign_keys = ON")
            self._local.conn = conn
        return conn

    def _create(self) -> None:
        with self._ready_lock:
            if self._ready:
                return
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                if not self.path.exists():
                    fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600)
                    os.close(fd)
                conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
                try:
                    conn.execute("PRAGMA journal_mode = WAL")
                    conn.executescript(_SCHEMA)
                    _add_password_column(conn)
                finally:
                    conn.close()
            except (OSError, sqlite3.Error) as exc:
                raise InvalidArgumentError(f"cannot open the auth store {str(self.path)!r}: {exc}") from exc
            self._ready = True

    def close(self) -> None:
        """Close this thread's connection (others close when their threads end)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- users --------------------------------------------------------------------------------------------
    def add_user(self, name: str, role: str) -> None:
        """Create a user; ``AlreadyExistsError`` when the name is taken."""
        check_user_name(name)
        check_role(role)
        try:
            self._connect().execute("INSERT INTO users (name, role, created_at) VALUES (?, ?, ?)",
                                    (name, role, time.time()))
        except sqlite3.IntegrityError as exc:
            raise AlreadyExistsError(f"user {name!r} exists already") from exc

    def set_role(self, name: str, role: str) -> None:
        """Change a user's role (takes effect on the user's next request)."""
        check_role(role)
        cur = self._connect().execute("UPDATE users SET role = ? WHERE name = ?",
                                      (role, check_user_name(name)))
        if cur.rowcount == 0:
            raise NotFoundError(f"no user {name!r}")

    def remove_user(self, name: str) -> None:
        """Delete a user and all of their tokens."""
        cur = self._connect().execute("DELETE FROM users WHERE name = ?", (check_user_name(name),))
        if cur.rowcount == 0:
            raise NotFoundError(f"no user {name!r}")

    def set_password(self, name: str, password: str | None) -> None:
        """Set (or with None, remove) a user's password; only its argon2 hash is stored. Tokens issued
        before stay valid (revoke them with ``revoke_token``)."""
        check_user_name(name)
        hashed = None if password is None else self._ph().hash(check_password(password))
        cur = self._connect().execute("UPDATE users SET password_hash = ? WHERE name = ?", (hashed, name))
        if cur.rowcount == 0:
            raise NotFoundError(f"no user {name!r}")

    def check_login(self, name: str, password: str) -> PendingVerification:
        """The cheap part of a password login: the user's row, no argon2. ``AuthenticationError`` (saying
        only ``BAD_LOGIN``) for an unknown user, a user without a password or a malformed password."""
        try:
            check_user_name(name)
            check_password(password)
        except InvalidArgumentError:
            raise AuthenticationError(BAD_LOGIN) from None
        row = self._connect().execute("SELECT role, password_hash FROM users WHERE name = ?",
                                      (name,)).fetchone()
        if row is None or row[1] is None:
            raise AuthenticationError(BAD_LOGIN)
        fingerprint = hashlib.sha256(f"{name}\0{password}".encode(errors="surrogatepass")).digest()
        return PendingVerification(Principal(name, str(row[0])), str(row[1]), password, fingerprint)

    def verify_login(self, pending: PendingVerification) -> Principal:
        """The argon2 verification of a password ``check_login`` left to do: the user, or refused."""
        self._argon2_verify(pending, BAD_LOGIN)
        return pending.principal

    def _argon2_verify(self, pending: PendingVerification, refusal: str) -> None:
        """Check ``pending``'s secret against its argon2 hash (blocking, 64 MiB); ``AuthenticationError``
        saying only ``refusal`` on a mismatch, and on a damaged hash in the store too (never a 500)."""
        try:
            self._ph().verify(pending.secret_hash, pending.secret)
        except Exception as exc:  # VerifyMismatchError, VerificationError, InvalidHashError, ...
            raise AuthenticationError(refusal) from exc

    def users(self) -> list[tuple[str, str, float]]:
        """(name, role, created_at) of every user, by name."""
        rows = self._connect().execute("SELECT name, role, created_at FROM users ORDER BY name").fetchall()
        return [(str(n), str(r), float(c)) for n, r, c in rows]

    def has_users(self) -> bool:
        """Whether any user exists (a server refuses to start without one unless ``--insecure``)."""
        return self._connect().execute("SELECT 1 FROM users LIMIT 1").fetchone() is not None

    # -- tokens -------------------------------------------------------------------------------------------
    def create_token(self, user: str, description: str | None = None,
                     expires_in: float | None = None) -> tuple[str, str]:
        """Issue a token for ``user``; return (token id, token). The token is shown only this once."""
        check_user_name(user)
        if expires_in is not None and not (isinstance(expires_in, int | float) and expires_in > 0):
            raise InvalidArgumentError(f"expires_in must be a positive number of seconds, got {expires_in!r}")
        if description is not None and (not isinstance(description, str) or len(description) > 200):
            raise InvalidArgumentError("token description must be a string of at most 200 characters")
        if description is not None:
            v.check_text(description, "token description")
        conn = self._connect()
        if conn.execute("SELECT 1 FROM users WHERE name = ?", (user,)).fetchone() is None:
            raise NotFoundError(f"no user {user!r}; add it with: labvault users add {user} --role reader")
        token_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        created = time.time()
        conn.execute(
            "INSERT INTO tokens (id, user, secret_hash, description, created_at, expires_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (token_id, user, self._ph().hash(secret), description, created,
             None if expires_in is None else created + float(expires_in)),
        )
        return token_id, f"lv_{token_id}_{secret}"

    def revoke_token(self, token_id: str) -> None:
        """Revoke a token by its id (the ``lv_<id>_`` part); it fails from the next request on."""
        if not isinstance(token_id, str) or not _TOKEN_ID_RE.fullmatch(token_id):
            if isinstance(token_id, str) and _TOKEN_RE.fullmatch(token_id):
                token_id = token_id[3:15]  # a whole token was given: use its id
            else:
                raise InvalidArgumentError("a token id is 12 hex digits (the part after 'lv_')")
        cur = self._connect().execute(
            "UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (time.time(), token_id))
        if cur.rowcount == 0:
            row = self._connect().execute("SELECT 1 FROM tokens WHERE id = ?", (token_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"no token {token_id!r}")
        with self._verified_lock:
            self._verified.pop(token_id, None)

    def tokens(self, user: str | None = None) -> list[TokenRecord]:
        """Tokens (of one user when given), oldest first; secrets are never returned."""
        sql = "SELECT id, user, description, created_at, expires_at, revoked_at FROM tokens"
        args: tuple[Any, ...] = ()
        if user is not None:
            sql += " WHERE user = ?"
            args = (check_user_name(user),)
        rows = self._connect().execute(sql + " ORDER BY created_at, id", args).fetchall()
        return [TokenRecord(*row) for row in rows]

    # -- authentication -----------------------------------------------------------------------------------
    def authenticate(self, token: str) -> Principal:
        """The principal a bearer token stands for, or ``AuthenticationError`` (never saying why)."""
        found = self.check(token)
        return found if isinstance(found, Principal) else self.verify(found)

    def check(self, token: str) -> Principal | PendingVerification:
        """The cheap part of ``authenticate``: the token's row and the in-memory cache, no argon2.

        Returns the principal when this secret was verified before, a ``PendingVerification`` when only
        argon2 can decide (run it with ``verify``), and raises ``AuthenticationError`` for a malformed
        token, an unknown id or a revoked or expired token.
        """
        token_id, secret = parse_token(token)
        row = self._connect().execute(
            "SELECT t.secret_hash, t.expires_at, t.revoked_at, u.name, u.role "
            "FROM tokens t JOIN users u ON u.name = t.user WHERE t.id = ?", (token_id,)
        ).fetchone()
        if row is None:
            raise AuthenticationError(BAD_TOKEN)  # the id is public: no argon2 work for one that is unknown
        secret_hash, expires_at, revoked_at, user, role = row
        if revoked_at is not None or (expires_at is not None and expires_at < time.time()):
            raise AuthenticationError(BAD_TOKEN)
        principal = Principal(str(user), str(role), token_id)
        fingerprint = hashlib.sha256(secret.encode()).digest()
        with self._verified_lock:
            known = self._verified.get(token_id)
        if known is not None and hmac.compare_digest(known, fingerprint):
            return principal
        return PendingVerification(principal, str(secret_hash), secret, fingerprint)

    def verify(self, pending: PendingVerification) -> Principal:
        """The argon2 verification ``check`` left to do (blocking, 64 MiB): the principal, or refused."""
        self._argon2_verify(pending, BAD_TOKEN)
        assert pending.principal.token_id is not None
        with self._verified_lock:
            self._verified[pending.principal.token_id] = pending.fingerprint
        return pending.principal

    def is_verified(self, token: str) -> bool:
        """Whether this exact token passed argon2 in this process before (memory only: no database).

        A yes does not authenticate (the token may have been revoked since); it lets the server skip the
        failure limit for clients that have proven their token once.
        """
        match = _TOKEN_RE.fullmatch(token)
        if match is None:
            return False
        with self._verified_lock:
            known = self._verified.get(match.group(1))
        return known is not None and hmac.compare_digest(
            known, hashlib.sha256(match.group(2).encode()).digest())


@dataclass(frozen=True)
class PendingVerification:
    """A token whose row exists and is live, waiting for its argon2 verification (``AuthStore.verify``)."""

    principal: Principal
    secret_hash: str = field(repr=False)
    secret: str = field(repr=False)
    fingerprint: bytes = field(repr=False)


class FailureLimiter:
    """Failed authentications per client address, as token buckets: ``burst`` at once, then ``rate`` a second.

    ``retry_after`` is asked before any work: an address whose bucket is empty gets 429 at once (no
    database lookup, no argon2). Each failure is ``charge``d after the fact, so the first requests of a
    legitimate client (possibly many at once, before its token is verified) never wait on the budget; the
    concurrent failures of a flood may overdraw the bucket, down to ``-burst``, and are paid back before
    that address may try again. A success costs nothing. At most ``max_addresses`` buckets are kept (least
    recently charged out first; a bucket found refilled is dropped), so memory is bounded.
    """

    def __init__(self, rate: float = 2.0, burst: int = 10, max_addresses: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not (rate > 0 and burst >= 1 and max_addresses >= 1):
            raise InvalidArgumentError(
                f"failure limit needs rate > 0, burst >= 1, max_addresses >= 1; got {rate}, {burst}, "
                f"{max_addresses}")
        self.rate, self.burst, self.max_addresses = float(rate), float(burst), max_addresses
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # address -> (tokens, when)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._buckets)

    def retry_after(self, address: str) -> float:
        """0.0 when ``address`` may try to authenticate, else the seconds until it may."""
        with self._lock:
            entry = self._buckets.get(address)
            if entry is None:
                return 0.0
            tokens = self._refilled(entry)
            if tokens >= self.burst:
                del self._buckets[address]  # refilled: the same as never seen
            return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def charge(self, address: str) -> None:
        """Count one failed authentication from ``address``."""
        with self._lock:
            entry = self._buckets.pop(address, None)
            tokens = self.burst if entry is None else self._refilled(entry)
            self._buckets[address] = (max(-self.burst, tokens - 1.0), self._clock())
            while len(self._buckets) > self.max_addresses:
                self._buckets.popitem(last=False)

    def _refilled(self, entry: tuple[float, float]) -> float:
        tokens, when = entry
        return min(self.burst, tokens + (self._clock() - when) * self.rate)


class _Flight:
    """One verification in progress, which concurrent requests with the same token wait for."""

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class VerifySlots:
    """At most ``concurrency`` argon2 verifications at once (each holds 64 MiB and several cores), and one
    per distinct token: concurrent requests carrying the same unverified token share its verification.

    A request that finds every slot taken waits up to ``wait`` seconds as a coroutine (no thread, no
    argon2 memory); at most ``max_waiting`` wait at a time. Beyond either bound ``run`` raises
    ``BackendUnavailableError`` (the server answers 503 with Retry-After; clients retry those). Event-loop
    side only (not thread-safe).
    """

    def __init__(self, concurrency: int = 1, wait: float = 2.0, max_waiting: int = 64) -> None:
        if not (concurrency >= 1 and wait >= 0 and max_waiting >= 0):
            raise InvalidArgumentError(
                f"verification slots need concurrency >= 1, wait >= 0, max_waiting >= 0; got {concurrency}, "
                f"{wait}, {max_waiting}")
        self.concurrency, self.wait, self.max_waiting = concurrency, wait, max_waiting
        self._free = concurrency
        self._waiting = 0
        self._released: anyio.Event | None = None  # set when a slot frees up (created in the event loop)
        self._flights: dict[bytes, _Flight] = {}

    async def run(self, key: bytes, work: Callable[[], Awaitable[T]]) -> T:
        """``await work()`` in a slot, or share the result of the call with the same ``key`` in progress."""
        flight = self._flights.get(key)
        if flight is not None:
            await flight.done.wait()  # bounded: the leader waits at most ``wait`` for a slot, then verifies
            if flight.error is None:
                return cast(T, flight.result)
            if isinstance(flight.error, LabvaultError):
                raise type(flight.error)(str(flight.error))
            raise BackendUnavailableError("the verification of this API token was interrupted; retry")
        flight = self._flights[key] = _Flight()
        try:
            async with self.slot():
                flight.result = await work()
            return cast(T, flight.result)
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            del self._flights[key]
            flight.done.set()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one verification slot for the block."""
        await self._acquire()
        try:
            yield
        finally:
            self._free += 1
            if self._released is not None:
                self._released.set()
                self._released = None

    async def _acquire(self) -> None:
        if self._free == 0 and self._waiting >= self.max_waiting:
            raise BackendUnavailableError("the server is busy verifying other API tokens; retry shortly")
        self._waiting += 1
        try:
            with anyio.move_on_after(self.wait):
                while self._free == 0:
                    if self._released is None:
                        self._released = anyio.Event()
                    await self._released.wait()
        finally:
            self._waiting -= 1
        if self._free == 0:
            raise BackendUnavailableError("the server is busy verifying other API tokens; retry shortly")
        self._free -= 1
