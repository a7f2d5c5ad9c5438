"""A Hugging Face ``CLIPTokenizer`` built offline from the BPE table open_clip ships.

The tiny Stable Diffusion needs a transformers tokenizer (the pipeline calls it), and nothing can
be downloaded. open_clip's package carries OpenAI's ``bpe_simple_vocab_16e6.txt.gz``; CLIP's
``vocab.json`` and ``merges.txt`` are derived from it exactly as ``open_clip.SimpleTokenizer``
(and OpenAI's original) builds its encoder: 256 byte symbols, the same 256 with ``</w>``, one
entry per merge, then the two special tokens, 49,408 ids in all.

Padding: SD 2.x's hub tokenizer pads with ``"!"`` (id 0), which as a special token also swallows
every literal ``"!"`` in a prompt (id 0 instead of 256). The tiny pipeline pads with
``<|endoftext|>`` instead, so every prompt tokenises to open_clip's ids; only pad positions differ
(49407 here, 0 in open_clip).

Text cleaning differs in one corner: open_clip runs ``ftfy.fix_text`` and ``html.unescape`` before
tokenising, the transformers tokenizer only NFC-normalises, collapses whitespace and lower-cases.
Plain prompts (the project's) tokenise identically; HTML entities (``&amp;``) or mojibake do not.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
from pathlib import Path

from open_clip.tokenizer import bytes_to_unicode, default_bpe
from transformers import CLIPTokenizer

logger = logging.getLogger(__name__)

from pipeline import atomic

VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
#: merges used by CLIP: lines 1 .. 48894 of the BPE table (line 0 is a header).
_N_MERGES = 49152 - 256 - 2


def clip_bpe_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """CLIP's token->id table and merge list, in open_clip's ``SimpleTokenizer`` order."""
    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    merges = lines[1 : _N_MERGES + 1]
    symbols = list(bytes_to_unicode().values())
    vocab = [*symbols, *(s + "</w>" for s in symbols), *("".join(m.split()) for m in merges), BOS_TOKEN, EOS_TOKEN]
    return {token: i for i, token in enumerate(vocab)}, merges


def write_clip_bpe_files(out_dir: str | os.PathLike[str]) -> Path:
    """Write ``vocab.json`` and ``merges.txt`` into ``out_dir`` (skipped when both exist).

    Files are written under temporary names and renamed, so readers never see partial files.
    """
    out = Path(out_dir)
    if (out / VOCAB_FILE).is_file() and (out / MERGES_FILE).is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_bpe_vocab_and_merges()
    payloads = {
        VOCAB_FILE: json.dumps(vocab, ensure_ascii=False),
        # transformers skips the first line of merges.txt, as CLIP's own files have a header.
        MERGES_FILE: "#version: 0.2\n" + "\n".join(merges) + "\n",
    }
    for name, text in payloads.items():
        atomic.write_text(out / name, text)
    logger.info("wrote CLIP BPE tokenizer files (%d tokens, %d merges) to %s", len(vocab), len(merges), out)
    return out


def build_clip_tokenizer(
    tokenizer_dir: str | os.PathLike[str], *, model_max_length: int, pad_token: str = EOS_TOKEN
) -> CLIPTokenizer:
    """A ``CLIPTokenizer`` over the files in ``tokenizer_dir`` (written there first if absent)."""
    directory = write_clip_bpe_files(tokenizer_dir)
    return CLIPTokenizer.from_pretrained(
        str(directory), model_max_length=model_max_length, pad_token=pad_token, local_files_only=True
    )
