"""Dashboard login: anonymous visitors get only the login page, roles, hashed passwords, cookie flags."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from cloud_sync.dashboard.app import COOKIE, create_app
from cloud_sync.dashboard.auth import AuthError, Sessions, UserStore, verify_password
from cloud_sync.dashboard.state import FleetState
from facefare.cli import main

NOW = 1_741_003_200_000  # 2025-03-03 12:00 UTC


@pytest.fixture(scope="module")
def users(tmp_path_factory: pytest.TempPathFactory) -> UserStore:
    store = UserStore(tmp_path_factory.mktemp("dash") / "users.json")
    store.set_user("alice", "correct horse", "admin")
    store.set_user("bob", "battery staple", "read-only")
    return store


@pytest.fixture
def state() -> FleetState:
    s = FleetState()
    s.reject("facefare/v1/bus/bus-1/status", "signature")
    return s


def client_for(state: FleetState, users: UserStore, base_url: str = "http://testserver", **kw) -> TestClient:
    app = create_app(state, users, Sessions(b"s" * 32, 3600), clock=lambda: NOW, **kw)
    return TestClient(app, base_url=base_url, follow_redirects=False)


def login(client: TestClient, user: str, password: str):
    return client.post("/login", content=f"username={user}&password={password.replace(' ', '+')}",
                       headers={"content-type": "application/x-www-form-urlencoded"})  # fmt: skip


@pytest.mark.parametrize(
    "path",
    ["/", "/index.html", "/static/app.js", "/static/app.css", "/api/state", "/api/me", "/events", "/docs",
     "/openapi.json", "/static/../app.py", "/nowhere"],
)  # fmt: skip
def test_anonymous_visitor_gets_nothing_but_the_login_page(state: FleetState, users: UserStore, path: str) -> None:
    client = client_for(state, users)
    r = client.get(path)
    if path.startswith(("/api/", "/events")):
        assert r.status_code == 401 and r.json() == {"detail": "log in first"}
    else:
        assert r.status_code == 303 and r.headers["location"] == "/login"
        assert r.content == b""
    assert b"bus-1" not in r.content
    assert client.post("/api/alerts/rejected:bus-1/ack", headers={"x-requested-with": "facefare"}).status_code == 401


def test_login_page_and_its_stylesheet_are_public(state: FleetState, users: UserStore) -> None:
    client = client_for(state, users)
    page = client.get("/login")
    assert page.status_code == 200 and 'name="password"' in page.text and "{{error}}" not in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]  # nothing from other origins
    assert client.get("/static/login.css").status_code == 200


def test_wrong_password_or_unknown_user_is_refused(state: FleetState, users: UserStore) -> None:
    client = client_for(state, users)
    for user, password in [("alice", "wrong password"), ("mallory", "correct horse"), ("alice", "")]:
        r = login(client, user, password)
        assert r.status_code == 401 and COOKIE not in r.cookies and "Wrong user name or password" in r.text


def test_session_cookie_flags_over_http_and_https(state: FleetState, users: UserStore) -> None:
    r = login(client_for(state, users), "alice", "correct horse")
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie and "Secure" not in cookie
    assert "correct horse" not in cookie and "admin" not in cookie
    secure = login(client_for(state, users, base_url="https://dash.example"), "alice", "correct horse")
    assert "Secure" in secure.headers["set-cookie"]
    always = login(client_for(state, users, cookie_secure="always"), "alice", "correct horse")
    assert "Secure" in always.headers["set-cookie"]


def test_logged_in_user_sees_the_page_state_and_stream(state: FleetState, users: UserStore) -> None:
    client = client_for(state, users)
    login(client, "bob", "battery staple")
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/api/me").json() == {"user": "bob", "role": "read-only"}
    snap = client.get("/api/state").json()
    assert snap["rejects"] == [{"bus_id": "bus-1", "reason": "signature", "count": 1}]
    with client.stream("GET", "/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.iter_lines()
        while next(lines) != "event: state":
            pass
        data = json.loads(next(lines).removeprefix("data: "))
        assert data["alerts"][0]["id"] == "rejected:bus-1"


def test_read_only_user_cannot_acknowledge_but_admin_can(state: FleetState, users: UserStore) -> None:
    reader = client_for(state, users)
    login(reader, "bob", "battery staple")
    ack = "/api/alerts/rejected:bus-1/ack"
    assert reader.post(ack, headers={"x-requested-with": "facefare"}).status_code == 403
    admin = client_for(state, users)
    login(admin, "alice", "correct horse")
    assert admin.post(ack).status_code == 400  # no custom header: could be a cross-site form
    assert admin.post("/api/alerts/offline:bus-9/ack", headers={"x-requested-with": "facefare"}).status_code == 404
    assert state.alerts(NOW)[0].acknowledged is False
    assert admin.post(ack, headers={"x-requested-with": "facefare"}).status_code == 200
    assert admin.get("/api/state").json()["alerts"][0]["acknowledged"] is True


def test_forged_expired_or_orphaned_session_is_refused(state: FleetState, users: UserStore, tmp_path: Path) -> None:
    client = client_for(state, users)
    login(client, "bob", "battery staple")
    assert client.get("/api/me").json()["role"] == "read-only"
    _, mac = client.cookies[COOKIE].split(".")
    as_alice = base64.urlsafe_b64encode(json.dumps({"u": "alice", "exp": 2**40}).encode()).decode().rstrip("=")
    client.cookies.set(COOKIE, f"{as_alice}.{mac}")  # bob's signature on a claim to be alice
    assert client.get("/api/me").status_code == 401
    sessions = Sessions(b"s" * 32, 60)
    assert sessions.user_of(sessions.issue("bob", now=1000), now=1059) == "bob"
    assert sessions.user_of(sessions.issue("bob", now=1000), now=1061) is None
    assert Sessions(b"t" * 32, 60).user_of(sessions.issue("bob")) is None
    # A user removed from the users file loses access at once.
    store = UserStore(tmp_path / "users.json")
    store.set_user("carol", "password!", "admin")
    client = client_for(state, store)
    login(client, "carol", "password!")
    assert client.get("/api/me").status_code == 200
    store.path.write_text(json.dumps({"users": {}}))
    assert client.get("/api/me").status_code == 401


def test_passwords_are_argon2id_hashes_and_old_scrypt_ones_still_work(users: UserStore, tmp_path: Path) -> None:
    raw = users.path.read_text()
    assert "correct horse" not in raw and "battery staple" not in raw
    assert stat.S_IMODE(users.path.stat().st_mode) == 0o600
    entry = json.loads(raw)["users"]["alice"]
    assert entry["role"] == "admin" and entry["hash"].startswith("$argon2id$")
    assert verify_password("correct horse", entry["hash"]) and not verify_password("correct horsE", entry["hash"])
    with pytest.raises(AuthError, match="too short"):
        users.set_user("eve", "short", "admin")
    with pytest.raises(AuthError, match="role"):
        users.set_user("eve", "long enough", "root")  # type: ignore[arg-type]
    # A users file of an earlier version (scrypt): the login works and upgrades the hash to argon2id.
    legacy = "scrypt$16384$8$1$" + base64.b64encode(b"s" * 16).decode() + "$" + base64.b64encode(
        hashlib.scrypt(b"old password", salt=b"s" * 16, n=2**14, r=8, p=1, dklen=32)).decode()  # fmt: skip
    old = UserStore(tmp_path / "old.json")
    old.path.write_text(json.dumps({"users": {"olga": {"role": "admin", "hash": legacy}}}))
    assert old.authenticate("olga", "old password") is not None
    assert json.loads(old.path.read_text())["users"]["olga"]["hash"].startswith("$argon2id$")
    assert old.authenticate("olga", "old password") is not None and old.authenticate("olga", "wrong") is None


def test_oversized_login_form_is_refused(state: FleetState, users: UserStore) -> None:
    r = login(client_for(state, users), "alice", "x" * 5000)
    assert r.status_code == 413 and COOKIE not in r.cookies


def test_login_attempts_are_limited(state: FleetState, users: UserStore) -> None:
    client = client_for(state, users)
    codes = [login(client, "alice", f"guess {i}").status_code for i in range(11)]
    assert codes == [401] * 10 + [429]
    assert login(client, "alice", "correct horse").status_code == 429  # even the right one, for a minute


def test_parallel_guesses_are_counted_before_the_password_is_checked(state: FleetState, users: UserStore) -> None:
    """Defect 9: 60 parallel guesses from one address were all checked (the count came after)."""
    client = client_for(state, users)
    with ThreadPoolExecutor(30) as pool:
        codes = list(pool.map(lambda i: login(client, "alice", f"guess {i}").status_code, range(60)))
    assert codes.count(401) <= 10 and codes.count(429) >= 50, sorted(codes)


def test_a_user_name_is_limited_from_any_address_and_the_right_password_works_after_the_window(
    state: FleetState, users: UserStore
) -> None:
    app = create_app(state, users, Sessions(b"s" * 32, 3600), clock=lambda: NOW, login_limit="3/5 seconds")
    first = TestClient(app, follow_redirects=False, client=("10.0.0.1", 1))
    other = TestClient(app, follow_redirects=False, client=("10.0.0.2", 1))
    assert [login(first, "alice", f"g{i}").status_code for i in range(3)] == [401] * 3
    assert login(other, "alice", "another guess").status_code == 429  # per user, whichever the address
    time.sleep(5.1)  # the window (long enough that 3 slow password checks under load stay inside it)
    assert login(other, "alice", "correct horse").status_code == 303


def test_logout_revokes_the_session_even_for_a_copied_cookie(state: FleetState, users: UserStore) -> None:
    """Defect 13: a copied cookie kept working after logout until it expired."""
    client = client_for(state, users)
    login(client, "bob", "battery staple")
    stolen = client.cookies[COOKIE]
    assert client.post("/logout").status_code == 303
    thief = TestClient(client.app, follow_redirects=False)
    thief.cookies.set(COOKIE, stolen)
    assert thief.get("/api/me").status_code == 401


@pytest.mark.parametrize("headers", [{"origin": "https://evil.example"}, {"sec-fetch-site": "cross-site"},
                                     {"origin": "null"}])  # fmt: skip
def test_cross_site_login_posts_are_refused(state: FleetState, users: UserStore, headers: dict[str, str]) -> None:
    """Defect 13: login CSRF (another site logging the browser in as the attacker)."""
    client = client_for(state, users)
    r = client.post("/login", content="username=alice&password=correct+horse",
                    headers={"content-type": "application/x-www-form-urlencoded", **headers})  # fmt: skip
    assert r.status_code == 403 and COOKIE not in r.cookies
    same = client.post("/login", content="username=alice&password=correct+horse",
                       headers={"content-type": "application/x-www-form-urlencoded", "origin": "http://testserver",
                                "sec-fetch-site": "same-origin"})  # fmt: skip
    assert same.status_code == 303


def test_add_user_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACEFARE_DASHBOARD__USERS_FILE", str(tmp_path / "u.json"))
    runner = CliRunner()
    args = ["dashboard", "add-user", "dora", "--role", "read-only"]
    r = runner.invoke(main, args, input="s3cret pass\ns3cret pass\n")
    assert r.exit_code == 0, r.output
    assert "added read-only user dora" in r.output
    assert UserStore(tmp_path / "u.json").authenticate("dora", "s3cret pass") is not None
    r = runner.invoke(main, ["dashboard", "add-user", "dora", "--role", "admin"], input="short\nshort\n")
    assert r.exit_code == 1 and "too short" in r.output
