"""An embedding index of an image folder, kept up to date, and chunked top-k search over it.

The index is one safetensors file: ``embeddings`` (N, E) float32, L2-normalised, and in its
metadata the model it was made with (the SHA-256 of the checkpoint's weights) and, per row,
the image's path relative to the folder, size and modification time. ``update_index``
reuses every row whose file is unchanged, embeds only new or changed images, and drops the
rows of deleted ones; an index made by another model is rebuilt. Writes are atomic.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import UserError

CHUNK = 65536  # index rows per matrix product


@dataclass
class Index:
    paths: list[str]  # relative to the folder
    stamps: list[list[int]]  # [size, mtime_ns] per path
    embeddings: torch.Tensor  # (N, E) float32
    model: str  # the weights' SHA-256


def default_index_path(folder: Path) -> Path:
    """The index beside the folder: ``photos/`` -> ``photos.mmcli-index``."""
    folder = folder.resolve()
    return folder.parent / f"{folder.name}.mmcli-index"


def model_id(model) -> str:
    """What an index's embeddings depend on: the weights file, and the inference dtype when not fp32
    (bf16 embeddings differ from fp32 ones in their last bits: another precision rebuilds the index)."""
    h = hashlib.sha256()
    with open(Path(model.checkpoint.path) / "model.safetensors", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    dtype = getattr(model, "dtype", None)
    if dtype is not None and str(dtype) != "torch.float32":
        h.update(str(dtype).encode())
    return h.hexdigest()


def read_index(path: Path) -> Index | None:
    """The index at ``path``, or None when there is none; a damaged file is one UserError line."""
    if not path.exists():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta, emb = f.metadata() or {}, f.get_tensor("embeddings")
        files = json.loads(meta["files"])
        return Index([f[0] for f in files], [f[1:] for f in files], emb.float(), meta["model"])
    except Exception as e:  # safetensors raises several types on a damaged file
        raise UserError(f"{path}: not a readable mmcli index ({type(e).__name__}); delete it to rebuild") from None


def write_index(path: Path, index: Index) -> None:
    from safetensors.torch import save

    from .fileio import atomic_write_bytes

    files = [[p, *s] for p, s in zip(index.paths, index.stamps)]
    data = save({"embeddings": index.embeddings.contiguous()},
                metadata={"files": json.dumps(files), "model": index.model})
    atomic_write_bytes(path, data)


def folder_images(folder: Path) -> list[Path]:
    from .data.readers import IMAGE_EXTENSIONS

    if not folder.is_dir():
        raise UserError(f"{folder}: no such image folder")
    found = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not found:
        raise UserError(f"{folder}: no image files in this folder")
    return found


def update_index(model, folder: Path, path: Path, batch_size: int = 64, strict: bool = False) -> tuple[Index, dict]:
    """The folder's index, updated and saved: (index, counts of reused / embedded / removed / skipped)."""
    from .data.images import load_images_or_skip

    mid = model_id(model)
    old = read_index(path)
    if old is not None and old.model != mid:
        print(f"mmcli: {path} was made by another model; rebuilding it", file=sys.stderr)
        old = None
    known = {p: (s, k) for k, (p, s) in enumerate(zip(old.paths, old.stamps))} if old else {}
    paths, stamps, rows, todo = [], [], [], []
    for f in folder_images(folder):
        rel, st = str(f.relative_to(folder)), f.stat()
        stamp = [st.st_size, st.st_mtime_ns]
        if rel in known and known[rel][0] == stamp:
            paths.append(rel), stamps.append(stamp), rows.append(old.embeddings[known[rel][1]])
        else:
            todo.append((rel, stamp, f))
    skipped = 0
    for i in range(0, len(todo), batch_size):
        part = todo[i: i + batch_size]
        kept, pics = load_images_or_skip([f for _, _, f in part], strict)
        chunk = [part[k][:2] for k in kept]
        skipped += len(part) - len(kept)
        if pics:
            emb = model.embed_images(pics)
            for (rel, stamp), e in zip(chunk, emb):
                paths.append(rel), stamps.append(stamp), rows.append(e)
    if not rows:
        raise UserError(f"{folder}: no readable image to index")
    order = sorted(range(len(paths)), key=lambda k: paths[k])
    index = Index([paths[k] for k in order], [stamps[k] for k in order], torch.stack([rows[k] for k in order]), mid)
    counts = {"reused": len(paths) - (len(todo) - skipped), "embedded": len(todo) - skipped,
              "removed": (len(known) - sum(p in known for p in paths)) if old else 0, "skipped": skipped}
    if counts["embedded"] or counts["removed"] or old is None:
        write_index(path, index)
    return index, counts


def top_k(queries: torch.Tensor, keys: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine top-k of each query (Q, E) over keys (N, E), both L2-normalised, in chunks of
    :data:`CHUNK` keys: (scores (Q, k), indices (Q, k)), best first."""
    k = min(k, keys.shape[0])
    best_s = best_i = None
    for start in range(0, keys.shape[0], CHUNK):
        s = queries @ keys[start: start + CHUNK].T  # (Q, chunk)
        cs, ci = s.topk(min(k, s.shape[1]), dim=1)
        ci = ci + start
        if best_s is None:
            best_s, best_i = cs, ci
        else:
            both_s, both_i = torch.cat([best_s, cs], 1), torch.cat([best_i, ci], 1)
            best_s, pick = both_s.topk(k, dim=1)
            best_i = both_i.gather(1, pick)
    return best_s, best_i
