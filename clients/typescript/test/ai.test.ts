/** TetherChatTransport driven by the real `ai` package's AbstractChat against a real tether serve. */

import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'

import { AbstractChat, type ChatState, type ChatStatus, type UIMessage } from 'ai'
import { listMessages } from 'tether-client'
import { TetherChatTransport, type KeyValueStorage } from 'tether-client/ai'

import { TetherServer, nodeSockets } from './support.js'

/** The smallest ChatState: what useChat keeps in React state, here in plain fields. */
class NodeChatState implements ChatState<UIMessage> {
  status: ChatStatus = 'ready'
  error: Error | undefined = undefined
  messages: UIMessage[] = []
  onChange: () => void = () => undefined
  pushMessage = (message: UIMessage): void => {
    this.messages = [...this.messages, message]
    this.onChange()
  }
  popMessage = (): void => {
    this.messages = this.messages.slice(0, -1)
    this.onChange()
  }
  replaceMessage = (index: number, message: UIMessage): void => {
    this.messages = this.messages.map((m, i) => (i === index ? message : m))
    this.onChange()
  }
  snapshot = <T>(thing: T): T => structuredClone(thing)
}

class NodeChat extends AbstractChat<UIMessage> {
  readonly store: NodeChatState
  constructor(id: string, transport: TetherChatTransport) {
    const state = new NodeChatState()
    super({ id, transport, state })
    this.store = state
  }
}

const textOf = (message: UIMessage | undefined): string =>
  (message?.parts ?? []).map((part) => (part.type === 'text' ? part.text : '')).join('')

const words = (n: number): string => Array.from({ length: n }, (_, i) => `w${i}`).join(' ')

describe('the AI SDK ChatTransport', () => {
  let server: TetherServer
  before(async () => {
    server = await TetherServer.start()
  })
  after(async () => {
    await server.stop()
  })

  test('useChat-style chats stream their answers, turns share one Tether session', async () => {
    const transport = new TetherChatTransport({ url: server.wsUrl, socketFactory: nodeSockets })
    const chat = new NodeChat('chat-1', transport)
    await chat.sendMessage({ text: 'hello from the ai sdk' })
    assert.equal(chat.status, 'ready')
    assert.equal(chat.messages.length, 2)
    assert.equal(chat.messages[1]?.role, 'assistant')
    assert.equal(textOf(chat.messages[1]), 'hello from the ai sdk')
    await chat.sendMessage({ text: 'second turn' })
    assert.equal(textOf(chat.messages[3]), 'second turn')
    const sessionId = transport.sessionOf('chat-1')
    assert.ok(sessionId)
    const stored = await listMessages(sessionId, server.httpUrl)
    assert.deepEqual(stored.map((m) => m.content), ['hello from the ai sdk', 'hello from the ai sdk', 'second turn', 'second turn'])
    transport.connection.close()
  })

  test('a tool call becomes a dynamic tool part with its input and output', async () => {
    const transport = new TetherChatTransport({ url: server.wsUrl, socketFactory: nodeSockets })
    const chat = new NodeChat('chat-tools', transport)
    await chat.sendMessage({ text: '<tool_call>{"name": "calculator", "arguments": {"expression": "6*7"}}</tool_call>' })
    const parts = chat.messages[1]?.parts ?? []
    const tool = parts.find((part) => part.type === 'dynamic-tool')
    assert.ok(tool && tool.type === 'dynamic-tool')
    assert.equal(tool.toolName, 'calculator')
    assert.equal(tool.state, 'output-available')
    assert.deepEqual(tool.input, { expression: '6*7' })
    assert.equal(tool.state === 'output-available' ? tool.output : undefined, '42')
    assert.equal(textOf(chat.messages[1]), 'Tool calculator returned: 42')
    transport.connection.close()
  })

  test('stop() cancels the Tether request', async () => {
    const transport = new TetherChatTransport({ url: server.wsUrl, socketFactory: nodeSockets, options: { tokenDelayMs: 40 } })
    const chat = new NodeChat('chat-stop', transport)
    const state = chat.store
    const sent = chat.sendMessage({ text: words(200) })
    await new Promise<void>((resolve) => {
      state.onChange = () => {
        if (textOf(state.messages[1]).includes('w2 ')) resolve()
      }
    })
    await chat.stop()
    await sent
    const sessionId = transport.sessionOf('chat-stop')
    assert.ok(sessionId)
    const answer = await (async () => {
      for (;;) {
        const stored = await listMessages(sessionId, server.httpUrl)
        const last = stored.at(-1)
        if (last?.role === 'assistant') return last
        await new Promise((resolve) => setTimeout(resolve, 50)) // polling for the stored answer; bounded by the test timeout
      }
    })()
    assert.equal(answer.status, 'cancelled')
    assert.ok(answer.content.length < words(200).length)
    transport.connection.close()
  })

  test('after a reload, resumeStream replays the running answer from the journal', async () => {
    // What localStorage keeps across the reload.
    const items = new Map<string, string>()
    const storage: KeyValueStorage = {
      getItem: (key) => items.get(key) ?? null,
      setItem: (key, value) => void items.set(key, value),
      removeItem: (key) => void items.delete(key),
    }
    const text = words(30)
    const first = new TetherChatTransport({ url: server.wsUrl, socketFactory: nodeSockets, storage, options: { tokenDelayMs: 40 } })
    const page1 = new NodeChat('chat-reload', first)
    const state1 = page1.store
    void page1.sendMessage({ text })
    await new Promise<void>((resolve) => {
      state1.onChange = () => {
        if (textOf(state1.messages[1]).includes('w3 ')) resolve()
      }
    })
    first.connection.close() // the page goes away; the answer runs on in the server

    const second = new TetherChatTransport({ url: server.wsUrl, socketFactory: nodeSockets, storage })
    const page2 = new NodeChat('chat-reload', second)
    await page2.resumeStream()
    assert.equal(page2.messages.length, 1)
    assert.equal(textOf(page2.messages[0]), text) // every word once, from the start
    // Nothing left to resume once it ended.
    assert.equal(await second.reconnectToStream({ chatId: 'chat-reload' }), null)
    second.connection.close()
  })
})
