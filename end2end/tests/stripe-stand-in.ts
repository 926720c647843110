import { createHmac } from "node:crypto";
import { createServer, type Server } from "node:http";

// A stand-in for Stripe Checkout: the portal's real Stripe client creates sessions here, and
// the "payment page" it serves pays (sending Stripe's signed webhook to the portal) or cancels,
// then sends the browser back to the portal's success or cancel URL, as Stripe does.

type Session = { id: string; ours: string; cents: number; success: string; cancel: string };

export function startStripe(port: number, portal: string, secret: string): Promise<Server> {
  const sessions = new Map<string, Session>();
  const server = createServer(async (req, res) => {
    const body = await new Promise<string>((done) => {
      let text = "";
      req.on("data", (c) => (text += c));
      req.on("end", () => done(text));
    });
    const url = new URL(req.url ?? "/", `http://127.0.0.1:${port}`);
    if (req.method === "POST" && url.pathname === "/v1/checkout/sessions") {
      const form = new URLSearchParams(body);
      const id = `cs_e2e_${sessions.size + 1}_${Date.now()}`;
      sessions.set(id, {
        id,
        ours: form.get("client_reference_id") ?? "",
        cents: Number(form.get("line_items[0][price_data][unit_amount]")),
        success: form.get("success_url") ?? "",
        cancel: form.get("cancel_url") ?? "",
      });
      res.setHeader("content-type", "application/json");
      res.end(
        JSON.stringify({
          id, object: "checkout.session", created: 1_790_000_000, expires_at: 1_790_086_400,
          livemode: false, mode: "payment", payment_status: "unpaid", status: "open",
          automatic_tax: { enabled: false }, custom_fields: [], custom_text: {},
          payment_method_types: ["card"], shipping_options: [],
          url: `http://127.0.0.1:${port}/pay/${id}`,
        }),
      );
      return;
    }
    const session = sessions.get(url.pathname.split("/")[2] ?? "");
    if (url.pathname.startsWith("/pay/") && session && req.method === "GET") {
      res.setHeader("content-type", "text/html");
      res.end(`<!doctype html><title>Stand-in Checkout</title>
        <h1>Pay $${(session.cents / 100).toFixed(2)}</h1>
        <form method="post"><button>Pay</button></form>
        <a href="${session.cancel}">Cancel</a>`);
      return;
    }
    if (url.pathname.startsWith("/pay/") && session && req.method === "POST") {
      const payload = JSON.stringify({
        id: `evt_${session.id}`, object: "event", created: Math.floor(Date.now() / 1000),
        livemode: false, pending_webhooks: 1, type: "checkout.session.completed",
        data: {
          object: {
            id: session.id, object: "checkout.session", client_reference_id: session.ours,
            amount_total: session.cents, currency: "usd", payment_status: "paid",
            status: "complete", mode: "payment", payment_intent: `pi_${session.id}`,
          },
        },
      });
      const t = Math.floor(Date.now() / 1000);
      const v1 = createHmac("sha256", secret).update(`${t}.${payload}`).digest("hex");
      const delivered = await fetch(`${portal}/webhooks/stripe`, {
        method: "POST",
        headers: { "content-type": "application/json", "stripe-signature": `t=${t},v1=${v1}` },
        body: payload,
      });
      if (!delivered.ok) {
        res.statusCode = 502;
        res.end(`webhook refused: ${delivered.status}`);
        return;
      }
      res.statusCode = 303;
      res.setHeader("location", session.success.replace("{CHECKOUT_SESSION_ID}", session.id));
      res.end();
      return;
    }
    res.statusCode = 404;
    res.end("not found");
  });
  return new Promise((done) => server.listen(port, "127.0.0.1", () => done(server)));
}
