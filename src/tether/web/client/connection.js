/**
 * One logical connection to `/ws/chat` that outlives its sockets.
 *
 * Each chat request is tracked by id with the last `seq` it delivered. When the socket drops
 * (network, proxy, server restart) while requests run, the connection opens a new socket with
 * backoff and sends `resume` with `after_seq` for each of them (plus the `token` of its
 * `processing` frame when the server gave one); frames at or below a request's last `seq` are
 * dropped, so every frame reaches the caller exactly once and in order. A `chat` that the server
 * never got (resume answers `not_found` before any frame) is sent again under the same id. With
 * no request running, a dropped socket is opened again by the next `chat`.
 *
 * Failures: `open()` rejects when the first socket cannot open; a request rejects with
 * `TetherError` for an `error` frame (its `code`), `unauthorized` (close 4401), `closed` (after
 * `close()`) or `disconnected` (every reconnection attempt failed).
 */
import { parseServerFrame, } from './frames.js';
import { TetherError } from './rest.js';
export const DEFAULT_RECONNECT_DELAYS_MS = [100, 250, 500, 1000, 2000, 4000, 8000, 15000];
const OPEN = 1;
const UNAUTHORIZED = 4401;
// Failures that trying again cannot mend: the running requests end with them at once.
const PERMANENT = new Set(['unauthorized', 'no_websocket']);
const OPTION_NAMES = {
    maxNewTokens: 'max_tokens',
    maxTokens: 'max_tokens',
    topP: 'top_p',
    showThoughts: 'show_thoughts',
    tokenDelayMs: 'token_delay_ms',
};
export function toWireOptions(options) {
    const wire = {};
    for (const [name, value] of Object.entries(options)) {
        if (value !== undefined)
            wire[OPTION_NAMES[name] ?? name] = value;
    }
    return wire;
}
export function newRequestId() {
    return globalThis.crypto.randomUUID();
}
function wsUrl(url) {
    return url.replace(/^http(s?):\/\//, 'ws$1://');
}
function messageText(data) {
    if (typeof data === 'string')
        return data;
    if (data instanceof ArrayBuffer)
        return new TextDecoder().decode(data);
    return String(data); // the `ws` package's Buffer
}
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
export class TetherConnection {
    options;
    delays;
    running = new Map();
    socket;
    connecting;
    closed = false;
    constructor(options) {
        this.options = options;
        this.delays = options.reconnectDelaysMs ?? DEFAULT_RECONNECT_DELAYS_MS;
    }
    /** Open the socket; rejects when it cannot open. */
    async open() {
        if (this.closed)
            throw new TetherError('closed', 'the connection was closed');
        if (this.socket?.readyState === OPEN)
            return;
        this.connecting ??= this.connect().finally(() => {
            this.connecting = undefined;
        });
        await this.connecting;
        if (!this.isOpen)
            throw new TetherError('unreachable', `cannot open ${this.options.url}`);
    }
    get isOpen() {
        return this.socket?.readyState === OPEN;
    }
    /** Ids of the requests still running. */
    get runningRequests() {
        return [...this.running.keys()];
    }
    /** Start one turn on this connection. */
    chat(request) {
        const frame = { type: 'chat', request_id: request.requestId ?? newRequestId(), text: request.text };
        if (request.sessionId !== undefined)
            frame.session_id = request.sessionId;
        if (request.agentId !== undefined)
            frame.agent_id = request.agentId;
        if (request.parentId !== undefined)
            frame.parent_id = request.parentId;
        if (request.siblingOf !== undefined)
            frame.sibling_of = request.siblingOf;
        if (request.options !== undefined)
            frame.options = toWireOptions(request.options);
        const requestId = frame.request_id;
        if (this.running.has(requestId))
            throw new TetherError('conflict', `request ${requestId} is already running`);
        return this.track(requestId, frame, -1, undefined, request);
    }
    /**
     * Edit the stored user message `messageId`: the new text goes beside it (a new branch, the
     * session's active one; the old message and its answers stay) and is answered. Any user
     * message, a session's first too.
     */
    edit(request) {
        const { messageId, ...fields } = request;
        return this.chat({ ...fields, siblingOf: messageId });
    }
    /** Answer the stored user message `messageId` (or any message of its turn) again: a new
     * answer beside the earlier ones, the session's active branch. */
    regenerate(request) {
        const frame = {
            type: 'regenerate', request_id: request.requestId ?? newRequestId(), session_id: request.sessionId, message_id: request.messageId,
        };
        if (request.options !== undefined)
            frame.options = toWireOptions(request.options);
        if (this.running.has(frame.request_id))
            throw new TetherError('conflict', `request ${frame.request_id} is already running`);
        return this.track(frame.request_id, frame, -1, undefined, request);
    }
    /**
     * Follow a request started elsewhere (another socket, a page before its reload): its frames
     * after `afterSeq` (-1: all of them), then live ones while it runs. `resumeToken` is its
     * `processing` frame's `resume_token`, which a server may want from another socket.
     */
    resume(request) {
        if (this.running.has(request.requestId))
            throw new TetherError('conflict', `request ${request.requestId} is already followed`);
        return this.track(request.requestId, undefined, request.afterSeq ?? -1, request.resumeToken, request);
    }
    track(requestId, frame, afterSeq, resumeToken, request) {
        let resolve;
        let reject;
        const result = new Promise((res, rej) => {
            resolve = res;
            reject = rej;
        });
        result.catch(() => undefined); // awaited by the caller, or its error went to onEvent already
        const entry = {
            requestId, frame, lastSeq: afterSeq, sent: frame === undefined, resent: frame === undefined, resumeToken,
            sessionId: undefined, userMessageId: undefined, text: '', cancelWanted: false, onEvent: request.onEvent,
            resolve, reject,
        };
        if (this.closed) {
            reject(new TetherError('closed', 'the connection was closed'));
        }
        else {
            this.running.set(requestId, entry);
            this.transmit(entry);
        }
        const cancel = () => this.cancel(requestId);
        if (request.signal !== undefined) {
            if (request.signal.aborted)
                cancel();
            else
                request.signal.addEventListener('abort', cancel, { once: true });
            const signal = request.signal;
            void result.finally(() => signal.removeEventListener('abort', cancel)).catch(() => undefined);
        }
        return Object.assign(result, { requestId, result, cancel });
    }
    /** Send `cancel` for a running request (after the next reconnection if the socket is down). */
    cancel(requestId) {
        const entry = this.running.get(requestId);
        if (entry === undefined)
            return;
        entry.cancelWanted = true;
        if (entry.sent)
            this.sendCancel(entry);
    }
    /** Close for good: running requests reject with `closed`. */
    close() {
        this.closed = true;
        this.failAll(new TetherError('closed', 'the connection was closed'));
        this.socket?.close(1000, 'client closed');
        this.socket = undefined;
    }
    transmit(entry) {
        if (this.socket?.readyState === OPEN) {
            if (entry.frame === undefined) {
                this.restart(entry);
                return;
            }
            this.sendFrame(entry.frame);
            entry.sent = true;
            if (entry.cancelWanted)
                this.sendCancel(entry);
            return;
        }
        // Not open: the (re)connection sends it. A lazy reopen after an idle drop starts here.
        if (this.connecting === undefined)
            void this.reconnect();
    }
    sendCancel(entry) {
        const frame = { type: 'cancel', request_id: entry.requestId };
        if (entry.resumeToken !== undefined)
            frame.token = entry.resumeToken;
        this.sendFrame(frame);
    }
    sendFrame(frame) {
        if (this.socket?.readyState === OPEN)
            this.socket.send(JSON.stringify(frame));
    }
    openSocket() {
        const headers = {};
        let url = wsUrl(this.options.url);
        const token = this.options.token;
        if (token !== undefined) {
            if (this.options.socketFactory !== undefined) {
                headers['Authorization'] = `Bearer ${token}`;
            }
            else {
                // Browsers cannot set headers on a WebSocket: the server takes `?token=` too.
                url += `${url.includes('?') ? '&' : '?'}token=${encodeURIComponent(token)}`;
            }
        }
        const factory = this.options.socketFactory;
        if (factory === undefined && typeof globalThis.WebSocket !== 'function') {
            return Promise.reject(new TetherError('no_websocket', 'no global WebSocket here (Node < 22): pass socketFactory, e.g. ' +
                "(url, init) => new WebSocket(url, init) with WebSocket from 'ws'"));
        }
        const socket = factory !== undefined ? factory(url, { headers }) : new globalThis.WebSocket(url);
        // Open is when the server answers a ping: a server that refuses the token accepts the
        // handshake and then closes with 4401, before any pong.
        const probe = `open-${newRequestId()}`;
        return new Promise((resolve, reject) => {
            socket.onopen = () => socket.send(JSON.stringify({ type: 'ping', request_id: probe }));
            socket.onmessage = (event) => {
                const frame = parseServerFrame(messageText(event.data));
                if (frame?.status === 'pong' && frame.request_id === probe)
                    resolve(socket);
            };
            socket.onerror = () => undefined; // onclose follows with the code
            socket.onclose = (event) => {
                const code = event.code;
                reject(code === UNAUTHORIZED
                    ? new TetherError('unauthorized', 'the server wants a valid token')
                    : new TetherError('unreachable', `cannot open ${this.options.url} (close ${code})`));
            };
        });
    }
    async connect() {
        const socket = await this.openSocket();
        if (this.closed) {
            socket.close(1000, 'client closed');
            return;
        }
        this.socket = socket;
        socket.onmessage = (event) => this.receive(messageText(event.data));
        socket.onclose = (event) => this.dropped(socket, event.code);
        for (const entry of this.running.values())
            this.restart(entry);
    }
    /** After a (re)connection: resume what the server has, send what it never got. */
    restart(entry) {
        if (!entry.sent && entry.frame !== undefined) {
            this.transmit(entry);
            return;
        }
        const frame = { type: 'resume', request_id: entry.requestId, after_seq: entry.lastSeq };
        if (entry.resumeToken !== undefined)
            frame.token = entry.resumeToken;
        this.sendFrame(frame);
        if (entry.cancelWanted)
            this.sendCancel(entry);
    }
    dropped(socket, code) {
        if (this.socket !== socket)
            return;
        this.socket = undefined;
        if (this.closed)
            return;
        if (code === UNAUTHORIZED) {
            this.failAll(new TetherError('unauthorized', 'the server wants a valid token'));
            return;
        }
        if (this.running.size > 0)
            void this.reconnect();
    }
    async reconnect() {
        if (this.connecting !== undefined)
            return;
        let resolveConnecting;
        this.connecting = new Promise((resolve) => {
            resolveConnecting = resolve;
        });
        try {
            let failure = new TetherError('disconnected', 'lost the connection');
            for (const [index, delayMs] of this.delays.entries()) {
                this.emit(undefined, { type: 'reconnecting', attempt: index + 1, delayMs });
                await sleep(delayMs);
                if (this.closed)
                    return;
                try {
                    await this.connect();
                    this.emit(undefined, { type: 'reconnected' });
                    return;
                }
                catch (error) {
                    failure = error instanceof TetherError ? error : new TetherError('unreachable', String(error));
                    if (PERMANENT.has(failure.code))
                        break;
                }
            }
            this.failAll(new TetherError(PERMANENT.has(failure.code) ? failure.code : 'disconnected', failure.message));
        }
        finally {
            this.connecting = undefined;
            resolveConnecting();
        }
    }
    failAll(error) {
        const entries = [...this.running.values()];
        this.running.clear();
        for (const entry of entries) {
            this.emit(entry, { type: 'error', requestId: entry.requestId, code: error.code, message: error.message });
            entry.reject(error);
        }
    }
    emit(entry, event) {
        entry?.onEvent?.(event);
        this.options.onEvent?.(event);
    }
    receive(text) {
        const frame = parseServerFrame(text);
        if (frame === null)
            return;
        const entry = this.running.get(frame.request_id);
        if (entry === undefined)
            return; // another request's final frame again, a pong, a stray
        if (frame.status === 'error') {
            // An error ends the request (after a drop it may refuse the resume itself, whatever its
            // seq), except a refusal of just the frame sent; a chat the server never received (it
            // dropped with the socket) is resumed into `not_found`: send it again, once.
            if (this.refusesOnlyThatFrame(entry, frame.error.code))
                return;
            if (frame.error.code === 'not_found' && entry.lastSeq < 0 && !entry.resent && entry.frame !== undefined) {
                entry.resent = true;
                this.sendFrame(entry.frame);
                return;
            }
        }
        else if (frame.seq <= entry.lastSeq) {
            return; // already delivered before the drop
        }
        entry.lastSeq = frame.seq;
        this.deliver(entry, frame);
    }
    /** `conflict` / `rate_limited` under a request that runs refuse only the frame just sent. */
    refusesOnlyThatFrame(entry, code) {
        return (code === 'conflict' || code === 'rate_limited') && entry.lastSeq >= 0;
    }
    deliver(entry, frame) {
        const requestId = frame.request_id;
        switch (frame.status) {
            case 'processing': {
                const metadata = frame.chunk.metadata;
                entry.sessionId = metadata.session_id;
                entry.userMessageId = metadata.user_message_id;
                const token = metadata.resume_token ?? metadata.token;
                if (typeof token === 'string')
                    entry.resumeToken = token;
                this.emit(entry, {
                    type: 'start', requestId, sessionId: metadata.session_id, userMessageId: metadata.user_message_id,
                    model: metadata.model, queuePosition: metadata.queue_position,
                    ...(typeof token === 'string' && { resumeToken: token }),
                });
                return;
            }
            case 'chunk':
                if (frame.chunk.type === 'text') {
                    entry.text += frame.chunk.data;
                    this.emit(entry, { type: 'token', requestId, token: frame.chunk.data });
                }
                else {
                    this.emit(entry, { type: 'thinking', requestId, token: frame.chunk.data });
                }
                return;
            case 'tool':
                if (frame.chunk.type === 'tool_call') {
                    this.emit(entry, { type: 'tool', requestId, name: frame.chunk.data.name, phase: 'call', payload: frame.chunk.data });
                }
                else {
                    this.emit(entry, { type: 'tool', requestId, name: frame.chunk.data.name, phase: 'result', payload: frame.chunk.data });
                }
                return;
            case 'complete': {
                this.running.delete(requestId);
                const metadata = frame.chunk.metadata;
                const result = {
                    requestId, sessionId: entry.sessionId, userMessageId: entry.userMessageId, messageId: metadata.message_id,
                    text: entry.text, finishReason: metadata.finish_reason, usage: metadata.usage, timings: metadata.timings, metadata,
                };
                this.emit(entry, { type: 'done', ...result });
                entry.resolve(result);
                return;
            }
            case 'error':
                this.running.delete(requestId);
                this.emit(entry, { type: 'error', requestId, code: frame.error.code, message: frame.error.message });
                entry.reject(new TetherError(frame.error.code, frame.error.message));
                return;
            case 'pong':
                return;
        }
    }
}
