import type { Server } from "node:http";
import { expect, test, type Page } from "@playwright/test";
import { stripePort, stripeWebhookSecret } from "../playwright.config";
import { startStripe } from "./stripe-stand-in";

// A tenant tops up through Stripe Checkout (a local stand-in): the credit arrives by the
// signed webhook, and a cancelled checkout charges nothing.

const password = "lanterns over the harbour";
let stripe: Server;

test.beforeAll(async ({}, info) => {
  stripe = await startStripe(stripePort, info.project.use.baseURL!, stripeWebhookSecret);
});

test.afterAll(() => {
  stripe.close();
});

async function hydrated(page: Page) {
  await expect(page.locator("body[data-hydrated=true]")).toHaveCount(1);
}

test("a startup tops up by card and sees the credit; a cancelled checkout charges nothing", async ({ page }) => {
  const email = `payer-${Date.now()}@startup.example`;
  await page.goto("/signup");
  await hydrated(page);
  await page.getByLabel("Organisation name").fill("Paying Startup");
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
