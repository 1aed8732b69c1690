"""Devices and precision, and running one training over several processes with ``torchrun``.

``torchrun --nproc_per_node N -m mmcli finetune ...`` starts N processes (ranks) that
train one model together, data-parallel (DDP):

* :class:`Distributed` joins the process group (gloo on CPU, NCCL on CUDA, each
  process on ``cuda:LOCAL_RANK``); inside it the ranks other than 0 print nothing, and
  only rank 0 writes the run directory (errors are printed by every rank that has one).
* ``--batch-size`` stays the global batch: rank ``r`` takes the ``r``-th of N equal
  slices of every batch of the one-process data order, so the data seen per step, and
  resuming, are those of one process, and the ranks' rows gathered in rank order are
  the one-process batch in its order (the same hard negatives are drawn).
* DDP averages the ranks' gradients, so each rank's loss must be its part of the
  global batch's loss: a mean over this rank's tokens (questions, pairs) is weighted
  by :func:`share`, and contrastive losses see every rank's items through
  :func:`gather`, whose backward sends each rank the gradient of its own rows.
* The other ranks wait while rank 0 validates on the whole val split, then take its
  decisions (best, patience); training losses and throughput are reduced over ranks.

Outside torchrun (no WORLD_SIZE, or 1) every helper is the identity or does nothing.
All ranks share one random stream (same seed, same draws), which is what lets them
sample the same hard negatives from the global batch, and makes rank 0's saved RNG
state right for all on resume (the price: dropout masks repeat across ranks; the
presets use no dropout).

Where the ranks' curve leaves the one-process curve: BatchNorm on the CPU (PyTorch's
SyncBatchNorm is CUDA only, so each rank normalises over its slice), and a batch in
which one rank's whole slice is unreadable (every rank skips that batch, where one
process trains on the readable rest).
"""

from __future__ import annotations

import atexit
import contextlib
import os
from datetime import timedelta

import torch
import torch.distributed as dist

from .errors import UserError

# how long a rank waits at a collective: the others wait this long for rank 0's validation
TIMEOUT = timedelta(minutes=60)


# ============================================================================ device and precision


def resolve_device(name: str) -> torch.device:
    """auto | cpu | cuda | cuda:N -> a torch.device that exists."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise UserError(f"unsupported device {name!r}; use auto, cpu, cuda or cuda:N")
    return device


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bf16 matrices in hardware: a CUDA GPU with bf16 support, or a CPU
    with AVX-512 BF16 or AMX tiles. Elsewhere (AVX2, plain AVX-512) bf16 is emulated and many times
    slower than fp32 (measured: 7-25x on an AVX2 machine); with it, a training step about 2x faster
    (benchmarks/profile_caption_step.py, benchmarks/peer_hf.py)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    try:
        return any(check() for check in checks if check is not None)
    except RuntimeError:  # (a torch build without the CPU feature queries)
        return False


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The compute dtype (None: plain fp32). auto: bf16 where the device has it natively
    (:func:`native_bf16`), else fp32; fp16 is for CUDA only (its gradient scaler)."""
    if precision == "auto":
        return torch.bfloat16 if native_bf16(device) else None
    if precision == "fp16" and device.type != "cuda":
        raise UserError("--precision fp16 needs a CUDA device (it uses a gradient scaler); use bf16 on CPU")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def inference_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The weights' dtype for inference. auto: bf16 on a CUDA GPU that has it, fp32 elsewhere, CPUs with
    native bf16 included: bf16 weights generate about 1.4x faster there but change a caption where two
    words are near a tie and make a batch's results depend on its other images (fp32 gives each image
    the caption it gets alone); --precision bf16 asks for them."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" and native_bf16(device) else torch.float32
    return resolve_precision(precision, device) or torch.float32


# ============================================================================ the process group


def world() -> int:
    """The number of processes training together (1 outside torchrun)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if world() > 1 else 0


def is_main() -> bool:
    """Rank 0: the process that writes files and prints."""
    return rank() == 0


class Distributed:
    """``with Distributed(device_name) as device``: under torchrun (WORLD_SIZE > 1), this rank's
    device in the process group; otherwise just the resolved device.

    The group is joined on first use and left at exit (a process group cannot be joined
    twice from the same rendezvous, and a script may train several times); one the caller
    initialised is used as it is. Ranks other than 0 print nothing inside the block (their
    stdout and stderr go to /dev/null). Leaving the block normally waits for every rank
    (rank 0 may still be testing best/).
    """

    def __init__(self, device: str):
        self.name = device
        self.quiet = contextlib.ExitStack()

    def __enter__(self) -> torch.device:
        joined = dist.is_available() and dist.is_initialized()
        if world() == 1 and (joined or int(os.environ.get("WORLD_SIZE", "1")) <= 1):
            return resolve_device(self.name)
        local = int(os.environ.get("LOCAL_RANK", dist.get_rank() if joined else 0))
        device = _rank_device(self.name, local)
        if not joined:
            cuda = device.type == "cuda"  # (device_id binds NCCL to this rank's GPU)
            dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT, device_id=device if cuda else None)
            atexit.register(dist.destroy_process_group)
        if rank() > 0:
            devnull = self.quiet.enter_context(open(os.devnull, "w"))
            self.quiet.enter_context(contextlib.redirect_stdout(devnull))
            self.quiet.enter_context(contextlib.redirect_stderr(devnull))
        return device

    def __exit__(self, exc_type, *exc) -> None:
        try:
            if exc_type is None:
                barrier()
        finally:
            self.quiet.close()


def _rank_device(name: str, local_rank: int) -> torch.device:
    """This rank's device: the CPU, or under CUDA the GPU of its LOCAL_RANK."""
    device = resolve_device(name)
    if device.type == "cpu":
        return device
    if device.index is not None:
        raise UserError(f"--device {name}: under torchrun each process uses the GPU of its LOCAL_RANK; "
                        "use --device cuda (choose the GPUs with CUDA_VISIBLE_DEVICES)")
    if local_rank >= torch.cuda.device_count():
        raise UserError(f"torchrun started more processes on this machine than it has CUDA devices "
                        f"({torch.cuda.device_count()}): use --nproc_per_node {torch.cuda.device_count()} or fewer")
    device = torch.device("cuda", local_rank)
    torch.cuda.set_device(device)
    return device


# ============================================================================ collectives


def _comm_device() -> torch.device:
    """Where small tensors for a collective must live: NCCL wants the GPU, gloo the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def barrier() -> None:
    if world() > 1:
        dist.barrier()


def _reduce(values: list[float], op: str) -> list[float]:
    if world() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t, op=getattr(dist.ReduceOp, op))
    return t.tolist()


def sum_over_ranks(values: list[float]) -> list[float]:
    """Each value summed over the ranks (loss sums, sample counts for logging)."""
    return _reduce(values, "SUM")


def all_ranks(flag: bool) -> bool:
    """True when ``flag`` is true on every rank (a decision all ranks then take together)."""
    return bool(_reduce([float(flag)], "MIN")[0])


def max_over_ranks(value: int) -> int:
    return int(_reduce([float(value)], "MAX")[0])


def broadcast_object(obj):
    """Rank 0's ``obj`` (picklable) on every rank."""
    if world() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=_comm_device())
    return box[0]


def gather_objects(items: list) -> list:
    """Every rank's list concatenated in rank order (e.g. the image ids of the global batch)."""
    if world() == 1:
        return items
    out = [None] * world()
    dist.all_gather_object(out, items)
    return [x for part in out for x in part]


def share(n) -> torch.Tensor | float:
    """``n * world / (n summed over ranks)``: this rank's share of a count, relative to an even split.

    A loss that is a mean over this rank's ``n`` tokens (or questions, or pairs), times its
    share, becomes this rank's part of the mean over the global batch: DDP's mean of the
    ranks' gradients is then the gradient of the one-process loss, and the ranks' mean of
    the losses is the one-process loss. 1.0 outside torchrun.
    """
    if world() == 1:
        return 1.0
    mine = torch.as_tensor(n, device=_comm_device()).to(torch.float64).reshape(1)
    total = mine.clone()
    dist.all_reduce(total)
    return (mine * world() / total.clamp(min=1)).float().squeeze(0)


def gather(x: torch.Tensor, pad_value=0) -> tuple[torch.Tensor, slice]:
    """Every rank's ``x`` concatenated along dim 0 in rank order, and this rank's rows in it.

    The ranks may hold different numbers of rows (skipped images) and different sizes past
    dim 0 (text lengths): those are padded with ``pad_value`` to the largest. When ``x``
    needs a gradient, the result carries it: each rank's loss may use any rank's rows,
    and the backward sums over ranks the gradient of this rank's rows (so, with DDP's
    mean over ranks, a loss computed on every rank from the gathered rows counts once).
    Outside torchrun: ``(x, all rows)``.
    """
    n = world()
    if n == 1:
        return x, slice(0, x.shape[0])
    comm = _comm_device()
    shapes = [torch.zeros(x.dim(), dtype=torch.int64, device=comm) for _ in range(n)]
    dist.all_gather(shapes, torch.tensor(x.shape, dtype=torch.int64, device=comm))
    shapes = [s.tolist() for s in shapes]
    size = [max(s[d] for s in shapes) for d in range(x.dim())]
    padded = torch.full(size, pad_value, dtype=x.dtype, device=comm)
    padded[tuple(slice(0, k) for k in x.shape)] = x.detach()
    parts = [torch.empty_like(padded) for _ in range(n)]
    dist.all_gather(parts, padded)
    out = torch.cat([p[: s[0]] for p, s in zip(parts, shapes)]).to(x.device)
    start = sum(s[0] for s in shapes[: rank()])
    rows = slice(start, start + x.shape[0])
    if x.requires_grad:
        out = _WithGrad.apply(x, out, rows)
    return out, rows


class _WithGrad(torch.autograd.Function):
    """``out`` (the gathered rows, this rank's at ``rows``) as a function of this rank's ``x``."""

    @staticmethod
    def forward(ctx, x, out, rows):
        ctx.rows, ctx.shape = rows, x.shape
        return out.clone()  # (a new tensor: returning an input as it is would make it a view)

    @staticmethod
    def backward(ctx, grad):
        # every rank's gradient of every row, summed, then this rank's rows
        summed = grad.to(_comm_device(), memory_format=torch.contiguous_format, copy=True)
        dist.all_reduce(summed)
        mine = summed[(ctx.rows, *(slice(0, k) for k in ctx.shape[1:]))]
        return mine.to(grad.device), None, None
