"""Figures of an evaluation (matplotlib, no display needed): ROC, precision-recall,
calibration and feature importances, as the training run logs them."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only: no display on a cluster driver

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from lakehouse.evaluation import Histogram


def roc(model: Histogram, baseline: Histogram | None, title: str) -> Figure:
    fig, ax = plt.subplots(figsize=(5, 5))
    fpr, tpr = model.roc_curve()
    ax.plot(fpr, tpr, label=f"model (AUC {model.auc_roc():.3f})")
    if baseline is not None:
        bfpr, btpr = baseline.roc_curve()
        ax.plot(bfpr, btpr, label=f"historical rate (AUC {baseline.auc_roc():.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def precision_recall(model: Histogram, threshold: float, title: str) -> Figure:
    fig, ax = plt.subplots(figsize=(5, 5))
    recall, precision = model.pr_curve()
    ax.plot(recall, precision, label=f"model (area {model.auc_pr():.3f})")
    at = model.at_threshold(threshold)
    ax.scatter([at["recall"]], [at["precision"]], color="red", zorder=3,
               label=f"threshold {threshold:.3f}")
    rate = model.positives.sum() / max(model.rows, 1)
    ax.axhline(rate, color="grey", linestyle=":", label=f"disrupted share {rate:.3f}")
    ax.set(xlabel="recall", ylabel="precision", title=title, xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper right")
    fig.tight_layout()
    return fig


def calibration(model: Histogram, title: str) -> Figure:
    fig, ax = plt.subplots(figsize=(5, 5))
    points = model.calibration()
    ax.plot([p for p, _, _ in points], [o for _, o, _ in points], marker="o", label="model")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
    ax.set(xlabel="mean predicted probability", ylabel="observed disruption rate", title=title,
           xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left")
    fig.tight_layout()
    return fig


def importances(values: dict[str, float], title: str, top: int = 20) -> Figure:
    items = list(values.items())[:top][::-1]
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(items) + 1.2))
    ax.barh([k for k, _ in items], [v for _, v in items])
    ax.set(title=title)
    fig.tight_layout()
    return fig


def close(fig: Figure) -> None:
    plt.close(fig)
