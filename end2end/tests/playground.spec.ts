import { expect, test } from "./fixtures";
import { hydrated, nanos, signUpStartup } from "./helpers";
import { playgroundPort } from "../playwright.config";

// The playground portal started its first time with a model: a local factory, list prices and
// starter credits for new startups are set up.
const base = `http://127.0.0.1:${playgroundPort}`;

test("a new startup gets starter credits, streams an answer, stops a long one and pays what it was shown", async ({ page }) => {
  await signUpStartup(page, `play-${Date.now()}@example.com`, "Prompt Foundry", base);

  // The starter grant is in the wallet.
  await page.goto(`${base}/credits`);
  await expect(page.getByTestId("buckets")).toContainText("Starter credits");
  await expect(page.getByTestId("available")).toHaveText("$10.00");

  await page.goto(`${base}/playground`);
  await hydrated(page);
  await expect(page.getByLabel("Model")).toContainText("smollm2-test");
  await expect(page.getByLabel("Model")).toContainText(/\d+-token context/);

  // A short answer runs to its end, sent with Ctrl+Enter; it shows once, as a turn.
  await page.getByLabel("Max tokens").fill("8");
  await page.getByLabel("Message").fill("Say hello.");
  await page.getByLabel("Message").press("Control+Enter");
  await expect(page.getByTestId("stats")).toBeVisible({ timeout: 30_000 });
  await expect(page.getByTestId("tokens")).toContainText("completion");
  const turns = page.getByTestId("turns").locator("li");
  await expect(turns).toHaveCount(2);
  await expect(turns.nth(0)).toContainText("Say hello.");
  await expect(page.getByTestId("answer")).toHaveCount(0);
  await expect(page.getByLabel("Message")).toHaveValue("");
  // Speed and time to first token are the server's own figures.
  await expect(page.getByTestId("speed")).toHaveText(/^\d+\.\d tokens\/s$/);
  await expect(page.getByTestId("ttft")).toHaveText(/^\d+ ms$/);
  const firstCost = nanos((await page.getByTestId("cost").textContent()) ?? "");
  // Balances read in dollars and cents; the exact figure is the tooltip.
  const firstBalance = nanos((await page.getByTestId("balance").getAttribute("title")) ?? "");
  await expect(page.getByTestId("balance")).toHaveText(/^\$\d+\.\d\d$/);
  expect(firstCost > 0n).toBeTruthy();
  expect(firstBalance).toBe(10_000_000_000n - firstCost);

  // A long answer: tokens stream in, then Stop ends it early.
  await page.getByLabel("Max tokens").fill("1000");
  await page.getByLabel("Message").fill("Tell me a very long story.");
  await page.getByTestId("send").click();
  await expect(page.getByTestId("stop")).toBeEnabled();
  // The question shows at once, before its answer.
  await expect(page.getByTestId("asking")).toContainText("Tell me a very long story.");
  const answer = page.getByTestId("answer");
  // Raw length: a test model's text can be mostly whitespace.
  const shown = async () => ((await answer.textContent()) ?? "").length;
  await expect.poll(shown, { timeout: 30_000 }).toBeGreaterThan(0);
  const early = (await answer.textContent()) ?? "";
  await expect.poll(shown).toBeGreaterThan(early.length);
  await page.getByTestId("stop").click();
  await expect(page.getByTestId("stopped")).toBeVisible({ timeout: 30_000 });
  await expect(turns).toHaveCount(4);
  await expect(page.getByTestId("asking")).toHaveCount(0);
  const tokens = (await page.getByTestId("tokens").textContent()) ?? "";
  const completion = Number(tokens.match(/(\d+) completion/)?.[1]);
  expect(completion).toBeGreaterThan(0);
  expect(completion).toBeLessThan(1000);
  const cost = nanos((await page.getByTestId("cost").textContent()) ?? "");
  const balance = nanos((await page.getByTestId("balance").getAttribute("title")) ?? "");
  expect(balance).toBe(firstBalance - cost);

  // The Credits page agrees.
  await page.goto(`${base}/credits`);
  await expect(page.getByTestId("available")).not.toHaveText("$10.00");
  expect(nanos((await page.getByTestId("available").getAttribute("title")) ?? "")).toBe(balance);
  const cut = nanos((await page.getByTestId("available").textContent()) ?? "");
  expect(cut <= balance && balance - cut < 10_000_000n).toBeTruthy();

  // Usage: by source (the playground), by key (none: the playground uses the session), and
  // each request in the activity log, newest first.
  await page.goto(`${base}/usage?days=7`);
  await hydrated(page);
  await expect(page.getByTestId("usage-by-source")).toContainText("playground");
  await expect(page.getByTestId("usage-by-key")).toContainText("no key");
  const activity = page.getByTestId("activity").locator("tbody tr");
  await expect(activity).toHaveCount(2);
  await expect(activity.first()).toContainText("(stopped)");
  await expect(page.getByTestId("chart-max")).toContainText("$");

  // View code repeats the request for the API.
  await page.goto(`${base}/playground`);
  await hydrated(page);
  await page.getByTestId("view-code").click();
  await expect(page.getByTestId("code-curl")).toContainText("/v1/chat/completions");
  await expect(page.getByTestId("code-python")).toContainText("from openai import OpenAI");
  // Numbers as the user typed them.
  await expect(page.getByTestId("code-curl")).toContainText('"temperature": 0.7,');
  await expect(page.getByTestId("code-python")).toContainText("temperature=0.7,");
});
