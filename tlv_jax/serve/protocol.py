"""OpenAI chat-completion request bodies -> what the engine runs: prompt ids in the model's chat template, the one
video the request is about, and the sampling options.

The schema is pydantic's; anything it rejects, and anything the template cannot hold (roles out of order, a second
video, a literal `<image>` in the text), is a 400 naming the field."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal, Optional, Union

import numpy as np
import pydantic

from tlv_jax.data.templates import IMAGE_TOKEN, MalformedConversation, encode_conversation, get_template
from tlv_jax.serve.errors import bad_request


class _Url(pydantic.BaseModel):
    url: str


class TextPart(pydantic.BaseModel):
    type: Literal["text"]
    text: str


class VideoPart(pydantic.BaseModel):
    type: Literal["video_url"]
    video_url: _Url


class ImagePart(pydantic.BaseModel):
    type: Literal["image_url"]
    image_url: _Url


Part = Annotated[Union[TextPart, VideoPart, ImagePart], pydantic.Field(discriminator="type")]


class Message(pydantic.BaseModel):
    role: Literal["system", "user", "assistant"]
    content: Union[str, list[Part]]


class StreamOptions(pydantic.BaseModel):
    include_usage: bool = False


class ChatRequest(pydantic.BaseModel):
    """The fields we honour; other OpenAI fields are accepted and ignored, as OpenAI-compatible servers do."""

    model: Optional[str] = None
    messages: list[Message] = pydantic.Field(min_length=1)
    max_tokens: Optional[int] = pydantic.Field(None, ge=1)
    max_completion_tokens: Optional[int] = pydantic.Field(None, ge=1)
    temperature: float = pydantic.Field(0.0, ge=0.0, le=2.0)
    top_p: float = pydantic.Field(1.0, gt=0.0, le=1.0)
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    n: int = pydantic.Field(1, ge=1, le=1)

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    @property
    def token_limit(self) -> Optional[int]:
        return self.max_completion_tokens or self.max_tokens


def parse(body: Any) -> ChatRequest:
    """A decoded JSON body -> ChatRequest, or a 400 naming the first bad field."""
    try:
        return ChatRequest.model_validate(body)
    except pydantic.ValidationError as e:
        first = max(e.errors(), key=lambda err: len(err["loc"]))  # the deepest: the part, not the union's branch
        loc = [str(x) for x in first["loc"] if not _union_branch(x)]
        where = ".".join(x for i, x in enumerate(loc) if i == 0 or x != loc[i - 1]) or "body"  # tag, then field
        raise bad_request(f"{where}: {first['msg']} ({e.error_count()} problem(s) in the request)") from None


def _union_branch(loc: object) -> bool:
    """pydantic's names for the branch of a union it tried ('str', 'list[...]'): noise in a field path."""
    return isinstance(loc, str) and ("[" in loc or loc in ("str", "list", "int", "float", "bool", "none"))


@dataclasses.dataclass(frozen=True)
class Media:
    """The request's video: one `video_url`, or `image_urls` (the frames, in order); neither for none."""

    video_url: Optional[str] = None
    image_urls: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return self.video_url is not None or bool(self.image_urls)


def conversation(messages: list[Message]) -> tuple[list[dict[str, Optional[str]]], Optional[str], Media]:
    """Messages -> the template's turns (`from`/`value`, `<image>` in the turn that holds the video, the last answer
    None), the system text (None: the template's) and the media."""
    system = None
    if messages[0].role == "system":
        system = _text_only(messages[0], 0)
    first = int(system is not None)
    turns: list[dict[str, Optional[str]]] = []
    media = Media()
    for i, m in enumerate(messages[first:], start=first):
        want = "user" if (i - first) % 2 == 0 else "assistant"
        if m.role != want:
            raise bad_request(f"messages[{i}]: expected {'a user' if want == 'user' else 'an assistant'} message, "
                              f"got {m.role} (after an optional system message, user and assistant turns "
                              "alternate, ending with user)")
        if m.role == "assistant":
            turns.append({"from": "gpt", "value": _text_only(m, i)})
            continue
        text, found = _user_turn(m, i)
        if found and media:
            raise bad_request(f"messages[{i}]: a second video; one video (or one set of image frames) per request")
        media = found or media
        turns.append({"from": "human", "value": (IMAGE_TOKEN + "\n" + text) if found else text})
    if len(messages) == first or messages[-1].role != "user":
        raise bad_request("the last message must be from the user")
    turns.append({"from": "gpt", "value": None})
    return turns, system, media


def _text_only(m: Message, i: int) -> str:
    if isinstance(m.content, str):
        return m.content
    if any(not isinstance(p, TextPart) for p in m.content):
        raise bad_request(f"messages[{i}]: only user messages may carry a video or images")
    return "\n".join(p.text for p in m.content)


def _user_turn(m: Message, i: int) -> tuple[str, Media]:
    parts = [TextPart(type="text", text=m.content)] if isinstance(m.content, str) else m.content
    texts = [p.text for p in parts if isinstance(p, TextPart)]
    videos = [p.video_url.url for p in parts if isinstance(p, VideoPart)]
    images = tuple(p.image_url.url for p in parts if isinstance(p, ImagePart))
    if any(IMAGE_TOKEN in t for t in texts):
        raise bad_request(f"messages[{i}]: the text contains {IMAGE_TOKEN!r}, which the template reserves for the "
                          "video; send the video as a video_url part")
    if len(videos) > 1 or (videos and images):
        raise bad_request(f"messages[{i}]: one video_url part, or image_url parts as the frames of one video")
    return "\n".join(texts), Media(videos[0] if videos else None, images)


def prompt_ids(turns: list[dict[str, Optional[str]]], system: Optional[str], tokenizer: Any, template: str
               ) -> np.ndarray:
    """The template's generation prompt for the turns, tokenised with -200 at the video."""
    tpl = get_template(template)
    if system is not None:
        tpl = dataclasses.replace(tpl, system=system.strip() + " " if system.strip() else "")
    try:
        return encode_conversation(turns, tokenizer, tpl, mode="eval").input_ids.astype(np.int32)
    except (MalformedConversation, ValueError) as e:
        raise bad_request(f"messages: {e}") from None
