"""One MCP client session (official Python SDK, mcp 2.3.0) driven line by line, for tests
that do things to the server between two calls of the same session.

Usage: session_client.py --url URL [--transport streamable-http|sse]

Connects once (the ``initialize`` handshake), prints ``{"ready": true, ...}``, then reads one
JSON command per line on stdin and prints one JSON line per command:

    {"op": "call", "tool": "pid", "args": {}}   -> {"ok": true, "result": ...}
    {"op": "subscribe", "uri": "notes://index"} -> {"ok": true}
    {"op": "updates"}                           -> {"ok": true, "updates": [uri, ...]}

A failed command prints ``{"ok": false, "error": "..."}`` and the session goes on. Ends at
EOF of stdin.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import anyio
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

from mcp_client import CONNECT_TIMEOUT, describe, make_http_client, result_value


def emit(value: dict[str, Any]) -> None:
    print(json.dumps(value), flush=True)


async def main(args: argparse.Namespace) -> None:
    updates: list[str] = []

    async def on_message(message: Any) -> None:
        root = getattr(message, "root", message)
        if getattr(root, "method", None) == "notifications/resources/updated":
            updates.append(str(root.params.uri))

    if args.transport == "sse":
        transport = sse_client(args.url, timeout=CONNECT_TIMEOUT, httpx_client_factory=make_http_client)
    else:
        transport = streamable_http_client(args.url, http_client=make_http_client())
    async with Client(transport, mode="legacy", cache=None, message_handler=on_message) as client:
        emit({"ready": True, "protocolVersion": client.protocol_version})
        while line := await anyio.to_thread.run_sync(sys.stdin.readline):
            command = json.loads(line)
            try:
                with anyio.fail_after(command.get("timeout", 20)):
                    if command["op"] == "call":
                        result = await client.call_tool(command["tool"], command.get("args", {}))
                        if result.is_error:
                            raise RuntimeError(f"tool error: {result_value(result)}")
                        emit({"ok": True, "result": result_value(result)})
                    elif command["op"] == "subscribe":
                        await client.subscribe_resource(command["uri"])
                        emit({"ok": True})
                    elif command["op"] == "updates":
                        emit({"ok": True, "updates": updates})
                    else:
                        emit({"ok": False, "error": f"unknown op {command['op']!r}"})
            except Exception as e:  # noqa: BLE001 - report and go on
                emit({"ok": False, "error": describe(e)})


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--transport", choices=["streamable-http", "sse"], default="streamable-http")
    anyio.run(main, parser.parse_args())
