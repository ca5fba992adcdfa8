"""The `tollhouse` command."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any

import platformdirs
import typer

from tollhouse import __version__
from tollhouse.config import ConfigError, Settings, load_settings
from tollhouse.demo import run_demo
from tollhouse.events.store import SqliteStore, StoreError, sqlite_path
from tollhouse.gateway.app import serve as serve_gateway
from tollhouse.gateway.state import GatewayState
from tollhouse.keys import create_key
from tollhouse.mock.provider import MockSettings, run_mock_provider

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
    uvloop = None  # type: ignore[assignment]

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Tollhouse: AI usage governance gateway.")
keys_app = typer.Typer(no_args_is_help=True, help="Gateway virtual keys (th-...).")
app.add_typer(keys_app, name="keys")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML or JSON config file.")]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="Where the store and state live.")]


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"tollhouse: {message}", err=True)
    raise typer.Exit(code)


def _settings(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except ConfigError as exc:
        _fail(str(exc))
        raise AssertionError from exc  # unreachable: _fail raises


def _data_dir(data_dir: Path | None) -> Path:
    if data_dir is not None:
        return data_dir
    env = os.environ.get("TOLLHOUSE_DATA_DIR")
    return Path(env) if env else Path(platformdirs.user_data_dir("tollhouse"))


def _logging() -> None:
    level = os.environ.get("TOLLHOUSE_LOG_LEVEL", "info").upper()
    logging.basicConfig(level=getattr(logging, level, logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _run(coro_factory: Any) -> None:
    """Run a server coroutine with uvloop when available; SIGINT/SIGTERM stop it cleanly."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        coro: Coroutine[Any, Any, None] = coro_factory(stop)
        await coro

    if uvloop is not None:
        uvloop.run(main())
    else:
        asyncio.run(main())


@app.command()
def serve(
    config: ConfigOpt = None,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8787,
    data_dir: DataDirOpt = None,
) -> None:
    """Run the gateway, control-plane API and console on one port."""
    settings = _settings(config)
    ddir = _data_dir(data_dir)
    _logging()

    def ready(state: GatewayState, bound: int) -> None:
        typer.echo(f"Tollhouse {__version__} listening on http://{host}:{bound} "
                   f"(enforcement {settings.enforcement.value}, data in {ddir})")
        typer.echo(f"  OpenAI:    OpenAI(base_url=\"http://{host}:{bound}/openai/v1\")")
        typer.echo(f"  Anthropic: Anthropic(base_url=\"http://{host}:{bound}/anthropic\")")
        typer.echo(f"  Events:    curl -H 'Authorization: Bearer {state.admin_token}' "
                   f"http://{host}:{bound}/api/v1/events")
        typer.echo(f"  Console:   http://{host}:{bound}/console/")

    try:
        _run(lambda stop: serve_gateway(settings, ddir, host, port, ready, stop))
    except StoreError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")


@app.command("mock-provider")
def mock_provider(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 9797,
    latency_ms: Annotated[float, typer.Option(help="Delay before each response.")] = 0.0,
    chunk_delay_ms: Annotated[float, typer.Option(help="Delay between stream chunks.")] = 0.0,
    output_tokens: Annotated[int, typer.Option(help="Default completion length.")] = 16,
    error_rate: Annotated[float, typer.Option(help="Fraction of calls answered 500.")] = 0.0,
) -> None:
    """A local fake of the OpenAI, Anthropic and Gemini APIs (for demos, tests and benchmarks)."""
    settings = MockSettings(latency_ms=latency_ms, chunk_delay_ms=chunk_delay_ms, output_tokens=output_tokens,
                            error_rate=error_rate)
    typer.echo(f"mock provider on http://{host}:{port} (OpenAI /v1/..., Anthropic /v1/messages, "
               f"Gemini /v1beta/models/...)")

    async def run(stop: asyncio.Event) -> None:
        task = asyncio.create_task(run_mock_provider(host, port, settings))
        await stop.wait()
        task.cancel()

    try:
        _run(run)
    except OSError as exc:
        _fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")


@app.command()
def demo(
    port: Annotated[int, typer.Option(help="Gateway port.")] = 8787,
    mock_port: Annotated[int, typer.Option(help="Mock provider port.")] = 9797,
    calls: Annotated[int, typer.Option(help="How many calls of traffic to drive.")] = 300,
    data_dir: DataDirOpt = None,
    exit_after: Annotated[bool, typer.Option("--exit", help="Stop once the traffic is done.")] = False,
) -> None:
    """Start the mock provider and the gateway, drive realistic traffic, and leave both running."""
    ddir = data_dir or Path(platformdirs.user_data_dir("tollhouse")) / "demo"
    _logging()
    try:
        _run(lambda stop: run_demo(ddir, port, mock_port, calls, stop, exit_after))
    except StoreError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot listen: {exc.strerror or exc}")


@keys_app.command("create")
def keys_create(
    user: Annotated[str, typer.Option("--user", help="The person the key belongs to.")],
    label: Annotated[str | None, typer.Option(help="A note, e.g. the laptop's name.")] = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Create a gateway key for a person; it is printed once and stored only as a hash."""
    settings = _settings(config)
    store = _open_store(settings, data_dir)
    key, record = create_key(store, user, label)
    store.close()
    typer.echo(key)
    typer.echo(f"(prefix {record.prefix}, user {record.subject}; shown once, keep it safe)", err=True)


@keys_app.command("list")
def keys_list(config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
    """List gateway keys (prefixes only)."""
    store = _open_store(_settings(config), data_dir)
    for r in store.list_keys():
        typer.echo(f"{r.prefix}  {r.subject:<20} {'revoked' if r.revoked_ms else 'active':<8} {r.label or ''}")
    store.close()


@keys_app.command("revoke")
def keys_revoke(prefix: str, config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
    """Revoke a gateway key by its prefix (running gateways stop accepting it within 30 s)."""
    store = _open_store(_settings(config), data_dir)
    count = store.revoke_key(prefix)
    store.close()
    if not count:
        _fail(f"no active key with prefix {prefix!r} (see: tollhouse keys list)", 1)
    typer.echo(f"revoked {prefix}")


def _open_store(settings: Settings, data_dir: Path | None) -> SqliteStore:
    try:
        return SqliteStore(sqlite_path(settings.store.url, _data_dir(data_dir)))
    except StoreError as exc:
        _fail(str(exc))
        raise AssertionError from exc


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
