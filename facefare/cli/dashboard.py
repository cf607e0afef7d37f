"""``facefare dashboard``: run the fleet dashboard, and manage who may log in to it.

A thin wrapper over :mod:`cloud_sync.dashboard`; users live in ``dashboard.users_file``::

    facefare dashboard add-user alice --role admin        # asks for the password twice
    facefare dashboard add-user depot --role read-only
    facefare dashboard run                                # serves [dashboard] host:port, reads [mqtt]
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from cloud_sync.dashboard.auth import ROLES, AuthError, UserStore
from cloud_sync.protocol import KeyLookup
from facefare.cli.context import Context, pass_ctx

log = logging.getLogger(__name__)


def users_path(cfg: Any) -> Path:
    return cfg.dashboard.users_file or Path(cfg.data_dir) / "dashboard" / "users.json"


def secret_path(cfg: Any) -> Path:
    return cfg.dashboard.secret_file or Path(cfg.data_dir) / "dashboard" / "session.key"


def serve(
    cfg: Any,
    lookup_key: KeyLookup,
    known_buses: Sequence[str] = (),
    *,
    host: str | None = None,
    port: int | None = None,
) -> None:
    """Run the dashboard in the foreground until interrupted: MQTT feed, web server, live stream.

    ``lookup_key`` gives a bus's registered public key (from ``dashboard.bus_keys_file`` or the
    cloud's bus registry); ``known_buses`` are listed even before they are heard from.
    """
    from cloud_sync.dashboard.app import DashboardServer, create_app
    from cloud_sync.dashboard.auth import Sessions, load_secret
    from cloud_sync.dashboard.feed import FleetFeed
    from cloud_sync.dashboard.state import FleetState

    dcfg = cfg.dashboard
    users = UserStore(users_path(cfg))
    try:
        names = users.names()
    except AuthError as exc:
        raise click.ClickException(str(exc)) from None
    if not names:
        raise click.ClickException(
            f"no dashboard users in {users.path}; add one with: facefare dashboard add-user NAME --role admin"
        )
    state = FleetState(dcfg, cfg.fares, known_buses=list(known_buses))
    sessions = Sessions(load_secret(secret_path(cfg)), dcfg.session_hours * 3600)
    app = create_app(state, users, sessions, cookie_secure=dcfg.cookie_secure)
    host, port = host or dcfg.host, dcfg.port if port is None else port
    try:
        server = DashboardServer(app, host, port, tls_cert_file=dcfg.tls_cert_file, tls_key_file=dcfg.tls_key_file)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc}") from None
    feed = FleetFeed(state, lookup_key)
    feed.start(cfg.mqtt, cfg.mqtt.client_id or "dashboard")
    click.echo(f"fleet dashboard on {server.url} (MQTT {cfg.mqtt.host}:{cfg.mqtt.port} as {cfg.mqtt.username})")
    try:
        server.run()
    finally:
        feed.stop()


@click.group()
def dashboard() -> None:
    """The fleet dashboard: every bus's health and money, live in a browser.

    It reads the buses' status, fares and decisions from MQTT (as the read-only
    'dashboard' user of [mqtt]), checks every message's signature against the
    registered bus keys, and serves a page that only logged-in users can see.
    """


@dashboard.command("run")
@click.option("--host", help="Address to listen on (default: dashboard.host).")
@click.option("--port", type=int, help="Port to listen on (default: dashboard.port).")
@pass_ctx
def run_cmd(ctx: Context, host: str | None, port: int | None) -> None:
    """Serve the dashboard until Ctrl-C.

    Needs dashboard.bus_keys_file (one 'bus-id base64-public-key' line per bus),
    at least one user (add-user) and an [mqtt] section for the 'dashboard' user.
    """
    from cloud_sync.dashboard.feed import load_bus_keys

    cfg = ctx.cfg
    if cfg.dashboard.bus_keys_file is None:
        raise click.ClickException("set dashboard.bus_keys_file: the dashboard refuses messages it cannot verify")
    try:
        keys = load_bus_keys(cfg.dashboard.bus_keys_file)
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"cannot read bus keys: {exc}") from None
    serve(cfg, keys.get, sorted(keys), host=host, port=port)


@dashboard.command("add-user")
@click.argument("name")
@click.option(
    "--role", type=click.Choice(ROLES), required=True, help="admin may acknowledge alerts; read-only may not."
)
@click.password_option(help="The password (asked twice if not given; at least 8 characters).")
@pass_ctx
def add_user(ctx: Context, name: str, role: str, password: str) -> None:
    """Add a dashboard user, or change a user's password and role.

    The password is stored as a salted scrypt hash in dashboard.users_file.
    """
    store = UserStore(users_path(ctx.cfg))
    try:
        existed = store.get(name) is not None
        store.set_user(name, password, role)  # type: ignore[arg-type]
    except AuthError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{'updated' if existed else 'added'} {role} user {name} in {store.path}")
