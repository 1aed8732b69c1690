"""Generation: greedy, beam search and sampling over tiny Block-built decoders."""

from __future__ import annotations

import pytest
import torch

from mmcli.model.generate import beam_search, filter_logits, greedy, sample
from test_transformer import BOS, EOS, FEAT, VOCAB, make

MAX_LEN = 12
# eos logit shifts under which the tiny decoders (fixed seeds) end their captions at
# varied steps, or early; the two styles differ in how readily they say eos
VARIED = {"cross": 0.0, "concat": 2.0}
EARLY = {"cross": 1.0, "concat": 7.0}


def images_for(n=5, seed=7):
    return torch.randn(n, 5, FEAT, generator=torch.Generator().manual_seed(seed))


def model_with_eos_bias(style, bias, seed=0):
    """A tiny decoder whose eos logit is shifted: > 0 ends captions early, < 0 late."""
    model = make(style, seed=seed)
    with torch.no_grad():
        model.head.bias[EOS] += bias
    return model


class Recorder:
    """Wraps a decoder and records the shape of every step's tokens."""

    def __init__(self, decoder):
        self.decoder, self.shapes = decoder, []

    def start(self, images):
        return self.decoder.start(images)

    def step(self, tokens, state):
        self.shapes.append(tuple(tokens.shape))
        return self.decoder.step(tokens, state)


@pytest.fixture(params=["cross", "concat"])
def style(request):
    return request.param


def test_greedy_matches_argmax_of_full_forward(style):
    model = make(style)
    images = images_for(3)
    out = greedy(model, images, BOS, EOS, MAX_LEN)
    for i, tokens in enumerate(out):
        prefix = torch.tensor([[BOS] + tokens])
        with torch.no_grad():
            logits = model(images[i : i + 1], prefix)[0]  # (t + 1, V)
        expected = logits.argmax(-1).tolist()
        assert tokens == expected[: len(tokens)]
        assert len(tokens) == MAX_LEN or expected[len(tokens)] == EOS


def test_every_step_feeds_only_the_new_token(style):
    rec = Recorder(make(style))
    greedy(rec, images_for(4), BOS, EOS, MAX_LEN)
    assert all(t == 1 for _, t in rec.shapes) and rec.shapes[0] == (4, 1)
    rec.shapes.clear()
    beam_search(rec, images_for(4), BOS, EOS, MAX_LEN, beam=3)
    assert all(t == 1 for _, t in rec.shapes) and rec.shapes[0] == (12, 1)


def test_results_respect_max_len_and_hold_no_bos_or_eos(style):
    model = model_with_eos_bias(style, -100.0)  # eos never wins: every caption runs to max_len
    for out in (greedy(model, images_for(), BOS, EOS, 7), beam_search(model, images_for(), BOS, EOS, 7, beam=2)):
        assert [len(t) for t in out] == [7] * 5
        assert all(EOS not in t for t in out)
    assert greedy(model, images_for(), BOS, EOS, 0) == [[]] * 5


def test_beam_one_equals_greedy(style):
    for bias in (VARIED[style], EARLY[style]):
        model = model_with_eos_bias(style, bias)
        images = images_for(6)
        assert beam_search(model, images, BOS, EOS, MAX_LEN, beam=1) == greedy(model, images, BOS, EOS, MAX_LEN)


def test_batch_equals_one_image_at_a_time(style):
    model = model_with_eos_bias(style, VARIED[style])
    images = images_for(6)
    out = greedy(model, images, BOS, EOS, MAX_LEN)
    assert len({len(t) for t in out}) > 1  # rows finish at different steps, so rows get dropped
    assert len({tuple(t) for t in out}) > 3  # the captions depend on the image
    for run in (
        lambda x: greedy(model, x, BOS, EOS, MAX_LEN),
        lambda x: beam_search(model, x, BOS, EOS, MAX_LEN, beam=3),
        lambda x: beam_search(model, x, BOS, EOS, MAX_LEN, beam=4, length_penalty=0.0, no_repeat_ngram=2),
    ):
        batched = run(images)
        assert batched == [run(images[i : i + 1])[0] for i in range(len(images))]


def test_beam_search_finds_at_least_greedy_total_log_prob(style):
    """With no length penalty, a wide beam never ends below the greedy caption's score."""
    model = model_with_eos_bias(style, VARIED[style])
    images = images_for(4)

    def total_log_prob(i, tokens):
        seq = torch.tensor([[BOS] + tokens + [EOS]])
        with torch.no_grad():
            logp = model(images[i : i + 1], seq[:, :-1])[0].log_softmax(-1)  # (t + 1, V)
        return logp.gather(1, seq[0, 1:, None]).sum().item()

    greedy_out = greedy(model, images, BOS, EOS, MAX_LEN)
    beam_out = beam_search(model, images, BOS, EOS, MAX_LEN, beam=8, length_penalty=0.0)
    for i in range(len(images)):
        if len(greedy_out[i]) < MAX_LEN and len(beam_out[i]) < MAX_LEN:  # both ended with eos
            assert total_log_prob(i, beam_out[i]) >= total_log_prob(i, greedy_out[i]) - 1e-4


def test_wide_beam_search_is_exhaustive_search(style):
    """max_len 2 and a beam wider than every prefix: beam search must return the
    best of all 1 + (V-1) + (V-1)^2 captions by sum(log p) / len ** alpha."""
    model = model_with_eos_bias(style, EARLY[style])  # the empty caption competes
    images = images_for(3)
    words = [w for w in range(VOCAB) if w != EOS]
    seqs = torch.tensor([[BOS, w] for w in words])  # (V - 1, 2)
    results = {}
    for alpha in (0.0, 1.0):
        out = beam_search(model, images, BOS, EOS, 2, beam=200, length_penalty=alpha)
        for i in range(len(images)):
            with torch.no_grad():
                logp = model(images[i : i + 1].expand(len(words), -1, -1), seqs).log_softmax(-1)  # (V - 1, 2, V)
            first, second = logp[0, 0].tolist(), logp[:, 1].tolist()  # log p(. | bos), log p(. | bos w)
            scores = {(): first[EOS]}  # the empty caption: eos alone, length 1
            for j, w in enumerate(words):
                scores[(w,)] = (first[w] + second[j][EOS]) / 2**alpha
                for w2 in words:  # max_len reached: no eos, length 2
                    scores[(w, w2)] = (first[w] + second[j][w2]) / 2**alpha
            assert tuple(out[i]) == max(scores, key=scores.get), (alpha, i)
        results[alpha] = out
    assert results[0.0] != results[1.0]  # the length penalty mattered here


def test_min_len_blocks_eos_early(style):
    model = model_with_eos_bias(style, EARLY[style])
    images = images_for(5)
    assert min(len(t) for t in greedy(model, images, BOS, EOS, MAX_LEN)) < 4  # eos comes early without min_len
    gen = torch.Generator().manual_seed(0)
    for out in (
        greedy(model, images, BOS, EOS, MAX_LEN, min_len=4),
        beam_search(model, images, BOS, EOS, MAX_LEN, beam=3, min_len=4),
        sample(model, images, BOS, EOS, MAX_LEN, generator=gen, min_len=4),
    ):
        assert min(len(t) for t in out) >= 4


def _has_repeated_ngram(tokens, n):
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(grams) != len(set(grams))


def test_no_repeat_ngram(style):
    model = model_with_eos_bias(style, -100.0)  # long captions, so repeats are likely
    images = images_for(5)
    plain = beam_search(model, images, BOS, EOS, MAX_LEN, beam=3)
    assert any(_has_repeated_ngram(t, 2) for t in plain)  # the test can fail
    for n in (1, 2, 3):
        out = beam_search(model, images, BOS, EOS, MAX_LEN, beam=3, no_repeat_ngram=n)
        assert not any(_has_repeated_ngram(t, n) for t in out), n
        assert all(len(t) == MAX_LEN for t in out)  # a vocabulary of 13 has 12+ fresh tokens


def test_sampling_with_top_k_one_or_tiny_top_p_equals_greedy(style):
    model = model_with_eos_bias(style, VARIED[style])
    images = images_for(5)
    expected = greedy(model, images, BOS, EOS, MAX_LEN)
    gen = torch.Generator().manual_seed(0)
    assert sample(model, images, BOS, EOS, MAX_LEN, top_k=1, generator=gen) == expected
    assert sample(model, images, BOS, EOS, MAX_LEN, top_p=1e-6, temperature=2.0, generator=gen) == expected
    assert sample(model, images, BOS, EOS, MAX_LEN, temperature=0.0) == expected


def test_sampling_is_reproducible_with_a_seeded_generator(style):
    model = model_with_eos_bias(style, -1.0)
    images = images_for(5)

    def run(seed):
        gen = torch.Generator().manual_seed(seed)
        return sample(model, images, BOS, EOS, MAX_LEN, temperature=1.5, top_k=8, top_p=0.95, generator=gen)

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_filter_logits():
    logits = torch.tensor([[3.0, 1.0, 2.0, 0.0]])
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[False, True, False, True]]
    # probabilities ~ [.64, .09, .24, .03]: 0.8 needs the two most likely tokens
    assert torch.isinf(filter_logits(logits, top_p=0.8)).tolist() == [[False, True, False, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.5)).tolist() == [[False, True, True, True]]
    assert torch.equal(filter_logits(logits), logits)
