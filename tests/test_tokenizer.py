"""The offline tiny tokenizer: SmolLM2's special ids and chat template, byte-level round trip, no network."""

import json

import pytest

from fvlm_cli.errors import ModelLoadError
from fvlm_cli.model.tokenizer import TINY_DIR, load_tokenizer


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    # huggingface_hub reads the variable at import; set its constant too so nothing tries the network
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny")


def test_special_ids_match_smollm2(tok):
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [0, 1, 2]
    assert (tok.eos_token, tok.eos_token_id) == ("<|im_end|>", 2)
    assert (tok.pad_token, tok.pad_token_id) == ("<|im_end|>", 2)  # as in SmolLM2-Instruct: pad == eos
    assert (tok.bos_token, tok.bos_token_id) == ("<|im_start|>", 1)
    assert tok.unk_token_id == 0
    assert 1000 <= len(tok) <= 2048  # fits the tiny preset's vocab_size
    # no BOS is added when encoding plain text (SmolLM2 adds none either)
    assert tok("red circle")["input_ids"][0] != 1


@pytest.mark.parametrize("text", [
    "A red circle moves left.",
    "héllo wörld — naïve café 😀 中文 العربية",
    "  leading spaces\n\n\ttabs and\r\nCRLF  ",
    "digits 0123456789 3.14159 -42",
    "special text <|im_end|> inside <|im_start|>user",
    "",
])
def test_round_trip_any_text(tok, text):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text


def test_vocabulary_covers_synthetic_words(tok):
    for word in ["red", "green", "blue", "yellow", "circle", "square", "triangle", "left", "right", "up", "down",
                 "one", "two", "three"]:
        assert len(tok.encode(" " + word, add_special_tokens=False)) == 1, word
    assert len(tok.encode("assistant\n", add_special_tokens=False)) == 2  # role word + newline


def test_chat_template_is_smollm2_format(tok):
    messages = [
        {"role": "system", "content": "You are a helpful AI assistant."},
        {"role": "user", "content": "What colour is the shape?"},
        {"role": "assistant", "content": "The shape is red."},
    ]
    assert tok.apply_chat_template(messages, tokenize=False) == (
        "<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n"
        "<|im_start|>user\nWhat colour is the shape?<|im_end|>\n"
        "<|im_start|>assistant\nThe shape is red.<|im_end|>\n"
    )
    prompt = tok.apply_chat_template(messages[1:2], tokenize=False, add_generation_prompt=True)
    assert prompt == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nWhat colour is the shape?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_shipped_files_and_save_pretrained(tok, tmp_path):
    config = json.loads((TINY_DIR / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast" and "chat_template" in config
    assert (TINY_DIR / "special_tokens_map.json").exists()
    tok.save_pretrained(str(tmp_path))
    again = load_tokenizer(str(tmp_path))  # a model folder ships its tokenizer
    text = "The blue square moves up."
    assert again.encode(text) == tok.encode(text)
    assert again.chat_template == tok.chat_template
    assert (again.pad_token_id, again.eos_token_id) == (2, 2)


def test_build_script_is_deterministic(tmp_path):
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "build_tiny_tokenizer.py"
    spec = importlib.util.spec_from_file_location("build_tiny_tokenizer", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.build(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tmp_path / name).read_bytes() == (TINY_DIR / name).read_bytes(), name


# "1.7B" has a dot: still a Hub id, not a file name
@pytest.mark.parametrize("hub_id", ["nobody-here/no-such-tokenizer-xyz", "nobody-here/NoSuch-1.7B-Instruct"])
def test_unreachable_hub_is_a_one_line_model_error(hub_id):
    with pytest.raises(ModelLoadError) as err:
        load_tokenizer(hub_id)  # offline (fixture) and not cached here
    assert "Hub" in str(err.value) and "--model tiny" in str(err.value) and "\n" not in str(err.value)


def test_missing_folder_is_a_model_error(tmp_path):
    with pytest.raises(ModelLoadError):
        load_tokenizer(str(tmp_path))  # exists, but holds no tokenizer files
    with pytest.raises(ModelLoadError):
        load_tokenizer(str(tmp_path / "nope.json"))
