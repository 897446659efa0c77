"""``POST /auth/token``: a user name and password in, a new API token out (``labvault login URL --user
NAME``). The one endpoint that takes no token: it authenticates its body instead, under the same guards
as a bearer token (the per-address failure limit answers 429 before any work; argon2 runs in the thread
pool within the verification slots, 503 when they are all busy), and the password is never logged or
echoed. Scripts then store the token, never the password."""

from __future__ import annotations

import math

from fastapi import Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from labvault.errors import AuthenticationError, BackendUnavailableError
from labvault.server.deps import auth_store, state_of
from labvault.server.models import LoginIn
from labvault.server.protocol import JSON, api_router, error_response

router = api_router()

#: The description a token issued by a password login gets when the caller gives none.
LOGIN_DESCRIPTION = "password login"


@router.post("/auth/token", tags=["auth"], status_code=201,
             summary="Exchange a user name and password for a new API token (shown once)")
async def issue_token(body: LoginIn, request: Request) -> Response:
    state = state_of(request)
    auth = auth_store(state)
    address = request.client.host if request.client else ""
    wait = state.failures.retry_after(address)
    if wait > 0:
        seconds = max(1, math.ceil(wait))
        return error_response(429, "AuthenticationError",
                              f"too many failed authentications from {address}; retry in {seconds} s",
                              {"Retry-After": str(seconds)})
    try:
        pending = await run_in_threadpool(auth.check_login, body.user, body.password)
        principal = await state.verify_slots.run(
            b"login:" + pending.fingerprint, lambda: run_in_threadpool(auth.verify_login, pending))
    except AuthenticationError as exc:
        state.failures.charge(address)
        return error_response(401, "AuthenticationError", str(exc))
    except BackendUnavailableError as exc:  # no verification slot free: not the caller's failure
        return error_response(503, "BackendUnavailableError", str(exc),
                              {"Retry-After": str(max(1, math.ceil(state.verify_slots.wait)))})
    token_id, token = await run_in_threadpool(
        auth.create_token, principal.user, body.description or LOGIN_DESCRIPTION, body.expires_in)
    return JSON({"id": token_id, "token": token, "user": principal.user, "role": principal.role},
                status_code=201)
