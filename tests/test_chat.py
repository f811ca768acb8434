"""Chat encoding: exact loss masks per stage, <|im_end|> in the answer's loss, visual position, truncation."""

import pytest

from fvlm_cli.data.chat import encode_chat, encode_dpo, encode_mcq_options, encode_prompt
from fvlm_cli.model.tokenizer import load_tokenizer

SYSTEM = "You are a helpful AI assistant."
CONV = [{"role": "user", "content": "What colour is the shape?"}, {"role": "assistant", "content": "The shape is red."}]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny")


def _seg(tok, text):
    return tok.encode(text, add_special_tokens=False)


def _expected(tok, turns):
    """Reference ids/mask built turn by turn: (role, content, is_target)."""
    ids, mask = [], []
    for role, content, target in turns:
        head = [1] + _seg(tok, f"{role}\n")
        body = _seg(tok, content) + [2]
        tail = _seg(tok, "\n")
        ids += head + body + tail
        mask += [0] * len(head) + [int(target)] * len(body) + [0] * len(tail)
    return ids, mask


def test_ids_equal_the_rendered_chat_template(tok):
    enc = encode_chat(CONV, tok, stage=2, system_prompt=SYSTEM)
    rendered = tok.apply_chat_template([{"role": "system", "content": SYSTEM}] + CONV, tokenize=False)
    assert enc.input_ids == tok.encode(rendered, add_special_tokens=False)


def test_stage2_mask_is_answer_plus_im_end(tok):
    enc = encode_chat(CONV, tok, stage=2, system_prompt=SYSTEM)
    ids, mask = _expected(tok, [("system", SYSTEM, False), ("user", CONV[0]["content"], False),
                                ("assistant", CONV[1]["content"], True)])
    assert enc.input_ids == ids and enc.loss_mask == mask and enc.visual_pos == 0
    im_end = [j for j, t in enumerate(enc.input_ids) if t == 2]
    assert [enc.loss_mask[j] for j in im_end] == [0, 0, 1]  # system's and user's <|im_end|> out, the answer's in
    targets = [t for t, m in zip(enc.input_ids, enc.loss_mask) if m]
    assert tok.decode(targets) == "The shape is red.<|im_end|>"
    assert enc.loss_mask[-1] == 0  # the trailing "\n" is not a target
    header = _seg(tok, "assistant\n")
    start = len(ids) - len(_seg(tok, "\n")) - 1 - len(_seg(tok, CONV[1]["content"]))
    assert enc.input_ids[start - len(header) - 1:start] == [1] + header
    assert enc.loss_mask[start - len(header) - 1:start] == [0] * (len(header) + 1)  # role header not a target


def test_stage1_mask_is_every_text_token(tok):
    enc = encode_chat(CONV, tok, stage=1, system_prompt=SYSTEM)
    assert enc.loss_mask == [1] * len(enc.input_ids)
    assert enc.input_ids == encode_chat(CONV, tok, stage=2, system_prompt=SYSTEM).input_ids


def test_multi_turn_every_assistant_turn_is_a_target(tok):
    conv = CONV + [{"role": "user", "content": "Which way does it move?"}, {"role": "assistant", "content": "Left."}]
    enc = encode_chat(conv, tok, stage=3, system_prompt=SYSTEM)
    ids, mask = _expected(tok, [("system", SYSTEM, False), ("user", conv[0]["content"], False),
                                ("assistant", conv[1]["content"], True), ("user", conv[2]["content"], False),
                                ("assistant", conv[3]["content"], True)])
    assert (enc.input_ids, enc.loss_mask) == (ids, mask)
    assert tok.decode([t for t, m in zip(enc.input_ids, enc.loss_mask) if m]) == \
        "The shape is red.<|im_end|>Left.<|im_end|>"


def test_own_system_message_replaces_the_default(tok):
    enc = encode_chat([{"role": "system", "content": "Be brief."}] + CONV, tok, stage=2, system_prompt=SYSTEM)
    assert tok.decode(enc.input_ids).startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user")


def test_question_first_visual_pos(tok):
    enc = encode_chat(CONV, tok, stage=2, system_prompt=SYSTEM, order="question_first")
    prefix, _ = _expected(tok, [("system", SYSTEM, False), ("user", CONV[0]["content"], False)])
    assert enc.visual_pos == len(prefix)
    assert enc.input_ids[:enc.visual_pos] == prefix
    assert tok.decode(enc.input_ids[enc.visual_pos:]).startswith("<|im_start|>assistant\n")
    # multi-turn: still after the FIRST user turn
    conv = CONV + [{"role": "user", "content": "And now?"}, {"role": "assistant", "content": "Blue."}]
    assert encode_chat(conv, tok, stage=2, system_prompt=SYSTEM, order="question_first").visual_pos == len(prefix)
    assert encode_chat(CONV, tok, stage=2, system_prompt=SYSTEM, order="video_first").visual_pos == 0


def test_truncation_keeps_partial_answer_and_drops_a_lost_one(tok):
    full = encode_chat(CONV, tok, stage=2, system_prompt=SYSTEM)
    first_target = full.loss_mask.index(1)
    cut = encode_chat(CONV, tok, stage=2, system_prompt=SYSTEM, max_tokens=first_target + 2)
    assert cut.input_ids == full.input_ids[:first_target + 2] and sum(cut.loss_mask) == 2
    assert encode_chat(CONV, tok, stage=2, system_prompt=SYSTEM, max_tokens=first_target) is None
    assert encode_chat(CONV[:1], tok, stage=2, system_prompt=SYSTEM) is None  # no answer at all
    assert encode_chat(CONV[:1], tok, stage=1, system_prompt=SYSTEM) is not None  # stage 1: all text is target


def test_prompt_ends_with_generation_header(tok):
    enc = encode_prompt(CONV[:1], tok, system_prompt=SYSTEM)
    assert tok.decode(enc.input_ids) == tok.apply_chat_template(
        [{"role": "system", "content": SYSTEM}] + CONV[:1], tokenize=False, add_generation_prompt=True)
    assert enc.loss_mask == [0] * len(enc.input_ids)
    # the prompt is exactly the prefix of the training sequence before the answer
    full = encode_chat(CONV, tok, stage=2, system_prompt=SYSTEM)
    assert full.input_ids[:len(enc.input_ids)] == enc.input_ids
    assert full.loss_mask.index(1) == len(enc.input_ids)


def test_dpo_pair_shares_prompt_and_targets_only_the_answers(tok):
    chosen, rejected = encode_dpo(CONV[:1], "The shape is red.", "A blue star.", tok, system_prompt=SYSTEM,
                                  order="question_first", max_tokens=512)
    prompt = encode_prompt(CONV[:1], tok, system_prompt=SYSTEM, order="question_first")
    for enc, answer in ((chosen, "The shape is red."), (rejected, "A blue star.")):
        assert enc.input_ids[:len(prompt.input_ids)] == prompt.input_ids
        assert enc.visual_pos == prompt.visual_pos > 0
        assert tok.decode([t for t, m in zip(enc.input_ids, enc.loss_mask) if m]) == answer + "<|im_end|>"
    # a trailing assistant turn in the prompt is ignored; a fully truncated answer drops the pair
    assert encode_dpo(CONV, "x", "y", tok, system_prompt=SYSTEM, order="video_first", max_tokens=512)[0].input_ids == \
        encode_dpo(CONV[:1], "x", "y", tok, system_prompt=SYSTEM, order="video_first", max_tokens=512)[0].input_ids
    assert encode_dpo(CONV[:1], "x", "y", tok, system_prompt=SYSTEM, order="video_first",
                      max_tokens=len(prompt.input_ids)) is None


def test_mcq_options_continuations(tok):
    prompt, conts = encode_mcq_options(CONV[:1], ["A", "B. blue"], tok, system_prompt=SYSTEM)
    assert prompt.input_ids == encode_prompt(CONV[:1], tok, system_prompt=SYSTEM).input_ids
    assert [tok.decode(c) for c in conts] == ["A<|im_end|>", "B. blue<|im_end|>"]
    full = encode_chat(CONV[:1] + [{"role": "assistant", "content": "B. blue"}], tok, stage=2, system_prompt=SYSTEM)
    assert full.input_ids[:len(prompt.input_ids) + len(conts[1])] == prompt.input_ids + conts[1]
