import { expect, test, type Page } from "./fixtures";
import {
  createOperator,
  enrolTwoFactor,
  letterLink,
  logIn as logInTo,
  signUpStartup,
  totp,
} from "./helpers";
import { playgroundPort } from "../playwright.config";

const password = "lanterns over the harbour";

function uniqueEmail(tag: string): string {
  return `${tag}-${Date.now()}-${Math.floor(Math.random() * 1e6)}@example.com`;
}

async function hydrated(page: Page) {
  await expect(page.locator("body[data-hydrated=true]")).toHaveCount(1);
}

async function signUp(page: Page, email: string, org: string) {
  await page.goto("/signup");
  await hydrated(page);
  await page.getByLabel("Organisation name").fill(org);
  await page.getByLabel("Kind of organisation").selectOption("startup");
  await page.getByLabel("Country or region").selectOption("europe");
  await page.getByLabel("Work email").fill(email);
  await page.locator("#password").fill(password);
  await page.getByRole("button", { name: "Create account" }).click();
  await expect(page).toHaveURL(/\/login\?signed_up=1&email=/);
}

async function logIn(page: Page, email: string, pw: string) {
  await hydrated(page);
  await page.getByLabel("Email").fill(email);
  await page.locator("#password").fill(pw);
  await page.getByRole("button", { name: "Log in" }).click();
}

test("a startup signs up, sees its name on the dashboard, logs out and back in", async ({ page }) => {
  const email = uniqueEmail("founder");
  await signUp(page, email, "Lumen Labs");
  await expect(page.getByTestId("signed-up")).toContainText("Check your email");
  // The login form holds the address just signed up with, nothing else.
  await hydrated(page);
  await expect(page.getByLabel("Email")).toHaveValue(email);

  await logIn(page, email, password);
  await expect(page).toHaveURL(/\/dashboard$/);
  await expect(page.getByTestId("dashboard-org")).toHaveText("Lumen Labs");
  await expect(page.getByTestId("org-name")).toHaveText("Lumen Labs");
  await expect(page.getByTestId("role")).toHaveText("owner");

  await page.getByRole("button", { name: "Log out" }).click();
  await expect(page).toHaveURL(/\/login$/);
  await page.goto("/dashboard");
  await expect(page).toHaveURL(/\/login$/);

  await logIn(page, email, password);
  await expect(page).toHaveURL(/\/dashboard$/);
  await expect(page.getByTestId("dashboard-org")).toHaveText("Lumen Labs");
});

test("a wrong password shows the error and keeps the user on the login page", async ({ page }) => {
  const email = uniqueEmail("wrong");
  await signUp(page, email, "Wrong Turn AI");
  await logIn(page, email, "definitely not the password");
  await expect(page.getByRole("alert")).toHaveText("Incorrect email or password.");
  await expect(page).toHaveURL(/\/login/);
});

test("a field error appears next to the field that caused it", async ({ page }) => {
  await page.goto("/signup");
  await hydrated(page);
  await page.getByLabel("Organisation name").fill("Short Pass Inc");
  await page.getByLabel("Kind of organisation").selectOption("research");
  await page.getByLabel("Country or region").selectOption("africa");
  await page.getByLabel("Work email").fill(uniqueEmail("short"));
  await page.locator("#password").fill("password1");
  await page.getByRole("button", { name: "Create account" }).click();
  await expect(page.locator("#password-error")).toContainText("too common");
  await expect(page).toHaveURL(/\/signup$/);
});

test("after hydration controls work without a full page reload", async ({ page }) => {
  const email = uniqueEmail("spa");
  await signUp(page, email, "Single Page Co");
  await logIn(page, email, password);
  await expect(page).toHaveURL(/\/dashboard$/);
  await hydrated(page);
  // A marker on window survives only if no full page load happens.
  await page.evaluate(() => ((window as unknown as { marker: number }).marker = 42));

  await page.getByRole("link", { name: "Account", exact: true }).click();
  await expect(page).toHaveURL(/\/account$/);
  const field = page.locator("#current_password");
  await expect(field).toHaveAttribute("type", "password");
  await page.getByRole("button", { name: "Show" }).first().click();
  await expect(field).toHaveAttribute("type", "text");

  await page.getByRole("navigation").getByRole("link", { name: "Members" }).click();
  await page.getByLabel("Email").fill("teammate@example.com");
  await page.getByRole("button", { name: "Create invitation" }).click();
  await expect(page.getByTestId("invite-link")).toContainText("/invite/");
  await expect(page.getByTestId("invitations")).toContainText("teammate@example.com");

  expect(await page.evaluate(() => (window as unknown as { marker?: number }).marker)).toBe(42);
});

test("an invited teammate joins the organisation through the link", async ({ page, browser }) => {
  const email = uniqueEmail("owner");
  await signUp(page, email, "Invite Works Ltd");
  await logIn(page, email, password);
  await page.getByRole("navigation").getByRole("link", { name: "Members" }).click();
  await hydrated(page);
  const teammate = uniqueEmail("mate");
  await page.getByLabel("Email").fill(teammate);
  await page.getByRole("button", { name: "Create invitation" }).click();
  const link = (await page.getByTestId("invite-link").textContent())!.trim();

  const other = await browser.newContext();
  const invitee = await other.newPage();
  await invitee.goto(link);
  await expect(invitee.getByRole("heading", { level: 1 })).toHaveText("Join Invite Works Ltd");
  await hydrated(invitee);
  await invitee.locator("#password").fill("teammate long passphrase");
  await invitee.getByRole("button", { name: "Join" }).click();
  await expect(invitee).toHaveURL(/\/dashboard$/);
  await expect(invitee.getByTestId("org-name")).toHaveText("Invite Works Ltd");
  await expect(invitee.getByTestId("role")).toHaveText("member");
  await other.close();
});

test("an unknown address shows the 404 page", async ({ page }) => {
  const response = await page.goto("/no/such/page");
  expect(response?.status()).toBe(404);
  await expect(page.getByRole("heading", { name: "Page not found" })).toBeVisible();
});

test.describe("without JavaScript", () => {
  test.use({ javaScriptEnabled: false });

  test("the forms still sign up, show a login error and log in", async ({ page }) => {
    const email = uniqueEmail("nojs");
    await page.goto("/signup");
    await page.getByLabel("Organisation name").fill("Plain Forms Co");
    await page.getByLabel("Kind of organisation").selectOption("enterprise");
    await page.getByLabel("Country or region").selectOption("oceania");
    await page.getByLabel("Work email").fill(email);
    await page.locator("#password").fill(password);
    await page.getByRole("button", { name: "Create account" }).click();
    await expect(page).toHaveURL(/\/login\?signed_up=1&email=/);

    await page.getByLabel("Email").fill(email);
    await page.locator("#password").fill("not the password at all");
    await page.getByRole("button", { name: "Log in" }).click();
    await expect(page.getByRole("alert")).toHaveText("Incorrect email or password.");

    await page.getByLabel("Email").fill(email);
    await page.locator("#password").fill(password);
    await page.getByRole("button", { name: "Log in" }).click();
    await expect(page).toHaveURL(/\/dashboard$/);
    await expect(page.getByTestId("dashboard-org")).toHaveText("Plain Forms Co");
  });
});

test("a new startup verifies its address from the letter and its starter credit appears", async ({ page }) => {
  // The playground's portal made the starter program at its first start.
  const base = `http://127.0.0.1:${playgroundPort}`;
  const email = uniqueEmail("verify");
  await page.goto(`${base}/signup`);
  await hydrated(page);
  await page.getByLabel("Organisation name").fill("Verified Ventures");
  await page.getByLabel("Kind of organisation").selectOption("startup");
  await page.getByLabel("Country or region").selectOption("europe");
  await page.getByLabel("Work email").fill(email);
  await page.locator("#password").fill(password);
  await page.getByRole("button", { name: "Create account" }).click();
  await expect(page.getByTestId("signed-up")).toContainText("Check your email");
  await logIn(page, email, password);
  await expect(page).toHaveURL(/\/dashboard$/);
  await expect(page.getByTestId("verify-banner")).toBeVisible();
  await page.goto(`${base}/credits`);
  await expect(page.getByTestId("available")).toHaveText("$0.00");

  await page.goto(await letterLink(email, "/verify/", base));
  await expect(page.getByTestId("verified")).toContainText(`${email} is verified.`);
  await expect(page.getByTestId("verified-grants")).toContainText("$10.00 from Starter credits");
  await page.goto(`${base}/credits`);
  await hydrated(page);
  await expect(page.getByTestId("buckets")).toContainText("Starter credits");
  await expect(page.getByTestId("available")).toHaveText("$10.00");
  await expect(page.getByTestId("verify-banner")).toHaveCount(0);

  // The dashboard opens on the first steps: the credit and when it ends, and the API's base
  // URL with a ready request, one click to copy.
  await page.context().grantPermissions(["clipboard-read", "clipboard-write"], { origin: base });
  await page.getByRole("navigation").getByRole("link", { name: "Dashboard" }).click();
  const start = page.getByTestId("getting-started");
  await expect(start.getByTestId("start-credits")).toContainText("$10.00 of Starter credits, until ");
  await expect(start.getByTestId("base-url")).toHaveText(`${base}/v1`);
  await expect(start.getByTestId("start-curl")).toContainText('"model": "smollm2-test"');
  await start.getByRole("button", { name: "Copy base URL" }).click();
  await expect(start.getByRole("button", { name: "Copied" })).toBeVisible();
  expect(await page.evaluate(() => navigator.clipboard.readText())).toBe(`${base}/v1`);
});

test("a forgotten password is reset from the letter and the old sessions end", async ({ page, browser }) => {
  const email = uniqueEmail("forgot");
  await signUpStartup(page, email, "Forgetful Labs");

  const other = await browser.newContext();
  const fresh = await other.newPage();
  await fresh.goto("/login");
  await hydrated(fresh);
  await fresh.getByRole("link", { name: "Forgot your password?" }).click();
  await expect(fresh).toHaveURL(/\/forgot$/);
  await hydrated(fresh);
  await fresh.getByLabel("Email").fill(email);
  await fresh.getByRole("button", { name: "Send the link" }).click();
  await expect(fresh.getByTestId("reset-sent")).toContainText("If an account uses that address");
  await fresh.goto(await letterLink(email, "/reset/"));
  await expect(fresh.getByRole("heading", { level: 1 })).toHaveText("Set a new password");
  await hydrated(fresh);
  await fresh.locator("#password").fill("a completely new passphrase");
  await fresh.getByRole("button", { name: "Set password" }).click();
  await expect(fresh).toHaveURL(/\/login\?reset=1$/);
  await logInTo(fresh, email, "a completely new passphrase");
  await other.close();

  // The browser that was signed in before the reset is signed out.
  await page.goto("/dashboard");
  await expect(page).toHaveURL(/\/login$/);
});

test("an operator sets up two-factor sign-in and signs in with a code", async ({ page }) => {
  const email = uniqueEmail("ops");
  createOperator(email);
  await logInTo(page, email, password);
  await expect(page.getByTestId("two-factor-banner")).toBeVisible();
  const { secret } = await enrolTwoFactor(page);
  await page.goto("/account");
  await hydrated(page);
  await expect(page.getByTestId("two-factor-banner")).toHaveCount(0);
  await page.getByRole("button", { name: "Log out" }).click();
  await expect(page).toHaveURL(/\/login$/);

  await hydrated(page);
  await page.getByLabel("Email").fill(email);
  await page.locator("#password").fill(password);
  await page.getByRole("button", { name: "Log in" }).click();
  await expect(page).toHaveURL(/\/login\/code$/);
  await hydrated(page);
  await page.getByLabel("Code").fill("000000");
  await page.getByRole("button", { name: "Sign in" }).click();
  await expect(page.getByRole("alert")).toContainText("That code is not right");
  // The next step's code: the one that switched it on is used up.
  await page.getByLabel("Code").fill(totp(secret, Date.now() + 30_000));
  await page.getByRole("button", { name: "Sign in" }).click();
  await expect(page).toHaveURL(/\/dashboard$/);
  await expect(page.getByTestId("role")).toHaveText("operator");
});

test("a startup is not shown the operators' pages, and the site has an icon", async ({ page, request }) => {
  await signUpStartup(page, uniqueEmail("nosy"), "Nosy Startup");
  await expect(page.getByRole("navigation", { name: "Main" }).getByRole("link", { name: "Admin" })).toHaveCount(0);
  for (const path of ["/admin", "/admin/programs", "/approvals", "/audit"]) {
    await page.goto(path);
    await hydrated(page);
    await expect(page.getByTestId("not-yours")).toBeVisible();
    await expect(page.locator("form button[type=submit]").filter({ hasText: /Create|Search/ })).toHaveCount(0);
  }
  const icon = await request.get("/favicon.ico");
  expect(icon.status()).toBe(200);
  expect((await icon.body()).subarray(0, 4)).toEqual(Buffer.from([0, 0, 1, 0]));
  await expect(page.locator('link[rel="icon"][href="/favicon.svg"]')).toHaveCount(1);
});
