"""The FaceFare MQTT protocol, version 1: topics, payload schemas, signatures, limits.

``docs/protocol.md`` is the prose description; this module is the one implementation both sides
use. Every message is a JSON *envelope*::

    {"v": 1, "type": "fares", "sender": "bus-7", "msg_id": "<uuid4>", "sent_ms": 1764000000000,
     "body": {...}, "sig": "<base64 Ed25519 signature>"}

signed by its sender (a bus with its own key, the cloud with the cloud key) over the canonical
JSON of everything but ``sig``. :func:`parse` checks, in this order, size, JSON, schema and
version, that the topic belongs to the sender, the signature against the sender's registered
key, and the freshness of ``sent_ms``; every refusal is a :class:`ProtocolError` whose ``reason``
is one of :data:`REJECT_REASONS` so receivers can count them. Replays of whole messages are
caught by :class:`ReplayGuard`; replays of fares by the fare id (the cloud ledger's job).

    >>> key = generate_key()
    >>> data = encode(Envelope.make("heartbeat", "bus-7", Heartbeat(outbox_backlog=0)), key)
    >>> msg = parse(topic_for("heartbeat", "bus-7"), data, {"bus-7": key.public_key()}.get)
    >>> msg.type, msg.sender, msg.body.outbox_backlog
    ('heartbeat', 'bus-7', 0)
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from edge.fares.record import FARE_COLUMNS, ID_PATTERN, TEXT_MAX
from edge.files import check_private

VERSION = 1
PREFIX = f"facefare/v{VERSION}"
#: Largest payload either side accepts, in bytes (before JSON parsing).
MAX_PAYLOAD_BYTES = 256 * 1024
#: Most fares in one ``fares`` message.
MAX_FARES_PER_MESSAGE = 200
#: ``sent_ms`` further than this from the receiver's clock is refused as stale (or from the future).
DEFAULT_WINDOW_MS = 15 * 60 * 1000

#: Why a message was refused; receivers count refusals under these names.
REJECT_REASONS = (
    "oversize", "malformed", "schema", "version", "topic", "unknown_sender", "signature", "stale", "replay",
)  # fmt: skip

#: The largest integer any store of either side can hold (SQLite INTEGER, PostgreSQL BIGINT).
INT64_MAX = 2**63 - 1
#: Why the cloud refused a fare for good (``Ack.rejected``): another fare under its id, or one its
#: ledger could not store (an error retrying cannot fix; the rest of the batch goes on).
FARE_REJECT_REASONS = ("conflict", "unstorable")

Id = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
# No NUL: PostgreSQL's TEXT cannot hold it (a fare the ledger could not store would be refused late).
Text = Annotated[str, StringConstraints(max_length=TEXT_MAX, pattern=r"^[^\x00]*$")]
#: A non-negative integer every store can hold.
Count = Annotated[StrictInt, Field(ge=0, le=INT64_MAX)]
#: Epoch milliseconds of a real instant (years 1970..9998, so a date of it always exists).
EpochMs = Annotated[StrictInt, Field(ge=0, le=253_370_764_800_000)]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
FareId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]
Minor = Annotated[StrictInt, Field(ge=0, le=10**9)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


# -- bodies --------------------------------------------------------------------------------


class Fare(Strict):
    """One recorded boarding, exactly the bus ledger's fare row (money in integer minor units)."""

    fare_id: FareId
    bus_id: Id
    trip_id: Text
    route_id: Text
    rider_id: Id
    concession: Text
    boarded_at: Text
    boarded_ms: EpochMs
    service_day: Annotated[str, StringConstraints(pattern=r"^\d{4}-\d{2}-\d{2}$")]
    amount_minor: Minor
    base_minor: Minor
    currency: Currency
    reason: Text
    rules_digest: Text
    recorded_at: Text

    def day(self) -> date:
        return date.fromisoformat(self.service_day)

    @field_validator("service_day")
    @classmethod
    def _real_day(cls, value: str) -> str:
        try:
            day = date.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a calendar date") from None
        if not 1970 <= day.year <= 9998:
            raise ValueError(f"{value!r} is outside 1970..9998")
        return value

    @model_validator(mode="after")
    def _boarded_on_its_day(self) -> Fare:
        # The service day is the local date shifted by the day's start hour: whatever the zone
        # (UTC-12..+14) and start hour (< 24), the boarding instant lies within a day of it.
        start = datetime.combine(self.day(), datetime.min.time(), UTC) - timedelta(days=1)
        end = start + timedelta(days=3)
        boarded = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=self.boarded_ms)
        if not start <= boarded < end:
            raise ValueError(f"boarded_ms {self.boarded_ms} is not on service day {self.service_day}")
        return self


if tuple(Fare.model_fields) != FARE_COLUMNS:  # the wire carries exactly the record of edge.fares.record
    raise ImportError(f"protocol.Fare fields {tuple(Fare.model_fields)} differ from FARE_COLUMNS {FARE_COLUMNS}")


class Fares(Strict):
    """bus -> cloud: fares from the outbox, oldest first."""

    fares: Annotated[list[Fare], Field(min_length=1, max_length=MAX_FARES_PER_MESSAGE)]


class Health(Strict):
    ok: StrictBool
    detail: Text = ""


class Heartbeat(Strict):
    """bus -> cloud (retained): the bus is alive; its backlog, gallery and device health."""

    online: StrictBool = True
    outbox_backlog: Count
    oldest_unsent_ms: Count | None = None
    gallery_version: Count = 0
    pending_erasures: Count = 0
    camera: Health = Health(ok=True)
    disk: Health = Health(ok=True)
    disk_free_bytes: Count | None = None
    route_id: Text = ""
    # Issue 19 (optional, added for clock skew and sync health; readers must accept them missing):
    #: The bus's clock minus the cloud's, in ms, measured from the newest cloud message (None: not yet).
    clock_skew_ms: Annotated[StrictInt, Field(ge=-INT64_MAX, le=INT64_MAX)] | None = None
    #: The bus's clock stepped (backwards, or far forwards) since it started; detail says when and how far.
    clock: Health | None = None
    #: The sync thread's health: ok while its rounds succeed; detail holds the last error.
    sync: Health | None = None
    #: How many times the supervisor restarted the sync thread since the bus started.
    sync_restarts: Count | None = None
    #: Outbox rows the protocol refuses, set aside (quarantined) rather than sent; see ``facefare ledger show``.
    quarantined_fares: Count | None = None


class Offline(Strict):
    """bus -> cloud, as the bus's MQTT last will: the broker lost the bus."""

    online: Literal[False] = False


class DecisionEvent(Strict):
    """bus -> cloud: what the door decided for one rider (never a face image)."""

    at_ms: Count
    action: Literal["charge", "refuse", "see_driver"]
    reason: Text
    rider_id: Id | None = None
    fare_id: FareId | None = None
    amount_minor: Minor = 0
    currency: Currency | None = None
    #: Milliseconds from the rider's face first found at the door to this decision (door KPIs).
    wait_ms: Annotated[StrictInt, Field(ge=0, le=3_600_000)] | None = None
    #: Smiles the smile gate counted for this rider before the decision (door KPIs).
    smile_attempts: Annotated[StrictInt, Field(ge=0, le=1000)] | None = None


class Rejected(Strict):
    fare_id: FareId
    reason: Text  # one of FARE_REJECT_REASONS (older clouds: "conflict")


class Ack(Strict):
    """cloud -> bus: these fares are in the cloud ledger; the bus may empty their outbox rows.

    ``rejected`` fares were refused for good (they stay in the bus ledger for the operator)."""

    fare_ids: Annotated[list[FareId], Field(max_length=MAX_FARES_PER_MESSAGE)]
    rejected: Annotated[list[Rejected], Field(max_length=MAX_FARES_PER_MESSAGE)] = []


class GalleryDelta(Strict):
    """cloud -> bus: a versioned change to the bus gallery, encrypted for that bus alone.

    ``ciphertext`` is base64 AES-GCM of the JSON operations; applying it moves the bus from
    ``base_version`` to ``version`` (see ``enrollment``)."""

    base_version: Count
    version: Annotated[StrictInt, Field(ge=1, le=INT64_MAX)]
    model_sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    nonce: Annotated[str, StringConstraints(max_length=32)]
    ciphertext: Annotated[str, StringConstraints(max_length=MAX_PAYLOAD_BYTES)]


class GalleryAck(Strict):
    """bus -> cloud: the bus now holds this gallery version (erasures in it are applied).

    ``resync``: the bus asks for the changes since ``version`` again (it refused a delta out of
    order, or it starts from an empty gallery)."""

    version: Count
    erased: Annotated[list[Id], Field(max_length=10_000)] = []
    resync: StrictBool = False


Body = Fares | Heartbeat | Offline | DecisionEvent | Ack | GalleryDelta | GalleryAck
MessageType = Literal["fares", "heartbeat", "offline", "decision", "ack", "gallery", "gallery_ack"]

#: type -> (body schema, who sends it, topic template). ``{id}`` is the bus id.
SCHEMAS: dict[str, tuple[type[Strict], Literal["bus", "cloud"], str]] = {
    "fares": (Fares, "bus", PREFIX + "/bus/{id}/fares"),
    "heartbeat": (Heartbeat, "bus", PREFIX + "/bus/{id}/status"),
    "offline": (Offline, "bus", PREFIX + "/bus/{id}/status"),
    "decision": (DecisionEvent, "bus", PREFIX + "/bus/{id}/decisions"),
    "gallery_ack": (GalleryAck, "bus", PREFIX + "/bus/{id}/gallery_ack"),
    "ack": (Ack, "cloud", PREFIX + "/cloud/{id}/acks"),
    "gallery": (GalleryDelta, "cloud", PREFIX + "/cloud/{id}/gallery"),
}
#: The name the cloud signs with.
CLOUD = "cloud"


def topic_for(msg_type: str, bus_id: str) -> str:
    """The topic a message of ``msg_type`` about ``bus_id`` travels on."""
    return SCHEMAS[msg_type][2].format(id=bus_id)


def bus_of_topic(topic: str) -> str | None:
    """The bus id a topic belongs to (``facefare/v1/bus/<id>/...`` or ``.../cloud/<id>/...``)."""
    parts = topic.split("/")
    if len(parts) == 5 and "/".join(parts[:2]) == PREFIX and parts[2] in ("bus", "cloud"):
        return parts[3]
    return None


class Envelope(Strict):
    """A signed message; ``body`` is validated against the schema its ``type`` names."""

    v: StrictInt
    type: MessageType
    sender: Id
    msg_id: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
    sent_ms: Count
    body: Any
    sig: str = ""

    @classmethod
    def make(cls, msg_type: str, sender: str, body: Strict, *, sent_ms: int | None = None) -> Envelope:
        return cls(
            v=VERSION,
            type=msg_type,  # type: ignore[arg-type]
            sender=sender,
            msg_id=uuid.uuid4().hex,
            sent_ms=now_ms() if sent_ms is None else sent_ms,
            body=body,
        )

    def signed_bytes(self) -> bytes:
        """The canonical bytes the signature covers: sorted-key compact JSON without ``sig``."""
        return canonical_json(self.model_dump(mode="json", exclude={"sig"}))


class ProtocolError(ValueError):
    """A message was refused; ``reason`` is one of :data:`REJECT_REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in REJECT_REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def canonical_json(data: Any) -> bytes:
    """The canonical bytes of ``data``: JSON with sorted keys, no spaces, non-ASCII escaped.

    Exactly ``json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)``, for
    data of str, int, bool, None, lists and dicts (no message field is a float). orjson writes it
    several times faster; where its output could differ from that definition (anything escaped or
    not ASCII, an integer beyond 64 bits) the standard library writes it instead.
    """
    try:
        out = orjson.dumps(data, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        out = b""
    # Printable ASCII with nothing escaped: there orjson's bytes are json.dumps's bytes (orjson
    # escapes control characters with a backslash; DEL it leaves as is, json escapes it).
    if out and out.isascii() and b"\\" not in out and b"\x7f" not in out:
        return out
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def encode(envelope: Envelope, key: Ed25519PrivateKey) -> bytes:
    """Sign ``envelope`` with ``key`` and return the payload to publish."""
    sig = base64.b64encode(key.sign(envelope.signed_bytes())).decode()
    data = envelope.model_dump(mode="json")
    data["sig"] = sig
    out = canonical_json(data)
    if len(out) > MAX_PAYLOAD_BYTES:
        raise ProtocolError("oversize", f"{len(out)} bytes > {MAX_PAYLOAD_BYTES}")
    return out


KeyLookup = Callable[[str], Ed25519PublicKey | None]


def parse(
    topic: str,
    payload: bytes,
    lookup_key: KeyLookup,
    *,
    now: int | None = None,
    window_ms: int = DEFAULT_WINDOW_MS,
    check_time: bool = True,
) -> Envelope:
    """Validate a received payload completely, or raise :class:`ProtocolError`.

    ``lookup_key(sender)`` returns the sender's registered public key (None: unknown sender).
    The returned envelope's ``body`` is the typed body model. ``check_time=False`` skips the
    freshness check (used only for a last will, which the broker sends long after it was signed).
    """
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ProtocolError("oversize", f"{len(payload)} bytes > {MAX_PAYLOAD_BYTES}")
    try:
        raw = orjson.loads(payload)  # strict: UTF-8 only, no NaN
    except orjson.JSONDecodeError as exc:
        raise ProtocolError("malformed", f"not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ProtocolError("malformed", "not a JSON object")
    if raw.get("v") != VERSION:
        raise ProtocolError("version", f"version {raw.get('v')!r}, this side speaks {VERSION}")
    try:
        env = Envelope.model_validate(raw)
        schema, side, template = SCHEMAS[env.type]
        body = schema.model_validate(env.body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ProtocolError("schema", f"{where}: {first['msg']}") from None
    expected = template.format(id=env.sender if side == "bus" else bus_of_topic(topic))
    if topic != expected or (side == "cloud" and env.sender != CLOUD):
        raise ProtocolError("topic", f"{env.type} from {env.sender!r} may not travel on {topic!r}")
    if isinstance(body, Fares) and any(f.bus_id != env.sender for f in body.fares):
        raise ProtocolError("topic", f"bus {env.sender!r} sent a fare of another bus")
    key = lookup_key(env.sender)
    if key is None:
        raise ProtocolError("unknown_sender", f"no key registered for {env.sender!r}")
    try:
        # The canonical bytes from the received object itself: validated, it holds exactly the
        # envelope's fields, so this equals env.signed_bytes() without serialising the body again.
        signed = canonical_json({k: v for k, v in raw.items() if k != "sig"})
        key.verify(base64.b64decode(env.sig, validate=True), signed)
    except (InvalidSignature, ValueError):
        raise ProtocolError("signature", f"{env.type} {env.msg_id} is not signed by {env.sender!r}") from None
    if check_time:
        now = now_ms() if now is None else now
        if abs(now - env.sent_ms) > window_ms:
            raise ProtocolError("stale", f"sent {(now - env.sent_ms) / 1000:.0f} s from now, window {window_ms} ms")
    return env.model_copy(update={"body": body})


class ReplayGuard:
    """Remembers message ids seen within the freshness window; a second sighting is a replay.

    Together with the freshness check of :func:`parse` this refuses any captured message sent
    again: inside the window by its id, outside it by its age. Memory is bounded by ``max_ids``.
    """

    def __init__(self, window_ms: int = DEFAULT_WINDOW_MS, max_ids: int = 1_000_000) -> None:
        self.window_ms = window_ms
        self.max_ids = max_ids
        self._seen: OrderedDict[str, int] = OrderedDict()

    def check(self, env: Envelope, now: int | None = None) -> None:
        now = now_ms() if now is None else now
        while self._seen and (
            len(self._seen) >= self.max_ids or next(iter(self._seen.values())) < now - 2 * self.window_ms
        ):
            self._seen.popitem(last=False)
        key = f"{env.sender}/{env.msg_id}"
        if key in self._seen:
            raise ProtocolError("replay", f"message {env.msg_id} from {env.sender!r} was already received")
        self._seen[key] = now


# -- keys ----------------------------------------------------------------------------------


def generate_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def save_private_key(key: Ed25519PrivateKey, path: Path) -> None:
    """Write ``key`` as PEM, readable by its owner only."""
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_bytes(pem)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read an Ed25519 private key (PEM); refuse one that others can read (it signs fares or acks)."""
    check_private(path, "private key")
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


def public_key_text(key: Ed25519PublicKey) -> str:
    """The public key as one line of base64 (raw 32 bytes), for registries and config files."""
    return base64.b64encode(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()


def public_key_from_text(text: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(base64.b64decode(text.strip(), validate=True))
