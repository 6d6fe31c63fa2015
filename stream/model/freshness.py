"""How fresh the served model is: when the trainer publishes, and how far behind scorers are.

Pure logic, no I/O. The trainer learns in batches and checkpoints after each; a scorer can
only serve what was *published*. :class:`PublicationRule` bounds the gap: a version is
published at the end of a batch once the learned but unpublished examples reach
``model.publish_every`` (1 by default: after every batch that changed the model, so a
linear model is served at most one training batch behind), or once ``model.publish_interval``
has passed since the last publication (a bound in time for models configured to publish
less often, e.g. large trees). A trainer that has not published yet (it just started, or it
resumed and does not know what was published) publishes its first change at once.

:func:`served_lag` is what a scorer reports: examples the trainer has learned that its
served version has not, and the age of that version (``driftwatch_model_lag_examples``,
``driftwatch_model_served_age_seconds``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PublicationRule:
    """When a trainer publishes a new version.

    Parameters
    ----------
    max_examples
        Publish once this many learned examples are unpublished (``model.publish_every``).
    max_seconds
        Publish whatever is unpublished once this long has passed since the last
        publication (``model.publish_interval``).

    Examples
    --------
    >>> rule = PublicationRule(max_examples=1000, max_seconds=5.0)
    >>> rule.due(unpublished=0, since_published_s=60.0)  # nothing new: never
    False
    >>> rule.due(unpublished=10, since_published_s=None)  # nothing published yet
    True
    >>> rule.due(10, 1.0), rule.due(1000, 1.0), rule.due(10, 5.0)
    (False, True, True)
    """

    max_examples: int
    max_seconds: float

    def __post_init__(self) -> None:
        if self.max_examples < 1:
            raise ValueError(f"max_examples must be at least 1, got {self.max_examples}")
        if self.max_seconds < 0:
            raise ValueError(f"max_seconds must not be negative, got {self.max_seconds}")

    def due(self, unpublished: int, since_published_s: float | None) -> bool:
        """Whether to publish now.

        Parameters
        ----------
        unpublished
            Examples learned (and checkpointed) since the last publication.
        since_published_s
            Seconds since the last publication; ``None`` when this trainer has not
            published (or does not know when it last did).
        """
        if unpublished <= 0:
            return False
        if since_published_s is None:
            return True
        return unpublished >= self.max_examples or since_published_s >= self.max_seconds


@dataclass(frozen=True, slots=True)
class Lag:
    """How far the served version is behind the trainer.

    Attributes
    ----------
    examples
        Examples learned by the trainer minus examples in the served version (never
        negative: a trainer that restarted from an older checkpoint is not "ahead").
    age_s
        Seconds since the served version was published; ``None`` while the untrained
        initial model is served (it was never published).
    """

    examples: int
    age_s: float | None


def served_lag(
    trainer_learned: int | None, served_learned: int, published_at_ms: int | None, now_ms: int
) -> Lag:
    """The lag of a served version with ``served_learned`` examples, published at
    ``published_at_ms`` (epoch ms), behind a trainer that has learned ``trainer_learned``
    (``None``: no trainer checkpoint yet, so nothing learned).

    Examples
    --------
    >>> served_lag(1500, 1000, published_at_ms=10_000, now_ms=12_500)
    Lag(examples=500, age_s=2.5)
    >>> served_lag(None, 0, None, now_ms=12_500)
    Lag(examples=0, age_s=None)
    >>> served_lag(900, 1000, 10_000, now_ms=9_000)  # clocks apart: never negative
    Lag(examples=0, age_s=0.0)
    """
    examples = max(0, (trainer_learned or 0) - served_learned)
    age = None if published_at_ms is None else max(0.0, (now_ms - published_at_ms) / 1000.0)
    return Lag(examples, age)
