"""Conversation templates, chunked tokenisation around `<image>`, label masks and the padding collator.

Everything here reproduces the original TinyLLaVA-Video text path token for token: the prompt
strings, `tokenizer_image_token` (each `<image>`-separated chunk tokenised on its own, chunks joined by −200), the
round-by-round label-masking algorithm with its whole-sample masking on a tokenisation mismatch, and the collator's
padding/attention-mask rule. A mismatch is reported through `EncodedText.mismatch` so that the loader counts it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Sequence

import numpy as np

IMAGE_TOKEN = "<image>"
IMAGE_TOKEN_INDEX = -200
IGNORE_INDEX = -100
_EOS_STANDIN = -300  # the collator's temporary id for real eos tokens when pad == eos

SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


@dataclasses.dataclass(frozen=True)
class Template:
    """One conversation format. Slots hold `{content}` where the original's formatters substitute text; a slot without
    it ignores its content (the original's `EmptyFormatter`, e.g. pretrain's user slot that discards the question)."""

    system: str
    image: str  # applied to a question that contained `<image>` (after removing it): puts the video first
    user: str
    assistant: str
    sep: str
    eos: str
    leading_bos: bool = False  # gemma: the masks account for one BOS token at position 0
    pretrain: bool = False  # pretrain: only the video placeholder is masked


_CHAT = dict(system=SYSTEM + " ", image=IMAGE_TOKEN + "\n{content}", user="USER: {content} ", sep=" ASSISTANT: ")

TEMPLATES: dict[str, Template] = {
    "pretrain": Template(system="", image="", user=IMAGE_TOKEN, assistant="{content}\n", sep="", eos="", pretrain=True),
    "qwen2_base": Template(**_CHAT, assistant="ASSISTANT: {content}<|endoftext|>", eos="<|endoftext|>"),
    "phi": Template(**_CHAT, assistant="ASSISTANT: {content}<|endoftext|>", eos="<|endoftext|>"),
    "gemma": Template(**_CHAT, assistant="ASSISTANT: {content}<eos>", eos="<eos>", leading_bos=True),
}

def inference_template(trained_with: str, chat_template: str) -> str:
    """The template a model answers with: the one it was trained with, except after the captioning-only pretrain
    stage, whose template has no generation prompt (then `chat_template`, its family's)."""
    return chat_template if get_template(trained_with).pretrain else trained_with


class MalformedConversation(ValueError):
    """A conversation that the original template code would reject (odd turns, non-string values, bad structure)."""


@dataclasses.dataclass(frozen=True)
class EncodedText:
    """Token ids (with −200 for the video), labels (None in eval mode), the prompt string, and whether the original
    algorithm found a tokenisation mismatch (then every label is −100 and the caller must count the sample)."""

    input_ids: np.ndarray
    labels: Optional[np.ndarray]
    prompt: str
    mismatch: bool = False


def get_template(name: str) -> Template:
    if name not in TEMPLATES:
        raise ValueError(f"unknown conversation template {name!r}; expected one of {sorted(TEMPLATES)}")
    return TEMPLATES[name]


def _fill(slot: str, content: Optional[str]) -> str:
    """The original `StringFormatter.apply`: substitute once; None gives the slot up to its first ':' plus ':'."""
    if content is None:
        return slot.split(":")[0] + ":"
    return slot.replace("{content}", content, 1)


def split_conversation(conversations: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[Optional[str]]]:
    """Questions and answers by position, as the original: a first message not from 'human' is skipped."""
    if not isinstance(conversations, (list, tuple)) or not conversations:
        raise MalformedConversation(f"conversations must be a non-empty list, got {type(conversations).__name__}")
    questions: list[str] = []
    answers: list[Optional[str]] = []
    first_is_answer = 0
    for i, message in enumerate(conversations):
        if not isinstance(message, Mapping) or "value" not in message or "from" not in message:
            raise MalformedConversation(f"message {i} is not a {{'from', 'value'}} mapping: {message!r:.80}")
        if i == 0 and message["from"] != "human":
            first_is_answer = 1
            continue
        (questions if i % 2 == first_is_answer else answers).append(message["value"])
    if len(questions) != len(answers):
        raise MalformedConversation(f"{len(questions)} questions but {len(answers)} answers")
    # Only the last answer may be None (the eval prompt); everything else must be text.
    for value in questions + answers[:-1] + [a for a in answers[-1:] if a is not None]:
        if not isinstance(value, str):
            raise MalformedConversation(f"message value is {type(value).__name__}, expected str: {value!r:.80}")
    return questions, answers


def build_prompt(questions: Sequence[str], answers: Sequence[Optional[str]], template: Template) -> str:
    """The original `Template._prompt`: system once, the `<image>` moved to the front of its question."""
    prompt = ""
    for i, (question, answer) in enumerate(zip(questions, answers)):
        if i == 0:
            prompt += template.system
        if IMAGE_TOKEN in question:
            question = _fill(template.image, question.replace(IMAGE_TOKEN, "").strip()).strip()
        prompt += _fill(template.user, question)
        prompt += _fill(template.assistant, answer)
    return prompt


def tokenizer_image_token(prompt: str, tokenizer: Any) -> list[int]:
    """Tokenises each `<image>`-separated chunk on its own and joins them with −200. If the first chunk starts with
    BOS, it is kept once and the first token of every chunk is dropped (the original rule, relevant for Gemma)."""
    chunks = [list(tokenizer(chunk).input_ids) for chunk in prompt.split(IMAGE_TOKEN)]
    offset = 1 if chunks and chunks[0] and chunks[0][0] == tokenizer.bos_token_id else 0
    ids: list[int] = chunks[0][:1] if offset else []
    for i, chunk in enumerate(chunks):
        if i:
            ids.append(IMAGE_TOKEN_INDEX)
        ids.extend(chunk[offset:])
    return ids


def _mask_rounds(labels: np.ndarray, prompt: str, tokenizer: Any, template: Template) -> int:
    """The original `_make_masks`: per round mask the instruction; returns the position after the last full round."""
    rounds = prompt.split(template.eos)
    bos = 1 if template.leading_bos else 0
    eos_len = 1 if template.leading_bos else len(tokenizer.encode(template.eos))
    cur = bos
    labels[:cur] = IGNORE_INDEX
    for rnd in rounds:
        if rnd == "":
            break
        parts = rnd.split(template.sep)
        if len(parts) != 2:
            break
        round_len = len(tokenizer_image_token(rnd, tokenizer)) + eos_len - bos
        instruction_len = len(tokenizer_image_token(parts[0] + template.sep, tokenizer)) - 1 - bos
        labels[cur:cur + instruction_len] = IGNORE_INDEX
        cur += round_len
    labels[cur:] = IGNORE_INDEX
    return cur


def make_labels(input_ids: np.ndarray, prompt: str, tokenizer: Any, template: Template) -> tuple[np.ndarray, bool]:
    """Labels for training and whether the original's tokenisation-mismatch rule masked the whole sample."""
    labels = input_ids.copy()
    if template.pretrain:
        labels[:len(tokenizer_image_token(IMAGE_TOKEN, tokenizer))] = IGNORE_INDEX
        return labels, False
    total_len = int(np.sum(input_ids != tokenizer.pad_token_id))
    if tokenizer.pad_token_id == tokenizer.eos_token_id:
        total_len += prompt.count(template.eos)
    cur = _mask_rounds(labels, prompt, tokenizer, template)
    if cur < tokenizer.model_max_length and cur != total_len:
        labels[:] = IGNORE_INDEX
        return labels, True
    return labels, False


def encode_conversation(
    conversations: Sequence[Mapping[str, Any]], tokenizer: Any, template: Template | str, mode: str = "train"
) -> EncodedText:
    """LLaVA-format conversation -> ids (−200 at the video) and labels. mode='eval' expects the last answer None and
    gives the generation prompt ending in 'ASSISTANT:'. Raises `MalformedConversation` for unusable input."""
    template = get_template(template) if isinstance(template, str) else template
    if mode not in ("train", "eval"):
        raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}")
    questions, answers = split_conversation(conversations)
    if mode == "train" and answers[-1] is None:
        raise MalformedConversation("the last answer is None in train mode")
    if mode == "eval" and template.pretrain:
        raise ValueError("the pretrain template has no generation prompt")
    prompt = build_prompt(questions, answers, template)
    input_ids = np.asarray(tokenizer_image_token(prompt, tokenizer), dtype=np.int64)
    if mode == "eval":
        return EncodedText(input_ids, None, prompt)
    labels, mismatch = make_labels(input_ids, prompt, tokenizer, template)
    return EncodedText(input_ids, labels, prompt, mismatch)


def eval_prompt_ids(question: str, tokenizer: Any, template: Template | str) -> EncodedText:
    """The inference prompt of the original `eval_model`: `"<image>\\n" + question`, answer None."""
    messages = [{"from": "human", "value": IMAGE_TOKEN + "\n" + question}, {"from": "gpt", "value": None}]
    return encode_conversation(messages, tokenizer, template, mode="eval")


def collate(
    input_ids: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    pad_id: int,
    eos_id: Optional[int],
    max_length: Optional[int] = None,
    pad_to: Optional[int] = None,
) -> dict[str, np.ndarray]:
    """The original `DataCollatorForSupervisedDataset` on numpy: right-pad ids with `pad_id` and labels with −100 (to
    the longest sample, or to `pad_to`), cut to `max_length`, `attention_mask = ids != pad` except that real eos tokens
    stay attended when pad == eos. Returns int32 ids/labels and a bool mask."""
    if len(input_ids) != len(labels) or not input_ids:
        raise ValueError(f"need as many label rows as id rows (got {len(input_ids)} and {len(labels)}), at least one")
    longest = max(len(x) for x in input_ids)
    width = longest if pad_to is None else pad_to
    if width < longest:
        raise ValueError(f"pad_to={pad_to} is shorter than the longest sample ({longest} tokens)")
    ids = np.full((len(input_ids), width), pad_id, dtype=np.int64)
    lab = np.full((len(input_ids), width), IGNORE_INDEX, dtype=np.int64)
    for row, (x, y) in enumerate(zip(input_ids, labels)):
        if len(x) != len(y):
            raise ValueError(f"sample {row}: {len(x)} ids but {len(y)} labels")
        x = np.asarray(x, dtype=np.int64)
        ids[row, :len(x)] = np.where(x == eos_id, _EOS_STANDIN, x) if pad_id == eos_id else x
        lab[row, :len(y)] = y
    if max_length is not None:
        ids, lab = ids[:, :max_length], lab[:, :max_length]
    attention_mask = ids != pad_id
    if pad_id == eos_id:
        ids[ids == _EOS_STANDIN] = eos_id
    return {"input_ids": ids.astype(np.int32), "labels": lab.astype(np.int32), "attention_mask": attention_mask}
