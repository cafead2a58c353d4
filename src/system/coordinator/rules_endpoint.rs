//! `sys.coord.rules.<list|get|put|del>[.<name>]`: coordination rules over request-reply,
//! so a bad rule is refused with the reason before it is stored (a value written to KV
//! directly is checked too, but can only be logged).

use async_nats::jetstream::kv::Store;

use super::NAME;
use super::rules::{RULE_PREFIX, Rule, RuleSet};
use crate::component::Context;
use crate::component::responder::{self, Endpoint, Reply, Request};
use crate::error::Error;
use crate::subjects::{QUEUE_GROUP, validate_token};

const SOURCE: &str = "urn:switchyard:coordinator";

pub async fn serve(ctx: &Context, kv: Store, rules: RuleSet) -> Result<(), Error> {
    let endpoint = Endpoint {
        name: "rules",
        subject: "sys.coord.rules.>".to_string(),
        queue_group: Some(QUEUE_GROUP),
        request_type: "io.switchyard.sys.coord.rules",
        source: SOURCE,
    };
    responder::serve(ctx, NAME, endpoint, move |request: Request| {
        let (kv, rules) = (kv.clone(), rules.clone());
        async move { handle(&kv, &rules, request).await }
    })
    .await
}

async fn handle(kv: &Store, rules: &RuleSet, request: Request) -> Result<Reply, Error> {
    let tokens: Vec<&str> = request.subject.split('.').skip(3).collect();
    match tokens.as_slice() {
        ["list"] => Ok(Reply::to(&request, &rules.all())),
        ["get", name] => match rules.all().get(*name) {
            Some(rule) => Ok(Reply::to(&request, rule)),
            None => Err(Error::not_found(format!("no coordination rule {name:?}"))),
        },
        ["put", name] => {
            validate_token("rule", name)?;
            let rule = Rule::parse(&request.payload)?;
            let value = serde_json::to_vec(&rule)
                .map_err(|e| Error::internal(format!("cannot encode a rule: {e}")))?;
            kv.put(format!("{RULE_PREFIX}{name}"), value.into())
                .await
                .map_err(|e| Error::nats("store a coordination rule", e))?;
            Ok(Reply::to(&request, &rule))
        }
        ["del", name] => {
            validate_token("rule", name)?;
            kv.delete(format!("{RULE_PREFIX}{name}"))
                .await
                .map_err(|e| Error::nats("delete a coordination rule", e))?;
            Ok(Reply::to(
                &request,
                &serde_json::json!({"rule": name, "deleted": true}),
            ))
        }
        _ => Err(Error::invalid_input(
            "use sys.coord.rules.list, sys.coord.rules.get.<name>, sys.coord.rules.put.<name> or sys.coord.rules.del.<name>",
        )),
    }
}
