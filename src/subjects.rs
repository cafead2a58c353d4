//! Every NATS name Switchyard uses: subjects, queue groups, streams, KV buckets and
//! headers. This file and `subjects.md` are the contract; `tests/subjects_contract.rs`
//! fails when they disagree, so a new name starts here and in `subjects.md` together.
//!
//! Builders that put caller-supplied text into a subject validate every token: a space,
//! a dot or a CR/LF in a token would otherwise change the subject or break the protocol.

use crate::error::Error;

/// Gateway ingress, request-reply: `api.<service>.<operation>`.
pub const API: &str = "api.<service>.<operation>";
/// Service endpoints behind the gateway (NATS micro endpoints).
pub const SVC: &str = "svc.<service>.<operation>";
/// Event bus, captured by stream `EVENTS`.
pub const EVENTS: &str = "events.<domain>.<name>";
/// Records from sources, captured by stream `DATA` (the publish is acknowledged). The
/// data flow rules route them; data sync delivers them to their targets.
pub const DATA_IN: &str = "data.in.<source>[.<…>]";
/// Records no flow rule matched: a copy, kept in stream `DATA` and counted.
pub const DATA_UNROUTED: &str = "data.unrouted";
/// Delivery confirmations to a record's source, one per record and target.
pub const DATA_CONFIRM: &str = "data.confirm.<source>";
/// Data cache request-reply: `cache.get|put|del.<namespace>.<key>`.
pub const CACHE: &str = "cache.<get|put|del>.<namespace>.<key>";
/// Durable task work items, captured by the work-queue stream `TASKS`.
pub const TASKS_WORK: &str = "tasks.work.<service>.<operation>";
/// Task submission, request-reply: answers `{id, state}` at once (tasks component).
pub const TASKS_SUBMIT: &str = "tasks.submit.<service>.<operation>";
/// A task's state and result, request-reply (tasks component).
pub const TASKS_GET: &str = "tasks.get.<id>";
/// Cancels a task that has not finished, request-reply (tasks component).
pub const TASKS_CANCEL: &str = "tasks.cancel.<id>";
/// A task's state changes (progress and the result), core NATS, not stored.
pub const TASKS_EVENTS: &str = "tasks.events.<id>";
/// Cancel notices to the workers of a service (the task id), core NATS, not stored.
pub const TASKS_CANCELED: &str = "tasks.canceled.<service>";
/// Dead letters, captured by stream `DLQ`.
pub const DLQ: &str = "dlq.<original subject>";
/// The server's advisories that a consumer gave up on a message, captured by stream
/// `DLQ_ADVISORIES` and turned into dead letters by the `deadletter` component.
pub const DLQ_ADVISORIES: &str =
    "$JS.EVENT.ADVISORY.CONSUMER.<MAX_DELIVERIES|MSG_TERMINATED>.<stream>.<consumer>";
/// Error records per component, captured by stream `ERRORS`.
pub const ERRORS: &str = "errors.<component>";
/// Logs per level and component, captured by stream `LOGS`.
pub const LOGS: &str = "logs.<level>.<component>";
/// Alerts per severity and rule, captured by stream `ALERTS`.
pub const ALERTS: &str = "alerts.<severity>.<rule>";

/// Every running instance answers (no queue group): who it is and what it runs.
pub const SYS_PING: &str = "sys.ping";
/// Decodes an envelope and answers it back in the caller's codec (queue group).
pub const SYS_ECHO: &str = "sys.echo";

/// Who leads the coordinators now (the lease in KV `coord`), request-reply.
pub const SYS_COORD_LEADER: &str = "sys.coord.leader";
/// Every instance answers (no queue group) with its log filter, or changes it.
pub const SYS_LOG_LEVEL: &str = "sys.log.level";
/// A command to every gateway instance: open the breaker for `<service>` now.
pub const SYS_GATEWAY_BREAKER: &str = "sys.gateway.breaker.<service>";
/// The system monitor's status document (JSON), request-reply.
pub const SYS_STATUS: &str = "sys.status";
/// Coordination rules over request-reply: `sys.coord.rules.<list|get|put|del>[.<name>]`.
pub const SYS_COORD_RULES: &str = "sys.coord.rules.<list|get|put|del>[.<name>]";
/// Health changes of service instances, published by the leading coordinator.
pub const EVENTS_HEALTH: &str = "events.sys.health.changed";
/// Actions the leading coordinator took: `events.sys.action.<action>`.
pub const EVENTS_ACTION: &str = "events.sys.action.<drain|deregister|open_breaker|alert|publish>";
/// Leadership changes: `events.sys.coordinator.<elected|stepped_down>`.
pub const EVENTS_COORDINATOR: &str = "events.sys.coordinator.<elected|stepped_down>";
/// A gateway instance's circuit breaker for a service opened or closed.
pub const EVENTS_BREAKER: &str = "events.sys.breaker.<opened|closed>";

/// Every registered service instance (registry component).
pub const SYS_REGISTRY_LIST: &str = "sys.registry.list";
/// The instances of one service: `sys.registry.get.<service>`.
pub const SYS_REGISTRY_GET: &str = "sys.registry.get.<service>";
/// Registry lifecycle events: `registered`, `deregistered`, `expired`.
pub const EVENTS_SERVICE: &str = "events.sys.service.<registered|deregistered|expired>";
/// NATS micro discovery, answered by every SDK service instance (async-nats `service`):
/// `$SRV.<verb>`, `$SRV.<verb>.<service>` and `$SRV.<verb>.<service>.<instance>`.
pub const SRV: &str = "$SRV.<PING|INFO|STATS>[.<service>[.<instance>]]";

/// Queue group shared by every instance of a Switchyard component, so that a request
/// reaches one instance while events fan out.
pub const QUEUE_GROUP: &str = "switchyard";
/// Queue group of the endpoints of services built with the SDK: NATS micro's default,
/// so SDK services and other micro services of the same name share the load.
pub const SDK_QUEUE_GROUP: &str = "q";

/// A JetStream stream Switchyard owns, with the subjects it captures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamName {
    pub name: &'static str,
    pub subjects: &'static [&'static str],
}

pub const STREAM_EVENTS: StreamName = StreamName {
    name: "EVENTS",
    subjects: &["events.>"],
};
pub const STREAM_DATA: StreamName = StreamName {
    name: "DATA",
    subjects: &["data.>"],
};
pub const STREAM_TASKS: StreamName = StreamName {
    name: "TASKS",
    subjects: &["tasks.work.>"],
};
pub const STREAM_DLQ: StreamName = StreamName {
    name: "DLQ",
    subjects: &["dlq.>"],
};
/// Kept until the `deadletter` component has read them, so no advisory is lost while
/// no instance runs (a core subscription would miss them).
pub const STREAM_DLQ_ADVISORIES: StreamName = StreamName {
    name: "DLQ_ADVISORIES",
    subjects: &[
        "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.>",
        "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.>",
    ],
};
pub const STREAM_ERRORS: StreamName = StreamName {
    name: "ERRORS",
    subjects: &["errors.>"],
};
pub const STREAM_LOGS: StreamName = StreamName {
    name: "LOGS",
    subjects: &["logs.>"],
};
pub const STREAM_ALERTS: StreamName = StreamName {
    name: "ALERTS",
    subjects: &["alerts.>"],
};

/// Every stream, in the order `up` provisions them.
pub const STREAMS: [StreamName; 8] = [
    STREAM_EVENTS,
    STREAM_DATA,
    STREAM_TASKS,
    STREAM_DLQ,
    STREAM_DLQ_ADVISORIES,
    STREAM_ERRORS,
    STREAM_LOGS,
    STREAM_ALERTS,
];

pub const BUCKET_REGISTRY: &str = "registry";
pub const BUCKET_FLOWS: &str = "flows";
pub const BUCKET_CACHE: &str = "cache";
pub const BUCKET_TASKS: &str = "tasks";
pub const BUCKET_POLICIES: &str = "policies";
pub const BUCKET_COORD: &str = "coord";

/// Every KV bucket, in the order `up` provisions them.
pub const BUCKETS: [&str; 6] = [
    BUCKET_REGISTRY,
    BUCKET_FLOWS,
    BUCKET_CACHE,
    BUCKET_TASKS,
    BUCKET_POLICIES,
    BUCKET_COORD,
];

/// Headers Switchyard reads or writes (CloudEvents NATS binding, header mode).
pub mod headers {
    pub const CE_SPECVERSION: &str = "ce-specversion";
    pub const CE_ID: &str = "ce-id";
    pub const CE_SOURCE: &str = "ce-source";
    pub const CE_TYPE: &str = "ce-type";
    pub const CE_TIME: &str = "ce-time";
    pub const CE_DATACONTENTTYPE: &str = "ce-datacontenttype";
    /// CloudEvents extension: the id shared by every message of one conversation.
    pub const CE_CORRELATIONID: &str = "ce-correlationid";
    /// CloudEvents extension: the `ce-id` of the message that caused this one.
    pub const CE_CAUSATIONID: &str = "ce-causationid";
    /// W3C trace context, passed on at every hop.
    pub const TRACEPARENT: &str = "traceparent";
    pub const TRACESTATE: &str = "tracestate";
    /// Accepted as a fallback for `ce-datacontenttype` from plain NATS clients.
    pub const CONTENT_TYPE: &str = "Content-Type";
    /// JetStream de-duplication id; Switchyard sets it to `ce-id`.
    pub const NATS_MSG_ID: &str = "Nats-Msg-Id";
    /// NATS micro error description and code on an error reply.
    pub const SERVICE_ERROR: &str = "Nats-Service-Error";
    pub const SERVICE_ERROR_CODE: &str = "Nats-Service-Error-Code";
    /// The caller's remaining time budget in milliseconds. The gateway forwards with
    /// min(budget, the service's policy timeout) and sets it to what is left.
    pub const TIMEOUT_MS: &str = "Switchyard-Timeout-Ms";
    /// On a gateway reply that a fallback gave instead of the service:
    /// `service:<name>`, `cache` or `static`.
    pub const FALLBACK: &str = "Switchyard-Fallback";
    /// On a record delivered to a target: the id an idempotent target de-duplicates
    /// on, the same on every redelivery (`<record id>`).
    pub const DELIVERY_ID: &str = "Switchyard-Delivery-Id";
    /// On a record delivered to a target: the key that orders it (the flow rule's key).
    pub const RECORD_KEY: &str = "Switchyard-Record-Key";
    /// On deliveries, confirmations and dead letters of data sync: the target's name.
    pub const TARGET: &str = "Switchyard-Target";
    /// On copies (unrouted records, dead letters): where the original was published.
    pub const ORIGINAL_SUBJECT: &str = "Switchyard-Original-Subject";
    /// On copies: the original's stream and sequence, `<stream>:<seq>`.
    pub const ORIGINAL_SEQ: &str = "Switchyard-Original-Seq";
    /// On dead letters: why the message was given up (text), its error code, the
    /// component that gave up, and how many deliveries were tried.
    pub const DLQ_REASON: &str = "Switchyard-Dlq-Reason";
    pub const DLQ_CODE: &str = "Switchyard-Dlq-Code";
    pub const DLQ_COMPONENT: &str = "Switchyard-Dlq-Component";
    pub const DLQ_DELIVERIES: &str = "Switchyard-Dlq-Deliveries";
    /// On dead letters: the JetStream consumer that gave up, and the times of the
    /// first and the last failed delivery (RFC 3339).
    pub const DLQ_CONSUMER: &str = "Switchyard-Dlq-Consumer";
    pub const DLQ_FIRST_FAILURE: &str = "Switchyard-Dlq-First-Failure";
    pub const DLQ_LAST_FAILURE: &str = "Switchyard-Dlq-Last-Failure";
    /// On a replayed dead letter: the entry it came from, `DLQ:<seq>`.
    pub const REPLAYED_FROM: &str = "Switchyard-Replayed-From";
    /// On task work items and task events: the task id (UUID v7, the key in KV `tasks`).
    pub const TASK_ID: &str = "Switchyard-Task-Id";
    /// On task work items: the KV `tasks` revision of the state the submit stored, so
    /// a worker records the outcome by compare-and-set without reading it first; on
    /// cancel notices, the revision of the `canceled` state.
    pub const TASK_REVISION: &str = "Switchyard-Task-Revision";
    /// On requests the gateway forwards from HTTP: the name of the caller's API key.
    pub const API_KEY_NAME: &str = "Switchyard-Api-Key-Name";

    /// Every header above, for the subjects.md contract test.
    pub const ALL: &[&str] = &[
        CE_SPECVERSION,
        CE_ID,
        CE_SOURCE,
        CE_TYPE,
        CE_TIME,
        CE_DATACONTENTTYPE,
        CE_CORRELATIONID,
        CE_CAUSATIONID,
        TRACEPARENT,
        TRACESTATE,
        CONTENT_TYPE,
        NATS_MSG_ID,
        SERVICE_ERROR,
        SERVICE_ERROR_CODE,
        TIMEOUT_MS,
        FALLBACK,
        DELIVERY_ID,
        RECORD_KEY,
        TARGET,
        ORIGINAL_SUBJECT,
        ORIGINAL_SEQ,
        DLQ_REASON,
        DLQ_CODE,
        DLQ_COMPONENT,
        DLQ_DELIVERIES,
        DLQ_CONSUMER,
        DLQ_FIRST_FAILURE,
        DLQ_LAST_FAILURE,
        REPLAYED_FROM,
        TASK_ID,
        TASK_REVISION,
        API_KEY_NAME,
    ];
}

/// Every subject family and fixed subject, for the subjects.md contract test.
pub const ALL_SUBJECTS: &[&str] = &[
    API,
    SVC,
    SRV,
    EVENTS,
    EVENTS_SERVICE,
    DATA_IN,
    DATA_UNROUTED,
    DATA_CONFIRM,
    CACHE,
    TASKS_WORK,
    TASKS_SUBMIT,
    TASKS_GET,
    TASKS_CANCEL,
    TASKS_EVENTS,
    TASKS_CANCELED,
    DLQ,
    DLQ_ADVISORIES,
    ERRORS,
    LOGS,
    ALERTS,
    SYS_PING,
    SYS_ECHO,
    SYS_REGISTRY_LIST,
    SYS_REGISTRY_GET,
    SYS_COORD_LEADER,
    SYS_COORD_RULES,
    SYS_STATUS,
    SYS_GATEWAY_BREAKER,
    SYS_LOG_LEVEL,
    EVENTS_COORDINATOR,
    EVENTS_BREAKER,
    EVENTS_HEALTH,
    EVENTS_ACTION,
];

/// Checks one subject token supplied by a caller (a service, operation, domain or
/// component name): 1 to 128 characters of `A-Z a-z 0-9 _ -`. The same alphabet NATS
/// micro demands of service and endpoint names, so a valid token works everywhere.
pub fn validate_token(what: &str, token: &str) -> Result<(), Error> {
    let valid = !token.is_empty()
        && token.len() <= 128
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(Error::invalid_input(format!(
            "invalid {what} {token:?}: a subject token is 1-128 characters of A-Z a-z 0-9 _ -"
        )))
    }
}

fn join(prefix: &str, tokens: &[(&str, &str)]) -> Result<String, Error> {
    let mut subject = String::from(prefix);
    for (what, token) in tokens {
        validate_token(what, token)?;
        subject.push('.');
        subject.push_str(token);
    }
    Ok(subject)
}

/// `api.<service>.<operation>`
pub fn api(service: &str, operation: &str) -> Result<String, Error> {
    join("api", &[("service", service), ("operation", operation)])
}

/// `svc.<service>.<operation>`
pub fn svc(service: &str, operation: &str) -> Result<String, Error> {
    join("svc", &[("service", service), ("operation", operation)])
}

/// `events.<domain>.<name>`
pub fn event(domain: &str, name: &str) -> Result<String, Error> {
    join("events", &[("domain", domain), ("name", name)])
}

/// `errors.<component>`
pub fn errors(component: &str) -> Result<String, Error> {
    join("errors", &[("component", component)])
}

/// `data.confirm.<source>`
pub fn data_confirm(source: &str) -> Result<String, Error> {
    join("data.confirm", &[("source", source)])
}

/// Durable consumer of the data flow on stream `DATA` (filter `data.in.>`): every
/// record once, to find unrouted and malformed ones.
pub const FLOW_CONSUMER: &str = "flow";

/// Durable consumer of data sync on stream `DATA` for one target: `sync-<target>`.
pub fn sync_consumer(target: &str) -> Result<String, Error> {
    validate_token("target", target)?;
    Ok(format!("sync-{target}"))
}

/// `tasks.work.<service>.<operation>`
pub fn tasks_work(service: &str, operation: &str) -> Result<String, Error> {
    join(
        "tasks.work",
        &[("service", service), ("operation", operation)],
    )
}

/// `tasks.submit.<service>.<operation>`
pub fn tasks_submit(service: &str, operation: &str) -> Result<String, Error> {
    join(
        "tasks.submit",
        &[("service", service), ("operation", operation)],
    )
}

/// `tasks.get.<id>`
pub fn tasks_get(id: &str) -> Result<String, Error> {
    join("tasks.get", &[("task id", id)])
}

/// `tasks.cancel.<id>`
pub fn tasks_cancel(id: &str) -> Result<String, Error> {
    join("tasks.cancel", &[("task id", id)])
}

/// `tasks.events.<id>`
pub fn tasks_events(id: &str) -> Result<String, Error> {
    join("tasks.events", &[("task id", id)])
}

/// `tasks.canceled.<service>`
pub fn tasks_canceled(service: &str) -> Result<String, Error> {
    join("tasks.canceled", &[("service", service)])
}

/// Durable consumer on stream `TASKS` (filter `tasks.work.<service>.>`) shared by every
/// instance of one SDK service: `tasks-<service>`. A work-queue stream needs
/// non-overlapping filters, hence one consumer per service, not per instance.
pub fn tasks_consumer(service: &str) -> Result<String, Error> {
    validate_token("service", service)?;
    Ok(format!("tasks-{service}"))
}

/// Prefixes of the keys in KV `policies` that are not a service's gateway policy:
/// `sync.<target>` (data sync) and `cache.<namespace>` (data cache).
pub const POLICY_SYNC_PREFIX: &str = "sync.";
pub const POLICY_CACHE_PREFIX: &str = "cache.";
/// Health rule overrides per service in KV `policies`: `health.<service>`.
pub const POLICY_HEALTH_PREFIX: &str = "health.";

/// Durable consumer of the `deadletter` component on stream `DLQ_ADVISORIES`.
pub const DEADLETTER_CONSUMER: &str = "deadletter";

/// `dlq.<original subject>`: the original subject is kept whole so a redrive knows
/// where the message came from. Any subject a message was published on is accepted
/// (`$KV.b.k=1` too): tokens of printable ASCII, no wildcards.
pub fn dlq(original: &str) -> Result<String, Error> {
    let literal = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_graphic() && b != b'*' && b != b'>')
    };
    if !original.split('.').all(literal) {
        return Err(Error::invalid_input(format!(
            "invalid original subject {original:?}: tokens of printable ASCII, no wildcards"
        )));
    }
    Ok(format!("dlq.{original}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_subjects_from_valid_tokens() {
        assert_eq!(api("echo", "say").unwrap(), "api.echo.say");
        assert_eq!(svc("my-svc", "do_it").unwrap(), "svc.my-svc.do_it");
        assert_eq!(dlq("data.in.orders").unwrap(), "dlq.data.in.orders");
    }

    #[test]
    fn refuses_tokens_that_would_change_the_subject() {
        for bad in ["", "a b", "a.b", "a*", ">", "x\r\ny", "é", &"x".repeat(129)] {
            let err = api(bad, "op").unwrap_err();
            assert_eq!(err.kind(), crate::error::ErrorKind::InvalidInput, "{bad:?}");
        }
        assert!(dlq("data..in").is_err());
    }
}
