"""Structured outputs: one grammar matcher per constrained request, on host, giving token masks.

Where it sits: the server turns `response_format` / forced tool calls into a `GrammarSpec` and checks
it here (a bad schema is a 400 before admission). The orchestrator keeps one `GrammarMatcher` per
constrained request: before each decode step it writes the request's row of the step's bitmask
(`fill_bitmask`), the engine applies that mask to the logits on device (`engine/token_mask.py`), and
the sampled token advances the matcher (`accept`). When the grammar is complete only EOS is allowed.

The grammar engine is llguidance (what llama.cpp, vLLM and SGLang use): it builds its lexer lazily,
so a JSON schema compiles in about a millisecond, and a mask costs tens of microseconds per token
with the SmolLM2 vocabulary (measured against xgrammar and outlines-core: bench/structured_outputs/).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import llguidance
import llguidance.numpy as llg_numpy
import numpy as np

if TYPE_CHECKING:  # a type stub only
    from llguidance._lib import JsonCompileOptions

# The JSON the model writes: separators as json.dumps writes them, no free-form whitespace (a small
# model given free whitespace can fill max_tokens with newlines).
JSON_LAYOUT: JsonCompileOptions = {
    "whitespace_flexible": False,
    "key_separator": ": ",
    "item_separator": ", ",
}
_LENIENT: JsonCompileOptions = {"lenient": True}  # ignore keywords the grammar cannot enforce


@runtime_checkable
class SerializedTokenizer(Protocol):
    """A tokenizer that can hand over its Hugging Face tokenizer.json (the grammar engine reads it)."""

    eos_token_ids: frozenset[int]

    def tokenizer_json(self) -> str: ...


class GrammarError(ValueError):
    """The grammar (a JSON schema, a lark grammar) cannot be used; the message says why."""


@dataclass(frozen=True)
class GrammarSpec:
    """What a request's output must match, as llguidance's grammar text."""

    kind: Literal["json_object", "json_schema", "lark"]
    grammar: str  # llguidance's serialized grammar

    @staticmethod
    def json_object() -> GrammarSpec:
        """OpenAI `{"type": "json_object"}`: any JSON object."""
        return GrammarSpec("json_object", _json_grammar({"type": "object"}, lenient=False))

    @staticmethod
    def json_schema(schema: dict[str, Any], strict: bool) -> GrammarSpec:
        """OpenAI `json_schema`. `strict`: a keyword the grammar cannot enforce is an error; otherwise
        such keywords are ignored (the output is still constrained by everything else)."""
        return GrammarSpec("json_schema", _json_grammar(schema, lenient=not strict))

    @staticmethod
    def lark(text: str) -> GrammarSpec:
        """A lark grammar (llguidance's dialect: `%json {...}` embeds a JSON schema)."""
        return GrammarSpec("lark", llguidance.LLMatcher.grammar_from_lark(text))

    def check(self) -> None:
        """Raise `GrammarError` naming the problem (unsupported keyword, bad regex, ...)."""
        error = llguidance.LLMatcher.validate_grammar(self.grammar)
        if error:
            raise GrammarError(error)


def _json_grammar(schema: dict[str, Any], lenient: bool) -> str:
    if not isinstance(schema, dict):
        raise GrammarError(f"a JSON schema must be an object, got {type(schema).__name__}")
    try:
        return str(
            llguidance.LLMatcher.grammar_from_json_schema(
                json.dumps(schema), defaults=JSON_LAYOUT, overrides=_LENIENT if lenient else None
            )
        )
    except (TypeError, ValueError) as exc:
        raise GrammarError(str(exc)) from None


class GrammarCompiler:
    """Builds matchers for one tokenizer (its llguidance view costs ~2 s to build: once per server)."""

    def __init__(self, tokenizer_json: str, eos_token_id: int, vocab_size: int) -> None:
        self.vocab_size = vocab_size  # the model's logits width (may exceed the tokenizer's vocabulary)
        self.words = (vocab_size + 31) // 32  # int32 words per bitmask row
        self._tokenizer = llguidance.LLTokenizer(tokenizer_json, n_vocab=vocab_size, eos_token=eos_token_id)

    @classmethod
    def of(cls, tokenizer: SerializedTokenizer, vocab_size: int) -> GrammarCompiler:
        """For `tokenizer`; a complete grammar allows its lowest EOS id (SmolLM2 has one)."""
        return cls(tokenizer.tokenizer_json(), min(tokenizer.eos_token_ids), vocab_size)

    def matcher(self, spec: GrammarSpec) -> GrammarMatcher:
        spec.check()
        m = llguidance.LLMatcher(self._tokenizer, spec.grammar)
        if m.is_error():
            raise GrammarError(m.get_error())
        return GrammarMatcher(m, self.words)

    def allocate(self, rows: int) -> np.ndarray:
        """A bitmask of `rows` rows, every token allowed (int32 [rows, words])."""
        return np.full((rows, self.words), -1, np.int32)


class GrammarMatcher:
    """One request's position in its grammar."""

    def __init__(self, matcher: llguidance.LLMatcher, words: int) -> None:
        self._m = matcher
        self._words = words
        self._scratch = llg_numpy.allocate_token_bitmask(1, words * 32)

    @property
    def done(self) -> bool:
        """The grammar is complete: only EOS may follow."""
        return bool(self._m.is_stopped())

    def fill_bitmask(self, row: np.ndarray) -> None:
        """Write the tokens allowed next into `row` (int32 [words]; bit t%32 of word t//32 = token t)."""
        row[:] = self.mask()

    def mask(self) -> np.ndarray:
        """The tokens allowed next, int32 [words] (a view of a buffer the next call overwrites)."""
        llg_numpy.fill_next_token_bitmask(self._m, self._scratch, 0)
        return self._scratch[0, : self._words]

    def accept(self, token: int) -> bool:
        """Advance by the sampled token; False if the grammar does not allow it (it then stays put)."""
        if self.done or self._m.validate_tokens([token]) != 1:
            return False
        return bool(self._m.consume_token(token))
