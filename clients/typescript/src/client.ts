/** `TetherClient`: every helper bound to one server (base URL, token, fetch, socket factory). */

import { TetherConnection, type ChatEvent, type SocketFactory } from './connection.js'
import * as rest from './rest.js'
import { streamChat, type ChatStream, type StreamChatOptions } from './stream.js'

export interface TetherClientOptions extends rest.RestOptions {
  socketFactory?: SocketFactory
  reconnectDelaysMs?: readonly number[]
}

export class TetherClient {
  readonly options: TetherClientOptions & { baseUrl: string }

  constructor(options: TetherClientOptions = {}) {
    this.options = { ...options, baseUrl: rest.restOptions(options).baseUrl }
  }

  /** The `/ws/chat` URL of this server. */
  get wsUrl(): string {
    return `${this.options.baseUrl.replace(/^http/, 'ws')}/ws/chat`
  }

  private socketOptions(): Pick<StreamChatOptions, 'token' | 'socketFactory' | 'reconnectDelaysMs'> {
    const { token, socketFactory, reconnectDelaysMs } = this.options
    return {
      ...(token !== undefined && { token }),
      ...(socketFactory !== undefined && { socketFactory }),
      ...(reconnectDelaysMs !== undefined && { reconnectDelaysMs }),
    }
  }

  /** A connection (not yet open: `open()` it, or just `chat()`, which opens it). */
  connection(onEvent?: (event: ChatEvent) => void): TetherConnection {
    return new TetherConnection({ url: this.wsUrl, ...this.socketOptions(), ...(onEvent !== undefined && { onEvent }) })
  }

  streamChat(options: Omit<StreamChatOptions, 'backendUrl'>): Promise<ChatStream> {
    return streamChat({ backendUrl: this.wsUrl, ...this.socketOptions(), ...options })
  }

  health(): Promise<rest.Health> {
    return rest.health(this.options)
  }
  listAgents(): Promise<rest.Agent[]> {
    return rest.listAgents(this.options)
  }
  getAgent(id: string): Promise<rest.Agent> {
    return rest.getAgent(id, this.options)
  }
  updateAgent(agent: rest.AgentInput): Promise<rest.Agent> {
    return rest.updateAgent(agent, this.options)
  }
  deleteAgent(id: string): Promise<void> {
    return rest.deleteAgent(id, this.options)
  }
  listSessions(page?: { limit?: number; offset?: number }): Promise<rest.Session[]> {
    return rest.listSessions(this.options, page)
  }
  createSession(fields?: { title?: string; agent_id?: string }): Promise<rest.Session> {
    return rest.createSession(this.options, fields)
  }
  getSession(id: string): Promise<rest.Session> {
    return rest.getSession(id, this.options)
  }
  listMessages(sessionId: string, which?: { tree?: boolean }): Promise<rest.StoredMessage[]> {
    return rest.listMessages(sessionId, this.options, which)
  }
  setActiveBranch(sessionId: string, messageId: string): Promise<rest.Session> {
    return rest.setActiveBranch(sessionId, messageId, this.options)
  }
  renameSession(id: string, title: string): Promise<rest.Session> {
    return rest.renameSession(id, title, this.options)
  }
  searchMessages(q: string, filter?: { limit?: number; session_id?: string }): Promise<rest.SearchResult[]> {
    return rest.searchMessages(q, this.options, filter)
  }
  deleteSession(id: string): Promise<void> {
    return rest.deleteSession(id, this.options)
  }
  listModels(): Promise<rest.ModelInfo[]> {
    return rest.listModels(this.options)
  }
  listTools(): Promise<rest.ToolSpec[]> {
    return rest.listTools(this.options)
  }
}
