// Browser tests of the console, in Debian's Chromium driven by playwright-core.
//
// Started by the Rust test `it::console`, which runs ingest and a deliverer against the
// test brokers and passes HOOKLINE_URL and HOOKLINE_TOKEN. The receivers are plain Node
// HTTP servers on loopback, so the test decides what they answer.
//
// Every wait is for a condition (an element, a text, a count), never a fixed delay.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { mkdirSync } from "node:fs";
import { chromium } from "playwright-core";

const BASE = required("HOOKLINE_URL");
const TOKEN = required("HOOKLINE_TOKEN");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const SHOTS = process.env.HOOKLINE_SCREENSHOTS || "";
const PATIENCE = 30_000;

function required(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run through \`make test\` (the Rust test it::console)`);
  return value;
}

// ---- receivers -----------------------------------------------------------------------

function receiver(status) {
  const server = http.createServer((request, response) => {
    let body = "";
    request.on("data", (chunk) => { body += chunk; });
    request.on("end", () => {
      server.received.push({ headers: request.headers, body });
      const answer = () => {
        response.writeHead(server.status, { "content-type": "text/plain" });
        response.end(server.status >= 300 ? "receiver is down for maintenance" : "");
      };
      if (server.holding) server.held.push(answer); else answer();
    });
  });
  server.received = [];
  // While holding, requests are received and left unanswered until release().
  server.holding = false;
  server.held = [];
  server.release = () => {
    server.holding = false;
    for (const answer of server.held.splice(0)) answer();
  };
  server.status = status;
  // The deliverer keeps idle connections open for a while; a receiver that is done
  // drops them, or they would keep this process alive after the tests.
  server.stop = () => {
    server.close();
    server.closeAllConnections();
  };
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => {
    server.url = `http://127.0.0.1:${server.address().port}/hooks`;
    resolve(server);
  }));
}

async function until(what, condition) {
  const deadline = Date.now() + PATIENCE;
  for (;;) {
    const value = await condition();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

async function api(method, path, body, token = TOKEN) {
  const response = await fetch(`${BASE}/v1${path}`, {
    method,
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : null };
}

// ---- browser -----------------------------------------------------------------------

let browser;
let healthy;
let failing;

// Printed last: a gap between the last test and the exit means something (a socket, a
// server) kept the process alive.
const started = Date.now();
process.on("exit", () => console.log(`# exiting after ${Date.now() - started} ms`));

before(async () => {
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
  healthy = await receiver(204);
  failing = await receiver(500);
  if (SHOTS) mkdirSync(SHOTS, { recursive: true });
  const catalog = {
    "candidate.interested": { candidate: { email: "ada@example.com" }, job: { id: 42 } },
    "candidate.declined": { candidate: { email: "alan@example.com" }, reason: "Accepted another offer" },
    "application.status.updated": { application: { id: 7 }, status: "interview" },
    "profile.parsing.success": { profile: { key: "prof_8f2c" } },
  };
  for (const [type, example] of Object.entries(catalog)) {
    const answer = await api("PUT", `/event-types/${type}`, { description: `${type} (test catalog)`, example });
    assert.equal(answer.status, 201, JSON.stringify(answer.body));
  }
});

after(async () => {
  await browser?.close();
  healthy?.stop();
  failing?.stop();
});

async function shot(page, name) {
  if (SHOTS) await page.screenshot({ path: `${SHOTS}/${name}.png`, fullPage: true });
}

/** Runs `body`; if it fails, says what the page showed and which requests were open. */
async function explained(page, body) {
  try {
    await body();
  } catch (error) {
    const shown = await page.locator("main").innerText().catch(() => "?");
    const open = [...(page.pending?.values() ?? [])];
    error.message += `\npage at ${page.url()} shows: ${shown.slice(0, 400)}\nopen requests: ${open.join("; ") || "none"}`;
    throw error;
  }
}

async function operatorPage(width = 1280) {
  const context = await browser.newContext({ viewport: { width, height: 900 } });
  const page = await context.newPage();
  const problems = [];
  page.on("pageerror", (error) => problems.push(error.message));
  page.on("console", (message) => { if (message.type() === "error" && !/status of 4\d\d/.test(message.text())) problems.push(message.text()); });
  page.problems = problems;
  // What the page was waiting for, printed when a test fails (see `explain`).
  page.pending = new Map();
  page.on("request", (request) => page.pending.set(request, `${request.method()} ${request.url()}`));
  page.on("requestfinished", (request) => page.pending.delete(request));
  page.on("requestfailed", (request) => page.pending.set(request, `FAILED ${request.url()} ${request.failure()?.errorText}`));
  await page.goto(`${BASE}/console/`);
  // Sign in with the keyboard only: the token field, typing, Enter.
  await page.getByLabel("API token").focus();
  await page.keyboard.type(TOKEN);
  await page.keyboard.press("Enter");
  await page.getByRole("heading", { name: "Overview" }).waitFor();
  return page;
}

test("an operator creates an endpoint through the page and sends it a test event", async () => {
  const page = await operatorPage();
  await explained(page, async () => {
    await page.locator("[data-testid=deliverers]", { hasText: "1" }).waitFor({ timeout: PATIENCE });

    await page.getByLabel("Tenant").fill("acme");
    await page.getByRole("button", { name: "Open" }).click();
    await page.getByText("No endpoints yet").waitFor();
    await page.getByRole("link", { name: "New endpoint" }).click();

    await page.getByLabel("URL").fill(healthy.url);
    await page.getByLabel("Description").fill("Careers site");
    // Event types come from the catalog, or as patterns with wildcards.
    await page.getByRole("checkbox", { name: "candidate.interested" }).check();
    await page.getByLabel("More patterns").fill("application.#");
    await page.locator("#format").selectOption("event_data");
    // The live preview renders the catalog's example in the chosen format.
    await page.locator("#preview", { hasText: '"event": "INTERESTED"' }).waitFor();
    assert.match(await page.locator("#preview").textContent(), /ada@example\.com/);
    await shot(page, "endpoint-form");
    await page.getByRole("button", { name: "Create endpoint" }).click();

    await page.getByRole("heading", { name: "Careers site" }).waitFor();
    assert.match(await page.locator("#flash").textContent(), /signing secret: whsec_/);
    await page.getByRole("button", { name: "Send test event" }).click();
    const outcome = page.getByTestId("test-outcome");
    await outcome.waitFor();
    assert.match(await outcome.textContent(), /^Delivered · status 204/);
    assert.equal(healthy.received.length, 1, "the test event reached the receiver");
    assert.match(healthy.received[0].headers["webhook-id"], /^test_/);
    await shot(page, "endpoint");

    const listed = await api("GET", "/tenants/acme/endpoints");
    assert.equal(listed.body.data.length, 1);
    assert.equal(listed.body.data[0].format, "event_data");
    assert.deepEqual(listed.body.data[0].event_types, ["candidate.interested", "application.#"]);

    // Edit: a custom header added, then removed again, through the form.
    const id = listed.body.data[0].id;
    const edit = async (headers) => {
      await page.getByRole("link", { name: "Edit" }).click();
      await page.getByLabel("Custom headers").fill(headers);
      await page.getByRole("button", { name: "Save" }).click();
      await page.locator("#flash", { hasText: "Endpoint saved" }).waitFor();
      return (await api("GET", `/tenants/acme/endpoints/${id}`)).body;
    };
    assert.deepEqual((await edit("X-Env: prod")).headers, { "X-Env": "prod" });
    const cleared = await edit("");
    assert.equal(cleared.headers, undefined, "the removed header is gone");
    assert.equal(cleared.format, "event_data", "the rest is kept");
    assert.equal(cleared.description, "Careers site");
    assert.deepEqual(page.problems, []);
  });
  await page.context().close();
});

test("a failing receiver turns the badge to failing, and a dead letter is replayed from the page", async () => {
  const created = await api("POST", "/tenants/acme/endpoints",
    { url: failing.url, event_types: ["candidate.#"], description: "Legacy HR system" });
  assert.equal(created.status, 201);
  const id = created.body.id;
  for (let n = 0; n < 3; n += 1) {
    const accepted = await api("POST", "/tenants/acme/events", { type: "candidate.interested", data: { n } });
    assert.equal(accepted.status, 202);
  }

  const page = await operatorPage();
  await page.goto(`${BASE}/console/#/tenants/acme`);
  const row = page.locator(`tr[data-endpoint="${id}"]`);
  await until("the failing badge", async () => {
    await page.reload();
    await row.waitFor();
    return (await row.getByTestId("health-badge").textContent()) === "failing";
  });
  assert.equal(await page.locator("tr", { hasText: "Careers site" }).getByTestId("health-badge").textContent(), "healthy");
  await shot(page, "endpoints");

  await page.getByRole("link", { name: "Dead letters" }).click();
  const rows = page.locator("tr[data-dead-letter]");
  await until("three dead letters", async () => {
    await page.reload();
    await page.getByRole("heading", { name: "Dead letters" }).waitFor();
    return (await rows.count()) === 3;
  });
  assert.match(await rows.first().textContent(), /retries_exhausted/);
  await shot(page, "dead-letters");

  failing.status = 204;
  const before = failing.received.length;
  await rows.first().getByRole("button", { name: "Replay" }).click();
  await page.locator("#flash", { hasText: "Queued for delivery" }).waitFor();
  await until("two dead letters left", async () => (await rows.count()) === 2);
  await until("the replayed delivery", async () => failing.received.length === before + 1);

  // The operator overview shows the same: acme's failing endpoint and dead letters.
  await page.getByRole("link", { name: "Overview" }).click();
  const acme = page.locator('tr[data-tenant="acme"]');
  await acme.waitFor();
  assert.match(await acme.textContent(), /retries_exhausted 2/);
  // The overview's chart counts the failures this test caused.
  const overviewChart = page.getByTestId("overview-chart");
  await overviewChart.waitFor();
  assert.ok(Number(await overviewChart.getAttribute("data-failed")) >= 9, "nine failed attempts drawn");
  await shot(page, "overview");

  // So does the endpoint's own chart: three attempts for each of three events.
  await page.goto(`${BASE}/console/#/tenants/acme/endpoints/${id}`);
  const chart = page.getByTestId("endpoint-chart");
  await chart.waitFor();
  assert.ok(Number(await chart.getAttribute("data-failed")) >= 9,
    `failures drawn: ${await chart.getAttribute("data-failed")}`);
  assert.ok(Number(await chart.getAttribute("data-delivered")) >= 1, "the replayed delivery drawn");
  assert.ok(await chart.locator("rect.bar-bad").count() > 0);
  await shot(page, "endpoint-chart");
  assert.deepEqual(page.problems, []);
  await page.context().close();
});

test("a gone endpoint is re-enabled from its page, its dead letters replayed all at once, its secret rotated", async () => {
  const gone = await receiver(410);
  try {
    const created = await api("POST", "/tenants/initech/endpoints",
      { url: gone.url, event_types: ["invoice.#"], description: "Old billing" });
    assert.equal(created.status, 201);
    const id = created.body.id;
    for (let n = 0; n < 2; n += 1) {
      assert.equal((await api("POST", "/tenants/initech/events", { type: "invoice.paid", data: { n } })).status, 202);
    }
    const page = await operatorPage();
    await page.goto(`${BASE}/console/#/tenants/initech/endpoints/${id}`);
    await until("the disabled badge", async () => {
      await page.reload();
      await page.getByRole("heading", { name: "Old billing" }).waitFor();
      return (await page.getByTestId("health-badge").textContent()) === "disabled";
    });
    assert.match(await page.locator("dl.facts").textContent(), /disabled: gone/);

    gone.status = 204;
    await page.getByRole("button", { name: "Re-enable endpoint" }).click();
    await page.locator("#flash", { hasText: "re-enabled" }).waitFor();
    await page.getByTestId("health-badge").filter({ hasText: "healthy" }).waitFor();

    await page.getByRole("link", { name: "Dead letters of this endpoint" }).click();
    const rows = page.locator("tr[data-dead-letter]");
    await until("both dead letters listed", async () => {
      await page.reload();
      await page.getByRole("heading", { name: /Dead letters/ }).waitFor();
      return (await rows.count()) === 2;
    });
    assert.match(await rows.first().textContent(), /endpoint_gone|endpoint_disabled/);
    const before = gone.received.length;
    await page.getByRole("button", { name: "Replay all" }).click();
    await page.locator("#flash", { hasText: "2 queued" }).waitFor();
    await until("both replayed deliveries", async () => gone.received.length === before + 2);

    // Rotation: the page shows the new secret, and it signs from now on.
    await page.goto(`${BASE}/console/#/tenants/initech/endpoints/${id}`);
    await page.getByRole("button", { name: "Rotate secret" }).waitFor();
    page.once("dialog", (dialog) => dialog.accept());
    await page.getByRole("button", { name: "Rotate secret" }).click();
    const secretBox = page.locator("#secret", { hasText: "whsec_" });
    await secretBox.waitFor();
    const shown = (await secretBox.textContent()).split(" ")[0];
    assert.notEqual(shown, created.body.secret);
    assert.equal((await api("GET", `/tenants/initech/endpoints/${id}/secret`)).body.secret, shown);
    await page.context().close();
  } finally {
    gone.stop();
  }
});

test("the console is usable at phone width", async () => {
  const page = await operatorPage(390);
  await explained(page, async () => {
    await page.goto(`${BASE}/console/#/tenants/acme`);
    await page.locator("tr[data-endpoint]").first().waitFor();
    // Nothing but the table scrolls sideways: the page itself fits the screen.
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `page is ${overflow}px wider than the screen`);
    await shot(page, "endpoints-phone");
  });
  await page.context().close();
});

test("a portal link for one tenant cannot see another tenant, on the page or the API", async () => {
  const other = await api("POST", "/tenants/globex/endpoints",
    { url: `${healthy.url}/globex-secret-path`, event_types: ["#"], description: "Globex payroll" });
  assert.equal(other.status, 201);
  const link = await api("POST", "/tenants/acme/portal-links");
  assert.equal(link.status, 201);

  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`${BASE}${link.body.url}`);
  await page.getByRole("heading", { name: "Endpoints" }).waitFor();
  assert.equal(await page.locator("tr[data-endpoint]").count(), 2, "acme's two endpoints");
  assert.equal(await page.getByRole("link", { name: "Overview" }).count(), 0, "no operator view");
  assert.ok(!page.url().includes("token="), "the token leaves the address bar");
  assert.ok(!(await page.content()).includes("Globex payroll"));

  await page.goto(`${BASE}/console/#/tenants/globex`);
  const error = page.getByTestId("page-error");
  await error.waitFor();
  assert.match(await error.textContent(), /only on its own tenant/);
  assert.ok(!(await page.content()).includes("Globex payroll"));
  await page.goto(`${BASE}/console/#/`);
  await page.getByRole("heading", { name: "Endpoints" }).waitFor();
  assert.ok(page.url().endsWith("#/tenants/acme"), "the root sends a tenant to its own endpoints");

  for (const path of ["/tenants/globex/endpoints", "/tenants/globex/dead-letters", "/operator/overview"]) {
    const answer = await api("GET", path, undefined, link.body.token);
    assert.equal(answer.status, 403, path);
  }
  assert.equal((await api("GET", "/tenants/acme/endpoints", undefined, link.body.token)).status, 200);
  await context.close();
});

test("a portal link opened in a signed-in tab asks before replacing that session", async () => {
  const link = await api("POST", "/tenants/acme/portal-links");
  assert.equal(link.status, 201);
  const page = await operatorPage();
  await explained(page, async () => {
    const stored = () => page.evaluate(() => sessionStorage.getItem("hookline.token"));
    await page.goto(`${BASE}${link.body.url}`);
    await page.getByRole("heading", { name: "Switch session?" }).waitFor();
    assert.match(await page.getByTestId("switch-session").textContent(),
      /signed in as an operator\. .* as tenant acme instead/);
    assert.ok(!page.url().includes("token="), "the token leaves the address bar");
    assert.equal(await stored(), TOKEN, "nothing changes before the answer");

    await page.getByRole("button", { name: "Keep current session" }).click();
    await page.getByRole("heading", { name: "Overview" }).waitFor();
    assert.equal(await stored(), TOKEN, "kept");

    await page.goto(`${BASE}${link.body.url}`);
    await page.getByRole("button", { name: "Switch to tenant acme" }).click();
    await page.getByRole("heading", { name: "Endpoints" }).waitFor();
    assert.ok(page.url().endsWith("#/tenants/acme"));
    assert.equal(await stored(), link.body.token, "switched");
    assert.equal(await page.getByRole("link", { name: "Overview" }).count(), 0, "no operator view");
    assert.deepEqual(page.problems, []);
  });
  await page.context().close();
});

test("an ordered endpoint's page shows an event waiting behind the one its receiver has not answered", async () => {
  const slow = await receiver(204);
  slow.holding = true;
  try {
    const created = await api("POST", "/tenants/umbrella/endpoints",
      { url: slow.url, event_types: ["application.#"], description: "Status sync", ordered: true });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    const id = created.body.id;
    const post = async (status) => {
      const answer = await api("POST", "/tenants/umbrella/events",
        { type: "application.status.updated", ordering_key: "application:7", data: { status } });
      assert.equal(answer.status, 202);
      return answer.body.id;
    };
    const first = await post("interview");
    const second = await post("offer");
    await until("the first event is at the receiver, unanswered", async () => slow.received.length === 1);

    const page = await operatorPage();
    await page.goto(`${BASE}/console/#/tenants/umbrella/endpoints/${id}`);
    await page.getByRole("heading", { name: "Status sync" }).waitFor();
    assert.equal(await page.getByTestId("ordered").textContent(), "yes, per ordering_key");
    await page.getByLabel("Event id").fill(second);
    await until("the second event shows what it waits for", async () => {
      await page.getByRole("button", { name: "Look up" }).click();
      const status = page.getByTestId("event-status");
      await status.waitFor();
      return (await status.textContent()).includes(`waiting for event ${first}`);
    });
    assert.match(await page.getByTestId("event-status").textContent(), /^held behind/);
    await shot(page, "ordered-endpoint");

    slow.release();
    await until("the second event follows the first", async () => slow.received.some((r) => r.body.includes('"offer"')));
    const bodies = slow.received.map((r) => r.body);
    const lastFirst = bodies.findLastIndex((b) => b.includes('"interview"'));
    const firstSecond = bodies.findIndex((b) => b.includes('"offer"'));
    assert.ok(lastFirst < firstSecond, `the second event was sent only after the first was done: ${bodies}`);
    assert.deepEqual(page.problems, []);
    await page.context().close();
  } finally {
    slow.release();
    slow.stop();
  }
});

test("one click subscribes a new endpoint to the tenant's operational notifications", async () => {
  const page = await operatorPage();
  await page.goto(`${BASE}/console/#/tenants/wayne`);
  await page.getByRole("link", { name: "Get notified when an endpoint fails" }).click();
  const box = page.getByLabel(/Operational notifications/);
  await box.waitFor();
  assert.equal(await box.isChecked(), true, "the box comes ticked");
  await page.getByLabel("URL").fill(healthy.url);
  await page.getByRole("button", { name: "Create endpoint" }).click();
  await page.locator("#flash", { hasText: "signing secret" }).waitFor();
  const listed = await api("GET", "/tenants/wayne/endpoints");
  assert.deepEqual(listed.body.data[0].event_types, ["hookline.endpoint.*", "hookline.dead_letters.*"]);
  assert.deepEqual(page.problems, []);
  await page.context().close();
});
