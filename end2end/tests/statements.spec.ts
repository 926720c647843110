import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { expect, test } from "./fixtures";
import { bin, enrolTwoFactor, hydrated, nanos, operatorSignedIn } from "./helpers";

// An operator sets a partner's agreement, credits last month and closes it; the partner's
// user sees the closed statement, downloads its CSV and PDF, and the CSV's totals equal the
// page's (and verify with `tokenmill statements verify`).

const tag = () => `${Date.now()}-${Math.floor(Math.random() * 1e6)}`;

/** `YYYY-MM` of last month, UTC. */
function lastMonth(): string {
  const now = new Date();
  const d = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() - 1, 1));
  return d.toISOString().slice(0, 7);
}

/** The CSV's rows by record kind (first column). */
function records(csv: string): Map<string, string[][]> {
  const out = new Map<string, string[][]>();
  for (const line of csv.trim().split("\n")) {
    const fields = line.split(",");
    out.set(fields[0], [...(out.get(fields[0]) ?? []), fields]);
  }
  return out;
}

test("an operator closes last month; the partner downloads a statement that matches the page", async ({ page, browser }) => {
  const t = tag();
  const ops = `ops-${t}@tokenmill.example`;
  const partner = `Savanna Cloud ${t}`;
  const month = lastMonth();
  await operatorSignedIn(page, ops);
  await page.getByRole("link", { name: "Admin" }).click();
  await hydrated(page);
  await page.getByLabel("Partner name").fill(partner);
  await page.getByLabel("Region").selectOption("africa");
  await page.getByLabel("First user's email").fill(`owner-${t}@savanna.example`);
  await page.getByRole("button", { name: "Create partner" }).click();
  const invite = (await page.getByTestId("partner-link").textContent())!.trim();
  expect(invite).toContain("/invite/");

  // Statements: pick the partner, give it an agreement from the first of last month.
  await page.getByRole("link", { name: "Statements" }).click();
  await hydrated(page);
  await page.getByTestId("partner-picker").getByLabel("Partner").selectOption({ label: partner });
  await page.getByRole("button", { name: "Show" }).click();
  await expect(page.getByTestId("statements-partner")).toHaveText(partner);
  await hydrated(page);
  await page.getByLabel("From (YYYY-MM-DD, UTC)").fill(`${month}-01`);
  await page.getByLabel("Partner share of cash usage (%)").fill("70");
  await page.getByLabel("Credit-supported usage reimbursed at (%)").fill("50");
  await page.getByLabel("Note").fill("launch terms");
  await page.getByRole("button", { name: "Add version" }).click();
  await expect(page.getByTestId("agreements")).toContainText("70.00 %");

  // A credit for last month, then close it.
  await page.getByLabel("Month (an open one)").fill(month);
  await page.getByLabel("Kind").selectOption("credit");
  await page.getByLabel("Amount to the partner").fill("2.5");
  await page.getByLabel("Reason (printed on the statement)").fill("launch bonus");
  await page.getByRole("button", { name: "Add adjustment" }).click();
  await expect(page.getByTestId("adjustments")).toContainText("launch bonus");
  page.once("dialog", (d) => {
    expect(d.message()).toContain("The statement becomes final");
    return d.accept();
  });
  await page.getByRole("button", { name: `Close ${month}` }).click();
  const row = page.getByTestId(`statement-${month}`);
  await expect(row.getByTestId("status")).toHaveText("Closed · no. 1");
  await expect(page.getByTestId("chain")).toContainText(month);

  // The partner's user joins and finds the closed statement.
  const other = await browser.newContext();
  const pp = await other.newPage();
  await pp.goto(invite);
  await hydrated(pp);
  await pp.locator("#password").fill("partner long passphrase");
  await pp.getByRole("button", { name: "Join" }).click();
  await expect(pp).toHaveURL(/\/dashboard$/);
  // A partner's owner must sign in with a second factor: set it up first.
  await expect(pp.getByTestId("two-factor-banner")).toBeVisible();
  await enrolTwoFactor(pp);
  // The partner's dashboard: the month so far, its factories, the statement just closed.
  await pp.goto("/dashboard");
  await hydrated(pp);
  const panel = pp.getByTestId("partner-panel");
  await expect(panel.getByTestId("partner-payable")).toHaveText("$0.00");
  const latest = pp.getByTestId("partner-statements");
  await expect(latest).toContainText(month);
  await expect(latest).toContainText("$2.50");
  await expect(latest).toContainText(new Date().toISOString().slice(0, 10));
  await pp.getByRole("link", { name: "Statements" }).click();
  const prow = pp.getByTestId(`statement-${month}`);
  await expect(prow.getByTestId("status")).toHaveText("Closed · no. 1");
  const payableOnPage = nanos((await prow.getByTestId("payable").textContent())!);
  expect(payableOnPage).toBe(2_500_000_000n);

  const [csvDownload] = await Promise.all([pp.waitForEvent("download"), prow.getByTestId("download-csv").click()]);
  expect(csvDownload.suggestedFilename()).toBe(`tokenmill-statement-savanna-cloud-${t}-${month}.csv`);
  const csvPath = (await csvDownload.path())!;
  const csv = readFileSync(csvPath, "utf8");
  const r = records(csv);
  expect(nanos(r.get("payable")![0][1])).toBe(payableOnPage);
  expect(nanos(r.get("summary")![0][2])).toBe(payableOnPage);
  expect(r.get("status")![0].slice(1)).toEqual(["closed", "1"]);
  // The hash on the page is the file's, and the CLI verifies the file.
  const hash = (await pp.getByTestId("chain").getByTestId("sha256").first().textContent())!.trim();
  const out = execFileSync(bin, ["statements", "verify", csvPath]).toString();
  expect(out).toContain(`OK  ${hash}`);

  const [pdfDownload] = await Promise.all([pp.waitForEvent("download"), prow.getByTestId("download-pdf").click()]);
  expect(pdfDownload.suggestedFilename()).toBe(`tokenmill-statement-savanna-cloud-${t}-${month}.pdf`);
  const pdf = readFileSync((await pdfDownload.path())!);
  expect(pdf.subarray(0, 5).toString()).toBe("%PDF-");
  // A closed statement's PDF says when it was issued and to whom; a draft's says DRAFT.
  expect(pdf.includes(`issued ${new Date().toISOString().slice(0, 10)}`)).toBeTruthy();
  expect(pdf.includes("Payee: Savanna Cloud")).toBeTruthy();
  expect(pdf.includes("(DRAFT)")).toBeFalsy();
  const current = new Date().toISOString().slice(0, 7);
  const [draftDownload] = await Promise.all([
    pp.waitForEvent("download"),
    pp.getByTestId(`statement-${current}`).getByTestId("download-pdf").click(),
  ]);
  expect(readFileSync((await draftDownload.path())!).includes("(DRAFT)")).toBeTruthy();

  // The statement page shows the same payable and the hash.
  await prow.getByRole("link", { name: month }).click();
  await expect(pp.getByTestId("statement-payable")).toHaveText("$2.50");
  await expect(pp.getByTestId("statement-sha256")).toHaveText(hash);
  await other.close();
});
