import { execFileSync } from "node:child_process";
import { createHmac } from "node:crypto";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { expect, type Page } from "@playwright/test";

// What several browser tests share: the test password, waiting for hydration, signing up a
// startup, verifying its address from the letter in the outbox and logging it in, logging in
// (with a second factor when asked), making an operator and setting up its two-factor
// sign-in, and exact amounts.

export const password = "lanterns over the harbour";

export async function hydrated(page: Page) {
  await expect(page.locator("body[data-hydrated=true]")).toHaveCount(1);
}

/** Signs up a startup on the portal at `base` ("" for the default one), verifies its address
 * from the letter in that portal's outbox, and logs its owner in. */
export async function signUpStartup(page: Page, email: string, org: string, base = "") {
  await page.goto(`${base}/signup`);
  await hydrated(page);
  await page.getByLabel("Organisation name").fill(org);
  await page.getByLabel("Kind of organisation").selectOption("startup");
  await page.getByLabel("Country or region").selectOption("europe");
  await page.getByLabel("Work email").fill(email);
  await page.locator("#password").fill(password);
  await page.getByRole("button", { name: "Create account" }).click();
  await expect(page).toHaveURL(/\/login\?signed_up=1&email=/);
  await page.goto(await letterLink(email, "/verify/", base));
  await expect(page.getByTestId("verified")).toContainText("is verified");
  await logIn(page, email, password, base);
}

/** The folder a portal writes its letters to (no SMTP server in these tests). */
export function outboxOf(base = ""): string {
  const dir = base === "" ? dbDir : base.endsWith(`:${smollm2Port}`) ? smollm2Dir : playgroundDir;
  return `${dir}/outbox`;
}

/** A letter's text with quoted-printable soft line breaks joined. */
function unfold(raw: string): string {
  return raw.replace(/=\r?\n/g, "").replace(/=3D/g, "=").replace(/\r\n/g, "\n");
}

/** The first link containing `path` in the newest letter to `to`, waiting for it to arrive. */
export async function letterLink(to: string, path: string, base = ""): Promise<string> {
  const dir = outboxOf(base);
  let link: string | undefined;
  await expect
    .poll(() => {
      const letters = readdirSync(dir)
        .map((f) => `${dir}/${f}`)
        .sort((a, b) => statSync(a).mtimeMs - statSync(b).mtimeMs)
        .map((f) => unfold(readFileSync(f, "utf8")))
        .filter((l) => l.split("\n").some((h) => h.toLowerCase() === `to: ${to}`.toLowerCase()));
      link = letters
        .reverse()
        .flatMap((l) => l.split("\n").map((x) => x.trim()))
        .find((x) => x.startsWith("http") && x.includes(path));
      return link;
    })
    .toBeTruthy();
  return link!;
}

/** A TOTP code (RFC 6238: HMAC-SHA-1, 6 digits, 30 s) for a base32 secret at `at` (ms). */
export function totp(secret: string, at = Date.now()): string {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
  let bits = "";
  for (const c of secret.replace(/=+$/, "").toUpperCase()) {
    bits += alphabet.indexOf(c).toString(2).padStart(5, "0");
  }
  const key = Buffer.from(bits.match(/.{8}/g)!.map((b) => parseInt(b, 2)));
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(at / 1000 / 30)));
  const mac = createHmac("sha1", key).update(counter).digest();
  const offset = mac[mac.length - 1] & 0xf;
  const value = (mac.readUInt32BE(offset) & 0x7fffffff) % 1_000_000;
  return value.toString().padStart(6, "0");
}

/** What a user with two-factor sign-in holds: the secret and unused recovery codes. */
export type SecondFactor = { secret: string; recovery: string[] };

/** Sets up two-factor sign-in on the Account page of the signed-in user. */
export async function enrolTwoFactor(page: Page, base = ""): Promise<SecondFactor> {
  await page.goto(`${base}/account`);
  await hydrated(page);
  await page.getByRole("button", { name: "Set up two-factor sign-in" }).click();
  const secret = (await page.getByTestId("totp-secret").textContent())!.trim();
  await page.locator("#enable-code").fill(totp(secret));
  await page.getByRole("button", { name: "Switch on" }).click();
  const codes = page.getByTestId("recovery-codes").locator("li");
  await expect(codes).toHaveCount(10);
  const recovery = (await codes.allTextContents()).map((c) => c.trim());
  await expect(page.getByTestId("two-factor-on")).toContainText("10 recovery code(s) left");
  return { secret, recovery };
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
const playgroundDir = process.env.E2E_PLAYGROUND_DIR ?? "/tmp/tokenmill-e2e-playground";
const smollm2Dir = process.env.E2E_SMOLLM2_DIR ?? "/tmp/tokenmill-e2e-smollm2";
const smollm2Port = Number(process.env.E2E_SMOLLM2_PORT ?? 3213);
export const bin = process.env.TOKENMILL_BIN ?? "../target/debug/tokenmill";

/** Logs in on the portal at `base` ("" for the default one) and waits for the dashboard; with
 * two-factor sign-in on, gives one of the user's recovery codes as the second factor (each
 * works once, and a test may log in more often than every 30 s). */
export async function logIn(page: Page, email: string, pw: string, base = "", second?: SecondFactor) {
  await page.goto(`${base}/login`);
  await hydrated(page);
  await page.getByLabel("Email").fill(email);
  await page.locator("#password").fill(pw);
  await page.getByRole("button", { name: "Log in" }).click();
  if (second) {
    await expect(page).toHaveURL(/\/login\/code$/);
    await hydrated(page);
    await page.getByLabel("Code").fill(second.recovery.shift()!);
    await page.getByRole("button", { name: "Sign in" }).click();
  }
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

/** An operator made on the command line, signed in on `page` with two-factor sign-in set up
 * (operators must have it); returns what later logins need. */
export async function operatorSignedIn(page: Page, email: string, base = "", dir = dbDir): Promise<SecondFactor> {
  createOperator(email, dir);
  await logIn(page, email, password, base);
  await expect(page.getByTestId("two-factor-banner")).toBeVisible();
  const second = await enrolTwoFactor(page, base);
  // A fresh load shows the console without the set-up banner.
  await page.goto(`${base}/dashboard`);
  await hydrated(page);
  await expect(page.getByTestId("two-factor-banner")).toHaveCount(0);
  return second;
}
