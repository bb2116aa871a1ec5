//! The Lua scripts that make Redis the order and the truth of every stream. Each runs
//! atomically: a publish is either appended and announced whole, or not at all.
//!
//! Invariant the scripts keep: a stream's log holds no entry beyond its meta's `head`. Both are
//! written together, and a meta that is missing (a Redis that lost it, or a stream idle past
//! its ttl) starts a new epoch with an emptied log, so old cursors read as gaps instead of
//! pointing at unrelated events.

use std::sync::LazyLock;

use redis::{Cmd, Script};

/// A call of `script` with `keys`, its arguments to be added: an `EVALSHA`, so it can go in a
/// pipeline (`replication::Replicator` sends a group of them with a `WAIT` behind).
pub fn call(script: &Script, keys: &[String]) -> Cmd {
    let mut call = redis::cmd("EVALSHA");
    call.arg(script.get_hash()).arg(keys.len()).arg(keys);
    call
}

/// `APPEND`'s answer: the batch was appended now.
pub const APPENDED: u8 = 0;
/// `APPEND`'s answer: the idempotency key names an earlier publish of the same documents,
/// whose positions it answers; nothing was appended.
pub const REPLAYED: u8 = 1;
/// `APPEND`'s answer: the idempotency key names a publish of other documents; nothing was
/// appended.
pub const KEY_REUSED: u8 = 2;

/// Appends one publish's batch to a stream and announces it.
///
/// KEYS: meta, log, then for a publish with an idempotency key that key
/// (`wire::idempotency_key`), or for a dashboard (`country:`) stream, which has none, the
/// webhook subscriptions, the due deliveries and the delivery records (`webhook::shared`). ARGV: live channel,
/// `--history-size`, `--history-ttl` in ms, creation time in µs, a fresh random epoch (used
/// only if the stream has none), the publish's own random id, whether this is a retry (`1`),
/// the creation time as the webhook body's `time` (`""` but for dashboard streams), the
/// fingerprint of the documents in hex (`""` without a key), `--idempotency-window` in ms,
/// `sharded` to announce by `SPUBLISH` (a Redis Cluster: the channel shares the stream's slot,
/// so only its shard carries it) or `""` for `PUBLISH`, then one JSON document per event. Returns `{state, epoch, first seq, count, creation time
/// in µs}`, state `APPENDED`, `REPLAYED` or `KEY_REUSED` (then nothing else is set).
///
/// An idempotency key, when there is one, is looked at first: a key that names a publish of
/// the same documents answers that publish's positions, and nothing is appended; one that
/// names other documents is refused. Else the batch is appended, and the key set to
/// `<epoch> <first> <count> <created> <fingerprint> <publish id>` for the window. Redis runs
/// one script at a time, so of concurrent publishes with one key, on any nodes, one appends.
///
/// Each entry keeps its publish's id (`p`). A retry (the connection broke before the answer
/// came) first looks for it among the retained entries: if the first attempt was applied, its
/// positions are answered and nothing is appended, or delivered, twice. (With a key, the key
/// finds it first, and knows it by the publish id: its own first attempt is no replay.)
///
/// A dashboard event also gets its webhook deliveries here, in the same atomic step: one per
/// matching subscription, each a record (JSON in the deliveries hash) and an entry in the due
/// stream, its `webhook-id`
/// derived from the publish, the event and the subscription. The body is built as a single
/// node builds it (keys in order); its values (an ISO code, an event name, a UUID, a time)
/// need no escaping.
pub static APPEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local n = #ARGV - 11
-- The idempotency key first: a publish it names is answered, not appended again.
if ARGV[9] ~= '' then
  local e, s, c, t, f, p = string.match(redis.call('GET', KEYS[3]) or '',
    '^(%d+) (%d+) (%d+) (%d+) (%x+) (%S+)$')
  if f and f ~= ARGV[9] then
    return {2, 0, 0, 0, 0}
  elseif f then
    -- This publish's own first attempt, applied before its connection broke, is no replay.
    local state = 1
    if p == ARGV[6] then state = 0 end
    return {state, tonumber(e), tonumber(s), tonumber(c), tonumber(t)}
  end
end
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if epoch and ARGV[7] == '1' then
  -- Newest first; a publish's entries are contiguous, and fields are written t, d, p.
  local first = nil
  for _, entry in ipairs(redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', ARGV[2])) do
    if entry[2][6] == ARGV[6] then
      first = tonumber(string.match(entry[1], '^(%d+)-'))
    elseif first then
      break
    end
  end
  if first then
    return {0, tonumber(epoch), first, n, tonumber(ARGV[4])}
  end
end
if not epoch then
  epoch = ARGV[5]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'head', 0)
end
local last = redis.call('HINCRBY', KEYS[1], 'head', n)
local first = last - n + 1
local out = {epoch, ' ', string.format('%d', first), ' ', ARGV[4], '\n'}
for i = 1, n do
  local doc = ARGV[11 + i]
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], string.format('%d-0', first + i - 1),
    't', ARGV[4], 'd', doc, 'p', ARGV[6])
  out[#out + 1] = string.format('%d:', #doc)
  out[#out + 1] = doc
end
if #KEYS == 5 then
  local subscriptions = redis.call('HVALS', KEYS[3])
  for i = 1, n do
    local event = cjson.decode(ARGV[11 + i])
    for _, json in ipairs(subscriptions) do
      local s = cjson.decode(json)
      if not s.disabled and s.event == event.event
          and (s.country == '' or s.country == event.country) then
        local id = 'msg_' .. string.sub(redis.sha1hex(ARGV[6] .. ':' .. i .. ':' .. s.id), 1, 32)
        local body = '{"country":"' .. event.country .. '","event":"' .. event.event ..
          '","id":"' .. s.id .. '","time":"' .. ARGV[8] .. '"}'
        redis.call('HSET', KEYS[5], id, cjson.encode({subscription = s.id,
          event = event.event, country = event.country, body = body, attempts = 0}))
        redis.call('XADD', KEYS[4], '*', 'id', id)
      end
    end
  end
end
if ARGV[9] ~= '' then
  redis.call('SET', KEYS[3], table.concat({epoch, string.format('%d', first),
    string.format('%d', n), ARGV[4], ARGV[9], ARGV[6]}, ' '), 'PX', ARGV[10])
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
if ARGV[11] == 'sharded' then
  redis.call('SPUBLISH', ARGV[1], table.concat(out))
else
  redis.call('PUBLISH', ARGV[1], table.concat(out))
end
return {0, tonumber(epoch), first, n, tonumber(ARGV[4])}
"#,
    )
});

/// Reads a stream as a node that follows it needs it: its epoch, its head, and the retained
/// events after what the node has.
///
/// KEYS: meta, log. ARGV: the epoch the node knows (`""` for none), the head it knows, a fresh
/// random epoch, `--history-ttl` in ms, the creation time in µs of the event the node has at
/// that head (`""` if none). Returns `{epoch, head, entries}`: the entries after the known
/// head when the epoch is the known one, else every retained entry.
///
/// A stream without meta gets one (a new epoch, head 0), so every node agrees from now on. A
/// head below the one the node knows means Redis lost acknowledged events (restarted from an
/// older snapshot, or a failover to a replica that had not received them): their positions
/// would be handed out again, so the stream moves to a new epoch, and cursors into the lost
/// part become gaps on every node. So does another event at the known head (lost, then its
/// position handed out again before this node read).
pub static READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'head')
local epoch, head = meta[1], meta[2]
if not epoch then
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', ARGV[3], 'head', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  return {tonumber(ARGV[3]), 0, {}}
end
local from = '-'
if epoch == ARGV[1] then
  local lost = tonumber(head) < tonumber(ARGV[2])
  if not lost and ARGV[5] ~= '' then
    -- Fields are written t, d, p: the entry's creation time is its second value.
    local at = redis.call('XRANGE', KEYS[2], ARGV[2] .. '-0', ARGV[2] .. '-0')
    lost = #at == 1 and at[1][2][2] ~= ARGV[5]
  end
  if lost then
    epoch = ARGV[3]
    redis.call('HSET', KEYS[1], 'epoch', epoch)
  else
    from = '(' .. ARGV[2] .. '-0'
  end
end
return {tonumber(epoch), tonumber(head), redis.call('XRANGE', KEYS[2], from, '+')}
"#,
    )
});

/// Admits a long-poll under the per-instance listener limit, across every node.
///
/// KEYS: the instance's polls set. ARGV: the limit, the poll's lease id (`""` only counts), the
/// lease's length in ms. Leases are scored by when they end, on Redis's clock, so the polls of
/// a node that died stop counting once their deadline has passed. Returns 1 if admitted.
pub static ADMIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
if ARGV[2] ~= '' then
  local ends = now + tonumber(ARGV[3])
  redis.call('ZADD', KEYS[1], ends, ARGV[2])
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  redis.call('PEXPIREAT', KEYS[1], last[2])
end
return 1
"#,
    )
});

/// The live nodes: forgets those whose heartbeat ended, and lists the others.
///
/// KEYS: the nodes set. The nodes' client sets are read (or changed) by the caller, one key at
/// a time: each is in a slot of its own on a Redis Cluster.
pub static LIVE_NODES: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(t[1]) * 1000)
return redis.call('ZRANGE', KEYS[1], 0, -1)
"#,
    )
});

/// A node's heartbeat: keeps it among the live nodes until `now + ttl` on Redis's clock.
///
/// KEYS: the nodes set. ARGV: the node, how long the heartbeat lasts in ms.
pub static BEAT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
"#,
    )
});

#[cfg(test)]
mod tests {
    /// Every script Herald runs in Redis, as source text.
    const SOURCES: [&str; 5] = [
        include_str!("scripts.rs"),
        include_str!("revocations.rs"),
        include_str!("layout.rs"),
        include_str!("../webhook/shared.rs"),
        include_str!("../dashboard/shared.rs"),
    ];

    /// A Redis Cluster runs a script only on the keys it declares, all in one slot (see
    /// `wire::tests`): no call may name a key it computes. Channels are arguments.
    #[test]
    fn every_call_in_a_script_names_a_declared_key() {
        let needle = concat!("redis", ".call('");
        let mut calls = 0;
        for source in SOURCES {
            for (at, _) in source.match_indices(needle) {
                let call = &source[at + needle.len()..];
                let (command, rest) = call.split_once('\'').unwrap();
                let first = rest.trim_start_matches([',', ' ']);
                let keyless = command == "TIME";
                let channel =
                    matches!(command, "PUBLISH" | "SPUBLISH") && first.starts_with("ARGV[");
                assert!(
                    keyless || channel || first.starts_with("KEYS["),
                    "{command} on {}",
                    &first[..first.len().min(30)]
                );
                calls += 1;
            }
        }
        assert!(calls > 50, "{calls} calls seen");
    }
}
