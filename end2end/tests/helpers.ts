import { execFileSync } from "node:child_process";
import { expect, type Page } from "@playwright/test";

// What several browser tests share: the test password, waiting for hydration, signing up a
// startup and logging it in, logging in, making an operator, and exact amounts.

export const password = "lanterns over the harbour";

export async function hydrated(page: Page) {
  await expect(page.locator("body[data-hydrated=true]")).toHaveCount(1);
}

/** Signs up a startup on the portal at `base` ("" for the default one) and logs its owner in. */
export async function signUpStartup(page: Page, email: string, org: string, base = "") {
  await page.goto(`${base}/signup`);
  await hydrated(page);
  await page.getByLabel("Organisation name").fill(org);
  await page.getByLabel("Kind of organisation").selectOption("startup");
  await page.getByLabel("Country or region").selectOption("europe");
  await page.getByLabel("Work email").fill(email);
  await page.locator("#password").fill(password);
  await page.getByRole("button", { name: "Create account" }).click();
  await expect(page).toHaveURL(/\/login\?signed_up=1$/);
  await hydrated(page);
  await page.getByLabel("Email").fill(email);
  await page.locator("#password").fill(password);
  await page.getByRole("button", { name: "Log in" }).click();
  await expect(page).toHaveURL(/\/dashboard$/);
  await hydrated(page);
}

/** "$1,234.5", "-0.25" → nano-dollars, exactly. */
export function nanos(amount: string): bigint {
  const text = amount.trim().replace("$", "").replace(/,/g, "");
  const negative = text.startsWith("-");
  const [whole, frac = ""] = text.replace("-", "").split(".");
  const value = BigInt(whole) * 1_000_000_000n + BigInt(frac.padEnd(9, "0"));
  return negative ? -value : value;
}

const dbDir = process.env.E2E_DB_DIR ?? "/tmp/tokenmill-e2e";
export const bin = process.env.TOKENMILL_BIN ?? "../target/debug/tokenmill";

/** Logs in on the portal at `base` ("" for the default one) and waits for the dashboard. */
export async function logIn(page: Page, email: string, pw: string, base = "") {
  await page.goto(`${base}/login`);
  await hydrated(page);
  await page.getByLabel("Email").fill(email);
  await page.locator("#password").fill(pw);
  await page.getByRole("button", { name: "Log in" }).click();
  await expect(page).toHaveURL(/\/dashboard$/);
  await hydrated(page);
}

/** Operators are made on the command line, as the README says, against the database of the
 * portal whose files are in `dir` (the default portal's unless given). */
export function createOperator(email: string, dir = dbDir) {
  execFileSync(bin, ["admin", "create-operator", "--email", email], {
    env: {
      ...process.env,
      DATABASE_URL: `sqlite://${dir}/tokenmill.db?mode=rwc`,
      TOKENMILL_OPERATOR_PASSWORD: password,
    },
  });
}
