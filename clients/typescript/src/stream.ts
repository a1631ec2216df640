/**
 * Seed 004's `streamChat`: one socket for a conversation's turns. It resolves once the socket is
 * open (rejects if it cannot open) to `{sendMessage, stop}`. Turns continue the conversation:
 * `conversationId`, or the session the first turn created (a turn sent before that one's
 * `processing` arrived waits for it, so all turns land in one session).
 */

import {
  TetherConnection,
  type ChatEvent,
  type ChatOptions,
  type ChatTurn,
  newRequestId,
  type SocketFactory,
} from './connection.js'

export interface StreamChatOptions {
  /** `ws://localhost:8000/ws/chat` (an http(s) URL works too). */
  backendUrl: string
  agentId?: string
  /** The session to continue; without it the first turn creates one. */
  conversationId?: string
  /** Default options of every turn (a turn's own `options` override them). */
  options?: ChatOptions
  onEvent: (event: ChatEvent) => void
  socketFactory?: SocketFactory
  token?: string
  reconnectDelaysMs?: readonly number[]
}

export interface SendMessageOptions {
  message: string
  options?: ChatOptions
  signal?: AbortSignal
  /** Branch from this message instead of the session's last one (edit, regenerate). */
  parentId?: string
}

export interface ChatStream {
  sendMessage(turn: SendMessageOptions): ChatTurn
  stop(): void
  /** The session the turns go to, once known. */
  readonly conversationId: string | undefined
  readonly connection: TetherConnection
}

export async function streamChat(options: StreamChatOptions): Promise<ChatStream> {
  const connection = new TetherConnection({
    url: options.backendUrl,
    onEvent: options.onEvent,
    ...(options.token !== undefined && { token: options.token }),
    ...(options.socketFactory !== undefined && { socketFactory: options.socketFactory }),
    ...(options.reconnectDelaysMs !== undefined && { reconnectDelaysMs: options.reconnectDelaysMs }),
  })
  await connection.open()
  let conversationId = options.conversationId
  let sessionKnown: Promise<unknown> = Promise.resolve()

  const sendMessage = (turn: SendMessageOptions): ChatTurn => {
    const merged: ChatOptions = { ...options.options, ...turn.options }
    let resolveStarted!: () => void
    const started = new Promise<void>((resolve) => {
      resolveStarted = resolve
    })
    const begin = (requestId?: string): ChatTurn =>
      connection.chat({
        text: turn.message,
        options: merged,
        ...(requestId !== undefined && { requestId }),
        ...(conversationId !== undefined && { sessionId: conversationId }),
        ...(options.agentId !== undefined && { agentId: options.agentId }),
        ...(turn.parentId !== undefined && { parentId: turn.parentId }),
        ...(turn.signal !== undefined && { signal: turn.signal }),
        onEvent: (event) => {
          if (event.type === 'start') {
            conversationId ??= event.sessionId
            resolveStarted()
          }
        },
      })
    if (conversationId !== undefined) return begin()
    // No session yet: wait until the turn that creates it has started, then join it.
    const waitFor = sessionKnown
    sessionKnown = started
    const requestId = newRequestId()
    let inner: ChatTurn | undefined
    let cancelled = false
    const result = waitFor.then(() => {
      inner = begin(requestId)
      if (cancelled) inner.cancel()
      return inner.result
    })
    result.catch(() => undefined)
    void result.finally(resolveStarted).catch(() => undefined)
    return Object.assign(result, {
      requestId,
      result,
      cancel: () => {
        cancelled = true
        inner?.cancel()
      },
    })
  }

  return {
    sendMessage,
    stop: () => connection.close(),
    get conversationId() {
      return conversationId
    },
    connection,
  }
}
