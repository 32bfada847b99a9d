"""Evaluation: on frozen backbone features weighted kNN, linear probe and retrieval;
supervised fine-tuning of a copy of the backbone where a run asks for it.

Features are one L2-normalised vector per video: each of the K clips of a video is embedded
and L2-normalised, the K vectors are averaged and the mean is L2-normalised again, so every
clip counts equally whatever its feature norm. All metrics compare features by cosine
similarity and return accuracies / recalls in [0, 1].
"""
from __future__ import annotations

import contextlib
import copy
from typing import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from paramcrop import checks
from paramcrop.schedules import warmup_cosine
from paramcrop.sinks import EVAL_KNN_TOP1, EVAL_LINEAR_TOP1

RETRIEVAL_KS = (1, 5, 10)
_CHUNK = 1024  # test queries per similarity block: bounds memory at _CHUNK x N_train
_SMALL_PROBE = 1 << 24  # N_train * D * classes below which a CPU probe runs on one thread


def recall_metric_name(k: int) -> str:
    """Metric name of retrieval recall@k, e.g. ``eval/recall_at_5``."""
    return f"eval/recall_at_{k}"


# --- feature extraction ----------------------------------------------------------------


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    *,
    device: torch.device | str,
    normalize: Callable[[Tensor], Tensor],
) -> tuple[Tensor, Tensor]:
    """Embed every video of ``loader`` with the frozen ``backbone``.

    ``loader`` yields ``(clips uint8 (B, K, 3, T, H, W), labels (B,))``; ``(B, 3, T, H, W)``
    is read as K = 1. ``normalize`` maps float ``(B*K, 3, T, H, W)`` on the 0-255 scale to the
    backbone input. Returns ``features float32 (N, D)`` (per-clip L2-normalised, averaged over
    the K clips, re-normalised) and ``labels long (N,)``, both on the CPU.

    Runs under ``torch.no_grad()`` (not ``inference_mode``: the features feed the autograd of
    the linear probe) with every module of ``backbone`` in eval mode; each module's previous
    mode is restored afterwards, also on error.
    """
    modes = [(m, m.training) for m in backbone.modules()]
    backbone.eval()
    feats: list[Tensor] = []
    labels: list[Tensor] = []
    try:
        for clips, y in _video_batches(loader):
            b, k = clips.shape[:2]
            x = normalize(clips.to(device, non_blocking=True).flatten(0, 1).float())
            z = F.normalize(backbone(x).float(), dim=1)  # (B*K, D)
            feats.append(F.normalize(z.view(b, k, -1).mean(dim=1), dim=1).cpu())
            labels.append(y.long().cpu())
    finally:
        for m, training in modes:
            m.training = training
    return torch.cat(feats), torch.cat(labels)


def _video_batches(loader: Iterable[tuple[Tensor, Tensor]]) -> Iterator[tuple[Tensor, Tensor]]:
    """``loader``'s batches as ``(clips (B, K, 3, T, H, W), labels (B,))``, a ``(B, 3, T, H, W)``
    batch read as K = 1; ``ValueError`` for other shapes or a loader without batches."""
    empty = True
    for clips, y in loader:
        empty = False
        if clips.dim() == 5:
            clips = clips.unsqueeze(1)
        if clips.dim() != 6:
            raise ValueError(f"loader: clips must be (B, K, 3, T, H, W), got shape {tuple(clips.shape)}")
        if y.shape != clips.shape[:1]:
            raise ValueError(f"loader: labels must have shape ({clips.shape[0]},), got {tuple(y.shape)}")
        yield clips, y
    if empty:
        raise ValueError("loader: yielded no batches")


# --- shared helpers --------------------------------------------------------------------


def _check_split(feats: Tensor, labels: Tensor, name: str) -> None:
    if feats.dim() != 2 or feats.shape[0] == 0:
        raise ValueError(f"{name}_feats: expected a non-empty (N, D) tensor, got {tuple(feats.shape)}")
    if labels.dim() != 1 or labels.shape[0] != feats.shape[0]:
        raise ValueError(
            f"{name}_labels: expected shape ({feats.shape[0]},) to match {name}_feats, "
            f"got {tuple(labels.shape)}"
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{name}_labels: expected an integer tensor, got {labels.dtype}")
    if int(labels.min()) < 0:
        raise ValueError(f"{name}_labels: class indices must be >= 0")


def _check_queries(train_feats: Tensor, test_feats: Tensor) -> None:
    if test_feats.dim() != 2 or test_feats.shape[0] == 0 or test_feats.shape[1] != train_feats.shape[1]:
        raise ValueError(
            f"test_feats: expected a non-empty (N, {train_feats.shape[1]}) tensor, got {tuple(test_feats.shape)}"
        )


def _check_inputs(train_feats: Tensor, train_labels: Tensor, test_feats: Tensor, test_labels: Tensor) -> None:
    _check_split(train_feats, train_labels, "train")
    _check_split(test_feats, test_labels, "test")
    if train_feats.shape[1] != test_feats.shape[1]:
        raise ValueError(
            f"test_feats: feature dimension {test_feats.shape[1]} differs from "
            f"train_feats' {train_feats.shape[1]}"
        )


def _nearest(train_feats: Tensor, test_feats: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Cosine similarities ``(N_test, k)`` and train indices ``(N_test, k)`` of the k nearest
    train samples of each test sample, most similar first; k is capped at N_train."""
    k = min(k, train_feats.shape[0])
    train = F.normalize(train_feats.float(), dim=1)
    test = F.normalize(test_feats.float(), dim=1)
    sims, idx = [], []
    for start in range(0, test.shape[0], _CHUNK):
        s, i = (test[start:start + _CHUNK] @ train.T).topk(k, dim=1)
        sims.append(s)
        idx.append(i)
    return torch.cat(sims), torch.cat(idx)


# --- weighted kNN ----------------------------------------------------------------------


def knn_predict(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    *,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
) -> Tensor:
    """Weighted-kNN class predictions ``long (N_test,)`` (Wu et al. 2018, DINO).

    Each of the k most cosine-similar train samples votes for its class with weight
    ``exp(sim / temperature)``; the class with the largest total wins (lowest index on a tie).
    ``k`` larger than N_train uses all train samples.
    """
    checks.positive("k", k, integer=True)
    checks.positive("temperature", temperature)
    _check_split(train_feats, train_labels, "train")
    _check_queries(train_feats, test_feats)
    max_label = int(train_labels.max())
    if num_classes is None:
        num_classes = max_label + 1
    elif num_classes <= max_label:
        raise ValueError(f"num_classes: {num_classes} is not above the largest train label {max_label}")
    sims, idx = _nearest(train_feats, test_feats, k)
    # Shifting by each query's best similarity scales its votes by a common factor:
    # same winner as exp(sim / T), without overflow at small temperatures.
    weights = torch.exp((sims - sims[:, :1]) / temperature)
    neighbour_labels = train_labels.to(idx.device).long()[idx]
    votes = torch.zeros(idx.shape[0], num_classes, device=idx.device)
    votes.scatter_add_(1, neighbour_labels, weights)
    return votes.argmax(dim=1)


def knn_top1(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    test_labels: Tensor,
    *,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
) -> float:
    """Weighted-kNN top-1 accuracy in [0, 1] of test on train features ``(N, D)``; see :func:`knn_predict`."""
    _check_inputs(train_feats, train_labels, test_feats, test_labels)
    pred = knn_predict(
        train_feats, train_labels, test_feats, k=k, temperature=temperature, num_classes=num_classes
    )
    return (pred.cpu() == test_labels.cpu().long()).float().mean().item()


# --- linear probe ----------------------------------------------------------------------


@contextlib.contextmanager
def _intra_op_threads(n: int):
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def linear_probe_predict(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    *,
    epochs: int = 100,
    lr: float = 1.0,
    weight_decay: float = 1e-3,
    seed: int = 0,
    num_classes: int | None = None,
) -> Tensor:
    """Class predictions ``long (N_test,)`` of a multinomial logistic regression on frozen features ``(N, D)``.

    Features are L2-normalised, then standardised with the train mean and std. The probe minimises
    ``mean cross-entropy + weight_decay / 2 * ||W||^2`` (bias not decayed) full-batch with L-BFGS
    (strong-Wolfe line search, at most ``epochs`` iterations, step size ``lr``) over ``num_classes``
    classes (default: the largest train label + 1). The problem is convex, so the result hardly
    depends on the initial weights, which are drawn from ``seed`` with a private generator: the
    same inputs and seed give the same predictions.

    Runs on the device of ``train_feats``. A small probe on the CPU runs with one intra-op
    thread (restored afterwards): its many tiny matmuls only pay thread synchronisation,
    which on a busy machine made a 500 x 256 probe take seconds instead of ~20 ms.
    """
    _check_split(train_feats, train_labels, "train")
    _check_queries(train_feats, test_feats)
    checks.positive("epochs", epochs, integer=True)
    checks.positive("lr", lr)
    checks.at_least("weight_decay", weight_decay, 0)
    device = train_feats.device
    x_train = F.normalize(train_feats.detach().float(), dim=1)
    x_test = F.normalize(test_feats.detach().float().to(device), dim=1)
    mean, std = x_train.mean(dim=0), x_train.std(dim=0, unbiased=False).clamp_min(1e-6)
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    y_train = train_labels.to(device).long()
    num_classes = int(y_train.max()) + 1 if num_classes is None else num_classes

    gen = torch.Generator().manual_seed(seed)
    dim = x_train.shape[1]
    weight = (torch.randn(num_classes, dim, generator=gen) * 0.01).to(device).requires_grad_()
    bias = torch.zeros(num_classes, device=device, requires_grad=True)
    opt = torch.optim.LBFGS(
        [weight, bias], lr=lr, max_iter=epochs, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x_train @ weight.T + bias, y_train)
        loss = loss + 0.5 * weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    small = device.type == "cpu" and x_train.numel() * num_classes < _SMALL_PROBE
    with torch.enable_grad(), _intra_op_threads(1) if small else contextlib.nullcontext():
        opt.step(closure)
    with torch.no_grad():
        return (x_test @ weight.T + bias).argmax(dim=1)


def linear_probe_top1(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    test_labels: Tensor,
    *,
    epochs: int = 100,
    lr: float = 1.0,
    weight_decay: float = 1e-3,
    seed: int = 0,
) -> float:
    """Top-1 accuracy in [0, 1] of :func:`linear_probe_predict` on ``test_feats`` (classes: up to the
    largest label of either split)."""
    _check_inputs(train_feats, train_labels, test_feats, test_labels)
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    pred = linear_probe_predict(train_feats, train_labels, test_feats, epochs=epochs, lr=lr,
                                weight_decay=weight_decay, seed=seed, num_classes=num_classes)
    return (pred == test_labels.to(pred.device).long()).float().mean().item()


# --- retrieval -------------------------------------------------------------------------


def retrieval_recall(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    test_labels: Tensor,
    ks: Sequence[int] = RETRIEVAL_KS,
) -> dict[int, float]:
    """Clip retrieval recall@k in [0, 1] for each k in ``ks``.

    Each test feature ``(N_test, D)`` queries the train features ``(N_train, D)`` by cosine
    similarity; it is a hit at k if any of its k nearest train samples has its class. A k larger
    than N_train uses all train samples.
    """
    _check_inputs(train_feats, train_labels, test_feats, test_labels)
    ks = tuple(ks)
    if not ks:
        raise ValueError("ks must be a non-empty sequence of integers > 0, got ()")
    for i, k in enumerate(ks):
        checks.positive(f"ks[{i}]", k, integer=True)
    _, idx = _nearest(train_feats, test_feats, max(ks))
    match = train_labels.to(idx.device).long()[idx] == test_labels.to(idx.device).long()[:, None]
    hit_at = match.cummax(dim=1).values.float().mean(dim=0)  # (k_max,): hit within the first j+1
    return {k: hit_at[min(k, hit_at.shape[0]) - 1].item() for k in ks}


# --- fine-tuning -----------------------------------------------------------------------


def finetune(
    backbone: nn.Module,
    batches: Iterator[tuple[Tensor, Tensor]],
    *,
    num_classes: int,
    steps: int,
    device: torch.device | str,
    normalize: Callable[[Tensor], Tensor],
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    warmup_fraction: float = 0.1,
) -> nn.Sequential:
    """Supervised fine-tuning of a copy of ``backbone`` (``backbone`` itself is left as it is).

    A new linear classifier on the copy's pooled features ``(B, backbone.feature_dim)``; ``steps``
    AdamW steps of cross-entropy on ``batches`` (``uint8 (B, 3, T, H, W)`` clips, ``(B,)`` labels),
    the learning rate warmed up linearly over the first ``warmup_fraction`` of the steps, then
    cosine-decayed towards 0. Returns ``nn.Sequential(backbone copy, classifier)`` in eval mode,
    mapping normalised clips to logits ``(B, num_classes)``.
    """
    checks.positive("steps", steps, integer=True)
    checks.at_least("num_classes", num_classes, 2, integer=True)
    checks.positive("lr", lr)
    model = nn.Sequential(copy.deepcopy(backbone), nn.Linear(backbone.feature_dim, num_classes)).to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    warmup = max(1, round(warmup_fraction * steps))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, warmup, steps))
    with torch.enable_grad():
        for _ in range(steps):
            clips, labels = next(batches)
            logits = model(normalize(clips.to(device, non_blocking=True).float()))
            loss = F.cross_entropy(logits, labels.to(device).long())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    return model.eval()


@torch.no_grad()
def predict_videos(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    *,
    device: torch.device | str,
    normalize: Callable[[Tensor], Tensor],
) -> tuple[Tensor, Tensor]:
    """Predicted classes and labels ``long (N,)`` of every video of ``loader`` (batches as in
    :func:`extract_features`) by a classifier ``model`` (normalised clips -> logits): a video's
    class is the argmax of its clips' softmax averaged over its K clips. Both on the CPU."""
    preds: list[Tensor] = []
    labels: list[Tensor] = []
    for clips, y in _video_batches(loader):
        b, k = clips.shape[:2]
        logits = model(normalize(clips.to(device, non_blocking=True).flatten(0, 1).float())).float()
        preds.append(logits.softmax(dim=1).view(b, k, -1).mean(dim=1).argmax(dim=1).cpu())
        labels.append(y.long().cpu())
    return torch.cat(preds), torch.cat(labels)


def evaluate(
    backbone: nn.Module,
    train_loader: Iterable[tuple[Tensor, Tensor]],
    test_loader: Iterable[tuple[Tensor, Tensor]],
    *,
    device: torch.device | str,
    normalize: Callable[[Tensor], Tensor],
    knn_k: int = 20,
    knn_temperature: float = 0.07,
    linear: bool = True,
    retrieval: bool = True,
    knn: bool = True,
) -> dict[str, float]:
    """Extract frozen features of both loaders and compute the evaluation metrics
    (:func:`feature_metrics`). Loaders and ``normalize`` as in :func:`extract_features`; the
    metrics are computed on ``device`` too."""
    train = [t.to(device) for t in extract_features(backbone, train_loader, device=device, normalize=normalize)]
    test = [t.to(device) for t in extract_features(backbone, test_loader, device=device, normalize=normalize)]
    return feature_metrics(*train, *test, knn_k=knn_k, knn_temperature=knn_temperature, linear=linear,
                           retrieval=retrieval, knn=knn)


def evaluate_queries(
    backbone: nn.Module,
    bank_loader: Iterable[tuple[Tensor, Tensor]],
    query_loaders: dict[str, Iterable[tuple[Tensor, Tensor]]],
    *,
    device: torch.device | str,
    normalize: Callable[[Tensor], Tensor],
    knn_k: int = 20,
    knn_temperature: float = 0.07,
    linear: bool = True,
    retrieval: bool = True,
) -> dict[str, tuple[dict[str, float], dict[str, Tensor]]]:
    """Each query split of ``query_loaders`` (name -> loader) evaluated against one memory bank,
    whose features are extracted once: name -> (:func:`feature_evaluation`'s metrics, predictions)."""
    def features(loader):
        return [t.to(device) for t in extract_features(backbone, loader, device=device, normalize=normalize)]

    bank = features(bank_loader)
    return {name: feature_evaluation(*bank, *features(loader), knn_k=knn_k, knn_temperature=knn_temperature,
                                     linear=linear, retrieval=retrieval)
            for name, loader in query_loaders.items()}


def feature_metrics(train_feats: Tensor, train_labels: Tensor, test_feats: Tensor, test_labels: Tensor, *,
                    knn_k: int = 20, knn_temperature: float = 0.07, linear: bool = True, retrieval: bool = True,
                    knn: bool = True) -> dict[str, float]:
    """The evaluation metrics of features already extracted (``(N, D)`` and ``(N,)`` per split):
    ``eval/knn_top1`` if ``knn``, plus ``eval/linear_top1`` if ``linear`` and ``eval/recall_at_{k}``
    for k in 1, 5, 10 if ``retrieval``. One memory bank serves several query splits this way."""
    return feature_evaluation(train_feats, train_labels, test_feats, test_labels, knn_k=knn_k,
                              knn_temperature=knn_temperature, linear=linear, retrieval=retrieval, knn=knn)[0]


def feature_evaluation(train_feats: Tensor, train_labels: Tensor, test_feats: Tensor, test_labels: Tensor, *,
                       knn_k: int = 20, knn_temperature: float = 0.07, linear: bool = True, retrieval: bool = True,
                       knn: bool = True) -> tuple[dict[str, float], dict[str, Tensor]]:
    """:func:`feature_metrics` and the per-query predictions they come from: ``{"knn": long (N_test,),
    "linear": long (N_test,)}`` (those switched on; each top-1 metric is the mean of its
    predictions' agreement with ``test_labels``)."""
    _check_inputs(train_feats, train_labels, test_feats, test_labels)
    labels = test_labels.to(train_feats.device).long()
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    metrics, predictions = {}, {}
    if knn:
        predictions["knn"] = knn_predict(train_feats, train_labels, test_feats, k=knn_k, temperature=knn_temperature,
                                         num_classes=num_classes)
        metrics[EVAL_KNN_TOP1] = (predictions["knn"] == labels).float().mean().item()
    if linear:
        predictions["linear"] = linear_probe_predict(train_feats, train_labels, test_feats, num_classes=num_classes)
        metrics[EVAL_LINEAR_TOP1] = (predictions["linear"] == labels).float().mean().item()
    if retrieval:
        recalls = retrieval_recall(train_feats, train_labels, test_feats, test_labels)
        metrics.update({recall_metric_name(k): v for k, v in recalls.items()})
    return metrics, {name: pred.cpu() for name, pred in predictions.items()}
