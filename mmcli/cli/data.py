"""``mmcli data``: look at a dataset, or write the synthetic one to files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ..data.spec import SPEC_HELP
from .options import MAX_SEED, allow_outside_root_option

app = typer.Typer(
    help="Look at datasets: counts, lengths, vocabulary, answers and blind baselines; write the synthetic set; "
    "list and clear mmcli's caches.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)


@app.command(
    "stats",
    help="Counts, caption and question lengths, vocabulary, answer distribution and the blind "
    "VQA baselines (majority answer, question only) of a dataset.\n\n" + SPEC_HELP,
    epilog="[b]Examples[/b]\n\n  mmcli data stats easyvqa\n\n  mmcli data stats shapes:1000\n\n"
    "  mmcli data stats flickr8k:../shared/data/flickr8k --json",
)
def stats(
    spec: Annotated[str, typer.Argument(help="Dataset spec, e.g. easyvqa, shapes, flickr8k:DIR.", show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")] = False,
    allow_outside_root: Annotated[bool, allow_outside_root_option()] = False,
) -> None:
    from ..data.spec import load_dataset
    from ..data.stats import dataset_stats

    report = dataset_stats(load_dataset(spec, allow_outside_root=allow_outside_root))
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        _print_stats(report)


@app.command(
    "shapes",
    help="Write the synthetic shapes dataset as PNG files plus captions.jsonl and questions.jsonl "
    "(mmcli's JSONL format, readable as jsonl:DIR/captions.jsonl).",
    epilog="[b]Examples[/b]\n\n  mmcli data shapes --out shapes_data\n\n  mmcli data shapes --out big --n 10000 --size 96",
)
def shapes(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write (created if missing).", show_default=False)],
    n: Annotated[int, typer.Option("--n", min=1, max=1_000_000, help="Number of images.")] = 2000,
    size: Annotated[int, typer.Option("--size", min=16, max=1024, help="Image side in pixels.")] = 64,
    seed: Annotated[int, typer.Option("--seed", min=0, max=MAX_SEED,
                                      help="Generator seed (same seed, same data).")] = 0,
) -> None:
    from ..data.shapes import write_shapes_jsonl

    path = write_shapes_jsonl(out, n_images=n, size=size, seed=seed)
    typer.echo(f"wrote {n} images and their captions and questions to {path}")


@app.command(
    "cache",
    help="List what mmcli keeps under its cache folder ($MMCLI_CACHE, else ~/.cache/mmcli): feature caches "
    "(--feature-cache: one per dataset and backbone state, so every --init or retrained backbone adds one), "
    "image caches (--image-cache) and the shapes set's images; with --remove or --unused-days, delete some. "
    "A removed cache is built again by the next run that asks for it. Folders that are not mmcli's are "
    "listed and never removed. Do not remove a cache that a running command is building or reading.",
    epilog="[b]Examples[/b]\n\n  mmcli data cache\n\n  mmcli data cache --remove 'features-*' --dry-run\n\n"
    "  mmcli data cache --unused-days 30\n\n  mmcli data cache --remove '*'",
)
def cache(
    remove: Annotated[list[str] | None, typer.Option(
        "--remove", metavar="GLOB", show_default=False,
        help="Remove the caches whose name matches this shell pattern ('features-*', '*' for all); "
        "repeatable.")] = None,
    unused_days: Annotated[float | None, typer.Option(
        "--unused-days", min=0, metavar="DAYS", show_default=False,
        help="Remove the caches no run has built or reused for DAYS days (with --remove: only those that "
        "match).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be removed; remove nothing.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")] = False,
) -> None:
    import time

    from ..data import cachedir
    from ..data.images import cache_root
    from ..errors import UserError

    root = cache_root()
    entries = cachedir.list_caches(root)
    if not remove and unused_days is None:
        if as_json:
            typer.echo(json.dumps({"root": str(root), "entries": [e.as_dict() for e in entries]}, indent=2))
        else:
            _print_caches(root, entries)
        return
    matched = cachedir.select(entries, remove or [], None)
    if remove and not matched:
        raise UserError(f"no mmcli cache in {root} matches {', '.join(remove)} (mmcli data cache lists them)")
    picked = cachedir.select(matched, [], unused_days)
    done = []
    for e in picked:
        if not dry_run:
            try:
                cachedir.remove(e)
            except OSError as err:
                raise UserError(f"{e.path}: cannot remove it ({err.strerror or err}); "
                                f"removed {len(done)} before it") from None
        done.append(e)
        if not as_json:
            typer.echo(f"{'would remove' if dry_run else 'removed'} {e.name} ({e.kind}, "
                       f"{cachedir.human_size(e.bytes)}, used {cachedir.human_age(time.time() - e.used)})")
    freed = sum(e.bytes for e in done)
    if as_json:
        typer.echo(json.dumps({"root": str(root), "dry_run": dry_run, "removed": [e.as_dict() for e in done],
                               "bytes": freed}, indent=2))
    else:
        verb = "would free" if dry_run else "freed"
        typer.echo(f"{len(done)} cache{'s' if len(done) != 1 else ''}, {verb} {cachedir.human_size(freed)}"
                   + ("" if done or unused_days is None else f" (none unused for {unused_days:g} days)"))


def _print_caches(root, entries) -> None:
    import time

    from rich import box
    from rich.console import Console
    from rich.table import Table

    from ..data.cachedir import human_age, human_size

    console = Console()
    if not entries:
        console.print(f"no caches in {root}")
        return
    # the names in full (they are what --remove matches): last, folded onto more lines when narrow
    table = Table(box=box.SIMPLE_HEAD, title=str(root), title_justify="left", pad_edge=False)
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("images", justify="right", no_wrap=True)
    table.add_column("built or used", no_wrap=True)
    table.add_column("name", overflow="fold")
    now = time.time()
    for e in entries:
        state = "not mmcli's" if e.kind == "other" else str(e.images) if e.complete else "half-built"
        table.add_row(human_size(e.bytes), state, human_age(now - e.used), e.name)
    console.print(table)
    console.print(f"{len(entries)} entries, {human_size(sum(e.bytes for e in entries))}; "
                  "remove some with --remove GLOB or --unused-days DAYS")


def _print_stats(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[b]{report['dataset']}[/b]")
    splits = report["splits"]
    table = Table("", *splits, title_justify="left")
    rows = {
        "images": lambda s: str(s["images"]),
        "captions": lambda s: str(s["captions"]),
        "questions": lambda s: str(s["questions"]),
        "words per caption (mean)": lambda s: f"{s['caption_words']['mean']:.1f}" if "caption_words" in s else "-",
        "words per question (mean)": lambda s: f"{s['question_words']['mean']:.1f}" if "question_words" in s else "-",
        "caption vocabulary": lambda s: str(s.get("caption_vocabulary", "-")),
        "distinct answers": lambda s: str(s.get("distinct_answers", "-")),
    }
    for label, cell in rows.items():
        cells = [cell(s) for s in splits.values()]
        if any(c not in ("-", "0") for c in cells):  # leave out what the dataset does not have
            table.add_row(label, *cells)
    console.print(table)
    first = next((s for s in splits.values() if s.get("top_answers")), None)
    if first:
        name = next(n for n, s in splits.items() if s is first)
        t = Table("answer", "share %", title=f"top answers ({name})", title_justify="left")
        for a, share in first["top_answers"].items():
            t.add_row(a, f"{share:.1f}")
        console.print(t)
    if "baselines" in report:
        b = report["baselines"]
        t = Table("blind baseline", f"accuracy % ({b['scored_on']})", title="baselines", title_justify="left")
        t.add_row("majority answer", f"{b['majority_answer']:.1f}")
        t.add_row("question only", f"{b['question_only']:.1f}")
        console.print(t)
    for k, v in report.get("info", {}).items():
        console.print(f"[dim]{k}: {v}[/dim]")
