-- Pairing slots shared by relay nodes (relay/src/pairing/redis.rs). One script, one operation
-- per call, so that every transition of a slot is atomic: Redis runs a script alone.
--
-- KEYS[1]  the slot's hash (`{prefix}slot:{n}`), or for `alive` and `dead` the node's key
--          (for `pick`, the hash of the slot to start from)
-- ARGV[1]  the operation: pick | open | join | forward | close | leave | check | alive | dead
-- ARGV[2]  the key prefix
-- ARGV[3]  the slot number
-- ARGV[4]  the calling node's id
-- ARGV[5]  the calling session's id (unique on its node)
-- ARGV[6…] per operation, below
--
-- A slot hash: state (open | joined | burned), user (hex), inode/isess (the inviter),
-- jnode/jsess (the joiner), exp (expiry, Unix ms by Redis's clock), msgs (messages forwarded).
-- Other keys: `{prefix}user:{hex}` = the user's live slot number; `{prefix}node:{id}` exists
-- while that node is alive (it refreshes it); messages go to the channel `{prefix}to:{id}` of
-- the node holding the other end, as `kind|slot|session|payload` (kind P: a peer message,
-- payload its bytes; kind C: the slot closed, payload an error code number or empty).
--
-- Time comes from Redis (TIME), one clock for every node. Keys named here and not in KEYS live
-- under the same prefix: on Redis Cluster the prefix carries a hash tag, so they share a slot.

local op, prefix, slot, node, session = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local key = KEYS[1]

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function alive(n)
  return redis.call('EXISTS', prefix .. 'node:' .. n) == 1
end

local function send(to_node, to_session, kind, payload)
  local message = kind .. '|' .. slot .. '|' .. to_session .. '|' .. payload
  return redis.call('PUBLISH', prefix .. 'to:' .. to_node, message)
end

local function load()
  local f = redis.call('HMGET', key, 'state', 'user', 'inode', 'isess', 'jnode', 'jsess', 'exp')
  if not f[1] then
    return nil
  end
  return {
    state = f[1], user = f[2], inode = f[3], isess = f[4], jnode = f[5], jsess = f[6],
    exp = tonumber(f[7]),
  }
end

-- A tombstone until the key expires; the user may open another slot.
local function burn(s)
  redis.call('HSET', key, 'state', 'burned')
  local user_key = prefix .. 'user:' .. s.user
  if redis.call('GET', user_key) == slot then
    redis.call('DEL', user_key)
  end
end

local function is_inviter(s)
  return s.inode == node and s.isess == session
end

local function is_joiner(s)
  return s.state == 'joined' and s.jnode == node and s.jsess == session
end

-- The other end of a joined slot for the caller, if the caller is one of the two ends.
local function other_end(s)
  if s.state ~= 'joined' then
    return nil
  end
  if is_inviter(s) then
    return s.jnode, s.jsess
  end
  if is_joiner(s) then
    return s.inode, s.isess
  end
  return nil
end

-- Whether the slot whose hash is `k` is free: its hash is gone, twice the code's lifetime
-- after it opened. Until then it is live, or a tombstone (burned, or expired and answering
-- "expired"), so that a code someone may still type reaches no newer pairing.
local function free(k)
  return redis.call('EXISTS', k) == 0
end

-- The smallest free slot number from ARGV[3] up to ARGV[6], not claimed: the caller tracks it
-- and then runs `open` on it, which answers 'taken' if another node claimed it meanwhile.
-- Costs one EXISTS per taken slot below it. {'ok', 0, slot} | {'taken'} (none free)
if op == 'pick' then
  for n = tonumber(slot), tonumber(ARGV[6]) do
    if free(prefix .. 'slot:' .. n) then
      return {'ok', 0, n}
    end
  end
  return {'taken'}
end

-- ARGV[6] user (hex), ARGV[7] time to live (ms). {'ok', expiry} | {'taken'} | {'rate'}
if op == 'open' then
  local user, ttl = ARGV[6], tonumber(ARGV[7])
  local now = now_ms()
  if not free(key) then
    return {'taken'}
  end
  local user_key = prefix .. 'user:' .. user
  local live = redis.call('GET', user_key)
  if live then
    local live_key = prefix .. 'slot:' .. live
    local l = redis.call('HMGET', live_key, 'state', 'user', 'inode', 'exp')
    if l[1] and l[1] ~= 'burned' and l[2] == user and tonumber(l[4]) > now then
      if alive(l[3]) then
        return {'rate'}
      end
      -- Its inviter's node died without burning it.
      redis.call('HSET', live_key, 'state', 'burned')
    end
  end
  redis.call('HSET', key, 'state', 'open', 'user', user, 'inode', node, 'isess', session,
    'exp', now + ttl, 'msgs', 0)
  -- Kept for a second lifetime so a late join hears "expired" rather than "unknown".
  redis.call('PEXPIRE', key, 2 * ttl)
  redis.call('SET', user_key, slot, 'PX', ttl)
  return {'ok', now + ttl}
end

-- ARGV[6] the joiner's hello. {'ok'} | {'unknown'} | {'expired'} | {'used'} | {'gone'}
if op == 'join' then
  local s = load()
  if not s then
    return {'unknown'}
  end
  if s.exp <= now_ms() then
    return {'expired'}
  end
  if s.state ~= 'open' then
    return {'used'}
  end
  if not alive(s.inode) then
    burn(s)
    return {'used'}
  end
  redis.call('HSET', key, 'state', 'joined', 'jnode', node, 'jsess', session)
  if send(s.inode, s.isess, 'P', ARGV[6]) == 0 then
    burn(s)
    return {'gone'}
  end
  return {'ok'}
end

-- ARGV[6] the message, ARGV[7] most messages per slot, ARGV[8] the code the other end is told
-- when the caller exceeds it. {'ok'} | {'unknown'} | {'rate'} | {'gone'}
if op == 'forward' then
  local s = load()
  if not s or s.state == 'burned' then
    return {'unknown'}
  end
  local to_node, to_session = other_end(s)
  if not to_node then
    return {'unknown'}
  end
  if redis.call('HINCRBY', key, 'msgs', 1) > tonumber(ARGV[7]) then
    burn(s)
    send(to_node, to_session, 'C', ARGV[8])
    return {'rate'}
  end
  if send(to_node, to_session, 'P', ARGV[6]) == 0 then
    burn(s)
    return {'gone'}
  end
  return {'ok'}
end

-- ARGV[6] the code the other end is told (empty: success). {'ok'} | {'unknown'}
if op == 'close' then
  local s = load()
  if not s or s.state == 'burned' then
    return {'unknown'}
  end
  local to_node, to_session = other_end(s)
  if not to_node then
    return {'unknown'}
  end
  burn(s)
  send(to_node, to_session, 'C', ARGV[6])
  return {'ok'}
end

-- The caller's session is gone (ended, not reading, or its node may have lost messages).
-- ARGV[6] the code the other end is told. {'ok'}
if op == 'leave' then
  local s = load()
  if not s or s.state == 'burned' or not (is_inviter(s) or is_joiner(s)) then
    return {'ok'}
  end
  burn(s)
  local to_node, to_session = other_end(s)
  if to_node then
    send(to_node, to_session, 'C', ARGV[6])
  end
  return {'ok'}
end

-- Whether the caller's pairing is still on. {'live'} | {'expired'} (open, nobody joined, past
-- its expiry) | {'burned'} | {'peer_lost'} (the other end's node died: now burned) |
-- {'gone'} (no such slot any more) | {'other'} (the caller is not an end of it)
if op == 'check' then
  local s = load()
  if not s then
    return {'gone'}
  end
  if s.state == 'burned' then
    return {'burned'}
  end
  if not (is_inviter(s) or is_joiner(s)) then
    return {'other'}
  end
  if s.state == 'open' and s.exp <= now_ms() then
    return {'expired'}
  end
  local to_node = other_end(s)
  if to_node and not alive(to_node) then
    burn(s)
    return {'peer_lost'}
  end
  return {'live'}
end

-- KEYS[1] the node's key, ARGV[6] its time to live (ms). {'ok'}
if op == 'alive' then
  redis.call('SET', key, '1', 'PX', tonumber(ARGV[6]))
  return {'ok'}
end

-- KEYS[1] the node's key: the node stops. {'ok'}
if op == 'dead' then
  redis.call('DEL', key)
  return {'ok'}
end

return redis.error_reply('unknown pairing operation')
