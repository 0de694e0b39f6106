"""Retrieval recall on galleries with exact duplicates, against CLIP_benchmark's definition.

BioMed-Flickr-style galleries hold the same image (or the same caption) more than once, so the score
matrix has exact ties. CLIP_benchmark ranks with torch.topk and counts a hit when any of the top-k
indices is a positive; `clip_benchmark_recall` below redoes its steps so ours can be compared on the
same input.
"""

import pytest
import torch

from bmca_clip.eval.types.retrieval import recall_hits, retrieval_recall, tie_note


def clip_benchmark_hits(
    scores: torch.Tensor, positive: torch.Tensor, k: int, batch_size: int = 7
) -> torch.Tensor:
    """Per query row of scores [n_queries, n_gallery], whether CLIP_benchmark counts it a hit at k.

    Re-implements `recall_at_k` and `batchify` of LAION-AI/CLIP_benchmark,
    clip_benchmark/metrics/zeroshot_retrieval.py (commit 082089f5f903731f067de7fd447d0148f706066f):
    per batch of query rows, torch.topk's k indices, made one-hot over the gallery and multiplied by
    the positive pairs; a query is a hit when that count of true positives is above 0. The mean of hits
    is its `image_retrieval_recall@k` for text queries (our text_to_image) and `text_retrieval_recall@k`
    for image queries (our image_to_text); it takes that mean in float32, we in float64.
    """
    hits = []
    for start in range(0, len(scores), batch_size):
        rows, pos = scores[start : start + batch_size], positive[start : start + batch_size]
        top = torch.topk(rows, k, dim=1).indices
        onehot = torch.nn.functional.one_hot(top, num_classes=rows.shape[1])  # [b, k, n_gallery]
        true_positives = (onehot * pos[:, None, :]).sum(dim=(1, 2))
        hits.append(true_positives / pos.sum(dim=1) > 0)
    return torch.cat(hits)


def clip_benchmark_recall(scores: torch.Tensor, positive: torch.Tensor, k: int) -> float:
    return clip_benchmark_hits(scores, positive, k).double().mean().item()


def _duplicated_gallery(
    seed: int, n_distinct: int, copies: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(image features, text features, text -> image): each distinct image appears `copies` times (exact
    duplicates), each gallery image has 1 or 2 captions embedded like its image plus a little noise,
    and one caption string is shared by two different images (a duplicated caption). Features are
    multiples of 1/8, so every dot product is exact and ties do not depend on the matmul's order."""
    g = torch.Generator().manual_seed(seed)
    distinct = torch.randint(-8, 9, (n_distinct, 6), generator=g) / 8
    images = distinct.repeat_interleave(copies, dim=0)  # copies sit next to each other in the gallery
    owner = torch.cat(
        [torch.arange(len(images)), torch.randint(len(images), (len(images) // 2,), generator=g)]
    )
    texts = images[owner] + torch.randint(-1, 2, (len(owner), 6), generator=g) / 8
    shared = torch.randint(-8, 9, (6,), generator=g) / 8
    texts[0], texts[-1] = shared, shared  # the same caption text for two images
    return images, texts, owner


@pytest.mark.parametrize("seed, n_distinct, copies", [(0, 8, 3), (1, 20, 2), (2, 5, 6), (3, 40, 4)])
def test_duplicated_gallery_recall_equals_clip_benchmark(seed, n_distinct, copies):
    images, texts, owner = _duplicated_gallery(seed, n_distinct, copies)
    scores = texts @ images.T  # CLIP_benchmark's orientation: [n_texts, n_images]
    positive = torch.nn.functional.one_hot(owner, len(images)).bool()  # [n_texts, n_images]
    ks = [k for k in (1, 2, 5, 10) if k <= len(images)]
    ours = recall_hits(scores.T, owner, ks)
    for k in ks:
        assert ours[f"text_to_image_R@{k}"].tolist() == clip_benchmark_hits(scores, positive, k).tolist(), k
        assert (
            ours[f"image_to_text_R@{k}"].tolist() == clip_benchmark_hits(scores.T, positive.T, k).tolist()
        ), k
    assert not all(ours["text_to_image_R@1"])  # the tie order matters here: some copies win


def test_duplicated_images_do_not_count_against_the_query():
    # The measurement of issue 10: every image three times, captions that match their image exactly (so
    # the copies' captions are duplicated captions too). Counting every tied copy against the query gave
    # R@1 = 0.0 in both directions; CLIP_benchmark's is > 0, and ours must be the same number.
    images, texts, owner = _duplicated_gallery(0, 8, 3)
    texts = images[owner]
    scores = texts @ images.T
    positive = torch.nn.functional.one_hot(owner, len(images)).bool()
    ours = retrieval_recall(scores.T, owner, [1])
    expected = clip_benchmark_recall(scores, positive, 1)
    assert expected > 0 and ours["text_to_image_R@1"] == expected
    expected = clip_benchmark_recall(scores.T, positive.T, 1)
    assert expected > 0 and ours["image_to_text_R@1"] == expected


def test_hits_follow_the_score_order_when_nothing_ties():
    g = torch.Generator().manual_seed(5)
    owner = torch.cat([torch.arange(30), torch.randint(30, (40,), generator=g)])
    scores = torch.randn(70, 30, generator=g, dtype=torch.float64)  # continuous: no ties
    hits = recall_hits(scores.T, owner, [1, 5])
    # A caption is a hit at k when fewer than k images score above its own image.
    above = (scores > scores[torch.arange(70), owner][:, None]).sum(dim=1)
    assert hits["text_to_image_R@1"].tolist() == (above < 1).tolist()
    assert hits["text_to_image_R@5"].tolist() == (above < 5).tolist()


def test_a_constant_model_scores_like_clip_benchmark_not_one():
    owner = torch.tensor([0, 0, 1, 2, 2])
    scores = torch.ones(5, 3)
    positive = torch.nn.functional.one_hot(owner, 3).bool()
    ours = retrieval_recall(scores.T, owner, [1])
    assert ours["text_to_image_R@1"] == clip_benchmark_recall(scores, positive, 1) < 1
    assert ours["image_to_text_R@1"] == clip_benchmark_recall(scores.T, positive.T, 1) < 1


def test_the_ties_note_counts_queries_whose_hit_rests_on_the_tie_order():
    images, texts, owner = _duplicated_gallery(0, 8, 3)
    note = tie_note((texts @ images.T).T, owner)
    # Every image has two exact copies and every caption's image is tied with them.
    assert note is not None and f"{len(owner)} of {len(owner)} text queries" in note
    g = torch.Generator().manual_seed(1)
    assert (
        tie_note(torch.randn(5, 7, generator=g, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 4, 0, 1]))
        is None
    )
