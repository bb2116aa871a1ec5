//! Moves the keys of a Redis that Herald used before every key carried a hash tag
//! (`wire.rs`) to their tagged names, once, when the first node of the new version starts.
//!
//! Only what outlives a node is moved: registrations, webhook subscriptions, their attempt
//! logs, pending deliveries (the due stream with its consumer group, delayed retries and each
//! delivery's record, now a field of one hash), revocations, and the country streams' history.
//! Live-node bookkeeping renews itself. Every step is atomic and can be repeated, so nodes
//! that start together may all run it; nodes of the old version must be stopped first.

use std::sync::LazyLock;

use super::primary::Conn;
use redis::{AsyncCommands, Script};

use super::wire;

/// This layout's version, written to `wire::LAYOUT` once a Redis holds it.
const VERSION: &str = "2";

/// Keys of one name each, before and after.
const RENAMED: [(&str, &str); 5] = [
    ("herald:registrations", wire::REGISTRATIONS),
    ("herald:wh:subscriptions", wire::SUBSCRIPTIONS),
    ("herald:wh:due", wire::DUE),
    ("herald:wh:retries", wire::RETRIES),
    ("herald:revocations", wire::REVOCATIONS),
];

/// Folds one delivery's old record (a hash of its own) into the deliveries hash, as the
/// publish script writes it now. KEYS: the old record, the deliveries hash. ARGV: its id.
static FOLD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local fields = redis.call('HGETALL', KEYS[1])
if #fields == 0 then return 0 end
local record = {}
for i = 1, #fields, 2 do record[fields[i]] = fields[i + 1] end
record.attempts = tonumber(record.attempts) or 0
redis.call('HSET', KEYS[2], ARGV[1], cjson.encode(record))
redis.call('DEL', KEYS[1])
return 1",
    )
});

/// Brings the Redis behind `conn` to this layout unless it holds it already; answers how many
/// keys moved.
pub async fn upgrade(conn: &mut Conn) -> redis::RedisResult<usize> {
    let version: Option<String> = conn.get(wire::LAYOUT).await?;
    if version.as_deref() == Some(VERSION) {
        return Ok(0);
    }
    let mut moved = 0;
    for (old, new) in RENAMED {
        moved += rename(conn, old, new).await?;
    }
    for old in keys(conn, "herald:wh:attempts:*").await? {
        let subscription = &old["herald:wh:attempts:".len()..];
        moved += rename(conn, &old, &wire::attempts_key(subscription)).await?;
    }
    for old in keys(conn, "herald:{country:*").await? {
        // `herald:{country:NO}:log` -> `herald:{dashboard}:country:NO:log`
        let Some((stream, rest)) = old["herald:{".len()..].split_once('}') else {
            continue;
        };
        let new = format!("herald:{{dashboard}}:{stream}{rest}");
        moved += rename(conn, &old, &new).await?;
    }
    for old in keys(conn, "herald:wh:delivery:*").await? {
        let id = &old["herald:wh:delivery:".len()..];
        let mut fold = FOLD.prepare_invoke();
        fold.key(&old).key(wire::DELIVERIES).arg(id);
        moved += fold.invoke_async::<usize>(conn).await?;
    }
    let () = conn.set(wire::LAYOUT, VERSION).await?;
    if moved > 0 {
        log::warn!("moved {moved} Redis keys to this version's names (hash-tagged)");
    }
    Ok(moved)
}

/// Renames `old` to `new` unless `new` exists; answers 1 if it did.
async fn rename(conn: &mut Conn, old: &str, new: &str) -> redis::RedisResult<usize> {
    match conn.rename_nx::<_, _, bool>(old, new).await {
        Ok(true) => Ok(1),
        Ok(false) => {
            log::warn!("Redis holds both {old} and {new}; kept {new}, left {old} alone");
            Ok(0)
        }
        // Nothing to move.
        Err(e) if e.to_string().contains("no such key") => Ok(0),
        Err(e) => Err(e),
    }
}

/// Every key matching `pattern`, by `SCAN` (the Redis may be shared with other data).
async fn keys(conn: &mut Conn, pattern: &str) -> redis::RedisResult<Vec<String>> {
    let mut found = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?;
        found.extend(batch);
        if next == 0 {
            return Ok(found);
        }
        cursor = next;
    }
}
