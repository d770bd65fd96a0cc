"""``cpn draw``: a net as a Graphviz diagram, DOT text or (through ``dot``) SVG.

The drawing itself is pure (nets/draw.py); this shell loads the net, writes the text
and, for SVG, runs Graphviz's ``dot``, which cpn-cluster does not depend on: when it
is missing the command says how to get it. Errors are raised as
:class:`~nets.errors.CpnError` and become one line and exit status 2 in cluster/cli.py.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import click

from cluster.commands.options import net_params_option
from nets.draw import to_dot
from nets.errors import CpnError
from nets.loader import load_net_or_pnml

# Graphviz lays out a net of a few hundred nodes in well under a second; a minute
# means it is stuck, and the user is better told so than left waiting.
DOT_TIMEOUT_S = 60

DOT_MISSING = (
    "Graphviz's `dot` is not on the PATH, and --format svg needs it; install it "
    "(Debian/Ubuntu: apt-get install graphviz; macOS: brew install graphviz) "
    "or use --format dot"
)


@click.command()
@click.argument("net_path", metavar="NET")
@net_params_option
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed passed to a net builder that takes one (it may shape the net).",
)
@click.option(
    "-o",
    "--output",
    "output_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write to this file instead of stdout.",
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["dot", "svg"]),
    default=None,
    help="dot (the default) or svg (needs Graphviz's `dot`); an -o file ending in .svg means svg.",
)
def draw(
    net_path: str,
    net_params: tuple[tuple[str, object], ...],
    seed: int,
    output_path: Path | None,
    output_format: str | None,
) -> None:
    """Draw NET (package.module:attr, or a .pnml file) as Graphviz DOT or SVG."""
    if output_format is None:
        is_svg = output_path is not None and output_path.suffix.lower() == ".svg"
        output_format = "svg" if is_svg else "dot"
    net = load_net_or_pnml(net_path, seed=seed, params=dict(net_params))
    text = to_dot(net)
    if output_format == "svg":
        text = render_svg(text)
    if output_path is None:
        click.echo(text, nl=False)
        return
    try:
        output_path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise CpnError(f"cannot write {output_path}: {exc.strerror or exc}") from exc


def render_svg(dot_text: str) -> str:
    """``dot_text`` laid out by Graphviz's ``dot -Tsvg``.

    Raises:
        CpnError: ``dot`` is not on the PATH (saying how to get it), timed out, or
            refused the input (with the first line of its message).
    """
    dot = shutil.which("dot")
    if dot is None:
        raise CpnError(DOT_MISSING)
    try:
        done = subprocess.run(
            [dot, "-Tsvg"],
            input=dot_text,
            capture_output=True,
            text=True,
            encoding="utf-8",
            timeout=DOT_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise CpnError(f"{dot} -Tsvg did not finish within {DOT_TIMEOUT_S} s") from exc
    except OSError as exc:
        raise CpnError(f"cannot run {dot}: {exc.strerror or exc}") from exc
    if done.returncode != 0:
        first = (done.stderr.strip().splitlines() or ["no message"])[0]
        raise CpnError(f"{dot} -Tsvg failed with status {done.returncode}: {first}")
    return done.stdout
