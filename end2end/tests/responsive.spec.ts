import { expect, test, type Page } from "./fixtures";
import { hydrated, operatorSignedIn, signUpStartup } from "./helpers";

// At a phone's width (390 px) the main pages fit: nothing makes the page scroll sideways
// (wide tables scroll inside their own box), and the navigation folds behind a Menu button.
// Each page's screenshot is kept with the test's results.

test.use({ viewport: { width: 390, height: 844 } });

async function fits(page: Page, path: string) {
  await page.goto(path);
  await hydrated(page);
  const { scroll, width } = await page.evaluate(() => ({
    scroll: document.documentElement.scrollWidth,
    width: window.innerWidth,
  }));
  expect(scroll, `${path} is ${scroll} px wide at ${width} px`).toBeLessThanOrEqual(width);
  await page.screenshot({
    path: test.info().outputPath(`390px${path.replaceAll("/", "-")}.png`),
    fullPage: true,
  });
}

test("a startup's pages fit a phone and its menu opens and closes", async ({ page }) => {
  test.setTimeout(120_000);
  await signUpStartup(page, `phone-${Date.now()}@example.com`, "Pocket Startup");
  const nav = page.getByRole("navigation", { name: "Main" });
  await expect(nav).toBeHidden();
  await page.getByRole("button", { name: "Menu" }).click();
  await expect(nav).toBeVisible();
  await nav.getByRole("link", { name: "Credits" }).click();
  await expect(page).toHaveURL(/\/credits$/);
  await expect(nav).toBeHidden();
  for (const path of ["/dashboard", "/credits", "/compute", "/playground", "/batches", "/usage", "/models", "/keys", "/members", "/account"]) {
    await fits(page, path);
  }
});

test("an operator's pages fit a phone, the audit log included", async ({ page }) => {
  test.setTimeout(120_000);
  const t = Date.now();
  await operatorSignedIn(page, `ops-phone-${t}@tokenmill.example`);
  // An audited change, so that the audit log has a row with its before and after.
  await page.goto("/admin");
  await hydrated(page);
  await page.getByLabel("Partner name").fill(`Pocket Cloud ${t} with a rather long name`);
  await page.getByLabel("Region").selectOption("oceania");
  await page.getByLabel("First user's email").fill(`a-rather-long-address-${t}@pocket-cloud.example`);
  await page.getByRole("button", { name: "Create partner" }).click();
  await expect(page.getByTestId("partner-link")).toContainText("/invite/");
  await page.goto("/audit");
  await expect(page.getByRole("table")).toContainText("partner.create");
  for (const path of ["/dashboard", "/approvals", "/statements", "/audit", "/admin", "/admin/factories", "/admin/programs", "/admin/organizations", "/admin/workers", "/fleet"]) {
    await fits(page, path);
  }
});
