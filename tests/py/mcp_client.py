"""A real MCP client on the official Python SDK (mcp 2.3.0), for mcpvisor's integration tests.

Usage:
    mcp_client.py --url URL [--transport streamable-http|sse] [--tool NAME] [--args JSON]
                  [--mode legacy|auto] [--timeout SECONDS]

Connects, negotiates (by default the classic ``initialize`` handshake), lists the
tools, calls one tool (default ``echo`` with ``{"text": "hello"}``) and prints ONE
line of JSON to stdout::

    {"protocolVersion": "...", "tools": [sorted names], "result": ...}

``result`` is the tool result's text content joined with newlines, or its
structured content when there is no text. Exit code 0 on success; 1 with the
error on stderr otherwise (including a tool result flagged ``isError``).

``--mode auto`` uses the SDK's default negotiation instead: probe
``server/discover`` (the stateless 2026-07-28 protocol) and fall back to
``initialize`` when the server does not speak it.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, NoReturn

import anyio
import httpx2
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

# Same defaults as mcp.shared._httpx_utils.create_mcp_http_client, minus proxy env vars:
# the servers under test are always local.
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 300.0


def make_http_client(
    headers: dict[str, str] | None = None,
    timeout: httpx2.Timeout | None = None,
    auth: httpx2.Auth | None = None,
) -> httpx2.AsyncClient:
    kwargs: dict[str, Any] = {
        "timeout": timeout or httpx2.Timeout(CONNECT_TIMEOUT, read=READ_TIMEOUT),
        "trust_env": False,
    }
    if headers is not None:
        kwargs["headers"] = headers
    if auth is not None:
        kwargs["auth"] = auth
    return httpx2.AsyncClient(**kwargs)


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # exit 1 (argparse's default is 2), like every other failure
        self.print_usage(sys.stderr)
        self.exit(1, f"{self.prog}: error: {message}\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(description="Call one tool on an MCP server and print the outcome as JSON.")
    parser.add_argument("--url", required=True, help="e.g. http://127.0.0.1:8000/mcp or http://127.0.0.1:8000/sse")
    parser.add_argument("--transport", choices=["streamable-http", "sse"], default="streamable-http")
    parser.add_argument("--tool", default="echo")
    parser.add_argument("--args", default=None, help='tool arguments as a JSON object (default for echo: {"text":"hello"})')
    parser.add_argument(
        "--mode",
        choices=["legacy", "auto"],
        default="legacy",
        help="legacy: initialize handshake (default); auto: SDK default (server/discover, then initialize)",
    )
    parser.add_argument("--timeout", type=float, default=20.0, help="overall timeout in seconds (default 20)")
    args = parser.parse_args(argv)

    if args.args is None:
        args.tool_args = {"text": "hello"} if args.tool == "echo" else {}
    else:
        try:
            args.tool_args = json.loads(args.args)
        except json.JSONDecodeError as e:
            parser.error(f"--args is not valid JSON: {e}")
        if not isinstance(args.tool_args, dict):
            parser.error("--args must be a JSON object")
    return args


def result_value(result: Any) -> Any:
    texts = [block.text for block in result.content if getattr(block, "type", None) == "text"]
    if texts:
        return "\n".join(texts)
    return result.structured_content


async def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.transport == "sse":
        transport = sse_client(args.url, timeout=CONNECT_TIMEOUT, httpx_client_factory=make_http_client)
    else:
        transport = streamable_http_client(args.url, http_client=make_http_client())

    async with Client(transport, mode=args.mode, cache=None) as client:
        names: list[str] = []
        cursor: str | None = None
        while True:
            listing = await client.list_tools(cursor=cursor)
            names.extend(tool.name for tool in listing.tools)
            cursor = listing.next_cursor
            if not cursor:
                break

        result = await client.call_tool(args.tool, args.tool_args)
        value = result_value(result)
        if result.is_error:
            raise RuntimeError(f"tool {args.tool!r} returned an error: {value}")

        return {"protocolVersion": client.protocol_version, "tools": sorted(names), "result": value}


def describe(exc: BaseException) -> str:
    """Flatten exception groups (anyio task groups) into one readable message."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(describe(e) for e in exc.exceptions)
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def amain(args: argparse.Namespace) -> int:
    try:
        with anyio.fail_after(args.timeout):
            output = await run(args)
    except TimeoutError:
        print(f"mcp_client: timed out after {args.timeout:g} s ({args.url})", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - report anything as a failure
        print(f"mcp_client: {describe(e)}", file=sys.stderr)
        return 1
    print(json.dumps(output), flush=True)
    return 0


def main() -> None:
    args = parse_args()
    sys.exit(anyio.run(amain, args))


if __name__ == "__main__":
    main()
