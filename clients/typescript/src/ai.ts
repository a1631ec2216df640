/**
 * `TetherChatTransport`: a `ChatTransport` for the Vercel AI SDK (`ai`), so an app on `useChat`
 * (or any `AbstractChat`) switches to Tether by passing one object:
 *
 *     useChat({ transport: new TetherChatTransport({ url: 'ws://127.0.0.1:8000/ws/chat' }) })
 *
 * Each AI SDK chat id maps to one Tether session (created by its first turn); each turn is a
 * Tether request whose frames become UI message chunks (text, tool calls as dynamic tools,
 * thoughts as reasoning). The chat's session id and its running request are kept in `storage`
 * (e.g. `localStorage`; in memory by default), so after a reload `reconnectToStream` resumes
 * the answer from Tether's journal; it replays the whole answer (`resumeStreamIsReplay`).
 *
 * Tether keeps the history: only the newest user message of `messages` is sent. Regenerate
 * sends that question again as a new turn. Errors end the stream with an `error` chunk.
 */

import type { ChatRequestOptions, ChatTransport, UIMessage, UIMessageChunk } from 'ai'

import { TetherConnection, type ChatEvent, type ChatOptions, type ChatTurn, type SocketFactory } from './connection.js'

export interface KeyValueStorage {
  getItem(key: string): string | null
  setItem(key: string, value: string): void
  removeItem(key: string): void
}

export interface TetherChatTransportOptions {
  /** `ws://host:port/ws/chat`; or pass an existing `connection`. */
  url?: string
  connection?: TetherConnection
  token?: string
  socketFactory?: SocketFactory
  agentId?: string
  options?: ChatOptions
  storage?: KeyValueStorage
}

interface ChatRecord {
  sessionId?: string
  running?: { requestId: string; resumeToken?: string }
}

class MemoryStorage implements KeyValueStorage {
  private readonly items = new Map<string, string>()
  getItem(key: string): string | null {
    return this.items.get(key) ?? null
  }
  setItem(key: string, value: string): void {
    this.items.set(key, value)
  }
  removeItem(key: string): void {
    this.items.delete(key)
  }
}

const FINISH_REASONS = { stop: 'stop', length: 'length' } as const

export class TetherChatTransport<UI_MESSAGE extends UIMessage = UIMessage> implements ChatTransport<UI_MESSAGE> {
  readonly resumeStreamIsReplay = true
  readonly connection: TetherConnection
  private readonly settings: TetherChatTransportOptions
  private readonly storage: KeyValueStorage

  constructor(settings: TetherChatTransportOptions) {
    this.settings = settings
    this.storage = settings.storage ?? new MemoryStorage()
    if (settings.connection !== undefined) {
      this.connection = settings.connection
    } else if (settings.url !== undefined) {
      this.connection = new TetherConnection({
        url: settings.url,
        ...(settings.token !== undefined && { token: settings.token }),
        ...(settings.socketFactory !== undefined && { socketFactory: settings.socketFactory }),
      })
    } else {
      throw new TypeError('TetherChatTransport needs a url or a connection')
    }
  }

  /** The Tether session of an AI SDK chat, once its first turn has started. */
  sessionOf(chatId: string): string | undefined {
    return this.record(chatId).sessionId
  }

  sendMessages(
    options: {
      trigger: 'submit-message' | 'regenerate-message'
      chatId: string
      messageId: string | undefined
      messages: UI_MESSAGE[]
      abortSignal: AbortSignal | undefined
    } & ChatRequestOptions
  ): Promise<ReadableStream<UIMessageChunk>> {
    const question = [...options.messages].reverse().find((m) => m.role === 'user')
    const text = question?.parts.map((part) => (part.type === 'text' ? part.text : '')).join('') ?? ''
    const { chatId } = options
    const sessionId = this.record(chatId).sessionId
    return Promise.resolve(
      this.stream(chatId, (onEvent) =>
        this.connection.chat({
          text,
          onEvent,
          ...(sessionId !== undefined && { sessionId }),
          ...(this.settings.agentId !== undefined && { agentId: this.settings.agentId }),
          ...(this.settings.options !== undefined && { options: this.settings.options }),
          ...(options.abortSignal !== undefined && { signal: options.abortSignal }),
        })
      )
    )
  }

  reconnectToStream(options: { chatId: string; abortSignal?: AbortSignal } & ChatRequestOptions): Promise<ReadableStream<UIMessageChunk> | null> {
    const running = this.record(options.chatId).running
    if (running === undefined) return Promise.resolve(null)
    if (this.connection.runningRequests.includes(running.requestId)) return Promise.resolve(null) // streaming here already
    return Promise.resolve(
      this.stream(options.chatId, (onEvent) =>
        this.connection.resume({
          requestId: running.requestId,
          afterSeq: -1,
          onEvent,
          ...(running.resumeToken !== undefined && { resumeToken: running.resumeToken }),
          ...(options.abortSignal !== undefined && { signal: options.abortSignal }),
        })
      )
    )
  }

  private record(chatId: string): ChatRecord {
    const raw = this.storage.getItem(`tether:chat:${chatId}`)
    return raw === null ? {} : (JSON.parse(raw) as ChatRecord)
  }

  private save(chatId: string, record: ChatRecord): void {
    this.storage.setItem(`tether:chat:${chatId}`, JSON.stringify(record))
  }

  /** The UI message chunks of one Tether request. */
  private stream(chatId: string, start: (onEvent: (event: ChatEvent) => void) => ChatTurn): ReadableStream<UIMessageChunk> {
    let turn: ChatTurn | undefined
    let open = true // false once the reader cancelled (stop()) or the stream was closed
    return new ReadableStream<UIMessageChunk>({
      start: (streamController) => {
        const controller = {
          enqueue: (chunk: UIMessageChunk): void => {
            if (open) streamController.enqueue(chunk)
          },
          close: (): void => {
            if (open) streamController.close()
            open = false
          },
        }
        let textId: string | undefined
        let parts = 0
        let reasoningId: string | undefined
        const endText = (): void => {
          if (textId !== undefined) controller.enqueue({ type: 'text-end', id: textId })
          if (reasoningId !== undefined) controller.enqueue({ type: 'reasoning-end', id: reasoningId })
          textId = undefined
          reasoningId = undefined
        }
        const onEvent = (event: ChatEvent): void => {
          switch (event.type) {
            case 'start':
              this.save(chatId, {
                sessionId: event.sessionId,
                running: {
                  requestId: event.requestId,
                  ...(event.resumeToken !== undefined ? { resumeToken: event.resumeToken } : (this.tokenOf(chatId, event.requestId) ?? {})),
                },
              })
              controller.enqueue({ type: 'start' })
              controller.enqueue({ type: 'start-step' })
              return
            case 'token':
              if (textId === undefined) {
                textId = `text-${parts++}`
                controller.enqueue({ type: 'text-start', id: textId })
              }
              controller.enqueue({ type: 'text-delta', id: textId, delta: event.token })
              return
            case 'thinking':
              if (reasoningId === undefined) {
                reasoningId = `reasoning-${parts++}`
                controller.enqueue({ type: 'reasoning-start', id: reasoningId })
              }
              controller.enqueue({ type: 'reasoning-delta', id: reasoningId, delta: event.token })
              return
            case 'tool':
              endText()
              if (event.phase === 'call') {
                const call = event.payload
                controller.enqueue({ type: 'tool-input-available', toolCallId: call.id, toolName: call.name, input: call.arguments, dynamic: true })
              } else if (event.payload.error !== undefined && event.payload.error !== null) {
                controller.enqueue({ type: 'tool-output-error', toolCallId: event.payload.id, errorText: event.payload.error, dynamic: true })
              } else {
                controller.enqueue({ type: 'tool-output-available', toolCallId: event.payload.id, output: event.payload.result, dynamic: true })
              }
              return
            case 'done': {
              endText()
              this.save(chatId, { ...(event.sessionId !== undefined && { sessionId: event.sessionId }) })
              const finishReason = event.finishReason in FINISH_REASONS ? FINISH_REASONS[event.finishReason as keyof typeof FINISH_REASONS] : 'other'
              controller.enqueue({ type: 'finish-step' })
              controller.enqueue({ type: 'finish', finishReason, messageMetadata: { tether: event.metadata, usage: event.usage, timings: event.timings } })
              controller.close()
              return
            }
            case 'error':
              if (event.code !== 'closed') {
                const { sessionId } = this.record(chatId)
                this.save(chatId, { ...(sessionId !== undefined && { sessionId }) })
              } // closed: this page goes away; the request runs on and a reload resumes it
              controller.enqueue({ type: 'error', errorText: `${event.code}: ${event.message}` })
              controller.close()
              return
            default:
              return
          }
        }
        turn = start(onEvent)
      },
      cancel: () => {
        open = false
        turn?.cancel()
      },
    })
  }

  private tokenOf(chatId: string, requestId: string): { resumeToken: string } | undefined {
    const running = this.record(chatId).running
    return running?.requestId === requestId && running.resumeToken !== undefined ? { resumeToken: running.resumeToken } : undefined
  }
}
