"""Images computed in fixed groups (a batch of `batch_images` per forward), served to the runner one id
at a time: the per-image stages that batch (stage A, cams, round 2's features) share it."""

from __future__ import annotations

from typing import Any, Callable


class ImageGroups:
    """Images computed in fixed groups of `size` by position in `order`, served one id at a time.

    Groups are fixed by position (not by the runner's chunks), so a result never depends on worker
    counts or on which images a resumed run had left; the rest of the last group waits here until
    the runner asks for it."""

    def __init__(self, order: list[str], size: int) -> None:
        self.order, self.size = order, size
        self.position = {image_id: n for n, image_id in enumerate(order)}

    def group(self, image_id: str) -> list[str]:
        start = self.position[image_id] // self.size * self.size
        return self.order[start:start + self.size]

    def serve(self, compute: Callable[[list[str]], list[Any]]) -> Callable[[str], Any]:
        done: dict[str, Any] = {}

        def one(image_id: str):
            if image_id not in done:
                group = self.group(image_id)
                done.clear()
                done.update(zip(group, compute(group)))
            return done.pop(image_id)

        return one
