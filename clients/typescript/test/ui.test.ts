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

  test('search lists matching messages with the hits marked, safely; a hit opens its session', async () => {
    const page = await openPage(server.httpUrl)
    await page.locator('#new-chat').click()
    await sendMessage(page, 'zebrafish <img src=x onerror="window.pwned=1"> facts')
    await lastAnswer(page).locator('.meta').waitFor()
    await page.locator('#new-chat').click()
    await sendMessage(page, 'nothing to see')
    await lastAnswer(page).locator('.meta').waitFor()
    await page.locator('#search').fill('zebrafish')
    const hits = page.locator('#search-results button.hit')
    await hits.first().waitFor()
    assert.equal(await page.locator('#sessions').isVisible(), false)
    assert.equal(await hits.first().locator('.snippet mark').first().textContent(), 'zebrafish')
    assert.match((await hits.first().locator('.snippet').textContent()) ?? '', /<img src=x/)
    assert.equal(await page.locator('#search-results img').count(), 0)
    assert.equal(await page.evaluate(() => (window as unknown as { pwned?: number }).pwned), undefined)
    await shot(page, 'search')
    await hits.first().click()
    await page.locator('.message.user', { hasText: 'zebrafish' }).waitFor()
    await page.locator('#search').fill('qqqnomatchqqq')
    await page.locator('#search-results li.none').waitFor()
    await page.locator('#search').press('Escape')
    await page.locator('#sessions').waitFor()
    assert.equal(await page.locator('#search-results').isVisible(), false)
    await page.close()
  })

  test('Regenerate on the last answer asks again: one answer shown, two stored side by side', async () => {
    const page = await openPage(server.httpUrl)
    await page.locator('#new-chat').click()
    await sendMessage(page, 'say it twice')
    await lastAnswer(page).locator('.meta').waitFor()
    await sendMessage(page, 'and once more')
    await lastAnswer(page).locator('.meta button.regenerate').waitFor()
    assert.equal(await page.locator('button.regenerate').count(), 1) // only on the last answer
    await lastAnswer(page).locator('button.regenerate').click()
    await lastAnswer(page).locator('.meta button.regenerate').waitFor()
    assert.equal(await page.locator('.message.assistant').count(), 2)
    assert.equal(await lastAnswer(page).locator('.body').textContent(), 'and once more')
    const sessions = (await (await fetch(`${server.httpUrl}/sessions`)).json()) as { id: string; title: string }[]
    const session = sessions.find((s) => s.title === 'say it twice')
    assert.ok(session !== undefined)
    const messages = (await (await fetch(`${server.httpUrl}/sessions/${session.id}/messages`)).json()) as {
      role: string
      siblings: string[]
    }[]
    assert.equal(messages.length, 4)
    assert.equal(messages[3]!.role, 'assistant')
    assert.equal(messages[3]!.siblings.length, 2)
    await shot(page, 'regenerate')
    await page.reload()
    await page.locator('body[data-ready="true"]').waitFor()
    await page.locator('.sessions li button.open', { hasText: 'say it twice' }).click()
    await page.locator('.message.assistant .meta button.regenerate').waitFor()
    assert.equal(await page.locator('.message.assistant').count(), 2)
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

  test('on a phone-width screen in dark mode the sidebar folds away', async () => {
    const page = await browser.newPage({ viewport: { width: 390, height: 800 }, colorScheme: 'dark' })
    page.setDefaultTimeout(scaled(20_000))
    await page.goto(server.httpUrl)
    await page.locator('body[data-ready="true"]').waitFor()
    assert.equal(await page.locator('#sidebar').isVisible(), true) // off-screen, not hidden
    const box = await page.locator('#sidebar').boundingBox()
    assert.ok(box !== null && box.x + box.width <= 0, JSON.stringify(box))
    await sendMessage(page, 'small screen')
    await lastAnswer(page).locator('.meta').waitFor()
    await shot(page, 'phone-dark')
    await page.locator('#toggle-sidebar').click()
    await page.waitForFunction(() => document.getElementById('sidebar')!.getBoundingClientRect().x >= 0)
    await shot(page, 'phone-dark-sessions')
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
