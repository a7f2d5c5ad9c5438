"""Stage D's segmenter (method.md Stage D): a decoder over a frozen CLIP's block tokens, and its losses."""
