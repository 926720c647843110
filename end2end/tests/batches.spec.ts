import { readFileSync } from "node:fs";
import { expect, test } from "./fixtures";
import { hydrated, signUpStartup } from "./helpers";
import { playgroundPort } from "../playwright.config";

// The portal with a model (and starter credits for new startups).
const base = `http://127.0.0.1:${playgroundPort}`;

function line(id: string, content: string) {
  return JSON.stringify({
    custom_id: id,
    method: "POST",
    url: "/v1/chat/completions",
    body: { model: "smollm2-test", messages: [{ role: "user", content }], max_tokens: 30, ignore_eos: true },
  });
}

test("a startup uploads a batch, watches it complete and downloads its results and errors", async ({ page }) => {
  await signUpStartup(page, `batch-${Date.now()}@example.com`, "Batch Works", base);
  await page.goto(`${base}/batches`);
  await hydrated(page);
  const file = [line("first", "Hello"), "{not json", line("second", "Hi"), line("third", "Hey")].join("\n");
  await page.getByLabel("Endpoint").selectOption("/v1/chat/completions");
  await page.getByLabel("Requests (JSONL)").setInputFiles({
    name: "requests.jsonl",
    mimeType: "application/jsonl",
    buffer: Buffer.from(file),
  });
  await page.getByRole("button", { name: "Start batch" }).click();
  await expect(page).toHaveURL(/\/batches\?created=batch_/);
  const id = new URL(page.url()).searchParams.get("created") ?? "";
  await expect(page.getByRole("status")).toContainText(id);

  // The page follows the batch without a reload until every line has ended (30 tokens a line
  // take seconds on this model, so it is seen running first).
  const row = page.locator(`[data-batch="${id}"]`);
  await expect(row.getByTestId("batch-status")).toHaveText("in progress");
  await expect(row.getByTestId("batch-status")).toHaveText("completed", { timeout: 60_000 });
  await expect(row.getByTestId("batch-progress")).toHaveText("3 done / 1 failed / 4 total");
  await expect(row.locator("progress")).toHaveAttribute("value", "4");

  const results = page.waitForEvent("download");
  await row.getByTestId("batch-output").click();
  const output = readFileSync((await (await results).path()) ?? "", "utf8").trim().split("\n").map((l) => JSON.parse(l));
  expect(output.map((o) => o.custom_id)).toEqual(["first", "second", "third"]);
  for (const o of output) {
    expect(o.response.status_code).toBe(200);
    expect(o.response.body.usage.completion_tokens).toBe(30);
  }
  const errors = page.waitForEvent("download");
  await row.getByTestId("batch-errors").click();
  const failed = readFileSync((await (await errors).path()) ?? "", "utf8");
  expect(failed).toContain("Line 2: not valid JSON");
});
