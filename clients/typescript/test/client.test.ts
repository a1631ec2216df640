/** tether-client against a real `tether serve --engine echo` started here. */

import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'

import {
  TetherClient,
  TetherConnection,
  TetherError,
  deleteAgent,
  getAgent,
  listAgents,
  listMessages,
  setActiveBranch,
  siblingPosition,
  streamChat,
  updateAgent,
  type ChatEvent,
} from 'tether-client'
import { TcpProxy, TetherServer, nodeSockets } from './support.js'
import { seedUsage } from './seed004.js'

const words = (n: number, prefix = 'w'): string => Array.from({ length: n }, (_, i) => `${prefix}${i}`).join(' ')

describe('against a real tether serve', () => {
  let server: TetherServer
  before(async () => {
    server = await TetherServer.start()
  })
  after(async () => {
    await server.stop()
  })

  test("seed 004's code runs unchanged: agents, two turns on one socket, one session", async () => {
    const out: string[] = []
    await seedUsage(server.httpUrl, server.wsUrl, nodeSockets, out)
    assert.equal(out.join(''), 'Summarize the latest run.\nNow give me the key risks.\n')
    const client = new TetherClient({ baseUrl: server.httpUrl })
    const [session] = await client.listSessions({ limit: 1 })
    assert.ok(session)
    const messages = await listMessages(session.id, server.httpUrl)
    assert.deepEqual(
      messages.map((m) => [m.role, m.content]),
      [
        ['user', 'Summarize the latest run.'],
        ['assistant', 'Summarize the latest run.'],
        ['user', 'Now give me the key risks.'],
        ['assistant', 'Now give me the key risks.'],
      ]
    )
  })

  test('streams tokens in order and resolves the turn with its stored result', async () => {
    const events: ChatEvent[] = []
    const chat = await streamChat({ backendUrl: server.wsUrl, socketFactory: nodeSockets, onEvent: (e) => events.push(e) })
    const turn = chat.sendMessage({ message: 'one two three' })
    assert.match(turn.requestId, /^[0-9a-f-]{36}$/)
    const result = await turn
    chat.stop()
    // Tokens in order (the server may join deltas that came while its journal committed).
    assert.equal(
      events.filter((e) => e.type === 'token').map((e) => (e.type === 'token' ? e.token : '')).join(''),
      'one two three'
    )
    assert.equal(result.text, 'one two three')
    assert.equal(result.finishReason, 'stop')
    assert.equal(result.requestId, turn.requestId)
    assert.equal(chat.conversationId, result.sessionId)
    const stored = await listMessages(result.sessionId ?? '', server.httpUrl)
    assert.equal(stored.at(-1)?.id, result.messageId)
    assert.equal(stored.at(-1)?.content, 'one two three')
    const done = events.at(-1)
    assert.equal(done?.type, 'done')
  })

  test('two requests interleave on one socket, each gets its own tokens', async () => {
    const connection = new TetherConnection({ url: server.wsUrl, socketFactory: nodeSockets })
    await connection.open()
    const order: string[] = []
    const a = connection.chat({ text: words(8, 'a'), options: { tokenDelayMs: 20 }, onEvent: (e) => e.type === 'token' && order.push('a') })
    const b = connection.chat({ text: words(8, 'b'), options: { token_delay_ms: 20 }, onEvent: (e) => e.type === 'token' && order.push('b') })
    const [ra, rb] = await Promise.all([a, b])
    connection.close()
    assert.equal(ra.text, words(8, 'a'))
    assert.equal(rb.text, words(8, 'b'))
    assert.notEqual(ra.sessionId, rb.sessionId)
    // Interleaved: b streamed before a finished.
    assert.ok(order.indexOf('b') < order.lastIndexOf('a'), order.join(''))
  })

  test('aborting the signal cancels: the partial answer is kept', async () => {
    const connection = new TetherConnection({ url: server.wsUrl, socketFactory: nodeSockets })
    const abort = new AbortController()
    let tokens = 0
    const turn = connection.chat({
      text: words(200),
      options: { tokenDelayMs: 20 },
      signal: abort.signal,
      onEvent: (e) => {
        if (e.type === 'token' && ++tokens === 3) abort.abort()
      },
    })
    const result = await turn
    connection.close()
    assert.equal(result.finishReason, 'cancelled')
    assert.ok(result.text.startsWith('w0 w1 w2 '), result.text)
    assert.ok(result.text.length < words(200).length)
    const stored = await listMessages(result.sessionId ?? '', server.httpUrl)
    assert.equal(stored.at(-1)?.status, 'cancelled')
    assert.equal(stored.at(-1)?.content, result.text)
  })

  test('a refused turn rejects with the error code, and onEvent hears it', async () => {
    const events: ChatEvent[] = []
    const chat = await streamChat({ backendUrl: server.wsUrl, socketFactory: nodeSockets, conversationId: 'no-such-session', onEvent: (e) => events.push(e) })
    await assert.rejects(chat.sendMessage({ message: 'hi' }), (error: unknown) => error instanceof TetherError && error.code === 'not_found')
    chat.stop()
    assert.equal(events.at(-1)?.type, 'error')
  })

  test('agents: upsert, read both ways, list, delete, then not_found', async () => {
    const first = await updateAgent({ id: 'ts-agent', name: 'One', system_prompt: 'Be brief.' }, server.httpUrl)
    assert.equal(first.name, 'One')
    const second = await updateAgent({ id: 'ts-agent', name: 'Two' }, { baseUrl: server.httpUrl })
    assert.equal(second.name, 'Two')
    assert.equal((await getAgent('ts-agent', server.httpUrl)).name, 'Two')
    assert.equal((await getAgent(server.httpUrl, 'ts-agent')).name, 'Two')
    assert.ok((await listAgents(server.httpUrl)).some((a) => a.id === 'ts-agent'))
    await deleteAgent('ts-agent', server.httpUrl)
    await assert.rejects(getAgent('ts-agent', server.httpUrl), (error: unknown) => error instanceof TetherError && error.code === 'not_found' && error.status === 404)
    await assert.rejects(updateAgent({ id: 'bad', name: '' }, server.httpUrl), (error: unknown) => error instanceof TetherError && error.code === 'bad_request')
  })

  test('sessions, messages, models and tools helpers', async () => {
    const client = new TetherClient({ baseUrl: server.httpUrl, socketFactory: nodeSockets })
    const created = await client.createSession({ title: 'from ts' })
    const chat = await client.streamChat({ conversationId: created.id, onEvent: () => undefined })
    await chat.sendMessage({ message: 'hello' })
    chat.stop()
    assert.equal((await client.getSession(created.id)).title, 'from ts')
    assert.deepEqual((await client.listMessages(created.id)).map((m) => m.role), ['user', 'assistant'])
    assert.ok((await client.listSessions()).some((s) => s.id === created.id))
    await client.deleteSession(created.id)
    await assert.rejects(client.getSession(created.id), (error: unknown) => error instanceof TetherError && error.code === 'not_found')
    assert.ok((await client.listModels()).some((m) => m.id === 'echo'))
    assert.ok((await client.listTools()).some((t) => t.name === 'calculator'))
    assert.equal((await client.health()).status, 'ok')
  })

  test('branches: edit (the first message too), regenerate, the tree, the active branch', async () => {
    const client = new TetherClient({ baseUrl: server.httpUrl, socketFactory: nodeSockets })
    const connection = client.connection()
    try {
      const first = await connection.chat({ text: 'one' })
      const sessionId = first.sessionId ?? ''
      const root = first.userMessageId ?? ''
      await connection.chat({ text: 'two', sessionId })
      // The first message has no parent: the edit is a second root beside it.
      const edited = await connection.edit({ sessionId, messageId: root, text: 'uno' })
      assert.equal(edited.text, 'uno')
      assert.equal(edited.sessionId, sessionId)
      const again = await connection.regenerate({ sessionId, messageId: edited.userMessageId ?? '' })
      assert.equal(again.userMessageId, edited.userMessageId)
      const active = await client.listMessages(sessionId)
      assert.deepEqual(active.map((m) => m.id), [edited.userMessageId, again.messageId])
      assert.deepEqual(siblingPosition(active[0]!), { index: 2, count: 2, previous: root, next: undefined })
      assert.deepEqual(siblingPosition(active[1]!), { index: 2, count: 2, previous: edited.messageId, next: undefined })
      const tree = await client.listMessages(sessionId, { tree: true })
      assert.deepEqual(tree.map((m) => m.content), ['one', 'one', 'two', 'two', 'uno', 'uno', 'uno'])
      assert.deepEqual(tree[0]!.children, [tree[1]!.id])
      // Back to the first root: its whole branch, down to its newest leaf, and it sticks.
      const session = await setActiveBranch(sessionId, root, server.httpUrl)
      assert.equal(session.active_leaf_id, tree[3]!.id)
      assert.deepEqual((await listMessages(sessionId, server.httpUrl)).map((m) => m.content), ['one', 'one', 'two', 'two'])
      assert.equal((await client.getSession(sessionId)).active_leaf_id, tree[3]!.id)
      // The older of the two answers to "uno", through the client.
      await client.setActiveBranch(sessionId, edited.messageId)
      assert.deepEqual((await client.listMessages(sessionId)).map((m) => m.id), [edited.userMessageId, edited.messageId])
      await assert.rejects(client.setActiveBranch(sessionId, 'missing'), (e: unknown) => e instanceof TetherError && e.code === 'not_found')
      await assert.rejects(
        connection.edit({ sessionId, messageId: edited.messageId, text: 'x' }), // an answer, not a user message
        (e: unknown) => e instanceof TetherError && e.code === 'not_found'
      )
      assert.equal((await client.listMessages(sessionId, { tree: true })).length, tree.length)
    } finally {
      connection.close()
    }
  })

  test('a tool call comes as tool events with the call and its result', async () => {
    const events: ChatEvent[] = []
    const chat = await streamChat({ backendUrl: server.wsUrl, socketFactory: nodeSockets, onEvent: (e) => events.push(e) })
    const call = '<tool_call>{"name": "calculator", "arguments": {"expression": "6*7"}}</tool_call>'
    const result = await chat.sendMessage({ message: call })
    chat.stop()
    const tools = events.filter((e) => e.type === 'tool')
    assert.deepEqual(tools.map((e) => (e.type === 'tool' ? [e.name, e.phase] : [])), [['calculator', 'call'], ['calculator', 'result']])
    const resultEvent = tools[1]
    assert.ok(resultEvent?.type === 'tool' && resultEvent.phase === 'result' && resultEvent.payload.result === '42')
    assert.equal(result.text, 'Tool calculator returned: 42')
  })

  test('a connection cut mid-answer resumes: every token exactly once', async () => {
    const proxy = await TcpProxy.start(server.port)
    const events: ChatEvent[] = []
    const tokens: string[] = []
    const chat = await streamChat({
      backendUrl: `ws://127.0.0.1:${proxy.port}/ws/chat`,
      socketFactory: nodeSockets,
      reconnectDelaysMs: [50, 100, 200, 400],
      onEvent: (e) => {
        events.push(e)
        if (e.type === 'token') {
          tokens.push(e.token)
          if (tokens.length === 5) proxy.cut()
        }
      },
    })
    const text = words(40)
    let result, next
    try {
      result = await chat.sendMessage({ message: text, options: { tokenDelayMs: 20 } })
      // The socket is usable again for the next turn.
      next = await chat.sendMessage({ message: 'and again' })
    } finally {
      chat.stop()
      await proxy.close()
    }
    assert.equal(tokens.join(''), text + 'and again')
    assert.equal(result.text, text)
    assert.equal(result.finishReason, 'stop')
    assert.equal(next.sessionId, result.sessionId)
    assert.ok(events.some((e) => e.type === 'reconnected'))
    assert.equal(proxy.accepted, 2)
  })

  test('stop() closes: a running turn rejects with closed', async () => {
    const chat = await streamChat({ backendUrl: server.wsUrl, socketFactory: nodeSockets, onEvent: () => undefined })
    const turn = chat.sendMessage({ message: words(50), options: { tokenDelayMs: 50 } })
    chat.stop()
    await assert.rejects(turn, (error: unknown) => error instanceof TetherError && error.code === 'closed')
  })
})

describe('failures and restarts', () => {
  test('streamChat rejects when the socket cannot open', async () => {
    const { freePort } = await import('./support.js')
    const port = await freePort()
    await assert.rejects(
      streamChat({ backendUrl: `ws://127.0.0.1:${port}/ws/chat`, socketFactory: nodeSockets, onEvent: () => undefined }),
      (error: unknown) => error instanceof TetherError && error.code === 'unreachable'
    )
  })

  test('without socketFactory on Node 20 the error says what to pass', async (t) => {
    if (typeof globalThis.WebSocket === 'function') t.skip('this Node has a global WebSocket')
    await assert.rejects(
      streamChat({ backendUrl: 'ws://127.0.0.1:1/ws/chat', onEvent: () => undefined }),
      (error: unknown) => error instanceof TetherError && error.code === 'no_websocket' && /socketFactory/.test(error.message)
    )
    // A turn on a connection never opened says so at once, rather than retrying for 30 s.
    const started = Date.now()
    const connection = new TetherConnection({ url: 'ws://127.0.0.1:1/ws/chat' })
    await assert.rejects(connection.chat({ text: 'x' }), (error: unknown) => error instanceof TetherError && error.code === 'no_websocket')
    assert.ok(Date.now() - started < 5_000, `took ${Date.now() - started} ms`)
    connection.close()
  })

  test('a bearer token: sent as a header through the socket factory and by fetch', async () => {
    const server = await TetherServer.start({ TETHER_TOKEN: 's3cret' })
    try {
      await assert.rejects(
        streamChat({ backendUrl: server.wsUrl, socketFactory: nodeSockets, onEvent: () => undefined }),
        (error: unknown) => error instanceof TetherError && error.code === 'unauthorized'
      )
      await assert.rejects(listAgents(server.httpUrl), (error: unknown) => error instanceof TetherError && error.code === 'unauthorized' && error.status === 401)
      const client = new TetherClient({ baseUrl: server.httpUrl, token: 's3cret', socketFactory: nodeSockets })
      assert.deepEqual(await client.listAgents(), [])
      const chat = await client.streamChat({ onEvent: () => undefined })
      assert.equal((await chat.sendMessage({ message: 'with a token' })).text, 'with a token')
      chat.stop()
    } finally {
      await server.stop()
    }
  })

  test('a server killed mid-answer and started again: the turn ends interrupted with what was streamed', async () => {
    const server = await TetherServer.start()
    try {
      const tokens: string[] = []
      let resolveKilled!: () => void
      const killed = new Promise<void>((resolve) => {
        resolveKilled = resolve
      })
      const chat = await streamChat({
        backendUrl: server.wsUrl,
        socketFactory: nodeSockets,
        reconnectDelaysMs: Array.from({ length: 40 }, () => 250),
        onEvent: (e) => {
          if (e.type === 'token') {
            tokens.push(e.token)
            if (tokens.length === 3) void server.kill('SIGKILL').then(resolveKilled)
          }
        },
      })
      const turn = chat.sendMessage({ message: words(40), options: { tokenDelayMs: 50 } })
      await killed
      await server.launch()
      const result = await turn
      chat.stop()
      assert.equal(result.finishReason, 'interrupted')
      assert.equal(result.metadata['recovered'], true)
      const stored = await listMessages(result.sessionId ?? '', server.httpUrl)
      assert.equal(stored.at(-1)?.status, 'interrupted')
      // Every token the client got once, and the stored answer holds at least what it got.
      assert.equal(result.text, tokens.join(''))
      assert.ok(words(40).startsWith(result.text))
      assert.ok((stored.at(-1)?.content ?? '').startsWith(result.text))
    } finally {
      await server.stop()
    }
  })
})
