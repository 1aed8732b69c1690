"""The command line: every command is registered here, and ``main()`` runs them.

Importing this module must stay cheap: no torch, no numpy. Each command file
imports the library it needs inside its function.
"""

from __future__ import annotations

import os
import sys
from contextlib import nullcontext, redirect_stdout
from typing import Annotated

import typer

from .. import __version__
from ..errors import UserError
from . import data as _data
from . import finetune as _finetune
from . import infer as _infer
from . import pretrain as _pretrain
from . import retrieve as _retrieve
from . import score as _score

try:  # typer >= 0.20 vendors click
    from typer._click.exceptions import ClickException as _ClickException
except ImportError:  # pragma: no cover - older typer uses click itself
    from click.exceptions import ClickException as _ClickException

app = typer.Typer(
    name="mmcli",
    help="mmcli: a compact, offline-first vision-language toolkit. Pretrain and fine-tune image-text "
    "models for captioning, VQA and retrieval on a CPU or GPUs; caption images, answer questions and "
    "search image folders with a trained run; score the results with the standard metrics (no Java "
    "needed). Nothing is downloaded at run time.\n\n"
    "A first run: [bold]mmcli finetune --task vqa --out runs/easyvqa[/bold] (easy-VQA, built in), then "
    "[bold]mmcli vqa IMAGE \"what shape is in the image?\" --model runs/easyvqa[/bold].",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mmcli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """mmcli: a compact, offline-first vision-language toolkit."""


# The table of contents: one line per command, listed by `mmcli --help` in this order (train, run, score; the data group).
app.command("pretrain", help=_pretrain.HELP, epilog=_pretrain.EPILOG, short_help=_pretrain.SHORT)(_pretrain.pretrain)
app.command("finetune", help=_finetune.HELP, epilog=_finetune.EPILOG, short_help=_finetune.SHORT)(_finetune.finetune)
app.command("caption", help=_infer.CAPTION_HELP, epilog=_infer.CAPTION_EPILOG, short_help=_infer.CAPTION_SHORT)(_infer.caption)
app.command("vqa", help=_infer.VQA_HELP, epilog=_infer.VQA_EPILOG, short_help=_infer.VQA_SHORT)(_infer.vqa)
app.command("retrieve", help=_retrieve.HELP, epilog=_retrieve.EPILOG, short_help=_retrieve.SHORT)(_retrieve.retrieve)
app.command("score", help=_score.HELP, epilog=_score.EPILOG, short_help=_score.SHORT)(_score.score)
app.add_typer(_data.app, name="data", short_help="Look at a dataset (counts, answers, blind baselines), write the "
              "synthetic one, or list and clear mmcli's caches.")


def _fail(message: str, code: int = 2) -> int:
    sys.stderr.write(f"mmcli: error{_rank_tag()}: {message}\n")
    return code


def _rank_tag() -> str:
    """Under torchrun, which process failed (each prints its own error): " (rank 1)"; else ""."""
    rank = os.environ.get("RANK", "0") if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 else "0"
    return "" if rank in ("", "0") else f" (rank {rank})"


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; user errors become one line on stderr and exit code 2.

    ``MMCLI_DEBUG=1`` lets every exception through with its traceback.
    """
    debug = os.environ.get("MMCLI_DEBUG", "") not in ("", "0")
    try:
        # under torchrun the ranks other than 0 print nothing on stdout (tables, results): rank 0 speaks
        with open(os.devnull, "w") if _rank_tag() else nullcontext(sys.stdout) as out, redirect_stdout(out):
            rv = app(args=argv, prog_name="mmcli", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except UserError as e:
        if debug:
            raise
        return _fail(str(e))
    except _ClickException as e:  # bad flags, missing arguments
        if type(e).__name__ == "NoArgsIsHelpError":  # plain `mmcli`: show the help
            sys.stdout.write(e.format_message() + "\n")
            return 0
        if debug:
            raise
        ctx = getattr(e, "ctx", None)
        where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        msg = " ".join(e.format_message().replace("Value error, ", "").split())
        return _fail(f"{msg}{where}", getattr(e, "exit_code", 2) or 2)
    except (typer.Abort, KeyboardInterrupt):
        sys.stderr.write("mmcli: interrupted\n")
        return 130
    except typer.Exit as e:
        return e.exit_code
    except BrokenPipeError:  # `mmcli score ... | head`
        return 0
