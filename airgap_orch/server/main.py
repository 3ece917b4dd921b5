"""Run the control plane: own the ledger, serve HTTP, recover leases, write the discovery file."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from ..errors import InvalidInput, PolicyRefused
from ..ledger import Ledger
from ..operations import telemetry
from ..operations.dispatch import Caller
from ..operations.readers import LedgerReaders
from ..operations.uploads import LedgerUploads
from ..operations.writer import LedgerWriter
from ..orchestrator.sources import SCHEDULE_EVERY_SECONDS, SCHEDULER
from . import discovery
from .app import Door, Gate, create_app
from .connections import ConnectionLimits, Guards
from .events import EventHub, LogHub
from .metrics import Metrics

RECOVER_EVERY_SECONDS = 1.0


class _NoRequestText(logging.Filter):
    """aiohttp logs the raw text of a request it cannot parse, Authorization header (a token) included.
    Keep the fact, drop the text: secrets never reach the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info or "Error handling request" in str(record.msg):
            record.msg = "refused a malformed HTTP request (%s)"
            record.args = (record.exc_info[0].__name__ if record.exc_info else "unparseable",)
            record.exc_info = None
            record.exc_text = None
        return True


for _name in ("aiohttp.server", "aiohttp.access", "aiohttp.web", "aiohttp.internal"):
    logging.getLogger(_name).addFilter(_NoRequestText())


@dataclass
class ServerConfig:
    ledger_path: Path
    host: str = "127.0.0.1"
    port: int = 8080
    token_keys: list[Path] = field(default_factory=list)
    no_auth: bool = False
    group_commit: bool = True
    lock_timeout: float = 5.0
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    allow_hosts: list[str] = field(default_factory=list)  # Host names answered besides the bind address
    allow_origins: list[str] = field(default_factory=list)  # browser origins (Origin header) let through
    # Online keys for `bundle export` through the server (serve --bundle-key, --timestamp-key), loaded by the CLI:
    # operations.bundles.SigningKey items (a label and the private key; the key is never printed nor logged).
    bundle_keys: list[Any] = field(default_factory=list, repr=False)
    timestamp_keys: list[Any] = field(default_factory=list, repr=False)
    job_log_limits: Any = None  # joblogs.Limits (serve --job-log-lines, --job-log-retention); None: defaults


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check(config: ServerConfig) -> None:
    if config.no_auth and not is_loopback(config.host):
        raise PolicyRefused(f"--no-auth is refused on {config.host}: bind to 127.0.0.1 or give --token-key")
    if not config.no_auth and not config.token_keys:
        raise InvalidInput("name the public key(s) that sign tokens with --token-key PUB.pem, or use --no-auth "
                           "on loopback")


class Server:
    """A started server (use `async with`); `url` is known once started."""

    def __init__(self, config: ServerConfig):
        check(config)
        self.config = config
        self.gate = Gate.of(config.host, config.allow_hosts, config.allow_origins)
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._listening: asyncio.Server | None = None
        self._recovering: asyncio.Task | None = None
        self._scheduling: asyncio.Task | None = None
        verifier = None
        if not config.no_auth:
            from ..auth.tokens import TokenVerifier

            verifier = TokenVerifier(config.token_keys)
        self.ledger = Ledger.open(config.ledger_path, lock_timeout=config.lock_timeout)
        self.ledger.job_log_limits = config.job_log_limits
        self.metrics = Metrics()
        self.writer = LedgerWriter(self.ledger, group_commit=config.group_commit)
        self.readers = LedgerReaders(self.ledger)
        self.uploads = LedgerUploads(self.ledger, signing_keys=config.bundle_keys,
                                     timestamp_keys=config.timestamp_keys)
        self.writer.batch_observers.append(self.metrics.group_commit_size.observe)
        self._verifier = verifier

    async def start(self) -> str:
        loop = asyncio.get_running_loop()
        self.hub = EventHub(loop)
        self.log_hub = LogHub(loop)
        # Counting parses every entry: done on the event loop, off the writer thread (it runs before the loop
        # resumes the requests of that commit, so an answered request is already counted).
        self.ledger.commit_listeners += [self.hub.publish, self.log_hub.history_appended]
        self.ledger.commit_observers.append(
            lambda appended, queue_of: loop.call_soon_threadsafe(self.metrics.count_entries, appended, queue_of))
        self.ledger.log_listeners.append(self.log_hub.logs_stored)
        self.writer.start()
        # Name the top tenants before the first scrape, so the first events count under their names.
        self.readers.run(lambda: self.metrics.rank_tenants(telemetry.snapshot(self.ledger)))
        limits = self.config.limits
        door = Door(self.writer, self.readers, verifier=self._verifier, hub=self.hub, metrics=self.metrics,
                    limits=limits, uploads=self.uploads, log_hub=self.log_hub)
        self.guards = Guards(limits)
        self._runner = web.AppRunner(create_app(door, gate=self.gate, guards=self.guards), handle_signals=False,
                                     access_log=None, shutdown_timeout=2.0, keepalive_timeout=limits.keepalive_timeout)
        await self._runner.setup()
        # Our own listening socket, not web.TCPSite: each connection passes through a Guard (connections.py) in
        # front of the handler aiohttp's server object makes.
        self.guards.make_handler = self._runner.server
        self._listening = await loop.create_server(self.guards, self.config.host, self.config.port,
                                                   reuse_address=True)
        port = self._listening.sockets[0].getsockname()[1]
        host = self.config.host if ":" not in self.config.host else f"[{self.config.host}]"
        self.url = f"http://{host}:{port}"
        discovery.write(self.config.ledger_path, self.url)
        self._recovering = asyncio.create_task(self._recover_forever())
        self._scheduling = asyncio.create_task(self._schedule_forever())
        return self.url

    async def _recover_forever(self) -> None:
        while True:
            await asyncio.sleep(RECOVER_EVERY_SECONDS)
            if time.monotonic() - self.ledger.last_sweep < RECOVER_EVERY_SECONDS:
                continue  # a claim swept within the last second (core.maintain): no transaction of our own
            try:
                await asyncio.wrap_future(self.writer.submit("jobs.recover", {}, Caller(actor="orchestrator")))
            except Exception as exc:  # keep serving; the next sweep tries again
                print(f"airgap-orch: lease recovery failed: {exc}", file=sys.stderr)

    async def _schedule_forever(self) -> None:
        """Run due source schedules through the writer: the server owns the ledger, so it ticks them."""
        while True:
            try:
                await asyncio.wrap_future(self.writer.submit("schedules.run_due", {}, Caller(actor=SCHEDULER)))
            except Exception as exc:  # keep serving; the next run tries again
                print(f"airgap-orch: running due schedules failed: {exc}", file=sys.stderr)
            await asyncio.sleep(SCHEDULE_EVERY_SECONDS)

    async def stop(self) -> None:
        for task in (self._recovering, self._scheduling):
            if task is not None:
                task.cancel()
        if self._listening is not None:
            self._listening.close()  # no new connections; the runner then closes the open ones
        if self._runner is not None:
            await self._runner.cleanup()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.readers.stop)
        await loop.run_in_executor(None, self.uploads.stop)
        await loop.run_in_executor(None, self.writer.stop)
        self.ledger.close()
        discovery.remove(self.config.ledger_path)


def serve_forever(config: ServerConfig, *, announce=print, on_started=None) -> None:
    """Run until SIGTERM or SIGINT; announce(first_line) once listening."""

    async def main() -> None:
        server = Server(config)
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        try:
            url = await server.start()
            announce(f"airgap-orch serving {config.ledger_path} at {url} (pid {os.getpid()})")
            if on_started is not None:
                await on_started(server)
            await stopping.wait()
        finally:
            await server.stop()

    asyncio.run(main())
