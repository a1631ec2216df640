// After `tsc`: the built client goes into the Python package's web UI (src/tether/web/client/),
// so `tether serve` serves it at /ui/client/ with no build step at run time.
import { copyFileSync, mkdirSync, readdirSync, rmSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const here = path.dirname(fileURLToPath(import.meta.url))
const dist = path.join(here, '..', 'dist')
const target = path.join(here, '..', '..', '..', 'src', 'tether', 'web', 'client')
rmSync(target, { recursive: true, force: true })
mkdirSync(target, { recursive: true })
for (const name of readdirSync(dist)) {
  if (name.endsWith('.js') && name !== 'ai.js') copyFileSync(path.join(dist, name), path.join(target, name))
}
