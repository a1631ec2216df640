/**
 * The README's picture of the browser UI, docs/ui.png, made the way a user would see it: a real
 * `tether serve --engine echo`, Debian's Chromium, three chats, one of them with markdown, an
 * edited question (its ‹ 2/2 › switcher) and a tool call shown as an open card.
 *
 *     npm run screenshot        (from clients/typescript; rewrites docs/ui.png)
 */

import path from 'node:path'

import { chromium, type Page } from 'playwright-core'

import { TetherServer, repoRoot } from './support.js'

const executablePath = process.env['CHROMIUM_PATH'] ?? '/usr/bin/chromium'
const output = path.join(repoRoot, 'docs', 'ui.png')

async function say(page: Page, text: string): Promise<void> {
  const answers = await page.locator('.message.assistant .meta').count()
  await page.locator('#input').fill(text)
  await page.locator('#input').press('Enter')
  await page.locator('.message.assistant .meta').nth(answers).waitFor()
}

async function main(): Promise<void> {
  const server = await TetherServer.start()
  const browser = await chromium.launch({ executablePath, args: ['--headless', '--no-sandbox', '--disable-gpu'] })
  try {
    const page = await browser.newPage({ viewport: { width: 1100, height: 900 } })
    await page.goto(server.httpUrl)
    await page.locator('body[data-ready="true"]').waitFor()
    for (const opening of ['Plan a weekend in Lisbon', 'Release notes for v0.2: what changed']) {
      await page.locator('#new-chat').click()
      await say(page, opening)
    }
    await page.locator('#new-chat').click()
    await say(page, 'Three tips for the **release**:\n\n1. Tag it: `git tag v0.2`\n2. Write the notes\n3. Tell the team')
    await say(page, '<tool_call>{"name": "calculator", "arguments": {"expression": "6*6"}}</tool_call>')
    const question = page.locator('.message.user').nth(1)
    await question.locator('button.edit').click()
    await question.locator('.editor textarea').fill('<tool_call>{"name": "calculator", "arguments": {"expression": "6*7"}}</tool_call>')
    await question.locator('.editor button.save').click()
    await question.locator('.switcher .count', { hasText: '2/2' }).waitFor()
    await page.locator('.message.assistant').last().locator('.meta').waitFor()
    await page.locator('.message.assistant').last().locator('details.tool-card summary').click()
    await page.mouse.move(0, 899) // no hover effects in the picture
    await page.screenshot({ path: output })
    console.log(`wrote ${output}`)
  } finally {
    await browser.close()
    await server.stop()
  }
}

await main()
