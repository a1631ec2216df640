"""The browser UI's static files: served at / and /ui/*, open without the token (they hold no
data; the page asks for the token), while the API behind them still wants it."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.support.servers import make_settings, serve_app


async def test_the_ui_is_served_without_the_token_and_the_api_still_wants_it(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path, **{"server.token": "s3cret"})
    async with serve_app(settings) as server, httpx.AsyncClient(base_url=server.http_url) as http:
        page = await http.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert '<script type="module" src="/ui/app.js">' in page.text
        for path, kind in [
            ("/ui/app.js", "javascript"),
            ("/ui/style.css", "text/css"),
            ("/ui/client/index.js", "javascript"),
        ]:
            asset = await http.get(path)
            assert asset.status_code == 200, path
            assert kind in asset.headers["content-type"], path
        missing = await http.get("/ui/nope.js")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "not_found"
        assert (await http.get("/sessions")).status_code == 401
        authorized = await http.get("/sessions", headers={"Authorization": "Bearer s3cret"})
        assert authorized.status_code == 200
