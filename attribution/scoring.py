"""The scorer protocol: every attribution method is a class that fits once on prepared inputs, then
scores training shards. Classes register themselves under the method names they declare, with their
config dataclass and the levels they support, so nothing above them switches on method names.

A new method is one subclass:

    class MyMethod(Scorer):
        methods = ("mine",)
        config_class = MyConfig
        def fit(self, prepared): ...
        def score(self, shard_indices, per_token=None): ...  # -> ShardScores
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

if TYPE_CHECKING:
    from attribution.sources import Prepared

SCORERS: dict[str, type[Scorer]] = {}


@dataclass(frozen=True)
class TokenTargets:
    """What token rows are about: row k is `weights[k] @ (influence on each target)`, named keys[k]
    (a target group's mean, or one target)."""

    keys: list[str]
    weights: np.ndarray  # (n_keys x n_targets)


@dataclass
class ShardScores:
    """One shard's scores: every (target, train item) pair, and with token targets, every predicted
    token of every train item (the item's `ItemText` order), one row per token-target key."""

    example: torch.Tensor  # (n_targets x n_shard)
    tokens: list[np.ndarray] | None = None  # per train item of the shard: (n_keys x n_predicted_tokens)


class Scorer(ABC):
    """One attribution method, fitted on a `Prepared` and scoring training shards by index.

    Class attributes a subclass declares:
    - `methods`: the method names it registers (`--method` values);
    - `config_class`: its config dataclass (user parameters; `params()` goes into run ids);
    - `token_level`: whether it scores the segment and token levels (`score` with token targets);
    - `persistent_fit`: whether `fit` leaves state in `work_dir` that another process with the same
      work_dir reuses (a sharded run fits once before fanning out).
    """

    methods: ClassVar[tuple[str, ...]] = ()
    config_class: ClassVar[type]
    token_level: ClassVar[bool] = False
    persistent_fit: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for method in cls.methods:
            if method in SCORERS and SCORERS[method].__qualname__ != cls.__qualname__:
                raise TypeError(f"method {method!r} is registered twice ({SCORERS[method].__name__})")
            SCORERS[method] = cls

    def __init__(
        self,
        method: str,
        config: Any,
        device: torch.device,
        work_dir: Path,
        checkpoints: Sequence[dict] | None = None,
        seed: int = 0,
        progress: bool = False,
    ):
        self.method, self.config, self.device, self.work_dir = method, config, device, Path(work_dir)
        self.checkpoints, self.seed, self.progress = checkpoints, seed, progress

    @classmethod
    def make_config(cls, method: str, params: dict) -> Any:
        """The config dataclass from user params (an unknown key is a TypeError: the user's error)."""
        return cls.config_class(**params)

    @abstractmethod
    def fit(self, prepared: Prepared) -> None:
        """Everything every shard shares (factors, features, target gradients)."""

    @abstractmethod
    def score(self, shard_indices: Sequence[int], per_token: TokenTargets | None = None) -> ShardScores:
        """Scores of the training items at `shard_indices` (indices into prepared.train_items); their
        token rows too when `per_token` names what those rows are about (token_level methods only)."""


def scorer_class(method: str) -> type[Scorer]:
    try:
        return SCORERS[method]
    except KeyError:
        raise ValueError(f"unknown method {method!r}; use one of {', '.join(SCORERS)}") from None
