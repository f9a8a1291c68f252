"""`stoker server`: the control plane and its API in one process (uvicorn)."""

from __future__ import annotations

import logging
import os
import sys

import uvicorn

from stoker.control.plane import ControlPlane
from stoker.server.app import create_app
from stoker.server.auth import TokenBook, token_env_names
from stoker.spec.api import ServerSettings


def serve(settings: ServerSettings) -> None:
    """Open the store, adopt what a previous server left running, and serve until SIGINT or
    SIGTERM. Job processes keep running after the server stops; the next one adopts them."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s", stream=sys.stderr)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    os.umask(0o077)  # the database, logs and state the server writes are its own
    plane = ControlPlane.open(settings, hidden_env=token_env_names)
    tokens = TokenBook(plane.cluster, source=settings.config)
    for name in token_env_names(plane.cluster):  # hashed now: the plain tokens are not kept
        os.environ.pop(name, None)
    for who in tokens.missing:
        logging.warning("no token for %s: it cannot log in", who)
    app = create_app(plane, tokens)
    print(f"stoker server: http://{settings.host}:{settings.port} (API docs at /docs), "
          f"state in {settings.state_dir}, {plane.describe_store()}, "
          f"{len(plane.nodes)} node(s); "
          f"{plane.isolation.describe()}", file=sys.stderr, flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning",
                access_log=False)
