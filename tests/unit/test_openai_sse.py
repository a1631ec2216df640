"""The SSE events of `/v1/chat/completions`: a text delta's pre-rendered event is the same bytes
as the whole chunk rendered by `json.dumps`, whatever the text and the model's name hold."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from tether.transports.openai import Completion

TEXTS = st.text(st.characters(exclude_categories=["Cs"]))


@given(text=TEXTS, model=TEXTS)
def test_a_text_event_is_the_chunk_rendered_whole(text: str, model: str) -> None:
    completion = Completion("chatcmpl-x", 1_700_000_000, model)
    event = completion.text(text)
    assert event == completion.delta({"content": text})
    chunk = json.loads(event.removeprefix(b"data: "))
    assert chunk["model"] == model
    assert chunk["choices"][0]["delta"] == {"content": text}
