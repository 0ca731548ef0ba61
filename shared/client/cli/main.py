"""The ``recsys`` root command: global options, where the key comes from, and exit codes.

Exit codes: 0 success, 1 the API answered with an error (one line on stderr:
the message, the machine code and the HTTP status), 2 a usage error (bad flags, bad
JSON, no key, a bad tenant or scope for `keys`), 3 the
API or Redis cannot be reached, 4 a waited-for training run ended in error or
was cancelled, 130 interrupted.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from shared.client.http import DEFAULT_URL, ApiError, ConnectionFailed, RecsysClient
from shared.errors import ConfigError, DependencyUnavailable, ServiceError, ValidationFailed
from shared.stack.launcher import LOCAL_KEY_FILE

EXIT_API_ERROR = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_RUN_FAILED = 4
EXIT_INTERRUPTED = 130

UNREACHABLE_HINT = "is `make run` up? (or set RECSYS_URL / --url)"


def local_key_file(environ: dict[str, str] | None = None) -> Path:
    """``<RECSYS_DATA_DIR or ./var>/local-api-key``, the key ``make run`` wrote."""
    env = os.environ if environ is None else environ
    data_dir = env.get("RECSYS_DATA_DIR") or "var"
    return Path(data_dir).expanduser() / LOCAL_KEY_FILE


def default_url(environ: dict[str, str] | None = None) -> str:
    """The API ``make run`` serves: ``RECSYS_HOST``/``RECSYS_PORT`` when set, else the default.

    Used only when ``RECSYS_URL`` and ``--url`` are absent, so a stack started with
    ``RECSYS_PORT=9000 make run`` is found from the same shell.
    """
    env = os.environ if environ is None else environ
    host, port = env.get("RECSYS_HOST") or "", env.get("RECSYS_PORT") or ""
    if not host and not port:
        return DEFAULT_URL
    if host in {"", "0.0.0.0", "::"}:  # a wildcard bind is reached on loopback
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port or 8000}"


def read_local_key(path: Path) -> str | None:
    """The key stored in ``path``, or None when there is no readable, non-empty file."""
    try:
        raw = path.read_text().strip()
    except OSError:
        return None
    return raw or None


@dataclass
class CliState:
    """What every command gets: where the API is, which key, and how to print."""

    url: str
    api_key: str | None
    as_json: bool
    out: Console = field(default_factory=Console)
    _client: RecsysClient | None = None

    def client(self) -> RecsysClient:
        """The HTTP client; refuses to go on without a key."""
        if self._client is None:
            if not self.api_key:
                raise click.UsageError(
                    "No API key: pass --api-key, set RECSYS_API_KEY, or run `make run` "
                    f"once so that {local_key_file()} exists."
                )
            self._client = RecsysClient(self.url, self.api_key)
        return self._client


class RecsysGroup(click.Group):
    """The root group: turns the client's and the service's errors into exit codes."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the subcommand; print one readable line and exit non-zero on errors."""
        try:
            return super().invoke(ctx)
        except ApiError as exc:
            fail(exc.one_line(), EXIT_API_ERROR)
        except ConnectionFailed as exc:
            fail(f"{exc.message}; {UNREACHABLE_HINT}", EXIT_UNREACHABLE)
        except DependencyUnavailable as exc:
            fail(f"{exc.message} [{exc.code}]; {UNREACHABLE_HINT}", EXIT_UNREACHABLE)
        except ConfigError as exc:
            fail(exc.message, EXIT_USAGE)
        except ValidationFailed as exc:  # raised locally (keys): the user's input is wrong
            fail(f"{exc.message} [{exc.code}]", EXIT_USAGE)
        except ServiceError as exc:
            fail(f"{exc.message} [{exc.code}]", EXIT_API_ERROR)
        except KeyboardInterrupt:
            fail("interrupted", EXIT_INTERRUPTED)


def fail(message: str, code: int) -> Any:
    """Print ``recsys: error: <message>`` on stderr and exit with ``code``."""
    click.echo(f"recsys: error: {message}", err=True)
    sys.exit(code)


@click.group(cls=RecsysGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--url",
    envvar="RECSYS_URL",
    default=None,
    help=f"The service's base URL (env RECSYS_URL; else RECSYS_HOST/RECSYS_PORT; "
    f"else {DEFAULT_URL}).",
)
@click.option(
    "--api-key",
    envvar="RECSYS_API_KEY",
    default=None,
    help="API key (env RECSYS_API_KEY; else the local key `make run` wrote).",
)
@click.option("--json", "as_json", is_flag=True, help="Print raw JSON instead of tables.")
@click.version_option(package_name="recsys-service", prog_name="recsys")
@click.pass_context
def cli(ctx: click.Context, url: str | None, api_key: str | None, as_json: bool) -> None:
    """Talk to a recsys service: upload data, train models, get recommendations."""
    key = api_key or read_local_key(local_key_file())
    ctx.obj = CliState(url=url or default_url(), api_key=key, as_json=as_json)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the exit code."""
    try:
        cli.main(args=argv, prog_name="recsys", standalone_mode=True)
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        click.echo(str(code), err=True)
        return 1
    return 0
