/**
 * Seed 004's `streamChat`: one socket for a conversation's turns. It resolves once the socket is
 * open (rejects if it cannot open) to `{sendMessage, stop}`. Turns continue the conversation:
 * `conversationId`, or the session the first turn created (a turn sent before that one's
 * `processing` arrived waits for it, so all turns land in one session).
 */
import { TetherConnection, newRequestId, } from './connection.js';
export async function streamChat(options) {
    const connection = new TetherConnection({
        url: options.backendUrl,
        onEvent: options.onEvent,
        ...(options.token !== undefined && { token: options.token }),
        ...(options.socketFactory !== undefined && { socketFactory: options.socketFactory }),
        ...(options.reconnectDelaysMs !== undefined && { reconnectDelaysMs: options.reconnectDelaysMs }),
    });
    await connection.open();
    let conversationId = options.conversationId;
    let sessionKnown = Promise.resolve();
    const sendMessage = (turn) => {
        const merged = { ...options.options, ...turn.options };
        let resolveStarted;
        const started = new Promise((resolve) => {
            resolveStarted = resolve;
        });
        const begin = (requestId) => connection.chat({
            text: turn.message,
            options: merged,
            ...(requestId !== undefined && { requestId }),
            ...(conversationId !== undefined && { sessionId: conversationId }),
            ...(options.agentId !== undefined && { agentId: options.agentId }),
            ...(turn.parentId !== undefined && { parentId: turn.parentId }),
            ...(turn.signal !== undefined && { signal: turn.signal }),
            onEvent: (event) => {
                if (event.type === 'start') {
                    conversationId ??= event.sessionId;
                    resolveStarted();
                }
            },
        });
        if (conversationId !== undefined)
            return begin();
        // No session yet: wait until the turn that creates it has started, then join it.
        const waitFor = sessionKnown;
        sessionKnown = started;
        const requestId = newRequestId();
        let inner;
        let cancelled = false;
        const result = waitFor.then(() => {
            inner = begin(requestId);
            if (cancelled)
                inner.cancel();
            return inner.result;
        });
        result.catch(() => undefined);
        void result.finally(resolveStarted).catch(() => undefined);
        return Object.assign(result, {
            requestId,
            result,
            cancel: () => {
                cancelled = true;
                inner?.cancel();
            },
        });
    };
    return {
        sendMessage,
        stop: () => connection.close(),
        get conversationId() {
            return conversationId;
        },
        connection,
    };
}
