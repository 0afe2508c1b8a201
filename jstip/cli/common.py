"""What every `jstip` command shares: the app and its command groups, the console, one-line errors, the
store and version options, and the Prefect server a command's flows run on."""

from __future__ import annotations

import errno
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

# The machine refuses, not the input: errno -> what to do. Printed as one line by every command (_App).
MACHINE_ERRORS = {
    errno.ENOSPC: "free some space, or point --store (or --out) at a file system with room; a rerun resumes",
    errno.EDQUOT: "the disk quota is exhausted: free some space, or use another --store (or --out)",
    errno.EROFS: "the file system is mounted read-only: use a writable --store (or --out)",
    errno.EACCES: "this user may not write there: fix the permissions, or use another --store (or --out)",
    errno.EPERM: "the operation is not permitted there: fix the permissions, or use another --store (or --out)",
}


def machine_refused(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in MACHINE_ERRORS


class _App(typer.Typer):
    """The `jstip` command: a full disk or a refused permission ends any command with one line, not a
    traceback from wherever the write happened."""

    def __call__(self, *args, **kwargs):
        try:
            return super().__call__(*args, **kwargs)
        except OSError as error:
            if not machine_refused(error):
                raise
            where = f" ({error.filename})" if error.filename else ""
            console.print(Text.assemble(("error:", "red"), f" {error.strerror}{where}: {MACHINE_ERRORS[error.errno]}"),
                          soft_wrap=True)
            sys.exit(1)


app = _App(help="jstip: interleaved speech-text data for speech-LLM pretraining.", no_args_is_help=True,
           add_completion=False, pretty_exceptions_enable=False)
catalog_app = typer.Typer(help="Inspect published dataset versions in a store's DuckDB catalog.",
                          no_args_is_help=True)
app.add_typer(catalog_app, name="catalog")
models_app = typer.Typer(help="Inspect trained models registered in a store's DuckDB catalog.", no_args_is_help=True)
app.add_typer(models_app, name="models")
# Nothing printed is read as markup: ids, reasons, paths and SQL results are shown literally (an utterance id
# "[red]X[/red]" prints as itself); styling is explicit, through Text (say).
console = Console(markup=False, highlight=False)


def say(*parts: str | tuple[str, str]) -> None:
    """Print one line: strings literally, (text, style) pairs styled."""
    console.print(Text.assemble(*parts), soft_wrap=True)


StoreOption = Annotated[Path, typer.Option("--store", help="Root of the versioned dataset store.")]
VersionArgument = Annotated[Optional[str], typer.Argument(
    help="Version id, unique id prefix, or dataset name (its newest version). Default: the newest training version "
         "(a held-out test set is never a default).", show_default=False)]
TimeoutOption = Annotated[Optional[float], typer.Option(
    "--timeout", min=0.001, help="Stop the query after this many seconds (default: $JSTIP_QUERY_TIMEOUT_S, else 60).")]


def fail(message: str, code: int = 1) -> None:
    """End the command with one line, `error: <message>`."""
    console.print(Text.assemble(("error:", "red"), " ", message), soft_wrap=True)
    raise typer.Exit(code=code)


@contextmanager
def running_flows(what: str, resume: str, expected: tuple[type[BaseException], ...] = ()):
    """Around a command that runs Prefect flows: the command's own Prefect server (or PREFECT_API_URL's), and
    SIGINT/SIGTERM as one line and exit code 130/143 (jstip.local_server). Errors of the `expected` types, and
    a full disk or a permission the machine refuses, are the command's to print as one line: Prefect's console
    reports of them (tracebacks, failed states) are left out of the terminal (the Prefect API records them)."""
    from jstip.local_server import interruptible, prefect_api, quiet_console_logs

    def on_stop(signal_name: str) -> None:
        console.print(f"\n{what} stopped ({signal_name}); {resume}", markup=False, highlight=False, soft_wrap=True)

    def is_expected(error: BaseException) -> bool:
        return isinstance(error, expected) or machine_refused(error)

    # the errors' names and messages, and Prefect's report of the tasks that could not run after them
    marks = (*_class_names(expected), *(os.strerror(code) for code in MACHINE_ERRORS),
             "did not reach a 'COMPLETED' state")
    with interruptible(on_stop), prefect_api(), quiet_console_logs(is_expected, marks):
        yield


def _class_names(types) -> list[str]:
    return [t.__name__ for t in types] + [name for t in types for name in _class_names(t.__subclasses__())]


@contextmanager
def one_line_errors(*errors: type[BaseException]):
    """Errors of these types (a store that is not one, a version that is not there, ...) end the command with
    one line, `error: <message>`, and exit code 1."""
    try:
        yield
    except errors as e:
        fail(str(e))


def print_relation(columns: list[str], rows: list[tuple], title: str | None = None) -> None:
    """A table of values, each shown literally (Text: never read as markup) and whole: a narrow terminal wraps
    a value onto more lines, never cuts it short."""
    table = Table(title=None if title is None else Text(title), box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
                  collapse_padding=True)
    for index, column in enumerate(columns):
        # ids in the first column must stay copy-pasteable: never wrapped
        table.add_column(Text(column), no_wrap=index == 0, overflow="fold")
    for row in rows:
        table.add_row(*(Text("" if v is None else str(v)) for v in row))
    console.print(table)


def command_name() -> str:
    """How the user can call jstip again: `.venv/bin/jstip` after `make demo`, `jstip` when on PATH."""
    import shutil

    invoked = Path(sys.argv[0])
    if invoked.name == "jstip" and shutil.which("jstip") != str(invoked.resolve()):
        return os.path.relpath(invoked)
    return "jstip"

