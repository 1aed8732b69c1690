"""The vision-language model: an image tower, a text tower, fusion, and the task heads.

    image --VisionTower--> image tokens (B, N, D)
    text  --embedding--> unimodal text layers (self-attention only)
                             | -> pooled text embedding (ITC, late fusion)
                             v
                  multimodal layers, by ``fusion``:
                    late    pooled image and text vectors -> MLP (VQA, ITM; no generation)
                    concat  image tokens prepended to the text in one sequence
                    cross   self-attention, cross-attention to the image tokens, MLP
                             | causal        -> LM head (captioning)
                             | bidirectional -> first position -> VQA head / ITM head

The text tower and the multimodal layers run causally for captioning and
bidirectionally for understanding (VQA, ITM), with the same weights. Text is
right-padded: causal passes need no padding mask (pads come after every real
token); bidirectional passes mask padded keys.
"""

from __future__ import annotations

import math
import sys
import types
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..errors import first_line
from .transformer import Attention, Block, KVCache, Rows
from .vision import VisionTower


# text batches with at least this share of padded positions run their text layers on the real tokens
# alone (VLM.encode_text); fewer pads are not worth the gather and scatter
PACK_PADS = 0.1
# and their packed rows are rounded up to a multiple of this (transformer.Rows.of_mask)
PACK_MULTIPLE = 64


@dataclass
class DecodeState:
    """What generation carries from step to step: the KV caches (the image is in them: cross-attention
    keys and values of the image tokens, or concat's image positions)."""

    text_cache: KVCache  # the unimodal text layers
    fusion_cache: KVCache  # the multimodal layers (for concat: image positions included)
    pos: int = 0  # text positions decoded so far

    def select(self, index: torch.Tensor) -> None:
        """Keep / reorder / repeat batch rows (beam search)."""
        self.text_cache.select(index)
        self.fusion_cache.select(index)

    def expand(self, k: int) -> None:
        """Every row becomes k consecutive rows (beam search's beams); the image's cross-attention keys
        and values stay one copy per image."""
        self.text_cache.expand(k)
        self.fusion_cache.expand(k)


class VLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        D = cfg.dim
        self.vision = VisionTower(
            cfg.backbone, D, cfg.image_size, pretrained=cfg.pretrained, weights=cfg.backbone_weights, freeze=cfg.freeze_backbone,
            drop_stages=cfg.drop_stages, args=cfg.backbone_args, adapter=cfg.image_adapter,
        )
        n_img = self.vision.num_tokens
        self.image_pos = nn.Parameter(torch.zeros(1, n_img, D))  # CNN tokens carry no position of their own
        self.tok_emb = nn.Embedding(cfg.vocab_size, D)
        self.text_pos = nn.Parameter(torch.zeros(1, cfg.max_text_len, D))
        self.text_blocks = nn.ModuleList(Block(D, cfg.heads, cfg.mlp_ratio, cross=False, dropout=cfg.dropout) for _ in range(cfg.text_layers))
        self.text_norm = nn.LayerNorm(D)

        if cfg.fusion == "late":
            # pooled image and text vectors, their product: the classic feature-fusion MLP
            self.late = nn.Sequential(nn.Linear(3 * D, 2 * D), nn.GELU(), nn.Linear(2 * D, D), nn.LayerNorm(D))
        else:
            cross = cfg.fusion == "cross"
            self.fusion_blocks = nn.ModuleList(
                Block(D, cfg.heads, cfg.mlp_ratio, cross=cross, dropout=cfg.dropout) for _ in range(cfg.fusion_layers)
            )
            self.fusion_norm = nn.LayerNorm(D)
            if cfg.fusion == "concat":
                self.modality = nn.Parameter(torch.zeros(2, D))  # tells image positions from text positions

        # pooled image embedding: one learned query attending over the image tokens, or the mean
        if cfg.image_pool == "attn":
            self.pool_query = nn.Parameter(torch.zeros(1, 1, D))
            self.pool_attn = Attention(D, cfg.heads, cross=True)
        self.image_norm = nn.LayerNorm(D)

        # heads
        self.lm_head = nn.Linear(D, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # tied: one matrix reads and writes tokens
        self.image_proj = nn.Linear(D, cfg.embed_dim, bias=False)
        self.text_proj = nn.Linear(D, cfg.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's initial temperature
        self.itm_head = nn.Linear(D, 2)
        self.vqa_head = (
            nn.Sequential(nn.Linear(D, 2 * D), nn.GELU(), nn.LayerNorm(2 * D), nn.Linear(2 * D, cfg.n_answers))
            if cfg.n_answers
            else None
        )
        self._init_weights()

    def _init_weights(self) -> None:
        for name, p in self.named_parameters():
            if name.startswith("vision.backbone"):
                continue  # timm initialised it (or loaded weights)
            if p.dim() >= 2:
                nn.init.normal_(p, std=0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
        nn.init.normal_(self.text_pos, std=0.01)
        nn.init.normal_(self.image_pos, std=0.01)
        with torch.no_grad():
            self.logit_scale.fill_(math.log(1 / 0.07))
            for m in self.modules():
                if isinstance(m, nn.LayerNorm):
                    m.weight.fill_(1.0)
                    m.bias.zero_()
            if self.vision.adapter is not None:  # starts as the projection alone (an --init run's model)
                self.vision.adapter[-1].weight.zero_()

    def compile_layers(self, mode: str | None = None) -> None:
        """``torch.compile`` the image tower and every Transformer block in place (``nn.Module.compile``:
        the state dict keeps its names), for training: the compiler fuses the small element-wise work
        (norms, activations, residual adds, casts) between the matrix products. Text lengths that change
        from batch to batch compile once more as dynamic shapes. ``mode``: torch.compile's (None: its
        default; benchmarks/peer_hf.py --compile-mode tries the others)."""
        self.vision.compile(mode=mode)
        for blk in (*self.text_blocks, *getattr(self, "fusion_blocks", ())):
            blk.compile(mode=mode)
        self._layers_compiled = True  # (text then keeps its padded shape: no packed rows of every length)

    _layers_compiled = False
    # False: the text layers always run on the padded batch (the ablation of
    # benchmarks/bench_vqa_step.py --compare packing and benchmarks/ablate.py pack_text=0; the fusion
    # layers too)
    pack_text = True
    # False: the cross-attention fusion layers of texts with lengths (VQA, ITM) run on the padded batch
    # (the ablation of benchmarks/profile_caption_step.py --itm and benchmarks/ablate.py pack_fusion=0)
    pack_fusion = True
    # False: image_kv gives None, so each call projects the images' keys and values again (the ablation of
    # benchmarks/profile_caption_step.py --frozen and benchmarks/ablate.py share_image_kv=0)
    share_image_kv = True

    # ------------------------------------------------------------------ towers
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> image tokens (B, N, D)."""
        return self.vision(images) + self.image_pos

    def image_embedding(self, img: torch.Tensor) -> torch.Tensor:
        """Image tokens (B, N, D) -> one pooled vector (B, D)."""
        if self.cfg.image_pool == "attn":
            pooled = self.pool_attn.pool(self.pool_query, img)  # (B, D)
        else:
            pooled = img.mean(dim=1)
        return self.image_norm(pooled)

    def encode_text(self, ids: torch.Tensor, lengths: torch.Tensor | None, causal: bool) -> torch.Tensor:
        """Token ids (B, T) -> unimodal text features (B, T, D).

        On a CPU, with ``lengths`` and at least ``PACK_PADS`` of the positions padding, the layers run on
        the real tokens alone (:class:`Rows`: the pads' norms, projections and MLP are skipped; attention sees
        the padded layout; the packed rows are rounded up to a multiple of ``PACK_MULTIPLE`` with pads) and
        the pads' features come out as zeros or as computed, which no caller reads."""
        T = ids.shape[1]
        x = self.tok_emb(ids) + self.text_pos[:, :T]
        valid = None if lengths is None else _valid(lengths, T)  # (B, T)
        mask = None if causal or valid is None else valid[:, None, None, :]  # (B, 1, 1, T), True = may attend
        rows = self._real_rows(valid, self.text_blocks)
        if rows is not None:
            x = rows.pack(x)  # (n, D)
        for blk in self.text_blocks:
            x = blk(x, mask=mask, is_causal=causal, rows=rows)
        return x if rows is None else rows.pad(x)

    def _real_rows(self, valid: torch.Tensor | None, blocks) -> Rows | None:
        """:class:`Rows` of the real positions of ``valid`` (B, T) for ``blocks`` to run on alone (see
        :meth:`encode_text`), or None: no lengths or no blocks, not on a CPU, compiled layers, the switch
        off, or under ``PACK_PADS`` of the positions padding."""
        if (valid is not None and len(blocks) and self._can_pack(valid.device)
                and _padded_enough(int(valid.sum()), valid.numel())):
            return Rows.of_mask(valid, multiple=PACK_MULTIPLE)
        return None

    def _can_pack(self, device: torch.device) -> bool:
        """Whether layers may run on the real positions alone at all (:meth:`_real_rows`, :meth:`packs_lm`):
        packing on, a CPU, layers not compiled. Checked before any count of the positions, which would wait
        for a GPU."""
        return self.pack_text and device.type == "cpu" and not self._layers_compiled

    def text_embedding(self, txt: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Text features (B, T, D) -> pooled vector (B, D): the mean over real tokens."""
        valid = _valid(lengths, txt.shape[1]).unsqueeze(-1).to(txt.dtype)  # (B, T, 1)
        return self.text_norm((txt * valid).sum(1) / valid.sum(1).clamp(min=1))

    # ------------------------------------------------------------------ fusion
    def fuse(self, txt: torch.Tensor, img: torch.Tensor | None, lengths: torch.Tensor | None, causal: bool,
             img_index: torch.Tensor | None = None, img_kv: list | None = None) -> torch.Tensor:
        """Text features (B, T, D) fused with image tokens (B, N, D) -> (B, T, D).

        ``img_index`` (B,) int64: text row i belongs to image row ``img_index[i]`` of ``img``
        (each image once for all its captions or questions); cross-attention then projects each
        image's keys and values once. ``img_kv``: :meth:`image_kv` of the image tokens, made once
        for several calls (cross fusion; ``img`` is then unused).
        """
        if self.cfg.fusion == "late":
            raise ValueError("late fusion has no token-level fusion")
        B, T, _ = txt.shape
        if self.cfg.fusion == "cross":
            valid = None if causal or lengths is None else _valid(lengths, T)  # (B, T)
            mask = None if valid is None else valid[:, None, None, :]  # (B, 1, 1, T), True = may attend
            # (texts with lengths, as VQA's and ITM's: the layers on the real positions alone, as encode_text's)
            rows = self._real_rows(valid, self.fusion_blocks) if self.pack_fusion else None
            x = txt if rows is None else rows.pack(txt)
            for i, blk in enumerate(self.fusion_blocks):
                x = blk(x, context=img, mask=mask, is_causal=causal, context_index=img_index,
                        context_kv=None if img_kv is None else img_kv[i], rows=rows)
            return self.fusion_norm(x if rows is None else rows.pad(x))
        if img_index is not None:  # concat: the image positions are part of each row's sequence
            img = img.index_select(0, img_index)
        N = img.shape[1]
        x = torch.cat([img + self.modality[0], txt + self.modality[1]], dim=1)  # (B, N+T, D)
        mask = _concat_mask(N, T, lengths, causal, txt.device)  # (B|1, 1, N+T, N+T)
        for blk in self.fusion_blocks:
            x = blk(x, mask=mask)
        return self.fusion_norm(x[:, N:])  # the text positions

    # ------------------------------------------------------------------ tasks
    def lm_logits(self, images: torch.Tensor | None, ids: torch.Tensor,
                  img: torch.Tensor | None = None, img_index: torch.Tensor | None = None,
                  positions: torch.Tensor | None = None, img_kv: list | None = None) -> torch.Tensor:
        """Captioning: (B, T) ids -> next-token logits (B, T, V), causal. ``img``: the image tokens
        when already encoded (pretraining shares them between objectives); then ``images`` is unused.
        ``img_index``: caption row i shows image row ``img_index[i]`` (see :meth:`fuse`).
        ``positions`` (B, T) bool: only the logits of those positions, (N, V), in ``x[positions]``
        order (training asks for the real predictions: pads never reach the LM head).
        ``img_kv``: :meth:`image_kv` of ``img``, shared by several calls (see :meth:`fuse`)."""
        img = self.encode_image(images) if img is None else img
        h = self.fuse(self.encode_text(ids, None, causal=True), img, None, causal=True, img_index=img_index,
                      img_kv=img_kv)
        if positions is not None:
            h = h[positions]  # (N, D)
        return self.lm_head(h)

    def packs_lm(self, lengths: torch.Tensor, grouped: bool) -> bool:
        """Whether :meth:`lm_real_logits` pays for captions of ``lengths`` (B,) tokens: cross-attention
        fusion, :meth:`_can_pack` (a CPU, layers not compiled, packing on), and the captions either grouped
        by image or at least ``PACK_PADS`` of the predicting positions padding. Elsewhere the trainer's length
        buckets cut the pads (captions all of one length, one image each: one bucket, no index work at all)."""
        if self.cfg.fusion != "cross" or not self._can_pack(lengths.device):
            return False
        n_real = int((lengths - 1).clamp(min=0).sum())  # each caption's positions that predict a next token
        return n_real > 0 and (grouped or _padded_enough(n_real, len(lengths) * (int(lengths.max()) - 1)))

    def lm_real_logits(self, ids: torch.Tensor, real: torch.Tensor, img: torch.Tensor,
                       img_index: torch.Tensor | None = None) -> torch.Tensor:
        """Captioning on the real tokens alone: (B, T) input ids and ``real`` (B, T) bool, the positions
        whose next token is scored (right-padded: a row's first ones) -> their logits (n, V), in
        ``x[real]`` order; the same as ``lm_logits(None, ids, img=img, img_index=img_index,
        positions=real)``. Every layer runs on the packed positions (:class:`Rows`: their norms,
        projections and MLP; causal self-attention in the padded layout, where no real token sees a pad),
        and cross-attention attends by image (``img_index``: caption row i shows image row
        ``img_index[i]``; :meth:`Rows.by_context`), so that each image's keys and values serve all its
        captions without a copy per caption: a whole batch in one call, where length buckets took one
        call each and gathered the keys and values of every caption's image in each."""
        rows = Rows.of_mask(real, multiple=PACK_MULTIPLE)
        x = rows.pack(self.tok_emb(ids) + self.text_pos[:, : ids.shape[1]])  # (n, D)
        for blk in self.text_blocks:
            x = blk(x, is_causal=True, rows=rows)
        for blk in self.fusion_blocks:
            x = blk(x, context=img, is_causal=True, context_index=img_index, rows=rows)
        x = self.fusion_norm(x)
        if x.shape[0] > int(real.sum()):  # the pads that round the packed rows up
            x = x[real.flatten()[rows.index]]
        return self.lm_head(x)

    def image_kv(self, img: torch.Tensor, rows: int = 0, t: int = 0) -> list | None:
        """Each cross-attention layer's keys and values of image tokens (B, N, D), projected once for
        several :meth:`lm_logits` calls on the same images (the trainer's length buckets of a batch's
        captions: each bucket used to project every image of the batch again); None unless the fusion
        is cross-attention, and None where folding the cross-attention pays for the calls' ``rows``
        captions of up to ``t`` tokens (:meth:`Attention.fold_pays`): each call then folds it and no
        keys and values are projected at all."""
        if self.cfg.fusion != "cross" or not self.share_image_kv:
            return None
        if rows and self.fusion_blocks[0].cross_attn.fold_pays(rows, t, img.shape[0], img.shape[1], img.device.type):
            return None
        return [blk.cross_attn.context_kv(img) for blk in self.fusion_blocks]

    def understand(self, img: torch.Tensor, ids: torch.Tensor, lengths: torch.Tensor,
                   img_index: torch.Tensor | None = None) -> torch.Tensor:
        """Image tokens + question/caption -> one fused vector (B, D) for the VQA and ITM heads
        (``img_index``: text row i asks about image row ``img_index[i]``; see :meth:`fuse`).
        The text layers run once per distinct text of the batch (:meth:`distinct_texts`)."""
        distinct = self.distinct_texts(ids, lengths)
        u_ids, u_lengths, inverse = distinct if distinct is not None else (ids, lengths, None)
        txt = self.encode_text(u_ids, u_lengths, causal=False)
        if self.cfg.fusion == "late":
            i, t = self.image_embedding(img), self.text_embedding(txt, u_lengths)
            if img_index is not None:
                i = i.index_select(0, img_index)  # pooled once per image
            if inverse is not None:
                t = t.index_select(0, inverse)  # pooled once per distinct text
            return self.late(torch.cat([i, t, i * t], dim=-1))
        if inverse is not None:
            txt = txt.index_select(0, inverse)
        return self.fuse(txt, img, lengths, causal=False, img_index=img_index)[:, 0]  # the first (<cls>) position

    def distinct_texts(self, ids: torch.Tensor, lengths: torch.Tensor):
        """``(distinct ids (U, T), their lengths (U,), inverse (B,))`` when the batch repeats a text and
        the text layers give a repeated text the same output (no dropout in training), else None.

        VQA batches repeat questions (easy-VQA: about 80 distinct in a batch of 156; VQA v2's "what
        color is the ...?"): the text layers then run once per distinct question, and the gradient of
        each copy flows back to the one row through ``index_select``."""
        if not len(self.text_blocks) or (self.training and self.cfg.dropout > 0) or ids.shape[0] < 2:
            return None
        rows = torch.cat([ids, lengths.to(ids.dtype).unsqueeze(1)], dim=1)
        u, inverse = torch.unique(rows, dim=0, return_inverse=True)
        if u.shape[0] == rows.shape[0]:
            return None
        return u[:, :-1], u[:, -1].to(lengths.dtype), inverse

    def vqa_logits(self, images: torch.Tensor, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, n_answers) answer logits."""
        if self.vqa_head is None:
            raise ValueError("this model has no VQA head (n_answers = 0)")
        return self.vqa_head(self.understand(self.encode_image(images), ids, lengths))

    def itm_logits(self, img: torch.Tensor, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, 2) match / no-match logits for image tokens and texts."""
        return self.itm_head(self.understand(img, ids, lengths))

    def embed(self, img: torch.Tensor | None = None, ids=None, lengths=None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Normalised ITC embeddings of image tokens and/or texts (bidirectional text)."""
        ie = F.normalize(self.image_proj(self.image_embedding(img)), dim=-1) if img is not None else None
        te = None
        if ids is not None:
            txt = self.encode_text(ids, lengths, causal=False)
            te = F.normalize(self.text_proj(self.text_embedding(txt, lengths)), dim=-1)
        return ie, te

    # ------------------------------------------------------------------ generation (generate.Decoder)
    def start(self, images: torch.Tensor) -> DecodeState:
        """Encode the image once and fill the caches with it."""
        if self.cfg.fusion == "late":
            raise ValueError("late fusion cannot generate text")
        img = self.encode_image(images)
        state = DecodeState(KVCache.for_layers(len(self.text_blocks)), KVCache.for_layers(len(self.fusion_blocks)))
        if self.cfg.fusion == "cross":
            # each layer's keys and values of the image tokens, projected once for the whole generation;
            # or, where it pays, the image tokens themselves, read by every layer's folded cross-attention
            fold = self._cross_fold(img)
            for blk, cache in zip(self.fusion_blocks, state.fusion_cache.layers):
                blk.cache_context(img, cache, fold=fold)
        else:
            # run the image positions through the fusion layers once: they see only
            # each other, so their keys and values never change during decoding
            x = img + self.modality[0]
            for blk, cache in zip(self.fusion_blocks, state.fusion_cache.layers):
                x = blk(x, cache=cache)
        return state

    # False: decoding always caches each layer's keys and values of the image (the ablation of
    # benchmarks/profile_decode.py --compare-fold and peer_hf.py --no-fold)
    fold_cross_attention = True

    def _cross_fold(self, img: torch.Tensor):
        """How decoding's cross-attention is folded (:meth:`Attention.folded_layers`): oneDNN's
        ``PackedLinear`` for fp32 on a CPU where the model's layers are packed (``mmcli.load``, the
        trainer), else None: the keys and values cached. Measured there (BENCHMARKS.md): the folded
        layers' products of a few rows need oneDNN (with ``F.linear``'s the fold gained 1.04x of decoding),
        and in bf16, where the image's keys and values are half the bytes, 1.06x of decoding."""
        from .packed import PackedLinear

        if (not self.fold_cross_attention or img.device.type != "cpu" or img.dtype != torch.float32
                or torch.compiler.is_compiling()
                or not all(isinstance(b.cross_attn.q, PackedLinear) for b in self.fusion_blocks)):
            return None
        return PackedLinear

    def compile_decoding(self) -> None:
        """``torch.compile`` this inference model's decoding step (:meth:`step`), in place (``mmcli
        caption --compile``, ``mmcli.load(compile=True)``). A step is a few dozen products of a few rows
        and many small ops, where Python and the dispatch around each op weigh: compiled with inductor's
        weight freezing (the weights become constants of the compiled code: prepacked products, the
        element-wise work fused into them) and its C++ wrapper (no Python between the kernels). Measured
        on a 2-core CPU at the peer shape (``benchmarks/peer_hf.py --compile``, BENCHMARKS.md): greedy
        generation 1.17-1.18x faster in bf16 and 1.01-1.04x in fp32, beam 3 1.12x and 1.02x, after a compile
        of about a minute the first time (inductor keeps it on disk for later processes).

        The weights must not change afterwards: the compiled step keeps the values they had at its first
        call. Batch and cache lengths compile as dynamic sizes; a single row decodes eagerly (torch
        specialises size 1, so a batch shrunk to one row would compile again). Greedy decoding compiles
        three variants (the first step, the second, then any length) and beam search three more; each
        model compiles its own copy of the step's code, since torch keeps at most 8 variants of one code
        object (``torch._dynamo.config.recompile_limit``) and two models would share them. The image
        encoder stays eager: its products already run near the matmul ceiling (BENCHMARKS.md)."""
        if self.training:
            raise ValueError("compile_decoding is for an inference model: call .eval() first")
        if "step" in self.__dict__:
            return  # compiled already
        import torch._inductor.config as inductor
        from torch._dynamo.exc import BackendCompilerFailed
        from torch._inductor.exc import InductorError

        eager = self.step
        code = type(self).step.__code__
        own = types.FunctionType(code.replace(), type(self).step.__globals__, code.co_name)  # (a copy: see above)
        compiled = torch.compile(types.MethodType(own, self), dynamic=True)

        failed: list[str] = []

        def step(tokens: torch.Tensor, state: DecodeState) -> torch.Tensor:
            if tokens.shape[0] == 1 or failed:
                return eager(tokens, state)
            try:
                # (the settings where a call compiles: torch.compile's options= did not reach freezing)
                with inductor.patch(freezing=True, cpp_wrapper=True):
                    return compiled(tokens, state)
            except (BackendCompilerFailed, InductorError) as e:
                # the compiler could not build the step (no Python headers for the C++ wrapper, a broken
                # toolchain): it raised before the step ran, so decode on eagerly, saying so once
                failed.append(first_line(e))
                sys.stderr.write(f"mmcli: --compile: torch.compile failed ({failed[0][:200]}); decoding without it\n")
                return eager(tokens, state)

        self.step = step  # (an instance attribute: the class's step stays the eager one)

    def step(self, tokens: torch.Tensor, state: DecodeState) -> torch.Tensor:
        """Append (B, t) tokens; their next-token logits (B, t, V)."""
        t = tokens.shape[1]
        if state.pos + t > self.cfg.max_text_len:
            raise ValueError(f"text longer than max_text_len={self.cfg.max_text_len}")
        x = self.tok_emb(tokens) + self.text_pos[:, state.pos : state.pos + t]
        for blk, cache in zip(self.text_blocks, state.text_cache.layers):
            x = blk(x, is_causal=True, cache=cache)
        if self.cfg.fusion == "concat":
            x = x + self.modality[1]
            for blk, cache in zip(self.fusion_blocks, state.fusion_cache.layers):
                x = blk(x, is_causal=True, cache=cache)  # sees the cached image and text positions
        else:
            for blk, cache in zip(self.fusion_blocks, state.fusion_cache.layers):
                x = blk(x, is_causal=True, cache=cache)  # cross-attends to the cached image
        state.pos += t
        return self.lm_head(self.fusion_norm(x))


def _padded_enough(n_real: int, n_positions: int) -> bool:
    """Whether at least ``PACK_PADS`` of ``n_positions`` are pads, ``n_real`` of them real: running layers on
    the real positions alone then pays for its index work."""
    return n_real <= (1 - PACK_PADS) * n_positions


def _valid(lengths: torch.Tensor, T: int) -> torch.Tensor:
    """(B,) lengths -> (B, T) bool, True at real tokens."""
    return torch.arange(T, device=lengths.device)[None, :] < lengths[:, None]


def _concat_mask(N: int, T: int, lengths: torch.Tensor | None, causal: bool, device) -> torch.Tensor:
    """Attention mask of [image; text]: image rows see the image; text rows see the image and
    the text (causally, or every real token). (B|1, 1, N+T, N+T), True = may attend."""
    S = N + T
    mask = torch.zeros(S, S, dtype=torch.bool, device=device)
    mask[:, :N] = True  # everyone sees the image
    if causal:
        mask[N:, N:] = torch.ones(T, T, dtype=torch.bool, device=device).tril()
        return mask[None, None]
    mask = mask[None].repeat(lengths.shape[0], 1, 1)  # (B, S, S)
    mask[:, N:, N:] = _valid(lengths, T)[:, None, :]  # text rows see every real text token
    return mask[:, None]


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (a tied matrix counts once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def flops_per_sample(model: VLM, task: str = "caption") -> int:
    """Forward FLOPs of one sample at full text length, counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg = model.cfg
    device = next(model.parameters()).device
    images = torch.zeros(1, 3, cfg.image_size, cfg.image_size, device=device)
    ids = torch.full((1, cfg.max_text_len), 6, dtype=torch.long, device=device)
    lengths = torch.tensor([cfg.max_text_len], device=device)
    # (not under no_grad: the counter's module tracker needs autograd on)
    with FlopCounterMode(display=False) as counter:
        if task == "caption":
            model.lm_logits(images, ids)
        elif task == "vqa":
            model.vqa_logits(images, ids, lengths)
        else:
            model.embed(model.encode_image(images), ids, lengths)
    return int(counter.get_total_flops())


def load_model(path) -> tuple[VLM, "object"]:
    """A model rebuilt from a checkpoint directory, and the checkpoint (tokenizer, answers, config).

    The backbone is built without hub or file weights: the checkpoint holds them.
    """
    from dataclasses import replace

    from ..checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    cfg = ModelConfig.from_dict(ckpt.config["model"])
    model = VLM(replace(cfg, pretrained=False, backbone_weights=None))
    ckpt.load_into(model)
    return model.eval(), ckpt
