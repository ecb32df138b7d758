//! The Redis service for tests: where it is, and an administration client on it.
//!
//! Redis is shared with other tests running at the same time: tests use fresh random user ids
//! (so fresh topics), inspect only connections they can name, and never flush or shut it down.

use std::time::Duration;

use ferry_relay::redact_url;
use fred::prelude::{Builder, Client, ClientLike, Config, Value};
use fred::types::CustomCommand;

/// The Redis used when `FERRY_TEST_REDIS_URL` is not set.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// The Redis URL to test against, or `None` when it is not reachable and not required.
///
/// With `FERRY_REQUIRE_SERVICES=1` an unreachable Redis fails the test instead, so CI cannot
/// pass by skipping.
pub async fn redis_url() -> Option<String> {
    let url =
        std::env::var("FERRY_TEST_REDIS_URL").unwrap_or_else(|_| DEFAULT_REDIS_URL.to_owned());
    let why = match admin(&url).await {
        Ok(client) => {
            let _ = client.quit().await;
            return Some(url);
        }
        Err(why) => why,
    };
    let shown = redact_url(&url);
    if std::env::var("FERRY_REQUIRE_SERVICES").as_deref() == Ok("1") {
        panic!("Redis not reachable at {shown} and FERRY_REQUIRE_SERVICES=1: {why}");
    }
    eprintln!("skipped: Redis not reachable at {shown}: {why}");
    None
}

/// A plain client on `url` that answered a `PING`.
pub async fn admin(url: &str) -> Result<Client, String> {
    let config = Config::from_url(url).map_err(|error| error.to_string())?;
    let client = Builder::from_config(config)
        .build()
        .map_err(|error| error.to_string())?;
    let connected = tokio::time::timeout(Duration::from_secs(3), async {
        client.init().await?;
        client.ping::<Value>(None).await
    })
    .await;
    match connected {
        Ok(Ok(_)) => Ok(client),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err("no answer within 3 s".to_owned()),
    }
}

/// `CLIENT LIST` entries (as `key=value` fields) whose name is `name`.
pub async fn connections_named(admin: &Client, name: &str) -> Vec<Vec<(String, String)>> {
    let list: String = admin
        .custom(
            CustomCommand::new_static("CLIENT", None, false),
            vec!["LIST"],
        )
        .await
        .expect("CLIENT LIST");
    list.lines()
        .map(|line| {
            line.split(' ')
                .filter_map(|field| field.split_once('='))
                .map(|(key, value)| (key.to_owned(), value.to_owned()))
                .collect::<Vec<_>>()
        })
        .filter(|fields| {
            fields
                .iter()
                .any(|(key, value)| key == "name" && value == name)
        })
        .collect()
}

/// The value of `key` in one `CLIENT LIST` entry.
pub fn field<'a>(fields: &'a [(String, String)], key: &str) -> &'a str {
    fields
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, value)| value.as_str())
        .unwrap_or_else(|| panic!("CLIENT LIST has no {key}"))
}

/// How many connections are subscribed to `channel` (`PUBSUB NUMSUB`).
pub async fn subscribers(admin: &Client, channel: &str) -> i64 {
    use fred::prelude::PubsubInterface;
    let counts: Vec<Value> = admin.pubsub_numsub(channel).await.expect("PUBSUB NUMSUB");
    counts
        .get(1)
        .and_then(Value::as_i64)
        .expect("PUBSUB NUMSUB answers [channel, count]")
}

/// `url` with its host and port replaced by `addr` (to go through a [`super::proxy::Proxy`]).
pub fn with_address(url: &str, addr: std::net::SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let userinfo = authority.rfind('@').map_or("", |at| &authority[..=at]);
    format!("{scheme}://{userinfo}{addr}{path}")
}

/// The socket address `url` points at.
pub async fn address(url: &str) -> std::net::SocketAddr {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    let host_port = if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:6379")
    };
    tokio::net::lookup_host(host_port.as_str())
        .await
        .expect("resolve the Redis host")
        .next()
        .expect("the Redis host has an address")
}
