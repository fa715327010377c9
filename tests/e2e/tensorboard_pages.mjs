// TensorBoard's own pages in a real browser (Debian's Chromium, playwright-core): how the monitor's
// pictures show on the Images and Time Series dashboards, at TensorBoard's default card size.
//
//   node tests/e2e/tensorboard_pages.mjs <tensorboard url> <screenshot prefix> <checks JSON>
//
// The checks JSON names `filter` (a tag regex typed into the dashboards' filter) and `pages` (of
// "images", "timeseries", "custom_scalars"). For each page: a screenshot (<prefix>-<page>.png) and, for
// every picture shown, its tag (from the card), its natural and displayed width. Prints a JSON summary.

import { chromium } from "playwright-core";

const [base, prefix, checksArg] = process.argv.slice(2);
const checks = JSON.parse(checksArg || "{}");
const root = base.replace(/\/+$/, "");
const summary = { ok: false, pages: {}, failures: [], page_errors: [] };

/** Polls `probe` until it returns a truthy value or the time runs out. */
async function until(probe, timeoutMs = 20_000) {
  const deadline = Date.now() + timeoutMs;
  let value = await probe();
  while (!value && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 250));
    value = await probe();
  }
  return value;
}

/** Every picture on the page: its card's title, natural and shown size (CSS px). */
function pictures(page) {
  return page.evaluate(() => {
    const found = [];
    const visit = (node) => {
      for (const img of node.querySelectorAll("img")) {
        if (img.naturalWidth < 64 || img.closest("header, mat-toolbar")) continue; // pictures, not icons
        const card = img.closest("mat-card, card-view, tf-image-loader, .card, image-card, [class*=card]");
        const rect = img.getBoundingClientRect();
        found.push({ title: card ? card.innerText.split("\n")[0] : "", natural: [img.naturalWidth, img.naturalHeight],
          shown: [Math.round(rect.width), Math.round(rect.height)], src: img.src.slice(-80) });
      }
      for (const el of node.querySelectorAll("*")) if (el.shadowRoot) visit(el.shadowRoot);
    };
    visit(document);
    return found;
  });
}

const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", headless: true, args: ["--no-sandbox", "--disable-gpu"] });
try {
  for (const name of checks.pages || ["images", "timeseries"]) {
    const page = await browser.newPage({ viewport: { width: checks.width || 1440, height: checks.height || 900 } });
    page.on("pageerror", (e) => summary.page_errors.push(String(e)));
    const filter = checks.filter ? (name === "timeseries" ? `?tagFilter=${encodeURIComponent(checks.filter)}` : "") : "";
    await page.goto(`${root}/${filter}#${name}`);
    if (name === "images" && checks.filter) {
      const box = page.locator("tf-tag-filterer input, #tag-filterer input, input[placeholder*=ilter]").first();
      await until(async () => (await box.count()) > 0);
      if (await box.count()) await box.fill(checks.filter);
    }
    if (name === "custom_scalars") await page.waitForTimeout(6000);
    else await until(async () => (await pictures(page)).length >= (checks.min_pictures || 1), 30_000);
    await page.waitForTimeout(2500);
    summary.pages[name] = await pictures(page);
    await page.screenshot({ path: `${prefix}-${name}.png`, fullPage: false });
    await page.close();
  }
} catch (error) {
  summary.failures.push(`${error.name}: ${error.message}`);
} finally {
  await browser.close();
}
summary.ok = summary.failures.length === 0;
process.stdout.write(`${JSON.stringify(summary, null, 2)}\n`);
process.exit(summary.ok ? 0 : 1);
