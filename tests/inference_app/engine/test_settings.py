"""Flags -> EngineSettings, once: every command that builds an engine parses the same flags the same way."""

from __future__ import annotations

import argparse
from collections.abc import Callable

import pytest

from inference_app import engine, generate
from inference_app.batch import cli as batch_cli
from inference_app.engine import api
from inference_app.engine.settings import EngineSettings, SettingsError, settings_from_args
from inference_app.model.catalog import CATALOG, DEFAULT_MODEL
from inference_app.server import cli as serve_cli
from inference_app.server.options import ServerOptions

# Each command with the arguments it requires besides the engine's.
COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], list[str]]] = {
    "serve": (serve_cli.add_arguments, []),
    "batch": (batch_cli.add_arguments, ["--input", "i.jsonl", "--output", "o.jsonl", "--local"]),
    "generate": (generate.add_arguments, ["--prompt", "hi", "--max-tokens", "4"]),
}


def parse(command: str, *argv: str) -> argparse.Namespace:
    add, required = COMMANDS[command]
    parser = argparse.ArgumentParser(prog=command, exit_on_error=False)
    add(parser)
    return parser.parse_args([*required, *argv])


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_defaults_to_the_engine_defaults(command: str) -> None:
    assert settings_from_args(parse(command)) == EngineSettings()


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_sets_model_dtypes_and_cache_the_same_way(command: str) -> None:
    s = settings_from_args(
        parse(
            command,
            "--model-path",
            "gs://b/m/",
            "--weight-dtype",
            "int8",
            "--kv-dtype",
            "bfloat16",
            "--compilation-cache-dir",
            "",
        )
    )
    assert (s.model, s.model_path, s.weight_dtype, s.kv_dtype, s.compilation_cache_dir) == (
        None,
        "gs://b/m/",
        "int8",
        "bfloat16",
        None,
    )
    with pytest.raises(argparse.ArgumentError):
        parse(command, "--weight-dtype", "fp8")


@pytest.mark.parametrize("command", ["serve", "batch"])
def test_serving_commands_size_the_engine(command: str) -> None:
    s = settings_from_args(
        parse(
            command,
            "--max-slots",
            "3",
            "--max-prefill-length",
            "100",
            "--max-target-length",
            "300",
            "--mode",
            "disaggregated",
            "--no-chunked-prefill",
            "--max-step-tokens",
            "64",
        )
    )
    assert s == EngineSettings(
        max_slots=3,
        max_prefill_length=100,
        max_target_length=300,
        mode="disaggregated",
        chunked_prefill=False,
        max_step_tokens=64,
    )


def test_generate_sizes_its_engine_itself() -> None:
    assert not {"max_slots", "max_prefill_length", "max_target_length", "mode"} & set(vars(parse("generate")))


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_an_unknown_catalog_model_names_the_flag_and_the_choices(command: str) -> None:
    with pytest.raises(
        SettingsError, match=r"--model 'gpt-4' is not in the catalog \(smollm2-135m\).*--model-path"
    ):
        settings_from_args(parse(command, "--model", "gpt-4"))


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_weights_as_stored_need_a_gguf_file(command: str) -> None:
    assert (
        settings_from_args(parse(command, "--model-path", "m.gguf", "--weight-dtype", "gguf")).weight_dtype
        == "gguf"
    )
    assert settings_from_args(parse(command, "--weight-dtype", "q4_1")).weight_dtype == "q4_1"
    with pytest.raises(
        SettingsError, match=r"--weight-dtype gguf .*'/ckpt/hf' is not a .gguf file; pass q4_0"
    ):
        settings_from_args(parse(command, "--model-path", "/ckpt/hf", "--weight-dtype", "gguf"))


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_takes_a_maxtext_checkpoints_architecture_and_tokenizer(command: str) -> None:
    """A MaxText checkpoint carries no config or tokenizer: `--model` names its architecture."""
    s = settings_from_args(
        parse(
            command,
            "--model",
            "llama3.1-405b",
            "--model-path",
            "gs://b/ckpt/0/items",
            "--tokenizer-path",
            "gs://b/tok",
        )
    )
    assert (s.model, s.model_path, s.tokenizer_path) == ("llama3.1-405b", "gs://b/ckpt/0/items", "gs://b/tok")


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_model_next_to_a_path_must_be_an_architecture(command: str) -> None:
    with pytest.raises(
        SettingsError,
        match=r"--model 'smollm2-135m' with --model-path must name a MaxText checkpoint's architecture "
        r"\(llama2-13b, .*llama3.1-405b.*\); leave --model out",
    ):
        settings_from_args(parse(command, "--model", "smollm2-135m", "--model-path", "/x.gguf"))


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_tokenizer_path_needs_a_model_path(command: str) -> None:
    with pytest.raises(SettingsError, match="--tokenizer-path goes with a MaxText --model-path"):
        settings_from_args(parse(command, "--tokenizer-path", "/tok"))


def test_the_default_model_is_named_once() -> None:
    assert DEFAULT_MODEL in CATALOG
    # The server reports the catalog entry's Hugging Face id and answers to the short name too.
    options = ServerOptions()
    assert EngineSettings().model == DEFAULT_MODEL
    assert options.model_name == CATALOG[DEFAULT_MODEL].hf_id
    assert options.serves(DEFAULT_MODEL) and options.serves(CATALOG[DEFAULT_MODEL].hf_id)


def test_engine_settings_keeps_its_import_paths() -> None:
    assert engine.EngineSettings is api.EngineSettings is EngineSettings
