"""The built-in apps a mission can name, and the placeholders an argv template may use.

The apps themselves live in `worker_ami/apps/`; here is only what the control side needs to
validate a config and what the worker needs to build an argv list (never a shell string).
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chalicelib.settings import Settings

# {input}: path of the input (in `lines` mode: this transaction's slice of lines; in `bytes`
#          mode: the lines, or records, that begin in its byte range; possibly none)
# {output}: path the app must write its part to
# {index} {count}: this transaction's index and the mission's transaction count
# {start} {end}: the half-open interval [start, end) (interval values, line numbers, or in
#                `bytes` mode the chunk's byte range of the input)
# {attempt}: 1 for the first attempt, 2 for the first retry, ...
# {python}: the worker's Python interpreter (used by the built-in apps)
PLACEHOLDERS = frozenset({"input", "output", "index", "count", "start", "end", "attempt", "python"})


@dataclass(frozen=True)
class BuiltinApp:
    name: str
    module: str
    split_mode: str  # the split mode the app understands: "count", "lines" or "bytes"
    summary: str
    align: str | None = None  # bytes mode: where its chunks must be cut ("line" or "fasta")


BUILTIN_APPS: dict[str, BuiltinApp] = {
    app.name: app
    for app in (
        BuiltinApp(
            name="kmer-match",
            module="worker_ami.apps.kmer_match",
            split_mode="count",
            summary="k-mer containment of the sample in reference sequences [start, end)",
        ),
        BuiltinApp(
            name="seq-stats",
            module="worker_ami.apps.seq_stats",
            split_mode="lines",
            summary="length, GC fraction and digest of each sequence line of the slice",
        ),
        BuiltinApp(
            name="fasta-stats",
            module="worker_ami.apps.fasta_stats",
            split_mode="bytes",
            align="fasta",
            summary="name, length, GC fraction and digest of each FASTA record of the chunk",
        ),
        BuiltinApp(
            name="kmer-top",
            module="worker_ami.apps.kmer_top",
            split_mode="count",
            summary=(
                "the top N references by k-mer containment, from kmer-match's merged output"
                " (a reduce)"
            ),
        ),
    )
}


def placeholders_in(template: str) -> list[str]:
    """Names of the `{placeholders}` in one argv element; raises ValueError if malformed.

    Placeholders are plain names: a format spec or conversion (`{input:d}`, `{input!r}`) would
    fail or quote the value on the worker, so they are refused here.
    """
    names = []
    for _, field, spec, conversion in string.Formatter().parse(template):
        if field is None:
            continue
        if spec or conversion:
            raise ValueError(f"placeholder {{{field}}} must be plain: no ':spec' or '!conversion'")
        names.append(field)
    return names


class ProgramNotAllowed(ValueError):
    """This stage does not run the argv's program: refused wherever and whenever it is tried."""


def check_program(argv: Sequence[str], settings: Settings) -> None:
    """The stage's policy for argv apps: anything where inline argv is allowed (the local stage),
    else only a program on its allow list (the built-in apps never need this check).

    The API applies it to every config it accepts; each worker applies it again to the config it
    reads from the mission table before it runs anything, so whoever can write that table still
    cannot make the workers run another program.
    """
    if settings.allow_inline_argv or (argv and argv[0] in settings.allowed_programs):
        return
    program = argv[0] if argv else ""
    raise ProgramNotAllowed(
        f"program {program!r} is not on this stage's allow list;"
        " use a built-in app or ask the operator to allow it"
    )


def builtin_argv(app: BuiltinApp, params: dict[str, int]) -> list[str]:
    argv = ["{python}", "-m", app.module, "--input", "{input}", "--output", "{output}"]
    argv += ["--start", "{start}", "--end", "{end}"]
    for key, value in sorted(params.items()):
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv


def render_argv(template: list[str], values: dict[str, object]) -> list[str]:
    """Fill the placeholders of each element; the result goes to exec, never to a shell."""
    return [element.format_map(values) for element in template]
