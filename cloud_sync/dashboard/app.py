"""The dashboard's web app: login, the fleet page, its JSON state and a server-sent event stream.

Every route but ``/login`` and the login page's stylesheet needs a session cookie; an anonymous
request is sent to ``/login`` (pages) or answered 401 (``/api``, ``/events``). Read-only users see
everything; only admins may acknowledge alerts. The page is static HTML, CSS and plain JS served
from ``static/``: nothing is fetched from another origin, and the content security policy says so.

    >>> app = create_app(FleetState(), UserStore(Path("users.json")), Sessions(b"k" * 32, 3600))
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, StreamingResponse

from cloud_sync.authn import LoginLimiter
from cloud_sync.dashboard.auth import Sessions, User, UserStore
from cloud_sync.dashboard.state import FleetState
from cloud_sync.protocol import now_ms

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
COOKIE = "facefare_session"
#: Files under static/ that an anonymous visitor may load (the login page's own assets).
PUBLIC_STATIC = frozenset({"login.css"})
#: Files under static/ served to logged-in users.
PRIVATE_STATIC = frozenset({"app.js", "app.css"})
#: Seconds between live-stream checks for changes, and the longest gap between two updates.
STREAM_POLL_S = 0.2
STREAM_REFRESH_S = 2.0
#: Login attempts allowed per client address and per user name per minute (counted before the check).
LOGIN_FAILURES_PER_MIN = 10
MAX_LOGIN_BYTES = 4096
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    # same-origin, not no-referrer: with no-referrer a browser posts the login form with "Origin: null",
    # which cross_site() cannot tell from a cross-site post; other sites still get no referrer.
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


def cross_site(request: Request) -> bool:
    """Whether a browser sent this request from another site (Fetch Metadata, else Origin vs Host).

    Non-browser clients send neither header and are not refused; browsers send ``Origin`` with
    every cross-origin POST, so a form on another site cannot post here (OWASP: verify the origin
    with standard headers)."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:  # the browser says where the request comes from: trust only that
        return site not in ("same-origin", "none")
    origin = request.headers.get("origin")
    if origin is None:
        return False
    return origin == "null" or urlsplit(origin).netloc.lower() != (request.headers.get("host") or "").lower()


def create_app(
    state: FleetState,
    users: UserStore,
    sessions: Sessions,
    *,
    cookie_secure: str = "auto",
    clock: Callable[[], int] = now_ms,
    login_limit: str = f"{LOGIN_FAILURES_PER_MIN}/minute",
) -> FastAPI:
    """The dashboard web app over ``state``; ``clock`` gives the time in ms (tests pass their own)."""
    app = FastAPI(title="FaceFare fleet dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.stopping = threading.Event()
    limiter = LoginLimiter(login_limit, login_limit)
    app.state.login_limiter = limiter

    def user_of(request: Request) -> User | None:
        name = sessions.user_of(request.cookies.get(COOKIE))
        return users.get(name) if name else None

    @app.middleware("http")
    async def require_session(request: Request, call_next: Callable) -> Response:
        path = request.url.path
        public = path == "/login" or (path.startswith("/static/") and path[len("/static/") :] in PUBLIC_STATIC)
        user = None if public else user_of(request)
        if public or user is not None:
            request.state.user = user
            response = await call_next(request)
        elif path.startswith(("/api/", "/events")):
            response = JSONResponse({"detail": "log in first"}, status_code=401)
        else:
            response = RedirectResponse("/login", status_code=303)
        response.headers.update(SECURITY_HEADERS)
        return response

    # -- login ---------------------------------------------------------------------------

    def login_page(error: str = "", status: int = 200) -> HTMLResponse:
        html = (STATIC / "login.html").read_text().replace("{{error}}", error)
        return HTMLResponse(html, status_code=status)

    @app.get("/login")
    async def login_form() -> HTMLResponse:
        return login_page()

    @app.post("/login")
    async def login(request: Request) -> Response:
        client = request.client.host if request.client else "?"
        if cross_site(request):  # login CSRF: another site logging the browser in as its own user
            return login_page("Cross-site login refused.", 403)
        if int(request.headers.get("content-length") or 0) > MAX_LOGIN_BYTES:
            return login_page("Login form too large.", 413)
        body = await request.body()
        form = parse_qs(body[:MAX_LOGIN_BYTES].decode(errors="replace"), max_num_fields=10)
        name = form.get("username", [""])[0]
        password = form.get("password", [""])[0]
        # Counted before the password is checked, so parallel guesses cannot pass the limit.
        if not limiter.attempt(client, name):
            log.warning("dashboard login refused for %r from %s: too many attempts", name[:64], client)
            return login_page("Too many login attempts; wait a minute.", 429)
        user = await asyncio.to_thread(users.authenticate, name, password) if name and password else None
        if user is None:
            log.warning("failed dashboard login for %r from %s", name[:64], client)
            return login_page("Wrong user name or password.", 401)
        log.info("dashboard login: %s (%s) from %s", user.name, user.role, client)
        response = RedirectResponse("/", status_code=303)
        secure = cookie_secure == "always" or (cookie_secure == "auto" and request.url.scheme == "https")
        response.set_cookie(COOKIE, sessions.issue(user.name), max_age=sessions.max_age_s, path="/",
                            httponly=True, samesite="strict", secure=secure)  # fmt: skip
        return response

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        if cross_site(request):
            return JSONResponse({"detail": "cross-site request refused"}, status_code=403)
        sessions.revoke(request.cookies.get(COOKIE))  # a copied cookie stops working too
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response

    # -- the page and its data -----------------------------------------------------------

    @app.get("/")
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/static/{name}")
    async def static(name: str) -> Response:
        if name not in PUBLIC_STATIC | PRIVATE_STATIC:
            return JSONResponse({"detail": "not found"}, status_code=404)
        return FileResponse(STATIC / name)

    @app.get("/api/me")
    async def me(request: Request) -> dict:
        user: User = request.state.user
        return {"user": user.name, "role": user.role}

    @app.get("/api/state")
    async def snapshot() -> dict:
        return state.snapshot(clock())

    @app.post("/api/alerts/{alert_id}/ack")
    async def acknowledge(alert_id: str, request: Request) -> Response:
        user: User = request.state.user
        if user.role != "admin":
            return JSONResponse({"detail": "admins only"}, status_code=403)
        if request.headers.get("x-requested-with") != "facefare":
            # A cross-site form cannot set this header (the SameSite cookie is the first guard).
            return JSONResponse({"detail": "missing X-Requested-With: facefare"}, status_code=400)
        if not state.acknowledge(alert_id, clock()):
            return JSONResponse({"detail": f"no current alert {alert_id!r}"}, status_code=404)
        log.info("alert %s acknowledged by %s", alert_id, user.name)
        return JSONResponse({"acknowledged": alert_id})

    @app.get("/events")
    async def events(request: Request) -> StreamingResponse:
        token = request.cookies.get(COOKIE)

        async def stream() -> AsyncIterator[str]:
            sent_version, sent_at = -1, 0.0
            yield "retry: 1000\n\n"
            while not app.state.stopping.is_set():
                if time.monotonic() - sent_at >= STREAM_REFRESH_S or state.version != sent_version:
                    name = sessions.user_of(token)
                    if name is None or users.get(name) is None:
                        yield "event: logout\ndata: {}\n\n"
                        return
                    snap = state.snapshot(clock())
                    sent_version, sent_at = snap["version"], time.monotonic()
                    yield f"event: state\ndata: {json.dumps(snap, separators=(',', ':'))}\n\n"
                await asyncio.sleep(STREAM_POLL_S)
                if await request.is_disconnected():
                    return

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"X-Accel-Buffering": "no"})

    return app


class DashboardServer:
    """Runs the app under uvicorn in a background thread (the demo, the tests) or in the foreground."""

    def __init__(
        self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, *, tls_cert_file: Path | None = None,
        tls_key_file: Path | None = None,
    ) -> None:  # fmt: skip
        self.app = app
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = host, self.sock.getsockname()[1]
        self.https = tls_cert_file is not None
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=3, ssl_certfile=tls_cert_file,
                                ssl_keyfile=tls_key_file, proxy_headers=True)  # fmt: skip
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.https else 'http'}://{host}:{self.port}/"

    def run(self) -> None:
        """Serve in this thread until interrupted."""
        try:
            self.server.run(sockets=[self.sock])
        finally:
            self.app.state.stopping.set()

    def start(self, timeout_s: float = 10.0) -> str:
        """Serve in a background thread; return the URL once it accepts connections."""
        self._thread = threading.Thread(target=self.run, name="dashboard-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"dashboard web server did not start on {self.url}")
            time.sleep(0.02)
        return self.url

    def stop(self) -> None:
        self.app.state.stopping.set()  # ends the live streams so the server can shut down
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.sock.close()
