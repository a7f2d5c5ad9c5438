"""Names of the registered segmenter architectures, importable without torch (params validation)."""

ARCHITECTURE_NAMES: tuple[str, ...] = ("diclip",)
