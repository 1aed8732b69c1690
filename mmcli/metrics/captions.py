"""Caption scoring: COCO-compatible BLEU, ROUGE-L, CIDEr-D and the library metrics.

``score_captions`` is the one entry point, used by ``mmcli score`` and by the
training loop's validation. It checks that predictions and references line up
(exactly one prediction per reference image, as pycocoevalcap requires),
tokenizes both sides once, counts n-grams once, and runs the chosen metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import __version__
from ..errors import UserError, examples
from .jsonio import show_id

COCO_METRICS = ("bleu", "rouge_l", "cider_d")
LIBRARY_METRICS = ("sacrebleu", "rouge_score")
ALL_METRICS = COCO_METRICS + LIBRARY_METRICS
DEFAULT_METRICS = COCO_METRICS
TOKENIZERS = ("ptb", "none")


@dataclass
class CaptionScores:
    """Corpus scores, per-image scores and the signature that reproduces them.

    ``scores`` maps a metric name (``bleu_1`` .. ``bleu_4``, ``rouge_l``,
    ``cider_d``: 0-1 like pycocoevalcap; ``sacrebleu``: 0-100 like sacrebleu;
    ``rouge_score_l``: 0-1) to its value. ``per_image[name][k]`` is the score
    of ``image_ids[k]`` (corpus-only metrics such as sacreBLEU have none).
    """

    scores: dict[str, float]
    image_ids: list[str]
    per_image: dict[str, list[float]]
    signature: str
    n_references: int
    warnings: list[str] = field(default_factory=list)


def align(
    preds: dict[str, list[str]],
    refs: dict[str, list[str]],
    preds_name: str = "predictions",
    refs_name: str = "references",
    restrict_to_preds: bool = False,
) -> tuple[list[str], list[str], list[list[str]], list[str]]:
    """Pair one prediction with the references of every image, in the references' order.

    Returns ``(image_ids, candidates, references, warnings)``; raises UserError
    for every mismatch that pycocoevalcap would reject (or silently get wrong).
    """
    if not refs:
        raise UserError(f"{refs_name}: contains no images")
    extra = [i for i in preds if i not in refs]
    if extra:
        raise UserError(
            f"{preds_name}: {len(extra)} prediction(s) for images not in {refs_name} (e.g. {examples(extra)})"
        )
    multi = [i for i, c in preds.items() if len(c) > 1]
    if multi:
        raise UserError(
            f"{preds_name}: {len(multi)} image(s) have more than one prediction "
            f"(e.g. image {show_id(multi[0])} has {len(preds[multi[0]])}); give exactly one caption per image"
        )
    ids = list(refs)
    missing = [i for i in ids if not preds.get(i)]
    if missing and not restrict_to_preds:
        raise UserError(
            f"{preds_name}: {len(missing)} of {len(ids)} images in {refs_name} have no prediction "
            f"(e.g. {examples(missing)}); pass --restrict-to-preds to score only the predicted images "
            "(CIDEr-D then differs from the full-set value)"
        )
    if missing:
        have = set(preds)
        ids = [i for i in ids if i in have]
    no_refs = [i for i in ids if not refs[i]]
    if no_refs:
        raise UserError(f"{refs_name}: {len(no_refs)} image(s) have no reference captions (e.g. {examples(no_refs)})")
    cands = [preds[i][0] for i in ids]
    references = [refs[i] for i in ids]
    warnings = []
    if missing:
        warnings.append(f"scoring only the {len(ids)} predicted images of {len(refs)} in {refs_name}")
    n_empty = sum(1 for c in cands if not c.strip())
    if n_empty:
        warnings.append(f"{preds_name}: {n_empty} empty prediction(s), scored as empty captions (0 on every metric)")
    n_empty_refs = sum(1 for rs in references for r in rs if not r.strip())
    if n_empty_refs:
        warnings.append(f"{refs_name}: {n_empty_refs} empty reference caption(s), kept as zero-length references")
    return ids, cands, references, warnings


def score_captions(
    preds: dict[str, list[str]] | dict[str, str],
    refs: dict[str, list[str]],
    metrics: tuple[str, ...] = DEFAULT_METRICS,
    tokenize: str = "ptb",
    restrict_to_preds: bool = False,
    names: tuple[str, str] = ("predictions", "references"),
) -> CaptionScores:
    """Score one caption per image against its references.

    ``preds`` maps image id to a caption (or a one-element list); ``refs`` maps
    image id to its reference captions. ``tokenize="ptb"`` applies mmcli's
    PTB-compatible tokenizer to both sides (as pycocoevalcap does);
    ``"none"`` scores already tokenized text as given.
    """
    unknown = [m for m in metrics if m not in ALL_METRICS]
    if unknown or not metrics:
        raise UserError(f"unknown metric {', '.join(unknown) or '(none)'}; choose from {', '.join(ALL_METRICS)}")
    if tokenize not in TOKENIZERS:
        raise UserError(f"unknown tokenizer {tokenize!r}; choose from {', '.join(TOKENIZERS)}")
    preds = {str(k): ([v] if isinstance(v, str) else list(v)) for k, v in preds.items()}
    ids, cands, references, warnings = align(preds, refs, *names, restrict_to_preds=restrict_to_preds)
    scores: dict[str, float] = {}
    per_image: dict[str, list[float]] = {}
    sig = [f"tok:{_tokenizer_signature() if tokenize == 'ptb' else 'none'}"]

    if any(m in COCO_METRICS for m in metrics):
        tok_c, tok_r = _tokenize(cands, references, tokenize)
        from .ngrams import build

        cc = build(tok_c, tok_r, n=4)  # token ids and n-gram counts, shared by the three
        if "bleu" in metrics:
            from .bleu import bleu

            corpus, per = bleu(cc)
            for k in range(4):
                scores[f"bleu_{k + 1}"] = corpus[k]
                per_image[f"bleu_{k + 1}"] = per[k].tolist()
            sig.append("bleu:coco,ref=closest")
        if "rouge_l" in metrics:
            from .rouge import rouge_l

            scores["rouge_l"], per_image["rouge_l"] = rouge_l(tok_c, tok_r, cc)
            sig.append("rouge-l:lcs,beta=1.2")
        if "cider_d" in metrics:
            from .cider import cider_d

            scores["cider_d"], per = cider_d(cc)
            per_image["cider_d"] = per.tolist()
            sig.append(f"cider-d:sigma=6,df=refs,n_images={len(ids)}")
    if "sacrebleu" in metrics:
        scores["sacrebleu"], s = _sacrebleu(cands, references)
        sig.append(f"sacrebleu:{s}")
    if "rouge_score" in metrics:
        scores["rouge_score_l"], per_image["rouge_score_l"] = _rouge_score(cands, references)
        sig.append("rouge-score:rougeL,f1,no-stem,max-over-refs")
    sig.append(f"mmcli:{__version__}")
    return CaptionScores(
        scores=scores,
        image_ids=ids,
        per_image=per_image,
        signature="|".join(sig),
        n_references=sum(len(r) for r in references),
        warnings=warnings,
    )


def _tokenize(cands: list[str], refs: list[list[str]], how: str) -> tuple[list[str], list[list[str]]]:
    if how == "none":
        return cands, refs
    from .tokenize import ptb_tokenize_batch

    # two batches, as pycocoevalcap runs the Java tokenizer once per side: the
    # lexer looks across caption boundaries, so the split point matters
    out_c = ptb_tokenize_batch(cands)
    flat = ptb_tokenize_batch([r for rs in refs for r in rs])
    pos, out_r = 0, []
    for rs in refs:
        out_r.append(flat[pos : pos + len(rs)])
        pos += len(rs)
    return out_c, out_r


def _tokenizer_signature() -> str:
    from .tokenize import TOKENIZER_SIGNATURE

    return TOKENIZER_SIGNATURE


def _sacrebleu(cands: list[str], refs: list[list[str]]) -> tuple[float, str]:
    """sacreBLEU corpus BLEU (its defaults: 13a tokenizer, case-sensitive) on the raw text."""
    from sacrebleu.metrics import BLEU

    width = max(len(r) for r in refs)
    # sacrebleu takes reference streams; images with fewer references pad with None
    streams = [[rs[j] if j < len(rs) else None for rs in refs] for j in range(width)]
    metric = BLEU()
    result = metric.corpus_score(cands, streams)
    return float(result.score), str(metric.get_signature())


def _rouge_score(cands: list[str], refs: list[list[str]]) -> tuple[float, list[float]]:
    """rouge-score's ROUGE-L F1 (best reference per image), mean over images, raw text."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    per = [scorer.score_multi(rs, c)["rougeL"].fmeasure for c, rs in zip(cands, refs)]
    return sum(per) / len(per), per
