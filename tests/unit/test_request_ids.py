"""Which X-Request-ID a request keeps."""

from __future__ import annotations

import re

import pytest

from tether.request_ids import request_id_from


@pytest.mark.parametrize("given", ["abc", "trace-7.a:b_c", "x" * 64])
def test_a_sane_client_id_is_kept(given: str) -> None:
    assert request_id_from([(b"host", b"h"), (b"X-Request-ID", given.encode())]) == given


@pytest.mark.parametrize("given", [b"", b"x" * 65, b"a b", b"a\nb", b"\xff\xfe", b"<script>"])
def test_anything_else_gets_a_new_id(given: bytes) -> None:
    fresh = request_id_from([(b"x-request-id", given)])
    assert re.fullmatch("[0-9a-f]{32}", fresh)
    assert request_id_from([]) != request_id_from([])
