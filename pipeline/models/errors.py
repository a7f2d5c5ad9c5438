"""The one exception a model loader raises when weights cannot be had.

Loading real weights fails in many library-specific ways (a urllib error, a
``LocalEntryNotFoundError``, an ``OSError`` from diffusers, a missing file). The user needs the
same three facts every time: which model, where we looked, and how to provide it. Loaders
raise :class:`ModelUnavailableError` ``from None`` with exactly that, so the traceback is one
readable message instead of a chain of library internals.
"""

from __future__ import annotations

from collections.abc import Sequence


class ModelUnavailableError(RuntimeError):
    """Model weights are absent locally and cannot be fetched (offline, or a bad path).

    Attributes:
        model: human-readable model identity, e.g. ``"CLIP ViT-B-16-quickgelu (pretrained='openai')"``.
        reason: why it is unavailable, one sentence.
        looked_in: the places searched (paths, cache directories, URLs).
        remedies: ways to provide the weights, most direct first.
    """

    def __init__(self, model: str, *, reason: str, looked_in: Sequence[str], remedies: Sequence[str]) -> None:
        self.model = model
        self.reason = reason
        self.looked_in = tuple(looked_in)
        self.remedies = tuple(remedies)
        super().__init__(self._format())

    def _format(self) -> str:
        lines = [f"Model weights unavailable: {self.model}.", f"Reason: {self.reason}"]
        if self.looked_in:
            lines.append("Looked in:")
            lines.extend(f"  - {place}" for place in self.looked_in)
        if self.remedies:
            lines.append("To provide the weights, do one of:")
            lines.extend(f"  {i}. {remedy}" for i, remedy in enumerate(self.remedies, start=1))
        return "\n".join(lines)
