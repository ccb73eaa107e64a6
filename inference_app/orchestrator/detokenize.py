"""Incremental detokenization with stop strings.

Decoding token by token is wrong for byte-level BPE: one character (an emoji, a CJK glyph) can span
several tokens, and a token's text can depend on its neighbours (leading spaces). So we decode a
short window of recent tokens twice — without and with the new tokens — and emit only the
difference, and we hold text back while it ends in an incomplete UTF-8 sequence (U+FFFD).

Stop strings are matched on text, not tokens: text that could still become the start of a stop
string is held back until it cannot, so a streaming client never sees part of a stop string.
Each `Job` owns one decoder and one filter; the orchestrator's detokenize stage feeds them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from inference_app.engine.api import Tokenizer

REPLACEMENT_CHAR = "\ufffd"
# How many already-emitted tokens to re-decode as left context; enough for any merge/space rule.
_CONTEXT_TOKENS = 6


@dataclass
class IncrementalDecoder:
    """Turns a growing list of token ids into text deltas (the caller never sees partial chars)."""

    tokenizer: Tokenizer
    ids: list[int] = field(default_factory=list)
    _prefix_offset: int = 0  # start of the context window
    _read_offset: int = 0  # tokens before this have been emitted as text

    def add(self, token_id: int) -> str:
        """Append one token; return the newly completed text (possibly empty)."""
        self.ids.append(token_id)
        prefix_text = self.tokenizer.decode(self.ids[self._prefix_offset : self._read_offset])
        full_text = self.tokenizer.decode(self.ids[self._prefix_offset :])
        if full_text.endswith(REPLACEMENT_CHAR) or len(full_text) <= len(prefix_text):
            return ""  # an incomplete character: wait for the next token
        delta = full_text[len(prefix_text) :]
        self._read_offset = len(self.ids)
        self._prefix_offset = max(0, self._read_offset - _CONTEXT_TOKENS)
        return delta

    def flush(self) -> str:
        """Whatever is still held back at the end of the sequence (a dangling partial character)."""
        prefix_text = self.tokenizer.decode(self.ids[self._prefix_offset : self._read_offset])
        full_text = self.tokenizer.decode(self.ids[self._prefix_offset :])
        self._read_offset = len(self.ids)
        return full_text[len(prefix_text) :] if len(full_text) > len(prefix_text) else ""


@dataclass
class StopStringFilter:
    """Holds back text that may begin a stop string; reports when one is complete."""

    stops: Sequence[str]
    _pending: str = ""
    stopped: bool = False

    def feed(self, text: str) -> str:
        """Return the text that is safe to emit now; sets `stopped` when a stop string appeared."""
        if self.stopped:
            return ""
        if not self.stops:
            return text
        buf = self._pending + text
        hits = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            self._pending = ""
            return buf[: min(hits)]
        hold = self._longest_partial_match(buf)
        self._pending = buf[len(buf) - hold :] if hold else ""
        return buf[: len(buf) - hold]

    def flush(self) -> str:
        """At the end of generation the held-back text is ordinary text after all."""
        out, self._pending = ("" if self.stopped else self._pending), ""
        return out

    def _longest_partial_match(self, buf: str) -> int:
        """Length of the longest suffix of `buf` that is a proper prefix of some stop string."""
        best = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(buf)), best, -1):
                if buf.endswith(stop[:n]):
                    best = n
                    break
        return best
