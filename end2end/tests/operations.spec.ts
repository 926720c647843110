import { expect, test } from "./fixtures";
import { hydrated, operatorSignedIn, signUpStartup } from "./helpers";
import { playgroundDir, playgroundPort } from "../playwright.config";

// The operator watches the worker pool while a tenant's playground answer streams: its tokens
// per second rise above zero without a reload and fall back when the answer is stopped. Then
// the operator suspends the tenant's organisation, and the tenant's next playground request
// is refused.
const base = `http://127.0.0.1:${playgroundPort}`;

test("an operator sees a worker's live tokens per second and suspends a tenant mid-session", async ({ browser }) => {
  const stamp = Date.now();
  const tenant = await (await browser.newContext()).newPage();
  await signUpStartup(tenant, `live-${stamp}@example.com`, `Live Load ${stamp}`, base);
  const ops = await (await browser.newContext()).newPage();
  const opsEmail = `ops-live-${stamp}@tokenmill.example`;
  await operatorSignedIn(ops, opsEmail, base, playgroundDir);
  // The operator's dashboard: the console at a glance.
  await expect(ops.getByTestId("workers-ready")).toHaveText("1 / 1");
  await expect(ops.getByTestId("console-partners")).toContainText("smollm2-test");
  await expect(ops.getByTestId("console-programs")).toContainText("Starter credits");

  await ops.goto(`${base}/admin/workers`);
  await hydrated(ops);
  const worker = ops.getByTestId("worker-smollm2-test");
  await expect(worker.getByTestId("state")).toHaveText("ready");
  const rate = async () => Number((await worker.getByTestId("tokens-per-s").textContent()) ?? "0");
  await expect.poll(rate).toBe(0);

  // A long answer streams in the tenant's playground; the operator's page follows it live.
  await tenant.goto(`${base}/playground`);
  await hydrated(tenant);
  await tenant.getByLabel("Max tokens").fill("1000");
  await tenant.getByLabel("Message").fill("Tell me a very long story.");
  await tenant.getByTestId("send").click();
  await expect.poll(rate, { timeout: 30_000 }).toBeGreaterThan(0);
  await expect(worker.getByTestId("running")).toHaveText("1");
  await tenant.getByTestId("stop").click();
  await expect(tenant.getByTestId("stopped")).toBeVisible({ timeout: 30_000 });
  await expect.poll(rate, { timeout: 15_000 }).toBe(0);
  await expect(worker.getByTestId("running")).toHaveText("0");

  // Suspended: the tenant's next request is refused, with the reason.
  await ops.goto(`${base}/admin/organizations?q=Live%20Load%20${stamp}`);
  await hydrated(ops);
  const row = ops.getByTestId(`org-Live Load ${stamp}`);
  ops.once("dialog", (d) => d.accept());
  await row.getByRole("button", { name: "Suspend" }).click();
  await expect(row.getByTestId("state")).toContainText("suspended since");
  await tenant.getByLabel("Max tokens").fill("8");
  await tenant.getByLabel("Message").fill("Are you still there?");
  await tenant.getByTestId("send").click();
  await expect(tenant.getByRole("alert")).toContainText("suspended");

  // The change is in the audit log.
  await ops.goto(`${base}/audit?q=suspend`);
  await hydrated(ops);
  await expect(ops.getByTestId("audit-organization.suspend")).toContainText(opsEmail);
});

test("an error page shows the request id its response carries", async ({ page }) => {
  const response = await page.goto("/no-such-page");
  expect(response?.status()).toBe(404);
  const id = response?.headers()["x-request-id"] ?? "";
  expect(id).toMatch(/^[0-9a-f-]{36}$/);
  await hydrated(page);
  await expect(page.getByTestId("request-id")).toContainText(id);
});
