/** `TetherClient`: every helper bound to one server (base URL, token, fetch, socket factory). */
import { TetherConnection } from './connection.js';
import * as rest from './rest.js';
import { streamChat } from './stream.js';
export class TetherClient {
    options;
    constructor(options = {}) {
        this.options = { ...options, baseUrl: rest.restOptions(options).baseUrl };
    }
    /** The `/ws/chat` URL of this server. */
    get wsUrl() {
        return `${this.options.baseUrl.replace(/^http/, 'ws')}/ws/chat`;
    }
    socketOptions() {
        const { token, socketFactory, reconnectDelaysMs } = this.options;
        return {
            ...(token !== undefined && { token }),
            ...(socketFactory !== undefined && { socketFactory }),
            ...(reconnectDelaysMs !== undefined && { reconnectDelaysMs }),
        };
    }
    /** A connection (not yet open: `open()` it, or just `chat()`, which opens it). */
    connection(onEvent) {
        return new TetherConnection({ url: this.wsUrl, ...this.socketOptions(), ...(onEvent !== undefined && { onEvent }) });
    }
    streamChat(options) {
        return streamChat({ backendUrl: this.wsUrl, ...this.socketOptions(), ...options });
    }
    health() {
        return rest.health(this.options);
    }
    listAgents() {
        return rest.listAgents(this.options);
    }
    getAgent(id) {
        return rest.getAgent(id, this.options);
    }
    updateAgent(agent) {
        return rest.updateAgent(agent, this.options);
    }
    deleteAgent(id) {
        return rest.deleteAgent(id, this.options);
    }
    listSessions(page) {
        return rest.listSessions(this.options, page);
    }
    createSession(fields) {
        return rest.createSession(this.options, fields);
    }
    getSession(id) {
        return rest.getSession(id, this.options);
    }
    listMessages(sessionId, which) {
        return rest.listMessages(sessionId, this.options, which);
    }
    setActiveBranch(sessionId, messageId) {
        return rest.setActiveBranch(sessionId, messageId, this.options);
    }
    renameSession(id, title) {
        return rest.renameSession(id, title, this.options);
    }
    searchMessages(q, filter) {
        return rest.searchMessages(q, this.options, filter);
    }
    deleteSession(id) {
        return rest.deleteSession(id, this.options);
    }
    listModels() {
        return rest.listModels(this.options);
    }
    listTools() {
        return rest.listTools(this.options);
    }
}
