"""The llamacpp engine's model-free parts: stop strings, context fitting, the prompt-state cache,
GGUF discovery, chat template rendering and the thread-to-asyncio bridge."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFWriter
from hypothesis import given
from hypothesis import strategies as st

from tests.support.timeouts import scaled
from tether.engines.base import ChatMessage, EngineError, ToolCall
from tether.engines.chat_template import ChatTemplate
from tether.engines.context_fit import (
    LOW_WATER,
    TRUNCATION_MARK,
    TrimMemory,
    fit_prompt,
    shorten,
)
from tether.engines.gguf_models import (
    discover_gguf,
    normalize_model_name,
    read_gguf_string,
    read_longest_token,
    template_takes_tools,
)
from tether.engines.prompt_cache import PromptCache, SavedState, common_prefix
from tether.engines.stop_strings import StopMatcher
from tether.engines.thread_stream import ThreadStream

TIMEOUT = scaled(10)

# -- stop strings ------------------------------------------------------------------------------


def run_stops(stops: Sequence[str], chunks: Sequence[str]) -> tuple[str, bool]:
    matcher = StopMatcher(stops)
    shown = "".join(matcher.feed(chunk) for chunk in chunks) + matcher.flush()
    return shown, matcher.stopped


def test_stop_string_split_across_chunks_is_cut_and_never_shown() -> None:
    assert run_stops(["</s>"], ["Paris<", "/", "s> and more"]) == ("Paris", True)


def test_text_that_only_looks_like_a_stop_start_is_released() -> None:
    matcher = StopMatcher(["STOP"])
    assert matcher.feed("ST") == ""  # could still become STOP
    assert matcher.feed("AY") == "STAY"
    assert matcher.flush() == ""


def test_held_back_text_is_flushed_at_the_end() -> None:
    assert run_stops(["STOP"], ["go ST"]) == ("go ST", False)


def test_earliest_of_several_stops_wins() -> None:
    assert run_stops(["b", "a"], ["xxab"]) == ("xx", True)


@given(
    text=st.text(max_size=40),
    stop=st.text(min_size=1, max_size=4),
    cuts=st.lists(st.integers(0, 40)),
)
def test_stop_matching_equals_cutting_the_whole_text(text: str, stop: str, cuts: list[int]) -> None:
    bounds = sorted({0, len(text), *(c for c in cuts if c <= len(text))})
    chunks = [text[a:b] for a, b in itertools.pairwise(bounds)]
    index = text.find(stop)
    expected = (text, False) if index < 0 else (text[:index], True)
    assert run_stops([stop], chunks) == expected


# -- context fitting ---------------------------------------------------------------------------


def word_render(messages: Sequence[ChatMessage]) -> list[int]:
    """A stand-in template and tokenizer: 2 tokens of framing per message, 1 per word."""
    return [0] * sum(2 + len(m.content.split()) for m in messages)


def conversation(turns: int, words: int = 10) -> list[ChatMessage]:
    messages = [ChatMessage("system", "be brief")]
    for i in range(turns):
        messages.append(ChatMessage("user", f"question {i} " + "w " * words))
        messages.append(ChatMessage("assistant", f"answer {i} " + "w " * words))
    messages.append(ChatMessage("user", "last question"))
    return messages


def test_history_that_fits_is_untouched() -> None:
    messages = conversation(2)
    fitted = fit_prompt(messages, word_render, budget=1000)
    assert fitted.messages == tuple(messages)
    assert fitted.trimmed_messages == 0


def test_oldest_turns_go_first_keeping_system_and_last_user() -> None:
    messages = conversation(20)
    fitted = fit_prompt(messages, word_render, budget=60)
    assert len(fitted.tokens) <= 60
    assert fitted.messages[0] == messages[0]
    assert fitted.messages[-1] == messages[-1]
    assert fitted.messages[1:-1] == tuple(messages[len(messages) - len(fitted.messages) + 1 : -1])
    assert fitted.trimmed_messages == len(messages) - len(fitted.messages)
    assert fitted.trimmed_messages % 2 == 0  # whole turns: a user message with its answer


def test_tool_results_leave_with_the_turn_that_called_them() -> None:
    call = ToolCall("c1", "clock", {})
    messages = [
        ChatMessage("user", "what time " + "w " * 20),
        ChatMessage("assistant", "", tool_calls=(call,)),
        ChatMessage("tool", "12:00", name="clock", tool_call_id="c1"),
        ChatMessage("assistant", "noon"),
        ChatMessage("user", "thanks"),
    ]
    fitted = fit_prompt(messages, word_render, budget=10)
    assert fitted.messages == (messages[-1],)
    assert fitted.trimmed_messages == 4


def test_last_user_message_alone_too_long_is_shortened_not_dropped() -> None:
    words = " ".join(f"w{i}" for i in range(500))
    messages = [ChatMessage("system", "sys"), ChatMessage("user", words)]
    fitted = fit_prompt(messages, word_render, budget=50)
    assert len(fitted.tokens) <= 50
    assert fitted.truncated_messages == 1
    kept = fitted.messages[-1].content
    assert kept.startswith("w0 ")
    assert kept.endswith(" w499")
    assert TRUNCATION_MARK in kept
    assert fitted.messages[0].content == "sys"


def test_prompt_that_cannot_fit_at_all_is_an_engine_error() -> None:
    with pytest.raises(EngineError):
        fit_prompt([ChatMessage("user", "hi")], word_render, budget=1)


def test_shorten_keeps_both_ends() -> None:
    assert shorten("abcdefghijklmnopqrstuvwxyz", 14) == "abcd" + TRUNCATION_MARK + "vwxyz"
    assert shorten("short", 10) == "short"
    assert shorten("abcdefghij", 2) == ""


@given(turns=st.integers(0, 12), words=st.integers(0, 30), budget=st.integers(8, 300))
def test_fitted_prompt_never_exceeds_the_budget(turns: int, words: int, budget: int) -> None:
    messages = conversation(turns, words)
    fitted = fit_prompt(messages, word_render, budget)
    assert len(fitted.tokens) <= budget
    assert fitted.messages[-1].role == "user"


def grow(
    memory: TrimMemory, turns: int, budget: int, system: str = "be brief"
) -> list[tuple[int, int]]:
    """Fit a session turn by turn as it grows: each turn's messages dropped and prompt size."""
    messages = [ChatMessage("system", system)]
    fits: list[tuple[int, int]] = []
    for i in range(turns):
        messages.append(ChatMessage("user", f"question {i} " + "w " * 10))
        fitted = fit_prompt(messages, word_render, budget, memory)
        assert len(fitted.tokens) <= budget
        assert fitted.truncated_messages == 0
        # Truthful: exactly the oldest `trimmed_messages` after the system prompt are missing.
        assert fitted.messages == (messages[0], *messages[1 + fitted.trimmed_messages :])
        fits.append((fitted.trimmed_messages, len(fitted.tokens)))
        messages.append(ChatMessage("assistant", f"answer {i} " + "w " * 10))
    return fits


def test_without_memory_each_turn_drops_one_more_turn() -> None:
    # What the memory is for: the cut, and so the prompt's start, moves every turn.
    dropped = []
    messages = conversation(20)
    for end in range(3, len(messages) + 1, 2):
        dropped.append(fit_prompt(messages[:end], word_render, budget=100).trimmed_messages)
    moving = [after for before, after in itertools.pairwise(dropped) if before and after]
    assert moving
    assert all(after == before + 2 for before, after in itertools.pairwise(moving))


def test_with_memory_a_trim_goes_to_the_low_water_mark_and_then_holds() -> None:
    fits = grow(TrimMemory(), turns=30, budget=200)
    dropped = [count for count, _ in fits]
    first = next(i for i, count in enumerate(dropped) if count)
    assert fits[first][1] <= 200 * LOW_WATER
    # The cut stays put for several turns at a time, and only ever moves forward.
    assert dropped[first + 1] == dropped[first]
    assert dropped == sorted(dropped)
    moves = sum(1 for a, b in itertools.pairwise(dropped[first:]) if a != b)
    assert moves <= (len(dropped) - first) // 3


def test_another_conversation_does_not_share_a_cut() -> None:
    memory = TrimMemory()
    grow(memory, turns=12, budget=200)
    remembered = len(memory)
    grow(memory, turns=12, budget=200, system="another system prompt")
    assert len(memory) > remembered


def test_a_remembered_cut_that_no_longer_fits_moves_on() -> None:
    memory = TrimMemory()
    messages = conversation(20)
    first = fit_prompt(messages, word_render, 200, memory)
    tight = fit_prompt(messages, word_render, 60, memory)  # e.g. a bigger max_tokens
    assert len(tight.tokens) <= 60
    assert tight.trimmed_messages > first.trimmed_messages


def newest_covering(messages: list[ChatMessage], words: int) -> list[ChatMessage]:
    """The system prompt and the newest messages from the user message at which they hold
    `words` words (what the chat core loads of a long session, in this test's units)."""
    held = 0
    for start in range(len(messages) - 1, 0, -1):
        held += len(messages[start].content.split())
        if held >= words and messages[start].role == "user":
            return [messages[0], *messages[start:]]
    return messages


def test_a_cut_is_found_again_when_the_history_starts_later() -> None:
    # The chat core gives the engine only a long session's newest messages, so the history's
    # start moves as the session grows: the fitted prompts are still those of the whole history.
    whole, tail = TrimMemory(), TrimMemory()
    messages = [ChatMessage("system", "be brief")]
    trimmed = 0
    for i in range(40):
        messages.append(ChatMessage("user", f"question {i} " + "w " * 10))
        expected = fit_prompt(messages, word_render, 200, whole)
        got = fit_prompt(newest_covering(messages, 200), word_render, 200, tail)
        assert got.messages == expected.messages
        assert got.tokens == expected.tokens
        trimmed = max(trimmed, expected.trimmed_messages)
        messages.append(ChatMessage("assistant", f"answer {i} " + "w " * 10))
    assert trimmed > 0


def test_trim_memory_keeps_the_most_recent_cuts() -> None:
    memory = TrimMemory(capacity=2)
    for key in (b"a", b"b", b"c"):
        memory.remember(key)
    assert memory.latest([b"a"]) is None
    assert memory.latest([b"b", b"c", b"x"]) == 1


@given(
    turns=st.integers(0, 12),
    words=st.integers(0, 30),
    budgets=st.lists(st.integers(8, 300), min_size=1, max_size=4),
)
def test_fitted_prompt_with_memory_never_exceeds_the_budget(
    turns: int, words: int, budgets: list[int]
) -> None:
    memory = TrimMemory()
    messages = conversation(turns, words)
    for budget in budgets:
        fitted = fit_prompt(messages, word_render, budget, memory)
        assert len(fitted.tokens) <= budget
        assert fitted.messages[-1].role == "user"


# -- prompt state cache ------------------------------------------------------------------------


def state(tokens: list[int], size: int = 100) -> SavedState:
    return SavedState(np.asarray(tokens, dtype=np.intc), b"x" * size)


def test_common_prefix() -> None:
    a = np.asarray([1, 2, 3, 4], dtype=np.intc)
    assert common_prefix(a, np.asarray([1, 2, 9], dtype=np.intc)) == 2
    assert common_prefix(a, a[:2]) == 2
    assert common_prefix(a, np.asarray([], dtype=np.intc)) == 0


def test_cache_finds_the_longest_prefix_across_sessions() -> None:
    cache = PromptCache(10_000)
    cache.put(state([1, 2, 3, 4]))
    cache.put(state([7, 8, 9]))
    length, found = cache.best(np.asarray([7, 8, 9, 10], dtype=np.intc))
    assert length == 3
    assert found is not None
    assert found.tokens.tolist() == [7, 8, 9]
    assert cache.best(np.asarray([5], dtype=np.intc)) == (0, None)


def test_new_turn_replaces_the_entry_it_continues() -> None:
    cache = PromptCache(10_000)
    cache.put(state([1, 2]))
    cache.put(state([1, 2, 3, 4]))
    assert len(cache) == 1


def test_cache_evicts_least_recently_used_past_its_capacity() -> None:
    one = state([1], size=400)
    cache = PromptCache(one.size * 2)
    cache.put(one)
    cache.put(state([2], size=400))
    cache.best(np.asarray([1], dtype=np.intc))  # touch [1]
    cache.put(state([3], size=400))
    assert cache.best(np.asarray([2], dtype=np.intc)) == (0, None)
    assert cache.best(np.asarray([1], dtype=np.intc))[0] == 1
    assert cache.nbytes <= cache.capacity_bytes


# -- discovery ---------------------------------------------------------------------------------


def test_discovery_lists_gguf_files_by_stem(tmp_path: Path) -> None:
    (tmp_path / "b.Q4_1.gguf").write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.gguf").write_bytes(b"")
    (tmp_path / "big-00001-of-00002.gguf").write_bytes(b"")
    (tmp_path / "big-00002-of-00002.gguf").write_bytes(b"")
    (tmp_path / "notes.txt").write_bytes(b"")
    (tmp_path / "mlc-model").mkdir()
    found = discover_gguf(tmp_path)
    assert list(found) == ["a", "b.Q4_1", "big-00001-of-00002"]
    assert found["a"] == tmp_path / "sub" / "a.gguf"
    assert discover_gguf(tmp_path / "missing") == {}


def test_gguf_header_string_is_read_past_arrays(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    writer = GGUFWriter(path, arch="llama")
    writer.add_token_list(["<s>", "a", "bc"])
    writer.add_token_scores([0.0, 1.0, 2.0])
    writer.add_uint32("x.count", 7)
    writer.add_chat_template("{% for tool in tools %}{{ tool }}{% endfor %}")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    template = read_gguf_string(path, "tokenizer.chat_template")
    assert template == "{% for tool in tools %}{{ tool }}{% endfor %}"
    assert template_takes_tools(template)
    assert read_gguf_string(path, "general.architecture") == "llama"
    assert read_gguf_string(path, "x.count") is None  # not a string
    assert read_gguf_string(path, "missing") is None
    (tmp_path / "junk.gguf").write_bytes(b"GGUF\x03\x00\x00\x00\xff")
    assert read_gguf_string(tmp_path / "junk.gguf", "any") is None
    assert read_gguf_string(tmp_path / "absent.gguf", "any") is None


def test_the_longest_token_is_read_from_the_vocabulary(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    writer = GGUFWriter(path, arch="llama")
    writer.add_chat_template("{{ messages }}")
    writer.add_token_list(["<s>", "a", "ĠĠĠĠ", "bc"])  # Ġ: a space, stored as two bytes
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    assert read_longest_token(path) == 8
    assert read_gguf_string(path, "tokenizer.chat_template") == "{{ messages }}"
    assert read_longest_token(tmp_path / "absent.gguf") is None


def test_templates_without_tools_do_not_take_tools() -> None:
    assert not template_takes_tools(None)
    assert not template_takes_tools("{{ messages }} tool_call toolset")


def test_model_names_are_normalized() -> None:
    assert normalize_model_name("dist/x.gguf") == "x" == normalize_model_name("x")


# -- chat template -----------------------------------------------------------------------------

QWEN_LIKE = (
    "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}"
    "{% for c in m.tool_calls or [] %}"
    "[call {{ c.function.name }} {{ c.function.arguments | tojson }}]"
    "{% endfor %}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
STRICT = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if (m.role == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('roles must alternate user/assistant') }}{% endif %}"
    "[{{ m.role }}]{{ m.content }}{% endfor %}"
)

TOOL_TURN = (
    ChatMessage("system", "sys"),
    ChatMessage("user", "time?"),
    ChatMessage("assistant", "", tool_calls=(ToolCall("c1", "clock", {"tz": "UTC"}),)),
    ChatMessage("tool", "12:00", name="clock", tool_call_id="c1"),
)


def test_template_that_knows_tool_calls_gets_them_structured() -> None:
    text = ChatTemplate(QWEN_LIKE, bos_token="", eos_token="").render(TOOL_TURN)
    assert '[call clock {"tz": "UTC"}]' in text
    assert text.endswith("<|tool|>12:00<|assistant|>")


def test_template_without_tool_calls_sees_them_inline() -> None:
    text = ChatTemplate(None, bos_token="", eos_token="").render(TOOL_TURN)  # ChatML fallback
    assert '<tool_call>\n{"name": "clock", "arguments": {"tz": "UTC"}}\n</tool_call>' in text
    assert "<|im_start|>tool\n12:00<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")


def test_strict_template_gets_alternating_plain_turns() -> None:
    text = ChatTemplate(STRICT, bos_token="<s>", eos_token="</s>").render(TOOL_TURN)
    assert text.startswith("<s>[user]sys\n\ntime?[assistant]<tool_call>")
    assert text.endswith("[user]<tool_response>\n12:00\n</tool_response>")


def test_template_that_always_fails_is_an_engine_error() -> None:
    template = ChatTemplate("{{ raise_exception('no') }}", bos_token="", eos_token="")
    with pytest.raises(EngineError, match="chat template"):
        template.render([ChatMessage("user", "hi")])


# -- thread stream -----------------------------------------------------------------------------


@pytest.fixture
def executor() -> Iterator[Executor]:
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield pool


Work = Callable[[Callable[[int], None], threading.Event], None]


def started(
    work: Work, executor: Executor, *, on_done: Callable[[], None] | None = None
) -> ThreadStream[int]:
    """A stream fed by `work` on the executor's thread, as a decode loop feeds one."""
    stream: ThreadStream[int] = ThreadStream(on_done=on_done)

    def run() -> None:
        try:
            work(stream.emit, stream.cancelled)
        except BaseException as error:
            stream.end(error)
        else:
            stream.end()

    executor.submit(run)
    return stream


def counting_work(limit: int, produced: list[int]) -> Work:
    def work(emit: Callable[[int], None], cancelled: threading.Event) -> None:
        for i in range(limit):
            if cancelled.is_set():
                return
            produced.append(i)
            emit(i)

    return work


async def test_thread_stream_delivers_items_in_order(executor: Executor) -> None:
    produced: list[int] = []
    stream = started(counting_work(100, produced), executor)
    assert [i async for i in stream] == list(range(100))
    await asyncio.wait_for(stream.done, TIMEOUT)


async def test_done_callbacks_have_run_when_the_consumer_sees_the_end(
    executor: Executor,
) -> None:
    freed: list[bool] = []
    stream = started(counting_work(3, []), executor, on_done=lambda: freed.append(True))
    async for _ in stream:
        pass
    assert freed == [True]


async def test_thread_stream_reraises_the_workers_error(executor: Executor) -> None:
    def work(emit: Callable[[int], None], cancelled: threading.Event) -> None:
        emit(1)
        raise EngineError("boom")

    stream = started(work, executor)
    seen: list[int] = []

    async def consume() -> None:
        async for item in stream:
            seen.append(item)

    with pytest.raises(EngineError, match="boom"):
        await consume()
    assert seen == [1]


async def test_what_the_worker_emits_after_a_cancel_can_be_drained(executor: Executor) -> None:
    gate = threading.Event()

    def work(emit: Callable[[int], None], cancelled: threading.Event) -> None:
        emit(0)
        gate.wait(TIMEOUT)
        emit(1)  # the item in flight when the cancel came
        if cancelled.is_set():
            emit(-1)  # a summary on the way out
            return
        emit(2)

    stream = started(work, executor)
    async with contextlib.aclosing(aiter(stream)) as items:
        async for _ in items:
            break
    gate.set()
    assert await asyncio.wait_for(stream.drain(), TIMEOUT) == [1, -1]
    assert await stream.drain() == []  # the end was seen: nothing more to wait for


async def test_a_drain_can_stop_at_the_item_it_waits_for(executor: Executor) -> None:
    finish = threading.Event()

    def work(emit: Callable[[int], None], cancelled: threading.Event) -> None:
        emit(0)
        cancelled.wait(TIMEOUT)
        emit(-1)  # the summary
        finish.wait(TIMEOUT)  # e.g. saving state: the drain does not wait for this

    stream = started(work, executor)
    async with contextlib.aclosing(aiter(stream)) as items:
        async for _ in items:
            break
    assert await asyncio.wait_for(stream.drain(until=lambda i: i < 0), TIMEOUT) == [-1]
    assert not stream.done.done()
    finish.set()
    await asyncio.wait_for(stream.done, TIMEOUT)


async def test_leaving_the_stream_early_stops_the_worker(executor: Executor) -> None:
    gate = threading.Event()
    produced: list[int] = []

    def work(emit: Callable[[int], None], cancelled: threading.Event) -> None:
        for i in range(1_000_000):
            if cancelled.is_set():
                return
            produced.append(i)
            emit(i)
            if i == 0:
                gate.wait(TIMEOUT)  # let the consumer leave while the worker is mid-stream

    stream = started(work, executor)
    async with contextlib.aclosing(aiter(stream)) as items:
        async for _ in items:
            break
    assert stream.cancelled.is_set()
    gate.set()
    await asyncio.wait_for(stream.done, TIMEOUT)
    assert produced in ([0], [0, 1])  # at most one more item after the cancel
