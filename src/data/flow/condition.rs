//! Field conditions of a flow rule: a JSON pointer (RFC 6901) into the record's decoded
//! payload and the value it must have.
//!
//! - `"/kind": "order"`: equal to this value (any JSON value).
//! - `"/kind": {"any_of": ["order", "refund"]}`: equal to one of these.
//! - `"/tags": {"equals": {"any_of": [1]}}`: equal to exactly this value, for the rare
//!   value that is itself an object with the single key `any_of` or `equals`.
//!
//! Numbers compare by value whatever their encoding (`1`, `1.0`, a MessagePack u8), so
//! a JSON rule matches MessagePack records. A missing field never matches.

use serde_json::Value;

use crate::error::Error;

/// The values a field may have (any of them).
#[derive(Debug, Clone, PartialEq)]
pub struct FieldCondition {
    any_of: Vec<Value>,
}

impl FieldCondition {
    pub fn parse(value: &Value) -> Result<FieldCondition, Error> {
        let any_of = match value {
            Value::Object(map) if map.len() == 1 => match map.iter().next() {
                Some((op, Value::Array(values))) if op == "any_of" && !values.is_empty() => {
                    values.clone()
                }
                Some((op, _)) if op == "any_of" => {
                    return Err(Error::invalid_input(
                        "any_of takes a non-empty list of values",
                    ));
                }
                Some((op, value)) if op == "equals" => vec![value.clone()],
                _ => vec![value.clone()],
            },
            other => vec![other.clone()],
        };
        Ok(FieldCondition { any_of })
    }

    /// Whether the field's value (`None`: absent) satisfies the condition.
    pub fn holds(&self, value: Option<&Value>) -> bool {
        value.is_some_and(|v| self.any_of.iter().any(|want| json_eq(want, v)))
    }
}

/// Checks a JSON pointer: `/` followed by reference tokens, `~` only as `~0` or `~1`.
pub fn check_pointer(pointer: &str) -> Result<(), Error> {
    let bad = |why: &str| {
        Err(Error::invalid_input(format!(
            "{pointer:?} is not a JSON pointer ({why}; e.g. /order_id or /customer/id)"
        )))
    };
    if !pointer.starts_with('/') {
        return bad("it starts with /");
    }
    let mut chars = pointer.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return bad("~ is written ~0 and / inside a name ~1");
        }
    }
    Ok(())
}

/// JSON equality with numbers compared by value.
pub fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if let (Some(x), Some(y)) = (x.as_i64(), y.as_i64()) {
                x == y
            } else if let (Some(x), Some(y)) = (x.as_u64(), y.as_u64()) {
                x == y
            } else {
                x.as_f64() == y.as_f64()
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_eq(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn plain_any_of_and_equals_forms() {
        let plain = FieldCondition::parse(&json!("order")).unwrap();
        assert!(plain.holds(Some(&json!("order"))));
        assert!(!plain.holds(Some(&json!("refund"))));
        assert!(!plain.holds(None));

        let any = FieldCondition::parse(&json!({"any_of": ["order", 2]})).unwrap();
        assert!(any.holds(Some(&json!("order"))));
        assert!(any.holds(Some(&json!(2.0))));
        assert!(!any.holds(Some(&json!(["order", 2]))));

        let literal = FieldCondition::parse(&json!({"equals": {"any_of": [1]}})).unwrap();
        assert!(literal.holds(Some(&json!({"any_of": [1]}))));
        assert!(!literal.holds(Some(&json!(1))));

        let object = FieldCondition::parse(&json!({"a": 1, "b": [1, 2]})).unwrap();
        assert!(object.holds(Some(&json!({"b": [1.0, 2], "a": 1}))));

        for bad in [json!({"any_of": []}), json!({"any_of": "x"})] {
            assert!(FieldCondition::parse(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn numbers_compare_by_value() {
        assert!(json_eq(&json!(1), &json!(1.0)));
        assert!(json_eq(&json!(u64::MAX), &json!(u64::MAX)));
        assert!(!json_eq(&json!(1), &json!("1")));
        assert!(!json_eq(&json!(-1), &json!(1)));
    }

    #[test]
    fn pointers_are_checked() {
        for good in ["/a", "/a/b", "/a~1b", "/m~0n", "/0", "/"] {
            assert!(check_pointer(good).is_ok(), "{good}");
        }
        for bad in ["", "a", "a/b", "/a~2", "/a~"] {
            assert!(check_pointer(bad).is_err(), "{bad}");
        }
    }
}
