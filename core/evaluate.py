"""The paper's measurement of protection (section 5), on descriptors: pure functions, no I/O.

A tracker trains a classifier on feature vectors of many identities, the user's training images being
cloaked. Protection success rate (PSR) = the fraction of the user's *clean* test images the trained
model does NOT classify as the user. Normal accuracy = accuracy on the other identities' test images.
Three classifiers: a linear one (multinomial logistic regression, the paper's transfer-learning head),
nearest centroid and 1-NN.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


class NearestCentroid:
    def fit(self, x: np.ndarray, y: np.ndarray) -> "NearestCentroid":
        self.labels = np.unique(y)
        self.centroids = np.stack([x[y == c].mean(0) for c in self.labels])
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        d = np.linalg.norm(x[:, None, :] - self.centroids[None], axis=2)
        return self.labels[d.argmin(1)]


class LinearClassifier:
    """Softmax regression on descriptors, full-batch L-BFGS with a little L2 (deterministic)."""

    def __init__(self, weight_decay: float = 1e-4, iterations: int = 200):
        self.weight_decay = weight_decay
        self.iterations = iterations

    def fit(self, x: np.ndarray, y: np.ndarray) -> "LinearClassifier":
        self.labels, yi = np.unique(y, return_inverse=True)
        xt = torch.from_numpy(np.asarray(x, np.float64))
        yt = torch.from_numpy(yi)
        self.mean = xt.mean(0)
        xt = xt - self.mean
        w = torch.zeros(xt.shape[1], len(self.labels), dtype=torch.float64, requires_grad=True)
        b = torch.zeros(len(self.labels), dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=self.iterations, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(xt @ w * 10 + b, yt) + self.weight_decay * (w**2).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        self.w, self.b = w.detach(), b.detach()
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        xt = torch.from_numpy(np.asarray(x, np.float64)) - self.mean
        return self.labels[(xt @ self.w * 10 + self.b).argmax(1).numpy()]


class NearestNeighbour:
    """1-NN: the label of the closest training descriptor."""

    def fit(self, x: np.ndarray, y: np.ndarray) -> "NearestNeighbour":
        self.x, self.y = np.asarray(x, np.float64), np.asarray(y)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        d = np.linalg.norm(np.asarray(x, np.float64)[:, None, :] - self.x[None], axis=2)
        return self.y[d.argmin(1)]


TRACKERS = {"linear": LinearClassifier, "centroid": NearestCentroid, "1nn": NearestNeighbour}


@dataclass
class TrackerScore:
    psr: float  # fraction of the user's clean test images NOT classified as the user
    normal_accuracy: float  # accuracy on the other identities' test images


def score_tracker(
    tracker: str,
    train_x: np.ndarray,
    train_y: np.ndarray,
    user: str,
    user_test_x: np.ndarray,
    others_test_x: np.ndarray,
    others_test_y: np.ndarray,
) -> TrackerScore:
    model = TRACKERS[tracker]().fit(train_x, train_y)
    psr = float(np.mean(model.predict(user_test_x) != user)) if len(user_test_x) else float("nan")
    acc = float(np.mean(model.predict(others_test_x) == others_test_y)) if len(others_test_x) else float("nan")
    return TrackerScore(psr, acc)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
