import { expect, test, type Page } from "./fixtures";
import { enrolTwoFactor, hydrated, operatorSignedIn, signUpStartup } from "./helpers";

// Every page of each role, loaded fresh (a full page load, as a bookmark or a reload does),
// hydrates: no console error (the fixture fails the test on one) and its links work, which a
// page that failed to hydrate does not do. The dashboard, which reads the most, twenty times.

const tenantPages = [
  "/dashboard", "/credits", "/compute", "/playground", "/batches", "/usage", "/models", "/keys",
  "/members", "/account",
];
const operatorPages = [
  "/dashboard", "/approvals", "/statements", "/audit", "/models", "/keys", "/members", "/account",
  "/admin", "/admin/factories", "/admin/programs", "/admin/organizations", "/admin/workers",
  "/fleet",
];
const partnerPages = [
  "/dashboard", "/credits", "/approvals", "/statements", "/audit", "/playground", "/batches",
  "/usage", "/models", "/keys", "/members", "/account", "/fleet",
];

/** Loads `path` fresh and follows a navigation link from it without a page load. */
async function loadsAndLinksWork(page: Page, path: string) {
  await page.goto(path);
  await hydrated(page);
  await page.evaluate(() => ((window as unknown as { marker: number }).marker = 1));
  const target = path === "/account" ? "Members" : "Account";
  await page.getByRole("navigation", { name: "Main" }).getByRole("link", { name: target, exact: true }).click();
  await expect(page).toHaveURL(new RegExp(`/${target.toLowerCase()}$`));
  expect(await page.evaluate(() => (window as unknown as { marker?: number }).marker)).toBe(1);
}

async function everyPage(page: Page, pages: string[]) {
  for (const path of pages) {
    await loadsAndLinksWork(page, path);
  }
  for (let i = 0; i < 20; i++) {
    await loadsAndLinksWork(page, "/dashboard");
  }
}

test("a startup's pages hydrate on every fresh load", async ({ page }) => {
  test.setTimeout(180_000);
  await signUpStartup(page, `hydrate-${Date.now()}@example.com`, "Hydration Labs");
  await everyPage(page, tenantPages);
});

test("an operator's and a partner's pages hydrate on every fresh load", async ({ page, browser }) => {
  test.setTimeout(240_000);
  const t = `${Date.now()}-${Math.floor(Math.random() * 1e6)}`;
  await operatorSignedIn(page, `ops-hydrate-${t}@tokenmill.example`);
  await page.getByRole("link", { name: "Admin" }).click();
  await page.getByLabel("Partner name").fill(`Hydra Cloud ${t}`);
  await page.getByLabel("Region").selectOption("europe");
  await page.getByLabel("First user's email").fill(`owner-${t}@hydra.example`);
  await page.getByRole("button", { name: "Create partner" }).click();
  const invite = (await page.getByTestId("partner-link").textContent())!.trim();
  await everyPage(page, operatorPages);

  const partner = await (await browser.newContext()).newPage();
  await partner.goto(invite);
  await hydrated(partner);
  await partner.locator("#password").fill("partner long passphrase");
  await partner.getByRole("button", { name: "Join" }).click();
  await expect(partner).toHaveURL(/\/dashboard$/);
  await enrolTwoFactor(partner);
  await everyPage(partner, partnerPages);
});
