import { expect, test } from "./fixtures";
import { hydrated, signUpStartup } from "./helpers";
import { playgroundPort } from "../playwright.config";

// The playground portal serves a model, so a key made in the browser can be used at once.
const base = `http://127.0.0.1:${playgroundPort}`;

test("a key made on the API keys page answers on /v1, shows its last use and stops when revoked", async ({ page, request }) => {
  await signUpStartup(page, `keys-${Date.now()}@example.com`, "Key Smiths", base);

  await page.goto(`${base}/keys`);
  await hydrated(page);
  await expect(page.getByText("No keys yet.")).toBeVisible();
  await page.getByLabel("Name", { exact: true }).fill("production");
  await page.getByRole("button", { name: "Create key" }).click();
  const secret = ((await page.getByTestId("new-key").textContent()) ?? "").trim();
  expect(secret).toMatch(/^tmk_[A-Za-z0-9]+$/);
  // The form is empty again for the next key, and the secret is one click from the clipboard.
  await expect(page.getByLabel("Name", { exact: true })).toHaveValue("");
  await page.context().grantPermissions(["clipboard-read", "clipboard-write"], { origin: base });
  await page.getByRole("button", { name: "Copy key" }).click();
  await expect(page.getByRole("button", { name: "Copied" })).toBeVisible();
  expect(await page.evaluate(() => navigator.clipboard.readText())).toBe(secret);
  const row = page.getByTestId("keys").locator("tr", { hasText: "production" });
  // Columns: name, key, created, expires, last used, status.
  const lastUsed = row.locator("td").nth(4);
  await expect(row.locator("td").nth(5)).toHaveText("active");
  await expect(lastUsed).toHaveText("never");

  // The OpenAI-compatible API over real HTTP, as curl would call it.
  const auth = { Authorization: `Bearer ${secret}` };
  const models = await request.get(`${base}/v1/models`, { headers: auth });
  expect(models.status()).toBe(200);
  const ids = ((await models.json()).data as { id: string }[]).map((m) => m.id);
  expect(ids).toContain("smollm2-test");
  const chat = await request.post(`${base}/v1/chat/completions`, {
    headers: auth,
    data: { model: "smollm2-test", messages: [{ role: "user", content: "Say hello." }], max_tokens: 2 },
  });
  expect(chat.status()).toBe(200);
  const answer = await chat.json();
  expect(answer.object).toBe("chat.completion");
  expect(answer.usage.completion_tokens).toBeGreaterThan(0);
  expect(answer.usage.completion_tokens).toBeLessThanOrEqual(2);

  // The list shows the use; the secret itself is never shown again.
  await page.reload();
  await hydrated(page);
  await expect(lastUsed).not.toHaveText("never");
  await expect(page.getByTestId("new-key")).toHaveCount(0);
  await expect(page.getByTestId("keys")).not.toContainText(secret);

  // Revoked: the very next call is refused with OpenAI's error body.
  // Revoking asks first: dismissed, nothing happens; confirmed, the key is revoked.
  page.once("dialog", (d) => d.dismiss());
  await row.getByRole("button", { name: "Revoke" }).click();
  await expect(row.locator("td").nth(5)).toHaveText("active");
  page.once("dialog", (d) => {
    expect(d.message()).toContain("Revoke this key?");
    return d.accept();
  });
  await row.getByRole("button", { name: "Revoke" }).click();
  await expect(row.locator("td").nth(5)).toHaveText("revoked");
  const refused = await request.post(`${base}/v1/chat/completions`, {
    headers: auth,
    data: { model: "smollm2-test", messages: [{ role: "user", content: "Again." }], max_tokens: 2 },
  });
  expect(refused.status()).toBe(401);
  const error = (await refused.json()).error;
  expect(error.code).toBe("invalid_api_key");
  expect(error.type).toBe("invalid_request_error");
  expect(error.message.length).toBeGreaterThan(0);
});
