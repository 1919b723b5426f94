"""The catalogue of client-facing texts: each one is listed in the docs, word for word."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterator

import pytest

from indextts_server.core import texts

from .conftest import REPO

NUMBER = 7919
"""Stands for a number in a text (``N`` in the docs)."""


def _rendered(function: Callable[..., str]) -> str:
    """The text as the docs write it: a number is ``N``, any other value ``<its name>``."""
    args: list[object] = []
    for parameter in inspect.signature(function, eval_str=True).parameters.values():
        if parameter.annotation in (int, float):
            args.append(NUMBER)
        else:
            args.append(f"<{parameter.name.rstrip('_')}>")
    return function(*args).replace(str(NUMBER), "N")


def catalogue() -> Iterator[tuple[str, str]]:
    for name, value in vars(texts).items():
        if name.startswith("_") or name == "REQUEST_TYPES":
            continue
        if isinstance(value, str):
            yield name, value
        elif isinstance(value, dict):
            yield from ((f"{name}[{key}]", text) for key, text in value.items())
        elif inspect.isfunction(value) and value.__module__ == texts.__name__:
            yield name, _rendered(value)


PAGES = ("docs/contract.md", "docs/http-api.md", "docs/voice-agents.md", "docs/home-assistant.md")
"""Where the texts are listed: the contract's errors and replies, the HTTP API's, Wyoming's."""


def documented() -> set[str]:
    listed = "".join((REPO / page).read_text(encoding="utf-8") for page in PAGES)
    return set(re.findall(r"`([^`\n]+)`", listed))


@pytest.mark.parametrize(("name", "text"), list(catalogue()), ids=[name for name, _ in catalogue()])
def test_every_client_text_is_in_the_docs(name: str, text: str) -> None:
    assert text in documented(), f"neither of {PAGES} shows texts.{name}: `{text}`"


def test_the_catalogue_covers_every_kind_of_text() -> None:
    names = dict(catalogue())
    assert names["queue_full"] == "服务器繁忙：队列已满（最多 N 个等待任务），请稍后重试"
    assert names["already_finished"] == "任务已结束（<status>），无法取消: <task_id>"
    assert names["task_timed_out"] == "任务超时：超过 N 秒未完成"
    assert len(names) > 40
