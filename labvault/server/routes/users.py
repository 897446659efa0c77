"""Users and their tokens (admin only): list, add and remove users, change a role, issue tokens (the
secret is shown once) and revoke them. A server running without authentication has no users: these
answer ``UnsupportedOperationError`` (501)."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import Request
from starlette.responses import Response

from labvault.server.auth import check_role
from labvault.server.deps import Admin, auth_store, state_of
from labvault.server.models import RoleIn, TokenIn, UserIn
from labvault.server.protocol import JSON, api_router

router = api_router()


@router.get("/users", tags=["admin"], summary="Users and roles (admin)")
def list_users(p: Admin, request: Request) -> Response:
    users = auth_store(state_of(request)).users()
    return JSON([{"name": n, "role": r, "created_at": c} for n, r, c in users])


@router.post("/users", tags=["admin"], status_code=201, summary="Add a user (admin)")
def add_user(body: UserIn, p: Admin, request: Request) -> Response:
    auth_store(state_of(request)).add_user(body.name, check_role(body.role))
    return JSON({"name": body.name, "role": body.role}, status_code=201)


@router.put("/users/{name}/role", tags=["admin"], status_code=204, summary="Change a user's role (admin)")
def set_role(name: str, body: RoleIn, p: Admin, request: Request) -> Response:
    auth_store(state_of(request)).set_role(name, body.role)
    return Response(status_code=204)


@router.delete("/users/{name}", tags=["admin"], status_code=204, summary="Remove a user and their tokens")
def remove_user(name: str, p: Admin, request: Request) -> Response:
    auth_store(state_of(request)).remove_user(name)
    return Response(status_code=204)


@router.get("/tokens", tags=["admin"], summary="Tokens, never their secrets (admin)")
def list_tokens(p: Admin, request: Request, user: str | None = None) -> Response:
    return JSON([asdict(t) for t in auth_store(state_of(request)).tokens(user)])


@router.post("/tokens", tags=["admin"], status_code=201, summary="Issue a token (shown once; admin)")
def create_token(body: TokenIn, p: Admin, request: Request) -> Response:
    token_id, token = auth_store(state_of(request)).create_token(body.user, body.description, body.expires_in)
    return JSON({"id": token_id, "token": token, "user": body.user}, status_code=201)


@router.delete("/tokens/{token_id}", tags=["admin"], status_code=204, summary="Revoke a token (admin)")
def revoke_token(token_id: str, p: Admin, request: Request) -> Response:
    auth_store(state_of(request)).revoke_token(token_id)
    return Response(status_code=204)
