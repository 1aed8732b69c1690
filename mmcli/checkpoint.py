"""A checkpoint is one self-sufficient directory (house rule 3).

Layout::

    run/
      config.json        the caller's config dict + format, format_version, mmcli_version,
                         created (UTC, ISO 8601) and files: {name: size in bytes} of the
                         other files, so a missing one is named as missing
      model.safetensors  the model's state dict; a tied weight is stored once
      tokenizer.model    Tokenizer.save (if a tokenizer was given)
      answers.json       AnswerVocab.save (if an answer vocabulary was given)
      train_state.pt     optimizer / scheduler / RNG states (if given), for resuming

Safety: the weights are read only by the safetensors parser; ``train_state.pt``
is the one pickle, read only with ``torch.load(weights_only=True)``, which
refuses anything but tensors and plain Python values. Nothing else is unpickled.

Tied weights: ``safetensors.torch.save_model`` drops every name that shares
storage with another (an LM head tied to the token embedding) and records
``dropped name -> kept name`` in the file's metadata; loading puts the kept
tensor back under the dropped name, and ``load_state_dict`` copies values into
the model's existing parameters, so a tied model stays tied.

Atomic replacement: :func:`save_checkpoint` writes a complete new directory
``.NAME.tmp-XXXX`` beside ``NAME`` (files fsynced, ``config.json`` last), then

    1. renames an existing ``NAME`` to ``.NAME.old``
    2. renames ``.NAME.tmp-XXXX`` to ``NAME`` (and fsyncs the parent)
    3. deletes ``.NAME.old``

A crash before step 2 leaves the previous checkpoint at ``NAME`` or, between
steps 1 and 2 only, at ``.NAME.old`` (a save failing there with an exception
renames it back; a killed one cannot): :func:`load_checkpoint` falls back to
``.NAME.old`` when ``NAME`` is missing, and the next save cleans up. A save that
fails with an exception removes its temporary directory; one killed outright
can leave a hidden ``.NAME.tmp-XXXX``, which the next successful save of
``NAME`` deletes. Saving the same path from two processes at once is not
supported (only rank 0 saves).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from . import __version__
from .errors import UserError, examples, first_line

FORMAT = "mmcli-checkpoint"
FORMAT_VERSION = 1
CONFIG, WEIGHTS, TOKENIZER, ANSWERS, TRAIN_STATE = (
    "config.json", "model.safetensors", "tokenizer.model", "answers.json", "train_state.pt")
KNOWN_FILES = (CONFIG, WEIGHTS, TOKENIZER, ANSWERS, TRAIN_STATE)
_RESERVED = ("format", "format_version", "mmcli_version", "created", "files")


# ============================================================================ saving


def save_checkpoint(directory: str | os.PathLike, *, config: dict, model: nn.Module, tokenizer=None,
                    answer_vocab=None, train_state: dict | None = None) -> Path:
    """Write the checkpoint directory atomically (see the module docstring); returns its path.

    ``config`` must be JSON-serialisable; the keys format, format_version,
    mmcli_version, created and files are (re)written here, so a config read
    back from a checkpoint can be passed in again. ``train_state`` may hold
    tensors, dicts, lists, tuples and plain values only (what
    ``torch.load(weights_only=True)`` accepts; see :func:`rng_state`).
    ``model`` may be wrapped in DistributedDataParallel or ``torch.compile``.
    """
    target = Path(directory)
    if target.name in ("", ".", ".."):  # "." has no name to rename: use the real one
        target = target.resolve()
    config = {k: v for k, v in config.items() if k not in _RESERVED}
    json.dumps(config)  # a TypeError for a non-JSON value, before touching the disk
    if train_state is not None:
        _check_weights_only(train_state, "train_state")
    _check_replaceable(target)
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=parent))
    except OSError as e:
        raise UserError(f"{target}: cannot create the checkpoint directory ({e.strerror or e})") from None
    try:
        sizes = _write_files(tmp, _unwrap(model), tokenizer, answer_vocab, train_state)
        meta = {**config, "format": FORMAT, "format_version": FORMAT_VERSION, "mmcli_version": __version__,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "files": sizes}
        _write_synced(tmp / CONFIG, (json.dumps(meta, indent=2) + "\n").encode("utf-8"))
        _make_readable(tmp)
        _fsync_dir(tmp)
        _swap_in(tmp, target)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        aside = _aside(target)
        if aside.is_dir() and not target.exists():  # failed between the two renames: put it back
            try:
                os.rename(aside, target)
            except OSError:
                pass  # load_checkpoint still finds it at .NAME.old
        if isinstance(e, OSError):
            kept = ("; the previous checkpoint there is kept intact" if _is_checkpoint_dir(target)
                    or _is_checkpoint_dir(aside) else "")
            raise UserError(f"{target}: cannot write the checkpoint ({e.strerror or e}){kept}") from None
        raise
    _clean_leftovers(target)
    return target


def _write_files(tmp: Path, model: nn.Module, tokenizer, answer_vocab, train_state) -> dict[str, int]:
    from safetensors.torch import save_model

    save_model(model, str(tmp / WEIGHTS), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save(tmp / TOKENIZER)
    if answer_vocab is not None:
        answer_vocab.save(tmp / ANSWERS)
    if train_state is not None:
        torch.save(train_state, tmp / TRAIN_STATE)
    sizes = {}
    for p in sorted(tmp.iterdir()):
        _fsync_file(p)
        sizes[p.name] = p.stat().st_size
    return sizes


def _swap_in(tmp: Path, target: Path) -> None:
    aside = _aside(target)
    if target.exists():
        if aside.exists():  # a stale copy from an earlier interrupted save; target is complete
            shutil.rmtree(aside)
        os.rename(target, aside)
    os.rename(tmp, target)
    _fsync_dir(target.parent)
    shutil.rmtree(aside, ignore_errors=True)


def _check_replaceable(target: Path) -> None:
    """Refuse to replace anything that is not an earlier checkpoint or an empty folder."""
    if not target.exists():
        return
    if not target.is_dir():
        raise UserError(f"{target}: exists and is not a directory; cannot write a checkpoint there")
    entries = list(target.iterdir())
    if entries and not _is_checkpoint_dir(target):
        raise UserError(f"{target}: exists and is not an mmcli checkpoint (it holds "
                        f"{examples(sorted(p.name for p in entries))}); refusing to replace it")


def _is_checkpoint_dir(path: Path) -> bool:
    try:
        data = json.loads((path / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT


def _clean_leftovers(target: Path) -> None:
    """Temporary directories of this checkpoint left by killed saves."""
    prefix = f".{target.name}.tmp-"
    for p in target.parent.iterdir():
        if p.name.startswith(prefix) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


def _aside(target: Path) -> Path:
    return target.parent / f".{target.name}.old"


def _unwrap(model: nn.Module) -> nn.Module:
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # Windows cannot open directories; rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _make_readable(tmp: Path) -> None:
    """mkdtemp/mkstemp create private (0700/0600) entries; give them the usual umask permissions."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    for p in tmp.iterdir():
        os.chmod(p, 0o666 & ~umask)


_SAFE_TYPES = (str, bytes, int, float, complex, bool, type(None), torch.Tensor, torch.Size, torch.dtype,
               torch.device)


def _check_weights_only(obj: Any, where: str) -> None:
    """Raise TypeError (a caller bug) for a value ``torch.load(weights_only=True)`` would refuse."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_weights_only(k, f"{where} key")
            _check_weights_only(v, f"{where}[{k!r}]")
    elif isinstance(obj, list | tuple | set | frozenset):
        if isinstance(obj, tuple) and type(obj) is not tuple:
            raise TypeError(f"{where}: {type(obj).__name__} (a named tuple) cannot be loaded with "
                            "torch.load(weights_only=True); use a dict or tuple")
        for i, v in enumerate(obj):
            _check_weights_only(v, f"{where}[{i}]")
    elif not isinstance(obj, _SAFE_TYPES):
        raise TypeError(f"{where}: {type(obj).__module__}.{type(obj).__name__} cannot be loaded with "
                        "torch.load(weights_only=True); store tensors and plain values (see rng_state())")


# ============================================================================ loading


@dataclass
class Checkpoint:
    """A loaded checkpoint directory. ``train_state`` is read on first access."""

    path: Path  # where it was read from (``.NAME.old`` after an interrupted save)
    config: dict
    state_dict: dict[str, torch.Tensor]
    tokenizer: Any = None  # mmcli.tokenizer.Tokenizer or None
    answer_vocab: Any = None  # mmcli.tokenizer.AnswerVocab or None
    map_location: Any = "cpu"
    recovered: bool = False  # True when read from ``.NAME.old``
    tied: dict[str, str] = field(default_factory=dict)  # dropped name -> stored name

    @property
    def has_train_state(self) -> bool:
        return (self.path / TRAIN_STATE).is_file()

    @cached_property
    def train_state(self) -> dict | None:
        """``train_state.pt`` through ``torch.load(weights_only=True)``; None if the checkpoint has none."""
        p = self.path / TRAIN_STATE
        if not p.is_file():
            if TRAIN_STATE in self.config.get("files", {}):
                raise UserError(f"{p}: missing (config.json lists it); the checkpoint is incomplete")
            return None
        return safe_torch_load(p, self.map_location, what="training state")

    def load_into(self, model: nn.Module, strict: bool = True) -> LoadResult:
        return load_weights(model, self, strict=strict)


class LoadResult(NamedTuple):
    missing: list[str]  # model keys the checkpoint did not have
    unexpected: list[str]  # checkpoint keys the model does not have


def load_checkpoint(directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read and validate a checkpoint directory; every problem is one UserError line naming the file."""
    path, recovered = _find(Path(directory))
    config = _read_config(path)
    files = config.get("files") or {}
    state_dict, tied = _read_weights(path / WEIGHTS, map_location)
    tokenizer = answer_vocab = None
    if TOKENIZER in files or (path / TOKENIZER).exists():
        from .tokenizer import Tokenizer

        tokenizer = Tokenizer.load(path / TOKENIZER)  # its own UserErrors name the file
    if ANSWERS in files or (path / ANSWERS).exists():
        from .tokenizer import AnswerVocab

        answer_vocab = AnswerVocab.load(path / ANSWERS)
    return Checkpoint(path=path, config=config, state_dict=state_dict, tokenizer=tokenizer,
                      answer_vocab=answer_vocab, map_location=map_location, recovered=recovered, tied=tied)


def read_config(directory: str | os.PathLike) -> dict:
    """The validated ``config.json`` of a checkpoint directory, without reading its weights."""
    path, _ = _find(Path(directory))
    return _read_config(path)


def _find(path: Path) -> tuple[Path, bool]:
    if path.is_dir():
        return path, False
    if path.exists():
        raise UserError(f"{path}: is a file; expected a checkpoint directory (the folder holding {CONFIG})")
    aside = _aside(path)
    if (aside / CONFIG).is_file():  # a save was interrupted between its two renames
        return aside, True
    raise UserError(f"{path}: checkpoint directory not found")


def _read_config(path: Path) -> dict:
    p = path / CONFIG
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: not an mmcli checkpoint (no {CONFIG} in it)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{p}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    try:
        config = json.loads(text)
    except ValueError as e:
        raise UserError(f"{p}: corrupt JSON ({e})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        got = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise UserError(f"{p}: not an mmcli checkpoint config (format is {got!r}, expected {FORMAT!r})")
    version = config.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise UserError(f"{p}: corrupt: format_version is {version!r}, expected a positive integer")
    if version > FORMAT_VERSION:
        raise UserError(f"{p}: checkpoint format version {version} is newer than this mmcli "
                        f"({__version__}) reads (up to {FORMAT_VERSION}); upgrade mmcli")
    if not isinstance(config.get("files", {}), dict):
        raise UserError(f"{p}: corrupt: 'files' is not an object")
    return config


def _read_weights(p: Path, map_location) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The state dict through the safetensors parser only (a pickle in disguise is just refused)."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    if not p.is_file():
        raise UserError(f"{p}: missing; the checkpoint has no weights")
    device = str(map_location) if isinstance(map_location, torch.device) else map_location
    try:
        state = load_file(p, device=device)  # validates the header and the data length
        with safe_open(p, framework="pt", device=device) as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise UserError(f"{p}: truncated or corrupt, not a valid safetensors file ({first_line(e)})") from None
    # names save_model dropped because they shared storage (tied weights)
    tied = {k: v for k, v in meta.items() if v in state and k not in state}
    for dropped, kept in tied.items():
        state[dropped] = state[kept]
    return state, tied


def load_weights(model: nn.Module, checkpoint: Checkpoint | str | os.PathLike, strict: bool = True) -> LoadResult:
    """Copy the checkpoint's weights into ``model``.

    Shapes must always agree. With ``strict`` (the default) the key sets must be
    equal too, else one UserError line lists a few missing and unexpected keys;
    without it (initialising a fine-tuning model from a pretraining run) the
    matching keys load and the rest come back in the result.
    """
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    model = _unwrap(model)
    own = model.state_dict()
    state = ckpt.state_dict
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
              for k in state if k in own and state[k].shape != own[k].shape]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    where = ckpt.path / WEIGHTS
    if shapes:
        raise UserError(f"{where}: {len(shapes)} tensors do not fit the model (checkpoint vs model): "
                        f"{examples(shapes)}")
    if strict and (missing or unexpected):
        parts = [f"{len(lst)} {what} ({examples(lst)})"
                 for lst, what in ((missing, "missing"), (unexpected, "unexpected")) if lst]
        raise UserError(f"{where}: does not match the model: {'; '.join(parts)}")
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return LoadResult(missing, unexpected)


def safe_torch_load(path: str | os.PathLike, map_location: Any = "cpu", what: str = "PyTorch file") -> Any:
    """``torch.load(weights_only=True)``, the only way mmcli reads a pickle, with one-line errors.

    weights_only refuses any global that is not a tensor rebuild or a plain
    container, so a crafted ``__reduce__`` is never called.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except Exception as e:  # an untrusted file: any parse failure is the file's fault
        detail = re.search(r"(Unsupported global: GLOBAL \S+)", str(e))
        if detail:
            raise UserError(f"{path}: refused: it contains Python objects other than tensors and plain values "
                            f"({detail[1]}), and mmcli never unpickles those") from None
        detail = re.search(r"WeightsUnpickler error: \s*(\S[^\n]*)", str(e))
        raise UserError(f"{path}: not a readable {what} ({detail[1] if detail else first_line(e)})") from None


# ============================================================================ RNG state


def rng_state() -> dict:
    """Python, NumPy, torch CPU and CUDA generator states, in a form ``weights_only`` loading accepts."""
    import numpy as np

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),  # (version, tuple of ints, None)
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        if _one_gpu_per_process():  # torchrun: this process's GPU only (the others belong to other ranks)
            state["cuda"] = [torch.cuda.get_rng_state()]
        else:
            state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned (CUDA states for as many devices as both have)."""
    import numpy as np

    random.setstate(_as_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        if _one_gpu_per_process():  # the ranks share one random stream: the first saved GPU's
            torch.cuda.set_rng_state(state["cuda"][0])
            return
        for i, s in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, i)


def _one_gpu_per_process() -> bool:
    from .device import world

    return world() > 1


def _as_tuples(obj):
    return tuple(_as_tuples(v) for v in obj) if isinstance(obj, list | tuple) else obj
