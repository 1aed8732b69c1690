"""The vision-language model: gradients, causality, cached decoding, generation, learning."""

from __future__ import annotations

import pytest
import torch

from mmcli.config import PRESETS, ModelConfig, preset
from mmcli.errors import UserError
from mmcli.losses import itc_loss, itm_loss, lm_loss, vqa_loss
from mmcli.model import generate
from mmcli.model.vlm import VLM

FUSIONS = ["late", "concat", "cross"]


def tiny(fusion: str, **kw) -> VLM:
    torch.manual_seed(0)
    return VLM(preset("tiny", fusion=fusion, n_answers=5, vocab_size=50, **kw)).eval()


def batch(B: int = 3, T: int = 7, vocab: int = 50, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(B, 3, 64, 64, generator=g)
    ids = torch.randint(6, vocab, (B, T), generator=g)
    ids[:, 0] = 2  # bos
    lengths = torch.tensor([T, T - 2, T - 3][:B])
    for b, n in enumerate(lengths):
        ids[b, n:] = 0  # right padding
    return images, ids, lengths


# parameters a task never touches, by name prefix, for token-level fusion and for late fusion
_NO_ITC = ("image_proj", "text_proj", "logit_scale")
UNUSED = {
    ("caption", "token"): ("pool_", "image_norm", "text_norm", "itm_head", "vqa_head", "late") + _NO_ITC,
    ("vqa", "token"): ("pool_", "image_norm", "text_norm", "itm_head", "late") + _NO_ITC,
    ("vqa", "late"): ("itm_head",) + _NO_ITC,
    ("itc", "token"): ("fusion_blocks", "fusion_norm", "modality", "itm_head", "vqa_head"),
    ("itc", "late"): ("late", "itm_head", "vqa_head"),
    ("itm", "token"): ("pool_", "image_norm", "text_norm", "vqa_head", "late") + _NO_ITC,
    ("itm", "late"): ("vqa_head",) + _NO_ITC,
}


def task_loss(model: VLM, task: str) -> torch.Tensor:
    images, ids, lengths = batch()
    if task == "caption":
        return lm_loss(model.lm_logits(images, ids), ids, lengths)
    if task == "vqa":
        return vqa_loss(model.vqa_logits(images, ids, lengths), torch.rand(3, 5))
    img = model.encode_image(images)
    if task == "itc":
        ie, te = model.embed(img, ids, lengths)
        return itc_loss(ie, te, model.logit_scale)
    return itm_loss(model.itm_logits(img, ids, lengths), torch.tensor([1, 0, 1]))


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("task", ["caption", "vqa", "itc", "itm"])
def test_every_used_parameter_gets_a_gradient(fusion, task):
    if task == "caption" and fusion == "late":
        pytest.skip("late fusion cannot caption (refused by the config, tested below)")
    model = tiny(fusion).train()
    task_loss(model, task).backward()
    unused = UNUSED[(task, "late" if fusion == "late" else "token")]
    used = [(n, p) for n, p in model.named_parameters() if p.requires_grad and not n.startswith(unused)]
    assert [n for n, p in used if p.grad is None] == []
    # timm ResNets zero-init the last norm of each residual branch, so some backbone
    # gradients are exactly 0 at initialisation; everything of ours must be non-zero
    assert [n for n, p in used if not n.startswith("vision.backbone") and not p.grad.abs().sum() > 0] == []


def test_late_fusion_cannot_caption():
    with pytest.raises(UserError, match="late"):
        preset("tiny", fusion="late").check_task("caption")
    preset("tiny", fusion="late").check_task("vqa")


@pytest.mark.parametrize("fusion", ["concat", "cross"])
def test_changing_a_future_token_never_changes_earlier_logits(fusion):
    model = tiny(fusion)
    images, ids, _ = batch()
    with torch.no_grad():
        a = model.lm_logits(images, ids)
        ids2 = ids.clone()
        ids2[:, 4:] = (ids2[:, 4:] + 7) % 50
        b = model.lm_logits(images, ids2)
    assert torch.allclose(a[:, :4], b[:, :4], atol=1e-6)
    assert not torch.allclose(a[:, 4:], b[:, 4:])


@pytest.mark.parametrize("fusion", ["concat", "cross"])
@pytest.mark.parametrize("chunk", [1, 3])
def test_cached_decoding_equals_a_full_forward(fusion, chunk):
    model = tiny(fusion)
    images, ids, _ = batch()
    with torch.no_grad():
        full = model.lm_logits(images, ids)
        state = model.start(images)
        parts = [model.step(ids[:, i : i + chunk], state) for i in range(0, ids.shape[1], chunk)]
    assert torch.allclose(torch.cat(parts, dim=1), full, atol=1e-5)


@pytest.mark.parametrize("fusion", ["concat", "cross"])
def test_generation_beam1_is_greedy_and_batch_independent(fusion):
    model = tiny(fusion)
    images, _, _ = batch(B=3)
    with torch.no_grad():
        g = generate.greedy(model, images, bos_id=2, eos_id=3, max_len=8)
        b1 = generate.beam_search(model, images, bos_id=2, eos_id=3, max_len=8, beam=1)
        one = [generate.greedy(model, images[i : i + 1], bos_id=2, eos_id=3, max_len=8)[0] for i in range(3)]
        beams = generate.beam_search(model, images, bos_id=2, eos_id=3, max_len=8, beam=3)
        beams_one = [generate.beam_search(model, images[i : i + 1], bos_id=2, eos_id=3, max_len=8, beam=3)[0] for i in range(3)]
    assert g == b1 == one
    assert beams == beams_one


def test_presets_build_and_report_size():
    from mmcli.model.vlm import count_parameters, flops_per_sample

    tiny_m, small_m = VLM(PRESETS["tiny"]), VLM(PRESETS["small"])
    assert 0 < count_parameters(tiny_m) < count_parameters(small_m)
    assert 0 < flops_per_sample(tiny_m) < flops_per_sample(small_m)


def test_tiny_overfits_eight_shapes_captions(tmp_path):
    """Learning works end to end: real images, real tokenizer, a few seconds of AdamW."""
    from mmcli.data.images import make_transform
    from mmcli.data.loaders import ImageSource, PairDataset, collate
    from mmcli.data.shapes import load_shapes
    from mmcli.tokenizer import Tokenizer

    ds = load_shapes(n_images=8, size=64, cache_dir=str(tmp_path))
    records = [r for s in ds.splits.values() for r in s.captions][:8]
    pairs = [p for r in records for p in ds_pairs(r)][:8]
    tok = Tokenizer.train([c for r in records for c in r.captions], vocab_size=400)
    torch.manual_seed(0)
    model = VLM(preset("tiny", vocab_size=tok.vocab_size, fusion="cross"))
    src = ImageSource(make_transform(model.vision.data_config))
    b = collate([PairDataset(pairs, src, tok)[i] for i in range(8)], pad_id=tok.pad_id)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = None
    for _ in range(200):
        loss = lm_loss(model.lm_logits(b.images, b.text), b.text, b.text_len)
        first = first if first is not None else loss.item()
        if loss.item() < 0.05:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05 < first


def ds_pairs(record):
    from mmcli.data.records import Split

    return Split(captions=[record]).pairs()[:1]


@pytest.mark.parametrize("fusion", ["late", "cross"])
def test_checkpoint_round_trip_gives_identical_outputs(fusion, tmp_path):
    from mmcli.checkpoint import save_checkpoint
    from mmcli.model.vlm import load_model
    from mmcli.tokenizer import Tokenizer

    model = tiny(fusion)
    tok = Tokenizer.train(["a red circle", "a blue square left of a green star"], vocab_size=300)
    save_checkpoint(tmp_path / "run", config={"model": model.cfg.to_dict(), "task": "vqa"}, model=model, tokenizer=tok)
    loaded, ckpt = load_model(tmp_path / "run")
    images, ids, lengths = batch()
    with torch.no_grad():
        assert torch.equal(model.vqa_logits(images, ids, lengths), loaded.vqa_logits(images, ids, lengths))
    assert loaded.lm_head.weight is loaded.tok_emb.weight  # still tied
    assert ckpt.tokenizer.encode("a red circle") == tok.encode("a red circle")


def test_vit_backbone_in_the_full_model():
    torch.manual_seed(0)
    model = VLM(preset("tiny", backbone="vit_tiny_patch16_224", image_size=32, vocab_size=50, fusion="concat")).eval()
    images = torch.randn(2, 3, 32, 32)
    ids = torch.randint(6, 50, (2, 5))
    with torch.no_grad():
        assert model.lm_logits(images, ids).shape == (2, 5, 50)
        assert len(generate.greedy(model, images, bos_id=2, eos_id=3, max_len=4)) == 2


@pytest.mark.parametrize("backbone", ["test_resnet", "vit_tiny_patch16_224"])
def test_position_grids_resampled_for_another_image_size(backbone):
    """A model's state dict at one image size fits the same model at twice the size after
    resample_position_grids: mmcli's image_pos (and a ViT's own pos_embed) go to the new grid of
    tokens, a ViT's class-token position unchanged, a constant grid staying that constant; nothing
    else changes, and the model runs at the new size."""
    from mmcli.model.vision import resample_position_grids

    torch.manual_seed(0)
    small = VLM(preset("tiny", backbone=backbone, image_size=32, vocab_size=50, fusion="concat"))
    big = VLM(preset("tiny", backbone=backbone, image_size=64, vocab_size=50, fusion="concat"))
    state = small.state_dict()
    prefix = small.vision.num_prefix_tokens
    state["image_pos"] = state["image_pos"].clone()
    state["image_pos"][:, prefix:] = 0.25  # a constant grid
    before = {k: v.clone() for k, v in state.items()}
    done = resample_position_grids(big, state)
    names = ["image_pos"] + (["vision.backbone.pos_embed"] if prefix else [])
    assert [d.split()[0] for d in done] == names
    assert big.image_pos.shape[1] - prefix == 4 * (small.image_pos.shape[1] - prefix)
    big.load_state_dict(state)  # strict: every shape fits now
    torch.testing.assert_close(big.image_pos[:, prefix:], torch.full_like(big.image_pos[:, prefix:], 0.25))
    assert torch.equal(big.image_pos[:, :prefix], before["image_pos"][:, :prefix])
    if prefix:
        pe = big.vision.backbone.pos_embed
        assert torch.equal(pe[:, :prefix], before["vision.backbone.pos_embed"][:, :prefix])
    assert all(torch.equal(state[k], v) for k, v in before.items() if k not in names)
    assert resample_position_grids(big, big.state_dict()) == []  # the same size: nothing to do
    with torch.no_grad():
        assert big.eval().lm_logits(torch.randn(2, 3, 64, 64), torch.randint(6, 50, (2, 5))).shape == (2, 5, 50)


def test_a_position_grid_that_is_not_square_is_one_error_line():
    from mmcli.model.vision import resample_position_grids

    model = VLM(preset("tiny", image_size=64, vocab_size=50, fusion="concat"))
    state = {"image_pos": torch.zeros(1, model.image_pos.shape[1] + 3, model.image_pos.shape[2])}
    with pytest.raises(UserError, match="image_pos: .* are not square grids of positions") as e:
        resample_position_grids(model, state)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_img_index_equals_repeating_the_image_rows(fusion):
    """Texts sharing images: passing each image once with img_index gives what repeating its
    tokens per text gives (cross-attention then projects each image's keys and values once), for
    understanding and captioning; and so do the keys and values of image_kv, made once for several
    captioning calls."""
    model = tiny(fusion)
    images, ids, lengths = batch(B=3)
    index = torch.tensor([1, 0, 1])  # text row -> image row
    with torch.no_grad():
        img = model.encode_image(images[:2])  # two images for three texts
        shared = model.understand(img, ids, lengths, img_index=index)
        repeated = model.understand(img.index_select(0, index), ids, lengths)
        assert torch.allclose(shared, repeated, atol=1e-6)
        if fusion != "late":
            a = model.lm_logits(None, ids, img=img, img_index=index)
            b = model.lm_logits(None, ids, img=img.index_select(0, index))
            assert torch.allclose(a, b, atol=1e-5)
            kv = model.image_kv(img)
            assert (kv is None) == (fusion != "cross")
            torch.testing.assert_close(model.lm_logits(None, ids, img=img, img_index=index, img_kv=kv), a)


def _repeated_questions():
    images, ids, lengths = batch(B=3)
    order = torch.tensor([0, 1, 0, 2, 1, 0])  # six questions, three distinct
    return images, ids[order], lengths[order]


@pytest.mark.parametrize("fusion", FUSIONS)
def test_repeated_texts_run_the_text_layers_once_with_the_same_outputs_and_gradients(fusion, monkeypatch):
    images, ids, lengths = _repeated_questions()
    img_index = torch.tensor([0, 0, 1, 1, 2, 2])  # two questions per image

    def outputs_and_grads(model):
        model.zero_grad()
        out = model.understand(model.encode_image(images), ids, lengths, img_index=img_index)
        out.pow(2).sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    model = tiny(fusion).train()  # the tiny preset has no dropout: repeated texts give equal outputs
    rows = []
    real = model.encode_text
    monkeypatch.setattr(model, "encode_text", lambda ids, *a, **k: rows.append(ids.shape[0]) or real(ids, *a, **k))
    once, g_once = outputs_and_grads(model)
    assert rows == [3]
    monkeypatch.setattr(model, "distinct_texts", lambda ids, lengths: None)  # every row through the layers
    every, g_every = outputs_and_grads(model)
    assert rows == [3, 6]
    assert torch.allclose(once, every, atol=1e-5)
    assert g_once.keys() == g_every.keys()
    for name in g_once:
        assert torch.allclose(g_once[name], g_every[name], atol=1e-5), name


def test_texts_are_not_shared_under_dropout_in_training():
    """With dropout each copy of a question gets its own mask, so every row is encoded; in eval
    (no dropout applied) repeated questions are shared again."""
    images, ids, lengths = _repeated_questions()
    model = tiny("late", dropout=0.1).train()
    assert model.distinct_texts(ids, lengths) is None
    model.eval()
    u_ids, u_lengths, inverse = model.distinct_texts(ids, lengths)
    assert u_ids.shape == (3, ids.shape[1])
    assert torch.equal(u_ids[inverse], ids) and torch.equal(u_lengths[inverse], lengths)
    _, ids3, lengths3 = batch(B=3)
    assert tiny("late").distinct_texts(ids3, lengths3) is None  # nothing repeated


@pytest.mark.parametrize("fusion", FUSIONS)
def test_text_layers_on_the_real_tokens_alone_give_the_padded_outputs_and_gradients(fusion, monkeypatch):
    """encode_text runs the text layers on a padded batch's real tokens alone (transformer.Rows), and
    understand its cross-attention fusion layers too: the features at real positions, the fused output
    and every gradient equal the padded run's, the pads
    come out as zeros (with rows rounded up to a multiple, some pads are computed too, as unpacked);
    a batch with under PACK_PADS of padding stays padded."""
    from mmcli.model import vlm as vlm_mod

    monkeypatch.setattr(vlm_mod, "PACK_MULTIPLE", 1)
    images, ids, lengths = batch()  # 5 pads in 21 positions
    valid = torch.arange(ids.shape[1])[None, :] < lengths[:, None]
    model = tiny(fusion).train()
    packs = []
    real = vlm_mod.Rows.of_mask
    monkeypatch.setattr(vlm_mod.Rows, "of_mask", lambda *a, **k: packs.append(1) or real(*a, **k))

    def run(pack: bool):
        model.pack_text = pack
        model.zero_grad()
        txt = model.encode_text(ids, lengths, causal=False)
        out = model.understand(model.encode_image(images), ids, lengths)
        (out.pow(2).sum() + txt[valid].pow(2).sum()).backward()
        return txt.detach(), out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    txt_p, out_p, g_p = run(True)
    calls = 3 if fusion == "cross" else 2  # encode_text, understand's own call (and its cross-attention layers)
    assert len(packs) == calls
    txt, out, g = run(False)
    assert len(packs) == calls
    assert torch.allclose(txt_p[valid], txt[valid], atol=1e-5) and not txt_p[~valid].any()
    assert torch.allclose(out_p, out, atol=1e-5)
    assert g_p.keys() == g.keys()
    for name in g:
        assert torch.allclose(g_p[name], g[name], atol=1e-5), name
    model.pack_text = True
    monkeypatch.setattr(vlm_mod, "PACK_MULTIPLE", 6)  # 16 real positions and 2 pads: 18 rows
    txt_m = model.encode_text(ids, lengths, causal=False)
    assert len(packs) == calls + 1 and int((txt_m != 0).any(-1).sum()) == 18
    assert torch.allclose(txt_m[valid], txt[valid], atol=1e-5)
    model.encode_text(ids, torch.full_like(lengths, ids.shape[1]), causal=False)  # no pads
    assert len(packs) == calls + 1
