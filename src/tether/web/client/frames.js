/**
 * The wire contract of Tether's WebSocket protocol v1 (`/ws/chat`): every client and server
 * frame as a type. All frames are JSON text; a socket carries many requests, interleaved; every
 * server frame names its `request_id` and a `seq` that starts at 0 per request and rises by 1.
 */
/** Parse a server frame's text; null when it is not a v1 server frame. */
export function parseServerFrame(text) {
    let value;
    try {
        value = JSON.parse(text);
    }
    catch {
        return null;
    }
    if (typeof value !== 'object' || value === null)
        return null;
    const frame = value;
    if (typeof frame['request_id'] !== 'string' || typeof frame['seq'] !== 'number')
        return null;
    const status = frame['status'];
    if (status === 'error') {
        return typeof frame['error'] === 'object' && frame['error'] !== null
            ? frame
            : null;
    }
    if (status === 'pong')
        return frame;
    if (status === 'processing' || status === 'chunk' || status === 'tool' || status === 'complete') {
        return typeof frame['chunk'] === 'object' && frame['chunk'] !== null
            ? frame
            : null;
    }
    return null;
}
