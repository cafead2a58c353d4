//! One flow rule: its JSON (or TOML) form, the checks that refuse an invalid rule with
//! the field and the reason, and what a rule does with a record: whether it matches,
//! which targets it names, and the key that orders the record.
//!
//! Unknown fields are refused everywhere, so a typo (`tragets`, `enabeld`) is an error
//! instead of a rule that silently routes differently.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::condition::{self, FieldCondition};
use crate::data::record::{DATA_IN_PREFIX, Record, check_header_value};
use crate::error::Error;
use crate::subjects::{svc, validate_token};

/// Most targets one rule may name.
pub const MAX_TARGETS: usize = 32;
/// Highest `subject_token` a key may name.
pub const MAX_SUBJECT_TOKEN: usize = 255;

/// A rule as written: the value stored in KV `flows` under its name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub name: String,
    #[serde(rename = "match")]
    pub matcher: MatchSpec,
    pub targets: Vec<TargetSpec>,
    /// Absent: the record id (no order between records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<KeySpec>,
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
}

fn enabled_by_default() -> bool {
    true
}

/// What a record must be to match: all conditions hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchSpec {
    /// NATS pattern under `data.in.` (`*` one token, a final `>` the rest).
    pub subject: String,
    /// Header name → a value, or a list of values (any of them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, Value>,
    /// JSON pointer into the decoded payload → a value, `{"any_of": [...]}` or
    /// `{"equals": ...}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, Value>,
}

/// One destination: `service` + `operation` (`svc.<service>.<operation>`) or a literal
/// `subject`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

/// The key that orders and de-duplicates records: exactly one of these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeySpec {
    /// JSON pointer into the decoded payload.
    Field(String),
    /// Header name (value percent-decoded like `ce-*` values).
    Header(String),
    /// 0-based token of the record's subject.
    SubjectToken(usize),
}

/// Where a rule sends matching records. Data sync names the target's durable consumer
/// `sync-<name>` and delivers to `subject`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    pub name: String,
    pub subject: String,
}

/// A checked rule, ready to match records.
#[derive(Debug, Clone)]
pub struct Rule {
    spec: RuleSpec,
    pattern: Vec<Token>,
    headers: Vec<(String, Vec<String>)>,
    fields: Vec<(String, FieldCondition)>,
    targets: Vec<Target>,
    key: Key,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(String),
    One,
    Rest,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Key {
    Id,
    Field(String),
    Header(String),
    SubjectToken(usize),
}

impl Rule {
    /// Parses and checks a JSON rule (the KV value).
    pub fn from_json(bytes: &[u8]) -> Result<Rule, Error> {
        let spec: RuleSpec = serde_json::from_slice(bytes)
            .map_err(|e| Error::invalid_input(format!("not a valid rule: {e}")))?;
        Rule::from_spec(spec)
    }

    /// Parses and checks a TOML rule (same fields as the JSON form).
    pub fn from_toml(text: &str) -> Result<Rule, Error> {
        let spec: RuleSpec = toml::from_str(text).map_err(|e| {
            let message = e.to_string().replace('\n', " ");
            Error::invalid_input(format!("not a valid rule: {}", message.trim()))
        })?;
        Rule::from_spec(spec)
    }

    /// Checks a rule; the error names the field and the reason.
    pub fn from_spec(spec: RuleSpec) -> Result<Rule, Error> {
        validate_token("rule name", &spec.name).map_err(|e| at("name", e))?;
        let pattern = pattern(&spec.matcher.subject).map_err(|e| at("match.subject", e))?;
        let mut headers = Vec::new();
        for (name, values) in &spec.matcher.headers {
            let field = format!("match.headers.{name}");
            check_header_name(name).map_err(|e| at(&field, e))?;
            headers.push((
                name.clone(),
                header_values(values).map_err(|e| at(&field, e))?,
            ));
        }
        let mut fields = Vec::new();
        for (pointer, value) in &spec.matcher.fields {
            let field = format!("match.fields.{pointer}");
            condition::check_pointer(pointer).map_err(|e| at(&field, e))?;
            let condition = FieldCondition::parse(value).map_err(|e| at(&field, e))?;
            fields.push((pointer.clone(), condition));
        }
        let targets = targets(&spec.targets)?;
        let key = key(spec.key.as_ref(), &pattern)?;
        Ok(Rule {
            spec,
            pattern,
            headers,
            fields,
            targets,
            key,
        })
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn enabled(&self) -> bool {
        self.spec.enabled
    }

    pub fn spec(&self) -> &RuleSpec {
        &self.spec
    }

    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// The value stored in KV `flows`: compact JSON of the rule as written.
    pub fn to_json(&self) -> Result<Vec<u8>, Error> {
        serde_json::to_vec(&self.spec)
            .map_err(|e| Error::internal(format!("cannot encode rule {}: {e}", self.name())))
    }

    /// The key, for people: `field /order_id`, `header X`, `subject token 3`, `record id`.
    pub fn describe_key(&self) -> String {
        match &self.key {
            Key::Id => "record id".into(),
            Key::Field(pointer) => format!("field {pointer}"),
            Key::Header(name) => format!("header {name}"),
            Key::SubjectToken(n) => format!("subject token {n}"),
        }
    }

    /// Whether `record` matches: subject, then headers, then fields. Fails only when a
    /// field condition needs a payload that does not decode.
    pub fn matches(&self, record: &Record, subject: &[&str]) -> Result<bool, Error> {
        if !subject_matches(&self.pattern, subject) {
            return Ok(false);
        }
        for (name, values) in &self.headers {
            match record.header(name) {
                Some(value) if values.contains(&value) => {}
                _ => return Ok(false),
            }
        }
        if self.fields.is_empty() {
            return Ok(true);
        }
        let content = record.content()?;
        Ok(self
            .fields
            .iter()
            .all(|(pointer, condition)| condition.holds(content.pointer(pointer))))
    }

    /// The value of this rule's key for `record`, as text (a non-string JSON value as
    /// its compact JSON). A missing (or null, or empty) key makes the record malformed.
    pub fn key_of(&self, record: &Record, subject: &[&str]) -> Result<String, Error> {
        let value = match &self.key {
            Key::Id => Some(record.id.clone()),
            Key::Field(pointer) => match record.content()?.pointer(pointer) {
                None | Some(Value::Null) => None,
                Some(Value::String(text)) => Some(text.clone()),
                Some(other) => Some(other.to_string()),
            },
            Key::Header(name) => record.header(name),
            Key::SubjectToken(n) => subject.get(*n).map(|t| (*t).to_string()),
        };
        let key = value.filter(|v| !v.is_empty()).ok_or_else(|| {
            Error::invalid_input(format!(
                "record {} on {} has no {}, the key of flow rule {}",
                record.id,
                record.subject,
                self.describe_key(),
                self.name()
            ))
        })?;
        // Data sync sends the key in `Switchyard-Record-Key`.
        check_header_value(&format!("key ({})", self.describe_key()), &key)?;
        Ok(key)
    }
}

/// Refuses `rule` when one of its target names already means another destination in
/// one of `others` (rules of other names): a target name always means one destination.
pub fn check_conflicts<'a>(
    rule: &Rule,
    others: impl IntoIterator<Item = &'a Rule>,
) -> Result<(), Error> {
    for other in others {
        if other.name() == rule.name() {
            continue;
        }
        for target in &rule.targets {
            if let Some(existing) = other
                .targets
                .iter()
                .find(|t| t.name == target.name && t.subject != target.subject)
            {
                return Err(Error::invalid_input(format!(
                    "targets: target {:?} already delivers to {} (rule {}); this rule sends \
                     it to {}: a target name must always mean the same destination",
                    target.name,
                    existing.subject,
                    other.name(),
                    target.subject
                )));
            }
        }
    }
    Ok(())
}

fn at(field: &str, err: Error) -> Error {
    Error::new(err.kind(), format!("{field}: {}", err.message()))
}

fn pattern(subject: &str) -> Result<Vec<Token>, Error> {
    let Some(rest) = subject.strip_prefix(DATA_IN_PREFIX) else {
        return Err(Error::invalid_input(format!(
            "{subject:?} is not a pattern under data.in. (e.g. data.in.orders.>)"
        )));
    };
    let mut tokens: Vec<Token> = vec![Token::Literal("data".into()), Token::Literal("in".into())];
    let parts: Vec<&str> = rest.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let token = match *part {
            "*" => Token::One,
            ">" if i + 1 == parts.len() => Token::Rest,
            ">" => {
                return Err(Error::invalid_input(format!(
                    "{subject:?}: `>` may only be the last token"
                )));
            }
            literal => {
                validate_token("subject token", literal)
                    .map_err(|e| Error::invalid_input(format!("{subject:?}: {}", e.message())))?;
                Token::Literal(literal.to_string())
            }
        };
        tokens.push(token);
    }
    Ok(tokens)
}

fn subject_matches(pattern: &[Token], subject: &[&str]) -> bool {
    for (i, token) in pattern.iter().enumerate() {
        match token {
            Token::Rest => return subject.len() > i,
            Token::One if i < subject.len() => {}
            Token::Literal(literal) if subject.get(i) == Some(&literal.as_str()) => {}
            _ => return false,
        }
    }
    subject.len() == pattern.len()
}

/// Header names NATS accepts (async-nats panics on others): printable ASCII, no `:`.
fn check_header_name(name: &str) -> Result<(), Error> {
    let valid = !name.is_empty()
        && name.len() <= 256
        && name.chars().all(|c| c.is_ascii_graphic() && c != ':');
    if valid {
        Ok(())
    } else {
        Err(Error::invalid_input(format!(
            "invalid header name {name:?}: printable ASCII without spaces or `:`"
        )))
    }
}

fn header_values(value: &Value) -> Result<Vec<String>, Error> {
    let values: Option<Vec<String>> = match value {
        Value::String(one) => Some(vec![one.clone()]),
        Value::Array(many) if !many.is_empty() => many
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => None,
    };
    values.ok_or_else(|| {
        Error::invalid_input("a header condition is a string or a non-empty list of strings")
    })
}

fn targets(specs: &[TargetSpec]) -> Result<Vec<Target>, Error> {
    if specs.is_empty() || specs.len() > MAX_TARGETS {
        return Err(Error::invalid_input(format!(
            "targets: a rule names 1 to {MAX_TARGETS} targets, this one {}",
            specs.len()
        )));
    }
    let mut targets: Vec<Target> = Vec::with_capacity(specs.len());
    for (i, spec) in specs.iter().enumerate() {
        let target = target(spec, &format!("targets[{i}]"))?;
        if targets.iter().any(|t| t.name == target.name) {
            return Err(Error::invalid_input(format!(
                "targets[{i}].name: target {:?} appears twice in this rule",
                target.name
            )));
        }
        targets.push(target);
    }
    Ok(targets)
}

fn target(spec: &TargetSpec, path: &str) -> Result<Target, Error> {
    validate_token("target name", &spec.name).map_err(|e| at(&format!("{path}.name"), e))?;
    let subject = match (&spec.service, &spec.operation, &spec.subject) {
        (Some(service), Some(operation), None) => {
            svc(service, operation).map_err(|e| at(path, e))?
        }
        (None, None, Some(subject)) => {
            literal_subject(subject).map_err(|e| at(&format!("{path}.subject"), e))?
        }
        _ => {
            return Err(at(
                path,
                Error::invalid_input("give either service and operation, or subject"),
            ));
        }
    };
    Ok(Target {
        name: spec.name.clone(),
        subject,
    })
}

/// A literal subject outside `data.` and `dlq.` (and `$…`, refused by the token check),
/// so delivering to a target can never put a record back into stream DATA or DLQ.
fn literal_subject(subject: &str) -> Result<String, Error> {
    for token in subject.split('.') {
        validate_token("subject token", token)
            .map_err(|e| Error::invalid_input(format!("{subject:?}: {}", e.message())))?;
    }
    if matches!(subject.split('.').next(), Some("data" | "dlq")) {
        return Err(Error::invalid_input(format!(
            "{subject:?} is under data. or dlq.: records would loop back into a stream"
        )));
    }
    Ok(subject.to_string())
}

fn key(spec: Option<&KeySpec>, pattern: &[Token]) -> Result<Key, Error> {
    Ok(match spec {
        None => Key::Id,
        Some(KeySpec::Field(pointer)) => {
            condition::check_pointer(pointer).map_err(|e| at("key.field", e))?;
            Key::Field(pointer.clone())
        }
        Some(KeySpec::Header(name)) => {
            check_header_name(name).map_err(|e| at("key.header", e))?;
            Key::Header(name.clone())
        }
        Some(KeySpec::SubjectToken(n)) => {
            let open = pattern.last() == Some(&Token::Rest);
            if *n > MAX_SUBJECT_TOKEN || (!open && *n >= pattern.len()) {
                return Err(Error::invalid_input(format!(
                    "key.subject_token: token {n} never exists in subjects of this pattern \
                     ({} tokens, 0-based)",
                    pattern.len()
                )));
            }
            Key::SubjectToken(*n)
        }
    })
}

#[cfg(test)]
#[path = "rule_tests.rs"]
mod tests;
