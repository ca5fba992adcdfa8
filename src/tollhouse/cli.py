"""The `tollhouse` command."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import signal
import sys
from collections.abc import Coroutine, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import platformdirs
import typer

from tollhouse import __version__
from tollhouse.agent import install as agent_install
from tollhouse.agent.flags import SOURCE as FLAG_SOURCE
from tollhouse.agent.flags import forget_flags, record_flags, running_flags
from tollhouse.agent.managed import local_layers
from tollhouse.agent.runner import AgentOptions, local_config_problems, run_agent
from tollhouse.agent.service_files import UNIT_NAME
from tollhouse.agent.settings import LocalLayers, SettingsError, check_url
from tollhouse.agent.show import agent_data_dir, effective_settings, render_text
from tollhouse.alerts.test_send import AlertTestError, send_test
from tollhouse.audit.checkpoint import (
    SigningKeyError,
    public_key_path,
    signing_key_path,
)
from tollhouse.audit.export import cef, jsonl
from tollhouse.audit.verify import verify_trail
from tollhouse.backtest import MAX_DAYS, backtest_store, in_force_of, render_report, setting_of
from tollhouse.config import ConfigError, DirectoryConfig, Settings, load_settings
from tollhouse.control.overrides import OverrideSet
from tollhouse.demo import run_demo
from tollhouse.directory import Directory
from tollhouse.events.store import Store, StoreError, is_postgres, open_store, sqlite_path
from tollhouse.explain import UsageSource, explain_call
from tollhouse.forward.ca import CAError, load_or_create
from tollhouse.forward.connect import ProxyListenError
from tollhouse.gateway.app import serve as serve_gateway
from tollhouse.gateway.enforce import enforced_for
from tollhouse.gateway.policy_holder import RulesFileError, compile_rules, initial_policy, read_rules_file
from tollhouse.gateway.state import GatewayState, admin_token_hint, admin_token_shell
from tollhouse.gateway.workers import Supervisor, WorkersError, check_workers, prepare, worker_argv
from tollhouse.key_owners import DirectoryUnreadable, key_owner_directory
from tollhouse.keys import create_key
from tollhouse.mock.provider import MockSettings, run_mock_provider
from tollhouse.model_limits import worst_output_tokens
from tollhouse.money import fmt_usd
from tollhouse.policy.decide import CountersDown, Usage
from tollhouse.policy.engine import CallFacts, Cap
from tollhouse.policy.explain_live import live_usage, usage_lines
from tollhouse.policy.timewindow import zone
from tollhouse.pricing import PriceBook
from tollhouse.subject_ids import valid_subject_id

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
    uvloop = None  # type: ignore[assignment]

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Tollhouse: AI usage governance gateway.")
keys_app = typer.Typer(no_args_is_help=True, help="Gateway virtual keys (th-...).")
app.add_typer(keys_app, name="keys")
policy_app = typer.Typer(no_args_is_help=True, help="Validate and explain the AI policy.")
app.add_typer(policy_app, name="policy")
audit_app = typer.Typer(no_args_is_help=True, help="The tamper-evident audit trail.")
app.add_typer(audit_app, name="audit")
config_app = typer.Typer(no_args_is_help=True, help="The agent's effective settings.")
app.add_typer(config_app, name="config")
alerts_app = typer.Typer(no_args_is_help=True, help="Alert channels (Slack, email, webhooks).")
app.add_typer(alerts_app, name="alerts")
ca_app = typer.Typer(no_args_is_help=True, help="The forward proxy's local certificate authority.")
app.add_typer(ca_app, name="ca")

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


def _logging(level_name: str | None = None) -> None:
    level = (level_name or os.environ.get("TOLLHOUSE_LOG_LEVEL", "info")).upper()
    logging.basicConfig(level=getattr(logging, level, logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _freeze_startup_heap() -> None:
    """Once serving: move everything built at start-up (policy indexes, directory, price table, ...) out of
    the cyclic collector's reach. Without this every full collection walks ~100,000 long-lived objects, a
    pause of tens of milliseconds that lands on whichever request is running."""
    gc.collect()
    gc.freeze()


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
    workers: Annotated[int, typer.Option(help="Gateway processes sharing the port (needs counters.url: "
                                                 "redis://... so budgets stay exact).")] = 1,
    worker: Annotated[int | None, typer.Option(hidden=True, help="Internal: this process is worker N.")] = None,
) -> None:
    """Run the gateway, control-plane API and console on one port."""
    settings = _settings(config)
    ddir = _data_dir(data_dir)
    _logging()
    if workers != 1:
        _serve_workers(settings, config, host, port, ddir, workers)
        return

    def ready(state: GatewayState, bound: int) -> None:
        _freeze_startup_heap()
        if worker is not None:
            return  # the supervisor printed the banner
        typer.echo(f"Tollhouse {__version__} listening on http://{host}:{bound} "
                   f"(enforcement {settings.enforcement.value}, data in {ddir})")
        typer.echo(f"  OpenAI:    OpenAI(base_url=\"http://{host}:{bound}/openai/v1\")")
        typer.echo(f"  Anthropic: Anthropic(base_url=\"http://{host}:{bound}/anthropic\")")
        typer.echo(f"  Admin token: {admin_token_hint(settings, ddir)}")
        typer.echo(f"  Events:    curl -H \"Authorization: Bearer {admin_token_shell(settings, ddir)}\" "
                   f"http://{host}:{bound}/api/v1/events")
        typer.echo(f"  Console:   http://{host}:{bound}/console/")
        proxy = state.health.current.get("forward_proxy")
        if proxy is not None and isinstance(info := proxy(), dict):
            typer.echo(f"  Forward proxy: HTTPS_PROXY=http://{info['host']}:{info['port']} "
                       f"NODE_EXTRA_CA_CERTS={info['ca']} SSL_CERT_FILE={info['ca_bundle']}")

    try:
        _run(lambda stop: serve_gateway(settings, ddir, host, port, ready, stop, worker=worker))
    except (StoreError, RulesFileError, SigningKeyError) as exc:
        _fail(str(exc))
    except ProxyListenError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")


def _layers() -> LocalLayers:
    try:
        return local_layers(os.environ)
    except SettingsError as exc:
        _fail(str(exc))
        raise AssertionError from exc


@app.command()
def agent(
    control_plane: Annotated[str | None, typer.Option(help="The control plane's URL (default: "
                                                      "TOLLHOUSE_CONTROL_PLANE, environment or managed file).")] = None,
    token: Annotated[str | None, typer.Option(help="Enrollment or admin token (default: TOLLHOUSE_TOKEN).")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Local overrides only, e.g. provider "
                                                "upstreams (YAML or JSON).")] = None,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int | None, typer.Option(help="Port to bind (default: TOLLHOUSE_PORT, environment or "
                                                   "managed file, else 8788).")] = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Run the agent: the gateway's routes on this machine, policy from the control plane (cached offline)."""
    # the flags given (a host flag equal to the default is not told apart from none), for `config show`
    given = {"control_plane": control_plane, "token": token, "port": None if port is None else str(port),
             "host": None if host == "127.0.0.1" else host, "config": str(config) if config else None,
             "data_dir": str(data_dir) if data_dir else None}
    layers = _layers()
    try:
        effective = layers.resolve(None)
        cp_url = check_url("--control-plane", control_plane) if control_plane else effective["control_plane"]
    except (SettingsError, ValueError) as exc:
        _fail(str(exc))
        raise AssertionError from exc
    secret = token or effective["token"]
    if not cp_url:
        _fail("no control plane: pass --control-plane URL or set TOLLHOUSE_CONTROL_PLANE (environment or the "
              f"managed file {layers.managed_label})")
    if not secret:
        _fail("no token: pass --token TOKEN (an enrollment token from POST /api/v1/agent/tokens) or set "
              f"TOLLHOUSE_TOKEN (environment or the managed file {layers.managed_label})")
    local = _settings(config)
    for problem in local_config_problems(local):
        _fail(f"{config}: {problem}")
    ddir = agent_data_dir(data_dir, layers)
    _logging(effective["log_level"])
    if port is None:
        named = layers.env.get("TOLLHOUSE_PORT") or layers.managed.get("TOLLHOUSE_PORT") or "8788"
        if not named.isdigit() or not 0 < int(named) < 65536:
            _fail(f"TOLLHOUSE_PORT={named!r} is not a port number (1-65535), e.g. TOLLHOUSE_PORT=8788")
        port = int(named)
    keep = layers.env.get("TOLLHOUSE_RETENTION_DAYS") or layers.managed.get("TOLLHOUSE_RETENTION_DAYS") or "100"
    try:
        retention = float(keep)
        if retention < 1:
            raise ValueError
    except ValueError:
        _fail(f"TOLLHOUSE_RETENTION_DAYS={keep!r} is not a number of days >= 1, e.g. TOLLHOUSE_RETENTION_DAYS=100")
        raise
    opts = AgentOptions(cp_url, secret, host, port, retention_days=retention)

    def ready(state: GatewayState, bound: int) -> None:
        _freeze_startup_heap()
        record_flags(ddir, given)
        plane = state.health.current["control_plane"]()
        assert isinstance(plane, dict)
        typer.echo(f"Tollhouse agent {__version__} listening on http://{host}:{bound} for user "
                   f"{effective['user']}, control plane {cp_url} ({plane['state']}, running on "
                   f"{plane['running_on']}; data in {ddir})")
        typer.echo(f"  export OPENAI_BASE_URL=http://{host}:{bound}/openai/v1")
        typer.echo(f"  export ANTHROPIC_BASE_URL=http://{host}:{bound}/anthropic")
        proxy = state.health.current.get("forward_proxy")
        if proxy is not None and isinstance(info := proxy(), dict):
            typer.echo(f"  export HTTPS_PROXY=http://{info['host']}:{info['port']} "
                       f"NODE_EXTRA_CA_CERTS={info['ca']} SSL_CERT_FILE={info['ca_bundle']}")

    try:
        _run(lambda stop: run_agent(local, layers, opts, ddir, ready, stop))
    except (StoreError, RulesFileError, SigningKeyError, SettingsError) as exc:
        _fail(str(exc))
    except ProxyListenError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
    finally:
        forget_flags(ddir)


@config_app.command("show")
def config_show(
    as_json: Annotated[bool, typer.Option("--json", help="JSON: {name: {value, source}}.")] = False,
    data_dir: DataDirOpt = None,
) -> None:
    """Every effective agent setting and its source: env, managed, control-plane (cached bundle) or default."""
    layers = _layers()
    ddir = agent_data_dir(data_dir, layers)
    try:
        shown = effective_settings(layers, ddir).shown()
    except SettingsError as exc:
        _fail(str(exc))
        raise AssertionError from exc
    for name, value in running_flags(ddir).items():  # what the agent running there was started with
        shown[name] = {"value": value, "source": FLAG_SOURCE}
    typer.echo(json.dumps(shown, indent=2) if as_json else render_text(shown))


def _serve_workers(settings: Settings, config: Path | None, host: str, port: int, ddir: Path, workers: int) -> None:
    try:
        check_workers(settings, workers)
        prepare(settings, ddir)
        supervisor = Supervisor(worker_argv(config, host, port, ddir), workers, host, port)
        supervisor.start()
    except (WorkersError, StoreError, SigningKeyError) as exc:
        _fail(str(exc))
        return
    typer.echo(f"Tollhouse {__version__} listening on http://{host}:{port} with {workers} worker processes "
               f"(enforcement {settings.enforcement.value}, data in {ddir})")
    typer.echo(f"  Admin token: {admin_token_hint(settings, ddir)}")
    typer.echo(f"  Events:    curl -H \"Authorization: Bearer {admin_token_shell(settings, ddir)}\" "
               f"http://{host}:{port}/api/v1/events")
    raise typer.Exit(supervisor.run())


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
        hint = "" if "--mock-port" in str(exc) else "; pass --port with a free port, or stop what uses it"
        _fail(f"the demo cannot start: {exc.strerror or exc}{hint}")


@app.command()
def install(
    control_plane: Annotated[str | None, typer.Option(help="The control plane's URL.")] = None,
    token: Annotated[str | None, typer.Option(help="Admin or enrollment token for the control plane.")] = None,
    user: Annotated[str | None, typer.Option(help="The machine's user: the agent's subject and the account "
                                             "the service runs as.")] = None,
    prefix: Annotated[Path | None, typer.Option(help="Install under DIR instead of / (no root needed).")] = None,
    data_dir: DataDirOpt = None,
    port: Annotated[int | None, typer.Option(help="Agent port (default 8788, or the value installed).")] = None,
    enable: Annotated[bool, typer.Option("--enable", help="Also enable and start the service (systemd).")] = False,
    forward_proxy: Annotated[bool, typer.Option("--forward-proxy", help="Also run the CONNECT proxy and send the "
                                                "machine's tools through it (HTTPS_PROXY, the CA).")] = False,
    forward_proxy_port: Annotated[int | None, typer.Option(help="The CONNECT proxy's port (default 8789).")] = None,
) -> None:
    """Install the agent: managed config, systemd unit, launchd plist, data directory. Idempotent."""
    opts = agent_install.InstallOptions(control_plane, token, user, data_dir, port, prefix,
                                        forward_proxy=forward_proxy, forward_proxy_port=forward_proxy_port)
    is_root = os.geteuid() == 0
    try:
        if enable:
            agent_install.check_enable(agent_install.Layout(prefix))
        result = agent_install.install(opts, is_root=is_root)
        started = (agent_install.enable_service(result.layout, systemd=agent_install.systemd_present())
                   if enable else [f"not started (pass --enable, or: systemctl enable --now "
                                   f"{UNIT_NAME})"])
    except agent_install.InstallError as exc:
        _fail(str(exc), 1)
        raise AssertionError from exc
    for change in result.changes:
        typer.echo(f"{change.action:>9}  {change.path}")
    for line in [*result.notes, *started]:
        typer.echo(line)
    typer.echo("Point tools at the agent:")
    for line in result.tool_exports():
        typer.echo(f"  {line}")


@app.command()
def uninstall(
    prefix: Annotated[Path | None, typer.Option(help="The --prefix given to install.")] = None,
    purge: Annotated[bool, typer.Option("--purge", help="Also delete the data directory (spool, cache).")] = False,
) -> None:
    """Remove what `tollhouse install` wrote (the data directory only with --purge)."""
    systemctl = agent_install.run_command if agent_install.systemd_present() else None
    try:
        changes = agent_install.uninstall(prefix, purge=purge, is_root=os.geteuid() == 0, systemctl=systemctl)
    except agent_install.InstallError as exc:
        _fail(str(exc), 1)
        raise AssertionError from exc
    for change in changes:
        typer.echo(f"{change.action:>9}  {change.path}")


@keys_app.command("create")
def keys_create(
    user: Annotated[str, typer.Option("--user", help="The person (or service) the key belongs to.")],
    label: Annotated[str | None, typer.Option(help="A note, e.g. the laptop's name.")] = None,
    allow_unknown: Annotated[bool, typer.Option("--allow-unknown", help="Create the key even though the "
                                                "directory has no such person or service.")] = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Create a gateway key for a person; it is printed once and stored only as a hash."""
    problem = valid_subject_id(user)
    if problem is not None:
        _fail(f"--user: {problem}")
    settings = _settings(config)
    store = _open_store(settings, data_dir)
    try:
        if not allow_unknown:
            _check_known(store, settings, config, user)
        key, record = create_key(store, user, label)
    finally:
        store.close()
    typer.echo(key)
    typer.echo(f"(prefix {record.prefix}, user {record.subject}; shown once, keep it safe)", err=True)


def _check_known(store: Store, settings: Settings, config: Path | None, user: str) -> None:
    """Refuse (exit 2) a user the directory in force lacks: the latest stored version, else the config's."""
    try:
        known = key_owner_directory(store, settings.directory, str(config) if config else None)
    except (StoreError, DirectoryUnreadable) as exc:
        _fail(f"cannot read the directory to check --user {user}: {exc}")
        raise AssertionError from exc
    if user not in known.ids:
        _fail(f"{user!r} is not a person or service of the directory ({known.source}). {known.how_to_add} "
              "Or pass --allow-unknown to create the key anyway.")


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


def _existing_store(settings: Settings, data_dir: Path | None) -> Store:
    """The store, refusing to create one (a command that reads a trail must not answer for an empty new store)."""
    if not is_postgres(settings.store.url):
        path = sqlite_path(settings.store.url, _data_dir(data_dir))
        if not path.is_file():
            where = "--data-dir" if data_dir is not None else (
                "TOLLHOUSE_DATA_DIR" if os.environ.get("TOLLHOUSE_DATA_DIR") else "the default data dir")
            _fail(f"no store at {path} ({where}): no audit trail to read. Pass --data-dir with the gateway's data "
                  "directory, or --config with the config whose store.url names its store", 1)
    return _open_store(settings, data_dir)


def _open_store(settings: Settings, data_dir: Path | None) -> Store:
    try:
        return open_store(settings.store.url, _data_dir(data_dir))
    except StoreError as exc:
        _fail(str(exc))
        raise AssertionError from exc


@policy_app.command("check")
def policy_check(
    file: Annotated[Path, typer.Argument(help="Rules file (list or {rules: [...]}) or a config file.")],
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Config whose directory the rules "
                                                "target (default: FILE itself when it is a config).")] = None,
) -> None:
    """Validate rules: exit 0, or print every problem with its rule id and field and exit 1."""
    whole = _config_of(file)  # FILE is a whole config: its rules, or the rules file it names
    rules_file = Path(whole.policy.rules_file) if whole is not None and whole.policy.rules_file else None
    try:
        raw = read_rules_file(rules_file or file)
    except RulesFileError as exc:
        _fail(str(exc) + (f" (the rules_file of {file})" if rules_file else ""), 1)
    context = _settings(config) if config else whole
    directory = context.directory if context is not None else DirectoryConfig()
    timezone = context.policy.timezone if context is not None else "UTC"
    file = rules_file or file
    try:
        compiled = compile_rules(raw, timezone, directory, 1, str(file))
    except RulesFileError as exc:
        for line in exc.problems:
            typer.echo(line, err=True)
        typer.echo(f"{file}: {len(exc.problems)} problem(s); nothing was changed.", err=True)
        raise typer.Exit(1) from None
    enabled = sum(1 for r in compiled.rules if r.enabled)
    typer.echo(f"{file}: OK, {len(compiled.rules)} rules ({enabled} enabled)")


def _config_of(file: Path) -> Settings | None:
    """FILE as a whole config (a relative policy.rules_file resolved from FILE's folder), or None when it is not
    one (a rules file)."""
    try:
        return load_settings(file)
    except ConfigError:
        return None


@policy_app.command("explain")
def policy_explain(
    user: Annotated[str, typer.Option("--user", help="The subject (person or service id).")],
    model: Annotated[str, typer.Option("--model", help="The model requested.")],
    provider: Annotated[str, typer.Option(help="Provider route id.")] = "openai",
    project: Annotated[str | None, typer.Option(help="Project named with X-Tollhouse-Project.")] = None,
    at: Annotated[str | None, typer.Option(help="Judge at this ISO time (default: now).")] = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    no_live: Annotated[bool, typer.Option("--no-live", help="Judge on the rules alone, without the store's "
                                          "spend, leases and exemptions.")] = False,
) -> None:
    """Show which rules apply to a call, at which scope, and why; the exemptions in force; and the decision, on
    the organisation's live spend (the store's, plus the budget leases agents hold) unless --no-live."""
    settings = _settings(config)
    p = settings.policy
    try:
        holder = initial_policy(p.rules, p.rules_file, p.timezone, settings.directory)
    except RulesFileError as exc:
        _fail(str(exc), 1)
        raise AssertionError from exc
    if provider not in settings.providers:
        _fail(f"no provider {provider!r}; configured: {', '.join(sorted(settings.providers))}", 1)
    try:
        now = datetime.fromisoformat(at) if at else datetime.now(UTC)
    except ValueError:
        _fail(f"--at {at!r} is not an ISO time such as 2026-11-23T14:00:00+00:00", 1)
        raise AssertionError from None
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    subject = Directory(settings.directory).subject(user, project)
    host = urlsplit(settings.providers[provider].upstream).hostname or ""
    overrides, source = _live_overrides(settings, data_dir, int(now.timestamp() * 1000))
    typer.echo(f"subject {subject.id} ({subject.kind}); team chain: {' > '.join(subject.teams) or '-'}; "
               f"project {subject.project or '-'}; cost centre {subject.cost_centre or '-'}")
    typer.echo(f"call: {provider} ({host}) model {model} at {now.isoformat(timespec='minutes')}")
    typer.echo(f"exemptions: {source}")
    enforced = enforced_for(settings.enforcement, settings.policy.enforce_teams, subject)
    call = CallFacts(provider, host, model)
    if no_live:
        explained = explain_call(holder.current, call, subject, now, enforced, OverrideSet())
    else:
        with _live_spend(settings, data_dir, provider, model, now) as usage:
            explained = explain_call(holder.current, call, subject, now, enforced, overrides, usage)
    for line in explained.lines:
        typer.echo(line)


@policy_app.command("backtest")
def policy_backtest(
    file: Annotated[Path, typer.Argument(help="Proposed rules file (list or {rules: [...]}) or a config file.")],
    days: Annotated[int, typer.Option(help="Replay the calls stored in the last DAYS days.", min=1,
                                      max=MAX_DAYS)] = 14,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    until: Annotated[str | None, typer.Option(help="Replay the DAYS days before this ISO time (default: now).")
                     ] = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """What the proposed rules would have done to the stored calls of the last DAYS days, enforcing, beside the
    policy in force: per rule the calls it would block, warn and redirect, the cost it would have prevented, the
    subjects and teams hit; and how many calls' decisions change."""
    settings = _settings(config)
    try:
        raw = read_rules_file(file)
    except RulesFileError as exc:
        _fail(str(exc), 1)
    try:
        end = datetime.fromisoformat(until) if until else datetime.now(UTC)
    except ValueError:
        _fail(f"--until {until!r} is not an ISO time such as 2026-11-23T14:00:00+00:00", 1)
        raise AssertionError from None
    end = end if end.tzinfo is not None else end.replace(tzinfo=UTC)
    ddir = _data_dir(data_dir)
    if not is_postgres(settings.store.url) and not sqlite_path(settings.store.url, ddir).exists():
        _fail(f"no store at {sqlite_path(settings.store.url, ddir)}: nothing to replay (give --data-dir, or the "
              "--config whose store.url the gateway records to)", 1)
    store = _open_store(settings, data_dir)
    try:
        found = in_force_of(store, settings)
        if isinstance(found, list):
            for line in found:
                typer.echo(line, err=True)
            _fail("the policy in force could not be read; nothing was replayed", 1)
            return
        in_force, directory = found
        try:
            proposed = compile_rules(raw, settings.policy.timezone, directory.config, 0, str(file))
        except RulesFileError as exc:
            for line in exc.problems:
                typer.echo(line, err=True)
            _fail(f"{file}: {len(exc.problems)} problem(s); nothing was replayed", 1)
            return
        setting = setting_of(settings, directory, PriceBook(settings.pricing.overrides))
        _freeze_startup_heap()  # the replay makes garbage by the million: keep its collections off start-up's heap
        # ... and none of it in cycles (reference counting frees it all; peak memory is the same either way), so the
        # cyclic collector is off while it runs: it would only walk it (1-2 s of ~10 over 1,000,000 calls)
        gc.disable()
        try:
            report = backtest_store(store, proposed, in_force, setting, days, int(end.timestamp() * 1000))
        finally:
            gc.enable()
    except StoreError as exc:
        _fail(f"the store could not be read: {exc}", 1)
        return
    finally:
        store.close()
    typer.echo(json.dumps(report, indent=2) if as_json else render_report(report))


def _live_overrides(settings: Settings, data_dir: Path | None, now_ms: int) -> tuple[OverrideSet, str]:
    """The approved exemption overrides in force in the store (never created here), and where they came from."""
    url, where = settings.store.url, _data_dir(data_dir)
    if not is_postgres(url) and not sqlite_path(url, where).exists():
        return OverrideSet(), f"no store at {sqlite_path(url, where)}; judged without any (give --data-dir)"
    try:
        store = open_store(url, where)
        try:
            rows = store.active_overrides(now_ms)
        finally:
            store.close()
    except StoreError as exc:
        return OverrideSet(), f"the store could not be read ({exc}); judged without any"
    found = OverrideSet.of(rows)
    return found, f"{found.size} approved override(s) in force in the store"


@contextmanager
def _live_spend(settings: Settings, data_dir: Path | None, provider: str, model: str, now: datetime
                ) -> Iterator[UsageSource | None]:
    """What explain_call asks for the caps that count a call: each cap's live used (the store's settled spend in
    its window, plus the budget leases agents hold) and what a call of `model` at its worst case adds. None
    (caps not judged on spend, said in the output) when the store cannot be read."""
    ddir = _data_dir(data_dir)
    if not is_postgres(settings.store.url) and not sqlite_path(settings.store.url, ddir).exists():
        yield None
        return
    try:
        store = open_store(settings.store.url, ddir)
    except StoreError as exc:
        typer.echo(f"(live spend not shown: the store cannot be read: {exc})")
        yield None
        return
    lc = settings.ledger
    prices = PriceBook(settings.pricing.overrides)
    price_provider = settings.price_provider_id(provider)
    output = worst_output_tokens(None, prices.max_output_tokens(price_provider, model), lc.default_max_output_tokens)
    cost = prices.token_cost_nusd(price_provider, model, 1, output)
    need = {"spend": cost or 0, "input_tokens": 1, "output_tokens": output, "requests": 1}
    directory = Directory(settings.directory)

    def usage(caps: Sequence[Cap]) -> Usage:
        try:
            found = live_usage(store, directory, caps, need, int(now.timestamp() * 1000), lc.billing_day,
                               zone(lc.timezone))
        except StoreError as exc:
            return CountersDown(str(exc), "the store cannot be read")
        typer.echo(f"live usage (a call of {model} at its worst case: {output:,} output tokens"
                   f"{'' if cost is None else ', ' + fmt_usd(cost)}):")
        for line in usage_lines(found):
            typer.echo(line)
        return found

    try:
        yield usage
    finally:
        store.close()


@audit_app.command("verify")
def audit_verify(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    public_key: Annotated[Path | None, typer.Option(help="The exported audit public key to check checkpoints "
                                                    "with (default: audit_signing_key.pub in the data dir).")] = None,
) -> None:
    """Check the audit trail's hash chain and signed checkpoints: exit 0, or 1 naming the first problem."""
    settings = _settings(config)
    store = _existing_store(settings, data_dir)
    key_path = public_key or public_key_path(signing_key_path(_data_dir(data_dir), settings.audit.signing_key_file))
    try:
        status = verify_trail(store, key_path)
    finally:
        store.close()
    if status.unchecked is not None:
        _fail(status.unchecked, 1)
    if status.problem is not None:
        typer.echo(f"audit trail TAMPERED: {status.problem}", err=True)
        raise typer.Exit(1)
    signed = (f"{status.checkpoints} signed checkpoints verified (the last covers #{status.last_checkpoint_seq})"
              if status.checkpoints else "no signed checkpoints yet (a removed tail would not show)")
    typer.echo(f"audit trail OK: {status.entries} entries, chain intact"
               + (f" (last #{status.last_seq}, hash {(status.last_hash or '')[:16]}...)" if status.last_seq else "")
               + f"; {signed}")


@audit_app.command("export")
def audit_export(
    fmt: Annotated[str, typer.Option("--format", help="jsonl or cef")] = "jsonl",
    since: Annotated[int, typer.Option(help="Only entries after this sequence number.")] = 0,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Print audit entries, oldest first, one per line, for a SIEM."""
    render = {"jsonl": jsonl, "cef": cef}.get(fmt)
    if render is None:
        _fail(f"--format {fmt!r}: use jsonl or cef", 1)
        raise AssertionError
    store = _existing_store(_settings(config), data_dir)
    for entry in store.audit_entries(since):
        typer.echo(render(entry))
    store.close()


@alerts_app.command("test")
def alerts_test(
    channel: Annotated[str, typer.Argument(help="A channel name in alerts.channels.")],
    to: Annotated[str | None, typer.Option(help="Email channels: send to this address (default: its `to`).")] = None,
    config: ConfigOpt = None,
) -> None:
    """Send a test alert over CHANNEL now; exit 0 when the channel accepted it, 1 (saying why) when not."""
    try:
        typer.echo(send_test(_settings(config).alerts, channel, to))
    except AlertTestError as exc:
        _fail(str(exc), 1)


@ca_app.command("export")
def ca_export(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    bundle: Annotated[bool, typer.Option("--bundle", help="The system's roots plus ours (for SSL_CERT_FILE).")] = False,
) -> None:
    """Print the forward proxy's CA certificate (PEM); made in the data directory (for the config's
    forward_proxy.intercept) if it is not there yet. An existing one is printed as it is."""
    settings = _settings(config)
    try:
        ca = load_or_create(_data_dir(data_dir), settings.forward_proxy.intercept, reissue=False)
    except CAError as exc:
        _fail(str(exc))
        raise AssertionError from exc
    sys.stdout.buffer.write(ca.files.bundle.read_bytes() if bundle else ca.pem)


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
