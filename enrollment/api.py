"""The enrollment HTTP API (FastAPI) for kiosks and operators' web pages, behind operator passwords.

Every endpoint but ``/health`` needs HTTP Basic credentials of an operator added with
``facefare enrollment add-operator`` (passwords are stored as scrypt hashes, never in clear).
The OpenAPI description is served at ``/openapi.json`` and readable docs at ``/docs``.
Photos travel base64-encoded in JSON and are dropped after embedding unless the operator opted in
to keeping them (``[enrollment] keep_photos``).

    >>> app = create_app(enroller, distributor)
    >>> uvicorn.run(app, host="127.0.0.1", port=8700)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from enrollment.distribution import GalleryDistributor
from enrollment.enroll import Enroller
from enrollment.store import RiderRecord, StoreError, TemplateStore, now_iso

log = logging.getLogger(__name__)

SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}
OPERATORS = """
CREATE TABLE IF NOT EXISTS operators (
    name TEXT PRIMARY KEY, salt BLOB NOT NULL, hash BLOB NOT NULL, created_at TEXT NOT NULL
);
"""


# -- operators ---------------------------------------------------------------------------------


def add_operator(store: TemplateStore, name: str, password: str) -> None:
    """Create or replace an operator's password (scrypt-hashed with a random salt)."""
    if len(password) < 10:
        raise ValueError("an operator password needs at least 10 characters")
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, **SCRYPT)
    with store.transaction() as db:
        db.execute(OPERATORS)
        db.execute("INSERT OR REPLACE INTO operators VALUES (?, ?, ?, ?)", (name, salt, digest, now_iso()))
        store.audit(db, "admin", "add_operator", None, operator=name)


def check_operator(store: TemplateStore, name: str, password: str) -> bool:
    with store.lock:
        store.db.execute(OPERATORS)
        row = store.db.execute("SELECT salt, hash FROM operators WHERE name = ?", (name,)).fetchone()
    if row is None:
        hashlib.scrypt(password.encode(), salt=b"0" * 16, **SCRYPT)  # same time whether or not the name exists
        return False
    return hmac.compare_digest(hashlib.scrypt(password.encode(), salt=row[0], **SCRYPT), row[1])


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


def current_operator(request: Request, creds: Annotated[HTTPBasicCredentials, Depends(_basic)]) -> str:
    """The authenticated operator's name (401 for an unknown name or a wrong password)."""
    if not check_operator(request.app.state.store, creds.username, creds.password):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "unknown operator or wrong password",
                            headers={"WWW-Authenticate": 'Basic realm="facefare-enrollment"'})  # fmt: skip
    return creds.username


Operator = Annotated[str, Depends(current_operator)]


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
        "account. Photos are base64 in JSON; no face image is kept unless the operator opted in.",
    )
    app.state.store = store

    @app.get("/health", summary="Liveness (no authentication)")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/photos/check", response_model=PhotoCheckResponse, summary="Check one photo before enrolling")
    def check_photo(photo: Photo, who: Operator) -> PhotoCheckResponse:
        result = enroller.check_photo(photo.name, _decode(photo))
        return PhotoCheckResponse(ok=result.ok, reason=result.reason, message=result.message)

    @app.post("/riders", response_model=EnrollResponse, status_code=201, summary="Enroll a rider from photos",
              responses={409: {"model": EnrollResponse, "description": "Looks like an enrolled rider: not added"},
                         422: {"model": EnrollResponse, "description": "Too few usable photos"}})  # fmt: skip
    def enroll(req: EnrollRequest, who: Operator) -> Any:
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
        from fastapi.responses import JSONResponse

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
    def erase(rider_id: str, who: Operator) -> ErasureResponse:
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
