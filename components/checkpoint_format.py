"""Which checkpoint an object listing holds: a GGUF file, a Hugging Face directory or a MaxText
(Orbax) checkpoint, and whether the latter was saved with OCDBT.

Pure (object names in, a `Listing` out), so pre-flight can say what it found in the bucket before
anything is deployed. The server detects the format of the same path itself when it starts
(`inference_app/model/loader.py: checkpoint_format`); components/ never imports it, so the markers
are stated here and tests/components/test_checkpoint_format.py holds both sides to the same answer
on checkpoints written the way each tool writes them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

Format = Literal["gguf", "huggingface", "maxtext"]

# What Orbax writes at the top of a PyTree checkpoint (MaxText's `<step>/items`): `_METADATA` and
# `_CHECKPOINT_METADATA`, and `manifest.ocdbt` when saved with OCDBT (MaxText's default;
# `checkpoint_storage_use_ocdbt=false` writes one directory per array instead).
ORBAX_MARKERS: Final = ("_METADATA", "_CHECKPOINT_METADATA", "manifest.ocdbt")
OCDBT_MARKER: Final = "manifest.ocdbt"
HF_CONFIG: Final = "config.json"
HF_TOKENIZER: Final = "tokenizer.json"
HF_WEIGHTS_SUFFIX: Final = ".safetensors"
GGUF_SUFFIX: Final = ".gguf"

NAMES: Final[dict[Format, str]] = {
    "gguf": "a GGUF file",
    "huggingface": "a Hugging Face directory (config.json + *.safetensors)",
    "maxtext": "a MaxText (Orbax) checkpoint",
}


@dataclass(frozen=True)
class Listing:
    """What the objects under a checkpoint path are."""

    format: Format | None  # None: none of the three at the path itself
    ocdbt: bool = False  # a MaxText checkpoint saved with OCDBT
    # Where a checkpoint was found instead, relative to the path (a MaxText `0/items` below a
    # run directory, a .gguf file inside a directory): what the path should have named.
    deeper: str | None = None


def classify(path: str, names: Iterable[str]) -> Listing:
    """The format at `path` (an object or a directory prefix), from the object names under it.

    `names` may hold objects that merely share the prefix (`.../int8-old/...` for `.../int8`);
    only the path itself and what lies below `path/` count.
    """
    root = path.rstrip("/")
    top: set[str] = set()
    deeper: set[str] = set()
    for name in names:
        if name == root and root.endswith(GGUF_SUFFIX):
            return Listing("gguf")
        if not name.startswith(root + "/"):
            continue
        rel = name[len(root) + 1 :]
        (deeper if "/" in rel else top).add(rel)
    if top & set(ORBAX_MARKERS):
        return Listing("maxtext", ocdbt=OCDBT_MARKER in top)
    if HF_CONFIG in top and any(n.endswith(HF_WEIGHTS_SUFFIX) for n in top):
        return Listing("huggingface")
    return Listing(None, deeper=_deeper_checkpoint(top, deeper))


def _deeper_checkpoint(top: set[str], deeper: set[str]) -> str | None:
    orbax = sorted({rel.rpartition("/")[0] for rel in deeper if rel.rpartition("/")[2] in ORBAX_MARKERS})
    if orbax:
        return orbax[0]
    gguf = sorted(n for n in top if n.endswith(GGUF_SUFFIX))
    return gguf[0] if gguf else None


def has_tokenizer(path: str, names: Iterable[str]) -> bool:
    """`path` is a tokenizer.json, or a directory holding one (what the server's `--tokenizer-path` reads)."""
    root = path.rstrip("/")
    wanted = {root} if root.endswith("/" + HF_TOKENIZER) else {f"{root}/{HF_TOKENIZER}"}
    return any(name in wanted for name in names)
