"""Tokenizers through the `tokenizers` library, plus the model's own jinja2 chat template.

Two sources: a Hugging Face `tokenizer.json` (+ `tokenizer_config.json` for the chat template and
EOS), or a GGUF file's vocabulary and merges, rebuilt as the byte-level BPE that llama.cpp runs.
Loaded with the weights (`loader.py`); the engine exposes it as `engine.tokenizer` (the
`api.Tokenizer` protocol) to the server, which encodes prompts, and the orchestrator, which
decodes tokens.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jinja2
import jinja2.sandbox
from tokenizers import AddedToken, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

# GGUF token types (llama.cpp): 3 = control, 4 = user-defined; both must match as whole tokens.
_SPECIAL_TYPES = (3, 4)
# llama.cpp pre-tokenizers we can reproduce: name -> extra splits before the GPT-2 byte-level regex.
_GPT2_PRE = {"smollm": "digits", "default": None, "gpt-2": None, "gpt2": None}


class TextTokenizer:
    """Implements `inference_app.engine.api.Tokenizer` on top of a `tokenizers.Tokenizer`."""

    def __init__(
        self,
        tok: HFTokenizer,
        eos_token_ids: frozenset[int],
        chat_template: str | None,
        special_tokens: dict[str, str] | None = None,
    ) -> None:
        self._tok = tok
        # The same tokenizer with special-token text split like any other text (Hugging Face's
        # `split_special_tokens`): for message contents, which are never control tokens.
        self._as_text = HFTokenizer.from_str(tok.to_str())
        self._as_text.encode_special_tokens = True
        self._special_texts = tuple(t.content for t in tok.get_added_tokens_decoder().values() if t.special)
        self.eos_token_ids = eos_token_ids
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        self.chat_template = chat_template
        self._special = special_tokens or {}

    @property
    def backend(self) -> HFTokenizer:
        return self._tok

    def tokenizer_json(self) -> str:
        """Hugging Face's tokenizer.json text (what the structured-output grammar engine reads)."""
        return str(self._tok.to_str())

    def encode(self, text: str) -> list[int]:
        return _encode(self._tok, text)

    def encode_chat(
        self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = True
    ) -> list[int]:
        """Prompt ids of a conversation rendered with the chat template, where the template's own
        markers are control tokens but message contents are text: `<|im_end|>` typed into a message
        stays those characters, so a user cannot close their turn and forge another role's."""
        if not any(s in m["content"] for m in messages for s in self._special_texts):
            return self.encode(self.apply_chat_template(messages, add_generation_prompt))
        used = "".join(m["content"] for m in messages)
        begin, end = next(
            (chr(c), chr(c + 1))
            for c in range(0xE000, 0xF8FF, 2)
            if chr(c) not in used and chr(c + 1) not in used
        )  # private-use marks
        marked = [{**m, "content": f"{begin}{m['content']}{end}"} for m in messages]
        rest = self.apply_chat_template(marked, add_generation_prompt)
        ids: list[int] = []
        while rest:
            template_part, found, rest = rest.partition(begin)
            ids += self.encode(template_part)
            if not found:
                break
            content, closed, rest = rest.partition(end)
            if not closed:
                raise ValueError("the chat template splits a message's content; cannot keep it as text")
            ids += _encode(self._as_text, content)
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._tok.decode(list(ids), skip_special_tokens=False))

    def apply_chat_template(
        self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = True
    ) -> str:
        if not self.chat_template:
            raise ValueError("this model has no chat template; send a plain prompt instead")
        env = jinja2.sandbox.ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        env.globals["raise_exception"] = _raise
        template = env.from_string(self.chat_template)
        return template.render(
            messages=list(messages), add_generation_prompt=add_generation_prompt, **self._special
        )

    def hf_config(self) -> dict[str, Any]:
        """`tokenizer_config.json` as Hugging Face tools read it (also vLLM's `/tokenizer_info` body)."""
        config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast", **self._special}
        if "eos_token" in config:
            config.setdefault("pad_token", config["eos_token"])
        if self.chat_template:
            config["chat_template"] = self.chat_template
        return config

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write `tokenizer.json` + `tokenizer_config.json`, a directory `AutoTokenizer` loads offline
        (clients such as guidellm and lm-eval need one when the model id is not on a hub they reach)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self._tok.save(str(out / "tokenizer.json"))
        (out / "tokenizer_config.json").write_text(json.dumps(self.hf_config(), indent=2, ensure_ascii=False))
        return out


def _encode(tok: HFTokenizer, text: str) -> list[int]:
    """`encode_batch` of one text: unlike `encode`, it lets go of the GIL while it works, so a
    long prompt tokenized on a worker thread does not stall the event loop and the decode loop."""
    return list(tok.encode_batch([text], add_special_tokens=False)[0].ids)


def _raise(message: str) -> None:
    raise jinja2.TemplateError(message)


def from_gguf_fields(
    tokens: list[str],
    token_types: list[int],
    merges: list[str],
    pre: str,
    eos_id: int,
    bos_id: int | None,
    chat_template: str | None,
    extra_eos: Sequence[int] = (),
) -> TextTokenizer:
    """Rebuild a llama.cpp `gpt2`-model (byte-level BPE) tokenizer from GGUF metadata."""
    if pre not in _GPT2_PRE:
        raise ValueError(
            f"GGUF pre-tokenizer {pre!r} is not supported (known: {sorted(_GPT2_PRE)}); "
            "load the Hugging Face checkpoint with its tokenizer.json instead"
        )
    vocab = {t: i for i, t in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    bpe = models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False)  # type: ignore[arg-type]
    tok = HFTokenizer(bpe)
    steps: list[Any] = []
    if _GPT2_PRE[pre] == "digits":  # llama.cpp `smollm`: every digit is its own pre-token
        steps.append(pre_tokenizers.Digits(individual_digits=True))
    steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(steps)
    tok.decoder = decoders.ByteLevel()
    special = [
        AddedToken(t, special=True, normalized=False)
        for t, ty in zip(tokens, token_types, strict=True)
        if ty in _SPECIAL_TYPES
    ]
    tok.add_special_tokens(special)
    names = {"eos_token": tokens[eos_id]}
    if bos_id is not None and 0 <= bos_id < len(tokens):
        names["bos_token"] = tokens[bos_id]
    return TextTokenizer(tok, frozenset({eos_id, *extra_eos}), chat_template, names)


def from_hf_files(
    tokenizer_json: str, tokenizer_config: dict[str, Any] | None, generation_eos: Sequence[int]
) -> TextTokenizer:
    """Load `tokenizer.json`; chat template and EOS come from `tokenizer_config.json` when present."""
    tok = HFTokenizer.from_str(tokenizer_json)
    cfg = tokenizer_config or {}
    template = cfg.get("chat_template")
    special: dict[str, str] = {}
    eos: set[int] = set(generation_eos)
    for key in ("eos_token", "bos_token"):
        value = cfg.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            special[key] = value
            if key == "eos_token" and (tid := tok.token_to_id(value)) is not None:
                eos.add(tid)
    if not eos:
        raise ValueError(
            "no EOS token: set eos_token_id in config.json or eos_token in tokenizer_config.json"
        )
    return TextTokenizer(tok, frozenset(eos), template, special)


def read_json(text: str | bytes | None) -> dict[str, Any] | None:
    return None if text is None else dict(json.loads(text))
