//! `cache.<get|put|del>.<namespace>.<key>`: one subscription on `cache.>` in queue
//! group `switchyard`, served by [`responder::serve`]. Values are bytes as given: a put
//! stores the request's payload unchanged, a get answers the stored bytes unchanged
//! (without a `ce-datacontenttype`, since no codec applies). Put and delete answer a
//! small document in the caller's codec. A malformed subject or name is a 400, a missing
//! key a 404, a value over `max_payload` a 413.

use serde::{Deserialize, Serialize};

use super::key::{Operation, parse_subject};
use super::store::Cache;
use crate::component::Context;
use crate::component::responder::{self, Endpoint, Reply, Request};
use crate::error::Error;
use crate::subjects::QUEUE_GROUP;

/// `ce-type` of requests that carry none.
pub const REQUEST_TYPE: &str = "io.switchyard.cache";
const SOURCE: &str = "urn:switchyard:cache";

/// The answer to `cache.put.<namespace>.<key>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored {
    pub namespace: String,
    pub key: String,
    /// The KV revision of the write.
    pub revision: u64,
}

/// The answer to `cache.del.<namespace>.<key>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deleted {
    pub namespace: String,
    pub key: String,
    pub deleted: bool,
}

/// Subscribes `cache.>` and answers with `cache` until shutdown.
pub async fn serve(ctx: &Context, component: &'static str, cache: Cache) -> Result<(), Error> {
    let endpoint = Endpoint {
        name: "cache",
        subject: "cache.>".into(),
        queue_group: Some(QUEUE_GROUP),
        request_type: REQUEST_TYPE,
        source: SOURCE,
    };
    responder::serve(ctx, component, endpoint, move |request| {
        let cache = cache.clone();
        async move { handle(&cache, request).await }
    })
    .await
}

async fn handle(cache: &Cache, request: Request) -> Result<Reply, Error> {
    let (operation, namespace, key) = parse_subject(request.subject.as_str())?;
    match operation {
        Operation::Get => match cache.get(namespace, key).await? {
            Some(value) => Ok(Reply::raw(value)),
            None => Err(Error::not_found(format!(
                "no key {key:?} in cache namespace {namespace:?}"
            ))),
        },
        Operation::Put => {
            let revision = cache.put(namespace, key, request.payload.clone()).await?;
            let stored = Stored {
                namespace: namespace.to_string(),
                key: key.to_string(),
                revision,
            };
            Ok(Reply::to(&request, &stored))
        }
        Operation::Delete => {
            cache.delete(namespace, key).await?;
            let deleted = Deleted {
                namespace: namespace.to_string(),
                key: key.to_string(),
                deleted: true,
            };
            Ok(Reply::to(&request, &deleted))
        }
    }
}
