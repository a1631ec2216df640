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

import {
  parseServerFrame,
  type ChatFrame,
  type RegenerateFrame,
  type ChatOptionsV1,
  type ClientFrame,
  type CompleteMetadata,
  type ServerFrame,
  type ToolCallData,
  type ToolResultData,
  type Timings,
  type Usage,
  type FinishReason,
} from './frames.js'
import { TetherError } from './rest.js'

/** The part of a WebSocket the client uses: the browser's, Node 22's, or the `ws` package's. */
export interface WebSocketLike {
  readonly readyState: number
  send(data: string): void
  close(code?: number, reason?: string): void
  onopen: ((event: unknown) => void) | null
  onmessage: ((event: { data: unknown }) => void) | null
  onclose: ((event: { code: number; reason?: string }) => void) | null
  onerror: ((event: unknown) => void) | null
}

/** Opens a socket; `init.headers` carries `Authorization` when a token is set (Node: `ws`). */
export type SocketFactory = (url: string, init: { headers: Record<string, string> }) => WebSocketLike

/** Seed-004 option names (camelCase) map to the server's; the rest pass as they are. */
export interface ChatOptions extends ChatOptionsV1 {
  maxNewTokens?: number
  maxTokens?: number
  topP?: number
  showThoughts?: boolean
  tokenDelayMs?: number
}

export type ChatEvent =
  | { type: 'start'; requestId: string; sessionId: string; userMessageId: string; model: string; queuePosition: number; resumeToken?: string }
  | { type: 'token'; requestId: string; token: string }
  | { type: 'thinking'; requestId: string; token: string }
  | { type: 'tool'; requestId: string; name: string; phase: 'call'; payload: ToolCallData }
  | { type: 'tool'; requestId: string; name: string; phase: 'result'; payload: ToolResultData }
  | ({ type: 'done' } & TurnResult)
  | { type: 'error'; requestId: string; code: string; message: string }
  | { type: 'reconnecting'; attempt: number; delayMs: number }
  | { type: 'reconnected' }

export interface TurnResult {
  requestId: string
  sessionId: string | undefined
  userMessageId: string | undefined
  messageId: string
  text: string
  finishReason: FinishReason
  usage: Usage
  timings: Timings
  metadata: CompleteMetadata
}

/** A running turn: `await` it (or `.result`) for the final result. */
export type ChatTurn = Promise<TurnResult> & {
  readonly requestId: string
  readonly result: Promise<TurnResult>
  /** Send `cancel`: the partial answer is kept and the turn ends with `finishReason: 'cancelled'`. */
  cancel(): void
}

export interface ChatRequest {
  text: string
  requestId?: string
  sessionId?: string
  agentId?: string
  parentId?: string
  /** Put the new message beside this user message (an edit); not with `parentId`. */
  siblingOf?: string
  options?: ChatOptions
  /** Aborting sends `cancel`. */
  signal?: AbortSignal
  /** This request's events (the connection's `onEvent` gets them too). */
  onEvent?: (event: ChatEvent) => void
}

/** A new version of the stored user message `messageId`: stored beside it, then answered. */
export interface EditRequest {
  sessionId: string
  messageId: string
  text: string
  requestId?: string
  options?: ChatOptions
  signal?: AbortSignal
  onEvent?: (event: ChatEvent) => void
}

export interface RegenerateRequest {
  sessionId: string
  messageId: string
  requestId?: string
  options?: ChatOptions
  signal?: AbortSignal
  onEvent?: (event: ChatEvent) => void
}

export interface ConnectionOptions {
  /** `ws://host:port/ws/chat` (http(s) URLs are turned into ws(s)). */
  url: string
  token?: string
  socketFactory?: SocketFactory
  onEvent?: (event: ChatEvent) => void
  /** Waits before each reconnection attempt; the last failure ends the running requests. */
  reconnectDelaysMs?: readonly number[]
}

export const DEFAULT_RECONNECT_DELAYS_MS: readonly number[] = [100, 250, 500, 1000, 2000, 4000, 8000, 15000]

const OPEN = 1
const UNAUTHORIZED = 4401
// Failures that trying again cannot mend: the running requests end with them at once.
const PERMANENT = new Set(['unauthorized', 'no_websocket'])

const OPTION_NAMES: Record<string, keyof ChatOptionsV1> = {
  maxNewTokens: 'max_tokens',
  maxTokens: 'max_tokens',
  topP: 'top_p',
  showThoughts: 'show_thoughts',
  tokenDelayMs: 'token_delay_ms',
}

export function toWireOptions(options: ChatOptions): ChatOptionsV1 {
  const wire: Record<string, unknown> = {}
  for (const [name, value] of Object.entries(options)) {
    if (value !== undefined) wire[OPTION_NAMES[name] ?? name] = value
  }
  return wire as ChatOptionsV1
}

export function newRequestId(): string {
  return globalThis.crypto.randomUUID()
}

interface Running {
  requestId: string
  /** The chat frame to send (again); undefined for a request this connection only resumes. */
  frame: ChatFrame | RegenerateFrame | undefined
  lastSeq: number
  sent: boolean
  resent: boolean
  resumeToken: string | undefined
  sessionId: string | undefined
  userMessageId: string | undefined
  text: string
  cancelWanted: boolean
  onEvent: ((event: ChatEvent) => void) | undefined
  resolve: (result: TurnResult) => void
  reject: (error: TetherError) => void
}

function wsUrl(url: string): string {
  return url.replace(/^http(s?):\/\//, 'ws$1://')
}

function messageText(data: unknown): string {
  if (typeof data === 'string') return data
  if (data instanceof ArrayBuffer) return new TextDecoder().decode(data)
  return String(data) // the `ws` package's Buffer
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

export class TetherConnection {
  private readonly options: ConnectionOptions
  private readonly delays: readonly number[]
  private readonly running = new Map<string, Running>()
  private socket: WebSocketLike | undefined
  private connecting: Promise<void> | undefined
  private closed = false

  constructor(options: ConnectionOptions) {
    this.options = options
    this.delays = options.reconnectDelaysMs ?? DEFAULT_RECONNECT_DELAYS_MS
  }

  /** Open the socket; rejects when it cannot open. */
  async open(): Promise<void> {
    if (this.closed) throw new TetherError('closed', 'the connection was closed')
    if (this.socket?.readyState === OPEN) return
    this.connecting ??= this.connect().finally(() => {
      this.connecting = undefined
    })
    await this.connecting
    if (!this.isOpen) throw new TetherError('unreachable', `cannot open ${this.options.url}`)
  }

  get isOpen(): boolean {
    return this.socket?.readyState === OPEN
  }

  /** Ids of the requests still running. */
  get runningRequests(): string[] {
    return [...this.running.keys()]
  }

  /** Start one turn on this connection. */
  chat(request: ChatRequest): ChatTurn {
    const frame: ChatFrame = { type: 'chat', request_id: request.requestId ?? newRequestId(), text: request.text }
    if (request.sessionId !== undefined) frame.session_id = request.sessionId
    if (request.agentId !== undefined) frame.agent_id = request.agentId
    if (request.parentId !== undefined) frame.parent_id = request.parentId
    if (request.siblingOf !== undefined) frame.sibling_of = request.siblingOf
    if (request.options !== undefined) frame.options = toWireOptions(request.options)
    const requestId = frame.request_id
    if (this.running.has(requestId)) throw new TetherError('conflict', `request ${requestId} is already running`)
    return this.track(requestId, frame, -1, undefined, request)
  }

  /**
   * Edit the stored user message `messageId`: the new text goes beside it (a new branch, the
   * session's active one; the old message and its answers stay) and is answered. Any user
   * message, a session's first too.
   */
  edit(request: EditRequest): ChatTurn {
    const { messageId, ...fields } = request
    return this.chat({ ...fields, siblingOf: messageId })
  }

  /** Answer the stored user message `messageId` (or any message of its turn) again: a new
   * answer beside the earlier ones, the session's active branch. */
  regenerate(request: RegenerateRequest): ChatTurn {
    const frame: RegenerateFrame = {
      type: 'regenerate', request_id: request.requestId ?? newRequestId(), session_id: request.sessionId, message_id: request.messageId,
    }
    if (request.options !== undefined) frame.options = toWireOptions(request.options)
    if (this.running.has(frame.request_id)) throw new TetherError('conflict', `request ${frame.request_id} is already running`)
    return this.track(frame.request_id, frame, -1, undefined, request)
  }

  /**
   * Follow a request started elsewhere (another socket, a page before its reload): its frames
   * after `afterSeq` (-1: all of them), then live ones while it runs. `resumeToken` is its
   * `processing` frame's `resume_token`, which a server may want from another socket.
   */
  resume(request: {
    requestId: string
    afterSeq?: number
    resumeToken?: string
    signal?: AbortSignal
    onEvent?: (event: ChatEvent) => void
  }): ChatTurn {
    if (this.running.has(request.requestId)) throw new TetherError('conflict', `request ${request.requestId} is already followed`)
    return this.track(request.requestId, undefined, request.afterSeq ?? -1, request.resumeToken, request)
  }

  private track(
    requestId: string,
    frame: ChatFrame | RegenerateFrame | undefined,
    afterSeq: number,
    resumeToken: string | undefined,
    request: { signal?: AbortSignal; onEvent?: (event: ChatEvent) => void }
  ): ChatTurn {
    let resolve!: (result: TurnResult) => void
    let reject!: (error: TetherError) => void
    const result = new Promise<TurnResult>((res, rej) => {
      resolve = res
      reject = rej
    })
    result.catch(() => undefined) // awaited by the caller, or its error went to onEvent already
    const entry: Running = {
      requestId, frame, lastSeq: afterSeq, sent: frame === undefined, resent: frame === undefined, resumeToken,
      sessionId: undefined, userMessageId: undefined, text: '', cancelWanted: false, onEvent: request.onEvent,
      resolve, reject,
    }
    if (this.closed) {
      reject(new TetherError('closed', 'the connection was closed'))
    } else {
      this.running.set(requestId, entry)
      this.transmit(entry)
    }
    const cancel = (): void => this.cancel(requestId)
    if (request.signal !== undefined) {
      if (request.signal.aborted) cancel()
      else request.signal.addEventListener('abort', cancel, { once: true })
      const signal = request.signal
      void result.finally(() => signal.removeEventListener('abort', cancel)).catch(() => undefined)
    }
    return Object.assign(result, { requestId, result, cancel })
  }

  /** Send `cancel` for a running request (after the next reconnection if the socket is down). */
  cancel(requestId: string): void {
    const entry = this.running.get(requestId)
    if (entry === undefined) return
    entry.cancelWanted = true
    if (entry.sent) this.sendCancel(entry)
  }

  /** Close for good: running requests reject with `closed`. */
  close(): void {
    this.closed = true
    this.failAll(new TetherError('closed', 'the connection was closed'))
    this.socket?.close(1000, 'client closed')
    this.socket = undefined
  }

  private transmit(entry: Running): void {
    if (this.socket?.readyState === OPEN) {
      if (entry.frame === undefined) {
        this.restart(entry)
        return
      }
      this.sendFrame(entry.frame)
      entry.sent = true
      if (entry.cancelWanted) this.sendCancel(entry)
      return
    }
    // Not open: the (re)connection sends it. A lazy reopen after an idle drop starts here.
    if (this.connecting === undefined) void this.reconnect()
  }

  private sendCancel(entry: Running): void {
    const frame: ClientFrame = { type: 'cancel', request_id: entry.requestId }
    if (entry.resumeToken !== undefined) frame.token = entry.resumeToken
    this.sendFrame(frame)
  }

  private sendFrame(frame: ClientFrame): void {
    if (this.socket?.readyState === OPEN) this.socket.send(JSON.stringify(frame))
  }

  private openSocket(): Promise<WebSocketLike> {
    const headers: Record<string, string> = {}
    let url = wsUrl(this.options.url)
    const token = this.options.token
    if (token !== undefined) {
      if (this.options.socketFactory !== undefined) {
        headers['Authorization'] = `Bearer ${token}`
      } else {
        // Browsers cannot set headers on a WebSocket: the server takes `?token=` too.
        url += `${url.includes('?') ? '&' : '?'}token=${encodeURIComponent(token)}`
      }
    }
    const factory = this.options.socketFactory
    if (factory === undefined && typeof globalThis.WebSocket !== 'function') {
      return Promise.reject(
        new TetherError(
          'no_websocket',
          'no global WebSocket here (Node < 22): pass socketFactory, e.g. ' +
            "(url, init) => new WebSocket(url, init) with WebSocket from 'ws'"
        )
      )
    }
    const socket =
      factory !== undefined ? factory(url, { headers }) : (new globalThis.WebSocket(url) as unknown as WebSocketLike)
    // Open is when the server answers a ping: a server that refuses the token accepts the
    // handshake and then closes with 4401, before any pong.
    const probe = `open-${newRequestId()}`
    return new Promise((resolve, reject) => {
      socket.onopen = () => socket.send(JSON.stringify({ type: 'ping', request_id: probe }))
      socket.onmessage = (event) => {
        const frame = parseServerFrame(messageText(event.data))
        if (frame?.status === 'pong' && frame.request_id === probe) resolve(socket)
      }
      socket.onerror = () => undefined // onclose follows with the code
      socket.onclose = (event) => {
        const code = event.code
        reject(
          code === UNAUTHORIZED
            ? new TetherError('unauthorized', 'the server wants a valid token')
            : new TetherError('unreachable', `cannot open ${this.options.url} (close ${code})`)
        )
      }
    })
  }

  private async connect(): Promise<void> {
    const socket = await this.openSocket()
    if (this.closed) {
      socket.close(1000, 'client closed')
      return
    }
    this.socket = socket
    socket.onmessage = (event) => this.receive(messageText(event.data))
    socket.onclose = (event) => this.dropped(socket, event.code)
    for (const entry of this.running.values()) this.restart(entry)
  }

  /** After a (re)connection: resume what the server has, send what it never got. */
  private restart(entry: Running): void {
    if (!entry.sent && entry.frame !== undefined) {
      this.transmit(entry)
      return
    }
    const frame: ClientFrame = { type: 'resume', request_id: entry.requestId, after_seq: entry.lastSeq }
    if (entry.resumeToken !== undefined) frame.token = entry.resumeToken
    this.sendFrame(frame)
    if (entry.cancelWanted) this.sendCancel(entry)
  }

  private dropped(socket: WebSocketLike, code: number): void {
    if (this.socket !== socket) return
    this.socket = undefined
    if (this.closed) return
    if (code === UNAUTHORIZED) {
      this.failAll(new TetherError('unauthorized', 'the server wants a valid token'))
      return
    }
    if (this.running.size > 0) void this.reconnect()
  }

  private async reconnect(): Promise<void> {
    if (this.connecting !== undefined) return
    let resolveConnecting!: () => void
    this.connecting = new Promise((resolve) => {
      resolveConnecting = resolve
    })
    try {
      let failure: TetherError = new TetherError('disconnected', 'lost the connection')
      for (const [index, delayMs] of this.delays.entries()) {
        this.emit(undefined, { type: 'reconnecting', attempt: index + 1, delayMs })
        await sleep(delayMs)
        if (this.closed) return
        try {
          await this.connect()
          this.emit(undefined, { type: 'reconnected' })
          return
        } catch (error) {
          failure = error instanceof TetherError ? error : new TetherError('unreachable', String(error))
          if (PERMANENT.has(failure.code)) break
        }
      }
      this.failAll(new TetherError(PERMANENT.has(failure.code) ? failure.code : 'disconnected', failure.message))
    } finally {
      this.connecting = undefined
      resolveConnecting()
    }
  }

  private failAll(error: TetherError): void {
    const entries = [...this.running.values()]
    this.running.clear()
    for (const entry of entries) {
      this.emit(entry, { type: 'error', requestId: entry.requestId, code: error.code, message: error.message })
      entry.reject(error)
    }
  }

  private emit(entry: Running | undefined, event: ChatEvent): void {
    entry?.onEvent?.(event)
    this.options.onEvent?.(event)
  }

  private receive(text: string): void {
    const frame = parseServerFrame(text)
    if (frame === null) return
    const entry = this.running.get(frame.request_id)
    if (entry === undefined) return // another request's final frame again, a pong, a stray
    if (frame.status === 'error') {
      // An error ends the request (after a drop it may refuse the resume itself, whatever its
      // seq), except a refusal of just the frame sent; a chat the server never received (it
      // dropped with the socket) is resumed into `not_found`: send it again, once.
      if (this.refusesOnlyThatFrame(entry, frame.error.code)) return
      if (frame.error.code === 'not_found' && entry.lastSeq < 0 && !entry.resent && entry.frame !== undefined) {
        entry.resent = true
        this.sendFrame(entry.frame)
        return
      }
    } else if (frame.seq <= entry.lastSeq) {
      return // already delivered before the drop
    }
    entry.lastSeq = frame.seq
    this.deliver(entry, frame)
  }

  /** `conflict` / `rate_limited` under a request that runs refuse only the frame just sent. */
  private refusesOnlyThatFrame(entry: Running, code: string): boolean {
    return (code === 'conflict' || code === 'rate_limited') && entry.lastSeq >= 0
  }

  private deliver(entry: Running, frame: ServerFrame): void {
    const requestId = frame.request_id
    switch (frame.status) {
      case 'processing': {
        const metadata = frame.chunk.metadata
        entry.sessionId = metadata.session_id
        entry.userMessageId = metadata.user_message_id
        const token = metadata.resume_token ?? metadata.token
        if (typeof token === 'string') entry.resumeToken = token
        this.emit(entry, {
          type: 'start', requestId, sessionId: metadata.session_id, userMessageId: metadata.user_message_id,
          model: metadata.model, queuePosition: metadata.queue_position,
          ...(typeof token === 'string' && { resumeToken: token }),
        })
        return
      }
      case 'chunk':
        if (frame.chunk.type === 'text') {
          entry.text += frame.chunk.data
          this.emit(entry, { type: 'token', requestId, token: frame.chunk.data })
        } else {
          this.emit(entry, { type: 'thinking', requestId, token: frame.chunk.data })
        }
        return
      case 'tool':
        if (frame.chunk.type === 'tool_call') {
          this.emit(entry, { type: 'tool', requestId, name: frame.chunk.data.name, phase: 'call', payload: frame.chunk.data })
        } else {
          this.emit(entry, { type: 'tool', requestId, name: frame.chunk.data.name, phase: 'result', payload: frame.chunk.data })
        }
        return
      case 'complete': {
        this.running.delete(requestId)
        const metadata = frame.chunk.metadata
        const result: TurnResult = {
          requestId, sessionId: entry.sessionId, userMessageId: entry.userMessageId, messageId: metadata.message_id,
          text: entry.text, finishReason: metadata.finish_reason, usage: metadata.usage, timings: metadata.timings, metadata,
        }
        this.emit(entry, { type: 'done', ...result })
        entry.resolve(result)
        return
      }
      case 'error':
        this.running.delete(requestId)
        this.emit(entry, { type: 'error', requestId, code: frame.error.code, message: frame.error.message })
        entry.reject(new TetherError(frame.error.code, frame.error.message))
        return
      case 'pong':
        return
    }
  }
}
