"""The enrollment HTTP API (FastAPI) for kiosks and operators' web pages, behind operator passwords.

Every endpoint but ``/health`` needs HTTP Basic credentials of an operator added with
``facefare enrollment add-operator`` (passwords are stored as argon2id hashes, never in clear;
scrypt hashes of earlier versions still verify). Operators have a role: ``operator`` may enroll
and erase, ``read-only`` may only look riders and erasures up. The OpenAPI description
(``/openapi.json``) and readable docs (``/docs``, ``/redoc``) need a login too.

Password checks are limited per client address and per operator name (``[enrollment]
api_login_limit``, counted before the check with ``limits``); a client that already proved its
password is not counted again for a few minutes. Requests larger than ``api_max_request_bytes``
are refused with 413 before their body is read.
Photos travel base64-encoded in JSON and are dropped after embedding unless the operator opted in
to keeping them (``[enrollment] keep_photos``).

    >>> app = create_app(enroller, distributor)
    >>> uvicorn.run(app, host="127.0.0.1", port=8700)
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import logging
import secrets
import sqlite3
import threading
import time
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from cloud_sync import authn
from enrollment.distribution import GalleryDistributor
from enrollment.enroll import Enroller
from enrollment.store import RiderRecord, StoreError, TemplateStore, now_iso

log = logging.getLogger(__name__)

SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}  # hashes of earlier versions (still verified)
OPERATORS = """
CREATE TABLE IF NOT EXISTS operators (
    name TEXT PRIMARY KEY, salt BLOB NOT NULL, hash BLOB NOT NULL, created_at TEXT NOT NULL
);
"""
OperatorRole = Literal["operator", "read-only"]
ROLES: tuple[str, ...] = ("operator", "read-only")
#: How long a proven (name, password) pair is trusted without a new hash check or rate-limit hit.
VERIFIED_TTL_S = 300.0


def _operators_table(db: sqlite3.Connection) -> None:
    db.execute(OPERATORS)
    cols = {r[1] for r in db.execute("PRAGMA table_info(operators)")}
    if "role" not in cols:  # operators of earlier versions had every right: they stay operators
        db.execute("ALTER TABLE operators ADD COLUMN role TEXT NOT NULL DEFAULT 'operator'")


# -- operators ---------------------------------------------------------------------------------


def add_operator(store: TemplateStore, name: str, password: str, role: str = "operator") -> None:
    """Create or replace an operator's password (argon2id) and role (``operator`` or ``read-only``)."""
    if len(password) < 10:
        raise ValueError("an operator password needs at least 10 characters")
    if role not in ROLES:
        raise ValueError(f"role {role!r}: choose one of {', '.join(ROLES)}")
    digest = authn.hash_password(password)
    with store.transaction() as db:
        _operators_table(db)
        db.execute("INSERT OR REPLACE INTO operators (name, salt, hash, created_at, role) VALUES (?, ?, ?, ?, ?)",
                   (name, b"", digest, now_iso(), role))  # fmt: skip
        store.audit(db, "admin", "add_operator", None, operator=name, role=role)


def _ensure_operators(store: TemplateStore) -> None:
    """Create or upgrade the operators table (once per process and store, not per request)."""
    with store.transaction() as db:
        _operators_table(db)


def _operator_row(store: TemplateStore, name: str) -> tuple[bytes, Any, str] | None:
    with store.lock:
        try:
            row = store.db.execute("SELECT salt, hash, role FROM operators WHERE name = ?", (name,)).fetchone()
        except sqlite3.OperationalError:  # no operators table (or no role column) yet
            _ensure_operators(store)
            row = store.db.execute("SELECT salt, hash, role FROM operators WHERE name = ?", (name,)).fetchone()
    return None if row is None else (row[0], row[1], row[2])


def _verify(row: tuple[bytes, Any, str] | None, password: str) -> bool:
    if row is None:
        authn.verify_password(password, _dummy_hash())  # same time whether or not the name exists
        return False
    salt, stored, _role = row
    if isinstance(stored, str):
        return authn.verify_password(password, stored)
    return hmac.compare_digest(hashlib.scrypt(password.encode(), salt=salt, **SCRYPT), stored)


@functools.cache
def _dummy_hash() -> str:
    return authn.hash_password(secrets.token_hex(8))


def check_operator(store: TemplateStore, name: str, password: str) -> bool:
    return _verify(_operator_row(store, name), password)


def operator_role(store: TemplateStore, name: str) -> str | None:
    row = _operator_row(store, name)
    return None if row is None else row[2]


# -- bodies ------------------------------------------------------------------------------------


class Photo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field("photo", max_length=200, description="File name, used in refusal reasons")
    data: str = Field(description="The image file (JPEG, PNG, ...) base64-encoded")


class EnrollRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rider: RiderRecord
    photos: list[Photo] = Field(min_length=1, max_length=20)
    allow_duplicate: bool = Field(False, description="Enroll even if an enrolled rider looks the same (audited)")
    code: SecretStr | None = Field(
        None, description="The rider's second-factor code (4-8 digits): kept only as a sealed digest, never echoed"
    )


class Refusal(BaseModel):
    photo: str
    reason: str = Field(description="no_face, several_faces, unreadable, other_person or a quality reason")
    message: str


class EnrollResponse(BaseModel):
    rider_id: str
    status: str = Field(description="enrolled, duplicate (not added: see duplicate_of) or refused")
    accepted: list[str]
    refused: list[Refusal]
    duplicate_of: str | None = None
    distance: float | None = None
    message: str = ""
    lookalike_of: str | None = Field(None, description="An enrolled rider this close: the bus asks for the code")


class PhotoCheckResponse(BaseModel):
    ok: bool
    reason: str = ""
    message: str = ""


class RiderResponse(BaseModel):
    rider_id: str
    display_name: str
    reference: str
    concession: str
    account: str
    buses: list[str]
    status: str
    templates: int


class ErasureResponse(BaseModel):
    rider_id: str
    templates_deleted: int = 0
    buses: list[dict[str, Any]]


_basic = HTTPBasic(realm="facefare-enrollment")


class _Gate:
    """Who may call: the rate limit (counted before the password check) and a short memory of
    clients that already proved their password, so a kiosk's every request is not a new guess."""

    def __init__(self, store: TemplateStore, login_limit: str) -> None:
        self.store = store
        _ensure_operators(store)
        self.limiter = authn.LoginLimiter(login_limit, login_limit)
        self._key = secrets.token_bytes(32)
        self._verified: dict[bytes, float] = {}
        self._lock = threading.Lock()

    def operator(self, request: Request, creds: HTTPBasicCredentials) -> tuple[str, str]:
        row = _operator_row(self.store, creds.username)
        stored = b"" if row is None else (row[1].encode() if isinstance(row[1], str) else bytes(row[1]))
        # Bound to the stored hash: a changed password or a removed operator is never remembered.
        mark = hmac.digest(self._key, b"\0".join([creds.username.encode(), creds.password.encode(), stored]), "sha256")
        now = time.monotonic()
        with self._lock:
            known = self._verified.get(mark, 0.0) > now
        if not known:
            address = request.client.host if request.client else "?"
            if not self.limiter.attempt(address, creds.username):
                log.warning("enrollment API: too many password checks for %r from %s", creds.username[:64], address)
                raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, "too many login attempts; wait a minute",
                                    headers={"Retry-After": "60"})  # fmt: skip
            if not _verify(row, creds.password):
                raise HTTPException(status.HTTP_401_UNAUTHORIZED, "unknown operator or wrong password",
                                    headers={"WWW-Authenticate": 'Basic realm="facefare-enrollment"'})  # fmt: skip
            with self._lock:
                self._verified = {k: t for k, t in self._verified.items() if t > now}
                self._verified[mark] = now + VERIFIED_TTL_S
        assert row is not None
        return creds.username, row[2]


def current_operator(request: Request, creds: Annotated[HTTPBasicCredentials, Depends(_basic)]) -> str:
    """The authenticated operator's name, any role (401 wrong password, 429 too many attempts)."""
    name, _role = request.app.state.gate.operator(request, creds)
    return name


def writing_operator(request: Request, creds: Annotated[HTTPBasicCredentials, Depends(_basic)]) -> str:
    """The authenticated operator's name if their role may change riders (403 for read-only)."""
    name, role = request.app.state.gate.operator(request, creds)
    if role != "operator":
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"operator {name} is read-only")
    return name


Operator = Annotated[str, Depends(current_operator)]
Writer = Annotated[str, Depends(writing_operator)]


class BodyLimit:
    """ASGI middleware: refuse a request whose body is larger than ``max_bytes`` (413), by its
    Content-Length before reading anything, or as soon as a chunked body passes the limit."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        try:
            declared = int(headers.get(b"content-length", b"0"))
        except ValueError:
            declared = self.max_bytes + 1
        if declared > self.max_bytes:
            await JSONResponse({"detail": f"request larger than {self.max_bytes} bytes"}, status_code=413)(
                scope, receive, send)  # fmt: skip
            return
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise HTTPException(413, f"request larger than {self.max_bytes} bytes")
            return message

        await self.app(scope, limited, send)


def _decode(photo: Photo) -> bytes:
    try:
        return base64.b64decode(photo.data, validate=True)
    except ValueError:
        raise HTTPException(422, f"photo {photo.name}: not base64") from None


def create_app(enroller: Enroller, distributor: GalleryDistributor | None = None) -> FastAPI:
    """The API over one store; erasures are published when ``distributor`` has an MQTT client."""
    store = enroller.store
    app = FastAPI(
        title="FaceFare enrollment",
        version="1",
        description="Enroll riders from photos, look them up and erase them. HTTP Basic auth with an operator "
        "account (role operator to enroll and erase, read-only to look up). Photos are base64 in JSON; no face "
        "image is kept unless the operator opted in.",
        docs_url=None, redoc_url=None, openapi_url=None,  # served below, behind the login
    )  # fmt: skip
    app.state.store = store
    app.state.gate = _Gate(store, enroller.cfg.api_login_limit)
    app.add_middleware(BodyLimit, max_bytes=enroller.cfg.api_max_request_bytes)

    @app.get("/openapi.json", include_in_schema=False)
    def openapi(who: Operator) -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    def docs(who: Operator) -> Any:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="FaceFare enrollment")

    @app.get("/redoc", include_in_schema=False)
    def redoc(who: Operator) -> Any:
        return get_redoc_html(openapi_url="/openapi.json", title="FaceFare enrollment")

    @app.get("/health", summary="Liveness (no authentication)")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/photos/check", response_model=PhotoCheckResponse, summary="Check one photo before enrolling")
    def check_photo(photo: Photo, who: Writer) -> PhotoCheckResponse:
        result = enroller.check_photo(photo.name, _decode(photo))
        return PhotoCheckResponse(ok=result.ok, reason=result.reason, message=result.message)

    @app.post("/riders", response_model=EnrollResponse, status_code=201, summary="Enroll a rider from photos",
              responses={409: {"model": EnrollResponse, "description": "Looks like an enrolled rider: not added"},
                         422: {"model": EnrollResponse, "description": "Too few usable photos"}})  # fmt: skip
    def enroll(req: EnrollRequest, who: Writer) -> Any:
        photos = [(p.name, _decode(p)) for p in req.photos]
        code = req.code.get_secret_value() if req.code is not None else None
        result = enroller.enroll(req.rider, photos, allow_duplicate=req.allow_duplicate, actor=f"api:{who}",
                                 code=code)  # fmt: skip
        del code
        body = EnrollResponse(**result.as_dict())
        if result.status == "enrolled":
            if distributor is not None and distributor.publish is not None:
                distributor.sync()
            return body
        code = status.HTTP_409_CONFLICT if result.status == "duplicate" else 422
        return JSONResponse(body.model_dump(), status_code=code)

    @app.get("/riders/{rider_id}", response_model=RiderResponse, summary="A rider's record (no biometric data)")
    def rider(rider_id: str, who: Operator) -> RiderResponse:
        row = store.rider(rider_id)
        if row is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no rider {rider_id}")
        n = len(store.templates(rider_id))
        fields = {k: row[k] for k in ("rider_id", "display_name", "reference", "concession", "account", "status")}
        return RiderResponse(**fields, buses=[b for b in row["buses"].split(",") if b], templates=n)

    @app.delete("/riders/{rider_id}", response_model=ErasureResponse, summary="Erase a rider everywhere")
    def erase(rider_id: str, who: Writer) -> ErasureResponse:
        try:
            if distributor is not None:
                distributor.erase(rider_id, actor=f"api:{who}")
                n = next(a["detail"]["templates_deleted"] for a in reversed(store.audit_log(rider_id))
                         if a["action"] == "erase")
            else:
                n = store.erase(rider_id, actor=f"api:{who}")
        except StoreError as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
        return ErasureResponse(rider_id=rider_id, templates_deleted=n, buses=_status(rider_id))

    @app.get("/riders/{rider_id}/erasure", response_model=ErasureResponse, summary="Which buses confirmed erasure")
    def erasure(rider_id: str, who: Operator) -> ErasureResponse:
        if store.rider(rider_id) is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no rider {rider_id}")
        return ErasureResponse(rider_id=rider_id, buses=_status(rider_id))

    def _status(rider_id: str) -> list[dict[str, Any]]:
        if distributor is None:
            return []
        return [{"bus_id": s.bus_id, "version": s.version, "confirmed": s.confirmed, "confirmed_at": s.confirmed_at}
                for s in distributor.erase_status(rider_id)]  # fmt: skip

    return app
