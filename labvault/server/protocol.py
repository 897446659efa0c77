"""HTTP plumbing of the labvault server: JSON answers, strict JSON request bodies, byte ranges, validation
messages, and connections that survive errors.

``JSON`` is the response every endpoint answers with (orjson; integers beyond 64 bits under
``BIGINT_JSON_MEDIA_TYPE``), ``error_response`` the ``{"error": class name, "message": text}`` answer of
every failure, however it is raised.

``parse_range`` reads a ``Range`` header with bounded numbers (a bound of 5,000 digits is "beyond the
end", not a 500 from ``int()``), and ``describe_error`` turns one request validation error into text.

``JSONRoute`` parses every JSON request body with one strict parser (``parse_json_body``): bytes that
are not UTF-8 text, lone UTF-16 surrogates (``"\\udcff"``, which no store can encode), integers of more
than 4,300 digits and nesting too deep for the parser all become a 422 naming the problem, where they
used to reach a backend (a 500) or got FastAPI's anonymous "error parsing the body".

``ConnectionMiddleware`` keeps a client's keep-alive connection usable after any answer:

* an exception no handler answered becomes a JSON 500 sent by the middleware itself. (Starlette's own
  500 handler re-raises after answering, and uvicorn then closes the connection, so the client's next
  request on its pooled connection failed with "connection reset by peer".)
* an error answered before the request body was read in full leaves the connection open when the rest
  of the body is at most ``DRAIN_LIMIT`` bytes (uvicorn reads and discards it, then serves the next
  request on the connection); a larger or unknown rest, or a client waiting for ``100 Continue``, gets
  ``Connection: close``, because reading it would cost more than a new connection.
* a response that breaks off after it started (a failing download stream) still closes the connection:
  the client must not mistake a truncated body for a whole one.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import orjson
from fastapi.routing import APIRoute, APIRouter
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from labvault.wire import API_PREFIX, BIGINT_JSON_MEDIA_TYPE

log = logging.getLogger("labvault.server")

#: The unread rest of a refused request body the server still reads (and discards) to keep the connection.
DRAIN_LIMIT = 1024 * 1024
# A \uXXXX escape of a UTF-16 surrogate: only then can a parsed string hold a lone surrogate.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


class JSON(Response):
    """A JSON answer, rendered by orjson (by ``json`` when it holds integers beyond 64 bits, under the media
    type that tells clients so)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        try:
            return orjson.dumps(content)
        except TypeError:  # ints beyond 64 bits and the like: say so, for clients that parse with orjson
            self.media_type = BIGINT_JSON_MEDIA_TYPE
            return json.dumps(content, separators=(",", ":"), allow_nan=False).encode()


def error_response(status: int, name: str, message: str, headers: Mapping[str, str] | None = None) -> JSON:
    """The answer to a failure: ``{"error": name, "message": message}`` with ``status``."""
    return JSON({"error": name, "message": message}, status_code=status, headers=dict(headers or {}))


def binary_body() -> dict[str, Any]:
    """``openapi_extra`` of an endpoint that reads its body as raw bytes (an upload, streamed)."""
    return {"requestBody": {"content": {"application/octet-stream": {
        "schema": {"type": "string", "format": "binary"}}}}}


def _lone_surrogate(doc: Any) -> str | None:
    """The first string (key or value) of a parsed JSON document that holds a lone surrogate."""
    stack = [doc]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return item
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def parse_json_body(body: bytes) -> Any:
    """A JSON request body, or ``json.JSONDecodeError`` saying what is wrong (FastAPI answers 422).

    Integers keep their exact value (``json``, not ``orjson``, which turns big ones into floats)."""
    try:
        doc = json.loads(body)
    except json.JSONDecodeError:
        raise
    except UnicodeDecodeError as exc:
        raise json.JSONDecodeError(f"the body is not UTF-8 text ({exc.reason} at byte {exc.start})",
                                   "", 0) from None
    except RecursionError:
        raise json.JSONDecodeError("the body nests arrays or objects too deeply", "", 0) from None
    except ValueError as exc:  # an integer of more digits than Python converts
        raise json.JSONDecodeError(f"a number in the body is too long: {str(exc)[:120]}", "", 0) from None
    match = _SURROGATE_ESCAPE.search(body)
    if match is not None:
        bad = _lone_surrogate(doc)
        if bad is not None:
            raise json.JSONDecodeError(
                f"string {bad[:80]!r} holds a lone UTF-16 surrogate: not Unicode text", "", match.start())
    return doc


class _StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse_json_body(await self.body())
        return self._json


class JSONRoute(APIRoute):
    """A route whose JSON request bodies go through ``parse_json_body``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            return await handler(_StrictJSONRequest(request.scope, request.receive))

        return route


def api_router() -> APIRouter:
    """A router of endpoints under ``/api/v1`` whose JSON bodies go through ``parse_json_body``."""
    return APIRouter(prefix=API_PREFIX, route_class=JSONRoute)


def describe_error(err: Mapping[str, Any]) -> str:
    """One validation error as ``where: what`` (with the parser's reason, and a hint for a body that is
    not JSON at all)."""
    loc = tuple(err.get("loc", ()))
    text = f"{'.'.join(str(p) for p in loc)}: {err.get('msg', 'invalid')}"
    reason = (err.get("ctx") or {}).get("error")
    if isinstance(reason, str):
        text += f" ({reason})"
    if loc == ("body",) and isinstance(err.get("input"), bytes):
        text += " (send the body as JSON with Content-Type: application/json)"
    return text


_RANGE_RE = re.compile(r"bytes=([0-9]*)-([0-9]*)")
_HUGE = 10**18  # a range bound of more digits than this: beyond any content (and int() of it is costly)


def _bound(digits: str) -> int:
    return int(digits) if len(digits) <= 18 else _HUGE


def parse_range(header: str | None, size: int | None) -> tuple[int, int] | None:
    """(start, end exclusive) of a single satisfiable byte range; None to send everything.

    Raises ``HTTPException(416)`` for a range beyond the end. Malformed or multi-range headers are
    ignored (RFC 9110 allows answering them with the whole representation), and so are ranges with an
    end when the size is unknown (a promised length the content may not have would break the response).
    """
    if not header:
        return None
    match = _RANGE_RE.fullmatch(header.strip())
    if match is None or (not match.group(1) and not match.group(2)):
        return None
    first, last = match.group(1), match.group(2)
    if size is None:  # only "from byte N on" can be answered without knowing where the content ends
        return (_bound(first), -1) if first and not last else None
    if not first:  # suffix range: the last N bytes
        n = _bound(last)
        if n == 0:
            raise HTTPException(416, f"range {header[:80]!r} is empty",
                                headers={"Content-Range": f"bytes */{size}"})
        return max(0, size - n), size
    start = _bound(first)
    end = min(size, _bound(last) + 1) if last else size
    if start >= size or (last and _bound(last) < start):
        raise HTTPException(416, f"range {header[:80]!r} is outside the {size}-byte content",
                            headers={"Content-Range": f"bytes */{size}"})
    return start, end


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return bytes(value)
    return None


class ConnectionMiddleware:
    """Answers unhandled exceptions itself and closes the connection only when it must (module docs)."""

    def __init__(self, app: ASGIApp, render_500: Callable[[Exception], Response]) -> None:
        self.app = app
        self.render_500 = render_500

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _header(scope, b"content-length")
        declared = int(length) if length is not None and length.isdigit() else None
        chunked = _header(scope, b"transfer-encoding") is not None
        expects = (_header(scope, b"expect") or b"").lower() == b"100-continue"
        state = {"read": 0, "done": not chunked and not declared, "started": False}

        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                state["read"] += len(message.get("body", b""))
                if not message.get("more_body", False):
                    state["done"] = True
            return message

        async def guarded_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
                if message["status"] >= 400 and not state["done"] and not self._drainable(
                        declared, state["read"], expects):
                    headers = list(message.get("headers", []))
                    if not any(k.lower() == b"connection" for k, _v in headers):
                        message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception as exc:
            if state["started"]:
                raise  # the response broke off midway: the server must close the connection
            log.error("%s %s failed", scope.get("method"), scope.get("path"), exc_info=exc)
            await self.render_500(exc)(scope, counting_receive, guarded_send)

    @staticmethod
    def _drainable(declared: int | None, read: int, expects_continue: bool) -> bool:
        """Whether the unread rest of a refused body is small enough to read and discard."""
        if expects_continue and read == 0:
            return False  # the client may never send it
        return declared is not None and declared - read <= DRAIN_LIMIT
