"""``mmcli score``: options in, one library call, a table or JSON out."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from .options import Task

SHORT = "Score captions (BLEU, ROUGE-L, CIDEr-D), VQA answers or retrieval rankings. No Java."

HELP = """Score PREDS against REFS with the standard metrics, exactly as the reference tools do.

[b]Captions[/b] (default): BLEU-1..4, ROUGE-L and CIDEr-D computed exactly as pycocoevalcap
(the COCO caption evaluation) computes them, with a pure-Python PTB-compatible tokenizer,
so no Java is needed. sacreBLEU corpus BLEU (0-100, with its signature) and rouge-score
ROUGE-L F1 are available as separately named metrics. METEOR and SPICE are not offered:
they need Java and model downloads.

Exactly one prediction per reference image is required (as in pycocoevalcap). CIDEr-D takes
its document frequencies from the images scored together, so always score the whole set.

[b]VQA[/b] (--task vqa): the official VQA accuracy (leave-one-out over the 10 human answers,
with the official answer normalisation), overall, per answer type and per question type.

[b]Retrieval[/b] (--task retrieval): R@1/5/10 and median rank in both directions from a
ranking file; several captions per image are grouped correctly.

File formats are detected automatically: COCO results [{image_id, caption}], COCO
annotations, a plain mapping {id: caption} / {id: [refs]}, JSONL, Karpathy split JSON.
"""

EPILOG = """[b]Examples[/b]

  mmcli score examples/captions_preds.json examples/captions_refs.json

  mmcli score preds.json refs.json --metrics bleu,cider_d --json

  mmcli score preds.ptb.json refs.ptb.json --tokenize none --per-image scores.json

  mmcli score preds.json dataset_coco.json --split test --metrics all

  mmcli score examples/vqa_preds.json examples/vqa_annotations.json --task vqa

  mmcli score examples/retrieval_ranking.json examples/retrieval_gt.json --task retrieval
"""


class Format(str, Enum):
    auto = "auto"
    coco_results = "coco-results"
    coco = "coco"
    mapping = "mapping"
    jsonl = "jsonl"
    karpathy = "karpathy"


class Tokenize(str, Enum):
    ptb = "ptb"
    none = "none"


class VQANorm(str, Enum):
    official = "official"
    always = "always"


def score(
    preds: Annotated[Path, typer.Argument(help="Predictions: captions, VQA answers or a retrieval ranking.", show_default=False)],
    refs: Annotated[Path, typer.Argument(help="References: captions, VQA annotations or retrieval ground truth.", show_default=False)],
    task: Annotated[Task, typer.Option("--task", "-t", help="What is scored.")] = Task.caption,
    metrics: Annotated[
        Optional[str],
        typer.Option(
            "--metrics",
            "-m",
            help="Caption metrics, comma-separated: bleu, rouge_l, cider_d (the default, 'coco'), "
            "sacrebleu, rouge_score, or 'all'.",
            show_default=False,
        ),
    ] = None,
    tokenize: Annotated[
        Tokenize,
        typer.Option(help="Caption tokenizer: 'ptb' (as pycocoevalcap) or 'none' for pre-tokenized text."),
    ] = Tokenize.ptb,
    fmt: Annotated[Format, typer.Option("--format", "-f", help="Force the format of PREDS.")] = Format.auto,
    refs_format: Annotated[Format, typer.Option(help="Force the format of REFS.")] = Format.auto,
    split: Annotated[
        Optional[str], typer.Option(help="Split to score when REFS is Karpathy split JSON.  \\[default: test]", show_default=False)
    ] = None,
    restrict_to_preds: Annotated[
        bool,
        typer.Option(help="Score only the images that have a prediction (CIDEr-D then differs from the full set)."),
    ] = False,
    vqa_normalize: Annotated[
        VQANorm,
        typer.Option(
            help="VQA answer normalisation: 'official' (VQA code: skipped when all 10 answers agree) "
            "or 'always' (EvalAI / MMF: both sides, always)."
        ),
    ] = VQANorm.official,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")] = False,
    per_image: Annotated[
        Optional[Path],
        typer.Option(
            "--per-image",
            help="Also write per-image scores (per question for VQA, per query rank for retrieval) to this JSON file.",
            show_default=False,
            dir_okay=False,
        ),
    ] = None,
) -> None:
    from ..metrics.report import ScoreOptions, score_files

    chosen = _parse_metrics(metrics)
    opts = ScoreOptions(
        task=task.value,
        preds_format=fmt.value,
        refs_format=refs_format.value,
        split=split,
        metrics=chosen,
        tokenize=tokenize.value,
        restrict_to_preds=restrict_to_preds,
        vqa_normalize=vqa_normalize.value,
    )
    report = score_files(preds, refs, opts)
    for w in report.warnings:
        typer.echo(f"mmcli: warning: {w}", err=True)
    if per_image is not None:
        from ..fileio import atomic_write_text

        atomic_write_text(per_image, json.dumps(report.per_item(), indent=1) + "\n")
    if as_json:
        out = report.to_dict()
        if per_image is not None:
            out["per_image_file"] = str(per_image)
        typer.echo(json.dumps(out, indent=2))
    else:
        _print_table(report)


def _parse_metrics(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    from ..metrics.captions import ALL_METRICS, COCO_METRICS

    names: list[str] = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        expanded = {"all": ALL_METRICS, "coco": COCO_METRICS}.get(part.lower(), (part.lower(),))
        names += [n for n in expanded if n not in names]
    if not names:
        raise typer.BadParameter("give at least one metric", param_hint="'--metrics'")
    return tuple(names)


def _print_table(report) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    counts = ", ".join(f"{v} {k}" for k, v in report.counts.items())
    console.print(f"[b]mmcli score[/b]: {report.task} ({counts})")
    table = Table()
    table.add_column("metric")
    table.add_column("score", justify="right")
    for name, value in report.scores.items():
        table.add_row(name, "-" if value is None else _fmt(value))
    for group, values in report.groups.items():
        table.add_section()
        for name, value in values.items():
            table.add_row(f"[dim]{group}:[/dim] {name}", _fmt(value))
    console.print(table)
    console.print(f"[dim]signature: {report.signature}[/dim]", soft_wrap=True)


def _fmt(value: float) -> str:
    return f"{value:.2f}" if abs(value) >= 10 else f"{value:.4f}"
