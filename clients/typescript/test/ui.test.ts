/**
 * The browser UI at / in real headless Chromium (Debian's `chromium`, driven by playwright-core)
 * against a real `tether serve --engine echo`. Each test saves a screenshot under
 * test-artifacts/ui/ at the repository root. Skipped only when no Chromium is installed.
 */

import assert from 'node:assert/strict'
import { existsSync, mkdirSync } from 'node:fs'
import path from 'node:path'
import { after, before, describe, test } from 'node:test'

import { chromium, type Browser, type Page } from 'playwright-core'

import type { StoredMessage } from 'tether-client'

import { TcpProxy, TetherServer, repoRoot, scaled } from './support.js'

const executablePath = process.env['CHROMIUM_PATH'] ?? '/usr/bin/chromium'
const haveChromium = existsSync(executablePath)
const artifacts = path.join(repoRoot, 'test-artifacts', 'ui')
const words = (n: number): string => Array.from({ length: n }, (_, i) => `w${i}`).join(' ')

async function shot(page: Page, name: string): Promise<void> {
  mkdirSync(artifacts, { recursive: true })
  await page.screenshot({ path: path.join(artifacts, `${name}.png`), fullPage: true })
}

async function sendMessage(page: Page, text: string): Promise<void> {
  await page.locator('#input').fill(text)
  await page.locator('#input').press('Enter')
}

const lastAnswer = (page: Page) => page.locator('.message.assistant').last()

describe('the browser UI', { skip: haveChromium ? false : `no Chromium at ${executablePath}` }, () => {
  let server: TetherServer
  let browser: Browser

  before(async () => {
    server = await TetherServer.start()
    browser = await chromium.launch({ executablePath, args: ['--headless', '--no-sandbox', '--disable-gpu'] })
  })
  after(async () => {
    await browser?.close()
    await server?.stop()
  })

  async function openPage(url: string): Promise<Page> {
    const page = await browser.newPage({ viewport: { width: 1100, height: 720 } })
    page.setDefaultTimeout(scaled(20_000))
    const errors: string[] = []
    page.on('pageerror', (error) => errors.push(String(error)))
    await page.goto(url)
    await page.locator('body[data-ready="true"]').waitFor()
    assert.deepEqual(errors, [])
    return page
  }

  test('a message streams in, markdown rendered safely, with its usage line', async () => {
    const page = await openPage(`${server.httpUrl}/?o.token_delay_ms=30`)
    // Long enough (about 4 s) that the page is seen mid-stream even on a loaded machine.
    const text = '**bold** and <img src=x onerror="window.pwned=1"> `code` ' + words(150)
    await sendMessage(page, text)
    const answer = lastAnswer(page)
    // Streaming: part of the answer is there while the rest is still coming.
    await answer.locator('.bubble.streaming').filter({ hasText: 'w3' }).waitFor()
    assert.equal(await page.locator('#stop').isVisible(), true)
    await answer.locator('.meta').waitFor()
    assert.equal(await answer.locator('.body strong').textContent(), 'bold')
    assert.equal(await answer.locator('.body code').textContent(), 'code')
    assert.equal(await page.locator('.message img').count(), 0) // the tag is text, not an element
    assert.match((await answer.locator('.body').textContent()) ?? '', /<img src=x onerror="window.pwned=1">/)
    assert.equal(await page.evaluate(() => (window as unknown as { pwned?: number }).pwned), undefined)
    assert.match((await answer.locator('.meta').textContent()) ?? '', /echo · \d+ tokens/)
    // The new session is listed and current.
    await page.locator('.sessions li.active').waitFor()
    await shot(page, 'stream')
    await page.close()
  })

  test('the model picker lists every model of /models; the one chosen answers', async (t) => {
    const page = await openPage(`${server.httpUrl}/?o.max_tokens=8`)
    const models = (await (await fetch(`${server.httpUrl}/models`)).json()) as { id: string; engine: string }[]
    const listed = await page.locator('#model option').allTextContents()
    assert.deepEqual(listed, ['Default model', ...models.map((m) => `${m.id} (${m.engine})`)])
    const other = models.find((m) => m.engine !== 'echo')
    if (other === undefined) {
      t.skip('only the echo model here: ./setup.sh puts SmolLM2 in dist/')
      return
    }
    await page.locator('#new-chat').click()
    await page.locator('#model').selectOption(other.id)
    await sendMessage(page, 'Hello')
    const facts = await lastAnswer(page).locator('.meta .facts').textContent()
    assert.ok(facts?.startsWith(`${other.id} · `), facts ?? '')
    await page.locator('#model').selectOption('')
    await sendMessage(page, 'and the default')
    await lastAnswer(page).locator('.meta').nth(0).waitFor()
    await page.locator('.message.assistant .meta .facts', { hasText: /^echo · / }).waitFor()
    await page.close()
  })

  test('Stop cancels mid-answer and keeps the partial text', async () => {
    const page = await openPage(`${server.httpUrl}/?o.token_delay_ms=50`)
    await sendMessage(page, words(200))
    await lastAnswer(page).locator('.body').filter({ hasText: 'w2' }).waitFor()
    await page.locator('#stop').click()
    const note = lastAnswer(page).locator('.meta .note')
    await note.waitFor()
    assert.equal(await note.textContent(), 'Stopped')
    const shown = (await lastAnswer(page).locator('.body').textContent()) ?? ''
    assert.ok(shown.startsWith('w0 w1 w2') && !shown.includes('w199'), shown)
    assert.equal(await page.locator('#send').isVisible(), true)
    await shot(page, 'stop')
    await page.close()
  })

  test('a tool call shows as a card with arguments, result and duration', async () => {
    const page = await openPage(server.httpUrl)
    await sendMessage(page, '<tool_call>{"name": "calculator", "arguments": {"expression": "6*7"}}</tool_call>')
    const card = lastAnswer(page).locator('details.tool-card[data-tool="calculator"]')
    await card.locator('summary', { hasText: /done \(\d+\.\d ms\)/ }).waitFor()
    await card.locator('summary').click()
    assert.match((await card.locator('.arguments').textContent()) ?? '', /"expression": "6\*7"/)
    assert.equal(await card.locator('.result').textContent(), '42')
    await lastAnswer(page).locator('.meta').waitFor()
    assert.equal(await lastAnswer(page).locator('.body').textContent(), 'Tool calculator returned: 42')
    // A failing call stays a failed card once the answer is stored (and shown from the store).
    await sendMessage(page, '<tool_call>{"name": "calculator", "arguments": {"expression": "6*"}}</tool_call>')
    const failed = lastAnswer(page).locator('details.tool-card[data-tool="calculator"]')
    await lastAnswer(page).locator('.meta button.regenerate').waitFor()
    assert.match((await failed.locator('summary').textContent()) ?? '', /^Tool calculator: failed \(\d+\.\d ms\)$/)
    await failed.locator('summary').click()
    assert.match((await failed.locator('.result.failed').textContent()) ?? '', /Error/)
    await shot(page, 'tool')
    await page.close()
  })

  test('reload shows the history; switching sessions shows each one', async () => {
    const page = await openPage(server.httpUrl)
    await page.locator('#new-chat').click()
    await sendMessage(page, 'first session says hello')
    await lastAnswer(page).locator('.meta').waitFor()
    await page.locator('#new-chat').click()
    await sendMessage(page, 'second session says bye')
    await lastAnswer(page).locator('.meta').waitFor()
    await page.reload()
    await page.locator('body[data-ready="true"]').waitFor()
    await page.locator('.sessions li button.open', { hasText: 'first session says hello' }).click()
    await page.locator('.message.user', { hasText: 'first session says hello' }).waitFor()
    await page.locator('.message.assistant .body', { hasText: 'first session says hello' }).waitFor()
    assert.equal(await page.locator('.message').count(), 2)
    await page.locator('.sessions li button.open', { hasText: 'second session says bye' }).click()
    await page.locator('.message.user', { hasText: 'second session says bye' }).waitFor()
    assert.equal(await page.locator('.message').count(), 2)
    await shot(page, 'history')
    await page.close()
  })

  test('a session is renamed in place: Enter saves, Escape cancels, the title survives a reload', async () => {
    const page = await openPage(server.httpUrl)
    await page.locator('#new-chat').click()
    await sendMessage(page, 'name me later')
    await lastAnswer(page).locator('.meta').waitFor()
    const row = page.locator('.sessions li.active')
    await row.locator('button.open', { hasText: 'name me later' }).waitFor()
    await row.locator('button.rename').click()
    await page.locator('.rename-field').fill('should not stick')
    await page.locator('.rename-field').press('Escape')
    await page.locator('.sessions li.active button.open', { hasText: 'name me later' }).waitFor()
    await page.locator('.sessions li.active button.rename').click()
    await page.locator('.rename-field').fill('Trip <b>plans</b>')
    await page.locator('.rename-field').press('Enter')
    await page.locator('.sessions li.active button.open', { hasText: 'Trip <b>plans</b>' }).waitFor()
    assert.equal(await page.locator('#title').textContent(), 'Trip <b>plans</b>')
    assert.equal(await page.locator('.sessions b').count(), 0)
    await shot(page, 'rename')
    await page.reload()
    await page.locator('body[data-ready="true"]').waitFor()
    await page.locator('.sessions li button.open', { hasText: 'Trip <b>plans</b>' }).waitFor()
    assert.equal(await page.locator('.sessions li button.open', { hasText: 'should not stick' }).count(), 0)
    await page.close()
  })

  test('search lists matching messages with role and session, the hits marked, safely; a hit opens its session at the message', async () => {
    const page = await openPage(server.httpUrl)
    await page.locator('#new-chat').click()
    // The hit in the middle of a long chat: far from both its top and its bottom.
    const texts = ['Notes on fish', `filler ${words(120)}`, 'zebrafish <img src=x onerror="window.pwned=1"> facts']
    texts.push(`more filler ${words(120)}`, `and more ${words(120)}`)
    for (const text of texts) {
      await sendMessage(page, text)
      await lastAnswer(page).locator('.meta').waitFor()
    }
    await page.locator('#new-chat').click()
    await sendMessage(page, 'nothing to see')
    await lastAnswer(page).locator('.meta').waitFor()
    await page.locator('#search').fill('zebrafish')
    const hits = page.locator('#search-results button.hit')
    await hits.nth(1).waitFor()
    assert.equal(await page.locator('#sessions').isVisible(), false)
    assert.equal(await hits.count(), 2) // the question and its (echoed) answer
    const roles = await hits.locator('.hit-role').allTextContents()
    assert.deepEqual([...roles].sort(), ['Assistant', 'You'])
    for (const title of await hits.locator('.hit-title').allTextContents()) {
      assert.equal(title, 'Notes on fish')
    }
    assert.equal(await hits.first().locator('.snippet mark').first().textContent(), 'zebrafish')
    assert.match((await hits.first().locator('.snippet').textContent()) ?? '', /<img src=x/)
    assert.equal(await page.locator('#search-results img').count(), 0)
    assert.equal(await page.evaluate(() => (window as unknown as { pwned?: number }).pwned), undefined)
    await shot(page, 'search')
    // The user's message: the session opens scrolled to it, highlighted.
    await hits.filter({ has: page.locator('.hit-role', { hasText: 'You' }) }).click()
    const found = page.locator('.message.user.found')
    await found.waitFor()
    assert.match((await found.textContent()) ?? '', /zebrafish/)
    assert.equal(await page.locator('.message').count(), 10)
    const [list, box] = await Promise.all([page.locator('#messages').boundingBox(), found.boundingBox()])
    assert.ok(list !== null && box !== null)
    assert.ok(box.y >= list.y && box.y + box.height <= list.y + list.height, JSON.stringify({ list, box }))
    assert.ok(await page.locator('#messages').evaluate((el) => el.scrollTop > 0 && el.scrollTop + el.clientHeight < el.scrollHeight - 10))
    await shot(page, 'search-opened')
    await page.locator('#search').fill('qqqnomatchqqq')
    await page.locator('#search-results li.none').waitFor()
    await page.locator('#search').press('Escape')
    await page.locator('#sessions').waitFor()
    assert.equal(await page.locator('#search-results').isVisible(), false)
    await page.close()
  })

  test('a hit on a branch the session does not show opens that branch', async () => {
    const page = await openPage(server.httpUrl)
    await page.locator('#new-chat').click()
    await sendMessage(page, 'okapi before the edit')
    await lastAnswer(page).locator('.meta').waitFor()
    await page.locator('.message.user button.edit').click()
    await page.locator('.editor textarea').fill('after the edit')
    await page.locator('.editor textarea').press('Enter')
    await page.locator('.message.user .switcher .count', { hasText: '2/2' }).waitFor()
    await page.locator('#new-chat').click()
    await page.locator('#search').fill('okapi')
    await page.locator('#search-results button.hit').first().waitFor()
    await page.locator('#search-results button.hit').filter({ hasText: 'You' }).click()
    await page.locator('.message.user.found .bubble', { hasText: 'okapi before the edit' }).waitFor()
    assert.equal(await page.locator('.message.user .switcher .count').textContent(), '1/2')
    await page.close()
  })

  /** The stored session titled `title`, and its messages (the active branch, or the tree). */
  async function stored(title: string, tree = false): Promise<{ id: string; messages: StoredMessage[] }> {
    const sessions = (await (await fetch(`${server.httpUrl}/sessions`)).json()) as { id: string; title: string }[]
    const session = sessions.find((s) => s.title === title)
    assert.ok(session !== undefined, `no session ${title}`)
    const url = `${server.httpUrl}/sessions/${session.id}/messages${tree ? '?tree=true' : ''}`
    return { id: session.id, messages: (await (await fetch(url)).json()) as StoredMessage[] }
  }

  const shownTexts = (page: Page) => page.locator('.message .bubble').allInnerTexts()

  test('Regenerate on the last answer: the new answer is shown, and ‹ 1/2 › switches back to the old one', async () => {
    const page = await openPage(server.httpUrl)
    await page.locator('#new-chat').click()
    await sendMessage(page, 'say it twice')
    await lastAnswer(page).locator('.meta').waitFor()
    await sendMessage(page, 'and once more')
    await lastAnswer(page).locator('.meta button.regenerate').waitFor()
    // Shown on the last answer; on an older one only under the pointer.
    const opacity = (n: number) => page.locator('.message.assistant').nth(n).locator('button.regenerate').evaluate((b) => getComputedStyle(b).opacity)
    assert.equal(await opacity(1), '1')
    await page.mouse.move(0, 0)
    await page.waitForFunction(() => getComputedStyle(document.querySelector('.message.assistant button.regenerate')!).opacity === '0')
    assert.equal(await page.locator('.switcher').count(), 0) // nothing to switch yet
    const before = await lastAnswer(page).getAttribute('data-ids')
    await lastAnswer(page).locator('button.regenerate').click()
    await lastAnswer(page).locator('.meta .switcher .count', { hasText: '2/2' }).waitFor()
    assert.equal(await page.locator('.message.assistant').count(), 2)
    assert.equal(await lastAnswer(page).locator('.body').textContent(), 'and once more')
    const { id, messages } = await stored('say it twice')
    assert.equal(messages.length, 4)
    const [older, newer] = messages[3]!.siblings
    assert.equal(older, before)
    assert.equal(newer, messages[3]!.id)
    assert.equal(await lastAnswer(page).getAttribute('data-ids'), newer)
    assert.equal(await lastAnswer(page).locator('.switcher button.next').isDisabled(), true)
    await shot(page, 'regenerate')
    // ‹ shows the first answer, and the choice is the session's: a reload keeps it.
    await lastAnswer(page).locator('.switcher button.previous').click()
    await lastAnswer(page).locator('.meta .switcher .count', { hasText: '1/2' }).waitFor()
    assert.equal(await lastAnswer(page).getAttribute('data-ids'), older)
    const session = (await (await fetch(`${server.httpUrl}/sessions/${id}`)).json()) as { active_leaf_id: string }
    assert.equal(session.active_leaf_id, older)
    await page.reload()
    await page.locator('body[data-ready="true"]').waitFor()
    await page.locator('.sessions li button.open', { hasText: 'say it twice' }).click()
    await lastAnswer(page).locator('.meta .switcher .count', { hasText: '1/2' }).waitFor()
    assert.equal(await lastAnswer(page).getAttribute('data-ids'), older)
    assert.equal(await page.locator('.message.assistant').count(), 2)
    await page.close()
  })

  test('Regenerate on an older answer: the chat goes on from the new one; ‹ brings back the old answer and all after it', async () => {
    const page = await openPage(server.httpUrl)
    await page.locator('#new-chat').click()
    for (const text of ['alpha one', 'beta two', 'gamma three']) {
      await sendMessage(page, text)
      await lastAnswer(page).locator('.meta button.regenerate').waitFor()
    }
    const first = page.locator('.message.assistant').first()
    await first.hover()
    await first.locator('button.regenerate').click()
    await page.locator('.message.assistant .switcher .count', { hasText: '2/2' }).waitFor()
    assert.deepEqual(await shownTexts(page), ['alpha one', 'alpha one'])
    await page.locator('.message.assistant .switcher button.previous').click()
    await page.locator('.message.assistant').first().locator('.switcher .count', { hasText: '1/2' }).waitFor()
    assert.deepEqual(await shownTexts(page), ['alpha one', 'alpha one', 'beta two', 'beta two', 'gamma three', 'gamma three'])
    const { messages: tree } = await stored('alpha one', true)
    assert.equal(tree.length, 7) // one question stored once, answered twice
    await page.close()
  })

  test('editing a message (the first one too) makes a new branch; ‹ › switches, a reload keeps the choice', async () => {
    const page = await openPage(`${server.httpUrl}/?o.token_delay_ms=30`)
    await page.locator('#new-chat').click()
    await sendMessage(page, 'the first question')
    await lastAnswer(page).locator('.meta').waitFor()
    await sendMessage(page, 'the second question')
    await lastAnswer(page).locator('.meta').waitFor()
    const first = page.locator('.message.user').first()
    // Escape leaves the message as it was.
    await first.locator('button.edit').click()
    await first.locator('.editor textarea').fill('never sent')
    await first.locator('.editor textarea').press('Escape')
    assert.equal(await first.locator('.editor').count(), 0)
    assert.equal(await first.locator('.bubble').textContent(), 'the first question')
    // Shift+Enter is a new line in the editor; Enter sends.
    await first.locator('button.edit').click()
    const field = first.locator('.editor textarea')
    assert.equal(await field.inputValue(), 'the first question')
    await field.fill('the first question, edited')
    await field.press('Shift+Enter')
    await page.keyboard.insertText('with a second line ' + words(150))
    await shot(page, 'edit-open')
    await field.press('Enter')
    const edited = `the first question, edited\nwith a second line ${words(150)}`
    // What came after the edited message left the page; the new answer streams in.
    await lastAnswer(page).locator('.bubble.streaming').filter({ hasText: 'w3' }).waitFor()
    assert.deepEqual((await shownTexts(page)).slice(0, 1), [edited])
    assert.equal(await page.locator('.message').count(), 2)
    await page.locator('.message.user .switcher .count', { hasText: '2/2' }).waitFor()
    assert.deepEqual(await shownTexts(page), [edited, edited])
    await shot(page, 'edit')
    // Nothing was overwritten: both roots are stored, each with its answers.
    const { id, messages: tree } = await stored('the first question', true)
    assert.deepEqual(
      tree.map((m) => [m.role, m.content]),
      [['user', 'the first question'], ['assistant', 'the first question'], ['user', 'the second question'],
        ['assistant', 'the second question'], ['user', edited], ['assistant', edited]]
    )
    assert.deepEqual(tree[0]!.siblings, [tree[0]!.id, tree[4]!.id])
    // ‹ shows the old branch whole; a reload keeps it.
    await page.locator('.message.user .switcher button.previous').click()
    await page.locator('.message.user .switcher .count', { hasText: '1/2' }).waitFor()
    assert.deepEqual(await shownTexts(page), ['the first question', 'the first question', 'the second question', 'the second question'])
    assert.equal(await page.locator('.message.user').nth(1).locator('.switcher').count(), 0)
    await shot(page, 'branches')
    await page.reload()
    await page.locator('body[data-ready="true"]').waitFor()
    await page.locator('.sessions li button.open', { hasText: 'the first question' }).click()
    await page.locator('.message.user .switcher .count', { hasText: '1/2' }).waitFor()
    assert.equal(await page.locator('.message').count(), 4)
    // Editing a later message: a second version of it, under the same first message.
    await page.locator('.message.user').nth(1).locator('button.edit').click()
    await page.locator('.editor textarea').fill('the second, again')
    await page.locator('.editor button.save').click()
    await page.locator('.message.user').nth(1).locator('.switcher .count', { hasText: '2/2' }).waitFor()
    assert.deepEqual(await shownTexts(page), ['the first question', 'the first question', 'the second, again', 'the second, again'])
    await page.locator('.message.user').nth(1).locator('.switcher button.previous').click()
    await page.locator('.message.user').nth(1).locator('.bubble', { hasText: 'the second question' }).waitFor()
    const active = (await (await fetch(`${server.httpUrl}/sessions/${id}/messages`)).json()) as StoredMessage[]
    assert.deepEqual(active.map((m) => m.content), ['the first question', 'the first question', 'the second question', 'the second question'])
    await page.close()
  })

  test('a socket cut mid-answer: the page reconnects and the answer completes, every word once', async () => {
    const proxy = await TcpProxy.start(server.port)
    try {
      const page = await openPage(`http://127.0.0.1:${proxy.port}/?o.token_delay_ms=30`)
      const text = words(40)
      await sendMessage(page, text)
      await lastAnswer(page).locator('.body').filter({ hasText: 'w5' }).waitFor()
      proxy.cut()
      await lastAnswer(page).locator('.meta').waitFor()
      assert.equal(await lastAnswer(page).locator('.body').textContent(), text)
      assert.equal(await lastAnswer(page).locator('.meta .note').count(), 0)
      assert.ok(proxy.accepted >= 2)
      await shot(page, 'reconnect')
      await page.close()
    } finally {
      await proxy.close()
    }
  })

  test('on a phone-width screen in dark mode: nothing overflows, every control is there, the sidebar folds away', async () => {
    const page = await browser.newPage({ viewport: { width: 390, height: 800 }, colorScheme: 'dark', hasTouch: true, isMobile: true })
    page.setDefaultTimeout(scaled(20_000))
    await page.goto(server.httpUrl)
    await page.locator('body[data-ready="true"]').waitFor()
    assert.equal(await page.evaluate(() => matchMedia('(prefers-color-scheme: dark)').matches), true)
    assert.equal(await page.locator('#sidebar').isVisible(), true) // off-screen, not hidden
    const box = await page.locator('#sidebar').boundingBox()
    assert.ok(box !== null && box.x + box.width <= 0, JSON.stringify(box))
    // The model picker and the thoughts toggle fit on the screen, beside a readable title.
    for (const control of ['#model', '#show-thoughts', '#toggle-sidebar', '#input', '#send']) {
      const at = await page.locator(control).boundingBox()
      assert.ok(at !== null && at.x >= 0 && at.x + at.width <= 390, `${control}: ${JSON.stringify(at)}`)
    }
    await page.locator('#show-thoughts').check()
    // Shift+Enter is a new line, Enter sends.
    await page.locator('#input').fill('small screen')
    await page.locator('#input').press('Shift+Enter')
    await page.keyboard.insertText('<think>keep it short</think>second line')
    assert.equal(await page.locator('#input').inputValue(), 'small screen\n<think>keep it short</think>second line')
    await page.locator('#input').press('Enter')
    await lastAnswer(page).locator('.meta').waitFor()
    assert.equal(await page.locator('#input').inputValue(), '')
    assert.equal(await lastAnswer(page).locator('details.thoughts').textContent(), 'Thoughtskeep it short')
    await sendMessage(page, '<tool_call>{"name": "calculator", "arguments": {"expression": "6*7"}}</tool_call>')
    await lastAnswer(page).locator('.meta').waitFor()
    await lastAnswer(page).locator('details.tool-card summary').click()
    // An edit, with its switcher, on a touch screen (no hover: the edit button is always shown).
    await page.locator('.message.user').first().locator('button.edit').tap()
    await page.locator('.editor textarea').fill('small screen, edited')
    await page.locator('.editor button.save').tap()
    await page.locator('.message.user .switcher .count', { hasText: '2/2' }).waitFor()
    await sendMessage(page, 'and a longer answer: ' + words(80))
    await lastAnswer(page).locator('.meta').waitFor()
    assert.ok(await page.evaluate(() => document.documentElement.scrollWidth <= 390), 'the page scrolls sideways')
    await shot(page, 'phone-dark')
    await page.locator('.message.user .switcher button.previous').tap()
    await page.locator('.message.user .switcher .count', { hasText: '1/2' }).waitFor()
    await lastAnswer(page).locator('details.tool-card').waitFor()
    await shot(page, 'phone-dark-branches')
    await page.locator('#toggle-sidebar').tap()
    await page.waitForFunction(() => document.getElementById('sidebar')!.getBoundingClientRect().x >= 0)
    await page.locator('.sessions li.active button.rename').waitFor() // touch: shown without hover
    await shot(page, 'phone-dark-sessions')
    // Tapping beside the sidebar closes it.
    await page.locator('#scrim').tap({ position: { x: 370, y: 400 } })
    await page.waitForFunction(() => document.getElementById('sidebar')!.getBoundingClientRect().right <= 0)
    await page.close()
  })

  test('thoughts, asked for, stream behind a closed toggle and stay once the answer is stored', async () => {
    const page = await openPage(server.httpUrl)
    await page.locator('#new-chat').click()
    await sendMessage(page, '<think>first no thoughts</think>plain')
    await lastAnswer(page).locator('.meta').waitFor()
    assert.equal(await lastAnswer(page).locator('details.thoughts').count(), 0)
    assert.equal(await lastAnswer(page).locator('.body').textContent(), 'plain')
    await page.locator('#show-thoughts').check()
    await sendMessage(page, '<think>weigh **both** sides</think>The answer.')
    await lastAnswer(page).locator('.meta').waitFor()
    const thoughts = lastAnswer(page).locator('details.thoughts')
    assert.equal(await thoughts.getAttribute('open'), null)
    assert.equal(await thoughts.locator('div').isVisible(), false)
    await thoughts.locator('summary').click()
    assert.equal(await thoughts.locator('div').textContent(), 'weigh **both** sides')
    assert.equal(await lastAnswer(page).locator('.body').textContent(), 'The answer.')
    await shot(page, 'thoughts')
    await page.close()
  })
})

describe('the browser UI with a token', { skip: haveChromium ? false : `no Chromium at ${executablePath}` }, () => {
  let server: TetherServer
  let browser: Browser
  before(async () => {
    server = await TetherServer.start({ TETHER_TOKEN: 'pa55' })
    browser = await chromium.launch({ executablePath, args: ['--headless', '--no-sandbox', '--disable-gpu'] })
  })
  after(async () => {
    await browser?.close()
    await server?.stop()
  })

  test('?token= works, and without it the page asks for the token', async () => {
    const withToken = await browser.newPage()
    withToken.setDefaultTimeout(scaled(20_000))
    await withToken.goto(`${server.httpUrl}/?token=pa55`)
    await withToken.locator('body[data-ready="true"]').waitFor()
    assert.doesNotMatch(withToken.url(), /token=/) // taken out of the address bar
    await sendMessage(withToken, 'token in the url')
    await lastAnswer(withToken).locator('.meta').waitFor()
    assert.equal(await lastAnswer(withToken).locator('.body').textContent(), 'token in the url')
    await withToken.close()

    const page = await browser.newPage()
    page.setDefaultTimeout(scaled(20_000))
    await page.goto(server.httpUrl)
    await page.locator('#token-dialog[open]').waitFor()
    await shot(page, 'token-prompt')
    await page.locator('#token-input').fill('wrong')
    await page.locator('#token-input').press('Enter')
    await page.locator('#token-error:not([hidden])').waitFor()
    await page.locator('#token-input').fill('pa55')
    await page.locator('#token-input').press('Enter')
    await page.locator('body[data-ready="true"]').waitFor()
    await sendMessage(page, 'typed token')
    await lastAnswer(page).locator('.meta').waitFor()
    assert.equal(await lastAnswer(page).locator('.body').textContent(), 'typed token')
    await page.close()
  })
})
