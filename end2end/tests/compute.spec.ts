import { readFileSync } from "node:fs";
import { expect, test, type Page } from "./fixtures";
import { hydrated, letterLink, logIn, nanos, operatorSignedIn, password } from "./helpers";

// A startup asks for compute with credit support; the operator approves it with a grant; the
// startup sees the grant in Credits, and the CSV export's total matches the page.

const tag = () => `${Date.now()}-${Math.floor(Math.random() * 1e6)}`;

async function logOut(page: Page) {
  await page.getByRole("button", { name: "Log out" }).click();
  await expect(page).toHaveURL(/\/login$/);
}

function day(offset: number): string {
  return new Date(Date.now() + offset * 86_400_000).toISOString().slice(0, 10);
}

/** Sums the amount_usd column exactly, in nano-dollars. */
function csvTotal(csv: string): bigint {
  const [header, ...rows] = csv.trim().split("\n");
  expect(header).toBe("date_utc,transaction_id,kind,description,amount_usd");
  return rows.reduce((sum, row) => sum + nanos(row.slice(row.lastIndexOf(",") + 1)), 0n);
}

test("a startup requests compute with credit support; the operator approves with a grant", async ({ page }) => {
  const t = tag();
  const ops = `ops-${t}@tokenmill.example`;
  const partner = `Savanna Cloud ${t}`;
  const factory = `Nairobi ${t}`;
  const program = `Startup boost ${t}`;
  // The operator sets up a partner, its factory and a vendor-sponsored program.
  const opsSecond = await operatorSignedIn(page, ops);
  await page.getByRole("link", { name: "Admin" }).click();
  await page.getByLabel("Partner name").fill(partner);
  await page.getByLabel("Region").selectOption("africa");
  await page.getByLabel("First user's email").fill(`owner-${t}@savanna.example`);
  await page.getByRole("button", { name: "Create partner" }).click();
  await expect(page.getByTestId("partner-link")).toContainText("/invite/");

  await page.getByRole("link", { name: "Factories" }).click();
  await hydrated(page);
  await page.getByLabel("Partner").selectOption({ label: partner });
  await page.getByLabel("Name").fill(factory);
  await page.getByLabel("Region").selectOption("africa");
  await page.getByLabel("GPU class").selectOption("H100");
  await page.getByLabel(/Models served/).fill("tiny/llama\ntiny/qwen");
  await page.getByRole("button", { name: "Create factory" }).click();
  await expect(page.getByTestId("factories")).toContainText(factory);

  await page.getByRole("link", { name: "Programs" }).click();
  await hydrated(page);
  await page.getByLabel("Name").fill(program);
  await page.getByLabel("Startup").check();
  await page.getByLabel("Standard grant (USD)").fill("100");
  await page.getByLabel("Total budget (USD)").fill("1000");
  await page.getByRole("button", { name: "Create program" }).click();
  await expect(page.getByTestId("programs")).toContainText(program);
  await logOut(page);

  // A startup signs up and asks for capacity with credit support.
  const founder = `founder-${t}@startup.example`;
  await page.goto("/signup");
  await hydrated(page);
  await page.getByLabel("Organisation name").fill(`Clinic AI ${t}`);
  await page.getByLabel("Kind of organisation").selectOption("startup");
  await page.getByLabel("Country or region").selectOption("africa");
  await page.getByLabel("Work email").fill(founder);
  await page.locator("#password").fill(password);
  await page.getByRole("button", { name: "Create account" }).click();
  await expect(page).toHaveURL(/\/login\?signed_up=1&email=/);
  await page.goto(await letterLink(founder, "/verify/"));
  await expect(page.getByTestId("verified")).toContainText("is verified");
  await logIn(page, founder, password);
  await page.getByRole("link", { name: "Compute" }).click();
  await hydrated(page);
  await page.getByLabel("Factory").selectOption({ label: `${factory} · ${partner} · Africa (H100)` });
  await page.getByLabel("Model or GPUs").selectOption("tiny/llama");
  await page.getByLabel(/Throughput/).fill("60000");
  // A last day before the first is refused next to the field, and nothing is submitted.
  await page.getByLabel("First day (UTC)").fill(day(7));
  await page.getByLabel("Last day (UTC)").fill(day(3));
  await page.getByLabel("Program").selectOption({ label: `${program} ($1000.00 left)` });
  await page.getByLabel("Amount (USD)").fill("250");
  await page.getByLabel("What the credits are for").fill("Fine-tuning a Swahili assistant for rural clinics.");
  await page.getByRole("button", { name: "Submit request" }).click();
  await expect(page.locator("#ends_on-error")).toContainText("before the start");
  await page.getByLabel("Last day (UTC)").fill(day(90));
  await page.getByRole("button", { name: "Submit request" }).click();
  await expect(page).toHaveURL(/\/compute\/[0-9a-f-]+$/);
  await expect(page.getByTestId("status")).toHaveText("Submitted");
  await logOut(page);

  // The operator approves it from the queue, granting the credit asked for.
  await logIn(page, ops, password, "", opsSecond);
  await page.getByRole("link", { name: "Approvals" }).click();
  await page.getByTestId("requests").getByRole("link").first().click();
  await expect(page.getByTestId("status")).toHaveText("Submitted");
  await hydrated(page);
  const approve = page.getByTestId("approve-form");
  await expect(approve.getByLabel("Grant credits from")).toHaveValue(/.+/);
  await expect(approve.getByLabel("Grant amount (USD)")).toHaveValue("250.00");
  await approve.getByRole("button", { name: "Approve" }).click();
  await expect(page.getByTestId("status")).toHaveText("Approved");
  await expect(page.getByTestId("grant")).toHaveText(`$250.00 from ${program}`);
  await expect(page.getByTestId("timeline")).toContainText("credit granted");
  await logOut(page);

  // The startup sees the grant in Credits, and the CSV adds up to what the page shows.
  await logIn(page, founder, password);
  await page.getByRole("link", { name: "Credits" }).click();
  await expect(page.getByTestId("available")).toHaveText("$250.00");
  await expect(page.getByTestId("buckets")).toContainText(program);
  await expect(page.getByTestId("history")).toContainText("Credit grant");
  const net = await page.getByTestId("history-net").innerText();
  await hydrated(page);
  const [download] = await Promise.all([
    page.waitForEvent("download"),
    page.getByTestId("export-csv").click(),
  ]);
  const csv = readFileSync((await download.path())!, "utf8");
  expect(csvTotal(csv)).toBe(nanos(net));
  expect(csvTotal(csv)).toBe(nanos("250"));
  expect(csv).toContain(`,grant,${program}: compute request at ${factory},250.00`);
});
