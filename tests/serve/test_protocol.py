"""Request bodies -> prompt ids: one question is `generate`'s prompt, a conversation follows the model's chat
template turn by turn, and malformed messages are refused with the field they are about."""

from __future__ import annotations

import numpy as np
import pytest

from tlv_jax.data.records import load_tokenizer
from tlv_jax.data.templates import SYSTEM, eval_prompt_ids, tokenizer_image_token
from tlv_jax.models import families
from tlv_jax.serve import protocol
from tlv_jax.serve.errors import ApiError

VIDEO = {"type": "video_url", "video_url": {"url": "file:///media/clip.mp4"}}


@pytest.fixture(scope="module")
def tok(model_dir):
    return load_tokenizer(str(model_dir))


def ids_of(body: dict, tok, template: str = families.get("qwen2").chat_template) -> np.ndarray:
    turns, system, media = protocol.conversation(protocol.parse(body).messages)
    return protocol.prompt_ids(turns, system, tok, template), media


def test_one_question_is_the_generate_prompt(tok):
    template = families.get("qwen2").chat_template
    ids, media = ids_of({"messages": [{"role": "user", "content": [{"type": "text", "text": "Why?"}, VIDEO]}]}, tok)
    np.testing.assert_array_equal(ids, eval_prompt_ids("Why?", tok, template).input_ids)
    assert media.video_url == "file:///media/clip.mp4" and not media.image_urls


def test_a_conversation_follows_the_chat_template(tok):
    body = {"messages": [{"role": "user", "content": [VIDEO, {"type": "text", "text": "What is it?"}]},
                         {"role": "assistant", "content": "A square."},
                         {"role": "user", "content": [{"type": "text", "text": "Which colour?"}]}]}
    ids, _ = ids_of(body, tok)
    expected = (SYSTEM + " USER: <image>\nWhat is it? ASSISTANT: A square.<|endoftext|>USER: Which colour? "
                "ASSISTANT:")
    np.testing.assert_array_equal(ids, tokenizer_image_token(expected, tok))
    system = {"messages": [{"role": "system", "content": "Answer briefly."}, *body["messages"]]}
    ids, _ = ids_of(system, tok)
    np.testing.assert_array_equal(ids, tokenizer_image_token("Answer briefly. " + expected[len(SYSTEM) + 1:], tok))


def test_image_parts_are_frames(tok):
    frames = [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{i}"}} for i in "AB"]
    _, media = ids_of({"messages": [{"role": "user", "content": [*frames, {"type": "text", "text": "Hm?"}]}]}, tok)
    assert media.image_urls == ("data:image/png;base64,A", "data:image/png;base64,B") and media.video_url is None


@pytest.mark.parametrize("messages, match", [
    ([{"role": "assistant", "content": "hi"}], r"messages\[0\]: expected a user message"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], r"messages\[1\]: expected an assistant"),
    ([{"role": "user", "content": [VIDEO]}, {"role": "assistant", "content": "x"},
      {"role": "user", "content": [VIDEO]}], r"messages\[2\]: a second video"),
    ([{"role": "user", "content": [VIDEO, {"type": "image_url", "image_url": {"url": "data:image/png;base64,A"}}]}],
     "one video_url part"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": [VIDEO]}, {"role": "user", "content": "b"}],
     r"messages\[1\]: only user messages may carry"),
    ([{"role": "user", "content": "look at <image>"}], "reserves for the video"),
    ([{"role": "system", "content": "Be brief."}], "the last message must be from the user"),
    ([{"role": "tool", "content": "x"}], r"messages.0.role"),
    ([{"role": "user", "content": [{"type": "video_url", "video_url": {}}]}], r"messages.0.content.0.video_url.url"),
])
def test_malformed_messages_are_400_naming_the_message(tok, messages, match):
    with pytest.raises(ApiError, match=match) as e:
        ids_of({"messages": messages}, tok)
    assert e.value.status == 400


def test_options(tok):
    req = protocol.parse({"messages": [{"role": "user", "content": "x"}], "stop": "END", "max_completion_tokens": 7,
                          "temperature": 0.5, "top_p": 0.9, "seed": 3, "unknown_openai_field": 1})
    assert req.stop_strings == ("END",) and req.token_limit == 7 and (req.temperature, req.top_p) == (0.5, 0.9)
    for bad in ({"n": 2}, {"top_p": 0}, {"max_tokens": 0}, {"temperature": -1}):
        with pytest.raises(ApiError, match=next(iter(bad))):
            protocol.parse({"messages": [{"role": "user", "content": "x"}], **bad})
