import type { Server } from "node:http";
import { expect, test } from "./fixtures";
import { stripePort, stripeWebhookSecret } from "../playwright.config";
import { hydrated, signUpStartup } from "./helpers";
import { startStripe } from "./stripe-stand-in";

// A tenant tops up through Stripe Checkout (a local stand-in): the credit arrives by the
// signed webhook, and a cancelled checkout charges nothing.

let stripe: Server;

test.beforeAll(async ({}, info) => {
  stripe = await startStripe(stripePort, info.project.use.baseURL!, stripeWebhookSecret);
});

test.afterAll(() => {
  stripe.close();
});

test("a startup tops up by card and sees the credit; a cancelled checkout charges nothing", async ({ page }) => {
  const email = `payer-${Date.now()}@startup.example`;
  await signUpStartup(page, email, "Paying Startup");

  await page.getByRole("link", { name: "Credits" }).click();
  await expect(page.getByTestId("available")).toHaveText("$0.00");
  await hydrated(page);
  // Out of range: refused next to the field, nothing leaves the portal.
  await page.getByLabel(/Other amount/).fill("2");
  await page.getByRole("button", { name: "Pay" }).click();
  await expect(page.locator("#top_up_amount-error")).toContainText("between $5.00 and $10,000.00");

  await page.getByRole("button", { name: "$25", exact: true }).click();
  await expect(page.getByRole("heading", { name: "Pay $25.00" })).toBeVisible();
  await page.getByRole("button", { name: "Pay" }).click();
  await expect(page).toHaveURL(/\/credits\/top-up\/success\?session_id=cs_e2e_/);
  await expect(page.getByTestId("top-up-status")).toHaveText("Top-up of $25.00: credited.");
  // Stripe's redirect is a full page load: let it hydrate before clicking through.
  await hydrated(page);
  await page.getByRole("link", { name: "Back to Credits" }).click();
  await expect(page.getByTestId("available")).toHaveText("$25.00");
  await expect(page.getByTestId("history")).toContainText("Top-up by card (Stripe)");
  await expect(page.getByTestId("top-ups")).toContainText("Credited");

  await hydrated(page);
  await page.getByLabel(/Other amount/).fill("40");
  await page.getByRole("button", { name: "Pay", exact: true }).click();
  await expect(page.getByRole("heading", { name: "Pay $40.00" })).toBeVisible();
  await page.getByRole("link", { name: "Cancel" }).click();
  await expect(page).toHaveURL(/\/credits\/top-up\/cancelled$/);
  await expect(page.getByRole("heading", { name: "Top-up cancelled" })).toBeVisible();
  await hydrated(page);
  await page.getByRole("link", { name: "Back to Credits" }).click();
  await expect(page.getByTestId("available")).toHaveText("$25.00");
  await expect(page.getByTestId("top-ups")).toContainText("Waiting for payment");
});
