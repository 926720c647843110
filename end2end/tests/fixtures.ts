import { test as base, expect, type BrowserContext } from "@playwright/test";

// Every browser test fails on a console error or an uncaught exception in any page it opens
// (a hydration mismatch logs an error and then panics), in the test's own context and in
// every context it makes. A resource answering 4xx or 5xx is not counted here: tests provoke
// those on purpose and check the page says so.

function watch(context: BrowserContext, errors: string[]) {
  const attach = (page: import("@playwright/test").Page) => {
    page.on("console", (m) => {
      if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) {
        errors.push(`${page.url()}: ${m.text()}`);
      }
    });
    page.on("pageerror", (e) => errors.push(`${page.url()}: ${e.message}`));
  };
  context.pages().forEach(attach);
  context.on("page", attach);
}

export const test = base.extend<{ consoleClean: void }>({
  consoleClean: [
    async ({ browser, context }, use) => {
      const errors: string[] = [];
      watch(context, errors);
      const newContext = browser.newContext.bind(browser);
      browser.newContext = async (options) => {
        const c = await newContext(options);
        watch(c, errors);
        return c;
      };
      await use();
      browser.newContext = newContext;
      expect(errors, "console errors or uncaught exceptions in the pages").toEqual([]);
    },
    { auto: true },
  ],
});

export { expect };
export type { Page } from "@playwright/test";
