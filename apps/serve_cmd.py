"""`edgespec serve`: an OpenAI-compatible HTTP server (uvicorn) over one model, on 127.0.0.1 by default."""

from __future__ import annotations

import ipaddress
import os
import socket

import click

from ..contract.errors import EdgespecError
from .options import Invocation, pass_invocation
from .run_cmd import model_options
from .server import MAX_BODY


def _model_name(target: str) -> str:
    from pathlib import Path
    path = Path(target).expanduser()
    return path.name if path.exists() else target


@click.command("serve")
@pass_invocation
@model_options
@click.option("--host", default="127.0.0.1", show_default=True, help="address to bind")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--api-key", default=lambda: os.environ.get("EDGESPEC_API_KEY"),
              help="require 'Authorization: Bearer KEY' on /v1/ routes and /infill [default: $EDGESPEC_API_KEY]")
@click.option("--model-name", default=None, help="model id clients send [default: the target's name]")
@click.option("--queue-size", type=click.IntRange(0), default=4, show_default=True,
              help="requests that may wait while one runs; more get 429")
@click.option("--max-body", type=click.IntRange(1), default=MAX_BODY, show_default=True,
              help="largest request body in bytes")
@click.option("--prefix-cache-mb", type=click.IntRange(0), default=1024, show_default=True,
              help="memory for the KV of earlier prompts, so requests that start like one of them "
                   "(alternating conversations, resent files) prefill only what is new; 0: off")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]),
              default="info", show_default=True)
def serve_command(invocation: Invocation, target, draft, drafter, tree, budget, threads, provider, host, port,
                  api_key, model_name, queue_size, max_body, prefix_cache_mb, log_level):
    """Serve a model over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions)
    and llama.cpp's fill-in-the-middle /infill."""
    import uvicorn

    from ..runtime.prefix_cache import PrefixCache
    from .chat_cmd import load_chat_generator
    from .server import create_app
    if api_key is not None and not api_key:
        raise click.BadParameter("the API key is empty", param_hint="--api-key")
    if not _is_loopback(host) and api_key is None:
        click.echo(f"warning: serving on {host} without --api-key: anyone who can reach it can use it",
                   err=True)
    sock = _bind(host, port)
    gen = load_chat_generator(target, draft, drafter, tree, budget, threads, provider, invocation.owns_process)
    gen.prefix_cache = PrefixCache(prefix_cache_mb << 20) if prefix_cache_mb else None
    name = model_name or _model_name(target)
    app = create_app({name: gen}, api_key=api_key, queue_size=queue_size, max_body=max_body)
    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=2)
    sock.listen(config.backlog)  # a client that reads the address below may connect at once
    address = f"[{host}]" if ":" in host else host
    click.echo(f"serving {name} (drafter {gen.drafter_name}) on http://{address}:{sock.getsockname()[1]}/v1",
               err=True)
    uvicorn.Server(config).run(sockets=[sock])


def _bind(host: str, port: int) -> socket.socket:
    """The server's socket, bound before the model loads: a taken port fails at once, and
    --port 0 gets a free port that the start message can name."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise EdgespecError(f"cannot listen on {host} port {port}: {e.strerror}; "
                            f"choose another --host or --port") from None
    return sock


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
