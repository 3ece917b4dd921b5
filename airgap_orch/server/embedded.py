"""Embedded mode: `serve --handler JT=module:function --workers N` runs SDK workers inside the server.

The workers are ordinary `airgap_orch.sdk.Worker`s in threads of the server process, talking to the
server's own loopback URL: the same leases, fencing, group commit and idempotent reports as remote
workers, and the same handler contract as `airgap-orch worker run`.

With auth on, the workers carry a token signed by an ephemeral Ed25519 key made in memory at start
(never written anywhere); the server trusts its public key besides the --token-key files, for this run
only. A token is limited to the tenants it names, so the workers' token names every tenant that has
queued or held jobs at start, and is re-issued (short-lived, scope orch:worker only) as soon as a job of
a new tenant is created and well before it expires. A token names at most MAX_TENANTS tenants.

Stopping (SIGTERM, SIGINT): the workers stop first, while the server still answers them (they finish or
release their jobs), then the server stops. A second signal hurries the workers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
import signal
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from typing import Any

from .. import schemas
from ..operations.dispatch import Caller
from ..orchestrator.states import HELD_STATES, QUEUED
from ..sdk.worker import Handler, Worker
from .main import Server, ServerConfig, check, serve_forever

log = logging.getLogger(__name__)

TOKEN_LIFETIME = timedelta(minutes=15)
TOKEN_RENEW_EVERY = TOKEN_LIFETIME.total_seconds() / 3
TOKEN_SUBJECT = "embedded-worker"
MAX_TENANTS: int = schemas.at("token-claims", "/properties/tenants/maxItems")
# Short long-polls over loopback: a new token (a new tenant) and a stop take effect within a second.
CLAIM_WAIT = 1.0
_CREATED = '"event_type":"job.created"'
_TENANT = re.compile(r'"tenant":"([^"\\]+)"')


class _WorkersStopped(Exception):
    """Ends serve_forever after the embedded workers stopped (it offers no hook to run before it stops)."""


class _TokenMinter:
    """An ephemeral signing key and the worker token it issues for the tenants seen so far."""

    def __init__(self) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        self._key = Ed25519PrivateKey.generate()
        self.public_pem = self._key.public_key().public_bytes(serialization.Encoding.PEM,
                                                              serialization.PublicFormat.SubjectPublicKeyInfo)
        self.tenants: dict[str, None] = {}  # insertion-ordered set
        self.changed = threading.Event()
        self._warned = False

    def see(self, tenants: Iterable[str]) -> None:
        for tenant in tenants:
            if tenant in self.tenants:
                continue
            if len(self.tenants) >= MAX_TENANTS:
                if not self._warned:
                    self._warned = True
                    log.warning("embedded workers serve at most %d tenants; jobs of %s and later tenants are "
                                "left to other workers", MAX_TENANTS, tenant)
                continue
            self.tenants[tenant] = None
            self.changed.set()

    def watch(self, appended: Iterable[tuple[int, str, str, str]]) -> None:
        """Ledger commit listener (writer thread): note the tenants of newly created jobs. Cheap on purpose."""
        for _seq, _job_id, text, _hash in appended:
            if _CREATED in text:
                match = _TENANT.search(text)
                if match and match.group(1) not in self.tenants:
                    self.see([match.group(1)])

    def mint(self) -> str:
        from ..auth.scopes import WORKER
        from ..auth.tokens import issue_token

        # A token must name a tenant; before any job exists the placeholder matches no job.
        tenants = list(self.tenants) or ["none"]
        return issue_token(self._key, subject=TOKEN_SUBJECT, tenants=tenants, scopes=[WORKER],
                           expires_in=TOKEN_LIFETIME)


class EmbeddedWorkers:
    """N SDK workers in threads of this process; `start(server)` once it listens, `stop()` before it stops."""

    def __init__(self, handlers: Mapping[str, Handler], workers: int, *, minter: _TokenMinter | None = None,
                 worker_options: Mapping[str, Any] | None = None):
        if workers < 1:
            raise ValueError("embedded mode needs at least one worker")
        self.handlers = dict(handlers)
        self.count = workers
        self.minter = minter
        self.worker_options = dict(worker_options or {})
        self.workers: list[Worker] = []
        self._threads: list[threading.Thread] = []
        self._stopped = threading.Event()
        self._renewer: threading.Thread | None = None

    async def start(self, server: Server) -> None:
        token = None
        options = dict(self.worker_options)
        if self.minter is not None:
            server.ledger.commit_listeners.append(self.minter.watch)  # before the scan: miss no new tenant
            for state in (QUEUED, *HELD_STATES):
                cursor = None
                while True:  # every page: the tenants of every job queued or held now
                    listed = await asyncio.wrap_future(server.readers.submit(
                        "jobs.list", {"state": state, "limit": 100_000, "cursor": cursor},
                        Caller(actor="embedded-workers")))
                    self.minter.see(job["tenant"] for job in listed["jobs"])
                    cursor = listed["next_cursor"]
                    if cursor is None:
                        break
            token = self.minter.mint()
            self.minter.changed.clear()
        options.setdefault("claim_wait", CLAIM_WAIT)
        for number in range(1, self.count + 1):
            worker = Worker(server.url, token, worker_id=f"embedded-{number}-{os.getpid()}", **options)
            for job_type, function in self.handlers.items():
                worker.add_handler(job_type, function)
            self.workers.append(worker)
            thread = threading.Thread(target=self._run, args=(worker,), name=f"embedded-worker-{number}",
                                      daemon=True)
            self._threads.append(thread)
            thread.start()
        if self.minter is not None:
            self._renewer = threading.Thread(target=self._renew, name="embedded-token", daemon=True)
            self._renewer.start()

    def _run(self, worker: Worker) -> None:
        try:
            worker.run()
        except Exception as error:  # keep serving; the other workers and remote workers carry on
            log.error("embedded worker %s stopped: %s", worker.worker_id, error)

    def _renew(self) -> None:
        assert self.minter is not None
        while not self._stopped.is_set():
            self.minter.changed.wait(TOKEN_RENEW_EVERY)
            if self._stopped.is_set():
                return
            self.minter.changed.clear()
            try:
                token = self.minter.mint()
            except Exception as error:  # keep the current token; try again at the next change or period
                log.error("could not renew the embedded workers' token: %s", error)
                continue
            for worker in self.workers:
                worker.set_token(token)

    def stop(self, timeout: float | None = None) -> None:
        """Stop every worker gracefully (they finish or release their jobs); a second call hurries them."""
        self._stopped.set()
        if self.minter is not None:
            self.minter.changed.set()
        for worker in self.workers:
            worker.stop("server stopping")
        for thread in self._threads:
            thread.join(timeout)


def serve_embedded(config: ServerConfig, handlers: Mapping[str, Handler], workers: int, *,
                   announce: Callable[[str], None] = print, worker_options: Mapping[str, Any] | None = None) -> None:
    """Run the server with `workers` embedded SDK workers until SIGTERM or SIGINT."""
    check(config)  # --token-key (or --no-auth on loopback) is still required: the ephemeral key is extra
    minter = None
    if not config.no_auth:
        minter = _TokenMinter()
        # TokenVerifier accepts PEM bytes as well as paths.
        config = dataclasses.replace(config, token_keys=[*config.token_keys, minter.public_pem])
    embedded = EmbeddedWorkers(handlers, workers, minter=minter, worker_options=worker_options)

    async def on_started(server: Server) -> None:
        await embedded.start(server)
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()

        def on_signal() -> None:
            if stopping.is_set():
                for worker in embedded.workers:
                    worker.stop()  # a second stop hurries the worker
            stopping.set()

        for signum in (signal.SIGTERM, signal.SIGINT):  # take over serve_forever's handlers
            loop.add_signal_handler(signum, on_signal)
        await stopping.wait()
        await loop.run_in_executor(None, embedded.stop)
        raise _WorkersStopped

    try:
        serve_forever(config, announce=announce, on_started=on_started)
    except _WorkersStopped:
        pass
