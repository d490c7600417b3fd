"""The `trtbuild` command line: parsing only, one module per area over the library verbs.

    options.py   shared option types and bundles     build.py     convert, build, plan, inspect, repo
    generate.py  generate                             serve.py     serve, ask
    bench.py     bench, bench sweep, bench compare    tuning.py    train-medusa, tune-*, demo-model
    deploy.py    k8s, preflight

Heavy modules (torch, transformers) are imported inside command bodies so `trtbuild --help` is
fast. This module is the edge: library errors (TrtbuildError) and the OSErrors a user can fix
(ANTICIPATED_ERRNOS: disk full, read-only, missing input, connection refused) become one-line
`Error: ...` messages with exit code 1; usage errors exit 2; anything else keeps its traceback.
`build` is the default command for an existing directory (`trtbuild MODEL -o out`); a word that is
neither gets the nearest command.

May import: every trtbuild package (the top layer); commands import the library lazily.
"""

from __future__ import annotations

import difflib
import errno
import os
import sys
from pathlib import Path

import click

from trtbuild import __version__
from trtbuild.common.errors import TrtbuildError

CONTEXT = {"help_option_names": ["-h", "--help"]}
DEFAULT_COMMAND = "build"

# OSErrors a user can cause and fix (a full disk, a read-only or foreign directory, a missing input,
# a server that is not there): one line at the edge. Any other OSError is a bug and keeps its traceback.
ANTICIPATED_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM,
                                errno.ENOENT,
                                errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG, errno.ECONNREFUSED,
                                errno.ECONNRESET, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ETIMEDOUT})


def os_error_line(e: OSError) -> str | None:
    """One line for an anticipated OSError ("cannot write out/x: No space left on device"), else None."""
    from trtbuild.common.fsutil import user_path

    if e.errno not in ANTICIPATED_ERRNOS:
        return None
    where = f" {user_path(str(e.filename))}" if e.filename else ""  # never a staging directory's name
    if e.filename2:
        where += f" -> {user_path(str(e.filename2))}"
    return f"{e.strerror or e}:{where}" if where else f"{e.strerror or e}"


def command_hint(commands: list[str], word: str) -> str:
    """click's "No such command 'genrate'." with the nearest command, or the list of them."""
    near = difflib.get_close_matches(word, commands, n=1, cutoff=0.6)
    hint = f" Did you mean '{near[0]}'?" if near else f" Commands: {', '.join(sorted(commands))}."
    return f"No such command '{word}'.{hint}"


def looks_like_path(word: str) -> bool:
    return "/" in word or word.startswith(".")


class Group(click.Group):
    """The edge: library errors become one-line click errors. `build` is the default command when
    the first argument is an existing directory (`trtbuild MODEL --medusa heads.pt -o out` is
    `trtbuild build MODEL ...`) or an option of build's (`trtbuild -o out MODEL`); a mistyped
    command is never taken for a model path: it gets the nearest command, and a path that is not
    a directory is said to be missing."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and DEFAULT_COMMAND in self.commands and args[0] not in self.commands:
            first = args[0]
            own = {o for p in self.get_params(ctx) for o in (*p.opts, *p.secondary_opts)}
            if (first.startswith("-") and first.split("=")[0] not in own) or Path(first).is_dir():
                args = [DEFAULT_COMMAND, *args]
        return super().parse_args(ctx, args)

    def resolve_command(self, ctx: click.Context, args: list[str]):
        word = args[0] if args else ""
        if word and not word.startswith("-") and self.get_command(ctx, word) is None:
            if looks_like_path(word):
                raise click.ClickException(f"{word} is not a model directory" if Path(word).exists()
                                           else f"HF model directory not found: {word}")
            ctx.fail(command_hint(self.list_commands(ctx), word))
        return super().resolve_command(ctx, args)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except TrtbuildError as e:
            raise click.ClickException(" ".join(str(e).split())) from None
        except OSError as e:
            line = os_error_line(e)
            if line is None:
                raise
            raise click.ClickException(line) from None
        except Exception as e:  # a native writer's OS error (safetensors: "... (os error 28)") is text
            from trtbuild.common.fsutil import native_errno, user_path

            code = native_errno(e)
            if code not in ANTICIPATED_ERRNOS:
                raise
            raise click.ClickException(f"{os.strerror(code)}: {user_path(' '.join(str(e).split()))}") from None


@click.group(cls=Group, context_settings=CONTEXT)
@click.version_option(__version__, prog_name="trtbuild")
def cli() -> None:
    """trtbuild: HF checkpoint (+ Medusa heads | lookahead) -> TensorRT-LLM -> Triton.

    \b
    Quick start (CPU, the embedded SmolLM2-135M demo):
      trtbuild demo-model -o demo/hf
      trtbuild demo/hf -o demo/out             (build is the default command)
      trtbuild generate demo/out/engine --prompt "The capital of France is"
    """


def _register() -> None:
    from trtbuild.cli import bench, build, deploy, generate, serve, tuning

    for module in (build, generate, serve, bench, tuning, deploy):
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def main() -> None:
    cli(prog_name="trtbuild")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
