//! The bad-input table: each class, where it was sent, what the system answered and what
//! else the test checked. The test observes the answer and compares it with the row;
//! RELIABILITY.md shows [`markdown`] of these rows.

/// (bad input, sent to, answer, what else holds)
pub const EXPECTED: &[(&str, &str, &str, &str)] = &[
    (
        "Garbage bytes (not JSON, not UTF-8)",
        "`api.echo.say`",
        "`400 invalid_input`",
        "answered by the service: the gateway forwards payloads undecoded",
    ),
    (
        "Unknown content type",
        "`api.echo.say`",
        "`415 unsupported_media_type`",
        "answered by the gateway itself",
    ),
    (
        "Invalid JSON (truncated)",
        "`api.echo.say`",
        "`400 invalid_input`",
        "the error names the line and column",
    ),
    (
        "Valid JSON of the wrong shape",
        "`api.slow.wait`",
        "`400 invalid_input`",
        "the error says what was expected",
    ),
    (
        "Deeply nested JSON (200 levels)",
        "`api.echo.say`",
        "`400 invalid_input`",
        "`recursion limit` (128 levels, in both codecs)",
    ),
    (
        "Huge number (`1e400`)",
        "`api.echo.say`",
        "`400 invalid_input`",
        "`number out of range`, never an infinity",
    ),
    (
        "Empty payload",
        "`api.echo.say`",
        "`400 invalid_input`",
        "—",
    ),
    (
        "No headers at all",
        "`api.echo.say`",
        "`200`",
        "read as JSON, the reply unchanged",
    ),
    (
        "Wrong `ce-specversion` (0.3)",
        "`api.echo.say`",
        "`400 invalid_input`",
        "—",
    ),
    (
        "Malformed `traceparent`, non-UTF-8 `ce-id`",
        "`api.echo.say`",
        "`200`",
        "a new trace starts",
    ),
    (
        "Malformed `Switchyard-Timeout-Ms`",
        "`api.echo.say`",
        "`400 invalid_input`",
        "—",
    ),
    (
        "Unknown service",
        "`api.nosuch.say`",
        "`404 not_found`",
        "—",
    ),
    (
        "Unknown operation",
        "`api.echo.nosuch`",
        "`404 not_found`",
        "—",
    ),
    (
        "Invalid subject token",
        "`api.ec$ho.say`",
        "`400 invalid_input`",
        "—",
    ),
    (
        "Too many subject tokens",
        "`api.echo.say.more`",
        "`400 invalid_input`",
        "—",
    ),
    (
        "Payload that fits but not with the forwarded headers",
        "`api.echo.say`",
        "`413 payload_too_large`",
        "the connection stays up",
    ),
    (
        "Payload over the server's `max_payload` (1 MiB)",
        "`api.echo.say`",
        "refused by the client before sending",
        "the connection stays up",
    ),
    (
        "Unknown content type",
        "`POST /v1/echo/say`",
        "HTTP `415 unsupported_media_type`",
        "—",
    ),
    (
        "Invalid JSON (truncated)",
        "`POST /v1/echo/say`",
        "HTTP `400 invalid_input`",
        "—",
    ),
    (
        "Non-UTF-8 body",
        "`POST /v1/echo/say`",
        "HTTP `400 invalid_input`",
        "—",
    ),
    (
        "Oversized body (2 MiB)",
        "`POST /v1/echo/say`",
        "HTTP `413 payload_too_large`",
        "—",
    ),
    (
        "Unknown service",
        "`POST /v1/nosuch/say`",
        "HTTP `404 not_found`",
        "—",
    ),
    (
        "Invalid path token",
        "`POST /v1/ec$ho/say`",
        "HTTP `400 invalid_input`",
        "—",
    ),
    (
        "Unknown route",
        "`POST /v1/nothing`",
        "HTTP `404 not_found`",
        "—",
    ),
    (
        "Malformed `X-Request-Timeout`",
        "`POST /v1/echo/say`",
        "HTTP `400 invalid_input`",
        "—",
    ),
    (
        "Invalid JSON record",
        "`data.in.bad.json`",
        "dead letter `400` by flow",
        "DLQ keeps the payload and the reason; the next record is delivered and confirmed",
    ),
    (
        "Record in an unknown content type",
        "`data.in.bad.text`",
        "dead letter `415` by flow",
        "as above",
    ),
    (
        "Deeply nested record (200 levels)",
        "`data.in.bad.deep`",
        "dead letter `400` by flow",
        "as above",
    ),
    (
        "Record without its key field",
        "`data.in.bad.nokey`",
        "dead letter `400` by flow",
        "as above",
    ),
    (
        "Record key with a line break",
        "`data.in.bad.linebreak`",
        "dead letter `400` by flow",
        "as above (found by fuzzing: data sync used to panic putting the key in a header)",
    ),
    (
        "Record `ce-id` decoding to a line break",
        "`data.in.bad.ceid`",
        "dead letter `400` by flow",
        "as above (found by fuzzing, same panic with the delivery id)",
    ),
    (
        "Empty record",
        "`data.in.bad.empty`",
        "dead letter `400` by flow",
        "as above",
    ),
    (
        "Record no rule matches",
        "`data.in.nomatch.x`",
        "copied to `data.unrouted`",
        "with its original subject",
    ),
    (
        "Invalid flow rule",
        "KV `flows`",
        "warning on `logs.warn.flow`",
        "the previous version stays in force: the next record is still delivered",
    ),
    (
        "Invalid gateway policy",
        "KV `policies` `echo`",
        "warning on `logs.warn.gateway`",
        "calls to `echo` still answered",
    ),
    (
        "Invalid sync policy",
        "KV `policies` `sync.echo`",
        "warning on `logs.warn.sync`",
        "records to `echo` still delivered",
    ),
    (
        "Invalid cache policy",
        "KV `policies` `cache.demo`",
        "warning on `logs.warn.cache`",
        "`demo` still stores and serves",
    ),
    (
        "Invalid health rules",
        "KV `policies` `health.echo`",
        "warning on `logs.warn.health`",
        "the warning names the service",
    ),
    (
        "Malformed registry entry",
        "KV `registry` `echo.bogus`",
        "warning on `logs.warn.registry`",
        "ignored; `echo` still routed",
    ),
    (
        "Invalid coordination rule",
        "KV `coord` `rules.kv-bad`",
        "warning on `logs.warn.coordinator`",
        "not in force (`sys.coord.rules.list`)",
    ),
    (
        "Invalid alert rule",
        "KV `coord` `alerts.kv-bad`",
        "warning on `logs.warn.alerts`",
        "the warning names the rule",
    ),
    (
        "Invalid coordination rule",
        "`sys.coord.rules.put.bad-rule`",
        "`400 invalid_input`",
        "the rules in force unchanged",
    ),
    (
        "Garbage bytes (not JSON, not UTF-8)",
        "`sys.coord.rules.put.bad-rule`",
        "`400 invalid_input`",
        "—",
    ),
    (
        "Garbage bytes (not JSON, not UTF-8)",
        "`cache.put.demo.k1`",
        "`200`",
        "values are opaque bytes: `cache.get` returns them unchanged",
    ),
    (
        "Invalid subject token",
        "`cache.put.demo.k$1`",
        "`400 invalid_input`",
        "—",
    ),
    (
        "Unknown content type",
        "`cache.put.demo.k2`",
        "`415 unsupported_media_type`",
        "nothing stored",
    ),
    (
        "Unknown key",
        "`cache.get.demo.missing`",
        "`404 not_found`",
        "—",
    ),
    (
        "Valid JSON of the wrong shape",
        "`tasks.submit.slow.wait`",
        "accepted, then `failed` `400 invalid_input`; dead letter by tasks",
        "the task's state says why; DLQ has the work item",
    ),
    (
        "Unknown service",
        "`tasks.submit.nosuch.op`",
        "`404 not_found`",
        "—",
    ),
    (
        "Task id that is not a UUID",
        "`tasks.get.no-such-task`",
        "`400 invalid_input`",
        "—",
    ),
    (
        "Unknown task id",
        "`tasks.get.<uuid>`",
        "`404 not_found`",
        "—",
    ),
    (
        "Invalid log filter",
        "`sys.log.level`",
        "`400 invalid_input`",
        "the filter in force stays",
    ),
    (
        "Log filter with a field filter (found by fuzzing: regex blow-up, a panic)",
        "`sys.log.level`",
        "`400 invalid_input`",
        "the filter in force stays",
    ),
    (
        "Non-UTF-8 text",
        "`sys.log.level`",
        "`400 invalid_input`",
        "the filter in force stays",
    ),
    (
        "Truncated MessagePack",
        "`sys.echo`",
        "`400 invalid_input`",
        "—",
    ),
    (
        "Unknown service",
        "`sys.registry.get.nosuch`",
        "`404 not_found`",
        "—",
    ),
];

/// The table as RELIABILITY.md shows it.
pub fn markdown() -> String {
    let mut text =
        String::from("| Bad input | Sent to | Answer | What else holds |\n|---|---|---|---|\n");
    for (class, to, answer, holds) in EXPECTED {
        text.push_str(&format!("| {class} | {to} | {answer} | {holds} |\n"));
    }
    text
}

/// What the run observed, row by row.
#[derive(Default)]
pub struct Observed {
    rows: Vec<(String, String, String)>,
}

impl Observed {
    /// Records the answer to `class` sent to `to`; [`Observed::finish`] compares.
    pub fn check(&mut self, class: &str, to: &str, answer: String) {
        eprintln!("bad input: {class} → {to}: {answer}");
        self.rows.push((class.to_string(), to.to_string(), answer));
    }

    /// Every row of [`EXPECTED`] observed once, in order, with its answer.
    pub fn finish(self) {
        let observed: Vec<String> = self
            .rows
            .iter()
            .map(|(class, to, answer)| format!("{class} | {to} | {answer}"))
            .collect();
        let expected: Vec<String> = EXPECTED
            .iter()
            .map(|(class, to, answer, _)| format!("{class} | {to} | {answer}"))
            .collect();
        if observed != expected {
            let table: Vec<String> = self
                .rows
                .iter()
                .map(|(class, to, answer)| {
                    let holds = EXPECTED
                        .iter()
                        .find(|(c, t, _, _)| c == class && t == to)
                        .map_or("?", |row| row.3);
                    format!("    ({class:?}, {to:?}, {answer:?}, {holds:?}),")
                })
                .collect();
            panic!(
                "the answers differ from the table; observed:\n{}",
                table.join("\n")
            );
        }
    }
}
