/**
 * Tether's REST API: agents, sessions and their messages, models, tools, health.
 *
 * Every helper takes a base URL (`http://127.0.0.1:8000`) or `RestOptions`; without one it uses
 * the page's origin in a browser and `http://localhost:8000` elsewhere. A non-2xx answer rejects
 * with `TetherError` carrying the server's `{"error": {"code", "message"}}` (or `http_<status>`).
 */
export class TetherError extends Error {
    code;
    status;
    constructor(code, message, status) {
        super(message);
        this.name = 'TetherError';
        this.code = code;
        this.status = status;
    }
}
export function siblingPosition(message) {
    const at = message.siblings.indexOf(message.id);
    return {
        index: at + 1,
        count: message.siblings.length,
        previous: at > 0 ? message.siblings[at - 1] : undefined,
        next: at >= 0 && at < message.siblings.length - 1 ? message.siblings[at + 1] : undefined,
    };
}
function defaultBaseUrl() {
    const location = globalThis.location;
    return location?.origin !== undefined && location.origin !== 'null'
        ? location.origin
        : 'http://localhost:8000';
}
export function restOptions(target) {
    const options = typeof target === 'string' ? { baseUrl: target } : { ...(target ?? {}) };
    return { ...options, baseUrl: (options.baseUrl ?? defaultBaseUrl()).replace(/\/+$/, '') };
}
async function errorOf(response) {
    let code = `http_${response.status}`;
    let message = `${response.status} ${response.statusText}`.trim();
    try {
        const body = (await response.json());
        if (typeof body.error?.code === 'string')
            code = body.error.code;
        if (typeof body.error?.message === 'string')
            message = body.error.message;
    }
    catch {
        // not a JSON error body: the status says it
    }
    return new TetherError(code, message, response.status);
}
/** One REST call; resolves to the parsed JSON body, or undefined for 204. */
export async function request(target, method, path, body) {
    const options = restOptions(target);
    const headers = {};
    if (options.token !== undefined)
        headers['Authorization'] = `Bearer ${options.token}`;
    const init = { method, headers };
    if (body !== undefined) {
        headers['Content-Type'] = 'application/json';
        init.body = JSON.stringify(body);
    }
    const doFetch = options.fetch ?? ((input, init) => globalThis.fetch(input, init));
    let response;
    try {
        response = await doFetch(`${options.baseUrl}${path}`, init);
    }
    catch (cause) {
        throw new TetherError('unreachable', `${method} ${options.baseUrl}${path}: ${String(cause)}`);
    }
    if (!response.ok)
        throw await errorOf(response);
    if (response.status === 204)
        return undefined;
    return (await response.json());
}
const seg = encodeURIComponent;
/** `(id, target)` or `(baseUrl, id)`: the base URL is the one with a scheme. */
function idAndTarget(first, second) {
    return typeof second === 'string' && /^[a-z][a-z0-9+.-]*:\/\//i.test(first) ? [second, first] : [first, second];
}
export function listAgents(target) {
    return request(target, 'GET', '/agents');
}
export function getAgent(first, second) {
    const [id, target] = idAndTarget(first, second);
    return request(target, 'GET', `/agents/${seg(id)}`);
}
/** Create or replace an agent (the server upserts on PUT). */
export function updateAgent(agent, target) {
    const { id, ...fields } = agent;
    return request(target, 'PUT', `/agents/${seg(id)}`, fields);
}
export function deleteAgent(first, second) {
    const [id, target] = idAndTarget(first, second);
    return request(target, 'DELETE', `/agents/${seg(id)}`);
}
export function listSessions(target, page = {}) {
    const query = new URLSearchParams();
    if (page.limit !== undefined)
        query.set('limit', String(page.limit));
    if (page.offset !== undefined)
        query.set('offset', String(page.offset));
    const encoded = query.toString();
    const suffix = encoded === '' ? '' : `?${encoded}`;
    return request(target, 'GET', `/sessions${suffix}`);
}
export function createSession(target, fields = {}) {
    return request(target, 'POST', '/sessions', fields);
}
export function getSession(id, target) {
    return request(target, 'GET', `/sessions/${seg(id)}`);
}
/** The session's active branch, root to active leaf; `{tree: true}`: every message, oldest first. */
export function listMessages(sessionId, target, which = {}) {
    const suffix = which.tree === true ? '?tree=true' : '';
    return request(target, 'GET', `/sessions/${seg(sessionId)}/messages${suffix}`);
}
/** Make the branch through `messageId` the session's active one, down to its newest leaf
 * (what `listMessages` and the next turn without a parent follow); resolves to the session. */
export function setActiveBranch(sessionId, messageId, target) {
    return request(target, 'PUT', `/sessions/${seg(sessionId)}/active`, { message_id: messageId });
}
export function renameSession(id, title, target) {
    return request(target, 'PATCH', `/sessions/${seg(id)}`, { title });
}
/** Full-text search over stored messages, best first. */
export async function searchMessages(q, target, filter = {}) {
    const query = new URLSearchParams({ q });
    if (filter.limit !== undefined)
        query.set('limit', String(filter.limit));
    if (filter.session_id !== undefined)
        query.set('session_id', filter.session_id);
    const body = await request(target, 'GET', `/search?${query}`);
    return body.results;
}
export function deleteSession(id, target) {
    return request(target, 'DELETE', `/sessions/${seg(id)}`);
}
export function listModels(target) {
    return request(target, 'GET', '/models');
}
export function listTools(target) {
    return request(target, 'GET', '/tools');
}
export function health(target) {
    return request(target, 'GET', '/health');
}
