import { defineConfig } from "@playwright/test";

// The portal under test is the built `tokenmill` binary on a throwaway SQLite database.
// `scripts/test` builds it first; this file only starts it and drives Debian's Chromium.
const port = Number(process.env.E2E_PORT ?? 3210);
const dbDir = process.env.E2E_DB_DIR ?? "/tmp/tokenmill-e2e";
// A stand-in for Stripe, started by the top-up test (tests/stripe-stand-in.ts), on this port.
export const stripePort = Number(process.env.E2E_STRIPE_PORT ?? 3211);
export const stripeWebhookSecret = "whsec_e2e_secret";
// A second portal for the playground: a first start with a model (a SmolLM2-shaped test model,
// big enough that an answer takes seconds on a CPU, so Stop can be pressed mid-answer), which
// sets up the local factory, prices and starter credits.
export const playgroundPort = Number(process.env.E2E_PLAYGROUND_PORT ?? 3212);
export const playgroundDir = process.env.E2E_PLAYGROUND_DIR ?? "/tmp/tokenmill-e2e-playground";
const bin = process.env.TOKENMILL_BIN ?? "../target/debug/tokenmill";
// A third portal as README command 1 starts it: the test model and SmolLM2-135M-Instruct (the
// file the test command fetched), for the newcomer's first playground answer. Without the file
// it is not started and its test says why.
export const smollm2File = process.env.TOKENMILL_SMOLLM2_GGUF;
export const smollm2Port = Number(process.env.E2E_SMOLLM2_PORT ?? 3213);
const smollm2Dir = process.env.E2E_SMOLLM2_DIR ?? "/tmp/tokenmill-e2e-smollm2";

export default defineConfig({
  testDir: "./tests",
  timeout: 60_000,
  expect: { timeout: 15_000 },
  fullyParallel: false,
  workers: 1,
  retries: 0,
  reporter: [["list"]],
  use: {
    baseURL: `http://127.0.0.1:${port}`,
    trace: "off",
    launchOptions: {
      executablePath: process.env.CHROMIUM_PATH ?? "/usr/bin/chromium",
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
      ],
    },
  },
  webServer: [{
    command: `rm -rf ${dbDir} && mkdir -p ${dbDir} && ${bin}`,
    url: `http://127.0.0.1:${port}/health`,
    reuseExistingServer: false,
    timeout: 60_000,
    env: {
      TOKENMILL_ADDR: `127.0.0.1:${port}`,
      DATABASE_URL: `sqlite://${dbDir}/tokenmill.db?mode=rwc`,
      TOKENMILL_JOURNAL_DIR: `${dbDir}/journal`,
      LEPTOS_SITE_ROOT: process.env.LEPTOS_SITE_ROOT ?? "../target/site",
      RUST_LOG: "warn",
      // These tests need no model (and no first-start set-up); the playground has its own.
      TOKENMILL_MODELS: "none",
      STRIPE_SECRET_KEY: "sk_test_e2e",
      STRIPE_WEBHOOK_SECRET: stripeWebhookSecret,
      STRIPE_API_BASE: `http://127.0.0.1:${stripePort}/`,
      // Letters go to a folder the tests read; every test signs up from 127.0.0.1.
      TOKENMILL_OUTBOX_DIR: `${dbDir}/outbox`,
      TOKENMILL_SIGNUPS_PER_IP_HOUR: "10000",
    },
  }, {
    command: `rm -rf ${playgroundDir} && mkdir -p ${playgroundDir} && ${bin} model fixture --shape smollm2-135m --dtype bf16 --out ${playgroundDir}/model && ${bin}`,
    url: `http://127.0.0.1:${playgroundPort}/ready`,
    reuseExistingServer: false,
    timeout: 120_000,
    env: {
      TOKENMILL_ADDR: `127.0.0.1:${playgroundPort}`,
      DATABASE_URL: `sqlite://${playgroundDir}/tokenmill.db?mode=rwc`,
      TOKENMILL_JOURNAL_DIR: `${playgroundDir}/journal`,
      LEPTOS_SITE_ROOT: process.env.LEPTOS_SITE_ROOT ?? "../target/site",
      RUST_LOG: "warn",
      TOKENMILL_MODELS: `smollm2-test=${playgroundDir}/model`,
      TOKENMILL_DEVICE: "cpu",
      TOKENMILL_OUTBOX_DIR: `${playgroundDir}/outbox`,
      TOKENMILL_SIGNUPS_PER_IP_HOUR: "10000",
    },
  }, ...(smollm2File ? [{
    command: `rm -rf ${smollm2Dir} && mkdir -p ${smollm2Dir} && ${bin} model fixture --shape tiny --out ${smollm2Dir}/tiny && ${bin}`,
    url: `http://127.0.0.1:${smollm2Port}/ready`,
    reuseExistingServer: false,
    timeout: 120_000,
    env: {
      TOKENMILL_ADDR: `127.0.0.1:${smollm2Port}`,
      DATABASE_URL: `sqlite://${smollm2Dir}/tokenmill.db?mode=rwc`,
      TOKENMILL_JOURNAL_DIR: `${smollm2Dir}/journal`,
      LEPTOS_SITE_ROOT: process.env.LEPTOS_SITE_ROOT ?? "../target/site",
      RUST_LOG: "warn",
      TOKENMILL_MODELS: `tokenmill-tiny=${smollm2Dir}/tiny,smollm2-135m-instruct=${smollm2File}`,
      TOKENMILL_DEVICE: "cpu",
      TOKENMILL_OUTBOX_DIR: `${smollm2Dir}/outbox`,
      TOKENMILL_SIGNUPS_PER_IP_HOUR: "10000",
    },
  }] : [])],
});
