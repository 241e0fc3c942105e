"""notes: a small example MCP server built on the official Python SDK (mcp 2.3.0).

It exposes a handful of tools so that mcpvisor (and its integration tests) have
a real, third-party MCP server to supervise:

* ``echo(text)``            -> the same text
* ``add(a, b)``             -> a + b
* ``add_note(title, body)`` -> stores the note as a file in ``$NOTES_DIR``
* ``list_notes()``          -> the titles of the stored notes, one per line
* ``pid()``                 -> the server's process id (lets tests tell restarts apart)

and one resource, ``notes://index`` (the titles, one per line), that clients can
subscribe to: ``add_note`` sends ``notifications/resources/updated`` for it to
every session subscribed to it on this process.

Transports (bound to 127.0.0.1 only):

* ``--transport streamable-http`` (default): Streamable HTTP at ``/mcp``
* ``--transport sse``: legacy HTTP+SSE, event stream at ``/sse``, client
  messages POSTed to ``/messages/?session_id=...`` (the SDK defaults)
* ``--transport stdio``: newline-delimited JSON-RPC on stdin/stdout, for
  mcpvisor's stdio bridge (see ``examples/workspaces/notes-stdio.json``)

mcpvisor runs it from a workspace file (see ``examples/workspaces/notes.json``)
roughly as::

    .venv/bin/python examples/servers/notes.py --port ${PORT}

with the working directory at the repository root, ``PORT`` chosen by mcpvisor
and ``NOTES_DIR=${DATA_DIR}/notes``. ``scripts/setup-python`` creates ``.venv``.
Run by hand: ``python examples/servers/notes.py --port 8000``.

Everything is logged to stderr; stdout stays unused (it carries MCP in stdio mode).
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import re
import sys
from pathlib import Path

import uvicorn
from mcp import types
from mcp.server.mcpserver import MCPServer

HOST = "127.0.0.1"

log = logging.getLogger("notes")

mcp = MCPServer(
    "notes",
    version="0.1.0",
    instructions="Example server for mcpvisor: echo, add, and a tiny file-backed notebook.",
)


def notes_dir() -> Path:
    path = Path(os.environ.get("NOTES_DIR") or "./notes")
    path.mkdir(parents=True, exist_ok=True)
    return path


def note_file_name(title: str) -> str:
    """Map a title to a safe file name inside the notes folder."""
    stem = re.sub(r"[^A-Za-z0-9._ -]+", "_", title.strip()).strip(" .")
    if not stem:
        raise ValueError("title must contain at least one letter or digit")
    return stem[:120] + ".txt"


@mcp.tool()
def echo(text: str) -> str:
    """Return the given text unchanged."""
    return text


@mcp.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


INDEX = "notes://index"
# The sessions subscribed to each resource URI, on this process.
subscribers: dict[str, list] = {}


@mcp.tool()
async def add_note(title: str, body: str) -> str:
    """Save a note (overwrites a note with the same title). Returns the file name."""
    name = note_file_name(title)
    (notes_dir() / name).write_text(body, encoding="utf-8")
    log.info("saved note %r as %s", title, name)
    for session in list(subscribers.get(INDEX, [])):
        try:
            await session.send_resource_updated(INDEX)
        except Exception:  # noqa: BLE001 - a session that went away
            subscribers[INDEX].remove(session)
    return name


@mcp.tool()
def list_notes() -> str:
    """List the titles of all saved notes, sorted, one per line (empty when there are none)."""
    return "\n".join(sorted(p.stem for p in notes_dir().glob("*.txt") if p.is_file()))


@mcp.resource(INDEX, mime_type="text/plain")
def index() -> str:
    """The titles of the saved notes, one per line; subscribe to hear of new ones."""
    return list_notes()


async def subscribe(ctx, params: types.SubscribeRequestParams) -> types.EmptyResult:
    sessions = subscribers.setdefault(str(params.uri), [])
    if ctx.session not in sessions:
        sessions.append(ctx.session)
    return types.EmptyResult()


async def unsubscribe(ctx, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
    sessions = subscribers.get(str(params.uri), [])
    if ctx.session in sessions:
        sessions.remove(ctx.session)
    return types.EmptyResult()


# MCPServer has no public hook for subscriptions.
mcp._lowlevel_server.add_request_handler("resources/subscribe", types.SubscribeRequestParams, subscribe)  # noqa: SLF001
mcp._lowlevel_server.add_request_handler("resources/unsubscribe", types.UnsubscribeRequestParams, unsubscribe)  # noqa: SLF001


@mcp.tool()
def pid() -> int:
    """Return the process id of this server."""
    return os.getpid()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Example MCP notes server (mcp Python SDK).")
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("PORT") or 8000),
        help="TCP port on 127.0.0.1 (default: $PORT, else 8000)",
    )
    parser.add_argument(
        "--transport",
        choices=["streamable-http", "sse", "stdio"],
        default="streamable-http",
        help="streamable-http (served at /mcp), legacy sse (served at /sse) or stdio",
    )
    return parser.parse_args(argv)


def uvicorn_log_config() -> dict:
    """uvicorn's default logging setup, but with access logs on stderr (not stdout)."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    for handler in config["handlers"].values():
        handler["stream"] = "ext://sys.stderr"
    return config


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # force=True replaces the bare "%(message)s" handler MCPServer() installed at import time.
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )

    if args.transport == "stdio":
        log.info("notes server (pid %d) serving stdio, notes in %s", os.getpid(), notes_dir())
        mcp.run(transport="stdio")
        return
    if args.transport == "sse":
        # GET /sse opens the event stream; POST /messages/?session_id=... carries client messages.
        app = mcp.sse_app(host=HOST)
        where = f"http://{HOST}:{args.port}/sse"
    else:
        app = mcp.streamable_http_app(host=HOST)
        where = f"http://{HOST}:{args.port}/mcp"

    log.info("notes server (pid %d) serving %s at %s, notes in %s", os.getpid(), args.transport, where, notes_dir())
    config = uvicorn.Config(
        app,
        host=HOST,
        port=args.port,
        log_config=uvicorn_log_config(),
        # Bound the wait on SIGTERM when clients still hold SSE / GET streams open.
        timeout_graceful_shutdown=2,
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
