"""Tests for paramcrop.evaluation: kNN, linear probe, retrieval and feature extraction."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import paramcrop.evaluation as ev
from paramcrop.sinks import EVAL_KNN_TOP1, EVAL_LINEAR_TOP1


def clusters(n: int, num_classes: int, dim: int, spread: float, seed: int):
    """Features (n, dim) around one random centre per class, labels (n,)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=g) * 5
    labels = torch.arange(n) % num_classes
    return centres[labels] + spread * torch.randn(n, dim, generator=g), labels


def unit(deg: float, norm: float = 1.0) -> list[float]:
    return [norm * math.cos(math.radians(deg)), norm * math.sin(math.radians(deg))]


# --- kNN and linear probe on features with known structure -----------------------------


def test_separated_clusters_are_classified_perfectly():
    train, train_y = clusters(200, 5, 16, 0.1, seed=0)
    g = torch.Generator().manual_seed(1)
    test, test_y = train[:100] + 0.1 * torch.randn(100, 16, generator=g), train_y[:100]
    assert ev.knn_top1(train, train_y, test, test_y) == 1.0
    assert ev.linear_probe_top1(train, train_y, test, test_y) == 1.0


def test_random_labels_give_chance_accuracy():
    g = torch.Generator().manual_seed(0)
    train, test = torch.randn(400, 32, generator=g), torch.randn(400, 32, generator=g)
    train_y, test_y = torch.randint(0, 4, (400,), generator=g), torch.randint(0, 4, (400,), generator=g)
    # chance is 0.25, one standard deviation about 0.02
    assert abs(ev.knn_top1(train, train_y, test, test_y) - 0.25) < 0.1
    assert abs(ev.linear_probe_top1(train, train_y, test, test_y) - 0.25) < 0.1


def test_votes_are_weighted_by_exp_similarity_over_temperature():
    # One class-0 neighbour at similarity 1, two class-1 neighbours at similarity 0.5:
    # class 0 wins iff exp(1/T) > 2 exp(0.5/T), i.e. T < 0.5 / ln 2 = 0.7213; majority says 1.
    train = torch.tensor([unit(0), unit(60), unit(-60)])
    train_y = torch.tensor([0, 1, 1])
    query, query_y = torch.tensor([unit(0)]), torch.tensor([0])
    for temperature, expected in [(0.07, 0), (0.7, 0), (0.75, 1), (100.0, 1)]:
        pred = ev.knn_predict(train, train_y, query, k=3, temperature=temperature)
        assert pred.tolist() == [expected], temperature
    assert ev.knn_top1(train, train_y, query, query_y, k=3, temperature=0.07) == 1.0
    assert ev.knn_top1(train, train_y, query, query_y, k=3, temperature=0.75) == 0.0
    # with k = 1 only the nearest neighbour votes, whatever the temperature
    assert ev.knn_predict(train, train_y, query, k=1, temperature=100.0).tolist() == [0]


def naive_knn(train, train_y, test, k, temperature, num_classes):
    train, test = F.normalize(train.double(), dim=1), F.normalize(test.double(), dim=1)
    preds = []
    for q in test:
        sims = [float(q @ t) for t in train]
        order = sorted(range(len(sims)), key=lambda i: -sims[i])[:k]
        votes = [0.0] * num_classes
        for i in order:
            votes[int(train_y[i])] += math.exp(sims[i] / temperature)
        preds.append(max(range(num_classes), key=lambda c: (votes[c], -c)))
    return preds


@pytest.mark.parametrize("k, temperature", [(1, 0.07), (5, 0.07), (20, 0.5), (1000, 0.1)])
def test_knn_matches_naive_loop(monkeypatch, k, temperature):
    monkeypatch.setattr(ev, "_CHUNK", 7)  # several similarity blocks
    g = torch.Generator().manual_seed(k)
    train, test = torch.randn(80, 12, generator=g), torch.randn(50, 12, generator=g)
    train_y = torch.randint(0, 6, (80,), generator=g)
    pred = ev.knn_predict(train, train_y, test, k=k, temperature=temperature, num_classes=6)
    assert pred.tolist() == naive_knn(train, train_y, test, k, temperature, 6)


def test_knn_with_k_above_train_size_uses_all():
    g = torch.Generator().manual_seed(0)
    train, test = torch.randn(5, 4, generator=g), torch.randn(30, 4, generator=g)
    train_y = torch.tensor([0, 1, 2, 1, 0])
    all_ = ev.knn_predict(train, train_y, test, k=5, temperature=0.3)
    assert torch.equal(ev.knn_predict(train, train_y, test, k=50, temperature=0.3), all_)


def test_linear_probe_fits_separable_random_labels():
    # 100 random points in 64 dimensions are linearly separable whatever their labels:
    # a converged probe classifies its own training set perfectly, two iterations do not.
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(100, 64, generator=g), torch.randint(0, 5, (100,), generator=g)
    assert ev.linear_probe_top1(x, y, x, y) == 1.0
    assert ev.linear_probe_top1(x, y, x, y, epochs=2) < 0.9


def test_linear_probe_is_deterministic_and_leaves_global_state_alone():
    train, train_y = clusters(120, 4, 8, 6.0, seed=2)  # overlapping: accuracy below 1
    test, test_y = clusters(120, 4, 8, 6.0, seed=3)
    torch.manual_seed(0)
    state, threads = torch.get_rng_state(), torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        first = ev.linear_probe_top1(train, train_y, test, test_y, seed=5)
        assert torch.get_num_threads() == 2  # the one-thread section is restored
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(torch.get_rng_state(), state)
    assert ev.linear_probe_top1(train, train_y, test, test_y, seed=5) == first
    assert 0.0 <= first < 1.0


# --- retrieval -------------------------------------------------------------------------


def test_retrieval_recall_hand_computed():
    # The class-0 train point is short: cosine ranks it first for the 10-degree query,
    # a raw dot product would not.
    train = torch.tensor([unit(0, 0.1), unit(30), unit(90), unit(180)])
    train_y = torch.tensor([0, 1, 1, 2])
    test = torch.tensor([unit(10), unit(85), unit(170)])
    test_y = torch.tensor([1, 1, 0])
    # query 1: neighbours c0, c1 -> miss@1, hit@2; query 2: c1 -> hit@1;
    # query 3: c2, c1, c1, c0 -> miss@1, miss@2, hit only with all 4 (k = 10 capped to 4)
    recall = ev.retrieval_recall(train, train_y, test, test_y, ks=(1, 2, 10))
    assert recall == pytest.approx({1: 1 / 3, 2: 2 / 3, 10: 1.0})


# --- feature extraction ----------------------------------------------------------------


class MeanColour(nn.Module):
    """Stub backbone: the feature of a clip is its mean value per channel, (B, 3)."""

    feature_dim = 3

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Identity()
        self.calls: list[dict] = []

    def forward(self, x):
        self.calls.append(
            {"training": self.training, "grad": torch.is_grad_enabled(), "dtype": x.dtype, "shape": tuple(x.shape)}
        )
        return self.head(x.mean(dim=(2, 3, 4)))


def coloured_clips(values: list[list[tuple[int, int]]]) -> torch.Tensor:
    """uint8 (N, K, 3, T=2, 4, 4): clip k of video n has value v in channel c, 0 elsewhere."""
    clips = torch.zeros(len(values), len(values[0]), 3, 2, 4, 4, dtype=torch.uint8)
    for n, video in enumerate(values):
        for k, (channel, value) in enumerate(video):
            clips[n, k, channel] = value
    return clips


def test_extract_features_averages_normalised_clip_features_and_restores_modes():
    clips = coloured_clips([[(0, 200), (1, 50)], [(2, 100), (2, 10)], [(1, 255), (2, 255)]])
    labels = torch.tensor([3, 1, 2], dtype=torch.int32)
    loader = DataLoader(TensorDataset(clips, labels), batch_size=2)
    backbone = MeanColour()
    backbone.train()
    backbone.head.eval()  # mixed modes are restored module by module
    seen = []

    def normalize(x):
        seen.append((x.dtype, float(x.max())))
        return x / 255

    feats, out_labels = ev.extract_features(backbone, loader, device="cpu", normalize=normalize)

    s = 1 / math.sqrt(2)
    # per-clip unit vectors averaged, then renormalised (raw features averaged would give
    # (0.97, 0.24, 0) for the first video)
    expected = torch.tensor([[s, s, 0.0], [0.0, 0.0, 1.0], [0.0, s, s]])
    assert feats.dtype == torch.float32 and torch.allclose(feats, expected, atol=1e-6)
    assert out_labels.dtype == torch.long and out_labels.tolist() == [3, 1, 2]
    assert [c["shape"] for c in backbone.calls] == [(4, 3, 2, 4, 4), (2, 3, 2, 4, 4)]
    assert all(not c["training"] and not c["grad"] and c["dtype"] == torch.float32 for c in backbone.calls)
    assert seen[0] == (torch.float32, 200.0)  # normalize receives the 0-255 scale
    assert backbone.training and not backbone.head.training


def test_extract_features_keeps_eval_mode_accepts_single_clips_and_restores_on_error():
    clips = coloured_clips([[(0, 10)], [(1, 20)]])[:, 0]  # (B, 3, T, H, W): K = 1
    loader = DataLoader(TensorDataset(clips, torch.tensor([0, 1])), batch_size=2)
    backbone = MeanColour().eval()
    feats, _ = ev.extract_features(backbone, loader, device="cpu", normalize=lambda x: x)
    assert torch.allclose(feats, torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    assert not backbone.training

    def failing(x):
        raise RuntimeError("boom")

    backbone.train()
    with pytest.raises(RuntimeError, match="boom"):
        ev.extract_features(backbone, loader, device="cpu", normalize=failing)
    assert backbone.training and backbone.head.training


def test_evaluate_returns_the_named_metrics():
    # class c: both clips dominated by channel c, plus a little of another channel
    g = torch.Generator().manual_seed(0)

    def split(n):
        labels = torch.arange(n) % 3
        clips = torch.randint(0, 30, (n, 2, 3, 2, 4, 4), generator=g, dtype=torch.uint8)
        for i, c in enumerate(labels.tolist()):
            clips[i, :, c] += 200
        return DataLoader(TensorDataset(clips, labels), batch_size=8)

    train, test = split(30), split(12)
    metrics = ev.evaluate(MeanColour(), train, test, device="cpu", normalize=lambda x: x / 255)
    names = [EVAL_KNN_TOP1, EVAL_LINEAR_TOP1, "eval/recall_at_1", "eval/recall_at_5", "eval/recall_at_10"]
    assert metrics == {name: 1.0 for name in names}
    only_knn = ev.evaluate(
        MeanColour(), train, test, device="cpu", normalize=lambda x: x / 255, linear=False, retrieval=False
    )
    assert only_knn == {EVAL_KNN_TOP1: 1.0}


# --- fine-tuning -------------------------------------------------------------------------


class ColourMix(nn.Module):
    """Trainable stub backbone: a 3 x 3 linear map of a clip's mean colour, (B, 3)."""

    feature_dim = 3

    def __init__(self) -> None:
        super().__init__()
        self.mix = nn.Linear(3, 3)

    def forward(self, x):
        return self.mix(x.mean(dim=(2, 3, 4)))


def coloured_batches(n: int, seed: int):
    """Endless batches of 8 clips uint8 (8, 3, 2, 4, 4) of class c = the channel lit brightest."""
    g = torch.Generator().manual_seed(seed)
    while True:
        labels = torch.randint(0, 3, (8,), generator=g)
        clips = torch.randint(0, 60, (8, 3, 2, 4, 4), generator=g, dtype=torch.uint8)
        clips[torch.arange(8), labels] += 150
        yield clips, labels


def test_finetune_learns_the_task_on_a_copy_and_leaves_the_backbone_alone():
    torch.manual_seed(0)
    backbone = ColourMix()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    model = ev.finetune(backbone, coloured_batches(8, seed=1), num_classes=3, steps=150, device="cpu",
                        normalize=lambda x: x / 255, lr=0.05, weight_decay=0.0)
    assert not model.training and model[0] is not backbone
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())
    clips, labels = next(coloured_batches(8, seed=2))
    loader = DataLoader(TensorDataset(clips, labels), batch_size=3)
    pred, out_labels = ev.predict_videos(model, loader, device="cpu", normalize=lambda x: x / 255)
    assert out_labels.tolist() == labels.tolist() and pred.tolist() == labels.tolist()
    untrained = nn.Sequential(ColourMix(), nn.Linear(3, 3)).eval()
    chance, _ = ev.predict_videos(untrained, loader, device="cpu", normalize=lambda x: x / 255)
    assert chance.tolist() != labels.tolist()  # the task is not solved without the training


class FirstTwoChannels(nn.Module):
    """Stub classifier: the logits of a clip are its mean values of channels 0 and 1."""

    def forward(self, x):
        return x.mean(dim=(2, 3, 4))[:, :2]


def test_predict_videos_averages_the_clips_softmax_as_a_naive_loop_does():
    # video 0: clip logits (10, 0), (0, 3), (0, 3): softmax mean picks 1, the logit mean would pick 0
    # video 1: (6, 0), (0, 1), (0, 1): softmax mean picks 0, a majority vote of the clips would pick 1
    clips = coloured_clips([[(0, 10), (1, 3), (1, 3)], [(0, 6), (1, 1), (1, 1)]]).float()
    labels = torch.tensor([1, 0])
    pred, _ = ev.predict_videos(FirstTwoChannels(), DataLoader(TensorDataset(clips, labels), batch_size=1),
                                device="cpu", normalize=lambda x: x)
    naive = []
    for video in clips:
        probs = [torch.softmax(clip.mean(dim=(1, 2, 3))[:2], dim=0) for clip in video]
        naive.append(int(torch.stack(probs).mean(dim=0).argmax()))
    assert pred.tolist() == naive == [1, 0]


# --- argument validation ---------------------------------------------------------------

X, Y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: ev.knn_top1(X, Y, X, Y, k=0), "k"),
        (lambda: ev.knn_top1(X, Y, X, Y, temperature=0.0), "temperature"),
        (lambda: ev.knn_top1(X, Y, X, Y, num_classes=2), "num_classes"),
        (lambda: ev.knn_top1(X, Y[:5], X, Y), "train_labels"),
        (lambda: ev.knn_top1(X, Y, X, Y[:5]), "test_labels"),
        (lambda: ev.knn_top1(X[:0], Y[:0], X, Y), "train_feats"),
        (lambda: ev.knn_top1(X, Y, X[:0], Y[:0]), "test_feats"),
        (lambda: ev.knn_top1(X, Y, X[:, :3], Y), "test_feats"),
        (lambda: ev.knn_top1(X, Y.float(), X, Y), "train_labels"),
        (lambda: ev.linear_probe_top1(X, Y, X, Y, epochs=0), "epochs"),
        (lambda: ev.linear_probe_top1(X, Y, X, Y, lr=-1.0), "lr"),
        (lambda: ev.linear_probe_top1(X, Y[:5], X, Y), "train_labels"),
        (lambda: ev.retrieval_recall(X, Y, X, Y, ks=()), "ks"),
        (lambda: ev.retrieval_recall(X, Y, X, Y, ks=(1, 0)), "ks"),
        (lambda: ev.retrieval_recall(X, Y, X, Y[:5]), "test_labels"),
        (lambda: ev.extract_features(MeanColour(), [], device="cpu", normalize=lambda x: x), "loader"),
        (lambda: ev.finetune(ColourMix(), iter([]), num_classes=3, steps=0, device="cpu", normalize=lambda x: x),
         "steps"),
        (lambda: ev.finetune(ColourMix(), iter([]), num_classes=1, steps=5, device="cpu", normalize=lambda x: x),
         "num_classes"),
        (lambda: ev.predict_videos(MeanColour(), [], device="cpu", normalize=lambda x: x), "loader"),
    ],
)
def test_invalid_arguments_raise_value_error_naming_them(call, name):
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        call()
