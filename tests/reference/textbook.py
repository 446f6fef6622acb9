"""Textbook AdaGrad and FTRL-Proximal logistic regression, one dense numpy model per key, written
from the papers and River's documentation without any of udfs/ (the independent reference the
optimizer tests hold the model code and the job to):

- AdaGrad (Duchi et al. 2011, diagonal form; as River's `optim.AdaGrad` writes it): for each
  coordinate with gradient g, G += g^2, then w -= rate / sqrt(G + eps) * g. The L2 term l2 * w is
  added to the gradient of the coordinates the record lists (River's sparse L2), not to the bias's.
- FTRL-Proximal (McMahan et al. 2013, Algorithm 1): the weights are computed from z and n when
  the record is scored, w = 0 where |z| <= l1, else -(z - sign(z) l1) / ((beta + sqrt(n)) / alpha + l2);
  then for each coordinate sigma = (sqrt(n + g^2) - sqrt(n)) / alpha, z += g - sigma w, n += g^2.
  The bias is one more coordinate, without l1 or l2; a bias that starts at b0 starts with
  z = -b0 beta / alpha (n = 0), the z whose weight is b0.

A key's model starts with zero weights and the bias `initial_bias`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np


@dataclass
class TextbookModel:
    weights: np.ndarray
    bias: float
    updates: int = 0
    accumulators: dict[str, np.ndarray] = field(default_factory=dict)  # the bias's entry last


def _sigmoid(margin: float) -> float:
    return 1.0 / (1.0 + np.exp(-margin))


class TextbookAdaGrad:
    def __init__(self, n_features: int, learning_rate: float, eps: float = 1e-8, l2: float = 0.0,
                 initial_bias: float = 0.0):
        self.n, self.rate, self.eps, self.l2, self.initial_bias = n_features, learning_rate, eps, l2, initial_bias

    def new(self) -> TextbookModel:
        return TextbookModel(np.zeros(self.n), self.initial_bias, accumulators={"g2": np.zeros(self.n + 1)})

    def score(self, model: TextbookModel, x: np.ndarray) -> float:
        return _sigmoid(model.weights @ x + model.bias)

    def learn(self, model: TextbookModel, x: np.ndarray, listed: np.ndarray, y: int, p: float) -> None:
        g = (p - y) * x + self.l2 * model.weights * listed
        g = np.append(g, p - y)
        g2 = model.accumulators["g2"]
        g2 += g * g
        step = self.rate / np.sqrt(g2 + self.eps) * g
        model.weights -= step[:-1]
        model.bias -= step[-1]
        model.updates += 1


class TextbookFtrl:
    def __init__(self, n_features: int, alpha: float, beta: float = 1.0, l1: float = 0.0, l2: float = 0.0,
                 initial_bias: float = 0.0):
        self.n, self.alpha, self.beta, self.l1, self.l2 = n_features, alpha, beta, l1, l2
        self.initial_bias = initial_bias

    def new(self) -> TextbookModel:
        z = np.zeros(self.n + 1)
        z[-1] = -self.initial_bias * self.beta / self.alpha
        model = TextbookModel(np.zeros(self.n), self.initial_bias, accumulators={"z": z, "n": np.zeros(self.n + 1)})
        return model

    def _weights(self, model: TextbookModel) -> tuple[np.ndarray, float]:
        z, n = model.accumulators["z"], model.accumulators["n"]
        l1 = np.append(np.full(self.n, self.l1), 0.0)
        l2 = np.append(np.full(self.n, self.l2), 0.0)
        w = np.where(np.abs(z) <= l1, 0.0, -(z - np.sign(z) * l1) / ((self.beta + np.sqrt(n)) / self.alpha + l2))
        return w[:-1], float(w[-1])

    def score(self, model: TextbookModel, x: np.ndarray) -> float:
        model.weights, model.bias = self._weights(model)
        return _sigmoid(model.weights @ x + model.bias)

    def learn(self, model: TextbookModel, x: np.ndarray, listed: np.ndarray, y: int, p: float) -> None:
        z, n = model.accumulators["z"], model.accumulators["n"]
        w, b = self._weights(model)
        g = np.append((p - y) * x, p - y)
        sigma = (np.sqrt(n + g * g) - np.sqrt(n)) / self.alpha
        z += g - sigma * np.append(w, b)
        n += g * g
        model.weights, model.bias = self._weights(model)
        model.updates += 1


def textbook_run(learner, n_features: int,
                 stream: Iterable[tuple[str, Sequence[int], Sequence[float], int | None]]
                 ) -> tuple[list[float], dict[str, TextbookModel]]:
    """Scores each (key, indices, values, label) of `stream` with its key's model, then learns
    from it when it has a label; returns the scores in order and each key's final model."""
    models: dict[str, TextbookModel] = {}
    scores = []
    for key, indices, values, label in stream:
        model = models.get(key)
        if model is None:
            model = models[key] = learner.new()
        x = np.zeros(n_features)
        listed = np.zeros(n_features)
        x[list(indices)] = values
        listed[list(indices)] = 1.0
        p = learner.score(model, x)
        scores.append(p)
        if label is not None:
            learner.learn(model, x, listed, label, p)
    return scores, models
