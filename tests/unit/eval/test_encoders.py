"""The embedding cache decorates the encoder interface: a second CachingEncoder over the same cache answers
images, texts and classifier from disk without calling the encoder it wraps."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from bmca_clip.eval.cache import CachingEncoder, EmbeddingCache


class Fingerprinted(torch.utils.data.TensorDataset):
    fingerprint = "fixture:4-items"


class CountingEncoder:
    """An Encoder that makes up features and counts its calls."""

    amp_dtype = None

    def __init__(self):
        self.calls = {"images": 0, "texts": 0, "classifier": 0}

    def images(self, loader):
        self.calls["images"] += 1
        return torch.arange(8.0).view(4, 2), torch.tensor([0, 1, 0, 1])

    def texts(self, texts):
        self.calls["texts"] += 1
        return torch.ones(len(texts), 2)

    def classifier(self, classnames, templates):
        self.calls["classifier"] += 1
        return torch.eye(2)[:, : len(classnames)]


def _all(encoder, loader):
    return encoder.images(loader), encoder.texts(["a", "b", "c"]), encoder.classifier(["x", "y"], ["{}."])


def test_a_cached_encoder_is_asked_once_and_the_answers_are_equal(tmp_path):
    loader = DataLoader(Fingerprinted(torch.zeros(4)), batch_size=2)
    cache = EmbeddingCache(tmp_path)
    first_inner, second_inner = CountingEncoder(), CountingEncoder()
    first = _all(CachingEncoder(first_inner, cache, "model-key", "preprocess"), loader)
    second = _all(CachingEncoder(second_inner, cache, "model-key", "preprocess"), loader)
    assert first_inner.calls == {"images": 1, "texts": 1, "classifier": 1}
    assert second_inner.calls == {"images": 0, "texts": 0, "classifier": 0}
    (f1, t1), texts1, w1 = first
    (f2, t2), texts2, w2 = second
    assert torch.equal(f1, f2) and torch.equal(t1, t2) and torch.equal(texts1, texts2) and torch.equal(w1, w2)
    assert len(list((tmp_path / "embeddings").rglob("*.pt"))) == 3
    # Other weights are another key: computed again.
    third_inner = CountingEncoder()
    _all(CachingEncoder(third_inner, cache, "other-key", "preprocess"), loader)
    assert third_inner.calls == {"images": 1, "texts": 1, "classifier": 1}


def test_a_dataset_without_a_fingerprint_is_encoded_every_time(tmp_path):
    loader = DataLoader(torch.utils.data.TensorDataset(torch.zeros(4)), batch_size=2)
    inner = CountingEncoder()
    encoder = CachingEncoder(inner, EmbeddingCache(tmp_path), "model-key", "preprocess")
    encoder.images(loader)
    encoder.images(loader)
    assert inner.calls["images"] == 2 and not (tmp_path / "embeddings" / "images").exists()
