"""Lua scripts of the Redis ledger. Each runs atomically inside Redis.

A counter C (one scope, id and window) is a set of keys under the prefix `C`:
  C:t            hash of settled totals in the window, fields "<provider>|<metric>" (metric s, i, o, r), and
                 field "L" = "1" once the counter holds the store's history (else the gateway loads it first)
  C:b            hash of settled amounts per bucket, fields "<bucket start>|<provider>|<metric>" (rolling)
  C:z            sorted set of bucket starts (rolling), to expire whole buckets from C:t
  C:r            sorted set of in-flight reservations, member "<id>|<provider>|s|i|o|r", score = expiry ms
Monthly counters use one prefix per billing month, so a new month starts empty by construction.
"""

from __future__ import annotations

# Shared helpers, prepended to each script.
_COMMON = r"""
local METRICS = {'s', 'i', 'o', 'r'}

local function expire_buckets(c, now, window_ms, bucket_ms)
  -- (rolling) take the buckets that left the window out of the totals; true when there were any
  local old = redis.call('ZRANGEBYSCORE', c .. ':z', '-inf', now - window_ms - bucket_ms)
  if #old == 0 then return false end
  local fields = redis.call('HGETALL', c .. ':b')
  for _, start in ipairs(old) do
    for j = 1, #fields, 2 do
      local f = fields[j]
      if string.sub(f, 1, #start + 1) == start .. '|' then
        redis.call('HINCRBY', c .. ':t', string.sub(f, #start + 2), -tonumber(fields[j + 1]))
        redis.call('HDEL', c .. ':b', f)
      end
    end
    redis.call('ZREM', c .. ':z', start)
  end
  return true
end

local function wanted(providers, provider)
  if providers == '' then return true end
  return string.find(',' .. providers .. ',', ',' .. provider .. ',', 1, true) ~= nil
end

local function metric_value(vec, metric)
  -- vec: {s, i, o, r}
  if metric == 'spend' then return vec[1] end
  if metric == 'tokens' then return vec[2] + vec[3] end
  if metric == 'input_tokens' then return vec[2] end
  if metric == 'output_tokens' then return vec[3] end
  return vec[4]
end

local function used(totals, live, metric, providers)
  -- totals: HGETALL of C:t; live: the in-flight reservations' members
  local total = 0
  for j = 1, #totals, 2 do
    local provider, m = string.match(totals[j], '^(.*)|(%a)$')
    if provider and wanted(providers, provider) then
      local vec = {0, 0, 0, 0}
      for k, name in ipairs(METRICS) do if name == m then vec[k] = tonumber(totals[j + 1]) end end
      total = total + metric_value(vec, metric)
    end
  end
  for _, member in ipairs(live) do
    local _, provider, s, i, o, r = string.match(member, '^([^|]*)|(.*)|(%-?%d+)|(%-?%d+)|(%-?%d+)|(%-?%d+)$')
    if provider and wanted(providers, provider) then
      total = total + metric_value({tonumber(s), tonumber(i), tonumber(o), tonumber(r)}, metric)
    end
  end
  return total
end

local function live_reservations(c, now)
  -- members of C:r not yet expired; expired ones (calls that never settled) are dropped
  local pairs_ = redis.call('ZRANGE', c .. ':r', 0, -1, 'WITHSCORES')
  local live, expired = {}, false
  for j = 1, #pairs_, 2 do
    if tonumber(pairs_[j + 1]) <= now then expired = true else table.insert(live, pairs_[j]) end
  end
  if expired then redis.call('ZREMRANGEBYSCORE', c .. ':r', '-inf', now) end
  return live
end

local function loaded(totals)
  for j = 1, #totals, 2 do if totals[j] == 'L' then return true end end
  return false
end
"""

# KEYS: counter prefixes, one per cap (repeats allowed).
# ARGV: now, rid, expiry, provider, s, i, o, r, ttl_ms,
#       then per cap: window_ms (0 = monthly), bucket_ms, metric, providers (csv, '' = all), limit,
#       ceiling (the most the counter may hold after this call; -1 = none, just count)
# Reserves the charge on every counter unless a ceiling would be exceeded (then nothing).
# Returns {'LOAD', i, ...} when counters need the store's history, else
#         {'OK' | 'OVER', used_1, need_1, retry_ms_1, over_1, used_2, ...}
#         (retry_ms: rolling windows, when used + need > limit: until need fits under limit; else 0)
RESERVE = _COMMON + r"""
local now, rid, expiry = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local provider = ARGV[4]
local charge = {tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])}
local ttl = tonumber(ARGV[9])
local missing = {}
local totals, live = {}, {}  -- per counter (a counter may appear under several caps)
for n = 1, #KEYS do
  local c = KEYS[n]
  if not totals[c] then totals[c] = redis.call('HGETALL', c .. ':t') end
  if not loaded(totals[c]) then table.insert(missing, n) end
end
if #missing > 0 then
  local out = {'LOAD'}
  for _, n in ipairs(missing) do table.insert(out, n) end
  return out
end
local out = {'OK'}
local over = false
for n = 1, #KEYS do
  local base = 9 + (n - 1) * 6
  local window_ms, bucket_ms = tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2])
  local metric, providers = ARGV[base + 3], ARGV[base + 4]
  local limit, ceiling = tonumber(ARGV[base + 5]), tonumber(ARGV[base + 6])
  local c = KEYS[n]
  if window_ms > 0 and expire_buckets(c, now, window_ms, bucket_ms) then
    totals[c] = redis.call('HGETALL', c .. ':t')
  end
  if not live[c] then live[c] = live_reservations(c, now) end
  local have = used(totals[c], live[c], metric, providers)
  local need = 0
  if wanted(providers, provider) then need = metric_value(charge, metric) end
  local retry = 0
  if have + need > limit and window_ms > 0 then
    -- when enough old buckets leave the window for this call to fit
    retry = window_ms
    local left = have
    local starts = redis.call('ZRANGE', c .. ':z', 0, -1)
    local fields = redis.call('HGETALL', c .. ':b')
    for _, start in ipairs(starts) do
      for j = 1, #fields, 2 do
        local b, p, m = string.match(fields[j], '^(%-?%d+)|(.*)|(%a)$')
        if b == start and wanted(providers, p) then
          local vec = {0, 0, 0, 0}
          for k, name in ipairs(METRICS) do if name == m then vec[k] = tonumber(fields[j + 1]) end end
          left = left - metric_value(vec, metric)
        end
      end
      if left + need <= limit then
        retry = tonumber(start) + bucket_ms + window_ms - now
        break
      end
    end
  end
  local beyond = ceiling >= 0 and have + need > ceiling
  if beyond then over = true end
  table.insert(out, have)
  table.insert(out, need)
  table.insert(out, retry)
  table.insert(out, beyond and 1 or 0)
end
if over then
  out[1] = 'OVER'
  return out
end
-- the charge as sent (a Lua number would print large values in %.14g)
local member = rid .. '|' .. provider .. '|' .. ARGV[5] .. '|' .. ARGV[6] .. '|' .. ARGV[7] .. '|' .. ARGV[8]
local seen = {}
for n = 1, #KEYS do
  local c = KEYS[n]
  if not seen[c] then
    seen[c] = true
    redis.call('ZADD', c .. ':r', expiry, member)
    redis.call('PEXPIRE', c .. ':r', ttl)
  end
end
return out
"""

# KEYS: distinct counter prefixes of the reservation.
# Releases the hold (if it has not expired already) and counts the actual usage; the client sends it once
# per reservation, so a reservation that expired before its call ended is still counted, once.
# ARGV: member (as reserved), provider, s, i, o, r, ts (call start), ttl_ms,
#       then per key: window_ms (0 = monthly), bucket_ms
SETTLE = _COMMON + r"""
local member, provider = ARGV[1], ARGV[2]
local vec = {tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])}
local ts, ttl = tonumber(ARGV[7]), tonumber(ARGV[8])
for n = 1, #KEYS do
  local c = KEYS[n]
  local window_ms, bucket_ms = tonumber(ARGV[8 + (n - 1) * 2 + 1]), tonumber(ARGV[8 + (n - 1) * 2 + 2])
  redis.call('ZREM', c .. ':r', member)
  -- a counter that vanished (expired, flushed) is rebuilt from the store, which has this call
  if redis.call('HEXISTS', c .. ':t', 'L') == 1 then
    local start = ts
    if window_ms > 0 then start = ts - (ts % bucket_ms) end
    for k, name in ipairs(METRICS) do
      if vec[k] ~= 0 then
        redis.call('HINCRBY', c .. ':t', provider .. '|' .. name, vec[k])
        if window_ms > 0 then
          redis.call('HINCRBY', c .. ':b', start .. '|' .. provider .. '|' .. name, vec[k])
        end
      end
    end
    if window_ms == 0 then
      redis.call('PEXPIRE', c .. ':t', ttl)  -- a monthly counter has totals only
    elseif redis.call('ZADD', c .. ':z', start, start) == 1 then
      -- a new bucket: the counter lives another window from now (between buckets nothing can expire early)
      for _, suffix in ipairs({':t', ':b', ':z'}) do redis.call('PEXPIRE', c .. suffix, ttl) end
    end
  end
end
return 1
"""

# KEYS: one counter prefix.  ARGV: ttl_ms, window_ms, then rows: start, provider, s, i, o, r, ...
# Writes the store's history unless another gateway loaded the counter first.
LOAD = r"""
local c, ttl, window_ms = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2])
if redis.call('HEXISTS', c .. ':t', 'L') == 1 then return 0 end
redis.call('DEL', c .. ':t', c .. ':b', c .. ':z')
local names = {'s', 'i', 'o', 'r'}
for n = 3, #ARGV, 6 do
  local start, provider = ARGV[n], ARGV[n + 1]
  for k = 1, 4 do
    local v = tonumber(ARGV[n + 1 + k])
    if v ~= 0 then
      redis.call('HINCRBY', c .. ':t', provider .. '|' .. names[k], v)
      if window_ms > 0 then redis.call('HINCRBY', c .. ':b', start .. '|' .. provider .. '|' .. names[k], v) end
    end
  end
  if window_ms > 0 then redis.call('ZADD', c .. ':z', start, start) end
end
redis.call('HSET', c .. ':t', 'L', '1')
for _, suffix in ipairs({':t', ':b', ':z'}) do redis.call('PEXPIRE', c .. suffix, ttl) end
return 1
"""
