"""The scorer protocol: every attribution method is a class that fits once on prepared inputs, then
scores training shards. Classes register themselves under the method names they declare, with their
config dataclass and the levels they support, so nothing above them switches on method names.

A new method is one subclass:

    class MyMethod(Scorer):
        methods = ("mine",)
        config_class = MyConfig
        def fit(self, prepared): ...
        def score(self, shard_indices, per_token=None): ...
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

if TYPE_CHECKING:
    from attribution.sources import Prepared

SCORERS: dict[str, type[Scorer]] = {}


class Scorer(ABC):
    """One attribution method, fitted on a `Prepared` and scoring training shards by index.

    Class attributes a subclass declares:
    - `methods`: the method names it registers (`--method` values);
    - `config_class`: its config dataclass (user parameters; `params()` goes into run ids);
    - `token_level`: whether it scores the segment and token levels;
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
    def score(self, shard_indices: Sequence[int], per_token: bool = False) -> torch.Tensor:
        """Scores of the training items at `shard_indices` (indices into prepared.train_items)."""


def scorer_class(method: str) -> type[Scorer]:
    try:
        return SCORERS[method]
    except KeyError:
        raise ValueError(f"unknown method {method!r}; use one of {', '.join(SCORERS)}") from None
